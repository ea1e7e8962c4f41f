"""Specifications of the per-parameter PCA: solvers, modes, encode/decode, streaming, the stage."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pca as pca_configs
from configs import zoo as zoo_configs
from configs.bench import pca as bench_configs
from launch.main import run_stage
from wsjax import models, pca
from wsjax.common.config import ConfigError
from wsjax.pca import fit as fit_lib
from wsjax.pca import rsvd
from wsjax.pca import stage as pca_stage
from wsjax.zoo import snapshots


def _pca_cfg(**kw):
    c = pca_configs.get_config().pca
    c.update(kw)
    return c


def _subspace_gap(vt_a, vt_b):
    """Largest principal-angle sine between two row spaces (0 = identical)."""
    s = np.linalg.svd(np.asarray(vt_a, np.float64) @ np.asarray(vt_b, np.float64).T,
                      compute_uv=False)
    return float(np.sqrt(max(0.0, 1 - s.min() ** 2)))


@pytest.mark.parametrize("solver", ["rsvd", "gram"])
def test_truncated_svd_matches_exact_svd_on_low_rank_data(solver):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((60, 6)) * [10, 8, 6, 4, 3, 2]) @ rng.standard_normal((6, 500))
    x = (x + 1e-3 * rng.standard_normal(x.shape)).astype(np.float32)
    _, s_ref, vt_ref = np.linalg.svd(x, full_matrices=False)
    s, vt = rsvd.truncated_svd(jnp.asarray(x), 6, solver=solver, key=jax.random.key(0))
    np.testing.assert_allclose(s, s_ref[:6], rtol=1e-3)
    assert _subspace_gap(vt, vt_ref[:6]) < 1e-3
    np.testing.assert_allclose(np.asarray(vt) @ np.asarray(vt).T, np.eye(6), atol=1e-4)


def test_randomized_svd_vmaps_over_same_shaped_matrices():
    rng = np.random.default_rng(1)
    xs = np.stack([rng.standard_normal((30, 3)) @ rng.standard_normal((3, 80)) for _ in range(4)])
    keys = jax.random.split(jax.random.key(0), 4)
    s, vt = rsvd.truncated_svd(jnp.asarray(xs, jnp.float32), 3, solver="rsvd", key=keys)
    assert s.shape == (4, 3) and vt.shape == (4, 3, 80)
    for i in range(4):
        _, _, ref = np.linalg.svd(xs[i], full_matrices=False)
        assert _subspace_gap(vt[i], ref[:3]) < 1e-3


def test_mode_selection_keeps_mean_centres_small_leaves_and_compresses_the_rest():
    rng = np.random.default_rng(0)
    n = 20
    xs = {
        "constant": np.ones((n, 300), np.float32) * 0.5,
        "small": rng.standard_normal((n, 8)).astype(np.float32),
        "lowrank": (rng.standard_normal((n, 2)) @ rng.standard_normal((2, 300))).astype(np.float32),
        "fullrank": rng.standard_normal((n, 300)).astype(np.float32),
    }
    cfg = _pca_cfg(var_threshold=1e-8, dim_limit=16, explained_variance=0.99, max_components=5)
    keys = pca_stage.leaf_keys(0, list(xs))
    fits = fit_lib.fit_leaves(xs, cfg, keys)
    assert [fits[n].mode for n in xs] == ["mean", "centred", "pca", "pca"]
    assert fits["constant"].num_components == 0 and fits["small"].num_components == 8
    assert fits["lowrank"].num_components == 2          # the explained-variance target is met at rank 2
    assert fits["fullrank"].num_components == 5         # ... the cap stops a full-rank leaf


def _random_zoo(n=12, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"params/a/kernel": (4, 30), "params/a/bias": (4,), "batch_stats/bn/var": (40,),
              "params/b/kernel": (4, 30)}
    def leaf(k, s):  # running variances stay > 0, as decode floors them
        x = rng.standard_normal(s).astype(np.float32)
        return np.abs(x) + 0.1 if k.endswith("/var") else x
    return [fit_lib.nest({k: leaf(k, s) for k, s in shapes.items()}) for _ in range(n)]


def _fit_in_memory(variables, cfg, seed=0):
    shapes = fit_lib.leaf_names(variables[0])
    data = {name: np.stack([fit_lib.flatten(v)[name].reshape(-1) for v in variables])
            for name, _ in shapes}
    keys = pca_stage.leaf_keys(seed, [n for n, _ in shapes])
    fits, out = pca_stage.fit_block(data, np.ones(len(variables), bool), cfg, keys)
    return fit_lib.build(fits, shapes, cfg.var_floor), out


def test_encode_then_decode_at_full_rank_is_exact():
    variables = _random_zoo()
    p, _ = _fit_in_memory(variables, _pca_cfg(dim_limit=10, explained_variance=1.0,
                                              max_components=1000))
    assert {m for *_, m in p.segments} == {"centred", "pca"}
    for v in variables:
        back = pca.decode(p, pca.encode(p, v))
        for a, b in zip(jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(back)):
            np.testing.assert_allclose(a, b, atol=1e-4)


def test_decode_of_a_batch_equals_vmapped_decode():
    p, _ = _fit_in_memory(_random_zoo(), _pca_cfg(dim_limit=10, max_components=4))
    c = jnp.asarray(np.random.default_rng(0).standard_normal((3, p.num_coeffs)), jnp.float32)
    a, b = pca.decode(p, c), jax.vmap(lambda x: pca.decode(p, x))(c)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, atol=1e-6)


@pytest.fixture()
def zoo_copy(fake_zoo, tmp_path):
    """A private copy of the fake zoo: this file's stage runs never touch the shared fixture."""
    workdir = str(tmp_path / "wd")
    shutil.copytree(os.path.join(fake_zoo, "zoo"), os.path.join(workdir, "zoo"))
    return workdir


def test_streamed_fit_equals_in_memory_fit(zoo_copy):
    config = pca_configs.get_config("tiny")
    config.pca.solver = "rsvd"                 # the randomized path must not depend on blocking
    streamed = run_stage(config, zoo_copy)
    assert len(json.load(open(os.path.join(zoo_copy, "pca/blocks/plan.json")))["blocks"]) >= 5
    rows = snapshots.read_manifest(zoo_copy)
    variables = [snapshots.load_variables(zoo_copy, r["model_id"], r["snapshot"]) for r in rows]
    train = [v for v, r in zip(variables, rows) if r["split"] == "train"]
    in_memory, _ = _fit_in_memory(train, config.pca, config.seed)
    assert streamed.segments == in_memory.segments
    coeffs = pca.load_coeffs(zoo_copy)["coeffs"]
    for v, c in zip(variables, coeffs):
        ours = pca.decode(streamed, jnp.asarray(c))
        theirs = pca.decode(in_memory, pca.encode(in_memory, v))
        for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
            np.testing.assert_allclose(a, b, atol=1e-4)


def test_decode_is_differentiable_through_the_resnet(fake_zoo):
    workdir = fake_zoo
    rows = snapshots.read_manifest(workdir)
    variables = [snapshots.load_variables(workdir, r["model_id"], r["snapshot"])
                 for r in rows if r["split"] == "train"]
    p, _ = _fit_in_memory(variables, pca_configs.get_config("tiny").pca)
    zoo_cfg = zoo_configs.get_config("tiny")
    module = models.build(zoo_cfg.model, zoo_cfg.tasks.k)
    x = jax.random.normal(jax.random.key(0), (4, 12, 12, 1))
    target = module.apply(variables[0], x)

    def loss(c):
        return jnp.mean((module.apply(pca.decode(p, c), x) - target) ** 2)

    c = pca.encode(p, variables[1])
    g = jax.jit(jax.grad(loss))(c)
    assert g.shape == (p.num_coeffs,) and bool(jnp.all(jnp.isfinite(g)))
    assert float(jnp.abs(g).sum()) > 0


def test_stage_writes_every_output_and_rerun_is_a_noop(zoo_copy):
    config = pca_configs.get_config("tiny")
    p = run_stage(config, zoo_copy)
    out = os.path.join(zoo_copy, "pca")
    for f in ("state", "meta.json", "coeffs.npz", "summary.json", "explained_variance.png"):
        assert os.path.exists(os.path.join(out, f)), f
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["totals"]["num_coeffs"] == p.num_coeffs
    assert summary["totals"]["heldout_energy"] > 0.99   # fake zoo: rank-3 deltas
    assert set(summary["params"]) == {n for n, *_ in p.segments}
    c = pca.load_coeffs(zoo_copy)
    rows = snapshots.read_manifest(zoo_copy)
    assert c["coeffs"].shape == (len(rows), p.num_coeffs)
    assert list(c["split"]) == [r["split"] for r in rows]
    np.testing.assert_allclose(pca.encode(pca.load(zoo_copy), snapshots.load_variables(
        zoo_copy, rows[0]["model_id"], rows[0]["snapshot"])), c["coeffs"][0], atol=1e-4)
    def stamps():  # the lock records each run's holder; nothing else may change
        return {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out) if f != ".lock"}

    before = stamps()
    run_stage(config, zoo_copy)
    assert stamps() == before


def test_rerun_after_kill_gives_identical_coefficients(zoo_copy):
    config = pca_configs.get_config("tiny")
    run_stage(config, zoo_copy)
    out = os.path.join(zoo_copy, "pca")
    before = pca.load_coeffs(zoo_copy)["coeffs"]
    # Killed mid-way: half the blocks and every final output lost.
    blocks = sorted(f for f in os.listdir(os.path.join(out, "blocks")) if f.endswith(".npz"))
    for f in blocks[::2]:
        os.remove(os.path.join(out, "blocks", f))
    for f in ("summary.json", "coeffs.npz", "meta.json"):
        os.remove(os.path.join(out, f))
    shutil.rmtree(os.path.join(out, "state"))
    run_stage(config, zoo_copy)
    np.testing.assert_allclose(pca.load_coeffs(zoo_copy)["coeffs"], before, atol=1e-5)


def test_rerun_with_other_settings_is_refused_clearly(zoo_copy):
    config = pca_configs.get_config("tiny")
    config.pca.max_components = 3
    os.makedirs(os.path.join(zoo_copy, "pca", "blocks"))
    json.dump({"settings": {}}, open(os.path.join(zoo_copy, "pca", "blocks", "plan.json"), "w"))
    with pytest.raises(ConfigError, match="other settings"):
        run_stage(config, zoo_copy)


@pytest.mark.parametrize("field,value", [("dim_limit", -3), ("solver", "svd"),
                                         ("explained_variance", 1.5), ("max_components", 0)])
def test_bad_config_field_is_named_in_the_error(tmp_path, field, value):
    config = pca_configs.get_config("tiny")
    config.pca[field] = value
    with pytest.raises(ConfigError, match=f"config.pca.{field}"):
        run_stage(config, str(tmp_path))


def test_missing_zoo_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="run .* the 'zoo' stage with this --workdir first"):
        run_stage(pca_configs.get_config("tiny"), str(tmp_path))


def test_imagenet_preset_is_consistent_with_the_imagenet_zoo():
    config, zoo = pca_configs.get_config("imagenet"), zoo_configs.get_config("imagenet")
    num_snapshots = 2 * zoo.num_models
    train = 2 * (zoo.num_models - zoo.model_splits.val - zoo.model_splits.test)
    module = models.build(zoo.model, zoo.tasks.k)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    largest = max(int(np.prod(s)) for _, s in fit_lib.leaf_names(shapes))
    assert largest == 3 * 3 * 512 * 512
    assert config.pca.block_bytes >= 4 * num_snapshots * largest   # every leaf fits one block
    assert config.pca.max_components < train                   # the cap, not the rank, binds
    assert config.pca.dim_limit < largest
    pca_stage.check_config(config)


def test_bench_tiny_writes_results_with_both_methods(tmp_path):
    results = run_stage(bench_configs.get_config("tiny"), str(tmp_path))
    saved = json.load(open(tmp_path / "bench_pca" / "results.json"))
    assert saved["speedup"] == pytest.approx(results["speedup"])
    for m in ("ours_gram", "ours_rsvd", "ipca"):
        assert saved[m]["seconds"] > 0
        assert saved[m]["error_ratio"] < 1.02
