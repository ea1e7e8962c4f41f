"""Stage 'ae': MLP autoencoder on normalised PCA coefficients of the zoo.

    ae/checkpoints/      Orbax CheckpointManager of the training state (resume point)
    ae/params/           Orbax: the selected AE parameters and the normalisation statistics
    ae/latents.npz       z [S, D] of every zoo snapshot, row order of pca.load_coeffs
    ae/log.jsonl         training and validation metrics
    ae/metrics.json, ae/report.md, ae/reconstruction.png   reconstruction evaluation

Models are split as in the zoo manifest: train fits the AE, val selects the checkpoint (lowest
val loss), test is held out; the report scores val and test models apart. Batches are a pure
function of (seed, step), so a killed run resumes from its last checkpoint and ends in the same state.
"""
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax.training import train_state
from tqdm import tqdm

from wsjax import data, models, pca
from wsjax.ae import losses, reconstruction
from wsjax.ae import model as model_lib
from wsjax.common import config as config_lib
from wsjax.common import io, loop, threads
from wsjax.common import checkpoints
from wsjax.common.config import require
from wsjax.models import inference
from wsjax.zoo import snapshots

STAGE = "ae"


def check_config(config):
    require("model" in config and "train" in config and "loss" in config,
            "config.model/train/loss are missing: use configs/ae.py")
    t, loss, m = config.train, config.loss, config.model
    require(m.latent_dim >= 1, f"config.model.latent_dim must be >= 1, got {m.latent_dim}")
    require(all(h >= 1 for h in m.hidden), f"config.model.hidden must be positive, got {m.hidden}")
    require(t.steps >= 1, f"config.train.steps must be >= 1, got {t.steps}")
    require(t.batch_size >= 1, f"config.train.batch_size must be >= 1, got {t.batch_size}")
    require(0 <= t.warmup_steps < t.steps,
            f"config.train.warmup_steps must be in [0, steps), got {t.warmup_steps}")
    require(t.learning_rate > 0, f"config.train.learning_rate must be > 0, got {t.learning_rate}")
    require(t.checkpoint_every >= 1,
            f"config.train.checkpoint_every must be >= 1, got {t.checkpoint_every}")
    require(t.input_noise >= 0, f"config.train.input_noise must be >= 0, got {t.input_noise}")
    for name in ("mse", "layerwise", "behaviour"):
        require(loss[name] >= 0, f"config.loss.{name} must be >= 0, got {loss[name]}")
    require(loss.mse + loss.layerwise + loss.behaviour > 0,
            "config.loss: at least one of mse, layerwise, behaviour must be > 0")
    require(loss.temperature > 0, f"config.loss.temperature must be > 0, got {loss.temperature}")
    require(1 <= loss.behaviour_models <= t.batch_size,
            f"config.loss.behaviour_models must be in [1, train.batch_size], got {loss.behaviour_models}")
    require(config.model.norm in ("segment", "coordinate"),
            f"config.model.norm must be 'segment' or 'coordinate', got {config.model.norm!r}")
    require(config.loss.batching in ("unroll", "vmap"),
            f"config.loss.batching must be 'unroll' or 'vmap', got {config.loss.batching!r}")
    require(config.probe.num_real + config.probe.num_noise >= 1,
            "config.probe.num_real + num_noise must be >= 1")


class Normaliser:
    """Dataset-wide per-coordinate statistics of the train split's coefficients."""

    def __init__(self, mean, std):
        self.mean, self.std = jnp.asarray(mean), jnp.asarray(std)

    @classmethod
    def fit(cls, coeffs, segments=None):
        """Per coordinate, or with `segments` one scale per PCA segment (its total std), which
        keeps each segment's low-variance tail components small instead of blowing them up."""
        mean, std = coeffs.mean(0), coeffs.std(0)
        if segments is not None:
            for _, a, b, _ in segments:
                std[a:b] = np.sqrt((std[a:b] ** 2).sum())
        # Constant coordinates (nothing to learn) keep unit scale instead of dividing by ~0.
        std = np.where(std > 1e-8 * max(std.max(), 1e-30), std, 1.0)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def __call__(self, raw):
        return (raw - self.mean) / self.std

    def inverse(self, x):
        return x * self.std + self.mean


class AE:
    """The trained AE in raw PCA coefficient space: `encode` [N, K] -> [N, D], `decode` back."""

    def __init__(self, module, params, norm):
        self.module, self.params, self.norm = module, params, norm
        self._enc = jax.jit(lambda p, c: module.apply({"params": p}, norm(c), method="encode"))
        self._dec = jax.jit(lambda p, z: norm.inverse(module.apply({"params": p}, z, method="decode")))

    @property
    def latent_dim(self):
        return self.module.latent_dim

    def encode(self, coeffs):
        return self._enc(self.params, jnp.asarray(coeffs, jnp.float32))

    def decode(self, z):
        return self._dec(self.params, jnp.asarray(z, jnp.float32))


def paths(workdir):
    d = os.path.join(workdir, STAGE)
    return dict(params=os.path.join(d, "params"), latents=os.path.join(d, "latents.npz"),
                checkpoints=os.path.join(d, "checkpoints"), log=os.path.join(d, "log.jsonl"),
                metrics=os.path.join(d, "metrics.json"), report=os.path.join(d, "report.md"),
                plot=os.path.join(d, "reconstruction.png"))


def load_latents(workdir):
    """dict(z [S, D], model_id [S], snapshot [S], split [S]): every zoo snapshot's AE latent."""
    path = paths(workdir)["latents"]
    require(os.path.exists(path), f"{path} not found: run the 'ae' stage with this --workdir first")
    with np.load(path) as f:
        missing = {"z", "model_id", "snapshot", "split"} - set(f.files)
        require(not missing, f"{path} lacks arrays {sorted(missing)}: rerun the 'ae' stage")
        return {k: f[k] for k in f.files}


def load(workdir):
    """The AE trained in `workdir/ae`, with its normalisation statistics."""
    path = paths(workdir)["params"]
    require(checkpoints.exists(path), f"{path} not found: run the 'ae' stage with this --workdir first")
    config = config_lib.load(workdir, STAGE)
    saved = checkpoints.restore(path, stage=STAGE)
    module = model_lib.build(config.model, saved["mean"].shape[0])
    params = jax.tree_util.tree_map(jnp.asarray, saved["params"])
    return AE(module, params, Normaliser(saved["mean"], saved["std"]))


def make_probes(config, dataset, rows, seed):
    """Probe inputs [S, P, H, W, C] per snapshot: real train images of its task, then noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(rows), config.probe.num_real + config.probe.num_noise) + dataset.image_shape,
                   np.float32)
    for i, r in enumerate(rows):
        x, _ = data.task_split(dataset, r["classes"], "train")
        out[i, :config.probe.num_real] = x[rng.choice(len(x), config.probe.num_real,
                                                      replace=len(x) < config.probe.num_real)]
        out[i, config.probe.num_real:] = rng.normal(size=out[i, config.probe.num_real:].shape)
    return out


def original_logits(workdir, module, rows, probes):
    out = []
    for r, x in zip(tqdm(rows, desc="ae: originals' probe logits", unit="model", leave=False), probes):
        v = snapshots.load_variables(workdir, r["model_id"], r["snapshot"])
        out.append(inference.logits(module, v, x))
    return np.stack(out)


def make_loss_fn(module, net, p, norm, lw_weights, loss_cfg):
    """loss(params, x [B, K] normalised, x_in [B, K], probes, targets) -> (total, metrics)."""
    def loss_fn(params, x, x_in, probes, targets):
        recon = module.apply({"params": params}, x_in)
        terms = {}
        if loss_cfg.mse:
            terms["mse"] = losses.mse(recon, x)
        if loss_cfg.layerwise:
            terms["layerwise"] = losses.layerwise(recon, x, lw_weights)
        if loss_cfg.behaviour:
            m = probes.shape[0]
            terms["behaviour"] = losses.behaviour(net, p, norm.inverse(recon[:m]), probes, targets,
                                                  loss_cfg.temperature, loss_cfg.batching)
        total = sum(loss_cfg[k] * v for k, v in terms.items())
        return total, dict(terms, loss=total)
    return loss_fn


def make_optimizer(t):
    """(tx, learning-rate schedule) of `config.train`."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, t.warmup_steps, t.steps,
                                                  t.learning_rate * t.end_lr_fraction)
    tx = optax.chain(optax.clip_by_global_norm(t.grad_clip),
                     optax.adamw(schedule, weight_decay=t.weight_decay))
    return tx, schedule


def make_train_step(loss_fn, input_noise):
    def train_step(state, x, probes, targets, key):
        x_in = x + input_noise * jax.random.normal(key, x.shape)
        (_, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, x, x_in, probes, targets)
        return state.apply_gradients(grads=grads), m
    return jax.jit(train_step, donate_argnums=0)


def batch(seed, step, train_idx, batch_size):
    """(rows of step `step`'s batch, its input-noise key): a pure function of (seed, step), so a
    resumed run draws what the killed one would have."""
    rng = np.random.default_rng([seed, step])
    pick = rng.choice(train_idx, batch_size, replace=len(train_idx) < batch_size)
    return pick, jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), step)


def behaviour_inputs(probe_set, pick):
    """(probes, targets) of rows `pick`; empty when the behaviour loss is off (`probe_set` None)."""
    if probe_set is None:
        return jnp.zeros((0,)), jnp.zeros((0,))
    probes, targets, position = probe_set
    j = [position[int(i)] for i in pick]
    return jnp.asarray(probes[j]), jnp.asarray(targets[j])


def validate(eval_loss, params, x_all, val_idx, batch_size, probe_set):
    """Mean of each loss term over the rows `val_idx` (the checkpoint-selection split)."""
    ms = []
    for a in range(0, len(val_idx), batch_size):
        pick = val_idx[a:a + batch_size]
        ms.append(jax.device_get(eval_loss(params, jnp.asarray(x_all[pick]),
                                           *behaviour_inputs(probe_set, pick))))
    return {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}


def read_inputs(workdir):
    """(pca, coefficients, manifest rows in coefficient order, {split: row indices of ok snapshots})."""
    p, co = pca.load(workdir), pca.load_coeffs(workdir)
    by_key = {(r["model_id"], r["snapshot"]): r for r in snapshots.read_manifest(workdir)}
    rows = [by_key[(int(m), str(s))] for m, s in zip(co["model_id"], co["snapshot"])]
    ok = co["status"] == "ok"
    idx = {s: np.flatnonzero(ok & (co["split"] == s)) for s in ("train", "val")}
    require(len(idx["train"]) >= 2, f"{workdir}/pca/coeffs.npz has {len(idx['train'])} ok train "
            "snapshots: the AE needs at least 2")
    return p, co, rows, idx


def train(config, out, state, loss_fn, schedule, x_all, idx, probe_set):
    """Trains from the last checkpoint in `out['checkpoints']` to `config.train.steps`, validating
    every `checkpoint_every` steps; returns (best params, best loss on idx['select'])."""
    t = config.train
    step_fn = make_train_step(loss_fn, t.input_noise)
    eval_loss = jax.jit(lambda params, x, probes, targets: loss_fn(params, x, x, probes, targets)[1])
    check = functools.partial(validate, eval_loss, x_all=x_all, val_idx=idx["select"],
                              batch_size=t.batch_size, probe_set=probe_set)

    def inputs(step):
        pick, key = batch(config.seed, step, idx["train"], t.batch_size)
        probes, targets = behaviour_inputs(probe_set, pick[:config.loss.behaviour_models])
        return jnp.asarray(x_all[pick]), probes, targets, key

    # the initial (linear PCA) AE is a candidate too: training must beat it
    best_params, best_val, _ = loop.train_keep_best(
        step_fn, inputs, check, state, t, schedule=schedule, directory=out["checkpoints"],
        log_path=out["log"], stage=STAGE, init_is_candidate=True)
    return best_params, best_val


def run(config, workdir):
    check_config(config)
    config_lib.stage_dir(workdir, STAGE)
    out = paths(workdir)
    if checkpoints.exists(out["params"]) and all(
            os.path.exists(out[k]) for k in ("latents", "metrics", "report")):
        logging.info("ae: outputs in %s are complete, nothing to do", os.path.dirname(out["params"]))
        return load(workdir)
    start_time = time.time()
    p, co, rows, idx = read_inputs(workdir)
    # the checkpoint is selected on val models; without any, on train (said in log and report)
    idx["select"], selected_on = (idx["val"], "val") if len(idx["val"]) else (idx["train"], "train")
    if selected_on == "train":
        logging.warning("ae: no val-split snapshots; the checkpoint is selected on the train loss")
    zoo_config = config_lib.load(workdir, "zoo")
    net = models.build(zoo_config.model, zoo_config.tasks.k)
    dataset = data.load(zoo_config.data)

    train_idx = idx["train"]
    norm = Normaliser.fit(co["coeffs"][train_idx], p.segments if config.model.norm == "segment" else None)
    x_all = np.asarray(norm(co["coeffs"]))
    lw_weights = jnp.asarray(losses.layerwise_weights(
        co["coeffs"][train_idx].std(0), np.asarray(norm.std), p.segments))
    probe_set = None  # (probes, their original logits, row -> position) of the rows trained on or selected on
    if config.loss.behaviour > 0:
        fit_idx = np.concatenate([train_idx, idx["select"]])
        probes = make_probes(config, dataset, [rows[i] for i in fit_idx], config.seed)
        targets = original_logits(workdir, net, [rows[i] for i in fit_idx], probes)
        probe_set = (probes, targets, {int(s): j for j, s in enumerate(fit_idx)})

    module = model_lib.build(config.model, p.num_coeffs)
    tx, schedule = make_optimizer(config.train)
    key = jax.random.fold_in(jax.random.key(config.seed), 0)
    params = module.init(key, jnp.zeros((1, p.num_coeffs)))["params"]
    if config.model.linear:
        params = model_lib.pca_init(params, x_all[train_idx], config.model.latent_dim,
                                    config.model.shrinkage)
    state = train_state.TrainState.create(apply_fn=module.apply, params=params, tx=tx)
    loss_fn = make_loss_fn(module, net, p, norm, lw_weights, config.loss)
    tic = time.time()
    best_params, best_val = train(config, out, state, loss_fn, schedule, x_all, idx, probe_set)
    train_seconds = time.time() - tic

    checkpoints.save(out["params"], dict(params=best_params, mean=norm.mean, std=norm.std))
    ae = load(workdir)
    z = np.asarray(ae.encode(co["coeffs"]))
    io.savez(out["latents"], z=z, model_id=co["model_id"], snapshot=co["snapshot"], split=co["split"])
    results = reconstruction.evaluate(workdir, config.eval, p=p, ae=ae, coeffs=co, rows=rows,
                                      dataset=dataset, module=net, selected_on=selected_on,
                                      seed=config.seed, workers=threads.workers(config))
    results["ae"] = dict(best_val_loss=best_val, selected_on=selected_on, train_seconds=train_seconds,
                         stage_seconds=time.time() - start_time, num_coeffs=p.num_coeffs,
                         latent_dim=int(config.model.latent_dim))
    reconstruction.write(out, results)
    logging.info("ae: done in %.1f s", time.time() - start_time)
    return ae
