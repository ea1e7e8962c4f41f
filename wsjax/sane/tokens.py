"""A zoo ResNet-18's variables as a token sequence (SANE), and the augmentations of its views.

One token per output channel of each layer, in forward order: a conv's kernel slice for that
channel [kh * kw * c_in] followed by its BatchNorm's scale, bias, running mean and variance; the
classifier's kernel column and bias. A channel longer than `token_size` spans several tokens
(chunks); every token is zero-padded to `token_size` and carries a validity mask.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

_BLOCK_LAYERS = (("conv1", "bn1"), ("conv2", "bn2"), ("down_conv", "down_bn"))


def layers(params):
    """[(block, conv, bn)] in forward order; block None is the top level, bn None the classifier."""
    out = [(None, "conv1", "bn1")]
    for block in sorted(k for k in params if k.startswith("layer")):
        out += [(block, conv, bn) for conv, bn in _BLOCK_LAYERS if conv in params[block]]
    return out + [(None, "fc", None)]


def _get(tree, block, name):
    return tree[name] if block is None else tree[block][name]


def channel_vectors(variables):
    """[[C, n] per layer]: each output channel's values, as one row."""
    params, stats = variables["params"], variables["batch_stats"]
    out = []
    for block, conv, bn in layers(params):
        kernel = _get(params, block, conv)["kernel"]
        rows = kernel.reshape(-1, kernel.shape[-1]).T  # [C, kh * kw * c_in] (or [C, in] for fc)
        if bn is None:
            extra = [_get(params, block, conv)["bias"]]
        else:
            extra = [_get(params, block, bn)["scale"], _get(params, block, bn)["bias"],
                     _get(stats, block, bn)["mean"], _get(stats, block, bn)["var"]]
        out.append(jnp.concatenate([rows] + [e[:, None] for e in extra], axis=1))
    return out


class Layout(NamedTuple):
    """Static description of a token sequence (numpy): per token its segment (layer x chunk),
    channel within its layer, and validity mask [T, token_size]."""
    token_size: int
    segment: np.ndarray   # [T] int
    channel: np.ndarray   # [T] int
    mask: np.ndarray      # [T, token_size] float32

    @property
    def num_tokens(self):
        return len(self.segment)

    @property
    def num_segments(self):
        return int(self.segment.max()) + 1

    @property
    def max_channels(self):
        return int(self.channel.max()) + 1


def layout(variables, token_size):
    """The Layout of `variables`' tokens (shapes only are read)."""
    segment, channel, mask, next_segment = [], [], [], 0
    for rows in jax.eval_shape(channel_vectors, variables):
        c, n = rows.shape
        chunks = -(-n // token_size)
        valid = (np.arange(chunks * token_size) < n).reshape(chunks, token_size)
        segment.append(np.tile(next_segment + np.arange(chunks), c))
        channel.append(np.repeat(np.arange(c), chunks))
        mask.append(np.tile(valid, (c, 1)))
        next_segment += chunks
    return Layout(token_size, np.concatenate(segment), np.concatenate(channel),
                  np.concatenate(mask).astype(np.float32))


def tokenize(variables, token_size):
    """Tokens [T, token_size] of one network's variables (jittable; vmap for a stack)."""
    out = []
    for rows in channel_vectors(variables):
        c, n = rows.shape
        chunks = -(-n // token_size)
        out.append(jnp.pad(rows, ((0, 0), (0, chunks * token_size - n))).reshape(c * chunks, token_size))
    return jnp.concatenate(out).astype(jnp.float32)


def detokenize(tokens, template):
    """Variables shaped like `template` from tokens [T, token_size]: the inverse of `tokenize`
    (padding entries are dropped; jittable, vmap for a stack)."""
    token_size = tokens.shape[-1]
    params = jax.tree_util.tree_map(lambda x: x, template["params"])  # fresh nested dicts
    stats = jax.tree_util.tree_map(lambda x: x, template["batch_stats"])
    start = 0
    for block, conv, bn in layers(params):
        node = params if block is None else params[block]
        kernel = node[conv]["kernel"]
        c, width = kernel.shape[-1], int(np.prod(kernel.shape[:-1]))
        n = width + (1 if bn is None else 4)
        chunks = -(-n // token_size)
        rows = tokens[start:start + c * chunks].reshape(c, chunks * token_size)[:, :n]
        start += c * chunks
        node[conv] = dict(node[conv], kernel=rows[:, :width].T.reshape(kernel.shape))
        if bn is None:
            node[conv]["bias"] = rows[:, width]
        else:
            node[bn] = dict(scale=rows[:, width], bias=rows[:, width + 1])
            (stats if block is None else stats[block])[bn] = dict(mean=rows[:, width + 2],
                                                                  var=rows[:, width + 3])
    return dict(params=params, batch_stats=stats)


def _blocks(params):
    return sorted(k for k in params if k.startswith("layer"))


def permute_blocks(variables, perms):
    """The same function with each residual block's inner channels reordered: channel j of the
    result is channel perms[block][j] of `variables` (conv1's output channels, bn1's parameters and
    statistics, conv2's input channels). (The residual stream's channels are left alone: permuting
    them would have to be one permutation across a whole stage, its shortcuts and the next stage.)"""
    out = jax.tree_util.tree_map(lambda x: x, variables)  # fresh nested dicts, same leaves
    params, stats = out["params"], out["batch_stats"]
    for block in _blocks(params):
        p, s, perm = params[block], stats[block], perms[block]
        p["conv1"] = dict(kernel=p["conv1"]["kernel"][..., perm])
        p["bn1"] = {k: v[perm] for k, v in p["bn1"].items()}
        s["bn1"] = {k: v[perm] for k, v in s["bn1"].items()}
        p["conv2"] = dict(kernel=p["conv2"]["kernel"][:, :, perm, :])
    return out


def permute_channels(variables, key):
    """`permute_blocks` with one random permutation per block (jittable; vmap for a stack)."""
    params = variables["params"]
    return permute_blocks(variables, {
        block: jax.random.permutation(jax.random.fold_in(key, i), params[block]["conv1"]["kernel"].shape[-1])
        for i, block in enumerate(_blocks(params))})


def _inner_channels(variables, block):
    """[..., C, n]: each inner channel's values in `block` (conv1 column, bn1, conv2 row)."""
    p, s = variables["params"][block], variables["batch_stats"][block]
    k1, k2 = np.asarray(p["conv1"]["kernel"]), np.asarray(p["conv2"]["kernel"])
    lead = k1.shape[:-4]
    c = k1.shape[-1]
    cols = np.moveaxis(k1.reshape(lead + (-1, c)), -1, -2)  # [..., C, 9 * c_in]
    rows = np.moveaxis(k2, -2, -4).reshape(lead + (c, -1))  # [..., C, 9 * c_out]
    bn = [np.asarray(t[name])[..., None] for t in (p["bn1"], s["bn1"]) for name in sorted(t)]
    return np.concatenate([cols, rows] + bn, axis=-1)


def align_channels(stacked, reference):
    """`stacked` networks [N, ...] (host arrays) with each block's inner channels reordered to
    best match `reference` (one network): per network and block, the linear assignment (Hungarian)
    that maximises the summed dot products of matched channels' values (weight matching, Ainsworth
    et al. 2023). It undoes any `permute_blocks` of a network exactly (ties aside), so whatever
    reads aligned networks is invariant to those permutations; in a shared-init zoo the match is
    (nearly) always the identity."""
    perms = {}
    for block in _blocks(reference["params"]):
        ref = _inner_channels(reference, block)                      # [C, n]
        sim = _inner_channels(stacked, block) @ ref.T                # [N, C, C]
        # the reference's channel j takes the network's channel matched to it
        perms[block] = np.stack([scipy.optimize.linear_sum_assignment(-m.T)[1] for m in sim])
    return jax.tree_util.tree_map(np.asarray, jax.vmap(permute_blocks)(stacked, perms))


def erase(tokens, mask, key, probability, max_fraction):
    """With `probability`, zeroes a random contiguous span of up to `max_fraction` of the tokens
    [W, D] (random erasing, on the token sequence)."""
    k_apply, k_len, k_start = jax.random.split(key, 3)
    w = tokens.shape[0]
    length = jax.random.randint(k_len, (), 0, max(1, int(max_fraction * w)) + 1)
    start = jax.random.randint(k_start, (), 0, w - length + 1)
    idx = jnp.arange(w)
    hit = (idx >= start) & (idx < start + length) & jax.random.bernoulli(k_apply, probability)
    return jnp.where(hit[:, None], 0.0, tokens) * mask
