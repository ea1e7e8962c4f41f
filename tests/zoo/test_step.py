"""Divergence in the zoo's train step (issue 12, case 3): a model that blows up is frozen and
marked, and what it keeps holds no inf or NaN anywhere (BatchNorm statistics and Adam moments too)."""
import jax
import numpy as np
import pytest

from configs import zoo as zoo_configs
from wsjax import data, models
from wsjax.zoo import init as init_lib
from wsjax.zoo import step as step_lib


@pytest.fixture(scope="module")
def setup():
    config = zoo_configs.get_config("tiny")
    dataset = data.load(config.data)
    module = models.build(config.model, 3)
    variables = init_lib.random_init(module, dataset.image_shape, jax.random.key(0))
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(dataset.x_train), (20, 64))
    batches = [(dataset.x_train[i], rng.integers(0, 3, 64).astype(np.int32)) for i in idx]
    return module, step_lib.make_optimizer(), variables, batches


def _finite(tree):
    return all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_learning_rate_100_freezes_the_model_with_every_value_finite(setup, optimizer):
    module, tx, variables, batches = setup
    step = step_lib.single_step(module, tx)
    state = jax.device_put(step_lib.init_model_state(tx, variables, optimizer, 100.0, 0.0, 0.9))
    for x, y in batches:
        state, _ = step(state, x, y)
    state = jax.device_get(state)
    assert bool(state["diverged"])
    assert _finite({k: state[k] for k in ("params", "batch_stats", "opt_state")})


def test_loss_far_above_chance_marks_the_model_diverged_before_it_updates(setup):
    module, tx, variables, batches = setup
    step = step_lib.single_step(module, tx, diverge_loss_factor=1e-3)  # any loss is too high
    before = step_lib.init_model_state(tx, variables, "adam", 1e-3, 0.0)
    state, _ = step(jax.device_put(before), *batches[0])
    state = jax.device_get(state)
    assert bool(state["diverged"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, state["params"], before["params"])


def test_non_finite_batch_statistics_mark_the_model_diverged(setup):
    module, tx, variables, batches = setup
    # an inf in the running statistics only: the training loss (batch statistics) stays finite
    broken = dict(variables, batch_stats=jax.tree_util.tree_map(
        lambda x: np.full_like(x, np.inf), variables["batch_stats"]))
    state, loss = step_lib.single_step(module, tx)(
        jax.device_put(step_lib.init_model_state(tx, broken, "adam", 1e-3, 0.0)), *batches[0])
    assert np.isfinite(float(loss)) and bool(jax.device_get(state)["diverged"])
