"""The dataset encoder's small interface: an image feature function, averaged per class, cached.

A task (a sorted class set) is encoded as its classes' mean features concatenated in class
order (the thesis: k x 512 CLIP features). Class means are computed once for every class of the
dataset and cached in workdir/align/features_<kind>.npz, so every task's features are cached too.
"""
import dataclasses
import json
import os

import numpy as np
from tqdm import tqdm

from wsjax.common import io
from wsjax.common.config import require


@dataclasses.dataclass(frozen=True)
class DatasetEncoder:
    kind: str
    class_features: np.ndarray  # [C, F] mean feature of each dataset class

    def task_features(self, classes):
        """[k * F] per-class mean features concatenated in (sorted) class order."""
        classes = tuple(sorted(int(c) for c in classes))
        require(all(0 <= c < len(self.class_features) for c in classes),
                f"class set {classes} is outside the dataset's {len(self.class_features)} classes")
        return self.class_features[list(classes)].reshape(-1)


def class_means(feature_fn, images, labels, num_classes, *, batch_size, images_per_class=0, seed=0):
    """[C, F] mean of `feature_fn(batch)` over each class's images (at most `images_per_class`)."""
    rng = np.random.default_rng(seed)
    idx = []
    for c in range(num_classes):
        i = np.flatnonzero(labels == c)
        require(len(i) > 0, f"class {c} has no training images to encode")
        idx.append(np.sort(rng.permutation(i)[:images_per_class]) if images_per_class > 0 else i)
    order = np.concatenate(idx)
    feats = []
    for s in tqdm(range(0, len(order), batch_size), desc="dataset features", leave=False):
        feats.append(np.asarray(feature_fn(images[order[s:s + batch_size]]), np.float32))
    feats = np.concatenate(feats)
    bounds = np.cumsum([0] + [len(i) for i in idx])
    return np.stack([feats[a:b].mean(0) for a, b in zip(bounds[:-1], bounds[1:])])


def cached_class_features(path, fingerprint, compute):
    """Loads [C, F] from `path` if it was computed for `fingerprint` (a dict), else computes and
    saves it atomically (None without `compute`)."""
    key = json.dumps(fingerprint, sort_keys=True)
    if os.path.exists(path):
        with np.load(path) as f:
            if str(f["fingerprint"]) == key:
                return f["class_features"]
    if compute is None:
        return None
    feats = np.asarray(compute(), np.float32)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    io.savez(path, class_features=feats, fingerprint=np.asarray(key))
    return feats
