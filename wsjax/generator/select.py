"""Generate many, keep the best: candidates ranked by their loss on the prompt task's own train
images after BatchNorm recalibration (a few forward passes; val images are never used)."""
import jax
import numpy as np

from wsjax.models import bn, inference


def unstack(stacked, i):
    return jax.tree_util.tree_map(lambda x: np.asarray(x[i]), stacked)


def recalibrated(module, variables, images, *, num_batches, batch_size):
    return bn.recalibrate(module, variables, images, num_batches=num_batches, batch_size=batch_size)


def train_losses(module, stacked, images, labels, *, num_batches, batch_size, max_images=512):
    """[N]: loss of each of N stacked candidates on (at most `max_images` of) the train images,
    after recalibrating its BatchNorm statistics on them."""
    n = len(jax.tree_util.tree_leaves(stacked)[0])
    out = np.empty(n)
    for i in range(n):
        v = recalibrated(module, unstack(stacked, i), images, num_batches=num_batches,
                         batch_size=batch_size)
        out[i] = inference.loss_accuracy(module, v, images[:max_images], labels[:max_images])[0]
    return out


def nearest(candidate_losses, targets):
    """[T]: index of the candidate whose loss is nearest each target, in log space."""
    c = np.log(np.asarray(candidate_losses))[None, :]
    return np.abs(c - np.log(np.asarray(targets))[:, None]).argmin(1)
