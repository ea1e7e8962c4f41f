"""The multi-model train step: a cohort of models stepped together in one jitted call.

A cohort's state is one pytree stacked over models ([M, ...] leaves): params, batch_stats,
opt_state (one Adam|SGD union state whose hyperparameters are per-model arrays, so Adam and SGD
models share a cohort and one compiled step) and a `diverged` flag. A batch is host-computed
indices into the dataset kept on device:
{'idx': [K, M, B], 'label': [K, M, B], 'active': [K, M]} for K steps per call. Inactive models
(finished, padding) and diverged models keep their state bit for bit. A model diverges at the
first step whose loss is non-finite or above `diverge_loss_factor` times chance (log classes), or
whose update leaves any non-finite value in params, batch_stats or opt_state: it keeps its last
healthy state, so a snapshot marked 'ok' never holds an inf (a BatchNorm variance included).

Strategies: 'unroll' (a Python loop over models inside the jit: XLA:CPU runs the independent
per-model graphs concurrently), 'vmap' (grouped convolutions: the accelerator answer, ~6x slower on
XLA:CPU), 'sequential' (the baseline: cohorts of one model). The model axis is sharded over a
`models` mesh axis with `jax.shard_map` when more than one device is used.
"""
import functools
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from wsjax.common.config import require

STRATEGIES = ("unroll", "vmap", "sequential")
DIVERGE_LOSS_FACTOR = 10.0  # default of config.train.diverge_loss_factor


class OptState(NamedTuple):
    """Adam and SGD in one state, so both kinds of models share a cohort and a compiled step."""
    count: jax.Array          # steps taken
    mu: Any                   # Adam first moment | SGD momentum trace
    nu: Any                   # Adam second moment (unused by SGD)
    hyperparams: dict         # learning_rate, weight_decay, momentum, adam (1.0 | 0.0)


@functools.lru_cache(maxsize=None)
def make_optimizer(b1=0.9, b2=0.999, eps=1e-8):
    """AdamW (optax.adamw's update) or SGD with momentum and coupled weight decay, chosen per
    model by `hyperparams['adam']`: an optax.GradientTransformation."""
    def init(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        hp = {k: jnp.zeros((), jnp.float32) for k in HYPERPARAMS}
        return OptState(jnp.zeros((), jnp.int32), zeros, zeros, hp)

    def update(grads, state, params):
        hp, count = state.hyperparams, state.count + 1
        adam = hp["adam"] > 0.5
        lr, wd, mom = hp["learning_rate"], hp["weight_decay"], hp["momentum"]
        c1 = 1 - b1 ** count.astype(jnp.float32)
        c2 = 1 - b2 ** count.astype(jnp.float32)

        def one(g, p, mu, nu):
            g_sgd = g + wd * p
            mu = jnp.where(adam, b1 * mu + (1 - b1) * g, mom * mu + g_sgd)
            nu = jnp.where(adam, b2 * nu + (1 - b2) * g * g, nu)
            u_adam = (mu / c1) / (jnp.sqrt(nu / c2) + eps) + wd * p
            return -lr * jnp.where(adam, u_adam, mu), mu, nu

        out = jax.tree_util.tree_map(one, grads, params, state.mu, state.nu)
        def pick(i):  # the i-th of each leaf's (update, mu, nu)
            return jax.tree_util.tree_map(lambda t: t[i], out, is_leaf=lambda t: isinstance(t, tuple))

        return pick(0), OptState(count, pick(1), pick(2), hp)

    return optax.GradientTransformation(init, update)


HYPERPARAMS = ("learning_rate", "weight_decay", "momentum", "adam")


def init_model_state(tx, variables, optimizer, learning_rate, weight_decay, momentum=0.0, dropout=None):
    """One model's train state (numpy leaves) with its hyperparameters written into opt_state;
    `dropout` (rate, key): its dropout rate and PRNG key (the state's 'dropout' entry; a zoo
    without dropout has none, so its step and checkpoints are what they were)."""
    require(optimizer in ("adam", "sgd"), f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    params = jax.tree_util.tree_map(jnp.asarray, variables["params"])
    opt_state = tx.init(params)
    hp = dict(learning_rate=learning_rate, weight_decay=weight_decay,
              momentum=momentum if optimizer == "sgd" else 0.0,
              adam=1.0 if optimizer == "adam" else 0.0)
    opt_state = opt_state._replace(hyperparams={k: np.float32(v) for k, v in hp.items()})
    state = dict(params=variables["params"], batch_stats=variables["batch_stats"],
                 opt_state=opt_state, diverged=np.asarray(False))
    if dropout is not None:
        rate, key = dropout
        state["dropout"] = dict(rate=np.float32(rate), key=jax.random.key_data(key))
    return jax.tree_util.tree_map(np.asarray, state)


def stack(states):
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *states)


def unstack(state, m):
    return jax.tree_util.tree_map(lambda x: np.asarray(x[m]), state)


def _all_finite(tree):
    # One reduction over the concatenated leaves: a reduction per leaf (each fusing that leaf's
    # optimizer update) made XLA:CPU compile the ResNet-18 step ~7x slower (46 s vs 7 s).
    return jnp.all(jnp.isfinite(jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)])))


def model_step(module, tx, state, x, y, active, diverge_loss_factor=DIVERGE_LOSS_FACTOR):
    """One model, one step; a diverged step (see the module docstring) freezes the model. With a
    'dropout' entry, the step's dropout mask is drawn from its key folded with the step count."""
    extra = {}
    if "dropout" in state:
        key = jax.random.fold_in(jax.random.wrap_key_data(state["dropout"]["key"]), state["opt_state"].count)
        extra = dict(dropout_rate=state["dropout"]["rate"], rngs={"dropout": key})

    def loss_fn(params):
        logits, upd = module.apply({"params": params, "batch_stats": state["batch_stats"]}, x,
                                   train=True, mutable=["batch_stats"], **extra)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (upd["batch_stats"], logits.shape[-1])

    (loss, (batch_stats, num_classes)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = dict(params=params, batch_stats=batch_stats, opt_state=opt_state)
    # `loss <= limit` is False for a NaN loss too
    healthy = (loss <= diverge_loss_factor * np.log(num_classes)) & _all_finite(new)
    take = active & healthy & ~state["diverged"]
    old = {k: state[k] for k in new}
    out = jax.tree_util.tree_map(lambda n, o: jnp.where(take, n, o), new, old)
    out["diverged"] = state["diverged"] | (active & ~healthy)
    if "dropout" in state:
        out["dropout"] = state["dropout"]
    return out, jnp.where(active, loss, 0.0)


def _cohort_steps(module, tx, strategy, diverge_loss_factor, state, x_all, batch):
    """K steps of M stacked models on this device: (state, loss [K, M])."""
    step = functools.partial(model_step, module, tx, diverge_loss_factor=diverge_loss_factor)
    losses = []
    for k in range(batch["idx"].shape[0]):  # steps unrolled: XLA:CPU loops are slow
        idx, label, active = batch["idx"][k], batch["label"][k], batch["active"][k]
        if strategy == "vmap":
            state, loss = jax.vmap(step)(state, x_all[idx], label, active)
        else:
            outs = [step(jax.tree_util.tree_map(lambda a: a[m], state),
                         x_all[idx[m]], label[m], active[m])
                    for m in range(idx.shape[0])]
            state = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[o[0] for o in outs])
            loss = jnp.stack([o[1] for o in outs])
        losses.append(loss)
    return state, jnp.stack(losses)


def make_mesh(num_devices):
    devices = jax.devices()
    n = len(devices) if num_devices == 0 else num_devices
    require(n <= len(devices), f"config.num_devices={num_devices} but only {len(devices)} devices exist")
    return Mesh(np.asarray(devices[:n]), ("models",))


@functools.lru_cache(maxsize=None)  # one compiled step per set of arguments per process
def make_cohort_step(module, tx, strategy, mesh=None, diverge_loss_factor=DIVERGE_LOSS_FACTOR):
    """jit(state, x_all, batch) -> (state, loss [K, M]), state donated; sharded over `mesh`."""
    require(strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    inner = "unroll" if strategy == "sequential" else strategy

    def per_device(state, x_all, batch):
        return _cohort_steps(module, tx, inner, diverge_loss_factor, state, x_all, batch)

    if mesh is None or mesh.size == 1:
        return jax.jit(per_device, donate_argnums=0)
    sharded = jax.shard_map(per_device, mesh=mesh,
                            in_specs=(P("models"), P(), P(None, "models")),
                            out_specs=(P("models"), P(None, "models")))
    return jax.jit(sharded, donate_argnums=0)


def place(tree, mesh, spec):
    """Host arrays `tree` (the same on every process) onto `mesh` with one PartitionSpec for every
    leaf (None: default device); under several processes each process fills only its own devices."""
    if mesh is None or mesh.size == 1:
        return jax.device_put(tree)
    sharding = NamedSharding(mesh, spec)
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda i: np.asarray(x)[i]), tree)


def _identity(tree):  # module level: one compiled copy per tree structure (jit caches by function)
    return tree


def to_host(tree):
    """Numpy copies of `tree`'s arrays. Arrays sharded over other processes' devices are gathered
    first (one all-gather for the whole tree), so every process holds every model."""
    global_leaves = [x for x in jax.tree_util.tree_leaves(tree)
                     if isinstance(x, jax.Array) and not x.is_fully_addressable]
    if global_leaves:
        replicated = NamedSharding(global_leaves[0].sharding.mesh, P())
        tree = jax.tree_util.tree_map(lambda x: x.addressable_data(0),
                                      jax.jit(_identity, out_shardings=replicated)(tree))
    return jax.tree_util.tree_map(np.asarray, tree)


@functools.lru_cache(maxsize=None)
def single_step(module, tx, diverge_loss_factor=DIVERGE_LOSS_FACTOR):
    """jit(state, x, y) -> (state, loss) of one unstacked model: the benchmark's baseline."""
    def step(state, x, y):
        return model_step(module, tx, state, x, y, jnp.asarray(True), diverge_loss_factor)
    return jax.jit(step, donate_argnums=0)


def enable_compile_cache(path):
    """Persistent XLA compilation cache at `path` ('' = off): a ResNet-18 step takes ~10 s to
    compile on XLA:CPU, so reruns and later stages reuse compiled steps."""
    if path:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
