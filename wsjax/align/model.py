"""The shared encoder: MLP([z_dataset; z_results]) -> z_proj in the (standardised) AE latent space."""
import flax.linen as nn
import jax.numpy as jnp

from wsjax.encoders.results import ResultsEncoder


class AlignModel(nn.Module):
    num_bins: tuple    # bins per result (validation loss[, accuracy])
    results_dim: int
    hidden: tuple
    latent_dim: int

    @nn.compact
    def __call__(self, feats, bins):  # feats [N, k*F] standardised, bins [N, len(num_bins)] int
        h = jnp.concatenate([feats, ResultsEncoder(self.num_bins, self.results_dim, name="results")(bins)], -1)
        for i, width in enumerate(self.hidden):
            h = nn.gelu(nn.Dense(width, name=f"hidden_{i}")(h))
        return nn.Dense(self.latent_dim, name="out")(h)  # standardised latent: z = mean + std * out


def build(config, num_bins, latent_dim):
    return AlignModel(num_bins=tuple(int(n) for n in num_bins), results_dim=int(config.results.dim),
                      hidden=tuple(int(w) for w in config.model.hidden), latent_dim=int(latent_dim))
