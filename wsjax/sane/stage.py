"""Stage 'sane': SANE-style encoder of the zoo's weights (seed 004).

    sane/checkpoints/     Orbax CheckpointManager of the training state (resume point)
    sane/params/          Orbax: the selected parameters, the token normalisation statistics and
                          the alignment's reference network
    sane/embeddings.npz   z [S, latent_dim] of every zoo snapshot (manifest order), model_id,
                          snapshot, split, status
    sane/log.jsonl        training and val-model metrics
    sane/metrics.json     selection, timings, and how far a channel permutation moves an embedding

With `tokens.align` (the default) every network is first aligned to a reference, the earliest
snapshot of the first train model (under a shared init, the init): each block's inner channels
matched to its by weight matching (`tokens.align_channels`), so an embedding is invariant to
those channel permutations by construction rather than by augmentation, as in the SANE paper;
`metrics.json`'s `aligned_unchanged` is the share of snapshots the alignment left as they were.

The zoo is tokenised and normalised once (`token_store`); a training step gathers its windows
from that store, on the device where it takes at most `tokens.device_share` of its memory, so it
neither copies nor tokenises whole networks (`configs/bench/sane.py` measures the difference).
With `augment.permute` each step still permutes and tokenises whole networks (`network_source`).

Trained on train-split snapshots; the checkpoint is the one with the lowest loss on val-split
models (a fixed key, so the number is comparable across checkpoints). Batches and keys are pure
functions of (seed, step): a killed run resumes from its last checkpoint and ends in the same state.
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

from wsjax.common import checkpoints
from wsjax.common import config as config_lib
from wsjax.common import io, loop
from wsjax.common.config import require
from wsjax.models import inference
from wsjax.sane import model as model_lib
from wsjax.sane import tokens as tokens_lib
from wsjax.zoo import snapshots

STAGE = "sane"


def _positive(section, name, value, least=1):
    require(value >= least, f"config.{section}.{name} must be >= {least}, got {value}")


def check_config(config):
    require("model" in config and "train" in config and "tokens" in config,
            "config.model/train/tokens are missing: use configs/sane.py")
    t, m, a = config.train, config.model, config.augment
    _positive("tokens", "token_size", config.tokens.token_size)
    _positive("tokens", "window", config.tokens.window, least=2)
    require(0 <= config.tokens.device_share <= 1,
            f"config.tokens.device_share must be in [0, 1], got {config.tokens.device_share}")
    for name in ("dim", "latent_dim", "projection_dim", "num_heads", "mlp_ratio"):
        _positive("model", name, m[name])
    require(m.dtype in ("float32", "bfloat16"),
            f"config.model.dtype must be 'float32' or 'bfloat16', got {m.dtype!r}")
    require(m.get("attention", "auto") in model_lib.ATTENTION,
            f"config.model.attention must be one of {model_lib.ATTENTION}, got {m.get('attention')!r}")
    require(m.get("attention") != "cudnn" or m.dtype == "bfloat16",
            "config.model.attention='cudnn' runs in bfloat16 only: set config.model.dtype='bfloat16'")
    require(m.dim % m.num_heads == 0,
            f"config.model.dim ({m.dim}) must be a multiple of num_heads ({m.num_heads})")
    _positive("train", "steps", t.steps)
    _positive("train", "batch_size", t.batch_size, least=2)  # NT-Xent needs negatives
    _positive("train", "checkpoint_every", t.checkpoint_every)
    require(0 <= t.warmup_steps < t.steps,
            f"config.train.warmup_steps must be in [0, steps), got {t.warmup_steps}")
    require(t.learning_rate > 0, f"config.train.learning_rate must be > 0, got {t.learning_rate}")
    require(not (config.tokens.align and a.permute),
            "config.tokens.align and config.augment.permute are both on: aligned networks never "
            "show the encoder a permuted view, so train on none (augment.permute=False)")
    _positive("augment", "noise", a.noise, least=0)
    for name in ("erase_probability", "erase_fraction"):
        require(0 <= a[name] <= 1, f"config.augment.{name} must be in [0, 1], got {a[name]}")
    loss = config.loss
    require(loss.reconstruction >= 0 and loss.contrastive >= 0 and loss.reconstruction + loss.contrastive > 0,
            "config.loss.reconstruction and contrastive must be >= 0, one of them > 0")
    require(loss.temperature > 0, f"config.loss.temperature must be > 0, got {loss.temperature}")


def paths(workdir):
    d = os.path.join(workdir, STAGE)
    return dict(params=os.path.join(d, "params"), embeddings=os.path.join(d, "embeddings.npz"),
                checkpoints=os.path.join(d, "checkpoints"), log=os.path.join(d, "log.jsonl"),
                metrics=os.path.join(d, "metrics.json"))


# Tokens per jitted embed/decode call: 64 networks of a width-4 ResNet-18 (~300 tokens) in one call,
# but 4 at width 64 (42,950 tokens at token_size 288): 64 of those needed 89 GiB on an H100.
TOKENS_PER_CALL = 1 << 18


def networks_per_call(num_tokens):
    """The power of two of networks, 1 to 64, whose tokens fit TOKENS_PER_CALL."""
    return 1 << max(0, min(6, (TOKENS_PER_CALL // num_tokens).bit_length() - 1))


class Codec:
    """The trained SANE: `embed(stacked variables [N, ...])` -> [N, latent_dim] (the mean over
    tokens), `latents` -> per-token latents [N, T, latent_dim], `segment_means(latents)` -> [N,
    num_segments * latent_dim] (the mean within each segment, segments side by side), `decode(latents)`
    -> stacked variables shaped like `template`; the sequence is covered by consecutive windows.
    With a `reference` network, inputs are first aligned to it (`tokens.align_channels`)."""

    def __init__(self, module, params, layout, mean, std, window, template, reference=None):
        self.module, self.params, self.layout, self.reference = module, params, layout, reference
        template = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.float32), template)
        self.window = min(window, layout.num_tokens)
        self.chunk = networks_per_call(layout.num_tokens)
        # parameters and statistics are arguments, not constants folded into the program: the
        # accelerator preset's embedding at width 64 compiled 1.8-3.5x faster so on the CPU
        self._inputs = (params, jnp.asarray(mean), jnp.asarray(std))
        self._latents = jax.jit(functools.partial(_latents, module, layout, self.window))
        self._decode = jax.jit(lambda params, mean, std, z: _decode(module, layout, self.window, params,
                                                                    mean, std, template, z))

    def latents(self, stacked):
        if self.reference is not None:
            stacked = tokens_lib.align_channels(jax.device_get(stacked), self.reference)
        return inference.map_chunks(lambda c: self._latents(*self._inputs, c), stacked, self.chunk)

    def embed(self, stacked):
        return self.latents(stacked).mean(1)

    def segment_means(self, z):
        seg = self.layout.segment
        share = np.eye(self.layout.num_segments, dtype=np.float32)[seg] / np.bincount(seg)  # [T, S]
        z = np.einsum("ntd,ts->nsd", z, share)
        return z.reshape(len(z), -1)

    def decode(self, z):
        return inference.map_chunks(lambda c: self._decode(*self._inputs, c), z, self.chunk)


def _normalised(layout, mean, std, stacked):
    """Normalised tokens [B, T, D] of stacked variables; mean/std are per segment [S, D]."""
    seg = layout.segment
    tok = jax.vmap(functools.partial(tokens_lib.tokenize, token_size=layout.token_size))(stacked)
    return (tok - mean[seg]) / std[seg] * layout.mask


def _starts(num_tokens, window):
    """Window starts covering the sequence: every `window` tokens, the last flush with the end."""
    starts = list(range(0, num_tokens - window + 1, window))
    return starts + ([num_tokens - window] if starts[-1] != num_tokens - window else [])


def _encodings(layout, pos):
    return jnp.asarray(layout.segment)[pos], jnp.asarray(layout.channel)[pos], pos


def _windowed(module, layout, window, params, method, x):
    """`method` ('encode' | 'decode') of the sequences x [B, T, ...] applied window by window,
    each position's output averaged over the windows that cover it: [B, T, out]."""
    b, t = x.shape[:2]
    pos = jnp.asarray([np.arange(s, s + window) for s in _starts(t, window)])  # [n, W]
    pos = jnp.broadcast_to(pos[:, None], (len(pos), b, window)).reshape(-1, window)
    xs = jnp.take_along_axis(jnp.tile(x, (len(pos) // b, 1, 1)), pos[:, :, None], axis=1)
    y = module.apply({"params": params}, xs, *_encodings(layout, pos), method=method)
    total = jnp.zeros((b, t, y.shape[-1])).at[jnp.arange(len(pos))[:, None] % b, pos].add(y)
    count = jnp.zeros((t,)).at[pos].add(1.0) / b
    return total / count[None, :, None]


def _latents(module, layout, window, params, mean, std, stacked):
    return _windowed(module, layout, window, params, "encode", _normalised(layout, mean, std, stacked))


def _decode(module, layout, window, params, mean, std, template, z):
    """Stacked variables from per-token latents [B, T, d]: decoded tokens, un-normalised."""
    seg = layout.segment
    tok = _windowed(module, layout, window, params, "decode", z) * std[seg] + mean[seg]
    return jax.vmap(lambda t: tokens_lib.detokenize(t, template))(tok * layout.mask)


def nt_xent(a, b, temperature):
    """NT-Xent (SimCLR) of paired projections a, b [B, P]: each row's positive is its pair."""
    z = jnp.concatenate([a, b])
    z = z / jnp.linalg.norm(z, axis=1, keepdims=True).clip(1e-8)
    logits = z @ z.T / temperature
    n = a.shape[0]
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
    target = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    return optax.softmax_cross_entropy_with_integer_labels(logits, target).mean()


def views(layout, augment, clean, start, key):
    """Two augmented views of the clean normalised windows `clean` [V, B, W, D] that start at
    token `start` [B] (V = 1: both views of the same window; V = 2: one window each): (inputs
    [2B, W, D], targets [2B, W, D], masks [2B, W, D], positions [2B, W]). Noise and erasing change
    a view's input, not its target: they are not the same network, a permutation is."""
    _, b, w, d = clean.shape
    pos = start[:, None] + jnp.arange(w)
    mask = jnp.tile(jnp.asarray(layout.mask)[pos], (2, 1, 1))
    target = jnp.broadcast_to(clean, (2, b, w, d)).reshape(2 * b, w, d)
    k_noise, k_erase = jax.random.split(key)
    noisy = target + augment.noise * jax.random.normal(k_noise, target.shape) * mask
    erased = jax.vmap(functools.partial(tokens_lib.erase, probability=augment.erase_probability,
                                        max_fraction=augment.erase_fraction))(
        noisy, mask, jax.random.split(k_erase, 2 * b))
    return erased, target, mask, jnp.tile(pos, (2, 1))


def make_loss_fn(module, layout, config):
    """loss(params, clean windows [V, B, W, D], starts [B], key) -> (total, metrics)."""

    def loss_fn(params, clean, start, key):
        x, target, mask, pos = views(layout, config.augment, clean, start, key)
        _, recon, proj = module.apply({"params": params}, x, *_encodings(layout, pos))
        rec = jnp.sum(mask * (recon - target) ** 2) / jnp.sum(mask)
        con = nt_xent(*jnp.split(proj, 2), config.loss.temperature)
        total = config.loss.reconstruction * rec + config.loss.contrastive * con
        return total, dict(loss=total, reconstruction=rec, contrastive=con)
    return loss_fn


def make_train_step(loss_fn):
    def train_step(state, clean, start, key):
        (_, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, clean, start, key)
        return state.apply_gradients(grads=grads), m
    return jax.jit(train_step, donate_argnums=0)


def make_optimizer(t):
    schedule = optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, t.warmup_steps, t.steps,
                                                  t.learning_rate * t.end_lr_fraction)
    return optax.chain(optax.clip_by_global_norm(t.grad_clip),
                       optax.adamw(schedule, weight_decay=t.weight_decay)), schedule


def init_state(config, module, layout, window):
    """(fresh TrainState of `module`, the learning-rate schedule), from config.seed and config.train."""
    zeros = jnp.zeros((1, window, layout.token_size))
    params = module.init(jax.random.fold_in(jax.random.key(config.seed), 0), zeros,
                         *_encodings(layout, jnp.arange(window)[None]))["params"]
    tx, schedule = make_optimizer(config.train)
    return train_state.TrainState.create(apply_fn=module.apply, params=params, tx=tx), schedule


def batch(seed, step, train_idx, batch_size, num_tokens, window):
    """(snapshot indices, window starts, key) of step `step`: pure in (seed, step), so a resumed
    run draws what the killed one would have."""
    rng = np.random.default_rng([seed, step])
    pick = np.sort(rng.choice(train_idx, batch_size, replace=len(train_idx) < batch_size))
    start = rng.integers(0, num_tokens - window + 1, batch_size)
    return pick, start, jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), step)


def take(stacked, idx):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x[idx]), stacked)


def window_source(store, window, on_device):
    """`source(pick, start, key)` -> clean windows [1, B, W, D] of the tokenised zoo `store`
    [S, T, D]: gathered on the device where the store lives there (a step's input is then two
    index vectors), else on the host and copied."""
    offsets = np.arange(window)
    if on_device:
        store = jax.device_put(store)
        gather = jax.jit(lambda s, pick, start: s[pick[:, None], start[:, None] + offsets][None])
        return lambda pick, start, key: gather(store, pick, start)
    return lambda pick, start, key: jax.device_put(store[pick[:, None], start[:, None] + offsets][None])


def network_source(layout, mean, std, stacked, window, permute):
    """`source(pick, start, key)` -> clean windows [V, B, W, D] cut from whole networks gathered on
    the host and tokenised on the device every step: with `permute`, each of the V = 2 views from
    its own function-preserving channel permutation (the SANE paper's augmentation). Without, it
    is the path the stage took before the token store (the benchmark's baseline)."""
    norm = (jnp.asarray(mean), jnp.asarray(std))

    @jax.jit
    def cut(mean, std, nets, start, key):
        pos = (start[:, None] + jnp.arange(window))[:, :, None]
        if permute:
            keys = jax.random.split(key, (2, len(start)))
            nets = [jax.vmap(tokens_lib.permute_channels)(nets, k) for k in keys]
        return jnp.stack([jnp.take_along_axis(_normalised(layout, mean, std, n), pos, axis=1)
                          for n in (nets if permute else [nets])])
    return lambda pick, start, key: cut(*norm, take(stacked, pick), start, jax.random.fold_in(key, 1))


def fits_on_device(nbytes, share):
    """Whether `nbytes` take at most `share` of the default device's memory (a CPU device's memory
    is the host's, where the store is anyway: yes)."""
    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    return limit is None or nbytes <= share * limit


def read_zoo(workdir):
    """(manifest rows, stacked variables [S, ...] of every snapshot in manifest order)."""
    rows = snapshots.read_manifest(workdir)
    snapshots.check_snapshots(workdir, rows)
    per_model = [snapshots.load_snapshots(workdir, m)
                 for m in tqdm(sorted({r["model_id"] for r in rows}), desc="sane: read zoo",
                               unit="model", leave=False)]
    return rows, jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *per_model)


def token_store(layout, stacked, train_idx):
    """(store [S, T, D] float32, mean, std [num_segments, D]): every snapshot's tokens, normalised,
    so a training step gathers windows instead of tokenising whole networks; mean and std per
    segment (layer x chunk) and token entry over the snapshots `train_idx` and the segment's
    channels (padding entries keep unit scale and stay 0)."""
    tokenize = jax.jit(jax.vmap(functools.partial(tokens_lib.tokenize, token_size=layout.token_size)))
    n, chunk = len(jax.tree_util.tree_leaves(stacked)[0]), networks_per_call(layout.num_tokens)
    store = np.empty((n, layout.num_tokens, layout.token_size), np.float32)
    for i in tqdm(range(0, n, chunk), desc="sane: tokenise zoo", unit="chunk", leave=False):
        store[i:i + chunk] = tokenize(take(stacked, np.arange(i, min(i + chunk, n))))
    s, d, seg = layout.num_segments, layout.token_size, layout.segment
    total, squares = np.zeros((s, d)), np.zeros((s, d))
    for i in range(0, len(train_idx), chunk):
        tok = store[train_idx[i:i + chunk]].astype(np.float64)
        np.add.at(total, seg, tok.sum(0))
        np.add.at(squares, seg, (tok ** 2).sum(0))
    count = len(train_idx) * np.bincount(seg, minlength=s)[:, None]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
    mean, std = mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)
    for i in range(0, n, chunk):  # in place, a chunk at a time: no second zoo-sized array
        store[i:i + chunk] = (store[i:i + chunk] - mean[seg]) / std[seg] * layout.mask
    return store, mean, std


def train(config, out, state, loss_fn, schedule, source, num_tokens, idx):
    """Trains from the last checkpoint to config.train.steps on the windows `source` cuts;
    returns (best params, best val loss, its step)."""
    t = config.train
    window = min(config.tokens.window, num_tokens)
    step_fn = make_train_step(loss_fn)
    eval_loss = jax.jit(lambda params, *inputs: loss_fn(params, *inputs)[1])
    eval_key = jax.random.fold_in(jax.random.key(config.seed), 2)
    select = idx["select"]
    eval_start = np.random.default_rng([config.seed, 2]).integers(0, num_tokens - window + 1, len(select))
    chunks = [np.arange(i, min(i + t.batch_size, len(select))) for i in range(0, len(select), t.batch_size)]
    chunks = [c for c in chunks if len(c) >= 2]  # NT-Xent needs a negative

    def check(params):
        ms = [jax.device_get(eval_loss(params, source(select[c], eval_start[c], eval_key), eval_start[c],
                                       eval_key)) for c in chunks]
        return {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}

    def inputs(step):
        pick, start, key = batch(config.seed, step, idx["train"], t.batch_size, num_tokens, window)
        return source(pick, start, key), start, key

    return loop.train_keep_best(step_fn, inputs, check, state, t, schedule=schedule,
                                directory=out["checkpoints"], log_path=out["log"], stage=STAGE)


def unchanged_share(a, b):
    """Share of the stacked networks that are the same in `a` and `b`."""
    same = [np.all(x.reshape(len(x), -1) == y.reshape(len(y), -1), axis=1)
            for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]
    return float(np.all(same, axis=0).mean())


def permutation_check(codec, stacked, idx, seed):
    """How far a function-preserving channel permutation moves the embedding of the snapshots
    `idx`, relative to the distance to the nearest other snapshot and to the median pair."""
    v = take(stacked, idx)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), 3), len(idx))
    z = codec.embed(v)
    zp = codec.embed(jax.vmap(tokens_lib.permute_channels)(v, keys))
    moved = np.linalg.norm(zp - z, axis=1)
    pair = np.linalg.norm(z[:, None] - z[None], axis=-1)
    np.fill_diagonal(pair, np.inf)
    return dict(snapshots=len(idx), mean_moved=float(moved.mean()),
                mean_nearest_other=float(pair.min(1).mean()),
                median_pair=float(np.median(pair[np.isfinite(pair)])),
                closest_to_itself=float((moved < pair.min(1)).mean()))


def load(workdir):
    """The Codec trained in `workdir/sane`."""
    path = paths(workdir)["params"]
    require(checkpoints.exists(path), f"{path} not found: run the 'sane' stage with this --workdir first")
    config = config_lib.load(workdir, STAGE)
    saved = checkpoints.restore(path, stage=STAGE)
    rows = snapshots.read_manifest(workdir)
    template = snapshots.load_variables(workdir, rows[0]["model_id"], rows[0]["snapshot"])
    layout = tokens_lib.layout(template, config.tokens.token_size)
    module = model_lib.build(config, layout)
    params = jax.tree_util.tree_map(jnp.asarray, saved["params"])
    return Codec(module, params, layout, saved["mean"], saved["std"], config.tokens.window, template,
                 saved.get("reference"))


def load_embeddings(workdir):
    """dict(z [S, latent_dim], model_id, snapshot, split, status): every zoo snapshot's embedding."""
    path = paths(workdir)["embeddings"]
    require(os.path.exists(path), f"{path} not found: run the 'sane' stage with this --workdir first")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def done(workdir):
    """Whether the sane stage's outputs in `workdir` are complete."""
    out = paths(workdir)
    return checkpoints.exists(out["params"]) and all(os.path.exists(out[k])
                                                     for k in ("embeddings", "metrics"))


def run(config, workdir):
    check_config(config)
    out = paths(workdir)
    if done(workdir):
        logging.info("sane: outputs in %s are complete, nothing to do", os.path.dirname(out["params"]))
        return load(workdir)
    start_time = time.time()
    rows, stacked = read_zoo(workdir)
    split = np.array([r["split"] for r in rows])
    ok = np.array([r["status"] == "ok" for r in rows])
    idx = {s: np.flatnonzero(ok & (split == s)) for s in ("train", "val", "test")}
    require(len(idx["train"]) >= 2,
            f"{workdir}/zoo has {len(idx['train'])} ok train snapshots: SANE needs >= 2")
    idx["select"], selected_on = (idx["val"], "val") if len(idx["val"]) >= 2 else (idx["train"], "train")
    if selected_on == "train":
        logging.warning("sane: fewer than 2 val-split snapshots; the checkpoint is selected on train")

    reference, raw = None, stacked
    if config.tokens.align:  # the earliest snapshot of the first train model: a shared init's init
        first = min(idx["train"], key=lambda i: (rows[i]["step"], i))
        reference = jax.tree_util.tree_map(lambda x: np.array(x[first]), stacked)
        stacked = tokens_lib.align_channels(stacked, reference)
    layout = tokens_lib.layout(take(stacked, 0), config.tokens.token_size)
    window = min(config.tokens.window, layout.num_tokens)
    store, mean, std = token_store(layout, stacked, idx["train"])
    if config.augment.permute:
        source = network_source(layout, mean, std, stacked, window, permute=True)
    else:
        on_device = fits_on_device(store.nbytes, config.tokens.device_share)
        logging.info("sane: the tokenised zoo (%.2f GiB) is kept on the %s", store.nbytes / 2 ** 30,
                     "device" if on_device else "host: each step's windows are copied")
        source = window_source(store, window, on_device)
    module = model_lib.build(config, layout)
    state, schedule = init_state(config, module, layout, window)
    loss_fn = make_loss_fn(module, layout, config)
    tic = time.time()
    best_params, best_val, best_step = train(config, out, state, loss_fn, schedule, source,
                                             layout.num_tokens, idx)
    del store, source  # the device's copy, before the embedding pass
    train_seconds = time.time() - tic

    saved = dict(params=best_params, mean=mean, std=std)
    checkpoints.save(out["params"], saved if reference is None else dict(saved, reference=reference))
    codec = load(workdir)
    z = codec.embed(raw)
    io.savez(out["embeddings"], z=z, model_id=np.array([r["model_id"] for r in rows]),
             snapshot=np.array([r["snapshot"] for r in rows]), split=split,
             status=np.array([r["status"] for r in rows]))
    held_out = np.concatenate([idx["val"], idx["test"]])
    metrics = dict(selected_on=selected_on, best_val_loss=best_val, best_step=best_step,
                   num_tokens=layout.num_tokens, token_size=layout.token_size, window=window,
                   num_params=int(sum(x.size for x in jax.tree_util.tree_leaves(best_params))),
                   permutation=permutation_check(codec, raw, held_out if len(held_out) >= 2
                                                 else idx["train"], config.seed),
                   aligned_unchanged=None if reference is None else unchanged_share(stacked, raw),
                   train_seconds=train_seconds, stage_seconds=time.time() - start_time)
    io.write_json(out["metrics"], metrics)
    logging.info("sane: done in %.1f s (best val loss %.4f at step %d; permutation moves an "
                 "embedding %.3g, nearest other snapshot %.3g)", metrics["stage_seconds"], best_val,
                 best_step, metrics["permutation"]["mean_moved"],
                 metrics["permutation"]["mean_nearest_other"])
    return codec
