"""Closed-form linear maps: a latent PCA of the zoo's coefficients and ridge regression."""
from typing import NamedTuple

import numpy as np


class Latent(NamedTuple):
    """z = (coeffs - mean) @ basis.T: the top principal directions of the train snapshots'
    PCA coefficients, not whitened, so distances in z are distances in coefficient space."""
    mean: np.ndarray    # [K]
    basis: np.ndarray   # [d, K], orthonormal rows


def fit_latent(coeffs, dim):
    """Latent of at most `dim` directions, and no wider than the train span (n - 1)."""
    x = np.asarray(coeffs, np.float64)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return Latent(mean.astype(np.float32), vt[:min(dim, len(x) - 1)].astype(np.float32))


def encode(latent, coeffs):
    return (np.asarray(coeffs, np.float32) - latent.mean) @ latent.basis.T


def decode(latent, z):
    return np.asarray(z, np.float32) @ latent.basis + latent.mean


class Ridge(NamedTuple):
    """y = ((x - x_mean) / x_std) @ w + y_mean."""
    x_mean: np.ndarray
    x_std: np.ndarray
    w: np.ndarray
    y_mean: np.ndarray


def fit_ridge(x, y, l2):
    """Ridge on standardised inputs, intercept unpenalised, solved in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x_mean, y_mean = x.mean(0), y.mean(0)
    x_std = x.std(0) + 1e-6
    xs = (x - x_mean) / x_std
    w = np.linalg.solve(xs.T @ xs + l2 * np.eye(x.shape[1]), xs.T @ (y - y_mean))
    return Ridge(*(a.astype(np.float32) for a in (x_mean, x_std, w, y_mean)))


def predict(ridge, x):
    return ((np.asarray(x, np.float32) - ridge.x_mean) / ridge.x_std) @ ridge.w + ridge.y_mean
