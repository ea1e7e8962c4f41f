"""Results encoder: a scalar result (validation loss, accuracy) -> quantile bin -> learnable
embedding (the thesis: 512-d per validation-loss bin). Bin edges come from the train zoo."""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def bin_edges(values, num_bins):
    """Interior edges [num_bins - 1]: the values' quantiles at 1/num_bins, ..., (num_bins-1)/num_bins."""
    values = np.asarray(values, np.float64)
    if num_bins < 1 or values.size == 0:
        raise ValueError(f"bin_edges needs num_bins >= 1 and values, got {num_bins} and {values.size}")
    return np.quantile(values, np.arange(1, num_bins) / num_bins).astype(np.float32)


def to_bin(edges, value):
    """Bin index (int32, same shape as `value`) in [0, len(edges)]; outside values clip to the ends."""
    return np.searchsorted(np.asarray(edges), np.asarray(value, np.float32), side="right").astype(np.int32)


class ResultsEncoder(nn.Module):
    """One learnable `dim`-d embedding per bin of each result; several results are concatenated."""
    num_bins: tuple  # bins per result, e.g. (num_loss_bins,) or (num_loss_bins, num_acc_bins)
    dim: int

    @nn.compact
    def __call__(self, bins):  # bins [N, len(num_bins)] int
        return jnp.concatenate([nn.Embed(n, self.dim, name=f"embed_{i}")(bins[:, i])
                                for i, n in enumerate(self.num_bins)], axis=-1)
