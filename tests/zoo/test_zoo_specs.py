"""Zoo specifications that need no training: parameter count, tasks, hyperparameters, inits, errors."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import zoo as zoo_configs
from wsjax import data, models
from wsjax.models import resnet
from wsjax.common import checkpoints
from wsjax.common.config import ConfigError
from wsjax.zoo import hparams
from wsjax.zoo import init as init_lib
from wsjax.zoo import snapshots


def test_resnet18_at_width_64_has_torchvision_parameter_count():
    config = zoo_configs.get_config("imagenet").model
    module = models.build(config, 1000)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    assert models.count_params(shapes["params"]) == 11_689_512


def test_auto_convolution_on_one_cpu_device_is_im2col_where_it_measured_faster():
    config = zoo_configs.get_config().model
    picked = {}
    for width in (2, 4, 8, 16, 32, 64):
        config.width = width
        picked[width] = models.build(config, 3).conv
    assert picked == {2: "im2col", 4: "im2col", 8: "xla", 16: "xla", 32: "im2col", 64: "im2col"}


def test_im2col_convolutions_are_the_same_parameters_and_function():
    config = zoo_configs.get_config().model
    im2col = models.build(config, 3)  # 'auto' at width 4 on one CPU device
    config.conv = "xla"
    xla = models.build(config, 3)
    assert (im2col.conv, xla.conv) == ("im2col", "xla")
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 1))
    variables = xla.init(jax.random.key(0), x)
    same = jax.tree_util.tree_map(np.array_equal, variables, im2col.init(jax.random.key(0), x))
    assert all(jax.tree_util.tree_leaves(same))  # same names, shapes and init
    np.testing.assert_allclose(jax.jit(im2col.apply)(variables, x), jax.jit(xla.apply)(variables, x),
                               atol=1e-5)

    def grads(module):  # train mode: batch statistics, and every kernel's gradient
        loss = lambda p: module.apply({**variables, "params": p}, x, train=True,  # noqa: E731
                                      mutable=["batch_stats"])[0].sum()
        return jax.jit(jax.grad(loss))(variables["params"])
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                           grads(im2col), grads(xla))
    # the 7x7 stride-2 stem too
    big = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    stem = [resnet.ResNet18(3, 2, stem="imagenet", conv=c) for c in ("im2col", "xla")]
    variables = stem[1].init(jax.random.key(0), big)
    np.testing.assert_allclose(jax.jit(stem[0].apply)(variables, big),
                               jax.jit(stem[1].apply)(variables, big), atol=1e-5)


def test_task_sampler_never_uses_held_out_class_sets():
    config = zoo_configs.get_config("tiny")
    config.num_models = 500
    specs = hparams.sample_specs(config, 10)
    held = set(data.task_set(config.tasks, 10).held_out)
    assert len(held) == config.tasks.num_held_out
    assert all(s.classes not in held for s in specs)
    assert len({s.classes for s in specs}) == 120 - len(held)  # every allowed set is used


def test_hyperparameters_follow_the_configured_distributions():
    config = zoo_configs.get_config()
    config.num_models = 4000
    config.train.optimizers = ("adam", "sgd")
    t = config.train
    specs = hparams.sample_specs(config, 10)
    adam = np.array([s.learning_rate for s in specs if s.optimizer == "adam"])
    sgd = [s for s in specs if s.optimizer == "sgd"]
    assert 0.45 < len(adam) / len(specs) < 0.55
    assert adam.min() >= t.adam_lr[0] and adam.max() <= t.adam_lr[1]
    # log-uniform: the median is the geometric mean of the range
    assert np.median(adam) == pytest.approx(np.sqrt(t.adam_lr[0] * t.adam_lr[1]), rel=0.1)
    assert all(t.momentum[0] <= s.momentum <= t.momentum[1] for s in sgd)
    assert all(s.momentum == 0.0 for s in specs if s.optimizer == "adam")
    early = np.array([s.early_epoch for s in specs])
    final = np.array([s.max_epoch for s in specs])
    assert set(early) == set(range(t.early_epoch[0], t.early_epoch[1] + 1))
    assert final.min() >= t.max_epoch_range[0] and final.max() <= t.max_epoch_range[1]
    assert final.mean() == pytest.approx(t.max_epoch_mean, abs=0.2)
    splits = [s.split for s in specs]
    assert splits.count("val") == config.model_splits.val
    assert splits.count("test") == config.model_splits.test
    assert hparams.sample_specs(config, 10) == specs  # same seed, same zoo


@pytest.mark.parametrize("field,value,match", [
    ("init", "imagenet", "config.init"),
    ("strategy", "fast", "config.strategy"),
    ("num_models", 0, "config.num_models"),
])
def test_bad_config_field_is_one_clear_error(field, value, match):
    config = zoo_configs.get_config("tiny")
    config[field] = value
    with pytest.raises(ConfigError, match=match):
        hparams.validate(config)


def test_bad_learning_rate_range_names_the_field():
    config = zoo_configs.get_config("tiny")
    config.train.adam_lr = (1e-3, -1.0)
    with pytest.raises(ConfigError, match="config.train.adam_lr"):
        hparams.validate(config)


def _tiny_module(config):
    return models.build(config.model, config.tasks.k), (config.data.resolution,) * 2 + (1,)


def test_shared_init_gives_every_model_the_same_start(tmp_path):
    config = zoo_configs.get_config("tiny")
    module, shape = _tiny_module(config)
    init = init_lib.initializer(config, module, shape, str(tmp_path))
    a, b = init(0, "lecun_normal"), init(7, "lecun_normal")
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    again = init_lib.initializer(config, module, shape, str(tmp_path))(3, "lecun_normal")  # zoo/init
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, again)


def test_per_model_init_gives_models_different_starts(tmp_path):
    config = zoo_configs.get_config("tiny")
    config.init = "per_model"
    module, shape = _tiny_module(config)
    init = init_lib.initializer(config, module, shape, str(tmp_path))
    a, b = init(0, "lecun_normal"), init(1, "lecun_normal")
    assert not np.allclose(a["params"]["conv1"]["kernel"], b["params"]["conv1"]["kernel"])
    np.testing.assert_array_equal(a["params"]["conv1"]["kernel"],
                                  init(0, "lecun_normal")["params"]["conv1"]["kernel"])


def test_models_share_class_sets_and_held_out_models_keep_train_models_of_their_set():
    config = zoo_configs.get_config()
    specs = hparams.sample_specs(config, 10)
    per_set = {}
    for s in specs:
        per_set.setdefault(s.classes, []).append(s)
    assert len(per_set) == config.num_models // config.tasks.models_per_set
    assert all(len(v) == config.tasks.models_per_set for v in per_set.values())
    for s in specs:
        if s.split != "train":
            assert any(o.split == "train" for o in per_set[s.classes])


def test_snapshot_schedules_thesis_and_log_steps():
    config = zoo_configs.get_config("tiny")
    spec = hparams.sample_specs(config, 10)[0]
    assert hparams.snapshot_schedule(config, spec, 10) == (
        ("step00000", 0), ("step00004", 4), ("step00016", 16), ("final", spec.max_epoch * 10))
    # steps past the model's end are dropped; the last step is always 'final'
    assert hparams.snapshot_schedule(config, spec, 1) == (("step00000", 0), ("final", spec.max_epoch))
    config.train.snapshot_steps = ()
    assert hparams.snapshot_schedule(config, spec, 10) == (
        ("early", spec.early_epoch * 10), ("final", spec.max_epoch * 10))
    config.train.snapshot_steps = (4, 2)
    with pytest.raises(ConfigError, match="config.train.snapshot_steps"):
        hparams.validate(config)


def test_missing_or_corrupt_snapshot_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="missing"):
        snapshots.load_snapshots(str(tmp_path), 3)
    path = snapshots.snapshot_path(str(tmp_path), 3)
    snapshots.save_snapshots(str(tmp_path), 3, [{"params": {"w": np.ones(3)}, "batch_stats": {}}])
    import glob
    for f in glob.glob(os.path.join(path, "**", "*"), recursive=True):
        if os.path.isfile(f) and "METADATA" not in f:
            open(f, "wb").write(b"garbage")
    with pytest.raises(ConfigError, match="corrupt|missing"):
        snapshots.load_snapshots(str(tmp_path), 3)


def _data_files(checkpoint):
    """The OCDBT files holding a checkpoint's arrays and B-tree nodes."""
    return [os.path.join(r, f) for r, _, fs in os.walk(checkpoint) for f in fs
            if os.path.basename(r) == "d"]


def _truncate(file):
    with open(file, "r+b") as f:
        f.truncate(os.path.getsize(file) // 2)


@pytest.mark.parametrize("damage", [
    lambda path: _truncate(max(_data_files(path), key=os.path.getsize)),
    lambda path: os.remove(max(_data_files(path), key=os.path.getsize)),
    lambda path: open(os.path.join(path, "_METADATA"), "w").close(),
    lambda path: os.remove(os.path.join(path, "manifest.ocdbt")),
], ids=["truncated_data", "deleted_data", "empty_metadata", "deleted_index"])
def test_a_damaged_snapshot_counts_as_missing_and_names_the_zoo_stage(tmp_path, damage):
    workdir = str(tmp_path)
    rng = np.random.default_rng(0)  # random values: large enough to live outside the index
    snapshots.save_snapshots(workdir, 3, [{"params": {"w": rng.normal(size=(64, 64))},
                                           "batch_stats": {"v": rng.normal(size=(300,))}}])
    path = snapshots.snapshot_path(workdir, 3)
    assert checkpoints.exists(path)
    damage(path)
    assert os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA"))  # Orbax's marker alone
    assert not checkpoints.exists(path)
    with pytest.raises(ConfigError, match=r"00003 is missing or incomplete: rerun the 'zoo' stage"):
        snapshots.load_snapshots(workdir, 3)
    rows = [dict(model_id=3)]
    with pytest.raises(ConfigError, match=r"no complete checkpoint for model 3: rerun the 'zoo' stage"):
        snapshots.check_snapshots(workdir, rows)
