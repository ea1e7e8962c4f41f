"""Real datasets through `tfds.data_source` (random access, numpy; no TensorFlow needed).

The data must already be prepared in `data_dir` (no downloads at run time).
"""
import numpy as np

from wsjax.common.config import ConfigError
from wsjax.data import datasets


def _resized(image, resolution):
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[..., None]
    return datasets.resize(image[None], resolution)[0]


def load_arrays(name, *, resolution, data_dir=None, max_per_class=0, split="train"):
    """(images [N, R, R, C] float32 in [0, 255], labels [N], class names) of a prepared TFDS set.

    With `max_per_class` > 0 reading stops once every class has that many images, so an
    ImageNet subset costs only what it keeps.
    """
    import tensorflow_datasets as tfds
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
        label_feature = tfds.builder(name, data_dir=data_dir or None).info.features["label"]
    except Exception as e:  # TFDS raises several types for a missing/unprepared dataset.
        raise ConfigError(
            f"TFDS dataset {name!r} is not prepared in data_dir={data_dir or '~/tensorflow_datasets'} "
            f"({type(e).__name__}); prepare it offline first (tfds build) or set config.data.data_dir"
        ) from e
    num_classes = label_feature.num_classes
    counts = np.zeros(num_classes, np.int64)
    images, labels = [], []
    for i in range(len(source)):
        example = source[i]
        label = int(example["label"])
        if max_per_class and counts[label] >= max_per_class:
            if counts.min() >= max_per_class:
                break
            continue
        counts[label] += 1
        images.append(_resized(example["image"], resolution))
        labels.append(label)
    return np.stack(images), np.asarray(labels, np.int32), tuple(label_feature.names)
