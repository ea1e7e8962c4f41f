"""SANE's transformer encoder-decoder over weight tokens (Schürholt et al. 2024), in Flax.

`dtype` is the computation's (bfloat16 on accelerators); parameters and outputs stay float32."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

ATTENTION = ("auto", "xla", "cudnn")


def attention_kernel(name, dtype):
    """The kernel config.model.attention names: 'xla' flax's attention (two einsums and a
    softmax, any backend); 'cudnn' cuDNN's fused flash attention (NVIDIA GPUs, Ampere or later,
    bfloat16), which never writes the [window, window] weights of each head to memory; 'auto'
    cudnn where it runs, else xla. Both compute the same function of the same parameters."""
    if name != "auto":
        return name
    device = jax.devices()[0]
    return ("cudnn" if device.platform == "gpu" and dtype == "bfloat16"
            and float(getattr(device, "compute_capability", 0)) >= 8 else "xla")


def attention_fn(name, dtype):
    """MultiHeadDotProductAttention's attention_fn for attention_kernel(name, dtype)."""
    if attention_kernel(name, dtype) == "cudnn":
        return functools.partial(jax.nn.dot_product_attention, implementation="cudnn")
    return nn.dot_product_attention


class Block(nn.Module):
    """Pre-norm transformer block: self-attention then MLP, both residual."""
    dim: int
    num_heads: int
    mlp_ratio: int
    dtype: str = "float32"
    attention: str = "xla"

    @nn.compact
    def __call__(self, x):
        norm = lambda: nn.LayerNorm(dtype=self.dtype)  # noqa: E731
        attend = nn.MultiHeadDotProductAttention(self.num_heads, dtype=self.dtype,
                                                 attention_fn=attention_fn(self.attention, self.dtype))
        x = x + attend(norm()(x))
        y = nn.Dense(self.mlp_ratio * self.dim, dtype=self.dtype)(norm()(x))
        return x + nn.Dense(self.dim, dtype=self.dtype)(nn.gelu(y))


class Stack(nn.Module):
    """Tokens [B, W, in] plus learned segment, channel and position encodings -> [B, W, out];
    max_positions 0: no position table (segment and channel already tell every token apart)."""
    dim: int
    out_dim: int
    num_layers: int
    num_heads: int
    mlp_ratio: int
    num_segments: int
    max_channels: int
    max_positions: int
    dtype: str = "float32"
    attention: str = "xla"

    @nn.compact
    def __call__(self, x, segment, channel, position):
        embed = lambda n: nn.Embed(n, self.dim, dtype=self.dtype)  # noqa: E731
        x = (nn.Dense(self.dim, dtype=self.dtype)(x) + embed(self.num_segments)(segment)
             + embed(self.max_channels)(channel))
        if self.max_positions:
            x = x + embed(self.max_positions)(position)
        for _ in range(self.num_layers):
            x = Block(self.dim, self.num_heads, self.mlp_ratio, self.dtype, self.attention)(x)
        return nn.Dense(self.out_dim)(nn.LayerNorm(dtype=self.dtype)(x).astype(jnp.float32))


class SANE(nn.Module):
    """encode: tokens -> per-token latents; decode: latents -> tokens; project: pooled latent ->
    the contrastive head's space. Encodings: segment (layer x chunk), channel, absolute position."""
    token_size: int
    dim: int
    latent_dim: int
    projection_dim: int
    encoder_layers: int
    decoder_layers: int
    num_heads: int
    mlp_ratio: int
    num_segments: int
    max_channels: int
    max_positions: int
    dtype: str = "float32"
    attention: str = "xla"

    def setup(self):
        shared = dict(dim=self.dim, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                      num_segments=self.num_segments, max_channels=self.max_channels,
                      max_positions=self.max_positions, dtype=self.dtype, attention=self.attention)
        self.encoder = Stack(out_dim=self.latent_dim, num_layers=self.encoder_layers, **shared)
        self.decoder = Stack(out_dim=self.token_size, num_layers=self.decoder_layers, **shared)
        self.head = nn.Sequential([nn.Dense(self.dim), nn.gelu, nn.Dense(self.projection_dim)])

    def encode(self, tokens, segment, channel, position):
        return self.encoder(tokens, segment, channel, position)

    def decode(self, z, segment, channel, position):
        return self.decoder(z, segment, channel, position)

    def project(self, z):
        """[B, W, latent] -> [B, projection_dim], from the mean over tokens."""
        return self.head(jnp.mean(z, axis=1))

    def __call__(self, tokens, segment, channel, position):
        z = self.encode(tokens, segment, channel, position)
        return z, self.decode(z, segment, channel, position), self.project(z)


def build(config, layout):
    """SANE from `config.model` and the zoo's token Layout."""
    m = config.model
    return SANE(token_size=layout.token_size, dim=m.dim, latent_dim=m.latent_dim,
                projection_dim=m.projection_dim, encoder_layers=m.encoder_layers,
                decoder_layers=m.decoder_layers, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                num_segments=layout.num_segments, max_channels=layout.max_channels,
                # older configs: float32, with a position table
                max_positions=layout.num_tokens if m.get("position_table", True) else 0,
                dtype=m.get("dtype", "float32"), attention=m.get("attention", "auto"))
