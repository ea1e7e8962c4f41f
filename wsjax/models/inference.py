"""Running stored networks on an image set: logits, loss and accuracy, in jitted chunks."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import log_softmax

CHUNK = 8  # networks per jitted call of the stacked functions (one compiled shape for all N)


@functools.partial(jax.jit, static_argnums=0)
def _apply(module, variables, x):
    return module.apply(variables, x, train=False)


def logits(module, variables, images, batch_size=512):
    """Logits [N, C] of `module` with `variables` (BN in inference mode) on images [N, H, W, C]."""
    out = [_apply(module, variables, jnp.asarray(images[i:i + batch_size]))
           for i in range(0, len(images), batch_size)]
    return np.asarray(jnp.concatenate(out))


def scores(z, labels):
    """(mean cross-entropy, accuracy) of logits [N, C] against labels [N], as Python floats."""
    loss, acc = scores_stack(np.asarray(z)[None], labels)
    return float(loss[0]), float(acc[0])


def loss_accuracy(module, variables, images, labels, batch_size=512):
    """(mean cross-entropy, accuracy) as Python floats."""
    return scores(logits(module, variables, images, batch_size), labels)


def map_chunks(fn, stacked, chunk=CHUNK):
    """fn over `stacked` [N, ...] in chunks of `chunk` networks, or of the power of two >= N when
    N is smaller (few compiled shapes), the last chunk padded by repeating its last network;
    results concatenated on the host and trimmed to N."""
    n = len(jax.tree_util.tree_leaves(stacked)[0])
    size = min(chunk, 1 << (n - 1).bit_length())
    out = []
    for i in range(0, n, size):
        idx = np.minimum(np.arange(i, i + size), n - 1)
        out.append(jax.tree_util.tree_map(np.asarray, fn(jax.tree_util.tree_map(lambda x: x[idx], stacked))))
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs)[:n], *out)


def _pad(images, pad_to, axis):
    """Zero-pads axis `axis` of `images` to a multiple of `pad_to`, so image sets of similar
    size share one compiled function."""
    widths = [(0, 0)] * images.ndim
    widths[axis] = (0, -images.shape[axis] % pad_to)
    return jnp.asarray(np.pad(images, widths))


@functools.partial(jax.jit, static_argnums=0)
def _logits_chunk(module, stacked, x):
    return jax.lax.map(lambda v: module.apply(v, x, train=False), stacked)


@functools.partial(jax.jit, static_argnums=0)
def _logits_each_chunk(module, stacked, x):
    return jax.lax.map(lambda vx: module.apply(vx[0], vx[1], train=False), (stacked, x))


def logits_stack(module, stacked, images, pad_to=64):
    """Logits [N, n, C] of N stacked networks on the same images [n, H, W, C]."""
    images = np.asarray(images)
    x = _pad(images, pad_to, 0)
    return map_chunks(lambda chunk: _logits_chunk(module, chunk, x), stacked)[:, :len(images)]


def logits_each(module, stacked, images, pad_to=64):
    """Logits [N, n, C] of N stacked networks, network i on its own images[i] [n, H, W, C]."""
    images = np.asarray(images)
    x = _pad(images, pad_to, 1)
    z = map_chunks(lambda chunk: _logits_each_chunk(module, *chunk), (stacked, x))
    return z[:, :images.shape[1]]


def scores_stack(z, labels):
    """([N] mean cross-entropy, [N] accuracy) of logits [N, n, C] against labels [n]."""
    labels = np.asarray(labels)
    logp = log_softmax(np.asarray(z, np.float64), axis=-1)
    loss = -np.take_along_axis(logp, labels[None, :, None], -1)[..., 0].mean(1)
    return loss, (z.argmax(-1) == labels).mean(1)


def scores_each(module, stacked, sets):
    """([N] loss, [N] accuracy) of N stacked networks, network i on its own (images, labels)
    sets[i]; the sets may differ in size."""
    n = max(len(x) for x, _ in sets)
    images = np.stack([np.concatenate([x, np.zeros((n - len(x),) + x.shape[1:], x.dtype)])
                       for x, _ in sets])
    z = logits_each(module, stacked, images)
    out = np.array([scores(z[i, :len(y)], y) for i, (_, y) in enumerate(sets)])
    return out[:, 0], out[:, 1]
