"""AE losses: MSE on normalised coefficients, layer-wise normalised error, behaviour (logit KL)."""
import jax
import jax.numpy as jnp
import numpy as np

from wsjax import pca


def layerwise_weights(raw_std, scale, segments):
    """Per-coordinate weights [K] on squared errors in normalised units (raw = normalised x
    `scale`): each segment's raw squared error over its total train variance (sum of `raw_std`^2),
    averaged over segments."""
    w = np.zeros(len(scale), np.float32)
    var, scale2 = np.asarray(raw_std, np.float64) ** 2, np.asarray(scale, np.float64) ** 2
    live = [(a, b) for _, a, b, _ in segments if b > a]
    for a, b in live:
        w[a:b] = scale2[a:b] / max(var[a:b].sum(), 1e-30) / len(live)
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


def behaviour(module, p, raw_coeffs, probes, targets, temperature, batching="unroll"):
    """Decoded networks' logits vs originals' on probe inputs. raw_coeffs [B, K] (PCA space),
    probes [B, P, H, W, C], targets [B, P, C]. 'unroll' runs the B networks one after another
    in the same jit (XLA:CPU runs vmapped convolutions as slow grouped ones); 'vmap' for GPU/TPU."""
    def one(c, x):
        return module.apply(pca.decode(p, c), x, train=False)
    if batching == "vmap":
        logits = jax.vmap(one)(raw_coeffs, probes)
    else:
        logits = jnp.stack([one(raw_coeffs[i], probes[i]) for i in range(raw_coeffs.shape[0])])
    return kl_logits(logits, targets, temperature)
