import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import ae as ae_configs
from configs import pca as pca_configs
from conftest import fake_zoo_copy
from wsjax import ae, models, pca, stages
from wsjax.ae import losses
from wsjax.ae import stage as ae_stage
from wsjax.common import config as config_lib
from wsjax.common import io
from wsjax.zoo import snapshots


@pytest.fixture(scope="module")
def pca_workdir(fake_zoo, tmp_path_factory):
    """A copy of the fake zoo with its PCA fitted (the shared fixture stays untouched)."""
    return fake_zoo_copy(fake_zoo, tmp_path_factory, "ae", pca_configs.get_config("tiny"))


def _tiny(behaviour=1.0, **train):
    c = ae_configs.get_config("tiny")
    c.train.update(train)
    c.loss.behaviour = behaviour
    # vmapped behaviour nets compile in ~10 s where 4 unrolled ones take ~60 s on XLA:CPU; the
    # two batchings are checked equal below
    c.loss.batching = "vmap"
    return c


def _copy(src, dst):
    shutil.copytree(src, dst)
    shutil.rmtree(os.path.join(dst, "ae"), ignore_errors=True)
    return str(dst)


def _pca_and_net(workdir):
    """(PCA, its coefficients, the zoo's ResNet module) of `workdir`."""
    zc = config_lib.load(workdir, "zoo")
    return pca.load(workdir), pca.load_coeffs(workdir), models.build(zc.model, zc.tasks.k)


def test_behaviour_loss_gradient_is_finite_and_steps_lower_it(pca_workdir):
    p, co, net = _pca_and_net(pca_workdir)
    probes = jax.random.normal(jax.random.key(0), (2, 8, 12, 12, 1))
    targets = jnp.stack([net.apply(snapshots.load_variables(pca_workdir, int(m), "final"), x)
                         for m, x in zip(co["model_id"][[1, 3]], probes)])
    coeffs = jnp.asarray(co["coeffs"][[1, 3]]) + 0.5 * jnp.asarray(co["coeffs"].std(0))

    loss_and_grad = jax.jit(jax.value_and_grad(
        lambda c: losses.behaviour(net, p, c, probes, targets, 2.0, "vmap")))
    tx = optax.adam(1e-2)
    opt = tx.init(coeffs)
    first, grad = loss_and_grad(coeffs)
    assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad).sum()) > 0
    for _ in range(5):
        updates, opt = tx.update(grad, opt)
        coeffs = optax.apply_updates(coeffs, updates)
        last, grad = loss_and_grad(coeffs)
    assert float(last) < float(first)


def test_unrolled_and_vmapped_behaviour_loss_agree(pca_workdir):
    p, co, net = _pca_and_net(pca_workdir)
    probes = jax.random.normal(jax.random.key(1), (2, 4, 12, 12, 1))
    targets = jax.random.normal(jax.random.key(2), (2, 4, 3))
    c = jnp.asarray(co["coeffs"][:2])
    np.testing.assert_allclose(losses.behaviour(net, p, c, probes, targets, 2.0, "unroll"),
                               losses.behaviour(net, p, c, probes, targets, 2.0, "vmap"), rtol=1e-4)


def test_stage_writes_outputs_and_load_round_trips(pca_workdir, tmp_path):
    workdir = _copy(pca_workdir, tmp_path / "w")
    stages.run_stage(_tiny(), workdir)
    for f in ("metrics.json", "report.md", "latents.npz", "reconstruction.png", "log.jsonl"):
        assert os.path.exists(os.path.join(workdir, "ae", f)), f
    b = ae.load(workdir)
    co = pca.load_coeffs(workdir)
    z = b.encode(co["coeffs"])
    assert z.shape == (len(co["coeffs"]), ae_configs.get_config("tiny").model.latent_dim)
    assert b.decode(z).shape == co["coeffs"].shape
    lat = np.load(os.path.join(workdir, "ae", "latents.npz"))
    np.testing.assert_allclose(lat["z"], np.asarray(z), rtol=1e-5, atol=1e-5)
    assert (lat["model_id"] == co["model_id"]).all() and (lat["split"] == co["split"]).all()
    m = json.load(open(os.path.join(workdir, "ae", "metrics.json")))
    # the checkpoint is selected on val models: test models are scored apart, never pooled with them
    assert m["selection"]["checkpoint"] == "val" and m["ae"]["selected_on"] == "val"
    assert m["test"]["num_models"] == m["val"]["num_models"] == 1  # the fake zoo's final snapshots
    assert [r["split"] for r in m["per_model"]] == ["val", "test"]
    for split in ("test", "val"):
        for k in ("pca", "pca+ae", "copy", "mean", "pca+recal", "pca+ae+recal"):
            assert 0 <= m[split][k]["real_agreement"] <= 1 and -1 <= m[split][k]["real_cosine"] <= 1
        # The fake zoo lies in a rank-3 span: PCA reconstruction of held-out models is exact.
        assert m[split]["pca"]["real_agreement"] == 1.0
    report = open(os.path.join(workdir, "ae", "report.md")).read()
    assert "| pca+ae |" in report and "## test models (never used for any selection)" in report
    assert "## val models (the AE checkpoint was selected on these: optimistic)" in report
    # Rerun after completion is a no-op.
    before = os.path.getmtime(os.path.join(workdir, "ae", "metrics.json"))
    stages.run_stage(_tiny(), workdir)
    assert os.path.getmtime(os.path.join(workdir, "ae", "metrics.json")) == before


def test_rerun_after_kill_gives_identical_final_state(pca_workdir, tmp_path, monkeypatch):
    cfg = dict(steps=12, checkpoint_every=4, log_every=2, warmup_steps=2, behaviour=0.0)
    full = _copy(pca_workdir, tmp_path / "full")
    stages.run_stage(_tiny(**cfg), full)

    killed = _copy(pca_workdir, tmp_path / "killed")
    real_write = io.MetricWriter.write

    def killing_write(self, step, **metrics):
        real_write(self, step, **metrics)
        if step == 6 and "loss" in metrics:  # after the step-4 checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(io.MetricWriter, "write", killing_write)
    with pytest.raises(KeyboardInterrupt):
        stages.run_stage(_tiny(**cfg), killed)
    assert not os.path.exists(os.path.join(killed, "ae", "metrics.json"))
    monkeypatch.setattr(io.MetricWriter, "write", real_write)
    stages.run_stage(_tiny(**cfg), killed)
    a, b = ae.load(full), ae.load(killed)
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    def steps(workdir):  # the resumed log reads like an unbroken one
        return [json.loads(line)["step"] for line in open(os.path.join(workdir, "ae", "log.jsonl"))]

    assert steps(killed) == steps(full)


def test_presets_are_consistent_and_bad_fields_are_named():
    for preset in ("tiny", None, "imagenet"):
        c = ae_configs.get_config(preset)
        ae_stage.check_config(c)
        assert c.stage == "ae" and c.loss.behaviour_models <= c.train.batch_size
        assert c.train.warmup_steps < c.train.steps and c.train.checkpoint_every <= c.train.steps
    big = ae_configs.get_config("imagenet")
    assert big.loss.batching == "vmap" and big.model.shrinkage == 0.0
    with pytest.raises(ValueError):
        ae_configs.get_config("huge")
    c = ae_configs.get_config("tiny")
    c.model.latent_dim = 0
    with pytest.raises(config_lib.ConfigError, match="config.model.latent_dim"):
        ae_stage.check_config(c)


def test_missing_pca_is_one_clear_error(fake_zoo, tmp_path):
    workdir = _copy(fake_zoo, tmp_path / "nopca")
    shutil.rmtree(os.path.join(workdir, "pca"), ignore_errors=True)
    with pytest.raises(config_lib.ConfigError, match="pca"):
        stages.run_stage(_tiny(), workdir)


def test_linear_init_is_the_whitened_top_eigenbasis_of_the_shrunk_covariance():
    from wsjax.ae import model as model_lib
    x = np.random.default_rng(0).normal(size=(20, 30)) * np.linspace(3, 0.1, 30)
    params = model_lib.pca_init({}, x, latent_dim=6, shrinkage=0.1)
    c = (x - x.mean(0)).T @ (x - x.mean(0)) / len(x)
    lam, v = np.linalg.eigh(0.9 * c + 0.1 * np.diag(np.diag(c)))
    enc, dec = params["enc_lin"]["kernel"], params["dec_lin"]["kernel"]
    top, scale = v[:, ::-1][:, :6], np.sqrt(lam[::-1][:6])
    np.testing.assert_allclose(np.abs(top.T @ (enc * scale)), np.eye(6), atol=1e-4)
    np.testing.assert_allclose(dec @ enc, np.eye(6), atol=1e-4)  # decode(encode(.)) on the span
