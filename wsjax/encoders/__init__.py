"""Dataset encoders (probe network or CLIP: per-class mean image features) and the results encoder."""
import os

from wsjax import data
from wsjax.common import config as config_lib
from wsjax.common.config import require
from wsjax.encoders import results  # noqa: F401
from wsjax.encoders.dataset import DatasetEncoder, cached_class_features, class_means

KINDS = ("probe", "clip")


def dataset_encoder(align_config, workdir, write=True):
    """The DatasetEncoder named by `align_config.encoder.kind`, class features cached in align/.
    Only the align stage computes and writes them; a later reader (`write=False`) finds them there."""
    enc = align_config.encoder
    require(enc.kind in KINDS, f"config.encoder.kind must be one of {KINDS}, got {enc.kind!r}")
    require(enc.batch_size >= 1, f"config.encoder.batch_size must be >= 1, got {enc.batch_size}")
    zoo_config = config_lib.load(workdir, "zoo")
    dataset = data.load(zoo_config.data)
    fingerprint = dict(kind=enc.kind, data=zoo_config.data.to_dict(),
                       images_per_class=int(enc.images_per_class))
    if enc.kind == "clip":
        fingerprint["clip_path"] = os.path.abspath(enc.clip_path) if enc.clip_path else ""
        from wsjax.encoders import clip
        make_fn = lambda: clip.feature_fn(enc, dataset.x_train)  # noqa: E731
        if not enc.clip_path or not os.path.isfile(os.path.join(enc.clip_path, "config.json")):
            make_fn()  # raises the clear missing-path error before anything else
    else:
        fingerprint.update(model=zoo_config.model.to_dict(), pretrain=zoo_config.pretrain.to_dict(),
                           init_seed=int(zoo_config.init_seed))
        from wsjax.encoders import probe
        make_fn = lambda: probe.feature_fn(zoo_config, workdir)  # noqa: E731
    path = os.path.join(workdir, "align", f"features_{enc.kind}.npz")
    if not write:
        feats = cached_class_features(path, fingerprint, None)
        require(feats is not None, f"{path} is missing or was computed for other settings: rerun the "
                "'align' stage with this --workdir")
        return DatasetEncoder(enc.kind, feats)
    feats = cached_class_features(path, fingerprint, lambda: class_means(
        make_fn(), dataset.x_train, dataset.y_train, dataset.num_classes,
        batch_size=int(enc.batch_size), images_per_class=int(enc.images_per_class), seed=0))
    return DatasetEncoder(enc.kind, feats)
