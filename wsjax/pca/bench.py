"""Stage 'bench_pca': our PCA (Gram / randomized SVD, vmapped) vs scikit-learn IncrementalPCA.

Both fit the same 'pca'-mode leaves with the same k per leaf; errors are relative to exact PCA
(numpy SVD): err = ||Xc - Xc V^T V||_F^2 summed over leaves, ratio = err / err_exact.
Writes bench_pca/results.json and prints one summary line.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from wsjax.common import config as config_lib
from wsjax.common.config import require
from wsjax.pca import fit as fit_lib
from wsjax.pca import stage as pca_stage

STAGE = "bench_pca"


def synthetic_zoo(cfg):
    """{name: [snapshots, d]} with a ResNet-18's leaf shapes: per leaf mean + rank-r signal with
    singular values ~ j^-decay + isotropic noise (a shared-init zoo's spectrum, roughly)."""
    from wsjax import models
    module = models.ResNet18(num_classes=cfg.num_classes, width=cfg.width, stem=cfg.stem)
    shapes = jax.eval_shape(module.init, jax.random.key(0),
                            jnp.zeros((1, cfg.resolution, cfg.resolution, cfg.channels)))
    rng = np.random.default_rng(cfg.seed)
    n, r = cfg.num_snapshots, cfg.rank
    data = {}
    for name, shape in fit_lib.leaf_names(shapes):
        d = int(np.prod(shape))
        sig = (np.arange(1, r + 1) ** -cfg.decay).astype(np.float32)
        z = rng.standard_normal((n, r), np.float32) * sig
        w = rng.standard_normal((r, d), np.float32) / np.sqrt(d)
        x = z @ w + cfg.noise * rng.standard_normal((n, d), np.float32) / np.sqrt(d)
        data[name] = x + rng.standard_normal(d, np.float32) * 0.1
    return data


def zoo_leaves(workdir):
    """{name: [train snapshots, d]} of an existing zoo in workdir (train split, status ok)."""
    from wsjax.zoo import snapshots
    rows = [r for r in snapshots.read_manifest(workdir)
            if r["split"] == "train" and r["status"] == "ok"]
    require(len(rows) >= 2, f"{snapshots.zoo_dir(workdir)} has fewer than 2 train snapshots")
    shapes = dict(fit_lib.leaf_names(snapshots.load_variables(
        workdir, rows[0]["model_id"], rows[0]["snapshot"])))
    return pca_stage.read_leaves(workdir, rows, list(shapes), shapes)


def residual(x, vt):
    """||x - x vt^T vt||_F^2 for centred x [n, d] and orthonormal rows vt [k, d] (float64)."""
    x, vt = np.asarray(x, np.float64), np.asarray(vt, np.float64)
    return float(((x - (x @ vt.T) @ vt) ** 2).sum())


def ours(xs, pca_cfg, seed):
    """Our fit of every leaf (timed end to end, blocking on the result)."""
    keys = pca_stage.leaf_keys(seed, list(xs))
    start = time.perf_counter()
    fits = fit_lib.fit_leaves(xs, pca_cfg, keys)
    jax.block_until_ready([f.basis for f in fits.values()])
    return time.perf_counter() - start, {n: f.basis for n, f in fits.items()}


def ipca(xs, k, batch_size):
    from sklearn.decomposition import IncrementalPCA
    start = time.perf_counter()
    out = {}
    for n, x in tqdm(xs.items(), desc="IncrementalPCA", unit="leaf", leave=False):
        m = IncrementalPCA(n_components=k, batch_size=batch_size or None).fit(x)
        out[n] = m.components_
    return time.perf_counter() - start, out


def exact(xs, k):
    start = time.perf_counter()
    out = {}
    for n, x in xs.items():
        out[n] = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][:k]
    return time.perf_counter() - start, out


def run(config, workdir):
    cfg = config.bench
    require(cfg.source in ("synthetic", "zoo"),
            f"config.bench.source must be 'synthetic' or 'zoo', got {cfg.source!r}")
    require(cfg.components >= 1, f"config.bench.components must be >= 1, got {cfg.components}")
    require(cfg.repeats >= 1, f"config.bench.repeats must be >= 1, got {cfg.repeats}")
    out_dir = config_lib.stage_dir(workdir, STAGE)
    data = synthetic_zoo(cfg.synthetic) if cfg.source == "synthetic" else zoo_leaves(workdir)
    xs = {n: x for n, x in data.items() if x.shape[1] > cfg.dim_limit}
    n = next(iter(xs.values())).shape[0]
    k = min(cfg.components, n - 1)
    logging.info("bench_pca: %d leaves, %d snapshots, %d values, k=%d", len(xs), n,
                 sum(x.shape[1] for x in xs.values()), k)
    # Fixed k for every method: explained_variance 1 with the cap = k.
    base = dict(var_threshold=0.0, dim_limit=cfg.dim_limit, explained_variance=1.0,
                max_components=k, oversample=cfg.oversample, power_iters=cfg.power_iters)
    centred = {nm: x - x.mean(0) for nm, x in xs.items()}
    t_exact, v_exact = exact(xs, k)
    err_exact = sum(residual(centred[nm], v_exact[nm]) for nm in xs)
    total = float(sum((c.astype(np.float64) ** 2).sum() for c in centred.values()))

    results = dict(source=cfg.source, snapshots=n, leaves=len(xs),
                   values=int(sum(x.shape[1] for x in xs.values())), components=k,
                   backend=jax.default_backend(), exact=dict(seconds=t_exact, error=err_exact,
                                                             relative_error=err_exact / total))
    for solver in cfg.solvers:
        pca_cfg = ml_collections.ConfigDict(dict(base, solver=solver))
        cold, _ = ours(xs, pca_cfg, config.seed)              # includes jit compilation
        warm, v = min((ours(xs, pca_cfg, config.seed) for _ in range(cfg.repeats)),
                      key=lambda tv: tv[0])
        err = sum(residual(centred[nm], v[nm]) for nm in xs)
        results[f"ours_{solver}"] = dict(seconds=warm, seconds_with_compile=cold, error=err,
                                         error_ratio=err / err_exact)
    t_ipca, v_ipca = ipca(xs, k, cfg.ipca_batch_size)
    err = sum(residual(centred[nm], v_ipca[nm]) for nm in xs)
    results["ipca"] = dict(seconds=t_ipca, error=err, error_ratio=err / err_exact,
                           batch_size=cfg.ipca_batch_size or "sklearn default (5 x n_features)")
    best = min(cfg.solvers, key=lambda s: results[f"ours_{s}"]["seconds"])
    results["best"] = best
    results["speedup"] = t_ipca / results[f"ours_{best}"]["seconds"]
    results["speedup_with_compile"] = t_ipca / results[f"ours_{best}"]["seconds_with_compile"]
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    ob = results[f"ours_{best}"]
    line = (f"bench_pca: ours ({best}) {ob['seconds']:.3f}s (cold {ob['seconds_with_compile']:.2f}s) "
            f"vs IncrementalPCA {t_ipca:.2f}s = {results['speedup']:.1f}x faster "
            f"({results['speedup_with_compile']:.1f}x with compile); error vs exact: ours "
            f"{ob['error_ratio']:.4f}x, IPCA {results['ipca']['error_ratio']:.4f}x "
            f"[{n} snapshots, {len(xs)} leaves, {results['values']} values, k={k}]")
    print(line)
    logging.info(line)
    return results
