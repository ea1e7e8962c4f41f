"""The predicted training path of a class set, and where on it a requested loss lies.

Per schedule position j (the zoo's snapshot steps), a ridge from class features to the latent of
the snapshot at j: a class set gets a path z_0..z_J (z_0: the shared init). A second ridge maps
class features to the log val loss that the *predicted* path achieves at each position once
decoded and BN-recalibrated, learnt by cross-fitting over train class sets (the path of a set
is predicted by a model that never saw it): the model of each class set's reachable range. A
request is met where that curve, made monotone, crosses the requested loss; between positions
both are linear in t.
"""
from typing import NamedTuple

import numpy as np

from wsjax.generator import linear


class PathModel(NamedTuple):
    latent: linear.Ridge     # class features -> [J * d] path latents
    log_loss: linear.Ridge   # class features -> [J] achieved log val loss per position


def fit_latent(class_feats, z, l2):
    """Ridge from class features [M, F] to the trajectories z [M, J, d] of M train models."""
    return linear.fit_ridge(class_feats, z.reshape(len(z), -1), l2)


def predict_latent(ridge, class_feats, length):
    """[N, J, d] predicted paths of N class sets."""
    return linear.predict(ridge, class_feats).reshape(len(class_feats), length, -1)


def predict(model, class_feats):
    """(path latents [N, J, d], monotone log-loss curves [N, J]) of N class sets."""
    z = predict_latent(model.latent, class_feats, model.log_loss.w.shape[1])
    curve = np.minimum.accumulate(linear.predict(model.log_loss, class_feats), axis=1)
    return z, curve


def position(curve, log_loss):
    """t in [0, J - 1] where the monotone curve [J] reaches `log_loss` (clipped at its ends)."""
    curve = np.asarray(curve, np.float64)
    flat = np.maximum.accumulate(-curve) + 1e-9 * np.arange(len(curve))  # strictly increasing
    return float(np.interp(-log_loss, flat, np.arange(len(curve))))


def at(path, t):
    """The path [J, d] at fractional position t (linear between positions)."""
    i = min(int(np.floor(t)), len(path) - 2)
    return (1 - (t - i)) * path[i] + (t - i) * path[i + 1]


def grid(path, per_segment):
    """[(J - 1) * per_segment + 1, d]: points along the path, `per_segment` per segment."""
    ts = np.linspace(0, len(path) - 1, (len(path) - 1) * per_segment + 1)
    return np.stack([at(path, t) for t in ts])
