"""Evaluate stage: how well sampled networks meet their request, beside baselines.

For train class sets and held-out class sets (never seen by a zoo model), and for requested
results at quantiles of the zoo's validation losses, it samples one network per request, then
measures its achieved loss and accuracy on the task's validation images. Baselines beside every
number: the nearest zoo model by dataset embedding (copy), the zoo's mean model, the random init.
Writes workdir/evaluate/{metrics.json, report.md, *.png}.
"""
import json
import os

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from wsjax import data, pca
from wsjax.common import config as config_lib
from wsjax.common import store as ckpt
from wsjax.common.config import require
from wsjax.evaluate import metrics, report
from wsjax.models import inference
from wsjax.sample.generate import Generator
from wsjax.zoo import init as init_lib
from wsjax.zoo import store


def r_squared(target, achieved):
    target, achieved = np.asarray(target, float), np.asarray(achieved, float)
    ss_tot = ((target - target.mean()) ** 2).sum()
    return float(1 - ((achieved - target) ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan")


def pick_tasks(rows, task_set, num_train, num_held_out):
    """Train class sets (those of held-out test/val models first) and held-out class sets."""
    order = {"test": 0, "val": 1, "train": 2}
    seen = []
    for r in sorted(rows, key=lambda r: (order[r["split"]], r["model_id"])):
        if r["classes"] not in seen:
            seen.append(r["classes"])
    return seen[:num_train], list(task_set.held_out[:num_held_out])


def pick_targets(rows, quantiles):
    """(val loss, val accuracy) of the zoo train snapshots at the given val-loss quantiles."""
    ok = sorted((r for r in rows if r["split"] == "train" and r["status"] == "ok"),
                key=lambda r: r["val_loss"])
    picks = [ok[int(round(q * (len(ok) - 1)))] for q in quantiles]
    return [(r["val_loss"], r["val_accuracy"]) for r in picks]


class _Zoo:
    """The zoo's final train snapshots, their PCA coefficients and task features, loaded once."""

    def __init__(self, workdir, gen, rows):
        self.rows = [r for r in rows if r["split"] == "train" and r["status"] == "ok"]
        coeffs = pca.load_coeffs(workdir)
        index = {(int(m), str(s)): i for i, (m, s) in enumerate(zip(coeffs["model_id"], coeffs["snapshot"]))}
        self.coeffs = coeffs["coeffs"][[index[(r["model_id"], r["snapshot"])] for r in self.rows]]
        self.task_feats = np.stack([gen.encoder.task_features(r["classes"]) for r in self.rows])
        final = [i for i, r in enumerate(self.rows) if r["snapshot"] == "final"]
        finals = [self.rows[i] for i in final]
        # The mean model: the mean of final snapshots, which PCA stores exactly (zero coefficients
        # are the mean of all fitted snapshots, so average the final ones' coefficients).
        self.mean_variables = jax.tree_util.tree_map(
            np.asarray, pca.decode(gen.pca, self.coeffs[final].mean(0)))
        self.final_acc = {}
        for r in finals:
            self.final_acc.setdefault(r["classes"], []).append(r["val_accuracy"])
        self.median_acc = float(np.median([r["val_accuracy"] for r in finals]))

    def copy(self, feats, target_loss):
        """The snapshot of the nearest task (dataset embedding) whose val loss is nearest the target."""
        d = np.linalg.norm(self.task_feats - feats, axis=1)
        near = np.flatnonzero(d <= d.min() + 1e-6)
        best = near[np.argmin([abs(self.rows[i]["val_loss"] - target_loss) for i in near])]
        return self.rows[best]

    def nearest_in_weight_space(self, coeffs):
        return self.rows[int(np.argmin(np.linalg.norm(self.coeffs - coeffs, axis=1)))]


def _load_zoo_variables(workdir, row):
    return store.load_variables(workdir, row["model_id"], row["snapshot"])


def run(config, workdir):
    out_dir = config_lib.stage_dir(workdir, "evaluate")
    if os.path.exists(os.path.join(out_dir, "metrics.json")):
        logging.info("evaluate: %s/metrics.json exists; delete it to re-evaluate", out_dir)
        return json.load(open(os.path.join(out_dir, "metrics.json")))
    require(len(config.target_quantiles) >= 2, "config.target_quantiles needs >= 2 quantiles for R²")
    gen = Generator(workdir)
    rows = store.read_manifest(workdir)
    task_set = data.task_set(gen.zoo_config.tasks, gen.dataset.num_classes)
    train_tasks, held_tasks = pick_tasks(rows, task_set, config.num_train_tasks, config.num_held_out_tasks)
    targets = pick_targets(rows, config.target_quantiles)
    zoo = _Zoo(workdir, gen, rows)
    init_path = init_lib.init_path(workdir)  # absent for init='per_model': no shared init to show
    random_init = ckpt.restore(init_path) if ckpt.exists(init_path) else None
    recal = dict(num_batches=config.recalibrate.num_batches, batch_size=config.recalibrate.batch_size)

    def finish(variables, classes):
        return gen.recalibrate(variables, classes, **recal) if config.recalibrate.enabled else variables

    records = []
    tasks = [(c, "train") for c in train_tasks] + [(c, "held_out") for c in held_tasks]
    for classes, kind in tqdm(tasks, desc="evaluate tasks"):
        x_val, y_val = data.task_split(gen.dataset, classes, "val")
        feats = gen.encoder.task_features(classes)
        z = gen.latents([classes] * len(targets), [t[0] for t in targets], [t[1] for t in targets])
        decoded_coeffs = np.asarray(gen.autoencoder.decode(z))
        stacked = gen.weights(z)
        baseline = {}
        for name, variables in (("mean", zoo.mean_variables), ("random_init", random_init)):
            if variables is not None:
                baseline[name] = inference.loss_accuracy(gen.module, finish(variables, classes), x_val, y_val)
        for j, (t_loss, t_acc) in enumerate(targets):
            sampled = finish(jax.tree_util.tree_map(lambda x: np.asarray(x[j]), stacked), classes)
            s_logits = inference.logits(gen.module, sampled, x_val)
            loss, acc = inference.scores(s_logits, y_val)
            copy_row = zoo.copy(feats, t_loss)
            c_loss, c_acc = inference.loss_accuracy(
                gen.module, finish(_load_zoo_variables(workdir, copy_row), classes), x_val, y_val)
            nearest = zoo.nearest_in_weight_space(decoded_coeffs[j])
            n_logits = inference.logits(gen.module, finish(_load_zoo_variables(workdir, nearest), classes), x_val)
            records.append(dict(
                classes=list(classes), kind=kind, target_loss=t_loss, target_accuracy=t_acc,
                loss=loss, accuracy=acc, copy_loss=c_loss, copy_accuracy=c_acc,
                copy_same_task=tuple(copy_row["classes"]) == tuple(classes),
                mean_loss=baseline.get("mean", (np.nan,))[0], mean_accuracy=baseline.get("mean", (0, np.nan))[1],
                random_loss=baseline.get("random_init", (np.nan,))[0],
                random_accuracy=baseline.get("random_init", (0, np.nan))[1],
                zoo_median_accuracy=float(np.median(zoo.final_acc.get(tuple(classes), [zoo.median_acc]))),
                nearest_agreement=metrics.logit_metrics(n_logits, s_logits)["agreement"],
            ))
    results = summarise(records, workdir)
    heat = report.cosine_heatmap(gen, workdir, config.heatmap_size)
    results["heatmap_diagonal_mean"] = heat
    with open(os.path.join(out_dir, "records.json"), "w") as f:
        json.dump(records, f, indent=1)
    report.write(out_dir, results, records)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(report.one_line(results))
    return results


def summarise(records, workdir):
    """Per kind of task: R² of requested vs achieved loss, accuracies vs zoo median, baselines."""
    out = {}
    for kind in ("train", "held_out"):
        rs = [r for r in records if r["kind"] == kind]
        if not rs:
            continue
        col = lambda k: np.array([r[k] for r in rs], float)  # noqa: E731
        best = {}  # per task, its best sampled network
        for r in rs:
            if r["accuracy"] >= best.get(tuple(r["classes"]), {"accuracy": -1})["accuracy"]:
                best[tuple(r["classes"])] = r
        out[kind] = dict(
            num_tasks=len({tuple(r["classes"]) for r in rs}), num_samples=len(rs),
            r2_loss=r_squared(col("target_loss"), col("loss")),
            r2_accuracy=r_squared(col("target_accuracy"), col("accuracy")),
            copy_r2_loss=r_squared(col("target_loss"), col("copy_loss")),
            copy_r2_accuracy=r_squared(col("target_accuracy"), col("copy_accuracy")),
            accuracy=float(col("accuracy").mean()), copy_accuracy=float(col("copy_accuracy").mean()),
            mean_model_accuracy=float(np.nanmean(col("mean_accuracy"))),
            random_init_accuracy=float(np.nanmean(col("random_accuracy"))),
            best_accuracy_vs_zoo_median=float(np.mean(
                [b["accuracy"] / b["zoo_median_accuracy"] for b in best.values()])),
            memorisation_agreement=float(col("nearest_agreement").mean()),
        )
    for name in ("ae", "align"):
        path = os.path.join(workdir, name, "metrics.json")
        if os.path.exists(path):
            out[name] = json.load(open(path))
    return out
