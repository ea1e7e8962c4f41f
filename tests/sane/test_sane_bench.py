import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from configs import sane as sane_configs
from configs.bench import sane as bench_configs
from wsjax import models
from wsjax.common.config import ConfigError
from wsjax.sane import bench
from wsjax.sane import model as model_lib
from wsjax.sane import stage as sane_stage
from wsjax.sane import tokens


@pytest.fixture(scope="module")
def tokenised(fake_zoo):
    rows, stacked = sane_stage.read_zoo(fake_zoo)
    layout = tokens.layout(sane_stage.take(stacked, 0), 40)  # wide channels in several tokens
    train = np.flatnonzero([r["split"] == "train" for r in rows])
    return (stacked, layout, train) + sane_stage.token_store(layout, stacked, train)


def test_token_store_is_normalised_on_train_snapshots_and_padding_stays_zero(tokenised):
    stacked, layout, train, store, mean, std = tokenised
    assert store.shape == (len(jax.tree_util.tree_leaves(stacked)[0]), layout.num_tokens, 40)
    assert np.all(store[:, layout.mask == 0] == 0)
    seg = layout.segment
    for s in range(layout.num_segments):
        x = store[train][:, seg == s]                     # [N, channels, D]
        valid = (layout.mask[seg == s][0] > 0) & (std[s] != 1.0)
        np.testing.assert_allclose(x[..., valid].mean((0, 1)), 0, atol=1e-4)
        np.testing.assert_allclose(x[..., valid].std((0, 1)), 1, atol=1e-3)


def test_windows_from_the_store_equal_windows_cut_from_whole_networks(tokenised):
    stacked, layout, _, store, mean, std = tokenised
    window, key = 24, jax.random.key(0)
    pick, start = np.array([0, 3, 3, 7]), np.array([0, 5, layout.num_tokens - window, 11])
    cut = sane_stage.network_source(layout, mean, std, stacked, window, permute=False)(pick, start, key)
    assert cut.shape == (1, 4, window, 40)
    for on_device in (False, True):
        got = sane_stage.window_source(store, window, on_device)(pick, start, key)
        np.testing.assert_allclose(got, cut, rtol=1e-5, atol=1e-5)
    views = sane_stage.network_source(layout, mean, std, stacked, window, permute=True)(pick, start, key)
    assert views.shape == (2, 4, window, 40) and not np.allclose(views[0], views[1])


def test_views_share_a_clean_window_or_take_one_each():
    config = sane_configs.get_config("tiny")
    layout = tokens.Layout(8, np.zeros(20, int), np.arange(20), np.ones((20, 8), np.float32))
    clean = jax.random.normal(jax.random.key(0), (1, 3, 6, 8))
    start = jnp.array([0, 4, 14])
    x, target, mask, pos = sane_stage.views(layout, config.augment, clean, start, jax.random.key(1))
    assert x.shape == target.shape == mask.shape == (6, 6, 8) and pos.shape == (6, 6)
    np.testing.assert_array_equal(target[:3], clean[0])
    np.testing.assert_array_equal(target[3:], clean[0])
    np.testing.assert_array_equal(pos[2], np.arange(14, 20))
    assert not np.allclose(x, target)  # noise
    two = jnp.concatenate([clean, clean + 1])
    _, target, _, _ = sane_stage.views(layout, config.augment, two, start, jax.random.key(1))
    np.testing.assert_array_equal(target[3:], clean[0] + 1)


def test_bfloat16_sane_computes_in_bfloat16_with_float32_parameters_and_outputs():
    config = sane_configs.get_config("tiny")
    config.model.dtype = "bfloat16"
    layout = tokens.Layout(8, np.zeros(20, int), np.arange(20), np.ones((20, 8), np.float32))
    module = model_lib.build(config, layout)
    x, pos = jnp.ones((2, 6, 8)), jnp.arange(6)[None].repeat(2, 0)
    enc = sane_stage._encodings(layout, pos)
    params = module.init(jax.random.key(0), x, *enc)["params"]
    assert {p.dtype for p in jax.tree_util.tree_leaves(params)} == {np.dtype("float32")}
    outs = module.apply({"params": params}, x, *enc)
    assert all(o.dtype == jnp.float32 and np.isfinite(o).all() for o in outs)
    jaxpr = str(jax.make_jaxpr(lambda p: module.apply({"params": p}, x, *enc))(params))
    assert "dot_general" in jaxpr and "bf16[2,6,32]" in jaxpr


@pytest.mark.parametrize("field, value, message", [
    ("tokens.device_share", 1.5, "device_share must be in"),
    ("model.dtype", "float16", "model.dtype must be"),
    ("model.attention", "flash", "model.attention must be one of"),
    ("model.attention", "cudnn", "runs in bfloat16 only"),  # the tiny preset is float32
])
def test_sane_config_refuses(field, value, message):
    config = sane_configs.get_config("tiny")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=message):
        sane_stage.check_config(config)


def _block_outputs_and_grads(attention, dtype="bfloat16"):
    """A SANE block's output and parameter gradients under `attention`, at the accelerator
    preset's head size (64) on a short window (float32 parameters, the same for any dtype)."""
    block = model_lib.Block(dim=128, num_heads=2, mlp_ratio=2, dtype=dtype, attention=attention)
    x = jax.random.normal(jax.random.key(0), (4, 128, 128))
    params = block.init(jax.random.key(1), x)
    loss = lambda p: jnp.mean(jnp.square(block.apply(p, x).astype(jnp.float32)))  # noqa: E731
    return block.apply(params, x).astype(jnp.float32), jax.grad(loss)(params)


def test_auto_attention_is_flax_attention_off_nvidia_gpus():
    if jax.default_backend() != "gpu":
        assert model_lib.attention_kernel("auto", "bfloat16") == "xla"
        out, grads = _block_outputs_and_grads("auto")
        ref, ref_grads = _block_outputs_and_grads("xla")
        np.testing.assert_array_equal(out, ref)
        jax.tree_util.tree_map(np.testing.assert_array_equal, grads, ref_grads)
    assert model_lib.attention_kernel("auto", "float32") == "xla"
    assert model_lib.attention_kernel("cudnn", "bfloat16") == "cudnn"


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN's fused attention runs on NVIDIA GPUs")
def test_cudnn_attention_is_as_close_to_float32_as_flax_attention_in_bfloat16():
    with jax.default_matmul_precision("highest"):  # no TF32
        exact, exact_grads = _block_outputs_and_grads("xla", "float32")
    error = {}
    for attention in ("cudnn", "xla"):
        out, grads = _block_outputs_and_grads(attention)
        # the whole gradient: the key bias's is 0 in exact arithmetic (softmax ignores it)
        g, e = (ravel_pytree(t)[0] for t in (grads, exact_grads))
        error[attention] = [np.linalg.norm(out - exact) / np.linalg.norm(exact),
                            np.linalg.norm(g - e) / np.linalg.norm(e)]
    assert max(error["xla"]) < 0.05  # bfloat16 itself
    np.testing.assert_array_less(error["cudnn"], 1.5 * np.asarray(error["xla"]) + 1e-3)


def test_accelerator_preset_is_width_64_at_42950_tokens_in_bfloat16():
    config = bench_configs.get_config("accelerator")
    bench.check_config(config)
    module = models.build(config.model, config.num_classes)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1,) + tuple(config.image_shape)))
    layout = tokens.layout(shapes, config.sane.tokens.token_size)
    assert (config.model.width, layout.num_tokens, layout.token_size) == (64, 42_950, 288)
    assert config.sane.model.dtype == "bfloat16"  # float32 asked for 66 GiB at once on an H100
    assert 4 * config.num_snapshots * layout.num_tokens * 288 / 2 ** 30 == pytest.approx(5.9, abs=0.05)


def test_tiny_bench_times_every_arm_and_writes_its_results(tmp_path):
    config = bench_configs.get_config("tiny")
    config.steps, config.matmul_size = 2, 256
    res = bench.run(config, str(tmp_path))
    with open(tmp_path / "bench_sane" / "results.json") as f:
        assert json.load(f) == json.loads(json.dumps(res))
    assert set(res["arms"]) == set(bench.ARMS) and res["store_on_device"]
    for arm in res["arms"].values():
        assert arm["ms_per_step"] > 0 and arm["input_ms"] > 0 and 0 < arm["peak_share"]
    assert res["speedup"]["networks"] == 1 and res["step_gflop"] > 0
