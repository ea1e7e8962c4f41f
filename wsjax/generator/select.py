"""Generate many, keep the best: candidates ranked by their loss on the prompt task's own train
images after BatchNorm recalibration (a few forward passes; val images are never used)."""
import numpy as np

from wsjax import data
from wsjax.models import bn, inference


def prompt_images(dataset, classes, seed):
    """The task's train images and local labels, shuffled (BN batches see every class)."""
    x, y = data.task_split(dataset, classes, "train")
    perm = np.random.default_rng(seed).permutation(len(x))
    return x[perm], y[perm]


def losses(module, stacked, train, val=None, *, num_batches, batch_size):
    """[N] train loss (`train_losses`) of each of N stacked candidates after recalibrating its
    BatchNorm statistics on the train images; with `val`, also [N] val losses."""
    stacked = bn.recalibrate_stack(module, stacked, train[0], num_batches=num_batches,
                                   batch_size=batch_size)
    if val is None:
        return train_losses(module, stacked, train)
    z = inference.logits_stack(module, stacked, val[0])
    return train_losses(module, stacked, train), inference.scores_stack(z, val[1])[0]


def train_losses(module, stacked, train, max_images=256):
    """[N] loss of N stacked (recalibrated) candidates on at most `max_images` train images."""
    x, y = train[0][:max_images], train[1][:max_images]
    return inference.scores_stack(inference.logits_stack(module, stacked, x), y)[0]


def calibrate(train_losses, calibration):
    """Expected val loss of candidates from their train loss: log val = a log train + b, (a, b)
    fitted by the generator stage on class sets its path model did not see."""
    a, b = calibration
    return np.exp(a * np.log(np.asarray(train_losses)) + b)


def nearest(candidate_losses, targets):
    """[T]: index of the candidate whose loss is nearest each target, in log space."""
    c = np.log(np.asarray(candidate_losses))[None, :]
    return np.abs(c - np.log(np.asarray(targets))[:, None]).argmin(1)
