"""Align stage specifications: losses against hand-computed values, the retrieval metric, the
stage end to end on a fake zoo with fake AE latents, resume, and config consistency."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ae as ae_configs
from configs import align as align_configs
from configs import pca as pca_configs
from wsjax import align, encoders
from wsjax.align import losses
from wsjax.align import stage as align_stage
from wsjax.common import config as config_lib
from wsjax.common import contract
from wsjax.common import checkpoints
from wsjax.stages import run_stage
from wsjax.zoo import snapshots


def _np_log_softmax(x, axis):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def test_nt_xent_matches_a_hand_computed_two_pair_case():
    # unit vectors: a0 = b0 = e0, a1 = e1, b1 = (e0 + e1)/sqrt2; cosines by hand
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[1.0, 0.0], [1.0, 1.0]])
    t = 0.5
    c = 1 / np.sqrt(2)
    s = np.array([[1.0, c], [0.0, c]]) / t  # s[i, j] = cos(a_i, b_j) / t
    row = [-(s[0, 0] - np.log(np.exp(s[0, 0]) + np.exp(s[0, 1]))),
           -(s[1, 1] - np.log(np.exp(s[1, 0]) + np.exp(s[1, 1])))]
    col = [-(s[0, 0] - np.log(np.exp(s[0, 0]) + np.exp(s[1, 0]))),
           -(s[1, 1] - np.log(np.exp(s[0, 1]) + np.exp(s[1, 1])))]
    expected = 0.5 * (np.mean(row) + np.mean(col))
    assert np.isclose(float(losses.nt_xent(jnp.asarray(a), jnp.asarray(b), t)), expected, atol=1e-5)


def test_multi_positive_sums_the_probability_of_every_same_group_pair():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    groups = np.array([0, 0, 1, 2])
    t = 0.3
    unit = lambda z: z / np.linalg.norm(z, axis=1, keepdims=True)  # noqa: E731
    s = unit(a) @ unit(b).T / t
    pos = groups[:, None] == groups[None, :]
    pr = np.exp(s) / np.exp(s).sum(1, keepdims=True)  # anchor a_i over keys b_j
    pc = np.exp(s) / np.exp(s).sum(0, keepdims=True)  # anchor b_j over keys a_i
    row = [-np.log(pr[i][pos[i]].sum()) for i in range(4)]
    col = [-np.log(pc[:, j][pos[:, j]].sum()) for j in range(4)]
    expected = 0.5 * (np.mean(row) + np.mean(col))
    got = float(losses.multi_positive_infonce(jnp.asarray(a), jnp.asarray(b), jnp.asarray(groups), t))
    assert np.isclose(got, expected, atol=1e-5)
    # identical anchors in one group: no penalty for preferring one positive over the other
    a2 = np.array([[1.0, 0.0], [1.0, 0.0]])
    b2 = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert float(losses.multi_positive_infonce(a2, b2, jnp.array([0, 0]), 0.1)) < 1e-6
    assert float(losses.nt_xent(a2, b2, 0.1)) > 0.6
    # with every group distinct it is exactly NT-Xent
    assert np.isclose(float(losses.multi_positive_infonce(a, b, jnp.arange(4), t)),
                      float(losses.nt_xent(a, b, t)), atol=1e-6)


def test_retrieval_top1_counts_own_key_and_same_group_keys():
    keys = np.eye(4)
    queries = np.array([[1, 0.1, 0, 0], [0.9, 1.0, 0, 0], [1.0, 0, 0.2, 0]])  # 3rd best-matches key 0
    assert losses.retrieval_top1(queries, keys) == pytest.approx(2 / 3)
    assert losses.retrieval_top1(queries, keys, group_ids=np.array([0, 1, 0, 2])) == 1.0
    assert losses.retrieval_top1(queries, keys, metric="l2") == pytest.approx(2 / 3)


def _fake_latents(workdir, dim=6, seed=0):
    """ae/latents.npz whose z is a fixed function of the task and validation loss (+ noise)."""
    rows = snapshots.read_manifest(workdir)
    rng = np.random.default_rng(seed)
    class_dirs, loss_dir = rng.normal(size=(10, dim)), rng.normal(size=dim)
    z = np.stack([class_dirs[list(r["classes"])].sum(0) + r["val_loss"] * loss_dir
                  + 0.01 * rng.normal(size=dim) for r in rows]).astype(np.float32)
    os.makedirs(os.path.join(workdir, "ae"), exist_ok=True)
    np.savez(os.path.join(workdir, "ae", "latents.npz"), z=z,
             model_id=np.array([r["model_id"] for r in rows]),
             snapshot=np.array([r["snapshot"] for r in rows]), split=np.array([r["split"] for r in rows]))
    for stage, configs in (("pca", pca_configs), ("ae", ae_configs)):  # as if they had run
        contract.record(stage, configs.get_config("tiny"), workdir)


@pytest.fixture(scope="module")
def fake_ae(fake_zoo, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("align_base"))
    shutil.copytree(fake_zoo, base, dirs_exist_ok=True)
    _fake_latents(base)
    encoders.dataset_encoder(align_configs.get_config("tiny"), base)  # trains and caches the probe once
    return base


def _copy(src, tmp_path, name):
    dst = str(tmp_path / name)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("metrics.json", "params", "ckpt", "log.jsonl"))
    return dst


def test_align_stage_writes_metrics_and_a_loadable_projector(fake_ae, tmp_path):
    workdir = _copy(fake_ae, tmp_path, "w")
    config = align_configs.get_config("tiny")
    metrics = run_stage(config, workdir)
    for key in ("train_top1", "train_group_top1", "val_top1", "val_group_top1", "val_r2", "val_chance",
                "val_top1_with_train_keys"):
        assert np.isfinite(metrics[key]), key
    assert metrics["train_group_top1"] > 2 * metrics["train_chance"]
    assert json.load(open(os.path.join(workdir, "align", "metrics.json"))) == metrics
    assert os.path.getsize(os.path.join(workdir, "align", "log.jsonl")) > 0
    a = align.load(workdir)
    enc = encoders.dataset_encoder(config_lib.load(workdir, "align"), workdir)
    feats = np.stack([enc.task_features((0, 1, 2)), enc.task_features((3, 4, 5))])
    z = a.project(feats, np.array([0.5, 2.0], np.float32), np.array([0.9, 0.5], np.float32))
    assert z.shape == (2, 6) and np.all(np.isfinite(z))
    # a rerun of a finished stage changes nothing
    before = os.path.getmtime(os.path.join(workdir, "align", "metrics.json"))
    assert run_stage(config, workdir) == metrics
    assert os.path.getmtime(os.path.join(workdir, "align", "metrics.json")) == before


def test_killed_align_run_resumes_to_the_same_params(fake_ae, tmp_path):
    config = align_configs.get_config("tiny")
    config.loss = "nt_xent"
    config.results.use_accuracy = True
    full = _copy(fake_ae, tmp_path, "full")
    run_stage(config, full)
    killed = _copy(fake_ae, tmp_path, "killed")
    config_lib.save(config, killed, "align")
    killed_at = config.train.checkpoint_every + 3
    assert align_stage.train(config, killed, stop_at=killed_at) is None  # killed mid-run
    run_stage(config, killed)
    p_full = checkpoints.restore(os.path.join(full, "align", "params"))
    p_killed = checkpoints.restore(os.path.join(killed, "align", "params"))
    for x, y in zip(jax.tree_util.tree_leaves(p_full), jax.tree_util.tree_leaves(p_killed)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    steps = [json.loads(line)["step"] for line in open(os.path.join(killed, "align", "log.jsonl"))]
    assert steps == sorted(set(steps))  # no duplicated log lines after the resume


def test_missing_latents_is_a_clear_error(fake_zoo, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(fake_zoo, workdir, ignore=shutil.ignore_patterns("ae"))
    with pytest.raises(config_lib.ConfigError, match="latents.npz not found"):
        align_stage.train(align_configs.get_config("tiny"), workdir)


def test_bad_loss_name_is_a_clear_error():
    config = align_configs.get_config("tiny")
    config.loss = "triplet"
    with pytest.raises(config_lib.ConfigError, match="config.loss must be one of"):
        align_stage.check_config(config)


def test_imagenet_preset_is_the_thesis_setup():
    c = align_configs.get_config("imagenet")
    assert c.stage == "align" and c.encoder.kind == "clip" and c.encoder.clip_path
    assert c.results.dim == 512  # the thesis's result embedding
    assert len(c.encoder.clip_mean) == len(c.encoder.clip_std) == 3
    t = c.train
    assert t.batch_size <= c.retrieval_batch and t.warmup_steps < t.steps
    assert t.checkpoint_every <= t.steps and t.log_every <= t.steps
    align_stage.check_config(c)
    for preset in ("tiny", None):
        align_stage.check_config(align_configs.get_config(preset))
    with pytest.raises(ValueError):
        align_configs.get_config("huge")


def test_soft_binned_aligner_moves_z_proj_continuously_with_the_target_loss(fake_ae, tmp_path):
    workdir = _copy(fake_ae, tmp_path, "soft")
    config = align_configs.get_config("tiny")
    config.results.soft = True
    config.train.steps = config.train.log_every = config.train.checkpoint_every = 20
    metrics = run_stage(config, workdir)
    assert np.isfinite(metrics["val_loss_readout_r2"])
    assert np.isfinite(metrics["train_loss_readout_r2_true_z"])
    a = align.load(workdir)
    enc = encoders.dataset_encoder(config_lib.load(workdir, "align"), workdir)
    c = a.stats["loss_centres"]
    losses_ = np.linspace(c[0], c[-1], 9).astype(np.float32)
    z = a.project(np.stack([enc.task_features((0, 1, 2))] * 9), losses_)
    steps = np.linalg.norm(np.diff(z, axis=0), axis=1)
    assert np.all(steps > 0)  # every loss change moves z_proj (hard bins would be piecewise constant)
    mid = a.project(enc.task_features((0, 1, 2))[None], np.array([0.5 * (c[0] + c[1])], np.float32))
    ends = a.project(np.stack([enc.task_features((0, 1, 2))] * 2), c[:2])
    assert a.bins(np.array([0.5 * (c[0] + c[1])])).shape == (1, 1, len(c))
    assert np.all(np.isfinite(mid)) and np.all(np.isfinite(ends))
