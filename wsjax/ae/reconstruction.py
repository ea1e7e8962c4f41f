"""How well reconstructed held-out networks behave like their originals (the ae stage's report).

For each held-out model (final snapshot of the configured splits), the original's logits are
compared with those of: 'pca' (decode(encode(w))), 'pca+ae' (through the AE), and baselines
'mean' (the zoo's mean train model) and 'copy' (the nearest train model in PCA coefficient
space, its stored weights), each also '+recal' (BatchNorm statistics re-estimated on the task's
train images). Inputs: Gaussian noise and the task's real validation images.

Every split is summarised apart: the AE's checkpoint is selected on val models, so only test
models score it without bias; `selection` names the split each choice was made on.
"""

import threading

import jax
import numpy as np
from tqdm import tqdm

from wsjax import data, pca
from wsjax.common import io, threads
from wsjax.evaluate import metrics
from wsjax.models import bn, inference
from wsjax.zoo import snapshots
from wsjax.zoo import step as step_lib

VARIANTS = ("pca+ae", "pca", "copy", "mean")


def evaluate(workdir, eval_cfg, *, p, ae, coeffs, rows, dataset, module, selected_on, seed=0, workers=1):
    """dict with, per split of `eval_cfg.splits`, the variants' mean real/noise agreement, cosine,
    pearson and accuracy; per-model rows; and `selection` (the split each choice was made on,
    the AE checkpoint's being `selected_on`). `coeffs`, `rows`: pca.load_coeffs and its rows.
    Models are scored `workers` at a time in threads, with the same results."""
    co = coeffs["coeffs"]
    ok = coeffs["status"] == "ok"
    final = coeffs["snapshot"] == "final"
    train = np.flatnonzero(ok & final & (coeffs["split"] == "train"))
    held = np.flatnonzero(ok & final & np.isin(coeffs["split"], list(eval_cfg.splits)))
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(eval_cfg.num_noise,) + dataset.image_shape).astype(np.float32)
    # the train images' order per model, drawn in model order before any thread starts
    orders = [rng.permutation(len(data.task_split(dataset, rows[i]["classes"], "train")[0])) for i in held]
    mean_vars = jax.tree_util.tree_map(np.asarray, pca.decode(p, co[train].mean(0)))
    recon = np.asarray(ae.decode(ae.encode(co[held]))) if len(held) else np.zeros((0, co.shape[1]))
    lock = threading.Lock()

    def load(model_id):
        with lock:  # Orbax restores one at a time
            return snapshots.load_variables(workdir, model_id, "final")

    def score(n):
        i = held[n]
        r = rows[i]
        xv, yv = data.task_split(dataset, r["classes"], "val")
        if eval_cfg.max_val_images:
            xv, yv = xv[:eval_cfg.max_val_images], yv[:eval_cfg.max_val_images]
        xt = data.task_split(dataset, r["classes"], "train")[0][orders[n]]
        near = train[int(np.argmin(np.linalg.norm(co[train] - co[i], axis=1)))]
        nets = {
            "pca+ae": pca.decode(p, recon[n]),
            "pca": pca.decode(p, co[i]),
            "copy": load(rows[near]["model_id"]),
            "mean": mean_vars,
        }
        original = load(r["model_id"])
        ref_real = inference.logits(module, original, xv)
        ref_noise = inference.logits(module, original, noise)
        out = dict(model_id=r["model_id"], split=r["split"], classes=list(r["classes"]),
                   original_accuracy=metrics.accuracy(ref_real, yv),
                   copy_model_id=rows[near]["model_id"])
        # every variant and its recalibrated twin as one stack [2V]: batched calls, not 4V
        plain = step_lib.stack(list(nets.values()))
        recal = bn.recalibrate_stack(module, plain, xt, num_batches=eval_cfg.recal_batches,
                                     batch_size=eval_cfg.recal_batch_size)
        both = jax.tree_util.tree_map(lambda a, b: np.concatenate([a, np.asarray(b)]), plain, recal)
        real, noisy = (inference.logits_stack(module, both, x) for x in (xv, noise))
        keys = list(nets) + [name + "+recal" for name in nets]
        for key, z_real, z_noise in zip(keys, real, noisy):
            res = {f"real_{k}": x for k, x in metrics.logit_metrics(ref_real, z_real).items()}
            res.update({f"noise_{k}": x for k, x in metrics.logit_metrics(ref_noise, z_noise).items()})
            res["accuracy"] = metrics.accuracy(z_real, yv)
            out[key] = res
        pbar.update(1)
        return out

    with tqdm(total=len(held), desc="reconstruction eval", unit="model", leave=False) as pbar:
        per_model = threads.in_threads(score, range(len(held)), workers)
    splits = list(eval_cfg.splits)
    return dict(splits=splits, **{s: _summary([m for m in per_model if m["split"] == s]) for s in splits},
                selection=dict(checkpoint=selected_on, copy="train", mean="train", pca="train"),
                per_model=per_model)


def _summary(per_model):
    """Mean metrics of each variant over `per_model` (one split's models)."""
    out = dict(num_models=len(per_model),
               original_accuracy=_mean([m["original_accuracy"] for m in per_model]))
    for k in (n + s for n in VARIANTS for s in ("", "+recal")):
        out[k] = {f: _mean([m[k][f] for m in per_model]) for f in (per_model[0][k] if per_model else ())}
    return out


def _mean(xs):
    return float(np.mean(xs)) if len(xs) else float("nan")


def table(results):
    """Markdown table of the variants' mean metrics (`results`: one split's summary)."""
    cols = ("real_agreement", "real_cosine", "real_pearson", "accuracy", "noise_agreement",
            "noise_cosine")
    lines = ["| variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for n in VARIANTS:
        for s in ("", "+recal"):
            m = results.get(n + s, {})
            lines.append(f"| {n + s} | " + " | ".join(
                f"{m[c]:.3f}" if c in m else "-" for c in cols) + " |")
    return "\n".join(lines)


def plot(path, results, split):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [n + s for n in VARIANTS for s in ("", "+recal")]
    models = [m for m in results["per_model"] if m["split"] == split]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, field in zip(axes, ("real_agreement", "noise_agreement")):
        ax.boxplot([[m[k][field] for m in models] for k in keys], showmeans=True)
        ax.set_xticks(range(1, len(keys) + 1), keys, rotation=30, ha="right")
        ax.axhline(1 / 3, color="0.6", ls="--", lw=0.8)
        ax.set(ylabel=field.replace("_", " "), ylim=(0, 1.02),
               title=f"{field.split('_')[0]} inputs, {len(models)} {split} models")
    fig.tight_layout()
    io.savefig(fig, path, dpi=110)
    plt.close(fig)


def write(paths, results):
    """The ae stage's plot, report.md, then metrics.json (last: it marks completion); `paths` as
    `wsjax.ae.paths`. The plot shows the first split with models (test, unless configured)."""
    shown = next((s for s in results["splits"] if results[s]["num_models"]), None)
    if shown:
        plot(paths["plot"], results, shown)
    sel = results["selection"]
    md = ["# Reconstruction of held-out models", "",
          "Final snapshots of held-out models, each split apart. Agreement, cosine and Pearson compare "
          "each variant's logits with the original's on the task's real validation images (real) and "
          "Gaussian inputs (noise); +recal: BatchNorm statistics re-estimated on the task's train "
          f"images. Selections: the AE checkpoint on {sel['checkpoint']} models; PCA, the copy "
          f"(nearest model) and the mean model on {sel['copy']} models.", ""]
    for s in results["splits"]:
        r = results[s]
        caveat = (" (the AE checkpoint was selected on these: optimistic)" if s == sel["checkpoint"]
                  else " (never used for any selection)")
        md += [f"## {s} models{caveat}", "",
               f"{r['num_models']} models, original accuracy {r['original_accuracy']:.3f}.", "",
               table(r), ""]
    info = results.get("ae", {})
    if info:
        md += [f"AE: K={info.get('num_coeffs')} coefficients -> latent {info.get('latent_dim')}, "
               f"best {sel['checkpoint']} loss {info.get('best_val_loss', float('nan')):.4f}, "
               f"training {info.get('train_seconds', 0):.1f} s.", ""]
    io.write_text(paths["report"], "\n".join(md))
    io.write_json(paths["metrics"], results)
