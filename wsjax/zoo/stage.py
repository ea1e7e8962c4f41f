"""Zoo stage: `run(config, workdir)` trains every model of the zoo, cohort by cohort.

Cohorts group models by activation (one module and compiled step each) and, within it, by length
(max epoch), so a cohort wastes few steps on finished models, and are padded to
`cohort_size * num_devices` slots so one compiled step serves every cohort of an activation. Each
cohort is stepped by one jitted call per `steps_per_call` steps (wsjax.zoo.step) with the dataset
on device and per-model batch indices from per-(model, epoch) seeds. A snapshot is evaluated on
the task's val images as soon as its step (hparams.snapshot_schedule) is reached and kept on the
host; a model's snapshots are saved together, stacked, when it finishes. At the first epoch end
`checkpoint_every_secs` after the cohort's start or last checkpoint, its train state and the
snapshots taken so far are checkpointed under zoo/cohorts/<id>/ (deleted when the cohort is
done): a killed run restarts there (or at the cohort's start) and ends with the same zoo.
On CPU, `workers` cohorts train at once in threads (one small model's step leaves cores idle);
they share the compiled step, take turns at disk I/O and reporting, and give the same zoo.

Several processes (wsjax.common.distributed): the `models` mesh spans every process's devices and
each process steps the model slots of its own devices; the host-side bookkeeping (batches,
snapshots, metrics) is the same on every process, as every process reads the sharded state back
whole (step.to_host). Every process takes part in each Orbax save of that host data (Orbax writes
it from process 0 and synchronises the processes); models.csv, log.jsonl and the progress bar are
process 0's. A cohort's checkpoint is named by its members and slot count, so a rerun on another
number of devices keeps every finished model and retrains the unfinished cohorts from their init.
"""
import collections
import contextlib
import dataclasses
import json
import os
import shutil
import threading
import time
import zlib
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from wsjax import data, models
from wsjax.common import distributed, checkpoints, threads
from wsjax.common.config import ConfigError, require
from wsjax.data.tasks import format_classes
from wsjax.models import inference
from wsjax.zoo import hparams
from wsjax.zoo import init as init_lib
from wsjax.zoo import step as step_lib
from wsjax.zoo import snapshots


def resolve_strategy(config):
    """'auto' -> vmap on GPU/TPU; on CPU one model per step, cohorts in threads (`threads.workers`):
    faster there than unrolling or vmapping models into one step (bench_zoo)."""
    if config.strategy != "auto":
        return config.strategy
    return "vmap" if jax.default_backend() in ("gpu", "tpu") else "sequential"


def plan_cohorts(specs, size):
    """Lists of specs of one activation each (a cohort is one module), sorted by (max_epoch,
    model_id), chunks of `size`: Adam and SGD models share cohorts (one union optimizer state),
    and similar lengths waste few steps."""
    cohorts = []
    for activation in sorted({s.activation for s in specs}):
        order = sorted((s for s in specs if s.activation == activation),
                       key=lambda s: (s.max_epoch, s.model_id))
        cohorts += [order[i:i + size] for i in range(0, len(order), size)]
    return cohorts


def cohort_id(members, slots):
    """Names the cohort's checkpoint: its members and its slot count (models per device x
    devices), which a restored train state must match."""
    ids = [s.model_id for s in members]
    return f"{ids[0]:05d}_{len(ids)}_{zlib.crc32(str(ids).encode()):08x}_{slots}"


class _ZooOnDisk:
    """What is on disk: manifest rows keyed by (model_id, tag), and which models are complete."""

    def __init__(self, workdir):
        self.workdir = workdir
        path = os.path.join(snapshots.zoo_dir(workdir), "models.csv")
        rows = []
        if os.path.exists(path):
            try:
                rows = snapshots.read_manifest(workdir)
            except ConfigError as e:  # rows cannot be trusted: retrain (deterministic) and rewrite
                if distributed.is_primary():  # the others retrain without rows, as process 0 does
                    aside = f"{path}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
                    os.replace(path, aside)
                    logging.warning("zoo: %s; moved it to %s and retraining its models", e, aside)
                    print(f"zoo: {path} is damaged; moved aside to {aside}, its models are retrained")
        self.rows = {}
        for r in rows:
            r["classes"] = format_classes(r["classes"])
            self.rows[(r["model_id"], r["snapshot"])] = r

    def done(self, spec, schedule):
        return all((spec.model_id, tag) in self.rows for tag, _ in schedule) and checkpoints.exists(
            snapshots.snapshot_path(self.workdir, spec.model_id))

    def add(self, model_id, rows, trees):
        # Snapshots first, then rows: a model in the manifest always has its checkpoint.
        snapshots.save_snapshots(self.workdir, model_id, trees)
        self.rows.update({(r["model_id"], r["snapshot"]): r for r in rows})
        if distributed.is_primary():
            snapshots.write_manifest(self.workdir, list(self.rows.values()))


def _epoch_batches(specs, task_idx, epoch, batch_size, steps_per_call, num_slots):
    """{'idx','label': [S, M, B], 'active': [S, M]} of one epoch, S a multiple of steps_per_call;
    padding models (beyond len(specs)) and models past their max epoch are inactive."""
    steps = [len(task_idx[s.model_id][0]) // batch_size for s in specs]
    n = -(-max(steps) // steps_per_call) * steps_per_call
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
    if not distributed.is_primary():
        return
    with open(os.path.join(snapshots.zoo_dir(workdir), "log.jsonl"), "a") as f:
        f.write(json.dumps(line) + "\n")


_METRICS = ("step", "epoch", "train_loss", "val_loss", "val_accuracy")


def _row(config, spec, tag, status, metrics):
    m = dict(zip(_METRICS, metrics))
    return dict(model_id=spec.model_id, snapshot=tag, step=int(m["step"]), epoch=int(m["epoch"]),
                max_epoch=spec.max_epoch, classes=format_classes(spec.classes), split=spec.split,
                status=status, optimizer=spec.optimizer, learning_rate=spec.learning_rate,
                weight_decay=spec.weight_decay, momentum=spec.momentum,
                batch_size=int(config.train.batch_size), init=config.init,
                init_seed=int(config.init_seed), init_method=spec.init_method,
                activation=spec.activation, train_fraction=spec.train_fraction,
                dropout_rate=spec.dropout_rate, label_noise=spec.label_noise, seed=spec.seed,
                train_loss=float(m["train_loss"]),
                val_loss=float(m["val_loss"]), val_accuracy=float(m["val_accuracy"]))


def _empty_trajectory(state, num_snapshots):
    """The cohort's snapshots taken so far, host-side and checkpointed with its train state:
    weights [S, M, ...], metrics [S, M, len(_METRICS)], a taken mask, and the running sum and count
    of minibatch losses since each model's last snapshot (its next row's train loss)."""
    slots = state["diverged"].shape[0]
    weights = {k: jax.tree_util.tree_map(lambda x: np.zeros((num_snapshots,) + x.shape, x.dtype),
                                         state[k]) for k in ("params", "batch_stats")}
    return dict(weights=weights, metrics=np.zeros((num_snapshots, slots, len(_METRICS)), np.float64),
                taken=np.zeros((num_snapshots, slots), bool), loss_sum=np.zeros(slots),
                loss_count=np.zeros(slots))


def _due(ctx, members, traj, done_steps):
    """(model slot, snapshot index) of every snapshot reached but not yet taken."""
    return [(m, j) for m, s in enumerate(members)
            for j, (_, step) in enumerate(ctx.schedules[s.model_id])
            if step <= done_steps[m] and not traj["taken"][j, m]]


def _take_due(ctx, members, state, traj, done_steps, steps_per_epoch):
    """Evaluates every snapshot whose step has been reached (one batched call) and records it."""
    due = _due(ctx, members, traj, done_steps)
    if not due:
        return
    slots = np.array([m for m, _ in due])
    module = ctx.modules[members[0].activation]
    host = step_lib.to_host({k: state[k] for k in ("params", "batch_stats")})
    variables = jax.tree_util.tree_map(lambda x: x[slots], host)
    val = [data.task_split(ctx.dataset, members[m].classes, "val") for m in slots]
    val_loss, val_acc = inference.scores_each(module, variables, val)
    # The init (no step taken yet) has no minibatch losses: its loss on (up to) 512 train images.
    # Otherwise the mean minibatch loss since the model's last snapshot.
    counts = traj["loss_count"][slots]
    train_loss = traj["loss_sum"][slots] / np.maximum(counts, 1)
    fresh = np.flatnonzero(counts == 0)
    if len(fresh):
        train = [(ctx.dataset.x_train[gi[:512]], local[:512]) for gi, local in
                 (ctx.task_idx[members[m].model_id] for m in slots[fresh])]
        train_loss[fresh] = inference.scores_each(
            module, jax.tree_util.tree_map(lambda x: x[fresh], variables), train)[0]
    for i, (m, j) in enumerate(due):
        traj["metrics"][j, m] = (done_steps[m], done_steps[m] // steps_per_epoch[m], train_loss[i],
                                 val_loss[i], val_acc[i])
        traj["taken"][j, m] = True
        traj["loss_sum"][m] = traj["loss_count"][m] = 0
        for k in variables:
            jax.tree_util.tree_map(lambda buf, x: buf.__setitem__((j, m), x[i]), traj["weights"][k],
                                   variables[k])


def _add_losses(traj, pending):
    """Adds minibatch losses ([(loss [K, M] on device, active [K, M])]) to the running sums."""
    for loss, (_, active) in zip(step_lib.to_host([loss for loss, _ in pending]), pending):
        traj["loss_sum"] += (loss * active).sum(0)
        traj["loss_count"] += active.sum(0)
    pending.clear()


SPENT = ("training", "evaluation", "saving")


@contextlib.contextmanager
def _clock(spent, name, wait=None):
    """Adds the block's seconds to spent[name]; device work queued before it (`wait`) is not its."""
    jax.block_until_ready(wait)
    t0 = time.time()
    yield
    spent[name] += time.time() - t0


def _save_model(ctx, spec, m, traj, diverged):
    schedule = ctx.schedules[spec.model_id]
    status = "diverged" if diverged else "ok"
    rows = [_row(ctx.config, spec, tag, status, traj["metrics"][j, m])
            for j, (tag, _) in enumerate(schedule)]
    trees = [{k: jax.tree_util.tree_map(lambda x: x[j, m], traj["weights"][k])
              for k in traj["weights"]} for j in range(len(schedule))]
    ctx.zoo.add(spec.model_id, rows, trees)


def _dropout(ctx, spec):
    """(rate, PRNG key from its data seed) of a model in a zoo with dropout (rate 0 included), else None."""
    return (spec.dropout_rate, jax.random.fold_in(jax.random.key(spec.seed), 1)) if ctx.dropout else None


def train_cohort(ctx, members, cid, pbar=None):
    """Trains `members` together from their init or from the cohort checkpoint to their last
    step, taking each model's snapshots as its schedule comes due."""
    config, workdir, zoo = ctx.config, ctx.workdir, ctx.zoo
    mesh, per_call, b = ctx.mesh, ctx.steps_per_call, int(config.train.batch_size)
    slots, tx = ctx.slots, ctx.tx
    states = [step_lib.init_model_state(tx, ctx.init(s.model_id, s.init_method), s.optimizer,
                                        s.learning_rate, s.weight_decay, s.momentum, _dropout(ctx, s))
              for s in members]
    state = step_lib.stack(states + [states[0]] * (slots - len(members)))  # inactive padding
    num_snapshots = max(len(ctx.schedules[s.model_id]) for s in members)
    # the fresh state is the restore target: it gives the restored tree its structure
    ckpt_dir = os.path.join(snapshots.zoo_dir(workdir), "cohorts", cid)
    with ctx.lock:  # disk I/O, the manifest, the log and the progress bar: one cohort at a time
        manager, start, restored = checkpoints.resume(
            ckpt_dir, dict(state=state, trajectory=_empty_trajectory(state, num_snapshots)), stage="zoo")
    traj = jax.tree_util.tree_map(np.array, restored["trajectory"])  # writable host copies
    state = step_lib.place(jax.tree_util.tree_map(np.asarray, restored["state"]), mesh,
                           step_lib.P("models"))
    step = ctx.steps[members[0].activation]
    steps_per_epoch = [ctx.steps_per_epoch[s.model_id] for s in members]
    done_steps = np.array([start * n for n in steps_per_epoch])
    saved = {m for m, s in enumerate(members) if zoo.done(s, ctx.schedules[s.model_id])}
    spent = collections.Counter()  # seconds of training, snapshot evaluation and saving
    with _clock(spent, "evaluation"):
        _take_due(ctx, members, state, traj, done_steps, steps_per_epoch)  # step 0: the init itself
    last, saved_at = max(s.max_epoch for s in members), time.time()
    for epoch in range(start, last):
        t0, before = time.time(), spent.copy()
        batches = _epoch_batches(members, ctx.task_idx, epoch, b, per_call, slots)
        pending = []  # minibatch losses not yet added to the running sums
        for i in range(0, batches["active"].shape[0], per_call):
            chunk = {n: a[i:i + per_call] for n, a in batches.items()}
            state, loss = step(state, ctx.x_train,
                               step_lib.place(chunk, mesh, step_lib.P(None, "models")))
            pending.append((loss, chunk["active"]))
            done_steps += chunk["active"][:, :len(members)].sum(0)
            if _due(ctx, members, traj, done_steps):
                _add_losses(traj, pending)
                with _clock(spent, "evaluation", wait=state):
                    _take_due(ctx, members, state, traj, done_steps, steps_per_epoch)
        _add_losses(traj, pending)
        jax.block_until_ready(state)
        dt = time.time() - t0
        spent["training"] += dt - (spent["evaluation"] - before["evaluation"])
        diverged = step_lib.to_host(state["diverged"])
        finished = [m for m, s in enumerate(members) if m not in saved
                    and traj["taken"][:len(ctx.schedules[s.model_id]), m].all()]
        with _clock(spent, "saving"), ctx.lock:
            for m in finished:
                _save_model(ctx, members[m], m, traj, bool(diverged[m]))
                saved.add(m)
        # every process must take part in a save: under several, the cadence is every epoch
        checkpoint = time.time() - saved_at >= ctx.checkpoint_every_secs or distributed.is_multiprocess()
        if epoch + 1 < last and checkpoint:
            saved_at = time.time()
            with _clock(spent, "saving"), ctx.lock:
                manager.save(epoch + 1, dict(state=step_lib.to_host(state), trajectory=traj))
        images = int(batches["active"].sum()) * b
        with ctx.lock:
            _log(workdir, dict(cohort=cid, epoch=epoch + 1, models=[s.model_id for s in members],
                               images_per_sec=images / dt, seconds=dt,
                               **{f"{k}_seconds": spent[k] - before[k] for k in SPENT}))
            if pbar is not None:
                pbar.set_postfix(cohort=cid[:9], epoch=f"{epoch + 1}/{last}", img_s=f"{images / dt:.0f}")
                pbar.update(len(finished))
    with ctx.lock:
        manager.close()
    if distributed.is_primary():
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return spent


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything the cohorts of one zoo run share, built once by `prepare`."""
    config: Any
    workdir: str
    dataset: Any
    specs: list
    modules: dict            # activation -> module
    mesh: Any
    num_devices: int
    cohort_models: int       # models per cohort: cohort_size x devices (1 when sequential)
    workers: int             # cohorts trained at once, in threads
    lock: Any                # serialises their disk I/O and reporting
    slots: int               # model slots per cohort step: cohort_models rounded up to the devices
    task_idx: dict           # model_id -> (dataset indices, local labels) of its train images
    steps_per_epoch: dict    # model_id -> steps
    schedules: dict          # model_id -> [(snapshot tag, step)]
    steps_per_call: int
    checkpoint_every_secs: float
    x_train: Any             # the train images, on device (replicated over the mesh)
    init: Callable           # model_id -> initial variables
    dropout: bool            # some model has dropout: every model's state carries a rate and key
    tx: Any
    steps: dict              # activation -> the compiled cohort step
    zoo: "_ZooOnDisk"


def prepare(config, workdir):
    """Checks the config and builds everything training needs (before any long work)."""
    hparams.validate(config)
    step_lib.enable_compile_cache(config.get("compile_cache", ""))
    dataset = data.load(config.data)
    specs = hparams.sample_specs(config, dataset.num_classes)
    modules = {a: models.build(config.model, config.tasks.k, a) for a in config.model.activations}
    num_devices = len(jax.devices()) if config.num_devices == 0 else int(config.num_devices)
    require(num_devices == len(jax.devices()) or not distributed.is_multiprocess(),
            f"config.num_devices must be 0 (all {len(jax.devices())} devices) under "
            f"{jax.process_count()} processes, got {config.num_devices}")
    mesh = step_lib.make_mesh(num_devices) if num_devices > 1 else None
    strategy = resolve_strategy(config)
    size = 1 if strategy == "sequential" else int(config.cohort_size) * num_devices
    os.makedirs(snapshots.zoo_dir(workdir), exist_ok=True)
    task_idx = {s.model_id: hparams.train_indices(dataset.y_train, s.classes, s.train_fraction, s.seed,
                                                  s.label_noise) for s in specs}
    b = int(config.train.batch_size)
    fewest = min(specs, key=lambda s: len(task_idx[s.model_id][0]))
    require(len(task_idx[fewest.model_id][0]) >= b,
            f"config.train.train_fractions leaves model {fewest.model_id} "
            f"{len(task_idx[fewest.model_id][0])} train images, fewer than one batch "
            f"(config.train.batch_size={b}): raise the fraction or lower the batch size")
    steps_per_epoch = {s.model_id: len(task_idx[s.model_id][0]) // b for s in specs}
    if config.train.equal_steps:
        specs = hparams.equal_steps(specs, dataset.y_train, steps_per_epoch, b)
    tx = step_lib.make_optimizer()
    return Setup(
        config=config, workdir=workdir, dataset=dataset, specs=specs, modules=modules, mesh=mesh,
        num_devices=num_devices, cohort_models=size, slots=-(-size // num_devices) * num_devices,
        workers=threads.workers(config, num_devices), lock=threading.Lock(),
        task_idx=task_idx,
        steps_per_epoch=steps_per_epoch,
        schedules={s.model_id: hparams.snapshot_schedule(config, s, steps_per_epoch[s.model_id])
                   for s in specs},
        steps_per_call=int(config.get("steps_per_call", 1)),
        checkpoint_every_secs=float(config.checkpoint_every_secs),
        x_train=step_lib.place(dataset.x_train, mesh, step_lib.P()),
        # an init does not depend on the activation: any module gives it
        init=init_lib.initializer(config, modules[specs[0].activation], dataset.image_shape, workdir),
        dropout=any(s.dropout_rate > 0 for s in specs), tx=tx,
        steps={a: step_lib.make_cohort_step(m, tx, strategy, mesh, float(config.train.diverge_loss_factor))
               for a, m in modules.items()},
        zoo=_ZooOnDisk(workdir))


def run(config, workdir):
    """Builds (or completes) the zoo under workdir/zoo/; a rerun of a finished zoo is a no-op."""
    ctx = prepare(config, workdir)
    zoo, specs = ctx.zoo, ctx.specs
    cohort_root = os.path.join(snapshots.zoo_dir(workdir), "cohorts")
    done = sum(zoo.done(s, ctx.schedules[s.model_id]) for s in specs)
    if done == len(specs):
        return snapshots.read_manifest(workdir)  # nothing to do: leave every file untouched
    spent, t0 = collections.Counter(), time.time()
    with tqdm(total=len(specs), initial=done, desc="zoo models", unit="model",
              disable=not distributed.is_primary()) as pbar:
        jobs = []
        for cohort in plan_cohorts(specs, ctx.cohort_models):
            pending = [s for s in cohort if not zoo.done(s, ctx.schedules[s.model_id])]
            if not pending:
                continue
            # A killed cohort resumes with its full membership; otherwise train only what is missing.
            cid = cohort_id(cohort, ctx.slots)
            if not os.path.isdir(os.path.join(cohort_root, cid)):
                cohort, cid = pending, cohort_id(pending, ctx.slots)
            jobs.append((cohort, cid))
        for s in threads.in_threads(lambda job: train_cohort(ctx, *job, pbar), jobs, ctx.workers):
            spent += s
    if distributed.is_primary():
        shutil.rmtree(cohort_root, ignore_errors=True)
        snapshots.write_manifest(workdir, list(zoo.rows.values()))
    distributed.barrier("zoo manifest written")
    total = time.time() - t0
    if distributed.is_primary():
        summed = f"summed over {ctx.workers} threads, " if ctx.workers > 1 else ""
        other = "" if summed else f", other {total - sum(spent.values()):.0f} s"
        print(f"zoo: {len(specs) - done} models in {total:.0f} s: "
              + ", ".join(f"{k} {spent[k]:.0f} s" for k in SPENT) + f" ({summed}compiles included){other}")
    return snapshots.read_manifest(workdir)
