"""Per-named-parameter PCA with mode selection (thesis Alg. 3.1), fitted block by block.

Each named leaf of {'params', 'batch_stats'} gets one mode:
  'mean'    variance across train snapshots < var_threshold: store the mean, 0 coefficients;
  'centred' size <= dim_limit: store the mean, the centred values are the coefficients;
  'pca'     top-k principal directions, k = min(first k reaching explained_variance, max_components).
BatchNorm running statistics are leaves like any other (DESIGN.md's measured study fitted them
together with the parameters); `decode` floors running variances at `var_floor` so a decoded
network never takes rsqrt of a negative number. Sampled models are recalibrated later anyway.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from wsjax.pca import rsvd

MODES = ("mean", "centred", "pca")


@struct.dataclass
class PCA:
    """The fitted PCA; arrays are pytree leaves, layout is static."""
    mean: dict     # name -> [d]
    basis: dict    # name -> [k, d] (rows orthonormal), 'pca' leaves only
    segments: tuple = struct.field(pytree_node=False)  # ((name, start, stop, mode), ...)
    shapes: tuple = struct.field(pytree_node=False)    # ((name, shape), ...), same order
    var_floor: float = struct.field(pytree_node=False, default=1e-5)

    @property
    def num_coeffs(self):
        return self.segments[-1][2] if self.segments else 0


def leaf_names(variables):
    """[(name, shape)] of a variables tree in flatten order; name like 'params/fc/kernel'."""
    flat, _ = jax.tree_util.tree_flatten_with_path(variables)
    return [("/".join(k.key for k in path), tuple(np.shape(x))) for path, x in flat]


def nest(flat):
    """{'a/b/c': x} -> {'a': {'b': {'c': x}}}."""
    out = {}
    for name, x in flat.items():
        node = out
        *parents, last = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = x
    return out


def flatten(tree):
    """Inverse of `nest` for a variables tree."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(k.key for k in path): x for path, x in flat}


def encode(p, variables):
    """variables -> coefficients [K] (leading batch axes of the leaves are kept: [..., K])."""
    flat = flatten(variables)
    parts = []
    for (name, _, _, mode), (_, shape) in zip(p.segments, p.shapes):
        if mode == "mean":
            continue
        x = jnp.asarray(flat[name], jnp.float32)
        x = x.reshape(x.shape[:x.ndim - len(shape)] + (-1,)) - p.mean[name]
        parts.append(x @ p.basis[name].T if mode == "pca" else x)
    return jnp.concatenate(parts, axis=-1)


def decode(p, coeffs):
    """coefficients [..., K] -> variables tree (pure jnp: jittable, differentiable, vmappable)."""
    batch = coeffs.shape[:-1]
    flat = {}
    for (name, start, stop, mode), (_, shape) in zip(p.segments, p.shapes):
        mean = p.mean[name]
        if mode == "mean":
            x = jnp.broadcast_to(mean, batch + mean.shape)
        elif mode == "centred":
            x = mean + coeffs[..., start:stop]
        else:
            x = mean + coeffs[..., start:stop] @ p.basis[name]
        x = x.reshape(batch + tuple(shape))
        if name.startswith("batch_stats/") and name.endswith("/var"):
            x = jnp.maximum(x, p.var_floor)
        flat[name] = x
    return nest(flat)


@dataclasses.dataclass
class LeafFit:
    """One leaf's fit: what the PCA keeps plus the numbers the summary reports."""
    name: str
    mode: str
    mean: np.ndarray            # [d]
    basis: np.ndarray           # [k, d] ('pca'), else [0, d]
    variance: float             # mean per-coordinate variance over train snapshots
    explained: np.ndarray       # cumulative explained-variance ratio of the solved components

    @property
    def num_components(self):
        return int(self.mean.shape[0]) if self.mode == "centred" else int(self.basis.shape[0])


def solve_rank(n, d, pca_cfg):
    """Components solved before the explained-variance cut: centred data has rank <= n - 1."""
    return max(1, min(int(pca_cfg.max_components), n - 1, d))


def choose_solver(n, rank, pca_cfg):
    """'auto': rsvd only where its sketch is much thinner than the Gram matrix (bench_pca)."""
    if pca_cfg.solver != "auto":
        return pca_cfg.solver
    sketch = rank + int(pca_cfg.oversample)
    return "rsvd" if sketch * (2 * int(pca_cfg.power_iters) + 3) < n else "gram"


@functools.partial(jax.jit, static_argnames=("rank", "solver", "oversample", "power_iters"))
def _decompose(x, keys, *, rank, solver, oversample, power_iters):
    """Fused per-leaf fit of a same-shaped stack x [b, n, d]: one jitted program computes the
    mean, the variance and the top-`rank` spectrum of the centred rows (no host round trips)."""
    mean = x.mean(1)                                                  # [b, d]
    xc = x - mean[:, None]
    total = jnp.sum(xc * xc, axis=(1, 2))                             # [b]
    s, vt = rsvd.truncated_svd(xc, rank, solver=solver, key=keys, oversample=oversample,
                               power_iters=power_iters)
    return mean, total / (x.shape[1] * x.shape[2]), jnp.cumsum(s ** 2, axis=1) / total[:, None], vt


def fit_leaves(xs, pca_cfg, keys):
    """Fits leaves of one block. xs: {name: [n_train, d] float32}; keys: {name: PRNG key}.

    Leaves larger than dim_limit are decomposed in one vmapped call per shape (their mode falls
    back to 'mean' if their variance is below the threshold); smaller ones only need moments.
    """
    fits, pending = {}, {}
    for name, x in xs.items():
        n, d = x.shape
        if d <= pca_cfg.dim_limit:
            mean = x.mean(0)
            variance = float(((x - mean) ** 2).mean())
            mode = "mean" if variance < pca_cfg.var_threshold else "centred"
            fits[name] = LeafFit(name, mode, mean, np.zeros((0, d), np.float32), variance,
                                 np.ones(1, np.float32))
        else:
            pending.setdefault(d, []).append(name)
    for d, names in pending.items():
        n = xs[names[0]].shape[0]
        rank = solve_rank(n, d, pca_cfg)
        mean, variance, explained, vt = _decompose(
            jnp.stack([xs[m] for m in names]), jnp.stack([keys[m] for m in names]), rank=rank,
            solver=choose_solver(n, rank, pca_cfg), oversample=int(pca_cfg.oversample),
            power_iters=int(pca_cfg.power_iters))
        mean, variance, explained, vt = map(np.asarray, (mean, variance, explained, vt))
        for i, m in enumerate(names):
            if variance[i] < pca_cfg.var_threshold:
                fits[m] = LeafFit(m, "mean", mean[i], np.zeros((0, d), np.float32),
                                  float(variance[i]), np.ones(1, np.float32))
                continue
            # Smallest k whose cumulative ratio reaches the target, capped by the solved rank.
            k = int(min(np.searchsorted(explained[i], pca_cfg.explained_variance) + 1, rank))
            fits[m] = LeafFit(m, "pca", mean[i], vt[i, :k], float(variance[i]), explained[i])
    return fits


def project(fit, x):
    """Coefficients [S, k] and reconstruction [S, d] of rows x [S, d] under one leaf's fit."""
    xc = x - fit.mean
    if fit.mode == "mean":
        return np.zeros((x.shape[0], 0), np.float32), np.broadcast_to(fit.mean, x.shape)
    if fit.mode == "centred":
        return xc, x
    c = xc @ fit.basis.T
    return c, c @ fit.basis + fit.mean


def build(fits, shapes, var_floor):
    """PCA pytree from per-leaf fits, segments in `shapes` order (the variables' flatten order)."""
    segments, start = [], 0
    for name, _ in shapes:
        n = fits[name].num_components if fits[name].mode != "mean" else 0
        segments.append((name, start, start + n, fits[name].mode))
        start += n
    mean = {name: jnp.asarray(fits[name].mean) for name, _ in shapes}
    basis = {name: jnp.asarray(fits[name].basis) for name, _ in shapes
             if fits[name].mode == "pca"}
    return PCA(mean=mean, basis=basis, segments=tuple(segments),
               shapes=tuple((n, tuple(s)) for n, s in shapes), var_floor=float(var_floor))
