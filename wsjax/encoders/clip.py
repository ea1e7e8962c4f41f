"""CLIP image features from a local `transformers` Flax checkpoint (no hub access).

`path` holds either a full CLIP (`model_type` 'clip': projected image embeddings, 512-d for
ViT-B/32) or a vision tower alone ('clip_vision_model': pooled output). Images are mapped back
to [0, 1], grey becomes 3 channels, resized to CLIP's image size and CLIP-normalised.
"""
import json
import os

import jax
import jax.numpy as jnp

from wsjax.common.config import require


def load(path):
    """(flax model, params, image_size, is_full_clip) from a local directory; a clear error if absent."""
    require(bool(path), "config.encoder.clip_path must name a local CLIP directory for encoder.kind='clip'")
    cfg_path = os.path.join(path, "config.json")
    require(os.path.isfile(cfg_path),
            f"config.encoder.clip_path {path!r} holds no CLIP checkpoint (no config.json); "
            "save one there with save_pretrained (there is no hub access at run time)")
    with open(cfg_path) as f:
        model_type = json.load(f).get("model_type")
    import transformers
    classes = {"clip": transformers.FlaxCLIPModel, "clip_vision_model": transformers.FlaxCLIPVisionModel}
    require(model_type in classes,
            f"config.encoder.clip_path {path!r} holds a {model_type!r} model, not 'clip' or "
            "'clip_vision_model'")
    from_pt = not os.path.exists(os.path.join(path, "flax_model.msgpack"))  # torch weights only
    model = classes[model_type].from_pretrained(path, from_pt=from_pt, local_files_only=True)
    vision = model.config.vision_config if model_type == "clip" else model.config
    return model, model.params, int(vision.image_size), model_type == "clip"


def preprocess(x, lo, hi, image_size, mean, std):
    """Standardised images [N, H, W, C] -> CLIP pixel values [N, 3, S, S]."""
    x = (x - lo) / (hi - lo)  # back to [0, 1]: the dataset was standardised by an affine map
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    x = jax.image.resize(x, (x.shape[0], image_size, image_size, 3), method="bilinear")
    x = (x - jnp.asarray(mean)) / jnp.asarray(std)
    return jnp.transpose(x, (0, 3, 1, 2))


def feature_fn(encoder_config, train_images):
    """images [N, H, W, C] (standardised like `train_images`) -> CLIP image features [N, F]."""
    model, params, size, full = load(encoder_config.clip_path)
    lo, hi = float(train_images.min()), float(train_images.max())
    mean, std = tuple(encoder_config.clip_mean), tuple(encoder_config.clip_std)

    @jax.jit
    def apply(params, x):
        px = preprocess(x, lo, hi, size, mean, std)
        if full:
            return model.get_image_features(px, params=params)
        return model(px, params=params).pooler_output

    return lambda x: apply(params, jnp.asarray(x, jnp.float32))
