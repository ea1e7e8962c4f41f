"""MLP autoencoder over concatenated, normalised PCA coefficients."""
from typing import Sequence

import flax.linen as nn


class MLP(nn.Module):
    features: Sequence[int]
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x):
        act = getattr(nn, self.activation)
        for i, f in enumerate(self.features):
            x = nn.Dense(f, name=f"dense{i}")(x)
            if i < len(self.features) - 1:
                x = act(nn.LayerNorm(name=f"norm{i}")(x))
        return x


class AutoEncoder(nn.Module):
    """K normalised coefficients -> z [latent_dim] -> K; the decoder mirrors the encoder."""
    num_coeffs: int
    hidden: Sequence[int]
    latent_dim: int
    activation: str = "gelu"

    def setup(self):
        self.encoder = MLP(tuple(self.hidden) + (self.latent_dim,), self.activation)
        self.decoder = MLP(tuple(reversed(self.hidden)) + (self.num_coeffs,), self.activation)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def __call__(self, x):
        return self.decode(self.encode(x))


def build(config, num_coeffs):
    return AutoEncoder(num_coeffs=int(num_coeffs), hidden=tuple(int(h) for h in config.hidden),
                       latent_dim=int(config.latent_dim), activation=config.activation)
