"""The zoo trainer for real at the tiny preset: numerics, divergence, resume, devices, end to end."""
import collections
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import pca as pca_configs
from configs import zoo as zoo_configs
from launch.main import run_stage
from wsjax import data, models
from wsjax.common.config import ConfigError
from wsjax.pca import stage as pca_stage
from wsjax.zoo import init as init_lib
from wsjax.zoo import pretrain
from wsjax.zoo import step as step_lib
from wsjax.zoo import snapshots
from wsjax.zoo import stage as zoo_stage

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _weights(workdir):
    rows = snapshots.read_manifest(workdir)
    return rows, {(r["model_id"], r["snapshot"]): snapshots.load_variables(workdir, r["model_id"],
                                                                            r["snapshot"])
                  for r in rows}


def _assert_same_zoo(a, b, exact=True):
    rows_a, w_a = a
    rows_b, w_b = b
    assert len(rows_a) == len(rows_b)
    for ra, rb in zip(rows_a, rows_b):
        for k in snapshots.MANIFEST_FIELDS:
            if exact or not isinstance(ra[k], float):
                assert ra[k] == rb[k], k
            else:
                assert ra[k] == pytest.approx(rb[k], rel=1e-3, abs=1e-4), k
    assert w_a.keys() == w_b.keys()
    for key in w_a:
        cmp = (np.testing.assert_array_equal if exact else
               lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4))
        jax.tree_util.tree_map(cmp, w_a[key], w_b[key])


def test_tiny_preset_builds_models_with_a_snapshot_trajectory(tiny_zoo):
    workdir, rows = tiny_zoo
    config = zoo_configs.get_config("tiny")
    steps = tuple(config.train.snapshot_steps)
    assert len(rows) == (len(steps) + 1) * config.num_models
    assert {r["snapshot"] for r in rows} == {f"step{s:05d}" for s in steps} | {"final"}
    assert all(r["status"] == "ok" and r["init"] == "shared" for r in rows)
    for m in range(config.num_models):
        mine = [r for r in rows if r["model_id"] == m]
        assert [r["step"] for r in mine][:-1] == list(steps) and mine[-1]["step"] > steps[-1]
        assert mine[-1]["snapshot"] == "final"
    init = [r for r in rows if r["step"] == 0]
    finals = [r for r in rows if r["snapshot"] == "final"]
    assert np.mean([r["val_accuracy"] for r in finals]) > 0.5  # 3 classes: chance is 1/3
    # the trajectory spans chance to trained: what loss conditioning needs
    assert np.mean([r["val_loss"] for r in init]) > 1.0 > 0.6 > np.mean([r["val_loss"] for r in finals])
    stacked = snapshots.load_snapshots(workdir, 0)  # one checkpoint per model, snapshots stacked
    assert stacked["params"]["conv1"]["kernel"].shape[0] == len(steps) + 1
    assert not os.path.exists(os.path.join(workdir, "zoo", "cohorts"))
    log = [json.loads(line) for line in open(os.path.join(workdir, "zoo", "log.jsonl"))]
    assert log
    for line in log:  # the epoch's time split: saving falls outside its training loop
        assert min(line[f"{k}_seconds"] for k in ("training", "evaluation", "saving")) >= 0
        assert line["training_seconds"] + line["evaluation_seconds"] == pytest.approx(line["seconds"])
    module, variables, row = snapshots.load_model(workdir, 0, "final")
    assert row["model_id"] == 0 and "batch_stats" in variables


@pytest.mark.parametrize("strategy,dropout", [("unroll", False), ("vmap", True)])
def test_batched_step_equals_sequential_steps(strategy, dropout):
    config = zoo_configs.get_config("tiny")
    dataset = data.load(config.data)
    module = models.build(config.model, 3)
    variables = init_lib.random_init(module, dataset.image_shape, jax.random.key(0))
    tx = step_lib.make_optimizer()
    specs = [("adam", 2e-3, 1e-4, 0.0), ("sgd", 5e-2, 1e-4, 0.9)]
    # with dropout, each model its own rate and key: vmapped, each draws its own masks
    drop = [(0.5, jax.random.key(1)), (0.2, jax.random.key(2))] if dropout else [None, None]
    states = [step_lib.init_model_state(tx, variables, *s, dropout=d) for s, d in zip(specs, drop)]
    rng = np.random.default_rng(0)
    # the tiny zoo's shapes (1 step per call, 2 models, batch 64): its compiled step is reused
    idx = rng.integers(0, len(dataset.x_train), (3, 2, 64)).astype(np.int32)
    label = rng.integers(0, 3, (3, 2, 64)).astype(np.int32)
    cohort = step_lib.make_cohort_step(module, tx, strategy)
    got, losses = jax.device_put(step_lib.stack(states)), []
    for k in range(3):
        got, loss = cohort(got, dataset.x_train,
                           dict(idx=idx[k:k + 1], label=label[k:k + 1], active=np.ones((1, 2), bool)))
        losses.append(np.asarray(loss[0]))
    losses = np.stack(losses)
    single = step_lib.single_step(module, tx)
    for m in range(2):
        s = jax.device_put(states[m])
        for k in range(3):
            s, loss = single(s, dataset.x_train[idx[k, m]], label[k, m])
            assert float(losses[k, m]) == pytest.approx(float(loss), rel=1e-4)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                               step_lib.unstack(jax.device_get(got), m), jax.device_get(s))


def test_diverging_model_is_frozen_and_does_not_disturb_the_other():
    config = zoo_configs.get_config("tiny")
    dataset = data.load(config.data)
    module = models.build(config.model, 3)
    variables = init_lib.random_init(module, dataset.image_shape, jax.random.key(0))
    tx = step_lib.make_optimizer()
    good = step_lib.init_model_state(tx, variables, "adam", 2e-3, 1e-4)
    bad = step_lib.init_model_state(tx, variables, "sgd", 1e30, 0.0, 0.9)
    rng = np.random.default_rng(1)
    batch = dict(idx=rng.integers(0, len(dataset.x_train), (1, 2, 64)).astype(np.int32),
                 label=rng.integers(0, 3, (1, 2, 64)).astype(np.int32),
                 active=np.ones((1, 2), bool))
    cohort = step_lib.make_cohort_step(module, tx, "unroll")
    both = jax.device_put(step_lib.stack([good, bad]))
    alone = jax.device_put(step_lib.stack([good, good]))
    for _ in range(4):  # a few steps for the absurd learning rate to overflow
        both, _ = cohort(both, dataset.x_train, batch)
        alone, _ = cohort(alone, dataset.x_train,
                          dict(batch, active=batch["active"] & np.array([True, False])))
    both = jax.device_get(both)
    assert bool(both["diverged"][1]) and not bool(both["diverged"][0])
    for leaf in jax.tree_util.tree_leaves(step_lib.unstack(both["params"], 1)):
        assert np.all(np.isfinite(leaf))
    jax.tree_util.tree_map(np.testing.assert_array_equal, step_lib.unstack(both["params"], 0),
                           step_lib.unstack(jax.device_get(alone)["params"], 0))


def test_rerun_of_a_finished_zoo_is_a_no_op(tiny_zoo, monkeypatch):
    workdir, rows = tiny_zoo
    monkeypatch.setattr(zoo_stage, "train_cohort", lambda *a, **k: pytest.fail("retrained"))
    assert run_stage(zoo_configs.get_config("tiny"), workdir) == rows


def test_rerun_after_kill_gives_identical_zoo(tiny_zoo, tmp_path, monkeypatch):
    calls = []
    real_log = zoo_stage._log

    def killing_log(workdir, line):
        real_log(workdir, line)
        calls.append(line)
        if len(calls) == 5:  # mid-way: some cohorts done, one checkpointed mid-training
            raise KeyboardInterrupt

    config = zoo_configs.get_config("tiny")
    config.checkpoint_every_secs = 0.0  # every epoch end: the kill lands after a checkpoint
    monkeypatch.setattr(zoo_stage, "_log", killing_log)
    with pytest.raises(KeyboardInterrupt):
        run_stage(config, str(tmp_path))
    monkeypatch.setattr(zoo_stage, "_log", real_log)
    run_stage(config, str(tmp_path))
    _assert_same_zoo(_weights(tiny_zoo[0]), _weights(str(tmp_path)))


def _assert_rerun_retrains_only(model_id, reference, workdir, monkeypatch):
    """A zoo rerun on `workdir` trains one cohort, of `model_id` alone, and ends equal to `reference`."""
    trained = []
    real = zoo_stage.train_cohort
    monkeypatch.setattr(zoo_stage, "train_cohort",
                        lambda ctx, members, *a: trained.append(members) or real(ctx, members, *a))
    run_stage(zoo_configs.get_config("tiny"), workdir)
    assert [[s.model_id for s in c] for c in trained] == [[model_id]]
    _assert_same_zoo(_weights(reference), _weights(workdir), exact=False)


def test_deleting_one_models_snapshots_retrains_only_that_model(tiny_zoo, tmp_path, monkeypatch):
    workdir = str(tmp_path / "w")
    shutil.copytree(tiny_zoo[0], workdir)
    shutil.rmtree(snapshots.snapshot_path(workdir, 4))
    _assert_rerun_retrains_only(4, tiny_zoo[0], workdir, monkeypatch)


def test_truncated_snapshot_stops_pca_naming_the_zoo_and_a_zoo_rerun_retrains_it(
        tiny_zoo, tmp_path, monkeypatch):
    workdir = str(tmp_path / "w")
    shutil.copytree(tiny_zoo[0], workdir)
    path = snapshots.snapshot_path(workdir, 4)
    data_files = [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs if os.path.basename(r) == "d"]
    victim = max(data_files, key=os.path.getsize)
    with open(victim, "r+b") as f:  # a copy cut short: Orbax's commit marker is still there
        f.truncate(os.path.getsize(victim) // 2)
    monkeypatch.setattr(pca_stage, "read_leaves", lambda *a, **k: pytest.fail("PCA started work"))
    with pytest.raises(ConfigError, match=r"no complete checkpoint for model 4: rerun the 'zoo' stage"):
        run_stage(pca_configs.get_config("tiny"), workdir)
    _assert_rerun_retrains_only(4, tiny_zoo[0], workdir, monkeypatch)


def test_damaged_manifest_is_moved_aside_and_its_models_retrained(tiny_zoo, tmp_path, monkeypatch):
    workdir = str(tmp_path / "w")
    shutil.copytree(tiny_zoo[0], workdir)
    path = os.path.join(workdir, "zoo", "models.csv")
    with open(path, "a") as f:
        f.write("garbage,line\n")
    with pytest.raises(ConfigError, match="line"):
        snapshots.read_manifest(workdir)
    trained = []
    monkeypatch.setattr(zoo_stage, "train_cohort",  # records the cohort, trains nothing, spends no time
                        lambda ctx, members, *a: trained.extend(members) or collections.Counter())
    run_stage(zoo_configs.get_config("tiny"), workdir)
    assert sorted(s.model_id for s in trained) == list(range(zoo_configs.get_config("tiny").num_models))
    assert [f for f in os.listdir(os.path.dirname(path)) if f.startswith("models.csv.damaged-")]


def test_corrupt_cohort_checkpoint_is_one_clear_error(tmp_path, monkeypatch):
    config = zoo_configs.get_config("tiny")
    config.checkpoint_every_secs = 0.0
    calls, real_log = [], zoo_stage._log

    def killing_log(*a):  # the first cohort lasts 2 epochs: killed after its epoch-1 checkpoint
        real_log(*a)
        calls.append(a)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(zoo_stage, "_log", killing_log)
    with pytest.raises(KeyboardInterrupt):
        run_stage(config, str(tmp_path))
    monkeypatch.undo()
    cohorts = os.path.join(str(tmp_path), "zoo", "cohorts")
    assert os.listdir(cohorts)
    for root, _, files in os.walk(cohorts):
        for f in files:
            if f.endswith(".ocdbt") or os.path.basename(root) == "d":  # the array data
                open(os.path.join(root, f), "wb").write(b"garbage")
    with pytest.raises(ConfigError, match=r"zoo checkpoint \S*cohorts\S* could not be read"):
        run_stage(config, str(tmp_path))


def test_pretrained_base_is_trained_once_and_reused(tmp_path, monkeypatch):
    config = zoo_configs.get_config("tiny")
    config.init = "pretrained"
    config.pretrain.epochs = 1
    module, base = pretrain.base_network(config, str(tmp_path))
    assert base["params"]["fc"]["kernel"].shape[-1] == 10
    monkeypatch.setattr(step_lib, "single_step", lambda *a: pytest.fail("base retrained"))
    _, again = pretrain.base_network(config, str(tmp_path))
    jax.tree_util.tree_map(np.testing.assert_array_equal, base, again)
    zoo_module = models.build(config.model, 3)
    init = init_lib.initializer(config, zoo_module, (12, 12, 1), str(tmp_path))(5, "lecun_normal")
    np.testing.assert_array_equal(init["params"]["layer4_1"]["conv2"]["kernel"],
                                  base["params"]["layer4_1"]["conv2"]["kernel"])
    assert init["params"]["fc"]["kernel"].shape[-1] == 3
    feats = module.apply(base, np.zeros((2, 12, 12, 1), np.float32), features=True)
    assert feats.shape == (2, 8 * config.model.width)


def test_eight_devices_give_the_same_zoo_as_one(tiny_zoo, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    code = ("from configs import zoo; from launch.main import run_stage; import jax; "
            "assert jax.device_count() == 8; c = zoo.get_config('tiny'); c.cohort_size = 1; "
            "c.num_devices = 8; run_stage(c, %r)" % str(tmp_path))
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=300)
    _assert_same_zoo(_weights(tiny_zoo[0]), _weights(str(tmp_path)), exact=False)
