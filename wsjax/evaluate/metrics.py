"""How alike two networks behave: metrics on their logits for the same inputs."""
import numpy as np


def logit_metrics(logits_ref, logits_other):
    """dict(agreement, cosine, pearson) of logits [N, C] vs reference logits [N, C].

    agreement: share of inputs with the same argmax; cosine: mean over inputs of the cosine of the
    two logit vectors; pearson: correlation of all logit entries pooled (per-row correlation of
    3 logits is too noisy to average).
    """
    a = np.asarray(logits_ref, np.float64)
    b = np.asarray(logits_other, np.float64)
    assert a.shape == b.shape and a.ndim == 2, (a.shape, b.shape)
    agreement = float((a.argmax(-1) == b.argmax(-1)).mean())
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    cosine = float(np.mean((a * b).sum(-1) / np.maximum(norms, 1e-12)))
    ac, bc = a.ravel() - a.mean(), b.ravel() - b.mean()
    denom = np.sqrt((ac ** 2).sum() * (bc ** 2).sum())
    pearson = float((ac * bc).sum() / denom) if denom > 0 else 0.0
    return dict(agreement=agreement, cosine=cosine, pearson=pearson)


def accuracy(logits, labels):
    return float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())
