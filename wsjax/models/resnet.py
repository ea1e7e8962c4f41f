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
IM2COL_MAX_WIDTH = 8  # 'auto' on CPU: im2col up to this width (faster measured at 4-8, slower at 16+)


class Im2colConv(nn.Module):
    """nn.Conv without bias (same 'kernel' [kh, kw, in, out], init and padding) as one matmul
    over the kh * kw shifted slices of the padded input. XLA:CPU runs the tiny convolutions of a
    width-4 ResNet far below its matmul rate; as a matmul they run faster, vmapped over models too."""
    features: int
    kernel_size: tuple
    strides: int = 1
    padding: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        kernel = self.param("kernel", nn.linear.default_kernel_init,
                            (kh, kw, x.shape[-1], self.features), jnp.float32)
        p, s = self.padding, self.strides
        x = jnp.pad(x.astype(self.dtype), ((0, 0), (p, p), (p, p), (0, 0)))
        h, w = (x.shape[1] - kh) // s + 1, (x.shape[2] - kw) // s + 1
        cols = [x[:, i:i + s * (h - 1) + 1:s, j:j + s * (w - 1) + 1:s] for i in range(kh) for j in range(kw)]
        return jnp.concatenate(cols, -1) @ kernel.astype(self.dtype).reshape(-1, self.features)


def conv_layer(kind, dtype):
    """The bias-free convolution of `kind` (one of CONVS): conv(features, kernel, strides, padding=)."""
    if kind == "im2col":
        return functools.partial(Im2colConv, dtype=dtype)
    return functools.partial(nn.Conv, use_bias=False, dtype=dtype)


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
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                                 epsilon=1e-5, dtype=self.dtype)
        y = conv(self.features, (3, 3), self.strides, padding=1, name="conv1")(x)
        y = act(norm(name="bn1")(y))
        y = conv(self.features, (3, 3), 1, padding=1, name="conv2")(y)
        y = norm(name="bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
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
    def __call__(self, x, train=False, features=False):
        """Logits [B, num_classes]; with `features=True`, pooled features [B, 8 * width]."""
        x = x.astype(self.dtype)
        conv = conv_layer(self.conv, self.dtype)
        if self.stem == "imagenet":
            x = conv(self.width, (7, 7), 2, padding=3, name="conv1")(x)
        else:
            x = conv(self.width, (3, 3), 1, padding=1, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         dtype=self.dtype, name="bn1")(x)
        x = getattr(nn, self.activation)(x)
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for stage, mult in enumerate((1, 2, 4, 8)):
            for block in range(2):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(self.width * mult, strides, self.dtype, self.activation, self.conv,
                               name=f"layer{stage + 1}_{block}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        if features:
            return x.astype(jnp.float32)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x).astype(jnp.float32)


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
        small = jax.default_backend() == "cpu" and config.width <= IM2COL_MAX_WIDTH
        conv = "im2col" if small and jax.device_count() == 1 else "xla"
    return ResNet18(num_classes=num_classes, width=int(config.width), stem=config.stem,
                    dtype=jnp.dtype(config.dtype), activation=activation or choices[0], conv=conv)


def count_params(tree):
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
