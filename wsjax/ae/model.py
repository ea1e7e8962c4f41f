"""MLP autoencoder over concatenated, normalised PCA coefficients.

With `linear=True` each side is a linear map plus an MLP residual whose last layer starts at
zero: initialised from the (whitened) PCA of the train coefficients (`pca_init`), the AE starts
as the best linear autoencoder and training only has to improve on it. With ~10^2 models and
~10^3-10^4 coefficients a plain MLP memorises the train models instead (measured in ae/report.md).
"""
from typing import Sequence

import flax.linen as nn
import numpy as np
import scipy.linalg


class MLP(nn.Module):
    features: Sequence[int]
    activation: str = "gelu"
    zero_last: bool = False

    @nn.compact
    def __call__(self, x):
        act = getattr(nn, self.activation)
        for i, f in enumerate(self.features):
            last = i == len(self.features) - 1
            init = nn.initializers.zeros if last and self.zero_last else nn.linear.default_kernel_init
            x = nn.Dense(f, kernel_init=init, name=f"dense{i}")(x)
            if not last:
                x = act(nn.LayerNorm(name=f"norm{i}")(x))
        return x


class AutoEncoder(nn.Module):
    """K normalised coefficients -> z [latent_dim] -> K; the decoder mirrors the encoder."""
    num_coeffs: int
    hidden: Sequence[int]
    latent_dim: int
    activation: str = "gelu"
    linear: bool = True

    def setup(self):
        self.encoder = MLP(tuple(self.hidden) + (self.latent_dim,), self.activation, self.linear)
        self.decoder = MLP(tuple(reversed(self.hidden)) + (self.num_coeffs,), self.activation,
                           self.linear)
        if self.linear:
            self.enc_lin = nn.Dense(self.latent_dim, name="enc_lin")
            self.dec_lin = nn.Dense(self.num_coeffs, name="dec_lin")

    def encode(self, x):
        return self.encoder(x) + (self.enc_lin(x) if self.linear else 0.0)

    def decode(self, z):
        return self.decoder(z) + (self.dec_lin(z) if self.linear else 0.0)

    def __call__(self, x):
        return self.decode(self.encode(x))


def build(config, num_coeffs):
    return AutoEncoder(num_coeffs=int(num_coeffs), hidden=tuple(int(h) for h in config.hidden),
                       latent_dim=int(config.latent_dim), activation=config.activation,
                       linear=bool(config.linear))


def pca_init(params, x_train, latent_dim, shrinkage=0.0):
    """Params whose linear paths are the whitened top-`latent_dim` eigenvectors of the train
    covariance shrunk toward its diagonal, (1 - a) S + a diag(S), of x_train [N, K]:
    z = x V / sqrt(l), x = z sqrt(l) V^T; unit-variance latents. Shrinkage lets latents beyond the
    N - 1 train directions keep the highest-variance coordinates, which held-out models use."""
    x = np.asarray(x_train, np.float64)
    x = x - x.mean(0)
    if shrinkage > 0:
        cov = x.T @ x / len(x)
        cov = (1 - shrinkage) * cov + shrinkage * np.diag(np.diag(cov))
        # only the top latent_dim pairs: LAPACK's evr subset, 1.8x faster than all K at K=6,147
        top = min(latent_dim, len(cov))
        lam, v = scipy.linalg.eigh(cov, subset_by_index=[len(cov) - top, len(cov) - 1], driver="evr")
        lam, vt = lam[::-1], v[:, ::-1].T
    else:
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        lam = s ** 2 / len(x)
    d = min(latent_dim, len(lam))
    scale = np.sqrt(np.maximum(lam[:d], 0))
    keep = scale > 1e-6 * scale[0]
    enc = np.zeros((x.shape[1], latent_dim), np.float32)
    dec = np.zeros((latent_dim, x.shape[1]), np.float32)
    enc[:, :d][:, keep] = (vt[:d][keep] / scale[keep, None]).T
    dec[:d][keep] = vt[:d][keep] * scale[keep, None]
    params = dict(params)
    params["enc_lin"] = dict(kernel=enc, bias=np.zeros(latent_dim, np.float32))
    params["dec_lin"] = dict(kernel=dec, bias=np.zeros(x.shape[1], np.float32))
    return params
