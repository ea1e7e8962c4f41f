"""Zoo variety (issue 11): init methods, activations, train-set fractions and dropout rates drawn
per model."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import zoo as zoo_configs
from launch.main import run_stage
from wsjax import data, models
from wsjax.common import contract
from wsjax.common.config import ConfigError
from wsjax.models import inference
from wsjax.zoo import hparams
from wsjax.zoo import init as init_lib
from wsjax.zoo import load_model
from wsjax.zoo import stage as zoo_stage
from wsjax.zoo import step as step_lib

VARIETY = dict(init_methods=("he_normal", "orthogonal", "truncated_normal"),
               activations=("relu", "gelu", "tanh"), train_fractions=(0.5, 1.0), dropout_rates=(0.0, 0.5),
               label_noises=(0.0, 0.2))
VARIETY_FIELDS = ("init_method", "activation", "train_fraction", "dropout_rate", "label_noise")  # ModelSpec


def _with_variety(config):
    config.init = "per_model"
    config.init_methods = VARIETY["init_methods"]
    config.model.activations = VARIETY["activations"]
    config.train.train_fractions = VARIETY["train_fractions"]
    config.train.dropout_rates = VARIETY["dropout_rates"]
    config.train.label_noises = VARIETY["label_noises"]
    return config


def _variety_config(num_models=6):
    config = _with_variety(zoo_configs.get_config("tiny"))
    config.num_models = num_models
    return config


def test_variety_axes_leave_every_other_draw_unchanged():
    plain = hparams.sample_specs(zoo_configs.get_config(), 10)
    default = ("lecun_normal", "relu", 1.0, 0.0, 0.0)
    assert {tuple(getattr(s, k) for k in VARIETY_FIELDS) for s in plain} == {default}
    config = zoo_configs.get_config()
    config.init = "per_model"
    plain = hparams.sample_specs(config, 10)
    varied = hparams.sample_specs(_with_variety(config), 10)
    assert [dataclasses.replace(s, **{k: None for k in VARIETY_FIELDS}) for s in varied] == [
        dataclasses.replace(s, **{k: None for k in VARIETY_FIELDS}) for s in plain]
    for field, choices in zip(VARIETY_FIELDS, VARIETY.values()):
        assert {getattr(s, field) for s in varied} == set(choices)  # every choice drawn


def test_default_method_is_flax_init_and_others_redraw_kernels_only():
    module = models.build(zoo_configs.get_config("tiny").model, 3)
    key = jax.random.key(3)
    default = init_lib.random_init(module, (12, 12, 1), key, "lecun_normal")
    # the same draws; compiled at the lowest optimisation level, rounding may differ in the last bit
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), default,
                           dict(module.init(key, jnp.zeros((1, 12, 12, 1)))))
    orthogonal = init_lib.random_init(module, (12, 12, 1), key, "orthogonal")
    jax.tree_util.tree_map(np.testing.assert_array_equal, default["batch_stats"],
                           orthogonal["batch_stats"])
    w = orthogonal["params"]["fc"]["kernel"]  # [16, 3]: orthonormal columns
    np.testing.assert_allclose(w.T @ w, np.eye(w.shape[1]), atol=1e-5)
    # every method on a conv and a dense layer (each new kernel shape costs eager compiles)
    layers = {k: default["params"][k] for k in ("conv1", "fc")}
    for method in init_lib.INIT_METHODS[1:]:
        params = init_lib._redraw_kernels(layers, method, key)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(layers),
                                jax.tree_util.tree_leaves(params)):
            assert a.shape == b.shape and a.dtype == b.dtype and np.isfinite(b).all()
            assert np.array_equal(a, b) != (path[-1].key == "kernel"), (method, path)


def test_dropout_rate_zero_trains_as_without_dropout_and_a_rate_draws_masks_from_the_key():
    module = models.build(zoo_configs.get_config("tiny").model, 3)
    variables = init_lib.random_init(module, (12, 12, 1), jax.random.key(0), "lecun_normal")
    tx = step_lib.make_optimizer()
    x, y = jax.random.normal(jax.random.key(1), (8, 12, 12, 1)), jnp.arange(8) % 3
    step = jax.jit(functools.partial(step_lib.model_step, module, tx))

    def params_after_two_steps(dropout):
        state = step_lib.init_model_state(tx, variables, "adam", 1e-2, 1e-4, dropout=dropout)
        for _ in range(2):
            state, _ = step(state, x, y, jnp.asarray(True))
        assert ("dropout" in state) == (dropout is not None)
        return jax.tree_util.tree_leaves(state["params"])

    def same(a, b):
        return all(np.array_equal(u, v) for u, v in zip(a, b))
    plain = params_after_two_steps(None)
    assert same(params_after_two_steps((0.0, jax.random.key(5))), plain)
    half = params_after_two_steps((0.5, jax.random.key(5)))
    assert not same(half, plain)
    assert same(params_after_two_steps((0.5, jax.random.key(5))), half)  # the key decides the masks
    assert not same(params_after_two_steps((0.5, jax.random.key(6))), half)


def test_cohorts_hold_one_activation_each():
    specs = hparams.sample_specs(_variety_config(num_models=12), 10)
    cohorts = zoo_stage.plan_cohorts(specs, 4)
    assert all(len({s.activation for s in c}) == 1 for c in cohorts)
    assert sorted(s.model_id for c in cohorts for s in c) == list(range(12))


def test_train_fraction_is_a_fixed_subset_of_the_task_drawn_from_the_model_seed():
    dataset = data.load(zoo_configs.get_config("tiny").data)
    spec = hparams.sample_specs(_variety_config(), 10)[1]
    full_idx, _ = data.tasks.task_indices(dataset.y_train, spec.classes)
    half = lambda seed: hparams.train_indices(dataset.y_train, spec.classes, 0.5, seed)  # noqa: E731
    idx, local = half(spec.seed)
    assert len(idx) == round(0.5 * len(full_idx)) and set(idx) <= set(full_idx)
    np.testing.assert_array_equal(local, np.searchsorted(sorted(spec.classes), dataset.y_train[idx]))
    np.testing.assert_array_equal(idx, half(spec.seed)[0])
    assert not np.array_equal(idx, half(spec.seed + 1)[0])


def test_label_noise_relabels_that_share_of_the_train_images_as_another_class_from_the_seed():
    labels = np.repeat(np.arange(10), 50)
    classes = (2, 5, 7)
    clean_idx, clean = hparams.train_indices(labels, classes, 0.5, 3)
    idx, noisy = hparams.train_indices(labels, classes, 0.5, 3, label_noise=0.2)
    np.testing.assert_array_equal(idx, clean_idx)  # the same images
    assert (noisy != clean).sum() == round(0.2 * len(idx)) and set(noisy) <= {0, 1, 2}
    np.testing.assert_array_equal(noisy, hparams.train_indices(labels, classes, 0.5, 3, label_noise=0.2)[1])
    assert not np.array_equal(noisy, hparams.train_indices(labels, classes, 0.5, 4, label_noise=0.2)[1])


def test_equal_steps_gives_a_model_on_a_fraction_the_steps_of_its_whole_task(tmp_path):
    config = _variety_config(num_models=8)
    config.train.train_fractions = (0.25, 1.0)
    plain = zoo_stage.prepare(config, str(tmp_path / "plain"))
    config.train.equal_steps = True
    equal = zoo_stage.prepare(config, str(tmp_path / "equal"))
    b = config.train.batch_size
    for p, e in zip(plain.specs, equal.specs):
        whole = len(data.tasks.task_indices(plain.dataset.y_train, p.classes)[0]) // b
        last = lambda setup, s: setup.schedules[s.model_id][-1][1]  # noqa: E731  the final step
        if p.train_fraction == 1.0:
            assert e == p and last(equal, e) == last(plain, p) == p.max_epoch * whole
        else:  # ~4x the epochs over its quarter: the steps of the whole task, within one epoch's
            assert e.max_epoch > 3 * p.max_epoch and last(plain, p) < 0.3 * p.max_epoch * whole
            assert abs(last(equal, e) - p.max_epoch * whole) <= equal.steps_per_epoch[e.model_id]
    assert {s.train_fraction for s in plain.specs} == {0.25, 1.0}


@pytest.mark.parametrize("edit,match", [
    (lambda c: setattr(c, "init_methods", ("xavier",)), "config.init_methods must be a non-empty"),
    (lambda c: setattr(c, "init_methods", ("normal", "orthogonal")),
     "config.init_methods must hold one method under init='shared'"),
    (lambda c: setattr(c.model, "activations", ("swish",)), "config.model.activations"),
    (lambda c: (setattr(c, "init", "pretrained"), setattr(c.model, "activations", ("relu", "tanh"))),
     "config.model.activations must hold one activation under init='pretrained'"),
    (lambda c: setattr(c.train, "train_fractions", (0.0, 1.0)), "config.train.train_fractions"),
    (lambda c: setattr(c.train, "dropout_rates", (0.0, 1.0)), "config.train.dropout_rates"),
    (lambda c: setattr(c.train, "label_noises", (-0.1,)), "config.train.label_noises"),
])
def test_bad_variety_choice_is_one_clear_error(edit, match):
    config = zoo_configs.get_config("tiny")
    edit(config)
    with pytest.raises(ConfigError, match=match) as e:
        hparams.validate(config)
    assert "\n" not in str(e.value)


def test_a_stage_building_one_module_for_a_mixed_activation_zoo_is_refused():
    with pytest.raises(ConfigError, match="config.model.activations=.* mixes activations"):
        models.build(_variety_config().model, 3)


def test_variety_zoo_records_each_models_axes_and_load_model_rebuilds_its_activation(tmp_path):
    config = _variety_config(num_models=4)
    # a cohort step compiles once per activation (minutes each on a loaded 2-core CPU): two
    # activations, one model per cohort, the smallest graphs
    config.model.activations = ("relu", "tanh")
    config.cohort_size = 1
    config.model_splits.test = 0
    config.seed = 2  # its 4 models draw both activations, fractions and dropout rates, 2 methods
    workdir = str(tmp_path)
    rows = run_stage(config, workdir)
    specs = {s.model_id: s for s in hparams.sample_specs(config, 10)}
    dataset = data.load(config.data)
    assert {r["activation"] for r in rows} == {"relu", "tanh"}
    assert {r["train_fraction"] for r in rows} == set(VARIETY["train_fractions"])
    assert {r["dropout_rate"] for r in rows} == set(VARIETY["dropout_rates"])
    assert {r["label_noise"] for r in rows} == set(VARIETY["label_noises"])
    assert len({r["init_method"] for r in rows}) > 1
    for r in rows:
        s = specs[r["model_id"]]
        assert tuple(r[k] for k in VARIETY_FIELDS) == tuple(getattr(s, k) for k in VARIETY_FIELDS)
        assert r["status"] == "ok"
        if r["snapshot"] != "final":
            continue
        steps_per_epoch = len(hparams.train_indices(dataset.y_train, s.classes, s.train_fraction,
                                                    s.seed)[0]) // config.train.batch_size
        assert r["step"] == s.max_epoch * steps_per_epoch  # a half-set model takes half the steps
        module, variables, row = load_model(workdir, r["model_id"], "final")
        assert module.activation == r["activation"] and row == r
        x, y = data.task_split(dataset, r["classes"], "val")
        val_loss, _ = inference.loss_accuracy(module, variables, x, y)
        assert val_loss == pytest.approx(r["val_loss"], rel=1e-4, abs=1e-5)


def test_variety_fields_are_part_of_the_zoo_fingerprint():
    fields = contract.settings(_variety_config())
    assert fields["init_methods"] == list(VARIETY["init_methods"])
    assert fields["model.activations"] == list(VARIETY["activations"])
    assert fields["train.train_fractions"] == list(VARIETY["train_fractions"])
    assert fields["train.dropout_rates"] == list(VARIETY["dropout_rates"])
    assert fields["train.label_noises"] == list(VARIETY["label_noises"])
