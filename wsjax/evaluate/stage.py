"""Evaluate stage: do sampled networks obey the request, and do they beat copying the zoo?

Two kinds of class sets: 'held_out' (no zoo model saw them) and 'train' (class sets of held-out
val/test models; train models of the same set exist). For each, requested val losses at quantiles
of the train zoo's snapshot losses, and per sampler one network per request:
- 'best' (the default sampler): the pool of the predicted path and flow samples, keeping per
  request the candidate whose loss on the task's *train* images is nearest; scored on *val* images;
- each generator alone ('path', 'ridge', 'flow', and 'thesis' = align + AE decoder);
- 'copy': the snapshot of the nearest train class set (class slots) with the nearest val loss.
At the zoo's median final loss: accuracy of 'best' vs copy, copy plus Gaussian noise of the
sample's own distance to the zoo, the mean model and the random init; novelty; fine-tuning curves.
Every network is BN-recalibrated on the task's train images. Writes workdir/evaluate/.
"""
import json
import os
import threading

import jax
import numpy as np
from scipy import stats
from tqdm import tqdm

from wsjax import ae, align, data, generator, sane
from wsjax.common import config as config_lib
from wsjax.common import io, threads
from wsjax.common import checkpoints as ckpt
from wsjax.common.config import require
from wsjax.evaluate import finetune, metrics, report
from wsjax.generator import features, linear, select
from wsjax.generator import stage as generator_stage
from wsjax.models import bn, inference
from wsjax.sane import sample as sane_sample
from wsjax.sample.stage import default_targets
from wsjax.zoo import init as init_lib
from wsjax.zoo import step as step_lib
from wsjax.zoo import stage as zoo_stage
from wsjax.zoo import snapshots


def r_squared(target, achieved):
    """1 - SS_res / SS_tot of achieved against requested (the identity is the model)."""
    target, achieved = np.asarray(target, float), np.asarray(achieved, float)
    ss_tot = ((target - target.mean()) ** 2).sum()
    return float(1 - ((achieved - target) ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan")


def spearman(target, achieved):
    """Rank correlation of achieved with requested; NaN where either is constant (undefined)."""
    if np.ptp(target) == 0 or np.ptp(achieved) == 0:
        return float("nan")
    return float(stats.spearmanr(target, achieved)[0])


def pick_tasks(rows, task_set, num_train, num_held_out):
    """Class sets of held-out (test, then val) models, and held-out class sets."""
    seen = []
    for r in sorted(rows, key=lambda r: ({"test": 0, "val": 1}.get(r["split"], 2), r["model_id"])):
        if r["split"] in ("val", "test") and r["classes"] not in seen:
            seen.append(r["classes"])
    return seen[:num_train], list(task_set.held_out[:num_held_out])


def copy_index(train_feats, train_losses, feats, target):
    """Index of the train snapshot of the nearest class set (class features) whose val loss is
    nearest `target` (in log space): the copy baseline."""
    d = np.linalg.norm(np.asarray(train_feats) - feats, axis=1)
    near = np.flatnonzero(d <= d.min() + 1e-6)
    return int(near[np.argmin(np.abs(np.log(np.asarray(train_losses)[near] / target)))])


def pick_targets(rows, quantiles):
    """Requested val losses: quantiles of the train snapshots' val losses."""
    losses = [r["val_loss"] for r in rows if r["split"] == "train"]
    return [float(v) for v in np.quantile(losses, quantiles)]


class Context:
    """The zoo, its coefficients and every generator, loaded once."""

    def __init__(self, config, workdir):
        self.config, self.workdir, self._models, self._lock = config, workdir, {}, threading.Lock()
        zoo_config = self.zoo_config = config_lib.load(workdir, "zoo")
        step_lib.enable_compile_cache(zoo_config.get("compile_cache", ""))  # the zoo's train step
        self.dataset = data.load(zoo_config.data)
        self.task_set = data.task_set(zoo_config.tasks, self.dataset.num_classes)
        self.rows, self.coeffs = generator_stage.zoo_table(workdir)
        self._index = snapshots.snapshot_index(snapshots.read_manifest(workdir))
        self.train = [i for i, r in enumerate(self.rows) if r["split"] == "train"]
        self.gen = generator.load(workdir)
        self.module = self.gen.module
        self.thesis = None
        if "thesis" in config.samplers:
            from wsjax.sample.generate import Generator
            self.thesis = Generator(workdir)
        self.class_feats = np.stack([features.class_features(self.rows[i]["classes"],
                                                             self.dataset.num_classes) for i in self.train])
        self.train_losses = [self.rows[i]["val_loss"] for i in self.train]
        self.median_loss, self.median_accuracy = default_targets(workdir)
        finals = [i for i in self.train if self.rows[i]["snapshot"] == "final"]
        self.mean_model = self.gen.decode_coeffs(self.coeffs[finals].mean(0)[None])
        init_path = init_lib.init_path(workdir)  # absent for init='per_model'
        self.shared_init = ckpt.restore(init_path) if ckpt.exists(init_path) else None
        self.fresh_init = init_lib.random_init(  # a draw no zoo model started from
            self.module, self.dataset.image_shape, jax.random.key(config.seed + 10_000),
            zoo_config.init_methods[0])
        self.sane = None
        if config.sane.enabled and sane.done(workdir):
            self.sane = sane.load(workdir)

    def recalibrate(self, stacked, prompt):
        """Stacked networks with BN statistics of the prompt's train images (if enabled)."""
        r = self.config.recalibrate
        if not r.enabled:
            return stacked
        return bn.recalibrate_stack(self.module, stacked, prompt["train"][0],
                                    num_batches=r.num_batches, batch_size=r.batch_size)

    def scores(self, stacked, prompt, recalibrate=True):
        """Stacked networks BN-recalibrated on the prompt's train images, and their [N] val
        losses, [N] val accuracies and [N, n, C] val logits, in batched calls."""
        if recalibrate:
            stacked = self.recalibrate(stacked, prompt)
        z = inference.logits_stack(self.module, stacked, prompt["val"][0])
        return (stacked,) + inference.scores_stack(z, prompt["val"][1]) + (z,)

    def sane_sample(self, classes, prompt, key):
        """SANE's network for `classes` and its baseline: the best (train loss after BN
        recalibration) of `config.sane.num_samples` KDE draws around the zoo's best models of the
        nearest sets, and the best of those prompt models themselves."""
        c = self.config.sane
        idx = sane_sample.prompt_rows(self.rows, classes, self.dataset.num_classes, c.num_prompts)
        prompts = step_lib.stack([self.snapshot(i) for i in idx])
        drawn = sane_sample.sample(self.sane, prompts, c.num_samples, key, c.bandwidth,
                                   residual=c.get("residual", False))
        return [self.best_on_train(x, prompt) for x in (drawn, prompts)]

    def best_on_train(self, stacked, prompt):
        """The network of `stacked`, BN-recalibrated, with the lowest loss on the prompt's train images."""
        stacked = self.recalibrate(stacked, prompt)
        losses = select.train_losses(self.module, stacked, prompt["train"])
        return step_lib.unstack(stacked, int(np.nanargmin(losses)))

    def snapshot(self, i):
        """The variables of row i; each model's stacked checkpoint is read once."""
        r = self.rows[i]
        with self._lock:  # class sets are evaluated in threads; Orbax restores one at a time
            if r["model_id"] not in self._models:
                self._models[r["model_id"]] = snapshots.load_snapshots(self.workdir, r["model_id"])
        return step_lib.unstack(self._models[r["model_id"]], self._index[(r["model_id"], r["snapshot"])])

    def copy(self, classes, target):
        """Row index of the copy baseline's snapshot for (classes, target)."""
        feats = features.class_features(classes, self.dataset.num_classes)
        return self.train[copy_index(self.class_feats, self.train_losses, feats, target)]

    def nearest(self, coeffs):
        """Row index of the train snapshot nearest `coeffs` in coefficient space."""
        d = np.linalg.norm(self.coeffs[self.train] - coeffs, axis=1)
        return self.train[int(np.argmin(d))]


def _params_distance(a, b):
    return float(np.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(
        jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"])))))


def noisy_copy(variables, norm, key):
    """The copy plus isotropic Gaussian noise of total norm `norm` over its parameters."""
    leaves, treedef = jax.tree_util.tree_flatten(variables["params"])
    sizes = [np.size(x) for x in leaves]
    noise = np.asarray(jax.random.normal(key, (sum(sizes),)))  # one draw: one compiled shape
    noise = noise * (norm / np.linalg.norm(noise))
    parts = np.split(noise, np.cumsum(sizes)[:-1])
    params = [x + n.reshape(np.shape(x)) for x, n in zip(leaves, parts)]
    return dict(variables, params=jax.tree_util.tree_unflatten(treedef, params))


def _stack(trees):
    return jax.tree_util.tree_map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *trees)


def _single(variables):
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[None], variables)


def score_groups(ctx, groups, prompt):
    """{name: stacked networks} -> {name: (recalibrated stack, loss [n], accuracy [n], logits)},
    every group scored in one batched call."""
    sizes = [len(jax.tree_util.tree_leaves(g)[0]) for g in groups.values()]
    out = ctx.scores(_stack(list(groups.values())), prompt)
    ends = np.cumsum(sizes)
    return {name: tuple(jax.tree_util.tree_map(lambda x: x[e - n:e], o) for o in out)
            for name, n, e in zip(groups, sizes, ends)}


def evaluate_task(ctx, classes, kind, targets, key):
    """Records of every sampler and baseline for one class set."""
    cfg = ctx.config
    x_train, y_train = select.prompt_images(ctx.dataset, classes, cfg.seed)
    prompt = dict(train=(x_train, y_train), val=data.task_split(ctx.dataset, classes, "val"))
    base = dict(kind=kind, classes=list(classes))
    median = ctx.median_loss
    k_pool, k_flow, k_noise, k_sane = jax.random.split(key, 4)

    # keep-the-best over one pool per class set: chosen on train images, scored on val images
    pool_z = ctx.gen.candidates(classes, targets + [median], k_pool, **cfg.pool)
    pool = ctx.recalibrate(ctx.gen.variables(pool_z), prompt)
    train_loss = select.train_losses(ctx.module, pool, prompt["train"])
    expected = select.calibrate(train_loss, ctx.gen.meta["calibration"])
    chosen = select.nearest(expected, targets + [median])  # only these see val images
    picked, best_loss, best_acc, best_logits = ctx.scores(
        jax.tree_util.tree_map(lambda x: x[chosen], pool), prompt, recalibrate=False)
    records = [dict(base, sampler="best", target_loss=t, loss=float(best_loss[j]),
                    accuracy=float(best_acc[j]), train_loss=float(train_loss[i]),
                    expected_loss=float(expected[i]))
               for j, (t, i) in enumerate(zip(targets, chosen))]

    # every generator alone and the baselines, scored together
    groups = {}
    for sampler in cfg.samplers:
        if sampler == "thesis":
            groups[sampler] = ctx.thesis.weights(ctx.thesis.latents(
                [classes] * len(targets), targets, [ctx.median_accuracy] * len(targets)))
        else:
            groups[sampler] = ctx.gen.variables(ctx.gen.latents(sampler, classes, targets, k_flow))
    groups["copy"] = step_lib.stack([ctx.snapshot(ctx.copy(classes, t)) for t in targets])
    # at the zoo's median final loss: the default sampler against every baseline
    i = len(targets)  # the median request's pick
    sample = step_lib.unstack(picked, i)
    near = ctx.nearest(linear.decode(ctx.gen.latent, pool_z[chosen[i]]))
    near_vars = ctx.snapshot(near)
    copy_vars = ctx.snapshot(ctx.copy(classes, median))
    baselines = dict(copy_median=copy_vars, nearest=near_vars,
                     copy_noise=noisy_copy(copy_vars, _params_distance(sample, near_vars), k_noise),
                     mean_model=step_lib.unstack(ctx.mean_model, 0))
    if ctx.shared_init is not None:
        baselines["shared_init"] = ctx.shared_init
    groups.update({name: _single(v) for name, v in baselines.items()})
    scored = score_groups(ctx, groups, prompt)
    for name in tuple(cfg.samplers) + ("copy",):
        _, loss, acc, _ = scored[name]
        records += [dict(base, sampler=name, target_loss=t, loss=float(v), accuracy=float(a))
                    for t, v, a in zip(targets, loss, acc)]

    acc = lambda name: float(scored[name][2][0])  # noqa: E731
    at_median = dict(base, accuracy=float(best_acc[i]), loss=float(best_loss[i]),
                     copy_accuracy=acc("copy_median"), copy_noise_accuracy=acc("copy_noise"),
                     mean_model_accuracy=acc("mean_model"),
                     novelty_agreement=metrics.logit_metrics(scored["nearest"][3][0],
                                                             best_logits[i])["agreement"],
                     nearest_same_classes=tuple(ctx.rows[near]["classes"]) == tuple(classes))
    if ctx.shared_init is not None:
        at_median["shared_init_accuracy"] = acc("shared_init")
    if kind == "held_out":
        f = cfg.finetune
        starts = dict(sample=sample, copy=step_lib.unstack(scored["copy_median"][0], 0))
        if ctx.sane is not None:
            starts["sane"], starts["sane_prompts"] = ctx.sane_sample(classes, prompt, k_sane)
        if ctx.shared_init is not None:
            starts["shared_init"] = ctx.shared_init
        starts["random_init"] = ctx.fresh_init
        z = ctx.zoo_config
        strategy = zoo_stage.resolve_strategy(z)
        at_median["finetune"] = finetune.curves(
            ctx.module, starts, ctx.dataset, classes, prompt["val"], epochs=f.epochs,
            learning_rate=f.learning_rate, batch_size=f.batch_size, seed=cfg.seed,
            strategy=strategy, slots=1 if strategy == "sequential" else int(z.cohort_size),
            diverge_loss_factor=float(z.train.diverge_loss_factor))
    return records, at_median


def same_set_agreement(ctx, max_sets):
    """Agreement on val images of two train models of the same class set (final snapshots)."""
    by_set = {}
    for i in ctx.train:
        if ctx.rows[i]["snapshot"] == "final":
            by_set.setdefault(ctx.rows[i]["classes"], []).append(i)
    out = []
    for classes, idx in list((c, v) for c, v in by_set.items() if len(v) >= 2)[:max_sets]:
        x_train, y_train = select.prompt_images(ctx.dataset, classes, ctx.config.seed)
        prompt = dict(train=(x_train, y_train), val=data.task_split(ctx.dataset, classes, "val"))
        z = ctx.scores(step_lib.stack([ctx.snapshot(i) for i in idx[:2]]), prompt)[3]
        out.append(metrics.logit_metrics(z[0], z[1])["agreement"])
    return float(np.mean(out)) if out else float("nan")


def summarise(records, at_median, samplers, no_selection):
    """Per kind: prompt alignment of every sampler and the copy, accuracies at the median loss."""
    out = {}
    for kind in ("held_out", "train"):
        rs = [r for r in records if r["kind"] == kind]
        if not rs:
            continue
        align = {}
        for s in ("best",) + tuple(samplers) + ("copy",):
            mine = [r for r in rs if r["sampler"] == s]
            t, a = [r["target_loss"] for r in mine], [r["loss"] for r in mine]
            align[s] = dict(r2_loss=r_squared(t, a), spearman_loss=spearman(t, a),
                            accuracy=float(np.mean([r["accuracy"] for r in mine])))
        med = [m for m in at_median if m["kind"] == kind]
        col = lambda k: [m[k] for m in med if k in m]  # noqa: E731
        summary = dict(
            num_class_sets=len(med), num_requests=len(rs) // (len(samplers) + 2),
            r2_loss=align["best"]["r2_loss"], spearman_loss=align["best"]["spearman_loss"],
            r2_loss_no_selection=align[no_selection]["r2_loss"],
            spearman_loss_no_selection=align[no_selection]["spearman_loss"],
            copy_r2_loss=align["copy"]["r2_loss"], copy_spearman_loss=align["copy"]["spearman_loss"],
            samplers=align)
        for k in ("accuracy", "copy_accuracy", "copy_noise_accuracy", "mean_model_accuracy",
                  "shared_init_accuracy", "novelty_agreement"):
            if col(k):
                summary[k] = float(np.mean(col(k)))
        if col("finetune"):
            summary["finetune"] = {name: np.mean([m["finetune"][name] for m in med], 0).tolist()
                                   for name in med[0]["finetune"]}
        out[kind] = summary
    return out


def paths(workdir):
    d = os.path.join(workdir, "evaluate")
    return dict(dir=d, metrics=os.path.join(d, "metrics.json"), records=os.path.join(d, "records.json"),
                report=os.path.join(d, "report.md"))


def load(workdir):
    """The evaluate stage's metrics.json of `workdir`; a clear error if it has not finished."""
    path = paths(workdir)["metrics"]
    require(os.path.exists(path), f"{path} not found: run the 'evaluate' stage with this --workdir first")
    with open(path) as f:
        return json.load(f)


def run(config, workdir):
    out_dir, out = config_lib.stage_dir(workdir, "evaluate"), paths(workdir)
    if os.path.exists(out["metrics"]):
        return load(workdir)
    require(len(config.target_quantiles) >= 2, "config.target_quantiles needs >= 2 quantiles for R²")
    require(config.no_selection in config.samplers,
            f"config.no_selection={config.no_selection!r} must be one of config.samplers {config.samplers}")
    ctx = Context(config, workdir)
    train_sets, held_sets = pick_tasks(ctx.rows, ctx.task_set, config.num_train_tasks,
                                       config.num_held_out_tasks)
    targets = pick_targets(ctx.rows, config.target_quantiles)
    records, at_median = [], []
    key = jax.random.key(config.seed)
    tasks = [(c, "held_out") for c in held_sets] + [(c, "train") for c in train_sets]
    with tqdm(total=len(tasks), desc="evaluate class sets", unit="set") as pbar:
        def one(j):
            out = evaluate_task(ctx, *tasks[j], targets, jax.random.fold_in(key, j))
            pbar.update(1)
            return out
        for recs, med in threads.in_threads(one, range(len(tasks)), threads.workers(config)):
            records += recs
            at_median.append(med)
    results = summarise(records, at_median, config.samplers, config.no_selection)
    results["same_class_set_agreement"] = same_set_agreement(ctx, config.num_held_out_tasks)
    results["targets"] = targets
    results["median_final_loss"] = ctx.median_loss
    for name, stage in (("ae", ae), ("align", align), ("generator", generator)):
        path = stage.paths(workdir)["metrics"]  # each stage's own metrics, beside ours
        if os.path.exists(path):
            results[name] = json.load(open(path))
    io.write_json(out["records"], dict(records=records, at_median=at_median))
    report.write(out_dir, results, records, at_median, config)
    io.write_json(out["metrics"], results, indent=2)
    print(report.one_line(results))
    return results
