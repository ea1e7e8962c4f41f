"""Results encoder: a scalar result (validation loss, accuracy) -> quantile bin -> learnable
embedding (the thesis: 512-d per validation-loss bin). Bin edges come from the train zoo.

Soft binning (`soft_bins`) interpolates the embeddings of the two bins whose centres surround a
value, so a continuous target (any requested loss) moves z_proj continuously, not in steps."""
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


def bin_centres(values, num_bins):
    """[num_bins] each quantile bin's median: the values' quantiles at (i + 0.5) / num_bins."""
    values = np.asarray(values, np.float64)
    if num_bins < 1 or values.size == 0:
        raise ValueError(f"bin_centres needs num_bins >= 1 and values, got {num_bins} and {values.size}")
    return np.quantile(values, (np.arange(num_bins) + 0.5) / num_bins).astype(np.float32)


def soft_bins(centres, value):
    """[..., B] float32 weights: linear interpolation between the two nearest bin centres (one-hot
    at a centre, clipped to the end bins outside them); `weights @ embeddings` is the soft embedding."""
    c = np.asarray(centres, np.float64)
    v = np.clip(np.asarray(value, np.float64), c[0], c[-1])
    w = np.zeros(v.shape + (len(c),), np.float32)
    if len(c) == 1:
        w[..., 0] = 1.0
        return w
    j = np.clip(np.searchsorted(c, v, side="right") - 1, 0, len(c) - 2)
    t = (v - c[j]) / np.maximum(c[j + 1] - c[j], 1e-12)
    np.put_along_axis(w, j[..., None], (1 - t)[..., None], axis=-1)
    np.put_along_axis(w, (j + 1)[..., None], t[..., None], axis=-1)
    return w


class ResultsEncoder(nn.Module):
    """One learnable `dim`-d embedding per bin of each result; several results are concatenated."""
    num_bins: tuple  # bins per result, e.g. (num_loss_bins,) or (num_loss_bins, num_acc_bins)
    dim: int

    @nn.compact
    def __call__(self, bins):
        """bins: int [N, R] (hard bins) or float [N, R, B] (`soft_bins` weights) -> [N, R * dim]."""
        soft = not jnp.issubdtype(bins.dtype, jnp.integer)
        out = []
        for i, n in enumerate(self.num_bins):
            embed = nn.Embed(n, self.dim, name=f"embed_{i}")
            out.append(bins[:, i, :n] @ embed.embedding if soft else embed(bins[:, i]))
        return jnp.concatenate(out, axis=-1)
