"""BatchNorm recalibration: re-estimate running statistics of a network on a few data batches."""
import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnums=0)
def _updated_stats(module, params, stats, x):
    """Running statistics after one train-mode step from `stats` (Flax: m * old + (1 - m) * batch)."""
    _, upd = module.apply({"params": params, "batch_stats": stats}, x, train=True,
                          mutable=["batch_stats"])
    return upd["batch_stats"]


def recalibrate(module, variables, images, *, num_batches, batch_size):
    """Variables whose batch_stats are the mean of per-batch statistics over `num_batches`
    batches of `images` [N, H, W, C] (taken in order, wrapping around), each layer seeing
    train-mode activations of the layers before it (as PyTorch's cumulative recalibration)."""
    images = np.asarray(images)
    assert len(images) > 0 and num_batches >= 1 and batch_size >= 1
    params, stats = variables["params"], variables["batch_stats"]
    zeros = jax.tree_util.tree_map(jnp.zeros_like, stats)
    ones = jax.tree_util.tree_map(jnp.ones_like, stats)
    total = None
    for b in range(num_batches):
        idx = (np.arange(batch_size) + b * batch_size) % len(images)
        x = jnp.asarray(images[idx])
        from_zero = _updated_stats(module, params, zeros, x)  # (1 - m) * batch
        if total is None:
            # The momentum m, read off the update itself: from ones, m + (1 - m) * batch.
            from_one = _updated_stats(module, params, ones, x)
            keep = jax.tree_util.tree_map(lambda o, z: 1.0 - (o - z), from_one, from_zero)
            total = from_zero
        else:
            total = jax.tree_util.tree_map(jnp.add, total, from_zero)
    new = jax.tree_util.tree_map(lambda t, k: t / (num_batches * k), total, keep)
    return {"params": params, "batch_stats": jax.tree_util.tree_map(np.asarray, new)}
