"""Dataset encoders (a tiny local CLIP, the probe network, caching) and results binning."""
import os
import shutil

import numpy as np
import pytest

from configs import align as align_configs
from wsjax import encoders
from wsjax.common import config as config_lib
from wsjax.encoders import clip, dataset, results


def test_bin_edges_are_train_quantiles_and_to_bin_clips_outside_values():
    values = np.arange(100, dtype=np.float32)
    edges = results.bin_edges(values, 4)
    np.testing.assert_allclose(edges, [24.75, 49.5, 74.25])
    assert results.to_bin(edges, values).tolist() == [0] * 25 + [1] * 25 + [2] * 25 + [3] * 25
    assert results.to_bin(edges, np.array([-5.0, 1e9])).tolist() == [0, 3]
    assert int(results.to_bin(edges, 50.0)) == 2
    assert len(results.bin_edges(values, 1)) == 0 and results.to_bin(np.zeros(0), 3.0) == 0


def test_results_encoder_gives_one_learnable_embedding_per_bin():
    import jax
    enc = results.ResultsEncoder(num_bins=(3, 2), dim=5)
    params = enc.init(jax.random.key(0), np.zeros((1, 2), np.int32))
    out = enc.apply(params, np.array([[0, 1], [0, 1], [2, 0]], np.int32))
    assert out.shape == (3, 10)
    np.testing.assert_array_equal(out[0], out[1])
    assert not np.allclose(out[0], out[2])


def test_task_features_concatenate_class_means_in_class_order():
    enc = dataset.DatasetEncoder("x", np.arange(12, dtype=np.float32).reshape(4, 3))
    np.testing.assert_array_equal(enc.task_features((3, 1)), [3, 4, 5, 9, 10, 11])
    with pytest.raises(config_lib.ConfigError):
        enc.task_features((1, 7))


def test_class_means_average_each_class_of_a_feature_function():
    x = np.arange(10, dtype=np.float32)[:, None]
    y = np.array([0, 1] * 5)
    means = dataset.class_means(lambda b: np.concatenate([b, 2 * b], 1), x, y, 2, batch_size=3)
    np.testing.assert_allclose(means, [[4, 8], [5, 10]])


def _tiny_clip(path, full):
    import transformers
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=16)
    if full:
        cfg = transformers.CLIPConfig(
            text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, vocab_size=64, max_position_embeddings=8),
            vision_config=vision, projection_dim=12)
        model = transformers.FlaxCLIPModel(cfg, seed=0)
    else:
        model = transformers.FlaxCLIPVisionModel(transformers.CLIPVisionConfig(**vision), seed=0)
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("full", [True, False])
def test_clip_path_loads_a_local_checkpoint_and_encodes_grey_images(tmp_path, full):
    path = str(tmp_path / "clip")
    model = _tiny_clip(path, full)
    config = align_configs.get_config("tiny")
    config.encoder.kind = "clip"
    config.encoder.clip_path = path
    images = np.random.default_rng(0).normal(size=(5, 12, 12, 1)).astype(np.float32)
    fn = clip.feature_fn(config.encoder, images)
    feats = np.asarray(fn(images))
    assert feats.shape == (5, 12 if full else 16) and np.all(np.isfinite(feats))
    # the same numbers as the transformers model on the same preprocessed pixels
    px = clip.preprocess(images, images.min(), images.max(), 32, config.encoder.clip_mean,
                         config.encoder.clip_std)
    ref = model.get_image_features(np.asarray(px)) if full else model(np.asarray(px)).pooler_output
    np.testing.assert_allclose(feats, np.asarray(ref), rtol=1e-4, atol=1e-5)


def test_missing_clip_path_is_a_clear_error(fake_zoo, tmp_path):
    config = align_configs.get_config("tiny")
    config.encoder.kind = "clip"
    config.encoder.clip_path = str(tmp_path / "nowhere")
    with pytest.raises(config_lib.ConfigError, match="clip_path .* holds no CLIP checkpoint"):
        encoders.dataset_encoder(config, fake_zoo)
    config.encoder.clip_path = ""
    with pytest.raises(config_lib.ConfigError, match="config.encoder.clip_path must name"):
        encoders.dataset_encoder(config, fake_zoo)


def test_clip_dataset_encoder_caches_class_features_per_checkpoint(fake_zoo, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(fake_zoo, workdir)
    path = str(tmp_path / "clip")
    _tiny_clip(path, True)
    config = align_configs.get_config("tiny")
    config.encoder.kind = "clip"
    config.encoder.clip_path = path
    enc = encoders.dataset_encoder(config, workdir)
    assert enc.class_features.shape == (10, 12)
    assert enc.task_features((0, 4, 9)).shape == (36,)
    cache = os.path.join(workdir, "align", "features_clip.npz")
    mtime = os.path.getmtime(cache)
    again = encoders.dataset_encoder(config, workdir)
    np.testing.assert_array_equal(again.class_features, enc.class_features)
    assert os.path.getmtime(cache) == mtime  # read from the cache, not recomputed


def test_probe_encoder_uses_the_zoo_base_network_features(fake_zoo, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(fake_zoo, workdir)
    config = align_configs.get_config("tiny")
    with pytest.raises(config_lib.ConfigError, match=r"features_probe.npz is missing .*rerun the .align."):
        encoders.dataset_encoder(config, workdir, write=False)  # a reader never computes them
    enc = encoders.dataset_encoder(config, workdir)
    zoo_config = config_lib.load(workdir, "zoo")
    assert enc.class_features.shape == (10, 8 * zoo_config.model.width)
    # the zoo (init 'shared') has no base network: align trains one in its own folder only
    assert os.path.isdir(os.path.join(workdir, "align", "base"))
    assert not os.path.exists(os.path.join(workdir, "zoo", "base"))
    again = encoders.dataset_encoder(config, workdir, write=False)
    np.testing.assert_array_equal(again.class_features, enc.class_features)
    # classes differ: the probe separates them (no two class means equal)
    d = np.linalg.norm(enc.class_features[:, None] - enc.class_features[None], axis=-1)
    assert d[~np.eye(10, dtype=bool)].min() > 1e-4


def test_soft_bins_interpolate_between_neighbouring_bin_centres():
    values = np.arange(100, dtype=np.float32)
    centres = results.bin_centres(values, 4)
    np.testing.assert_allclose(centres, [12.375, 37.125, 61.875, 86.625], rtol=1e-6)
    w = results.soft_bins(centres, np.array([centres[1], (centres[1] + 3 * centres[2]) / 4, -10.0, 1e6]))
    np.testing.assert_allclose(w, [[0, 1, 0, 0], [0, 0.25, 0.75, 0], [1, 0, 0, 0], [0, 0, 0, 1]], atol=1e-6)
    assert results.soft_bins(centres[:1], np.array([3.0, 4.0])).tolist() == [[1.0], [1.0]]


def test_soft_results_embedding_is_the_weighted_mix_of_bin_embeddings():
    import jax
    enc = results.ResultsEncoder(num_bins=(3,), dim=4)
    params = enc.init(jax.random.key(0), np.zeros((1, 1), np.int32))
    hard = enc.apply(params, np.array([[0], [1]], np.int32))
    soft = enc.apply(params, np.array([[[0.25, 0.75, 0.0]]], np.float32))
    np.testing.assert_allclose(soft[0], 0.25 * hard[0] + 0.75 * hard[1], rtol=1e-5, atol=1e-6)
