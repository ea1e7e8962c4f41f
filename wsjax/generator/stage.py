"""Generator stage: fits every conditional generator on the zoo's train snapshots.

    generator/state/        Orbax: latent, ridge maps, path model, flow denoiser params
    generator/meta.json     loss-bump centres, dims, flow scale
    generator/metrics.json  latent fidelity on held-out models, fit quality on val models

Generators (all in one latent: the top principal directions of the train snapshots' PCA
coefficients, no wider than their span and not whitened):
- 'ridge': z = ridge([class slots, log-loss bumps, their products]);
- 'path': the class set's predicted training path and loss curve, met at the requested loss;
- 'flow': conditional flow matching, diverse samples;
- the thesis's align + AE decoder stays in `wsjax.sample.generate` ('thesis').
"""
import json
import os

import jax
import numpy as np

from wsjax import data, pca
from wsjax.common import config as config_lib
from wsjax.common import store
from wsjax.common.config import require
from wsjax.generator import features, flow, linear
from wsjax.generator import path as path_lib
from wsjax.zoo import store as zoo_store

STAGE = "generator"


def check_config(config):
    require(config.latent_dim >= 1, f"config.latent_dim must be >= 1, got {config.latent_dim}")
    require(config.l2 > 0, f"config.l2 must be > 0, got {config.l2}")
    require(config.loss_bumps.num >= 2, f"config.loss_bumps.num must be >= 2, got {config.loss_bumps.num}")
    require(config.loss_bumps.width > 0, f"config.loss_bumps.width must be > 0, got {config.loss_bumps.width}")
    for name in ("hidden", "depth", "steps", "batch_size", "sample_steps"):
        require(config.flow[name] >= 1, f"config.flow.{name} must be >= 1, got {config.flow[name]}")


def zoo_table(workdir):
    """(manifest rows, their PCA coefficients [S, K]) for every ok snapshot, manifest order."""
    rows = zoo_store.read_manifest(workdir)
    c = pca.load_coeffs(workdir)
    index = {(int(m), str(s)): i for i, (m, s) in enumerate(zip(c["model_id"], c["snapshot"]))}
    rows = [r for r in rows if r["status"] == "ok"]
    missing = [r for r in rows if (r["model_id"], r["snapshot"]) not in index]
    require(not missing, f"pca/coeffs.npz lacks {len(missing)} zoo snapshots (e.g. model "
            f"{missing[0]['model_id'] if missing else ''}): rerun the pca stage on this zoo")
    return rows, c["coeffs"][[index[(r["model_id"], r["snapshot"])] for r in rows]]


def trajectories(rows):
    """{model_id: its rows in step order} for models whose schedule has the most common length."""
    by_model = {}
    for r in rows:
        by_model.setdefault(r["model_id"], []).append(r)
    length = np.bincount([len(v) for v in by_model.values()]).argmax()
    return {m: sorted(v, key=lambda r: r["step"]) for m, v in by_model.items() if len(v) == length}


def fit(config, rows, coeffs, num_classes, key):
    """Every generator fitted on the train-split rows: (arrays pytree, meta dict, flow losses)."""
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    require(len(train) >= 2, "the zoo has fewer than 2 train snapshots: nothing to fit")
    latent = linear.fit_latent(coeffs[train], int(config.latent_dim))
    z = linear.encode(latent, coeffs)
    log_loss = np.log(np.array([r["val_loss"] for r in rows], np.float32))
    cls = np.stack([features.class_features(r["classes"], num_classes) for r in rows])
    lo, hi = np.quantile(log_loss[train], [0.01, 0.99])
    centers = np.linspace(lo, hi, int(config.loss_bumps.num))
    width = float(config.loss_bumps.width)
    ridge = linear.fit_ridge(features.request_features(cls[train], log_loss[train], centers, width),
                             z[train], config.l2)
    pos = {(r["model_id"], r["snapshot"]): i for i, r in enumerate(rows)}
    traj = [[pos[(r["model_id"], r["snapshot"])] for r in v]
            for v in trajectories([rows[i] for i in train]).values()]
    traj = np.array(traj)                                  # [M, J] row indices
    path = path_lib.fit(cls[traj[:, 0]], z[traj], log_loss[traj], config.l2)
    f = config.flow
    cond = np.concatenate([cls, features.fourier(log_loss, f.num_freqs)], 1)
    flow_params, scale, losses = flow.train(
        z[train], cond[train], key=key, hidden=f.hidden, depth=f.depth, steps=f.steps,
        batch_size=f.batch_size, learning_rate=f.learning_rate)
    arrays = dict(latent=latent._asdict(), ridge=ridge._asdict(),
                  path=dict(latent=path.latent._asdict(), log_loss=path.log_loss._asdict()),
                  flow=flow_params)
    meta = dict(num_classes=int(num_classes), centers=[float(c) for c in centers], width=width,
                flow_scale=scale, path_length=int(traj.shape[1]), latent_dim=int(latent.basis.shape[0]),
                loss_range=[float(np.exp(log_loss[train].min())), float(np.exp(log_loss[train].max()))])
    return arrays, meta, losses


def fidelity(config, rows, coeffs, arrays, meta):
    """How much of held-out models the latent keeps, and how well the maps predict val models."""
    latent = linear.Latent(**arrays["latent"])
    held = [i for i, r in enumerate(rows) if r["split"] in ("val", "test")]
    out = dict(latent_dim=meta["latent_dim"])
    if held:
        x = coeffs[held]
        resid = ((x - linear.decode(latent, linear.encode(latent, x))) ** 2).sum(1)
        out["heldout_energy_in_latent"] = float(1 - resid.sum() / ((x - latent.mean) ** 2).sum())
    val = [rows[i] for i in held if rows[i]["split"] == "val"]
    if val:
        model = path_lib.PathModel(linear.Ridge(**arrays["path"]["latent"]),
                                   linear.Ridge(**arrays["path"]["log_loss"]))
        by_model = trajectories(val)
        if by_model:
            cls = np.stack([features.class_features(v[0]["classes"], meta["num_classes"])
                            for v in by_model.values()])
            true = np.log([[r["val_loss"] for r in v] for v in by_model.values()])
            _, curve = path_lib.predict(model, cls)
            if curve.shape == true.shape:
                out["val_path_log_loss_r2"] = float(
                    1 - ((curve - true) ** 2).sum() / ((true - true.mean()) ** 2).sum())
    return out


def run(config, workdir):
    check_config(config)
    out_dir = config_lib.stage_dir(workdir, STAGE)
    if os.path.exists(os.path.join(out_dir, "metrics.json")):
        return json.load(open(os.path.join(out_dir, "metrics.json")))
    zoo_config = config_lib.load(workdir, "zoo")
    num_classes = data.load(zoo_config.data).num_classes
    rows, coeffs = zoo_table(workdir)
    arrays, meta, losses = fit(config, rows, coeffs, num_classes, jax.random.key(config.seed))
    metrics = fidelity(config, rows, coeffs, arrays, meta)
    metrics["flow_final_loss"] = float(losses[-100:].mean())
    store.save(os.path.join(out_dir, "state"), arrays)
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:  # last: marks the stage done
        json.dump(metrics, f, indent=1)
    print("generator: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in metrics.items()))
    return metrics
