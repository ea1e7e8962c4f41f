"""Contrastive losses and the retrieval metric of the align stage.

Rows of `z_a` and `z_b` are paired: row i of one is the positive of row i of the other.
Similarities are cosines divided by a temperature, as in NT-Xent / CLIP.
"""
import jax
import jax.numpy as jnp
import numpy as np


def _unit(z, eps=1e-12):
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), eps)


def cosine_logits(z_a, z_b, temperature):
    """[N, M] cosine similarities / temperature."""
    return _unit(z_a) @ _unit(z_b).T / temperature


def nt_xent(z_a, z_b, temperature):
    """Symmetric CLIP-style NT-Xent: each row predicts its own pair among the other side's rows."""
    logits = cosine_logits(z_a, z_b, temperature)
    diag_a = jnp.diagonal(jax.nn.log_softmax(logits, axis=1))
    diag_b = jnp.diagonal(jax.nn.log_softmax(logits, axis=0))
    return -0.5 * (diag_a.mean() + diag_b.mean())


def multi_positive_infonce(z_a, z_b, group_ids, temperature):
    """Symmetric multi-positive InfoNCE: each anchor maximises the summed probability of every
    pair in its group (group_ids[i] == group_ids[j]); with all groups distinct it is `nt_xent`.

    The summed form (MIL-NCE) matters: averaging the positives' log-probabilities instead
    (SupCon's L_out) equals NT-Xent exactly whenever positives share identical inputs, as
    snapshots of one task and results bin do here.
    """
    logits = cosine_logits(z_a, z_b, temperature)
    pos = group_ids[:, None] == group_ids[None, :]
    masked = jnp.where(pos, logits, -jnp.inf)
    row = jax.nn.logsumexp(masked, axis=1) - jax.nn.logsumexp(logits, axis=1)
    col = jax.nn.logsumexp(masked, axis=0) - jax.nn.logsumexp(logits, axis=0)
    return -0.5 * (row.mean() + col.mean())


def retrieval_top1(z_query, z_keys, group_ids=None, metric="cosine"):
    """Fraction of queries i whose best key is key i (or, given `group_ids` over the keys,
    a key of query i's group). Keys beyond the queries are distractors."""
    q, k = np.asarray(z_query, np.float64), np.asarray(z_keys, np.float64)
    assert len(k) >= len(q), "every query needs its own key"
    if metric == "cosine":
        unit = lambda z: z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)  # noqa: E731
        score = unit(q) @ unit(k).T
    elif metric == "l2":
        score = -((q[:, None, :] - k[None, :, :]) ** 2).sum(-1)
    else:
        raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
    best = score.argmax(1)
    own = np.arange(len(q))
    if group_ids is None:
        return float(np.mean(best == own))
    g = np.asarray(group_ids)
    return float(np.mean(g[best] == g[own]))
