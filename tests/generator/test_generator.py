"""Conditional generators: features, closed-form maps, the path model, flow matching, selection."""
import warnings

import jax
import numpy as np
import pytest

from configs import generator as generator_configs
from wsjax.evaluate import stage as evaluate_stage
from wsjax.generator import features, flow, linear, select
from wsjax.generator import path as path_lib
from wsjax.generator import stage as generator_stage


def test_class_features_are_slots_then_presence():
    f = features.class_features((7, 1, 3), 10)
    slots = f[:30].reshape(3, 10)
    assert slots.argmax(1).tolist() == [1, 3, 7]  # sorted: local label order
    np.testing.assert_array_equal(np.flatnonzero(f[30:]), [1, 3, 7])


def test_request_features_depend_on_the_loss_through_the_class_set():
    cls = np.stack([features.class_features(c, 10) for c in ((0, 1, 2), (0, 1, 2), (3, 4, 5))])
    x = features.request_features(cls, np.log([0.1, 1.0, 0.1]), np.linspace(-3, 0.5, 6), 0.5)
    assert x.shape == (3, 40 + 6 + 40 * 6)
    assert not np.allclose(x[0], x[1])               # another loss, another request
    assert not np.allclose(x[0, 46:], x[2, 46:])      # the products carry the class set
    np.testing.assert_allclose(features.loss_bumps(np.log([0.3]), [-2, -1, 0], 0.5).sum(), 1.0)


def test_ridge_recovers_a_linear_map_and_latent_round_trips_its_span():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    w = rng.normal(size=(5, 3))
    model = linear.fit_ridge(x, x @ w + 2.0, l2=1e-6)
    np.testing.assert_allclose(linear.predict(model, x), x @ w + 2.0, atol=1e-3)
    coeffs = rng.normal(size=(20, 4)) @ rng.normal(size=(4, 30))   # rank 4
    latent = linear.fit_latent(coeffs, dim=64)
    assert latent.basis.shape == (19, 30)                         # capped at the span (n - 1)
    np.testing.assert_allclose(linear.decode(latent, linear.encode(latent, coeffs)), coeffs, atol=1e-3)


def test_path_position_meets_the_request_on_a_monotone_curve():
    curve = np.log([1.6, 1.0, 0.5, 0.1])
    assert path_lib.position(curve, np.log(1.0)) == pytest.approx(1.0)
    assert path_lib.position(curve, np.log(0.5) * 0.5 + np.log(0.1) * 0.5) == pytest.approx(2.5)
    assert path_lib.position(curve, np.log(5.0)) == 0.0            # above the init: the init
    assert path_lib.position(curve, np.log(0.01)) == 3.0           # below reach: the end
    z = np.arange(4.0)[:, None] * np.ones((1, 2))
    np.testing.assert_allclose(path_lib.at(z, 2.5), [2.5, 2.5])
    assert path_lib.grid(z, 3).shape == (10, 2)


def test_path_model_learns_class_dependent_trajectories():
    rng = np.random.default_rng(1)
    sets = [(0, 1, 2), (0, 1, 3), (2, 4, 6), (1, 5, 9), (3, 7, 8), (0, 5, 6)] * 3
    cls = np.stack([features.class_features(c, 10) for c in sets])
    target = rng.normal(size=(cls.shape[1], 4 * 3))
    z = (cls @ target).reshape(len(sets), 4, 3)
    log_loss = np.log([1.5, 0.6, 0.7, 0.1])[None] - 0.1 * cls[:, :1]   # not monotone: made so
    model = path_lib.PathModel(path_lib.fit_latent(cls, z, l2=1e-4),
                               linear.fit_ridge(cls, log_loss, l2=1e-4))
    pz, curve = path_lib.predict(model, cls[:1])
    np.testing.assert_allclose(pz[0], z[0], atol=1e-2)
    assert np.all(np.diff(curve[0]) <= 0)


def test_flow_matching_learns_a_conditional_two_point_distribution():
    rng = np.random.default_rng(2)
    cond = rng.integers(0, 2, (512, 1)).astype(np.float32)
    z = np.where(cond > 0, 3.0, -3.0) * np.ones((512, 2), np.float32) + 0.1 * rng.normal(size=(512, 2))
    params, scale, losses = flow.train(z.astype(np.float32), cond, key=jax.random.key(0), hidden=64,
                                       depth=2, steps=600, batch_size=128, learning_rate=3e-3)
    assert losses[-50:].mean() < losses[:50].mean()
    out = flow.sample(params, scale, np.array([[0.0]] * 64 + [[1.0]] * 64, np.float32),
                      key=jax.random.key(1), hidden=64, depth=2, num_steps=16)
    assert out[:64].mean() < -2 and out[64:].mean() > 2            # a different request, other samples
    assert out[64:].std(0).mean() < 1.0


def test_keep_the_best_picks_the_candidate_nearest_each_target_in_log_space():
    assert select.nearest([0.05, 0.2, 1.0], [0.09, 0.5, 2.0]).tolist() == [0, 2, 2]
    # calibrated: a train loss of 0.1 predicts a val loss of 2 * 0.1 ** 0.5
    np.testing.assert_allclose(select.calibrate([0.1], (0.5, np.log(2.0))), [2 * 0.1 ** 0.5])


def test_cross_fit_predicts_each_class_set_without_its_own_models():
    config = generator_configs.get_config("tiny")
    sets = [(0, 1, 2), (0, 1, 3), (2, 4, 6), (1, 5, 9)] * 2
    cls = np.stack([features.class_features(c, 10) for c in sets])
    z = np.random.default_rng(4).normal(size=(len(sets), 3, 5))

    def paths(z):
        seen = {}
        feats, val, _, _ = generator_stage.cross_fit(
            config, cls, z, sets, lambda c, p: seen.setdefault(c, p) is None or (np.ones(3), np.ones(3)))
        assert val.shape == (4, 3) and len(feats) == 4
        return seen

    before = paths(z)
    assert sorted(before) == sorted(set(sets))
    moved = z.copy()
    moved[[i for i, c in enumerate(sets) if c == (0, 1, 2)]] += 50.0  # its own models only
    after = paths(moved)
    np.testing.assert_allclose(after[(0, 1, 2)], before[(0, 1, 2)], atol=1e-4)
    # and some other class set's path did use those models
    assert any(not np.allclose(after[c], before[c]) for c in before if c != (0, 1, 2))


def test_r_squared_and_spearman_compute_what_their_names_say():
    t = np.array([0.1, 0.2, 0.4, 0.8])
    assert evaluate_stage.r_squared(t, t) == 1.0
    assert evaluate_stage.r_squared(t, np.full(4, t.mean())) == pytest.approx(0.0)
    assert evaluate_stage.r_squared(t, t + 0.1) == pytest.approx(1 - 4 * 0.01 / ((t - t.mean()) ** 2).sum())
    assert evaluate_stage.spearman(t, t ** 3) == pytest.approx(1.0)
    assert evaluate_stage.spearman(t, -t) == pytest.approx(-1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConstantInputWarning: undefined is NaN, said quietly
        assert np.isnan(evaluate_stage.spearman(t, np.full(4, 0.3)))


def test_copy_takes_the_nearest_class_set_then_the_nearest_loss():
    feats = np.stack([features.class_features(c, 10) for c in ((0, 1, 2), (0, 1, 2), (0, 1, 4), (5, 6, 7))])
    losses = [1.0, 0.1, 0.3, 0.3]
    query = features.class_features((0, 1, 3), 10)      # held out: shares slots 0 and 1
    # (0, 1, 2) and (0, 1, 4) are equally near; among them the loss nearest 0.25 is 0.3
    assert evaluate_stage.copy_index(feats, losses, query, 0.25) == 2
    assert evaluate_stage.copy_index(feats, losses, features.class_features((0, 1, 2), 10), 0.8) == 0


def _fake_achieved(classes, coeffs):
    """Losses falling along the path, offset by the class set: stands in for decode + recal."""
    falling = np.exp(-np.linalg.norm(coeffs - coeffs[0], axis=1) / 10) + 0.01 * sum(classes)
    return 0.8 * falling, falling  # (train, val)


def test_held_out_models_never_reach_fitting():
    config = generator_configs.get_config("tiny")
    config.flow.steps = 20
    rng = np.random.default_rng(3)
    rows, coeffs = [], []
    for m in range(8):
        for step in (0, 10, 20):
            rows.append(dict(model_id=m, snapshot=f"step{step:05d}", step=step,
                             classes=((0, 1, 2), (0, 1, 3), (2, 5, 7), (4, 6, 9))[m % 4],
                             split="train" if m < 6 else "val", val_loss=1.5 / (1 + step)))
            coeffs.append(rng.normal(size=12))
    coeffs = np.array(coeffs, np.float32)
    arrays, meta, _ = generator_stage.fit(config, rows, coeffs, 10, jax.random.key(0), _fake_achieved)
    # train losses are 0.8x val losses: log val = log train + log 1.25
    np.testing.assert_allclose(meta["calibration"], [1.0, np.log(1.25)], atol=1e-4)
    held = [i for i, r in enumerate(rows) if r["split"] != "train"]
    coeffs[held] += 100.0
    for i in held:
        rows[i] = dict(rows[i], val_loss=9.0)
    again, _, _ = generator_stage.fit(config, rows, coeffs, 10, jax.random.key(0), _fake_achieved)
    jax.tree_util.tree_map(np.testing.assert_array_equal, arrays, again)


def test_presets_are_consistent_and_bad_fields_are_named():
    from wsjax.common.config import ConfigError
    for preset in ("tiny", None, "imagenet"):
        generator_stage.check_config(generator_configs.get_config(preset))
    config = generator_configs.get_config("tiny")
    config.l2 = 0.0
    with pytest.raises(ConfigError, match="config.l2"):
        generator_stage.check_config(config)
    with pytest.raises(ValueError, match="unknown generator preset"):
        generator_configs.get_config("huge")
