"""ResNet-18 (He et al. 2016) in Flax Linen, with configurable width and stem.

At width 64, stem 'imagenet' and 1000 classes it has exactly torchvision's 11,689,512 parameters.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsjax.common.config import require

ACTIVATIONS = ("relu", "gelu", "tanh")  # flax.linen functions of these names


CONVS = ("xla", "im2col")


def im2col_faster(width):
    """Where 'auto' picks im2col on a one-device CPU: the widths where it trained faster than XLA's
    convolution (configs/bench/zoo.py --config.model.width=W --config.model.conv=im2col, one
    model after another, both in one run; 16 px, batch 64): 1.62x at width 4, 0.57x at 8, 1.00x at
    16, 2.08x at 32, 6.3x at 64 (12 timed steps there; XLA:CPU's own convolution is fast only at
    8-16)."""
    return width <= 4 or width >= 32


class Im2colConv(nn.Module):
    """nn.Conv without bias (same 'kernel' [kh, kw, in, out] and init), 'same' padding, on
    channels-first activations [C, N, H, W], as one matmul: [out, kh * kw * C] x [kh * kw * C, N * H * W].
    The rows of the right factor are the flattened input shifted by each tap's offset (long
    contiguous copies), zeroed where the tap falls in the padding. XLA:CPU runs the tiny
    convolutions of a width-4 ResNet far below its matmul rate, and channels-last copies of 4-wide
    rows slowly; this form keeps every copy, reduction and elementwise op on long rows."""
    features: int
    kernel_size: tuple
    strides: int = 1
    padding: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        c, n, h, w = x.shape
        require(kh == kw and kh % 2 == 1 and self.padding == (kh - 1) // 2,
                f"Im2colConv computes square, odd, 'same'-padded kernels, got {self.kernel_size} "
                f"with padding {self.padding}")
        kernel = self.param("kernel", nn.linear.default_kernel_init, (kh, kw, c, self.features), jnp.float32)
        p, s = self.padding, self.strides
        x = x.astype(self.dtype)
        if p == 0:
            cols = x
        else:
            flat = jnp.pad(x.reshape(c, -1), ((0, 0), (p * w + p, p * w + p)))
            yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            cols = []
            for di in range(-p, p + 1):
                for dj in range(-p, p + 1):
                    start = (di + p) * w + dj + p
                    tap = flat[:, start:start + n * h * w].reshape(c, n, h, w)
                    inside = (0 <= yy + di) & (yy + di < h) & (0 <= xx + dj) & (xx + dj < w)
                    cols.append(tap if inside.all() else tap * inside.astype(tap.dtype))  # [h, w] mask
            cols = jnp.stack(cols).reshape(kh * kw * c, n, h, w)
        cols = cols[:, :, ::s, ::s].reshape(kh * kw * c, -1)
        y = kernel.astype(self.dtype).reshape(-1, self.features).T @ cols
        return y.reshape(self.features, n, -(-h // s), -(-w // s))


def conv_layer(kind, dtype):
    """The bias-free convolution of `kind` (one of CONVS): conv(features, kernel, strides, padding=)."""
    if kind == "im2col":
        return functools.partial(Im2colConv, dtype=dtype)
    return functools.partial(nn.Conv, use_bias=False, dtype=dtype)


def feature_axis(kind):
    """The channel axis of activations under convolution `kind`: channels-first for im2col."""
    return 0 if kind == "im2col" else -1


def batch_norm(kind, train, dtype):
    """nn.BatchNorm over the feature axis of `kind`'s layout."""
    return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             dtype=dtype, axis=feature_axis(kind))


class BasicBlock(nn.Module):
    features: int
    strides: int
    dtype: Any
    activation: str
    conv: str = "xla"

    @nn.compact
    def __call__(self, x, train):
        act = getattr(nn, self.activation)
        conv = conv_layer(self.conv, self.dtype)
        norm = batch_norm(self.conv, train, self.dtype)
        y = conv(self.features, (3, 3), self.strides, padding=1, name="conv1")(x)
        y = act(norm(name="bn1")(y))
        y = conv(self.features, (3, 3), 1, padding=1, name="conv2")(y)
        y = norm(name="bn2")(y)
        if self.strides != 1 or x.shape[feature_axis(self.conv)] != self.features:
            x = conv(self.features, (1, 1), self.strides, name="down_conv")(x)
            x = norm(name="down_bn")(x)
        return act(x + y)


class ResNet18(nn.Module):
    num_classes: int
    width: int = 64
    stem: str = "imagenet"  # 'imagenet': 7x7/2 conv + max-pool; 'small': 3x3/1 conv (<= 32 px)
    dtype: Any = jnp.float32
    activation: str = "relu"  # one of ACTIVATIONS
    conv: str = "xla"  # one of CONVS: the same parameters and function, computed two ways

    @nn.compact
    def __call__(self, x, train=False, features=False, dropout_rate=None):
        """Logits [B, num_classes]; with `features=True`, pooled features [B, 8 * width].
        `dropout_rate` (training only, rng 'dropout'): dropout on the pooled features before the
        head; a traced value, so models of different rates share one compiled step."""
        x = x.astype(self.dtype)
        conv = conv_layer(self.conv, self.dtype)
        spatial = (1, 2)  # of channels-last [B, H, W, C]
        if self.conv == "im2col":  # channels-first [C, B, H, W] throughout
            x, spatial = x.transpose(3, 0, 1, 2), (2, 3)
        if self.stem == "imagenet":
            x = conv(self.width, (7, 7), 2, padding=3, name="conv1")(x)
        else:
            x = conv(self.width, (3, 3), 1, padding=1, name="conv1")(x)
        x = batch_norm(self.conv, train, self.dtype)(name="bn1")(x)
        x = getattr(nn, self.activation)(x)
        if self.stem == "imagenet":  # 3x3/2 max-pool, padding 1, over the spatial axes
            window = tuple(3 if a in spatial else 1 for a in range(4))
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window,
                                      tuple(2 if a in spatial else 1 for a in range(4)),
                                      tuple((1, 1) if a in spatial else (0, 0) for a in range(4)))
        for stage, mult in enumerate((1, 2, 4, 8)):
            for block in range(2):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(self.width * mult, strides, self.dtype, self.activation, self.conv,
                               name=f"layer{stage + 1}_{block}")(x, train)
        x = jnp.mean(x, axis=spatial)
        if self.conv == "im2col":
            x = x.T
        if features:
            return x.astype(jnp.float32)
        if train and dropout_rate is not None:
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - dropout_rate, x.shape)
            x = jnp.where(keep, x / (1.0 - dropout_rate), 0.0).astype(self.dtype)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x).astype(jnp.float32)


def builder(config, num_classes):
    """activation -> build(config, num_classes, activation), each built once: for readers of a zoo
    whose models may mix activations (each model its manifest row's)."""
    return functools.cache(lambda activation: build(config, num_classes, activation))


def build(config, num_classes, activation=None):
    """ResNet18 from a model ConfigDict (width, stem, dtype, activations). A zoo drawing several
    `activations` per model builds each model with its own (`activation`, its manifest row's)."""
    require(config.width >= 1, f"config.model.width must be >= 1, got {config.width}")
    require(config.stem in ("imagenet", "small"),
            f"config.model.stem must be 'imagenet' or 'small', got {config.stem!r}")
    require(config.dtype in ("float32", "bfloat16"),
            f"config.model.dtype must be 'float32' or 'bfloat16', got {config.dtype!r}")
    choices = tuple(config.get("activations", ("relu",)))  # configs older than the field: relu
    require(len(choices) >= 1 and all(a in ACTIVATIONS for a in choices),
            f"config.model.activations must be a non-empty subset of {ACTIVATIONS}, got {choices}")
    require(activation is not None or len(choices) == 1,
            f"config.model.activations={choices} mixes activations across the zoo's models: only "
            "the zoo stage and wsjax.zoo.load_model (one model at a time) build such a zoo's models")
    require(activation is None or activation in choices,
            f"activation {activation!r} is not one of config.model.activations={choices}")
    conv = config.get("conv", "xla")  # configs older than the field: XLA's convolution
    require(conv in ("auto",) + CONVS, f"config.model.conv must be 'auto' or one of {CONVS}, got {conv!r}")
    if conv == "auto":
        # One CPU device only: how XLA:CPU threads im2col's large weight-gradient matmuls depends on
        # the program, so its rounding differs between device counts and grows over training;
        # XLA's convolution gives bitwise the same zoo on 1 or 8 devices and 2 processes (tested).
        faster = jax.default_backend() == "cpu" and im2col_faster(config.width)
        conv = "im2col" if faster and jax.device_count() == 1 else "xla"
    return ResNet18(num_classes=num_classes, width=int(config.width), stem=config.stem,
                    dtype=jnp.dtype(config.dtype), activation=activation or choices[0], conv=conv)


def count_params(tree):
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
