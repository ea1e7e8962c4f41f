import json
import os
import shutil

import numpy as np
import pytest

from configs import pca as pca_configs
from configs.bench import properties as bench_configs
from wsjax import stages
from wsjax.properties import probes
from wsjax.properties import representations as reps


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


def test_tiny_benchmark_writes_results_per_representation_and_property(bench_workdir):
    out = os.path.join(bench_workdir, "bench_properties")
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert set(results) == {"weight_stats", "pca"}  # no ae or sane stage ran here
    for cells in results.values():
        # the fake zoo has one learning rate and one optimizer: nothing to predict there
        assert set(cells) == {"val_accuracy", "val_loss", "generalisation_gap", "step"}
        for cell in cells.values():
            assert {"r2", "kendall_tau", "probe"} <= set(cell) and np.isfinite(cell["r2"])
    with open(os.path.join(out, "details.json")) as f:
        details = json.load(f)
    assert details["skipped"] == ["ae", "sane"] and set(details["inputs"]) == {"zoo", "pca"}
    assert os.path.exists(os.path.join(out, "report.md"))
    assert os.path.exists(os.path.join(out, "predicted_vs_true.png"))
