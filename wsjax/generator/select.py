"""Generate many, keep the best: candidates ranked by their loss on the prompt task's own train
images after BatchNorm recalibration (a few forward passes; val images are never used)."""
import jax
import numpy as np

from wsjax import data
from wsjax.models import bn, inference
from wsjax.zoo.step import unstack


def prompt_images(dataset, classes, seed):
    """The task's train images and local labels, shuffled (BN batches see every class)."""
    x, y = data.task_split(dataset, classes, "train")
    perm = np.random.default_rng(seed).permutation(len(x))
    return x[perm], y[perm]


def recalibrated(module, variables, images, *, num_batches, batch_size):
    return bn.recalibrate(module, variables, images, num_batches=num_batches, batch_size=batch_size)


def losses(module, stacked, train, val=None, *, num_batches, batch_size, max_images=256):
    """[N] loss of each of N stacked candidates on (at most `max_images` of) the train images
    after recalibrating its BatchNorm statistics on them; with `val`, also [N] val losses."""
    (x, y), n = train, len(jax.tree_util.tree_leaves(stacked)[0])
    out = np.empty((n, 2))
    for i in range(n):
        v = recalibrated(module, unstack(stacked, i), x, num_batches=num_batches, batch_size=batch_size)
        out[i, 0] = inference.loss_accuracy(module, v, x[:max_images], y[:max_images])[0]
        out[i, 1] = inference.loss_accuracy(module, v, *val)[0] if val is not None else np.nan
    return out[:, 0] if val is None else (out[:, 0], out[:, 1])


def calibrate(train_losses, calibration):
    """Expected val loss of candidates from their train loss: log val = a log train + b, (a, b)
    fitted by the generator stage on class sets its path model did not see."""
    a, b = calibration
    return np.exp(a * np.log(np.asarray(train_losses)) + b)


def nearest(candidate_losses, targets):
    """[T]: index of the candidate whose loss is nearest each target, in log space."""
    c = np.log(np.asarray(candidate_losses))[None, :]
    return np.abs(c - np.log(np.asarray(targets))[:, None]).argmin(1)
