import jax
import jax.numpy as jnp
import numpy as np

from configs import zoo as zoo_configs
from wsjax import models
from wsjax.models import bn, inference


def test_recalibration_moves_stats_to_the_data_and_matches_train_mode():
    config = zoo_configs.get_config("tiny")
    module = models.build(config.model, 3)
    images = np.random.default_rng(0).normal(3.0, 2.0, size=(32, 12, 12, 1)).astype(np.float32)
    variables = module.init(jax.random.key(0), jnp.zeros((1, 12, 12, 1)))
    new = bn.recalibrate(module, variables, images, num_batches=1, batch_size=32)
    # One batch: inference with the recalibrated statistics is the train-mode forward pass.
    train_mode, _ = module.apply(variables, images, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(module.apply(new, images), train_mode, rtol=1e-3, atol=1e-3)
    # The first BN layer's mean is the mean of conv1's outputs on the data (not the init's 0).
    conv = module.apply(variables, images, capture_intermediates=True, mutable=["intermediates"])[1]
    conv1 = conv["intermediates"]["conv1"]["__call__"][0]
    np.testing.assert_allclose(new["batch_stats"]["bn1"]["mean"], conv1.mean((0, 1, 2)),
                               rtol=1e-4, atol=1e-4)
    assert np.abs(new["batch_stats"]["bn1"]["mean"]).max() > 0.1


def test_recalibration_averages_over_batches():
    config = zoo_configs.get_config("tiny")
    module = models.build(config.model, 3)
    images = np.random.default_rng(1).normal(size=(64, 12, 12, 1)).astype(np.float32)
    variables = module.init(jax.random.key(0), jnp.zeros((1, 12, 12, 1)))
    two = bn.recalibrate(module, variables, images, num_batches=2, batch_size=32)
    a = bn.recalibrate(module, variables, images[:32], num_batches=1, batch_size=32)
    b = bn.recalibrate(module, variables, images[32:], num_batches=1, batch_size=32)
    np.testing.assert_allclose(two["batch_stats"]["bn1"]["mean"],
                               (a["batch_stats"]["bn1"]["mean"] + b["batch_stats"]["bn1"]["mean"]) / 2,
                               rtol=1e-4, atol=1e-5)


def test_stacked_recalibration_and_scores_match_one_network_at_a_time():
    config = zoo_configs.get_config("tiny")
    module = models.build(config.model, 3)
    rng = np.random.default_rng(2)
    images = rng.normal(size=(40, 12, 12, 1)).astype(np.float32)
    labels = rng.integers(0, 3, 40)
    nets = [jax.tree_util.tree_map(np.asarray, dict(module.init(jax.random.key(i), images[:1])))
            for i in range(3)]
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *nets)
    # chunks of 2 over 3 networks: the padded last chunk must not leak into the results
    stats = inference.map_chunks(lambda c: bn._recalibrate_chunk(module, c, jnp.asarray(
        images[:32].reshape(2, 16, 12, 12, 1))), stacked, chunk=2)
    together = bn.recalibrate_stack(module, stacked, images, num_batches=2, batch_size=16)
    z = inference.logits_stack(module, together, images)
    loss, acc = inference.scores_stack(z, labels)
    for i, v in enumerate(nets):
        alone = bn.recalibrate(module, v, images, num_batches=2, batch_size=16)
        np.testing.assert_allclose(stats["bn1"]["var"][i], alone["batch_stats"]["bn1"]["var"], rtol=1e-5)
        zi = inference.logits(module, alone, images)
        np.testing.assert_allclose(z[i], zi, rtol=1e-4, atol=1e-5)
        li, ai = inference.scores(zi, labels)
        assert abs(loss[i] - li) < 1e-5 and abs(acc[i] - ai) < 1e-9
    assert len({round(float(v), 6) for v in loss}) == 3  # three different networks
