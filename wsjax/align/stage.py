"""Align stage: train the shared encoder against the frozen z_weight of the zoo's train snapshots.

Reads zoo/models.csv and ae/latents.npz (`ae.load_latents`); writes align/{features_<kind>.npz, base/
(the probe encoder's network, when the zoo has none), stats.npz, ckpt/,
params/, log.jsonl, metrics.json}. Resumable: the Orbax CheckpointManager in align/ckpt holds the
training state, batches depend only on (seed, step), so a killed run rerun gives the same result.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from tqdm import tqdm

from wsjax import ae, align, encoders
from wsjax.align import losses
from wsjax.align import model as model_lib
from wsjax.common import config as config_lib
from wsjax.common import io
from wsjax.common import checkpoints
from wsjax.common.config import require
from wsjax.zoo import snapshots

LOSSES = ("nt_xent", "multi_positive")


def check_config(config):
    require(config.loss in LOSSES, f"config.loss must be one of {LOSSES}, got {config.loss!r}")
    require(config.temperature > 0, f"config.temperature must be > 0, got {config.temperature}")
    require(config.results.num_bins >= 1,
            f"config.results.num_bins must be >= 1, got {config.results.num_bins}")
    require(config.results.dim >= 1, f"config.results.dim must be >= 1, got {config.results.dim}")
    require(config.regression_weight >= 0,
            f"config.regression_weight must be >= 0, got {config.regression_weight}")
    t = config.train
    require(t.batch_size >= 2, f"config.train.batch_size must be >= 2, got {t.batch_size}")
    require(t.steps >= 1, f"config.train.steps must be >= 1, got {t.steps}")
    require(t.learning_rate > 0, f"config.train.learning_rate must be > 0, got {t.learning_rate}")
    require(config.retrieval_batch >= 2, f"config.retrieval_batch must be >= 2, got {config.retrieval_batch}")


def prepare(config, workdir):
    """Arrays per snapshot (features, bins, groups, targets) for the train and val splits, and stats."""
    lat = ae.load_latents(workdir)
    rows = {(r["model_id"], r["snapshot"]): r for r in snapshots.read_manifest(workdir)}
    keep = [i for i in range(len(lat["z"]))
            if rows.get((int(lat["model_id"][i]), str(lat["snapshot"][i])), {}).get("status") == "ok"]
    picked = [rows[(int(lat["model_id"][i]), str(lat["snapshot"][i]))] for i in keep]
    split = np.asarray([str(s) for s in lat["split"][keep]])
    train = split == "train"
    require(train.sum() >= 2, f"{workdir}/ae/latents.npz has {train.sum()} usable train snapshots; need >= 2")
    enc = encoders.dataset_encoder(config, workdir)
    feats = np.stack([enc.task_features(r["classes"]) for r in picked]).astype(np.float32)
    loss = np.asarray([r["val_loss"] for r in picked], np.float32)
    acc = np.asarray([r["val_accuracy"] for r in picked], np.float32)
    stats = model_lib.results_stats(loss[train], acc[train], config.results)
    bins = model_lib.results_bins(stats, config.results, loss, acc, soft=False)  # groups stay hard
    z = np.asarray(lat["z"][keep], np.float32)
    stats.update(feat_mean=feats[train].mean(0), feat_std=feats[train].std(0) + 1e-6,
                 z_mean=z[train].mean(0), z_std=z[train].std(0) + 1e-6)
    # Multi-positive groups: snapshots of one task whose results fall in the same bins.
    keys = [(tuple(r["classes"]),) + tuple(b) for r, b in zip(picked, bins.tolist())]
    group = np.asarray([sorted(set(keys)).index(k) for k in keys], np.int32)
    data = dict(feats=(feats - stats["feat_mean"]) / stats["feat_std"],
                bins=model_lib.results_bins(stats, config.results, loss, acc),
                z=(z - stats["z_mean"]) / stats["z_std"], group=group,
                log_loss=np.log(np.maximum(loss, 1e-8)))
    split_data = {s: {k: v[split == s] for k, v in data.items()} for s in ("train", "val")}
    return split_data, {k: np.asarray(v, np.float32) for k, v in stats.items()}


def contrastive(config, z_proj, z, group):
    """The contrastive loss `config.loss` of paired rows (training and evaluation alike)."""
    if config.loss == "nt_xent":
        return losses.nt_xent(z_proj, z, config.temperature)
    return losses.multi_positive_infonce(z_proj, z, group, config.temperature)


def make_loss(module, config):
    def loss_fn(params, batch):
        z_proj = module.apply({"params": params}, batch["feats"], batch["bins"])
        c = contrastive(config, z_proj, batch["z"], batch["group"])
        mse = jnp.mean((z_proj - batch["z"]) ** 2)  # standardised: 1.0 = predicting the mean
        return c + config.regression_weight * mse, dict(contrastive=c, mse=mse)
    return loss_fn


def make_step(module, tx, config):
    loss_fn = make_loss(module, config)

    def step(state, batch):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return dict(params=params, opt_state=opt_state, step=state["step"] + 1), dict(loss=loss, **aux)

    return jax.jit(step, donate_argnums=0)


def evaluate(module, params, data, config):
    """Retrieval top-1 (exact snapshot and same task+bin group), cosine and R² of z_proj vs z_weight."""
    out = {}
    proj = {s: np.asarray(module.apply({"params": params}, d["feats"], d["bins"])) for s, d in data.items()}
    # Loss read-out: a ridge map z -> log val loss fitted on train z_weight, applied to z_proj. Its R²
    # against the conditioning loss says how well z_proj encodes the requested result (a proxy for
    # achieved-vs-target loss before any decoding); `*_true_z` is the same read-out on z_weight itself.
    zt, yt = data["train"]["z"], data["train"]["log_loss"]
    x1 = lambda z: np.concatenate([z, np.ones((len(z), 1))], 1)  # noqa: E731
    w = np.linalg.solve(x1(zt).T @ x1(zt) + np.eye(zt.shape[1] + 1), x1(zt).T @ yt)
    r2 = lambda y, p: float(1 - ((y - p) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12))  # noqa: E731
    n_keys = int(config.retrieval_batch)
    for s in ("train", "val"):
        d, zp = data[s], proj[s]
        if len(zp) == 0:
            continue
        q = min(len(zp), n_keys)
        # keys: the split's own latents (a batch of up to n_keys snapshots, the thesis's setting)
        out[f"{s}_num_keys"] = q
        out[f"{s}_top1"] = losses.retrieval_top1(zp[:q], d["z"][:q])
        out[f"{s}_group_top1"] = losses.retrieval_top1(zp[:q], d["z"][:q], d["group"][:q])
        out[f"{s}_top1_l2"] = losses.retrieval_top1(zp[:q], d["z"][:q], metric="l2")
        out[f"{s}_group_top1_l2"] = losses.retrieval_top1(zp[:q], d["z"][:q], d["group"][:q], metric="l2")
        out[f"{s}_chance"] = 1.0 / q
        if s == "val" and q < n_keys:  # harder: train latents fill the batch as distractors
            fill = n_keys - q
            keys = np.concatenate([d["z"][:q], data["train"]["z"][:fill]])
            groups = np.concatenate([d["group"][:q], data["train"]["group"][:fill]])
            out["val_top1_with_train_keys"] = losses.retrieval_top1(zp[:q], keys)
            out["val_group_top1_with_train_keys"] = losses.retrieval_top1(zp[:q], keys, groups)
            out["val_num_keys_with_train_keys"] = int(len(keys))
        out[f"{s}_loss_readout_r2"] = r2(d["log_loss"], x1(zp) @ w)
        out[f"{s}_loss_readout_r2_true_z"] = r2(d["log_loss"], x1(d["z"]) @ w)
        out[f"{s}_mse"] = float(np.mean((zp - d["z"]) ** 2))
        out[f"{s}_r2"] = float(1 - ((zp - d["z"]) ** 2).sum() / (d["z"] ** 2).sum())
        unit = lambda z: z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)  # noqa: E731
        out[f"{s}_pair_cosine"] = float(np.mean((unit(zp) * unit(d["z"])).sum(1)))
        out[f"{s}_contrastive"] = float(contrastive(config, zp[:q], d["z"][:q], d["group"][:q]))
    return out


def _batch(data, step, config):
    n = len(data["z"])
    if n <= config.train.batch_size:
        return data
    idx = np.random.default_rng([config.seed, step]).choice(n, config.train.batch_size, replace=False)
    return {k: v[idx] for k, v in data.items()}


def train(config, workdir, stop_at=None):
    """Trains to config.train.steps (or stops after `stop_at` steps, as a kill would); returns metrics."""
    check_config(config)
    t, p = config.train, align.paths(workdir)
    config_lib.stage_dir(workdir, "align")
    data, stats = prepare(config, workdir)
    module = model_lib.build(config, stats, data["train"]["z"].shape[1])
    key = jax.random.key(config.seed)
    params = module.init(key, data["train"]["feats"][:1], data["train"]["bins"][:1])["params"]
    schedule = optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, t.warmup_steps,
                                                  max(t.steps, t.warmup_steps + 1))
    tx = optax.adamw(schedule, weight_decay=t.weight_decay)
    state = dict(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))
    manager, start, state = checkpoints.resume(p["ckpt"], state, stage="align", max_to_keep=2)
    log = io.MetricWriter(p["log"])
    log.trim(start)
    step_fn = make_step(module, tx, config)
    state = jax.device_put(state)
    train_data = {k: jnp.asarray(v) for k, v in data["train"].items()} \
        if len(data["train"]["z"]) <= t.batch_size else data["train"]
    end = t.steps if stop_at is None else min(t.steps, stop_at)
    t0 = time.time()
    with tqdm(total=t.steps, initial=start, desc="align") as bar:
        for step in range(start, end):
            state, m = step_fn(state, _batch(train_data, step, config))
            done = step + 1
            if done % t.log_every == 0 or done == t.steps:
                rec = {k: float(v) for k, v in m.items()} | evaluate(module, state["params"], data, config)
                log.write(done, **rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}",
                                val_top1=f"{rec.get('val_top1', float('nan')):.2f}")
            if done % t.checkpoint_every == 0 or done == t.steps:
                manager.save(done, jax.tree_util.tree_map(np.asarray, state))
            bar.update(1)
    manager.close()
    if end < t.steps:
        return None
    metrics = evaluate(module, state["params"], data, config)
    metrics.update(num_train=int(len(data["train"]["z"])), num_val=int(len(data["val"]["z"])),
                   num_groups_train=int(len(np.unique(data["train"]["group"]))),
                   encoder=config.encoder.kind, loss=config.loss, train_seconds=round(time.time() - t0, 2))
    io.savez(p["stats"], **stats)
    checkpoints.save(p["params"], {"params": jax.tree_util.tree_map(np.asarray, state["params"])})
    io.write_json(p["metrics"], metrics, indent=2)
    return metrics


def run(config, workdir):
    p = align.paths(workdir)
    if os.path.exists(p["metrics"]) and checkpoints.exists(p["params"]):
        logging.info("align: %s exists; delete align/ to retrain", p["metrics"])
        return json.load(open(p["metrics"]))
    metrics = train(config, workdir)
    logging.info("align: %s", metrics)
    print("align: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                                if k.startswith("val_") and isinstance(v, float)))
    return metrics
