"""Truncated SVD of tall-and-wide zoo matrices x [models, dim], jitted and vmappable.

Two solvers, both returning the top `rank` singular values and right singular vectors:
- `randomized_svd`: Halko, Martinsson & Tropp (2011), Alg. 4.4/5.1: a Gaussian sketch with
  oversampling, `power_iters` subspace iterations re-orthonormalised by QR at every half-step.
- `gram_svd`: eigendecomposition of the [models, models] Gram matrix, exact and cheapest when
  models << dim (one matmul of n^2 d flops, then an n x n eigh).
"""
import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("rank", "oversample", "power_iters"))
def randomized_svd(x, rank, *, key, oversample=10, power_iters=2):
    """Top-`rank` (s [rank], vt [rank, dim]) of x [n, dim] by a randomized range finder."""
    n, d = x.shape
    r = min(rank + oversample, n, d)
    # Sketch the row space: x^T is the operator whose range we need (vt lives in R^dim).
    omega = jax.random.normal(key, (n, r), x.dtype)
    z, _ = jnp.linalg.qr(x.T @ omega)                       # [d, r]
    for _ in range(power_iters):
        # Re-orthonormalise after every product: fp32 power iterations lose small directions.
        y, _ = jnp.linalg.qr(x @ z)                         # [n, r]
        z, _ = jnp.linalg.qr(x.T @ y)                       # [d, r]
    b = x @ z                                               # [n, r]: x ~= b z^T
    u_b, s, vt_b = jnp.linalg.svd(b, full_matrices=False)   # small: [n, r]
    vt = vt_b @ z.T                                         # [r, d]
    return s[:rank], vt[:rank]


@functools.partial(jax.jit, static_argnames=("rank",))
def gram_svd(x, rank):
    """Top-`rank` (s [rank], vt [rank, dim]) of x [n, dim] from eigh of x x^T (exact)."""
    gram = x @ x.T                                          # [n, n]
    evals, evecs = jnp.linalg.eigh(gram)                    # ascending
    evals, evecs = evals[::-1][:rank], evecs[:, ::-1][:, :rank]
    vt = evecs.T @ x                                        # [rank, d], rows have norm s
    # Normalise by the row norm rather than sqrt(eval): robust where fp32 evals are inexact.
    norms = jnp.linalg.norm(vt, axis=1, keepdims=True)
    vt = vt / jnp.maximum(norms, jnp.finfo(x.dtype).tiny)
    return jnp.sqrt(jnp.maximum(evals, 0.0)), vt


def truncated_svd(x, rank, *, solver, key, oversample=10, power_iters=2):
    """Dispatch to one solver; x [n, d] or a same-shaped stack [b, n, d] (vmapped)."""
    if solver == "gram":
        fn = functools.partial(gram_svd, rank=rank)
    elif solver == "rsvd":
        fn = functools.partial(randomized_svd, rank=rank, oversample=oversample,
                               power_iters=power_iters)
    else:
        raise ValueError(f"unknown solver {solver!r}: use 'rsvd' or 'gram'")
    if solver == "gram":
        return fn(x) if x.ndim == 2 else jax.vmap(fn)(x)
    # rsvd: one key per matrix (`key` is [b] keys for a batch), so a leaf's fit does not depend
    # on which block it was stacked with.
    return fn(x, key=key) if x.ndim == 2 else jax.vmap(lambda a, k: fn(a, key=k))(x, key)
