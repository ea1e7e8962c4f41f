"""Generator stage: fits every conditional generator on the zoo's train snapshots.

    generator/state/        Orbax: latent, ridge maps, path model, flow denoiser params
    generator/meta.json     loss-bump centres, dims, flow scale
    generator/metrics.json  latent fidelity on held-out models, fit quality on val models

Generators (all in one latent: the top principal directions of the train snapshots' PCA
coefficients, no wider than their span and not whitened):
- 'ridge': z = ridge([class slots, log-loss bumps, their products]);
- 'path': the class set's predicted training path, met where the loss it achieves (a curve
  learnt by cross-fitting over train class sets) reaches the requested loss;
- 'flow': conditional flow matching, diverse samples;
- the thesis's align + AE decoder stays in `wsjax.sample.generate` ('thesis').
"""
import functools
import json
import os

import jax
import numpy as np

from wsjax import data, models, pca
from wsjax.common import config as config_lib
from wsjax.common import io, checkpoints, threads
from wsjax.common.config import require
from wsjax.generator import features, flow, linear, select
from wsjax.generator import path as path_lib
from wsjax.zoo import snapshots

STAGE = "generator"


def check_config(config):
    require(config.latent_dim >= 1, f"config.latent_dim must be >= 1, got {config.latent_dim}")
    require(config.l2 > 0, f"config.l2 must be > 0, got {config.l2}")
    require(config.loss_bumps.num >= 2, f"config.loss_bumps.num must be >= 2, got {config.loss_bumps.num}")
    require(config.loss_bumps.width > 0,
            f"config.loss_bumps.width must be > 0, got {config.loss_bumps.width}")
    require(config.cross_fit.folds >= 2, f"config.cross_fit.folds must be >= 2, got {config.cross_fit.folds}")
    for name in ("hidden", "depth", "steps", "batch_size", "sample_steps"):
        require(config.flow[name] >= 1, f"config.flow.{name} must be >= 1, got {config.flow[name]}")


def zoo_table(workdir):
    """(manifest rows, their PCA coefficients [S, K]) for every ok snapshot, manifest order."""
    rows = snapshots.read_manifest(workdir)
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


def cross_fit(config, cls, z, sets, achieved):
    """Achieved log val (and train) losses [S, J] along the predicted paths of the S train class
    sets, each path predicted by a ridge fitted without that class set (`config.cross_fit.folds`
    folds over class sets), and whether the set was composable [S] (`tasks.composable_folds`:
    its slots all kept by sets outside its fold, as a held-out set's are); cls [M, F],
    z [M, J, d], sets [M] class set of each train model."""
    unique = sorted(set(sets))
    folds = int(config.cross_fit.folds)
    fold, composable = data.composable_folds(unique, folds, np.random.default_rng(config.seed))
    out_val, out_train, feats = {}, {}, {}
    workers = threads.workers(config)
    for f in range(folds):
        test = sorted(s for s, k in zip(unique, fold) if k == f)
        keep = np.array([s not in test for s in sets])
        ridge = path_lib.fit_latent(cls[keep], z[keep], config.l2)
        feats.update({s: cls[sets.index(s)] for s in test})
        measured = threads.in_threads(
            lambda s: achieved(s, path_lib.predict_latent(ridge, feats[s][None], z.shape[1])[0]),
            test, workers)
        for s, (train_losses, val_losses) in zip(test, measured):
            out_train[s], out_val[s] = train_losses, val_losses
    return (np.stack([feats[s] for s in unique]), np.log([out_val[s] for s in unique]),
            np.log([out_train[s] for s in unique]), composable)


def fit(config, rows, coeffs, num_classes, key, achieved):
    """Every generator fitted on the train-split rows: (arrays pytree, meta dict, flow losses).
    `achieved(classes, path [J, d]) -> (train losses [J], val losses [J])` measures a predicted
    path of a train class set once decoded (see `cross_fit`)."""
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
    traj = np.array([[pos[(r["model_id"], r["snapshot"])] for r in v]
                     for v in trajectories([rows[i] for i in train]).values()])  # [M, J] row indices
    sets = [rows[i]["classes"] for i in traj[:, 0]]
    set_feats, val_curves, train_curves, composable = cross_fit(
        config, cls[traj[:, 0]], z[traj], sets,
        lambda classes, path: achieved(classes, linear.decode(latent, path)))
    # The curve models sets whose slots other sets train, as held-out sets' are (cover_slots):
    # a set holding a slot no other set has gets a path without it, and a pessimistic curve
    # (demo seed 2: held-out sets with class 4 first met requests at 0.2 where 1.1 was predicted).
    fitted_on = composable if composable.sum() >= 2 else np.ones_like(composable)
    path = path_lib.PathModel(path_lib.fit_latent(cls[traj[:, 0]], z[traj], config.l2),
                              linear.fit_ridge(set_feats[fitted_on], val_curves[fitted_on], config.l2))
    calibration = np.polyfit(train_curves.ravel(), val_curves.ravel(), 1)  # log val vs log train
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
                calibration=[float(c) for c in calibration],
                loss_range=[float(np.exp(log_loss[train].min())), float(np.exp(log_loss[train].max()))])
    fitted = dict(flow_final_loss=float(losses[-100:].mean()),
                  unseen_set_path_end_val_loss=float(np.exp(val_curves[:, -1]).mean()),
                  unseen_set_path_end_train_loss=float(np.exp(train_curves[:, -1]).mean()),
                  composable_sets=int(composable.sum()))
    return arrays, meta, fitted


def measure_paths(config, workdir, zoo_config):
    """`achieved` for `fit`: decode a path's coefficients [J, K], recalibrate BN on the class set's
    train images, and return its (train losses, val losses) [J]."""
    dataset = data.load(zoo_config.data)
    module = models.build(zoo_config.model, zoo_config.tasks.k)
    decode = jax.jit(jax.vmap(functools.partial(pca.decode, pca.load(workdir))))
    r = config.recalibrate

    def achieved(classes, coeffs):
        stacked = jax.tree_util.tree_map(np.asarray, decode(coeffs))
        return select.losses(module, stacked, select.prompt_images(dataset, classes, config.seed),
                             data.task_split(dataset, classes, "val"),
                             num_batches=r.num_batches, batch_size=r.batch_size)

    return achieved


def fidelity(rows, coeffs, arrays):
    """How much of held-out (val/test) models' coefficients the latent keeps."""
    latent = linear.Latent(**arrays["latent"])
    held = [i for i, r in enumerate(rows) if r["split"] in ("val", "test")]
    if not held:
        return {}
    x = coeffs[held]
    resid = ((x - linear.decode(latent, linear.encode(latent, x))) ** 2).sum(1)
    return dict(heldout_energy_in_latent=float(1 - resid.sum() / ((x - latent.mean) ** 2).sum()))


def run(config, workdir):
    check_config(config)
    out_dir = config_lib.stage_dir(workdir, STAGE)
    if os.path.exists(os.path.join(out_dir, "metrics.json")):
        return json.load(open(os.path.join(out_dir, "metrics.json")))
    zoo_config = config_lib.load(workdir, "zoo")
    num_classes = data.load(zoo_config.data).num_classes
    rows, coeffs = zoo_table(workdir)
    arrays, meta, fitted = fit(config, rows, coeffs, num_classes, jax.random.key(config.seed),
                               measure_paths(config, workdir, zoo_config))
    metrics = dict(latent_dim=meta["latent_dim"], **fidelity(rows, coeffs, arrays), **fitted,
                   calibration_slope=meta["calibration"][0], calibration_intercept=meta["calibration"][1])
    checkpoints.save(os.path.join(out_dir, "state"), arrays)
    io.write_json(os.path.join(out_dir, "meta.json"), meta)
    io.write_json(os.path.join(out_dir, "metrics.json"), metrics)  # last: marks the stage done
    print("generator: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in metrics.items()))
    return metrics
