"""Zoo stage: `run(config, workdir)` trains every model of the zoo, cohort by cohort.

Cohorts group models by length (max epoch), so a cohort wastes few steps on finished models, and
are padded to `cohort_size * num_devices` slots so one compiled step serves every cohort. Each cohort is stepped by one jitted call per `steps_per_call` steps (wsjax.zoo.step)
with the dataset on device and per-model batch indices from per-(model, epoch) seeds. At each epoch
end the snapshots due are evaluated, written to models.csv, saved (one Orbax checkpoint per
snapshot), and the cohort's train state is checkpointed under zoo/cohorts/<id>/ (deleted when the
cohort is done): a killed run restarts at the last epoch end and ends with the same zoo.
"""
import json
import os
import shutil
import time
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

from wsjax import data, models
from wsjax.common import store
from wsjax.data.tasks import format_classes, task_indices
from wsjax.models import inference
from wsjax.zoo import hparams
from wsjax.zoo import init as init_lib
from wsjax.zoo import step as step_lib
from wsjax.zoo import store as zoo_store


def resolve_strategy(config):
    """'auto' -> vmap on GPU/TPU; on CPU the models-unrolled step (measured fastest, bench_zoo)."""
    if config.strategy != "auto":
        return config.strategy
    return "vmap" if jax.default_backend() in ("gpu", "tpu") else "unroll"


def plan_cohorts(specs, size):
    """Lists of specs sorted by (max_epoch, model_id), chunks of `size`: Adam and SGD models share
    cohorts (one union optimizer state), and similar lengths waste few steps."""
    order = sorted(specs, key=lambda s: (s.max_epoch, s.model_id))
    return [order[i:i + size] for i in range(0, len(order), size)]


def cohort_id(members):
    ids = [s.model_id for s in members]
    return f"{ids[0]:05d}_{len(ids)}_{zlib.crc32(str(ids).encode()):08x}"


def _snapshots(spec):
    return (("early", spec.early_epoch), ("final", spec.max_epoch))


class _Zoo:
    """What is on disk: manifest rows keyed by (model_id, tag), and which snapshots are complete."""

    def __init__(self, workdir):
        self.workdir = workdir
        path = os.path.join(zoo_store.zoo_dir(workdir), "models.csv")
        rows = zoo_store.read_manifest(workdir) if os.path.exists(path) else []
        self.rows = {}
        for r in rows:
            r["classes"] = format_classes(r["classes"])
            self.rows[(r["model_id"], r["snapshot"])] = r

    def has(self, model_id, tag):
        return (model_id, tag) in self.rows and store.exists(
            zoo_store.snapshot_path(self.workdir, model_id, tag))

    def done(self, spec):
        return all(self.has(spec.model_id, tag) for tag, _ in _snapshots(spec))

    def add(self, row, variables):
        # Row first, then snapshot: a snapshot on disk always has its row.
        self.rows[(row["model_id"], row["snapshot"])] = row
        zoo_store.write_manifest(self.workdir, list(self.rows.values()))
        zoo_store.save_variables(self.workdir, row["model_id"], row["snapshot"], variables)


def _epoch_batches(specs, task_idx, epoch, batch_size, k, num_slots):
    """{'idx','label': [S, M, B], 'active': [S, M]} of one epoch, S a multiple of k; padding
    models (beyond len(specs)) and models past their max epoch are inactive."""
    steps = [len(task_idx[s.model_id][0]) // batch_size for s in specs]
    n = -(-max(steps) // k) * k
    idx = np.zeros((n, num_slots, batch_size), np.int32)
    label = np.zeros((n, num_slots, batch_size), np.int32)
    active = np.zeros((n, num_slots), bool)
    for m, s in enumerate(specs):
        if epoch >= s.max_epoch:
            continue
        gi, local = task_idx[s.model_id]
        perm = np.random.default_rng([s.seed, epoch]).permutation(len(gi))[:steps[m] * batch_size]
        idx[:steps[m], m] = gi[perm].reshape(steps[m], batch_size)
        label[:steps[m], m] = local[perm].reshape(steps[m], batch_size)
        active[:steps[m], m] = True
    return dict(idx=idx, label=label, active=active)


def _log(workdir, line):
    with open(os.path.join(zoo_store.zoo_dir(workdir), "log.jsonl"), "a") as f:
        f.write(json.dumps(line) + "\n")


def _row(config, spec, tag, epoch, status, train_loss, val_loss, val_acc):
    return dict(model_id=spec.model_id, snapshot=tag, epoch=epoch, max_epoch=spec.max_epoch,
                classes=format_classes(spec.classes), split=spec.split, status=status,
                optimizer=spec.optimizer, learning_rate=spec.learning_rate,
                weight_decay=spec.weight_decay, momentum=spec.momentum,
                batch_size=int(config.train.batch_size), init=config.init,
                init_seed=int(config.init_seed), seed=spec.seed, train_loss=float(train_loss),
                val_loss=float(val_loss), val_accuracy=float(val_acc))


def train_cohort(ctx, members, cid, pbar=None):
    """Trains `members` together from their init or from the cohort checkpoint to their last epoch."""
    config, workdir, zoo = ctx["config"], ctx["workdir"], ctx["zoo"]
    mesh, k, b = ctx["mesh"], ctx["steps_per_call"], int(config.train.batch_size)
    slots, tx = ctx["slots"], ctx["tx"]
    states = [step_lib.init_model_state(tx, ctx["init"](s.model_id), s.optimizer, s.learning_rate,
                                        s.weight_decay, s.momentum) for s in members]
    state = step_lib.stack(states + [states[0]] * (slots - len(members)))  # inactive padding
    # the fresh state is the restore target: it gives the restored tree its structure
    ckpt_dir = os.path.join(zoo_store.zoo_dir(workdir), "cohorts", cid)
    manager, start, state = store.resume(ckpt_dir, state, stage="zoo")
    state = jax.tree_util.tree_map(np.asarray, state)
    step = ctx["step"]
    state = step_lib.place(state, mesh, step_lib.P("models"))
    last = max(s.max_epoch for s in members)
    for epoch in range(start, last):
        t0 = time.time()
        batches = _epoch_batches(members, ctx["task_idx"], epoch, b, k, slots)
        losses = []
        for i in range(0, batches["active"].shape[0], k):
            chunk = {n: a[i:i + k] for n, a in batches.items()}
            state, loss = step(state, ctx["x_train"],
                               step_lib.place(chunk, mesh, step_lib.P(None, "models")))
            losses.append(loss)
        losses = np.concatenate([np.asarray(l) for l in losses])  # [S, M]
        active = batches["active"]
        train_loss = losses.sum(0) / np.maximum(active.sum(0), 1)
        images = int(active.sum()) * b
        dt = time.time() - t0
        due = [(m, s, tag) for m, s in enumerate(members) for tag, e in _snapshots(s)
               if e == epoch + 1 and not zoo.has(s.model_id, tag)]
        host = jax.tree_util.tree_map(np.asarray, state) if due else None
        for m, s, tag in due:
            variables = dict(params=step_lib.unstack(host["params"], m),
                             batch_stats=step_lib.unstack(host["batch_stats"], m))
            xv, yv = data.task_split(ctx["dataset"], s.classes, "val")
            vl, va = inference.loss_accuracy(ctx["module"], variables, xv, yv)
            status = "diverged" if bool(host["diverged"][m]) else "ok"
            zoo.add(_row(config, s, tag, epoch + 1, status, train_loss[m], vl, va), variables)
        if epoch + 1 < last:
            manager.save(epoch + 1, args=ocp.args.StandardSave(
                jax.tree_util.tree_map(np.asarray, state)))
            manager.wait_until_finished()
        _log(workdir, dict(cohort=cid, epoch=epoch + 1, models=[s.model_id for s in members],
                           train_loss=[float(v) for v in train_loss[:len(members)]],
                           images_per_sec=images / dt, seconds=dt))
        if pbar is not None:
            pbar.set_postfix(cohort=cid[:9], epoch=f"{epoch + 1}/{last}", img_s=f"{images / dt:.0f}")
            pbar.update(sum(1 for _, s, tag in due if tag == "final"))
    manager.close()
    shutil.rmtree(ckpt_dir, ignore_errors=True)


def prepare(config, workdir):
    """Checks the config and builds everything training needs (before any long work)."""
    hparams.validate(config)
    step_lib.enable_compile_cache(config.get("compile_cache", ""))
    dataset = data.load(config.data)
    specs = hparams.sample_specs(config, dataset.num_classes)
    module = models.build(config.model, config.tasks.k)
    num_devices = len(jax.devices()) if config.num_devices == 0 else int(config.num_devices)
    mesh = step_lib.make_mesh(num_devices) if num_devices > 1 else None
    strategy = resolve_strategy(config)
    os.makedirs(zoo_store.zoo_dir(workdir), exist_ok=True)
    task_idx = {s.model_id: task_indices(dataset.y_train, s.classes) for s in specs}
    return dict(config=config, workdir=workdir, dataset=dataset, specs=specs, module=module,
                mesh=mesh, num_devices=num_devices, strategy=strategy, task_idx=task_idx,
                steps_per_call=int(config.get("steps_per_call", 1)),
                x_train=step_lib.place(dataset.x_train, mesh, step_lib.P()))


def run(config, workdir):
    """Builds (or completes) the zoo under workdir/zoo/; a rerun of a finished zoo is a no-op."""
    ctx = prepare(config, workdir)
    zoo = ctx["zoo"] = _Zoo(workdir)
    specs = ctx["specs"]
    ctx["init"] = init_lib.initializer(config, ctx["module"], ctx["dataset"].image_shape, workdir)
    size = 1 if ctx["strategy"] == "sequential" else int(config.cohort_size) * ctx["num_devices"]
    ctx["slots"] = -(-size // ctx["num_devices"]) * ctx["num_devices"]
    ctx["tx"] = step_lib.make_optimizer()
    ctx["step"] = step_lib.make_cohort_step(ctx["module"], ctx["tx"], ctx["strategy"], ctx["mesh"])
    cohort_root = os.path.join(zoo_store.zoo_dir(workdir), "cohorts")
    done = sum(zoo.done(s) for s in specs)
    if done == len(specs):
        return zoo_store.read_manifest(workdir)  # nothing to do: leave every file untouched
    with tqdm(total=len(specs), initial=done, desc="zoo models", unit="model") as pbar:
        for cohort in plan_cohorts(specs, size):
            pending = [s for s in cohort if not zoo.done(s)]
            if not pending:
                continue
            # A killed cohort resumes with its full membership; otherwise train only what is missing.
            cid = cohort_id(cohort)
            if not os.path.isdir(os.path.join(cohort_root, cid)):
                cohort, cid = pending, cohort_id(pending)
            train_cohort(ctx, cohort, cid, pbar)
    shutil.rmtree(cohort_root, ignore_errors=True)
    zoo_store.write_manifest(workdir, list(zoo.rows.values()))
    return zoo_store.read_manifest(workdir)
