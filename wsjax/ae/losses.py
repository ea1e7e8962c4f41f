"""AE losses: MSE on normalised coefficients, layer-wise normalised error, behaviour (logit KL)."""
import jax
import jax.numpy as jnp
import numpy as np

from wsjax import pca


def layerwise_weights(std, segments):
    """Per-coordinate weights [K]: a segment's squared error (raw units) over its total train
    variance, averaged over segments; `std` is the per-coordinate normalisation scale."""
    w = np.zeros(len(std), np.float32)
    var = np.asarray(std, np.float64) ** 2
    live = [(a, b) for _, a, b, _ in segments if b > a]
    for a, b in live:
        w[a:b] = var[a:b] / max(var[a:b].sum(), 1e-30) / len(live)
    return w


def mse(recon, target):
    return jnp.mean((recon - target) ** 2)


def layerwise(recon, target, weights):
    return jnp.mean(jnp.sum(weights * (recon - target) ** 2, axis=-1))


def kl_logits(student, teacher, temperature):
    """KL(softmax(teacher / T) || softmax(student / T)) x T^2, mean over inputs."""
    t = jax.nn.log_softmax(teacher / temperature, -1)
    s = jax.nn.log_softmax(student / temperature, -1)
    return jnp.mean(jnp.sum(jnp.exp(t) * (t - s), -1)) * temperature ** 2


def behaviour(module, p, raw_coeffs, probes, targets, temperature):
    """Decoded networks' logits vs originals' on probe inputs. raw_coeffs [B, K] (PCA space),
    probes [B, P, H, W, C], targets [B, P, C]."""
    def one(c, x):
        return module.apply(pca.decode(p, c), x, train=False)
    logits = jax.vmap(one)(raw_coeffs, probes)
    return kl_logits(logits, targets, temperature)
