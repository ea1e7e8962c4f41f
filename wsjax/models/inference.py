"""Running a stored network on an image set: logits, loss and accuracy, in jitted chunks."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


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
    loss = optax.softmax_cross_entropy_with_integer_labels(z, np.asarray(labels)).mean()
    return float(loss), float((z.argmax(-1) == labels).mean())


def loss_accuracy(module, variables, images, labels, batch_size=512):
    """(mean cross-entropy, accuracy) as Python floats."""
    return scores(logits(module, variables, images, batch_size), labels)
