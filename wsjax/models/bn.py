"""BatchNorm recalibration: re-estimate running statistics of networks on a few data batches."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from wsjax.models import inference


def _updated_stats(module, params, stats, x):
    """Running statistics after one train-mode step from `stats` (Flax: m * old + (1 - m) * batch)."""
    _, upd = module.apply({"params": params, "batch_stats": stats}, x, train=True,
                          mutable=["batch_stats"])
    return upd["batch_stats"]


@functools.partial(jax.jit, static_argnums=0)
def _recalibrate_chunk(module, stacked, batches):
    """New batch_stats [M, ...] of M stacked networks: per leaf, the mean over batches [B, b, ...]
    of the batch statistics, each layer seeing train-mode activations of the layers before it."""
    tmap = jax.tree_util.tree_map
    first = tmap(lambda a: a[0], stacked)
    zeros = tmap(jnp.zeros_like, first["batch_stats"])
    # The momentum m, read off the update itself: from ones, m + (1 - m) * batch; from zeros,
    # (1 - m) * batch. One module has one m per leaf, so the first network tells it for all.
    keep = tmap(lambda o, z: 1.0 - (o - z),
                _updated_stats(module, first["params"], tmap(jnp.ones_like, zeros), batches[0]),
                _updated_stats(module, first["params"], zeros, batches[0]))

    def one(params):
        total = jax.lax.map(lambda x: _updated_stats(module, params, zeros, x), batches)
        return tmap(lambda t, k: t.sum(0) / (batches.shape[0] * k), total, keep)

    return jax.lax.map(one, stacked["params"])


def recalibrate_stack(module, stacked, images, *, num_batches, batch_size):
    """Stacked variables [N, ...] whose batch_stats are re-estimated on `num_batches` batches of
    `images` [n, H, W, C] (taken in order, wrapping around): PyTorch's cumulative recalibration."""
    images = np.asarray(images)
    if not (len(images) > 0 and num_batches >= 1 and batch_size >= 1):
        raise ValueError(f"recalibration needs images and batches, got {len(images)} images, "
                         f"num_batches={num_batches}, batch_size={batch_size}")
    idx = np.arange(num_batches * batch_size) % len(images)
    batches = jnp.asarray(images[idx].reshape((num_batches, batch_size) + images.shape[1:]))
    stats = inference.map_chunks(lambda chunk: _recalibrate_chunk(module, chunk, batches), stacked)
    return {"params": stacked["params"], "batch_stats": stats}


def recalibrate(module, variables, images, *, num_batches, batch_size):
    """One network's variables, recalibrated as `recalibrate_stack` does."""
    stacked = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], variables)
    out = recalibrate_stack(module, stacked, images, num_batches=num_batches, batch_size=batch_size)
    return jax.tree_util.tree_map(lambda x: x[0], out)
