"""How well reconstructed held-out networks behave like their originals.

For each held-out model (final snapshot of the configured splits), the original's logits are
compared with those of: 'pca' (decode(encode(w))), 'pca+ae' (through the AE), and baselines
'mean' (the zoo's mean train model) and 'copy' (the nearest train model in PCA coefficient
space, its stored weights), each also '+recal' (BatchNorm statistics re-estimated on the task's
train images). Inputs: Gaussian noise and the task's real validation images.
"""
import json
import os

import jax
import numpy as np
from tqdm import tqdm

from wsjax import data, pca
from wsjax.evaluate import metrics
from wsjax.models import bn, inference
from wsjax.zoo import store as zoo_store

VARIANTS = ("pca+ae", "pca", "copy", "mean")


def evaluate(workdir, eval_cfg, *, p, ae, coeffs, rows, dataset, module, seed=0):
    """dict with, per variant, mean real/noise agreement, cosine, pearson and accuracy, plus
    per-model rows; `coeffs` and `rows` as pca.load_coeffs and its manifest rows."""
    co = coeffs["coeffs"]
    ok = coeffs["status"] == "ok"
    final = coeffs["snapshot"] == "final"
    train = np.flatnonzero(ok & final & (coeffs["split"] == "train"))
    held = np.flatnonzero(ok & final & np.isin(coeffs["split"], list(eval_cfg.splits)))
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(eval_cfg.num_noise,) + dataset.image_shape).astype(np.float32)
    mean_vars = jax.tree_util.tree_map(np.asarray, pca.decode(p, co[train].mean(0)))
    recon = np.asarray(ae.decode(ae.encode(co[held]))) if len(held) else np.zeros((0, co.shape[1]))
    per_model = []
    for n, i in enumerate(tqdm(held, desc="reconstruction eval", unit="model", leave=False)):
        r = rows[i]
        xv, yv = data.task_split(dataset, r["classes"], "val")
        if eval_cfg.max_val_images:
            xv, yv = xv[:eval_cfg.max_val_images], yv[:eval_cfg.max_val_images]
        xt, _ = data.task_split(dataset, r["classes"], "train")
        xt = xt[rng.permutation(len(xt))]
        near = train[int(np.argmin(np.linalg.norm(co[train] - co[i], axis=1)))]
        nets = {
            "pca+ae": pca.decode(p, recon[n]),
            "pca": pca.decode(p, co[i]),
            "copy": zoo_store.load_variables(workdir, rows[near]["model_id"], "final"),
            "mean": mean_vars,
        }
        original = zoo_store.load_variables(workdir, r["model_id"], "final")
        ref_real = inference.logits(module, original, xv)
        ref_noise = inference.logits(module, original, noise)
        out = dict(model_id=r["model_id"], split=r["split"], classes=list(r["classes"]),
                   original_accuracy=metrics.accuracy(ref_real, yv),
                   copy_model_id=rows[near]["model_id"])
        for name, v in nets.items():
            v = jax.tree_util.tree_map(np.asarray, v)
            for recal in (False, True):
                if recal:
                    v = bn.recalibrate(module, v, xt, num_batches=eval_cfg.recal_batches,
                                       batch_size=eval_cfg.recal_batch_size)
                key = name + ("+recal" if recal else "")
                real = inference.logits(module, v, xv)
                res = {f"real_{k}": x for k, x in metrics.logit_metrics(ref_real, real).items()}
                res.update({f"noise_{k}": x for k, x in
                            metrics.logit_metrics(ref_noise, inference.logits(module, v, noise)).items()})
                res["accuracy"] = metrics.accuracy(real, yv)
                out[key] = res
        per_model.append(out)
    keys = [n + s for n in VARIANTS for s in ("", "+recal")]
    summary = dict(num_models=len(per_model), splits=list(eval_cfg.splits),
                   original_accuracy=_mean([m["original_accuracy"] for m in per_model]))
    for k in keys:
        summary[k] = {f: _mean([m[k][f] for m in per_model])
                      for f in (per_model[0][k] if per_model else ())}
    summary["per_model"] = per_model
    return summary


def _mean(xs):
    return float(np.mean(xs)) if len(xs) else float("nan")


def table(results):
    """Markdown table of the variants' mean metrics."""
    cols = ("real_agreement", "real_cosine", "real_pearson", "accuracy", "noise_agreement",
            "noise_cosine")
    lines = ["| variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for n in VARIANTS:
        for s in ("", "+recal"):
            m = results.get(n + s, {})
            lines.append(f"| {n + s} | " + " | ".join(
                f"{m[c]:.3f}" if c in m else "-" for c in cols) + " |")
    return "\n".join(lines)


def plot(path, results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [n + s for n in VARIANTS for s in ("", "+recal")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, field in zip(axes, ("real_agreement", "noise_agreement")):
        vals = [[m[k][field] for m in results["per_model"]] for k in keys]
        ax.boxplot(vals, showmeans=True)
        ax.set_xticks(range(1, len(keys) + 1), keys, rotation=30, ha="right")
        ax.axhline(1 / 3, color="0.6", ls="--", lw=0.8)
        ax.set(ylabel=field.replace("_", " "), ylim=(0, 1.02),
               title=f"{field.split('_')[0]} inputs, {results['num_models']} held-out models")
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def write(out_dir, results):
    """ae/reconstruction.png, ae/report.md, then ae/metrics.json (last: it marks completion)."""
    if results["per_model"]:
        plot(os.path.join(out_dir, "reconstruction.png"), results)
    info = results.get("ae", {})
    md = ["# Reconstruction of held-out models", "",
          f"{results['num_models']} held-out models (final snapshots of splits "
          f"{', '.join(results['splits'])}); original accuracy {results['original_accuracy']:.3f}. "
          "Agreement, cosine and Pearson compare each variant's logits with the original's on the "
          "task's real validation images (real) and Gaussian inputs (noise); +recal: BatchNorm "
          "statistics re-estimated on the task's train images.", "", table(results), ""]
    if info:
        md += [f"AE: K={info.get('num_coeffs')} coefficients -> latent {info.get('latent_dim')}, "
               f"best val loss {info.get('best_val_loss', float('nan')):.4f}, "
               f"training {info.get('train_seconds', 0):.1f} s.", ""]
    with open(os.path.join(out_dir, "report.md.tmp"), "w") as f:
        f.write("\n".join(md))
    os.replace(os.path.join(out_dir, "report.md.tmp"), os.path.join(out_dir, "report.md"))
    with open(os.path.join(out_dir, "metrics.json.tmp"), "w") as f:
        json.dump(results, f, indent=1)
    os.replace(os.path.join(out_dir, "metrics.json.tmp"), os.path.join(out_dir, "metrics.json"))
