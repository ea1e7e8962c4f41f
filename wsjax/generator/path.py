"""The predicted training path of a class set, and where on it a requested loss lies.

Per schedule position j (the zoo's snapshot steps), a ridge from class features to the latent of
the snapshot at j and to its log val loss: a class set gets a path z_0..z_J (z_0: the shared
init) and a loss curve. A request is met at the point where the loss curve, made monotone,
crosses the requested loss; between positions both are linear in t. Along the straight line from
init to a trained network the loss falls monotonically for most class sets (DESIGN.md), so the
predicted curve is a model of each class set's reachable range.
"""
from typing import NamedTuple

import numpy as np

from wsjax.generator import linear


class PathModel(NamedTuple):
    latent: linear.Ridge     # class features -> [J * d] path latents
    log_loss: linear.Ridge   # class features -> [J] log val loss per position


def fit(class_feats, z, log_loss, l2):
    """class_feats [M, F], z [M, J, d], log_loss [M, J] of M train models."""
    m, j, d = z.shape
    return PathModel(linear.fit_ridge(class_feats, z.reshape(m, j * d), l2),
                     linear.fit_ridge(class_feats, log_loss, l2))


def predict(model, class_feats):
    """(path latents [N, J, d], monotone log-loss curves [N, J]) of N class sets."""
    n = len(class_feats)
    z = linear.predict(model.latent, class_feats).reshape(n, model.log_loss.w.shape[1], -1)
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
