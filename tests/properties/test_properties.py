import csv
import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import pca as pca_configs
from configs.bench import properties as bench_configs
from wsjax import stages
from wsjax.common import config as config_lib
from wsjax.data import datasets, tasks
from wsjax.models import inference
from wsjax.properties import bench
from wsjax.properties import probes
from wsjax.properties import representations as reps
from wsjax.sane import tokens
from wsjax.zoo import hparams, snapshots
from wsjax.zoo import step as step_lib


@pytest.fixture(scope="module")
def bench_workdir(fake_zoo, tmp_path_factory):
    """A copy of the fake zoo with its PCA fitted and the tiny benchmark run on it."""
    workdir = str(tmp_path_factory.mktemp("properties") / "work")
    shutil.copytree(fake_zoo, workdir)
    shutil.rmtree(os.path.join(workdir, "sane"), ignore_errors=True)
    stages.run_stage(pca_configs.get_config("tiny"), workdir)
    stages.run_stage(bench_configs.get_config("tiny"), workdir)
    return workdir


def test_weight_statistics_are_mean_std_and_quantiles_of_each_leaf():
    x = np.arange(10, dtype=np.float32)
    stacked = {"a": np.stack([x, 2 * x]).reshape(2, 2, 5), "b": np.ones((2, 3))}
    out = reps.weight_statistics(stacked)
    assert out.shape == (2, 14)
    np.testing.assert_allclose(out[1, :7], [9.0, 2 * x.std(), 0, 4.5, 9, 13.5, 18], rtol=1e-6)
    np.testing.assert_allclose(out[:, 7:], [[1, 0, 1, 1, 1, 1, 1]] * 2)


def test_delta_statistics_measure_from_the_reference_and_ignore_channel_permutations(fake_zoo):
    reference = snapshots.load_variables(fake_zoo, 0, "final")
    variables = snapshots.load_variables(fake_zoo, 3, "final")
    permuted = tokens.permute_channels(variables, jax.random.key(1))
    out = reps.delta_statistics(step_lib.stack([variables, permuted, reference]), reference)
    leaves = len(jax.tree_util.tree_leaves(reference))
    assert out.shape == (3, 8 * leaves)
    np.testing.assert_allclose(out[1], out[0], atol=1e-6)  # aligned before the difference
    np.testing.assert_array_equal(out[2], 0)               # the reference is where it starts
    distance = np.log1p([np.linalg.norm(a - b) for a, b in zip(jax.tree_util.tree_leaves(variables),
                                                               jax.tree_util.tree_leaves(reference))])
    np.testing.assert_allclose(out[0, 7 * leaves:], distance, rtol=1e-5)


def test_output_statistics_ignore_which_output_slot_holds_a_class():
    logits = np.random.default_rng(0).normal(size=(2, 5, 3))
    out = reps.output_statistics(logits)
    assert out.shape == (2, 5 * 3 + 24 + 2 * 3)
    np.testing.assert_allclose(reps.output_statistics(logits[..., ::-1]), out, rtol=1e-6)
    p = np.exp(logits[1, 2]) / np.exp(logits[1, 2]).sum()
    np.testing.assert_allclose(out[1, 6:9], np.sort(p)[::-1], rtol=1e-6)  # image 2 of network 1
    confident = reps.output_statistics(10 * logits)
    assert confident[:, 15].mean() > out[:, 15].mean()  # mean top probability over images


def test_output_statistics_tell_one_slot_for_every_image_from_images_split_among_slots():
    one_slot = np.tile([2.0, 0.0, 0.0], (1, 6, 1))
    split = np.stack([np.roll([2.0, 0.0, 0.0], i % 3) for i in range(6)])[None]
    a, b = reps.output_statistics(one_slot)[0], reps.output_statistics(split)[0]
    per_image = 6 * 3 + 21
    np.testing.assert_allclose(a[:per_image], b[:per_image], atol=1e-6)  # alike image by image
    np.testing.assert_allclose(a[per_image:per_image + 3], [0, 0, 1])    # argmax shares, sorted
    np.testing.assert_allclose(b[per_image:per_image + 3], [1 / 3] * 3, rtol=1e-6)
    assert abs(a[-2]) < 1e-6 < b[-2]  # mutual information of image and slot
    saturated = 1000 * one_slot  # slots no image reaches: probability 0, entropy terms 0 log 0
    assert np.isfinite(reps.probe_features(saturated, saturated, np.arange(6) % 3)).all()


def test_consistency_statistics_read_purity_and_stability_without_labels():
    classes = np.arange(6) % 3
    follows = np.stack([np.roll([4.0, 0.0, 0.0], c) for c in classes])[None]  # slot follows the class
    mixed = np.stack([np.roll([4.0, 0.0, 0.0], i // 2) for i in range(6)])[None]  # it does not
    a = reps.consistency_statistics(follows, follows, classes)[0]
    reversed_slots = follows[..., ::-1]
    np.testing.assert_allclose(a, reps.consistency_statistics(reversed_slots, reversed_slots, classes)[0])
    np.testing.assert_allclose(a[:3], 1)                      # each class one slot
    np.testing.assert_allclose(a[6:], [1, 1, 0, 0, 0], atol=1e-12)  # purity 1; noise moved nothing
    b = reps.consistency_statistics(mixed, follows, classes)[0]
    np.testing.assert_allclose(b[6:8], [0.5, 1 / 3])        # half of each class on one slot; 2 of 6 kept
    assert b[8] > 0


def test_probe_outputs_run_every_snapshot_on_the_same_probe_images(fake_zoo):
    rows = [r for r in snapshots.read_manifest(fake_zoo) if r["model_id"] in (0, 3)]
    out = reps.load(fake_zoo, ["probe_outputs"], rows, probe_images=12)["probe_outputs"]
    dataset = datasets.load(config_lib.load(fake_zoo, "zoo").data)
    images, classes, noisy = reps.probe_images(dataset, 12)
    labels = np.unique(dataset.y_train)
    firsts = [np.flatnonzero(dataset.y_train == c)[0] for c in labels]  # the classes in turn
    np.testing.assert_array_equal(images[:len(labels)], dataset.x_train[firsts][:12])
    np.testing.assert_array_equal(classes, np.resize(labels, 12))
    assert 0 < np.abs(noisy - images).mean() < images.std()
    for i in (0, len(rows) - 1):
        module, variables, _ = snapshots.load_model(fake_zoo, rows[i]["model_id"], rows[i]["snapshot"])
        z = [inference.logits(module, variables, x)[None] for x in (images, noisy)]
        np.testing.assert_allclose(out[i], reps.probe_features(*z, classes)[0], atol=1e-5)


def test_joined_representation_is_its_parts_side_by_side_each_fitted_as_alone():
    rng = np.random.default_rng(0)
    raw = dict(weight_stats=rng.normal(size=(20, 3)), pca=rng.normal(size=(20, 6)))
    config, train = bench_configs.get_config("tiny"), np.arange(20) < 12
    pca = bench.features(raw, "pca", train, config)
    assert pca.shape == (20, config.bench.pca_components)
    np.testing.assert_array_equal(bench.features(raw, "weight_stats+pca", train, config),
                                  np.concatenate([raw["weight_stats"], pca], 1))


def test_snapshot_scores_apply_each_model_with_its_own_activation_and_train_images(fake_zoo, tmp_path):
    # the fake zoo with model 3 declared a tanh network (its weights stay the ReLU ones) trained on
    # half its task's images
    workdir = str(tmp_path / "work")
    shutil.copytree(fake_zoo, workdir)
    path = os.path.join(workdir, "zoo", "models.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        if r["model_id"] == "3":
            r["activation"], r["train_fraction"] = "tanh", "0.5"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config_path = os.path.join(workdir, "zoo", "config.json")
    with open(config_path) as f:
        zoo = json.load(f)
    zoo["model"]["activations"] = ["relu", "tanh"]
    with open(config_path, "w") as f:
        json.dump(zoo, f)
    rows = [r for r in snapshots.read_manifest(workdir) if r["model_id"] in (0, 3)]
    out = bench.snapshot_scores(workdir, rows, 16, str(tmp_path / "scores.npz"))
    dataset = datasets.load(config_lib.load(workdir, "zoo").data)
    for model_id, fraction in ((0, 1.0), (3, 0.5)):  # relu on its task, tanh on half of it
        module, variables, row = snapshots.load_model(workdir, model_id, "final")
        idx, y = hparams.train_indices(dataset.y_train, row["classes"], row["train_fraction"], row["seed"])
        task, _ = tasks.task_indices(dataset.y_train, row["classes"])
        assert row["train_fraction"] == fraction and len(idx) == round(fraction * len(task))
        assert (idx[:16] == task[:16]).all() == (fraction == 1.0)
        loss = float(inference.loss_accuracy(module, variables, dataset.x_train[idx[:16]], y[:16])[0])
        i = next(i for i, r in enumerate(rows) if r["model_id"] == model_id and r["snapshot"] == "final")
        assert abs(out["train_loss"][i] - loss) < 1e-4


def test_group_folds_keep_each_class_set_in_one_fold():
    groups = np.repeat(np.arange(9), 5)
    folds = probes.group_folds(groups, 3, seed=0)
    assert len(folds) == 3 and np.all(np.sum(folds, axis=0) == 1)
    for val in folds:
        assert set(groups[val]).isdisjoint(groups[~val])


def test_ridge_recovers_a_log_linear_target_and_chooses_the_log_on_train_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = np.exp(x @ np.array([0.5, -0.3, 0.2, 0.0, 0.1]))
    train = np.arange(200) < 150
    folds = probes.group_folds(np.arange(150) // 10, 3, seed=0)
    config = bench_configs.get_config("tiny").ridge
    predict, cv, settings = probes.fit_ridge(x, y, train, folds, config)
    assert settings["transform"] == "log" and cv > 0.95
    assert probes.r2(y[~train], predict(x[~train])) > 0.95


def test_gbm_probe_fits_interactions_a_linear_probe_cannot():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 4))
    train = np.arange(1200) < 900
    folds = probes.group_folds(np.arange(900) // 30, 3, seed=0)
    config = bench_configs.get_config().gbm.to_dict()
    y = np.where(x[:, 0] > 0, x[:, 1], -x[:, 1])  # a sign flip: no linear part at all
    predict, cv, settings = probes.fit_gbm(x, y, train, folds, config, transform="identity")
    ridge = probes.fit_ridge(x, y, train, folds, bench_configs.get_config().ridge)
    assert settings == {"transform": "identity"}
    assert cv > 0.8 and probes.r2(y[~train], predict(x[~train])) > 0.8
    assert ridge[1] < 0.1 and probes.r2(y[~train], ridge[0](x[~train])) < 0.1
    labels = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(int)  # XOR
    predict, cv, _ = probes.fit_gbm(x, labels, train, folds, config, classify=True)
    assert cv > 0.85 and (predict(x[~train]) == labels[~train]).mean() > 0.85


def test_tiny_benchmark_writes_results_per_representation_and_property(bench_workdir):
    out = os.path.join(bench_workdir, "bench_properties")
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    # no ae or sane stage ran here
    assert set(results) == {"weight_stats", "delta_stats", "pca", "probe_outputs", "sensitivity",
                            "weight_stats+probe_outputs", "weight_stats+probe_outputs+sensitivity"}
    for cells in results.values():
        # the fake zoo has one learning rate and one optimizer: nothing to predict there
        assert set(cells) == {"val_accuracy", "val_loss", "generalisation_gap", "step"}
        for cell in cells.values():
            assert {"r2", "kendall_tau", "probe"} <= set(cell) and np.isfinite(cell["r2"])
    with open(os.path.join(out, "details.json")) as f:
        details = json.load(f)
    assert set(details["per_seed"][0]["weight_stats"]["val_loss"]["probes"]) == {"ridge", "mlp", "gbm"}
    assert details["skipped"] == ["ae", "sane", "sane_decoded", "sane_segments"]
    assert set(details["inputs"]) == {"zoo", "pca"}
    assert set(details["split_half_reliability"]) == set(bench.MEASURED)
    assert all(0 <= c["mean"] <= 1 for c in details["split_half_reliability"].values())
    assert set(details["identical_network_ceiling"]) == set(cells)
    assert all(0.999 < c["mean"] <= 1 for c in details["identical_network_ceiling"].values())  # all distinct
    assert os.path.exists(os.path.join(out, "report.md"))
    assert os.path.exists(os.path.join(out, "predicted_vs_true.png"))


def test_identical_networks_share_an_id_and_cap_r2_at_their_group_means(fake_zoo):
    rows = [r for r in snapshots.read_manifest(fake_zoo) if r["model_id"] in (0, 1)]
    networks = bench.identical_networks(fake_zoo, rows + rows[:1])  # the first snapshot twice
    assert len(set(networks[:-1])) == len(rows) and networks[-1] == networks[0]
    y, mask = np.array([1.0, 3.0, 5.0, 7.0, 0.0]), np.array([True, True, True, True, False])
    groups = np.array([0, 0, 1, 2, 2])  # rows 0 and 1 identical: one prediction, 2.0, for both
    assert abs(bench.ceiling(y, groups, mask) - (1 - 2 / 20)) < 1e-12
    assert bench.ceiling(y, np.arange(5), mask) == 1.0


def test_split_half_reliability_is_the_share_of_variance_that_is_not_noise():
    # each half measures a true score with noise of variance 1; the full measurement (the mean
    # of the halves) has noise variance 1/2, so true variance 1 is 1 / 1.5 of its variance
    rng = np.random.default_rng(0)
    true = rng.normal(size=(200_000, 1))
    halves = dict(val_loss=true + rng.normal(size=(200_000, 2)), train_loss=np.zeros((200_000, 2)))
    mask = np.ones(200_000, bool)
    assert abs(bench.reliability(halves, "val_loss", mask) - 1 / 1.5) < 0.01
    assert abs(bench.reliability(halves, "generalisation_gap", mask) - 1 / 1.5) < 0.01
    halves["val_loss"] = np.repeat(true, 2, axis=1)  # noiseless halves: nothing hides the score
    assert bench.reliability(halves, "val_loss", mask) > 0.999
    halves["val_loss"] = np.stack([true[:, 0], -true[:, 0]], 1)  # halves that disagree: no signal
    assert bench.reliability(halves, "val_loss", mask) == 0.0


def test_sensitivity_features_are_zero_when_nothing_moves_and_grow_with_the_move():
    logits = np.random.default_rng(0).normal(size=(2, 5, 3))
    still = reps.sensitivity_features(logits, np.broadcast_to(logits, (2, 3) + logits.shape))
    np.testing.assert_allclose(still, np.tile([0.0, 0.0, 1.0], (2, 2)), atol=1e-6)
    moved = reps.sensitivity_features(logits, np.stack([logits + 0.1 * logits[..., ::-1],
                                                        logits[..., ::-1]])[:, None])
    assert np.all(moved[:, 0] > 0) and np.all(moved[:, 3] > moved[:, 0])  # KL grows with the move
    assert np.all(moved[:, 5] < 1)                                       # reversed slots: argmaxes moved


def test_sensitivity_moves_every_parameter_by_its_magnitude_and_outputs_move_more_with_sigma(fake_zoo,
                                                                                             monkeypatch):
    params = {"w": np.array([[1.0, -2.0, 0.0]]), "b": np.array([[3.0]])}
    noise = {"w": np.array([1.0, 1.0, 1.0]), "b": np.array([-1.0])}
    np.testing.assert_allclose(reps.perturbed(params, 0.1, noise)["w"], [[1.1, -1.8, 0.0]])
    np.testing.assert_allclose(reps.perturbed(params, 0.1, noise)["b"], [[2.7]])
    rows = [r for r in snapshots.read_manifest(fake_zoo) if r["model_id"] in (0, 3)]
    out = reps.load(fake_zoo, ["sensitivity"], rows, probe_images=12)["sensitivity"]
    assert out.shape == (len(rows), 3 * len(reps.SENSITIVITY_SIGMAS)) and np.isfinite(out).all()
    kl, kept = out[:, 0::3], out[:, 2::3]
    assert np.all(np.diff(kl.mean(0)) > 0) and np.all((0 <= kept) & (kept <= 1))
    # again, beside probe_outputs: the same; per model the clean logits once for both, the noisy
    # images' once and each perturbed copy's once
    calls, logits = [], reps._Probe.logits
    monkeypatch.setattr(reps._Probe, "logits", lambda self, *a: calls.append(1) or logits(self, *a))
    both = reps.load(fake_zoo, ["probe_outputs", "sensitivity"], rows, probe_images=12)
    np.testing.assert_array_equal(both["sensitivity"], out)
    assert len(calls) == 2 * (2 + len(reps.SENSITIVITY_SIGMAS) * reps.SENSITIVITY_DRAWS)
