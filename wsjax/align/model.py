"""The shared encoder: MLP([z_dataset; z_results]) -> z_proj in the (standardised) AE latent space."""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from wsjax.encoders import results
from wsjax.encoders.results import ResultsEncoder


class AlignModel(nn.Module):
    num_bins: tuple    # bins per result (validation loss[, accuracy])
    results_dim: int
    hidden: tuple
    latent_dim: int

    @nn.compact
    def __call__(self, feats, bins):  # feats [N, k*F] standardised, bins as `results_bins`
        results = ResultsEncoder(self.num_bins, self.results_dim, name="results")(bins)
        h = jnp.concatenate([feats, results], -1)
        for i, width in enumerate(self.hidden):
            h = nn.gelu(nn.Dense(width, name=f"hidden_{i}")(h))
        return nn.Dense(self.latent_dim, name="out")(h)  # standardised latent: z = mean + std * out


def results_stats(val_loss, val_accuracy, results_cfg):
    """Quantile bin edges and centres of the results ([N] train values) the model conditions on."""
    n, none = int(results_cfg.num_bins), np.zeros(0, np.float32)
    use_acc = results_cfg.use_accuracy
    return dict(loss_edges=results.bin_edges(val_loss, n), loss_centres=results.bin_centres(val_loss, n),
                acc_edges=results.bin_edges(val_accuracy, n) if use_acc else none,
                acc_centres=results.bin_centres(val_accuracy, n) if use_acc else none)


def results_bins(stats, results_cfg, val_loss, val_accuracy=None, soft=None):
    """The results encoder's input for results [N]: int bins [N, R], or soft-bin weights [N, R, B]
    when `soft` (default: `results_cfg.soft`); R = 1 (loss) or 2 (loss, accuracy)."""
    soft = bool(results_cfg.get("soft", False)) if soft is None else soft
    values = [("loss", val_loss)] + ([("acc", val_accuracy)] if results_cfg.use_accuracy else [])
    if soft:
        return np.stack([results.soft_bins(stats[f"{k}_centres"], np.atleast_1d(v)) for k, v in values], 1)
    return np.stack([results.to_bin(stats[f"{k}_edges"], np.atleast_1d(v)) for k, v in values], 1)


def build(config, stats, latent_dim):
    """The AlignModel of `config` over the results bins in `stats` (`results_stats`)."""
    num_bins = [len(stats["loss_edges"]) + 1]
    if config.results.use_accuracy:
        num_bins.append(len(stats["acc_edges"]) + 1)
    return AlignModel(num_bins=tuple(num_bins), results_dim=int(config.results.dim),
                      hidden=tuple(int(w) for w in config.model.hidden), latent_dim=int(latent_dim))
