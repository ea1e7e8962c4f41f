"""Stage 'bench_properties': property prediction from each representation of the zoo's snapshots.

Per seed, a share of the zoo's class sets is held out with all their models; probes (ridge,
logistic, MLP, gradient-boosted trees: wsjax.properties.probes) train on the train-split models
of the other class sets and are scored on two kinds of held-out models, both unseen by them:

    held_out_class_sets   every model of the held-out class sets (the issue's goal)
    held_out_models       the zoo's val/test models of the other class sets

The pca / ae / sane representations were fitted without labels on the zoo's train split, which
includes the held-out class sets' train models (their properties were never seen). Writes

    bench_properties/results.json          {representation: {property: {"r2", "kendall_tau"} |
                                            {"accuracy"}}}: held-out class sets, best probe per cell
                                            by train CV, mean over seeds (and "*_std", "probe")
    bench_properties/details.json          both kinds of held-out models, every probe, every seed
    bench_properties/report.md             the tables; predicted_vs_true.png (seed 0)
"""
import hashlib
import os
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from wsjax.common import config as config_lib
from wsjax.common import contract
from wsjax.common import io
from wsjax.common.config import require
from wsjax.properties import probes
from wsjax.properties import representations as reps
from wsjax.zoo import hparams, snapshots

STAGE = "bench_properties"
SCORED_ON = ("held_out_class_sets", "held_out_models")
REGRESSION = ("val_accuracy", "val_loss", "generalisation_gap", "step", "learning_rate")
LOG_SCORED = ("val_loss", "step", "learning_rate")  # also scored as R² of their logs
MEASURED = ("val_accuracy", "val_loss", "generalisation_gap")  # on finitely many images; the rest exact


def check_config(config):
    b = config.get("bench")
    require(b is not None and all(k in config for k in ("ridge", "mlp", "gbm")),
            "config.bench/ridge/mlp/gbm are missing: use configs/bench/properties.py")
    require(len(b.seeds) >= 1, "config.bench.seeds must name at least one seed")
    require(0 < b.held_out_fraction < 1,
            f"config.bench.held_out_fraction must be in (0, 1), got {b.held_out_fraction}")
    unknown = {p for n in b.representations for p in n.split("+")} - set(reps.NAMES)
    require(not unknown, f"config.bench.representations: unknown {sorted(unknown)}; use {reps.NAMES} "
            "or several joined by '+' (their features side by side)")
    unknown = set(b.properties) - set(REGRESSION)
    require(not unknown, f"config.bench.properties: unknown {sorted(unknown)}; use {REGRESSION}")
    require(b.cv_folds >= 2, f"config.bench.cv_folds must be >= 2, got {b.cv_folds}")
    require(b.pca_components >= 1, f"config.bench.pca_components must be >= 1, got {b.pca_components}")
    require(len(config.ridge.alphas) >= 1 and min(config.ridge.alphas) > 0,
            "config.ridge.alphas must be positive numbers")


def snapshot_scores(workdir, rows, num_images, cache):
    """{'train_loss': [N], 'halves': {'train_loss' | 'val_loss' | 'val_accuracy': [N, 2]}} of each
    snapshot of `rows`, in inference mode: its loss on the first `num_images` of the train images
    it trained on (the zoo's own train_loss is a running minibatch mean in train mode since the previous
    snapshot, not a property of the snapshot), and each score on the even- and odd-indexed
    halves of those images and of the task's val images (`reliability`). Cached in `cache`
    under the zoo's fingerprint."""
    from wsjax import data, models
    from wsjax.models import inference
    fingerprint = contract.current(workdir, "zoo")["fingerprint"]
    names = ("train_loss", "val_loss", "val_accuracy")
    if os.path.exists(cache):
        with np.load(cache) as f:
            if str(f["zoo"]) == fingerprint and int(f["num_images"]) == num_images and "val_loss" in f:
                return dict(train_loss=f["loss"], halves={n: f[n] for n in names})
    zoo = config_lib.load(workdir, "zoo")
    dataset, module_of = data.load(zoo.data), models.builder(zoo.model, zoo.tasks.k)
    index = snapshots.snapshot_index(snapshots.read_manifest(workdir))
    loss, halves = np.empty(len(rows)), {n: np.empty((len(rows), 2)) for n in names}
    by_model = {}
    for i, r in enumerate(rows):
        by_model.setdefault(r["model_id"], []).append(i)
    for model_id, members in tqdm(by_model.items(), desc="bench_properties: train scores", unit="model",
                                  leave=False):
        stacked = snapshots.load_snapshots(workdir, model_id)
        r = rows[members[0]]
        module = module_of(r["activation"])  # a zoo may mix them: each model its own
        # train: the images it trained on (a train_fraction model: its subset), with the labels it
        # trained on (label_noise: some of them wrong)
        idx, local = hparams.train_indices(dataset.y_train, r["classes"], r["train_fraction"], r["seed"],
                                           r["label_noise"])
        images = dict(train=(dataset.x_train[idx[:num_images]], local[:num_images]),
                      val=data.task_split(dataset, r["classes"], "val"))
        logits = {split: inference.logits_stack(module, stacked, x) for split, (x, _) in images.items()}
        out = {split: [inference.scores_stack(z[:, h::2], images[split][1][h::2]) for h in (0, 1)]
               for split, z in logits.items()}  # halves
        model_loss = inference.scores_stack(logits["train"], images["train"][1])[0]
        for i in members:
            j = index[(model_id, rows[i]["snapshot"])]
            loss[i] = model_loss[j]
            halves["train_loss"][i] = [h[0][j] for h in out["train"]]
            halves["val_loss"][i] = [h[0][j] for h in out["val"]]
            halves["val_accuracy"][i] = [h[1][j] for h in out["val"]]
    io.savez(cache, loss=loss, zoo=fingerprint, num_images=num_images, **halves)
    return dict(train_loss=loss, halves=halves)


def reliability(halves, name, mask):
    """Split-half reliability of property `name` over the rows of `mask`: how much of its variance
    survives measuring it on other images of the same classes. The Spearman-Brown 2r / (1 + r),
    r the correlation of its two half-measurements (0 where they do not correlate); `name` one
    of MEASURED. Not a ceiling on probes: every class set with a digit shares that digit's val
    images, so what is specific to those images is learnable across class sets."""
    a = halves["val_loss"] - halves["train_loss"] if name == "generalisation_gap" else halves[name]
    r = np.corrcoef(a[mask, 0], a[mask, 1])[0, 1]
    return float(2 * r / (1 + r)) if r > 0 else 0.0  # also 0 for a NaN r


def identical_networks(workdir, rows):
    """[N] ids of manifest `rows`, equal where their snapshots hold bitwise the same variables
    (under a shared init, every model's step 0)."""
    def digests(stacked, _):
        leaves = [np.asarray(x).reshape(len(x), -1) for x in jax.tree_util.tree_leaves(stacked)]
        return np.array([[hashlib.sha1(b"".join(leaf[j].tobytes() for leaf in leaves)).hexdigest()]
                         for j in range(len(leaves[0]))])
    ids = reps.zoo_statistics(workdir, rows, digests, desc="bench_properties: identical networks")
    return np.unique(ids[:, 0], return_inverse=True)[1]


def ceiling(y, networks, mask):
    """The highest R² any function of the network can reach on the rows of `mask`: identical
    networks (`networks`: identical_networks) get one prediction, at best their mean."""
    y, (_, group) = y[mask], np.unique(networks[mask], return_inverse=True)
    return probes.r2(y, (np.bincount(group, y) / np.bincount(group))[group])


def target(rows, name, train_loss):
    """[N] values of property `name`; generalisation_gap = val_loss - train_loss, both of the
    snapshot itself in inference mode (`train_loss`: snapshot_scores)."""
    if name == "generalisation_gap":
        return np.array([r["val_loss"] for r in rows]) - train_loss
    return np.array([r[name] for r in rows], np.float64)


def categorical_targets(rows, names, train):
    """{name: integer labels [N]} of the categorical columns present with >= 2 classes among the
    train rows; rows of a class the train rows lack get -1 (never predicted right)."""
    out = {}
    for name in names:
        if name not in rows[0]:
            continue
        values = np.array([str(r[name]) for r in rows])
        classes = sorted(set(values[train]))
        if len(classes) >= 2:
            out[name] = np.array([classes.index(v) if v in classes else -1 for v in values])
    return out


def masks(rows, seed, fraction):
    """{'train', *SCORED_ON: boolean [N]} for one seed."""
    sets = np.array(["-".join(map(str, r["classes"])) for r in rows])
    split = np.array([r["split"] for r in rows])
    unique = sorted(set(sets))
    rng = np.random.default_rng([seed, 11])
    held = set(rng.choice(unique, max(1, round(fraction * len(unique))), replace=False))
    held_mask = np.isin(sets, list(held))
    return dict(train=(split == "train") & ~held_mask, held_out_class_sets=held_mask,
                held_out_models=~held_mask & (split != "train"), groups=sets)


def scores(y, pred, categorical, log_scale=False):
    """Accuracy, or R² and Kendall τ; with `log_scale` also R² of log(value + shift), shift 1
    where the values include 0 (step 0), predictions clipped to the values' positive range."""
    if categorical:
        return dict(accuracy=float((pred == y).mean()))
    out = dict(r2=probes.r2(y, pred), kendall_tau=probes.kendall_tau(y, pred))
    if log_scale:
        shift = 0.0 if y.min() > 0 else 1.0
        low = 0.5 * (y + shift).min()
        out["r2_log"] = probes.r2(np.log(y + shift), np.log(np.maximum(pred + shift, low)))
    return out


def cell(x, y, m, folds, config, key, categorical, log_scale):
    """Every probe of one (representation, property): CV score on train, scores per SCORED_ON,
    and the best probe by CV with its held-out-class-set predictions."""
    train = m["train"]
    gbm = config.gbm.to_dict()
    if categorical:
        fits = dict(logistic=probes.fit_logistic(x, y, train, folds, config.logistic),
                    mlp=probes.fit_mlp(x, y, train, folds, config.mlp, key, num_classes=int(y.max()) + 1),
                    gbm=probes.fit_gbm(x, y, train, folds, gbm, classify=True))
    else:
        ridge = probes.fit_ridge(x, y, train, folds, config.ridge)
        transform = ridge[2]["transform"]
        fits = dict(ridge=ridge, mlp=probes.fit_mlp(x, y, train, folds, config.mlp, key, transform=transform),
                    gbm=probes.fit_gbm(x, y, train, folds, gbm, transform=transform))
    out = {}
    for name, (predict, cv, settings) in fits.items():
        out[name] = dict(cv=cv, settings=settings, **{
            kind: scores(y[m[kind]], predict(x[m[kind]]), categorical, log_scale)
            for kind in SCORED_ON if m[kind].any()})
    best = max(out, key=lambda n: out[n]["cv"])
    predicted = fits[best][0](x[m["held_out_class_sets"]])
    return out, best, predicted


def features(raw, name, train, config):
    """The features of representation `name` ('a+b': a's and b's side by side) from `raw`
    {representation: raw features}; 'pca' projected on directions fitted on the train rows."""
    out = []
    for part in name.split("+"):
        x = raw[part]
        if part == "pca":
            x = reps.pca_projection(x, np.flatnonzero(train), config.bench.pca_components)
        out.append(x)
    return np.concatenate(out, axis=1)


def summarise(per_seed, kind):
    """{rep: {prop: {metric: mean, metric_std: std, probe: best probe of seed 0}}} over seeds."""
    out = {}
    for rep in per_seed[0]:
        out[rep] = {}
        for prop, c in per_seed[0][rep].items():
            runs = [s[rep][prop] for s in per_seed]
            if kind not in runs[0]["probes"][runs[0]["best"]]:
                continue
            values = [r["probes"][r["best"]][kind] for r in runs]
            entry = {}
            for metric in values[0]:
                v = [x[metric] for x in values]
                entry[metric], entry[f"{metric}_std"] = float(np.mean(v)), float(np.std(v))
            entry["probe"] = c["best"]
            out[rep][prop] = entry
    return out


def table(summary, props):
    """A markdown table: representations x properties, R² (τ) or accuracy, mean ± std."""
    lines = ["| representation | " + " | ".join(props) + " |", "|---" * (len(props) + 1) + "|"]
    # a cell: R² ± std over seeds (Kendall τ, R² of the logs where scored, the best probe)
    for rep, cells in summary.items():
        row = []
        for p in props:
            e = cells.get(p)
            if e is None:
                row.append("—")
            elif "accuracy" in e:
                row.append(f"acc {e['accuracy']:.3f} ± {e['accuracy_std']:.3f}")
            else:
                log = f", log {e['r2_log']:.3f}" if "r2_log" in e else ""
                row.append(f"{e['r2']:.3f} ± {e['r2_std']:.3f} (τ {e['kendall_tau']:.2f}{log}, {e['probe']})")
        lines.append(f"| {rep} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def reliability_line(values):
    return ", ".join(f"{p} {c['mean']:.3f} ± {c['std']:.3f}" for p, c in values.items())


def plot(path, values, per_seed_predictions, held, props):
    """Predicted vs true on the held-out class sets (seed 0, best probe): properties x representations."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(per_seed_predictions)
    fig, axes = plt.subplots(len(props), len(names), figsize=(3 * len(names), 3 * len(props)),
                             squeeze=False)
    for i, prop in enumerate(props):
        y = values[prop][held]
        for j, rep in enumerate(names):
            ax = axes[i, j]
            pred = per_seed_predictions[rep][prop]
            ax.scatter(y, pred, s=4, alpha=0.5)
            lo, hi = min(y.min(), pred.min()), max(y.max(), pred.max())
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            if prop in ("step", "learning_rate") and y.min() > 0:
                ax.set_xscale("log")
                ax.set_yscale("symlog", linthresh=y.min())
            ax.set_title(f"{rep}: {prop}", fontsize=8)
    fig.supxlabel("true")
    fig.supylabel("predicted")
    fig.tight_layout()
    io.savefig(fig, path, dpi=90)
    plt.close(fig)


def run(config, workdir):
    check_config(config)
    start = time.time()
    out_dir = config_lib.stage_dir(workdir, STAGE)
    b = config.bench
    rows = [r for r in snapshots.read_manifest(workdir) if r["status"] == "ok"]
    names = reps.available(workdir, b.representations)
    skipped = sorted(set(b.representations) - set(names))
    if skipped:
        logging.warning("bench_properties: %s read a stage that has not run in %s: skipped",
                        ", ".join(skipped), workdir)
    tic = time.time()
    raw = reps.load(workdir, list(dict.fromkeys(p for name in names for p in name.split("+"))), rows,
                    b.probe_images)
    logging.info("bench_properties: features %s in %.1f s", {n: x.shape for n, x in raw.items()},
                 time.time() - tic)
    inputs = {s: contract.current(workdir, s)["fingerprint"]
              for s in ["zoo"] + [reps.OUTPUTS[n][0] for n in raw if n in reps.OUTPUTS]}
    measured = snapshot_scores(workdir, rows, b.train_images, os.path.join(out_dir, "train_scores.npz"))
    values = {p: target(rows, p, measured["train_loss"]) for p in b.properties}
    networks = identical_networks(workdir, rows)

    per_seed, reliabilities, ceilings, predictions, props = [], [], [], None, None
    bar = tqdm(total=len(b.seeds) * len(names), desc="bench_properties: probes", unit="representation",
               leave=False)
    for seed in b.seeds:
        m = masks(rows, seed, b.held_out_fraction)
        require(m["train"].sum() >= 2 and m["held_out_class_sets"].any(),
                f"the zoo in {workdir} leaves too few train or held-out rows at "
                f"held_out_fraction={b.held_out_fraction}")
        reliabilities.append({p: reliability(measured["halves"], p, m["held_out_class_sets"])
                              for p in values if p in MEASURED})
        # a property constant on the train rows (one learning rate, say) has nothing to predict
        targets = {p: (y, False) for p, y in values.items() if y[m["train"]].std() > 0}
        ceilings.append({p: ceiling(y, networks, m["held_out_class_sets"]) for p, (y, _) in targets.items()})
        categorical = categorical_targets(rows, b.categorical, m["train"])
        targets.update({p: (y, True) for p, y in categorical.items()})
        props = list(targets)
        folds = probes.group_folds(m["groups"][m["train"]], b.cv_folds, seed)
        key = jax.random.key(seed)
        results, seed_predictions = {}, {}
        for rep in names:
            x = features(raw, rep, m["train"], config)
            results[rep], seed_predictions[rep] = {}, {}
            for i, (prop, (y, is_categorical)) in enumerate(targets.items()):
                probes_out, best, pred = cell(x, y, m, folds, config, jax.random.fold_in(key, i),
                                              is_categorical, prop in LOG_SCORED)
                results[rep][prop] = dict(probes=probes_out, best=best)
                seed_predictions[rep][prop] = pred
                logging.info("bench_properties: seed %d %s %s: best %s %s", seed, rep, prop, best,
                             probes_out[best].get("held_out_class_sets"))
            bar.update()
        per_seed.append(results)
        predictions = predictions or (seed_predictions, m["held_out_class_sets"])
    bar.close()

    summary = {kind: summarise(per_seed, kind) for kind in SCORED_ON}
    regression = [p for p in props if p in REGRESSION]
    split_half, identical = (
        {p: dict(mean=float(np.mean([c[p] for c in runs])), std=float(np.std([c[p] for c in runs])))
         for p in runs[0]} for runs in (reliabilities, ceilings))
    io.write_json(os.path.join(out_dir, "results.json"), summary["held_out_class_sets"])
    io.write_json(os.path.join(out_dir, "details.json"), dict(
        seeds=list(b.seeds), representations=names, skipped=skipped, inputs=inputs,
        summary=summary, per_seed=per_seed, split_half_reliability=split_half,
        identical_network_ceiling=identical, num_snapshots=len(rows),
        seconds=time.time() - start))
    report = [f"# Property prediction ({len(rows)} snapshots, seeds {list(b.seeds)}, mean ± std)", ""]
    for kind in SCORED_ON:
        report += [f"## {kind}", "", "R² (Kendall τ, best probe by train CV) or accuracy", "",
                   table(summary[kind], props), ""]
    report += [f"generalisation_gap = val_loss - train_loss of the snapshot, the train loss on the first "
               f"{b.train_images} of the train images it trained on, in inference mode. "
               f"R² on the original scale; "
               "r2_log (details.json) on log(value + shift) for positive properties.", "",
               "Split-half reliability (held-out class sets; of each measured property, over its images: "
               "how much of its variance survives measuring it on other images of the same classes): "
               + reliability_line(split_half), "",
               "Identical-network ceiling (held-out class sets; the highest R² of any function of the "
               "network, as bitwise-identical networks, such as every model's step 0 under a shared init, "
               "get one prediction): " + reliability_line(identical), "",
               "![](predicted_vs_true.png)", ""]
    io.write_text(os.path.join(out_dir, "report.md"), "\n".join(report))
    plot(os.path.join(out_dir, "predicted_vs_true.png"), values, predictions[0], predictions[1], regression)
    print("bench_properties: held-out class sets, R² (Kendall τ) / accuracy, "
          f"mean ± std over seeds {list(b.seeds)}")
    print(table(summary["held_out_class_sets"], props))
    print("bench_properties: split-half reliability over images: " + reliability_line(split_half))
    print("bench_properties: identical-network ceiling on R²: " + reliability_line(identical))
    logging.info("bench_properties: done in %.1f s", time.time() - start)
    return summary
