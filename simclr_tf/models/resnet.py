"""ResNet v1 encoders for SimCLR (v1 and v2), NHWC, as in the reference SimCLR TF code.

Choices, and why:

* Depths 18/34 use basic blocks, 50/101/152/200 bottleneck blocks (expansion 4); block counts are
  the standard ResNet v1 ones (``BLOCKS``).
* ``width_multiplier`` scales every width: ``channels = max(1, round(base * width_multiplier))``
  (so 0.125 gives 8/16/32/64 base widths; 2 and 4 give the SimCLR 2x/4x models).
* Convolutions have no bias (a BN follows) and use He initialisation,
  ``VarianceScaling(2.0, "fan_out", "truncated_normal")``. (The reference TF2 code uses Keras'
  default ``VarianceScaling()``, i.e. scale 1 over fan-in; with BN after every convolution the
  difference only changes the pre-BN scale.)
* Padding follows the reference: stride-1 convolutions use "same"; strided ones pad explicitly by
  ``k - 1`` split as ``(k-1)//2`` before / the rest after, then run "valid". This makes the
  output size ``ceil(size / stride)`` independent of the input parity, like the reference.
* Every BN is our `BatchNorm` with ``momentum=bn_momentum``, ``epsilon=1e-5`` and
  ``synchronized=global_bn``; the last BN of every residual branch starts with gamma = 0, so each
  block starts as ``relu(shortcut(x))``.
* A projection shortcut (1x1 conv with the block's stride + BN) is used when the shape changes
  (stride != 1 or channels differ). (The reference also adds one to the first block of
  ResNet-18/34, where the shape does not change; the standard ResNet does not.)
  ``first_block_projection=True`` gives the reference layout (a projection on the first block of
  every block group); it is chosen when a reference checkpoint has one (simclr_tf.official).
* SimCLRv2 options follow the reference code: selective kernel (``sk_ratio > 0``) replaces the
  bottleneck's 3x3 convolution by one 3x3 convolution with 2x the channels split into two
  branches, mixed by a softmax attention computed from their pooled sum; it also switches to the
  ResNet-D stem (three 3x3 convolutions) and ResNet-D projection shortcuts (average pool, then
  1x1 conv). Squeeze-excitation (``se_ratio > 0``) gates the residual branch after its last BN.
* Endpoints: ``initial_conv`` is the stem output after conv + BN + ReLU (the reference records it
  before BN), ``initial_max_pool`` after the 3x3/2 max pool (the same tensor for the CIFAR stem,
  which has no pool), ``block_group1..4`` and ``final_avg_pool`` (global mean, [B, C]).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from simclr_tf.models.layers import BatchNorm, attach_layers, set_trainable

BLOCKS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
BN_EPSILON = 1e-5
STAGE_NAMES = ("stem", "block_group1", "block_group2", "block_group3", "block_group4")
_register = keras.saving.register_keras_serializable(package="simclr_tf")


def scaled_width(channels: int, width_multiplier: float) -> int:
    """Width after the multiplier: rounded to an integer, never below 1."""
    return max(1, int(round(channels * width_multiplier)))


def conv_initializer() -> keras.initializers.Initializer:
    """He initialisation over fan-out (a fresh instance per layer, so draws differ)."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="truncated_normal"
    )


def _out_size(size: int | None, strides: int) -> int | None:
    return None if size is None else math.ceil(size / strides)


@_register
class FixedPaddingConv2D(keras.layers.Layer):
    """Bias-free conv; strided ones pad ``k - 1`` explicitly and run "valid" (reference style)."""

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides = int(filters), int(kernel_size), int(strides)
        self.conv = keras.layers.Conv2D(
            self.filters, self.kernel_size, strides=self.strides,
            padding="same" if self.strides == 1 else "valid", use_bias=False,
            kernel_initializer=conv_initializer(), dtype=self.dtype_policy, name="conv",
        )

    def _pads(self) -> tuple[int, int]:
        total = self.kernel_size - 1
        return total // 2, total - total // 2

    def build(self, input_shape: tuple) -> None:
        b, h, w, c = input_shape
        if self.strides > 1:
            extra = self.kernel_size - 1
            h, w = (None if h is None else h + extra), (None if w is None else w + extra)
        self.conv.build((b, h, w, c))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        b, h, w, _ = input_shape
        return (b, _out_size(h, self.strides), _out_size(w, self.strides), self.filters)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        if self.strides > 1 and self.kernel_size > 1:
            beg, end = self._pads()
            inputs = tf.pad(inputs, [[0, 0], [beg, end], [beg, end], [0, 0]])
        return self.conv(inputs)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides}


@_register
class BNReLU(keras.layers.Layer):
    """`BatchNorm` (eps 1e-5) optionally followed by ReLU; ``zero_init`` sets gamma to 0."""

    def __init__(self, relu: bool = True, zero_init: bool = False, center: bool = True,
                 momentum: float = 0.9, global_bn: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.relu, self.zero_init, self.center = bool(relu), bool(zero_init), bool(center)
        self.momentum, self.global_bn = float(momentum), bool(global_bn)
        self.bn = BatchNorm(
            momentum=self.momentum, epsilon=BN_EPSILON, center=self.center,
            gamma_initializer="zeros" if self.zero_init else "ones",
            synchronized=self.global_bn, dtype=self.dtype_policy, name="bn",
        )

    def build(self, input_shape: tuple) -> None:
        self.bn.build(input_shape)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x = self.bn(inputs, training=training)
        return tf.nn.relu(x) if self.relu else x

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "relu": self.relu, "zero_init": self.zero_init,
                "center": self.center, "momentum": self.momentum, "global_bn": self.global_bn}


@_register
class SqueezeExcite(keras.layers.Layer):
    """SE gate: global mean -> Dense(reduced) -> ReLU -> Dense(channels) -> sigmoid, times x.

    Dense on the pooled vector is the same map as the reference's 1x1 convs on [B, 1, 1, C].
    """

    def __init__(self, channels: int, reduced: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels, self.reduced = int(channels), int(reduced)
        self.reduce = keras.layers.Dense(
            self.reduced, kernel_initializer=conv_initializer(), dtype=self.dtype_policy,
            name="se_reduce",
        )
        self.expand = keras.layers.Dense(
            self.channels, kernel_initializer=conv_initializer(), dtype=self.dtype_policy,
            name="se_expand",
        )

    def build(self, input_shape: tuple) -> None:
        self.reduce.build((input_shape[0], input_shape[-1]))
        self.expand.build((input_shape[0], self.reduced))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        s = tf.reduce_mean(inputs, axis=[1, 2])
        s = tf.sigmoid(self.expand(tf.nn.relu(self.reduce(s))))
        return inputs * s[:, None, None, :]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "channels": self.channels, "reduced": self.reduced}


@_register
class SelectiveKernel(keras.layers.Layer):
    """SimCLRv2 selective-kernel 3x3 conv (reference semantics, arXiv 1903.06586).

    One 3x3 conv (+BN+ReLU) makes ``2 * filters`` channels = two branches of ``filters``; their
    sum is pooled, reduced to ``max(int(filters * sk_ratio), min_dim)`` (+BN+ReLU), expanded to
    2 logits per channel and softmax-ed over the two branches; output = weighted branch sum.
    """

    def __init__(self, filters: int, strides: int = 1, sk_ratio: float = 0.0625,
                 min_dim: int = 32, momentum: float = 0.9, global_bn: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters, self.strides = int(filters), int(strides)
        self.sk_ratio, self.min_dim = float(sk_ratio), int(min_dim)
        self.momentum, self.global_bn = float(momentum), bool(global_bn)
        self.mid_dim = max(int(self.filters * self.sk_ratio), self.min_dim)
        bn = {"momentum": self.momentum, "global_bn": self.global_bn, "dtype": self.dtype_policy}
        self.conv = FixedPaddingConv2D(2 * self.filters, 3, self.strides,
                                       dtype=self.dtype_policy, name="conv")
        self.conv_bn = BNReLU(name="conv_bn", **bn)
        self.fc_reduce = keras.layers.Dense(
            self.mid_dim, use_bias=False, kernel_initializer=conv_initializer(),
            dtype=self.dtype_policy, name="fc_reduce",
        )
        self.fc_reduce_bn = BNReLU(name="fc_reduce_bn", **bn)
        self.fc_expand = keras.layers.Dense(
            2 * self.filters, use_bias=False, kernel_initializer=conv_initializer(),
            dtype=self.dtype_policy, name="fc_expand",
        )

    def build(self, input_shape: tuple) -> None:
        self.conv.build(input_shape)
        shape = self.conv.compute_output_shape(input_shape)
        self.conv_bn.build(shape)
        self.fc_reduce.build((input_shape[0], self.filters))
        self.fc_reduce_bn.build((input_shape[0], self.mid_dim))
        self.fc_expand.build((input_shape[0], self.mid_dim))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        b, h, w, _ = self.conv.compute_output_shape(input_shape)
        return (b, h, w, self.filters)

    def call(self, inputs: tf.Tensor, training: bool | None = None,
             return_attention: bool = False) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
        """Output; with ``return_attention`` also the branch weights [B, 2, filters]."""
        x = self.conv_bn(self.conv(inputs), training=training)
        a, b = tf.split(x, 2, axis=-1)
        pooled = tf.reduce_mean(a + b, axis=[1, 2])
        z = self.fc_reduce_bn(self.fc_reduce(pooled), training=training)
        logits = tf.reshape(self.fc_expand(z), [-1, 2, self.filters])
        attention = tf.nn.softmax(logits, axis=1)
        out = a * attention[:, None, None, 0, :] + b * attention[:, None, None, 1, :]
        return (out, attention) if return_attention else out

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters, "strides": self.strides,
                "sk_ratio": self.sk_ratio, "min_dim": self.min_dim, "momentum": self.momentum,
                "global_bn": self.global_bn}


@_register
class Shortcut(keras.layers.Layer):
    """Projection shortcut: 1x1 conv (stride s) + BN, or ResNet-D: avg pool, 1x1 conv, BN."""

    def __init__(self, filters: int, strides: int = 1, resnet_d: bool = False,
                 momentum: float = 0.9, global_bn: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters, self.strides, self.resnet_d = int(filters), int(strides), bool(resnet_d)
        self.momentum, self.global_bn = float(momentum), bool(global_bn)
        self.conv = FixedPaddingConv2D(self.filters, 1, 1 if self.resnet_d else self.strides,
                                       dtype=self.dtype_policy, name="conv")
        self.bn = BNReLU(relu=False, momentum=self.momentum, global_bn=self.global_bn,
                         dtype=self.dtype_policy, name="bn")

    def build(self, input_shape: tuple) -> None:
        b, h, w, c = input_shape
        conv_in = (b, _out_size(h, self.strides), _out_size(w, self.strides), c)
        self.conv.build(conv_in if self.resnet_d else input_shape)
        self.bn.build(self.compute_output_shape(input_shape))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        b, h, w, _ = input_shape
        return (b, _out_size(h, self.strides), _out_size(w, self.strides), self.filters)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x = inputs
        if self.resnet_d:
            if self.strides > 1:  # reference: pad (0, 1), 2x2 average pool, "valid"
                x = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])
                x = tf.nn.avg_pool2d(x, 2, self.strides, "VALID")
            else:
                x = tf.nn.avg_pool2d(x, 2, 1, "SAME")
        return self.bn(self.conv(x), training=training)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters, "strides": self.strides,
                "resnet_d": self.resnet_d, "momentum": self.momentum,
                "global_bn": self.global_bn}


class _Block(keras.layers.Layer):
    """Shared residual-block plumbing: ``relu(residual(x) + shortcut(x))``.

    ``in_channels`` decides whether the shortcut needs a projection; ``None`` (unknown) always
    uses one. `ResNet` passes the true value.
    """

    expansion = 1

    def __init__(self, filters: int, strides: int = 1, in_channels: int | None = None,
                 sk_ratio: float = 0.0, se_ratio: float = 0.0, momentum: float = 0.9,
                 global_bn: bool = True, force_projection: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters, self.strides = int(filters), int(strides)
        self.force_projection = bool(force_projection)
        self.in_channels = None if in_channels is None else int(in_channels)
        self.sk_ratio, self.se_ratio = float(sk_ratio), float(se_ratio)
        self.momentum, self.global_bn = float(momentum), bool(global_bn)
        self.out_channels = self.expansion * self.filters
        self._bn = {"momentum": self.momentum, "global_bn": self.global_bn,
                    "dtype": self.dtype_policy}
        needs_projection = (self.force_projection or self.strides != 1
                            or self.in_channels != self.out_channels)
        self.projection = (
            Shortcut(self.out_channels, self.strides, resnet_d=self.sk_ratio > 0,
                     name="projection", **self._bn)
            if needs_projection else None
        )
        self._residual_names = attach_layers(self, self._residual_layers())
        self.se = (
            SqueezeExcite(self.out_channels, max(1, int(self.filters * self.se_ratio)),
                          dtype=self.dtype_policy, name="se")
            if self.se_ratio > 0 else None
        )

    def _residual_layers(self) -> list[keras.layers.Layer]:
        raise NotImplementedError

    @property
    def residual_layers(self) -> list[keras.layers.Layer]:
        """The residual branch, in order (before the optional SE gate)."""
        return [getattr(self, n) for n in self._residual_names]

    def build(self, input_shape: tuple) -> None:
        if self.in_channels is not None and input_shape[-1] != self.in_channels:
            raise ValueError(
                f"{self.name} was built for {self.in_channels} input channels but got input "
                f"shape {input_shape}; pass in_channels matching the previous layer."
            )
        if self.projection is not None:
            self.projection.build(input_shape)
        shape = input_shape
        for layer in self.residual_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        if self.se is not None:
            self.se.build(shape)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        b, h, w, _ = input_shape
        return (b, _out_size(h, self.strides), _out_size(w, self.strides), self.out_channels)

    def shortcut(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """The shortcut branch alone (identity or projection)."""
        if self.projection is None:
            return inputs
        return self.projection(inputs, training=training)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x = inputs
        for layer in self.residual_layers:
            x = layer(x, training=training) if _takes_training(layer) else layer(x)
        if self.se is not None:
            x = self.se(x)
        return tf.nn.relu(x + self.shortcut(inputs, training=training))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters, "strides": self.strides,
                "in_channels": self.in_channels, "sk_ratio": self.sk_ratio,
                "se_ratio": self.se_ratio, "momentum": self.momentum,
                "global_bn": self.global_bn, "force_projection": self.force_projection}


def _takes_training(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, BNReLU | SelectiveKernel)


@_register
class BasicBlock(_Block):
    """Two 3x3 convs (the first strided); SK does not apply (as in the reference)."""

    expansion = 1

    def _residual_layers(self) -> list[keras.layers.Layer]:
        d = self.dtype_policy
        return [
            FixedPaddingConv2D(self.filters, 3, self.strides, dtype=d, name="conv1"),
            BNReLU(name="bn1", **self._bn),
            FixedPaddingConv2D(self.filters, 3, 1, dtype=d, name="conv2"),
            BNReLU(relu=False, zero_init=True, name="bn2", **self._bn),
        ]


@_register
class BottleneckBlock(_Block):
    """1x1 reduce, 3x3 (strided; SK when ``sk_ratio > 0``), 1x1 expand to 4x filters."""

    expansion = 4

    def _residual_layers(self) -> list[keras.layers.Layer]:
        d = self.dtype_policy
        if self.sk_ratio > 0:
            middle = [SelectiveKernel(self.filters, self.strides, self.sk_ratio, name="sk",
                                      **self._bn)]
        else:
            middle = [FixedPaddingConv2D(self.filters, 3, self.strides, dtype=d, name="conv2"),
                      BNReLU(name="bn2", **self._bn)]
        return [
            FixedPaddingConv2D(self.filters, 1, 1, dtype=d, name="conv1"),
            BNReLU(name="bn1", **self._bn),
            *middle,
            FixedPaddingConv2D(self.out_channels, 1, 1, dtype=d, name="conv3"),
            BNReLU(relu=False, zero_init=True, name="bn3", **self._bn),
        ]


_BLOCK_TYPES = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


@_register
class BlockGroup(keras.layers.Layer):
    """``blocks`` residual blocks; the first one carries the stride (and the projection)."""

    def __init__(self, filters: int, block_type: str, blocks: int, strides: int,
                 in_channels: int, sk_ratio: float = 0.0, se_ratio: float = 0.0,
                 momentum: float = 0.9, global_bn: bool = True,
                 first_block_projection: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if block_type not in _BLOCK_TYPES:
            raise ValueError(
                f"block_type must be one of {sorted(_BLOCK_TYPES)}, got {block_type!r}."
            )
        self.filters, self.block_type, self.blocks = int(filters), block_type, int(blocks)
        self.strides, self.in_channels = int(strides), int(in_channels)
        self.sk_ratio, self.se_ratio = float(sk_ratio), float(se_ratio)
        self.momentum, self.global_bn = float(momentum), bool(global_bn)
        self.first_block_projection = bool(first_block_projection)
        cls = _BLOCK_TYPES[block_type]
        self.out_channels = cls.expansion * self.filters
        self._block_names = attach_layers(self, [
            cls(self.filters, self.strides if i == 0 else 1,
                in_channels=self.in_channels if i == 0 else self.out_channels,
                sk_ratio=self.sk_ratio, se_ratio=self.se_ratio, momentum=self.momentum,
                global_bn=self.global_bn, force_projection=self.first_block_projection and i == 0,
                dtype=self.dtype_policy, name=f"block{i + 1}")
            for i in range(self.blocks)
        ])

    @property
    def block_layers(self) -> list[keras.layers.Layer]:
        return [getattr(self, n) for n in self._block_names]

    def build(self, input_shape: tuple) -> None:
        shape = input_shape
        for block in self.block_layers:
            block.build(shape)
            shape = block.compute_output_shape(shape)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        b, h, w, _ = input_shape
        return (b, _out_size(h, self.strides), _out_size(w, self.strides), self.out_channels)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x = inputs
        for block in self.block_layers:
            x = block(x, training=training)
        return x

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters, "block_type": self.block_type,
                "blocks": self.blocks, "strides": self.strides, "in_channels": self.in_channels,
                "sk_ratio": self.sk_ratio, "se_ratio": self.se_ratio,
                "momentum": self.momentum, "global_bn": self.global_bn,
                "first_block_projection": self.first_block_projection}


@_register
class Stem(keras.layers.Layer):
    """ImageNet stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool; ResNet-D 3x(3x3) when SK) or the
    CIFAR stem (3x3/1 conv, BN, ReLU, no pool)."""

    def __init__(self, width_multiplier: float = 1.0, cifar_stem: bool = False,
                 sk_ratio: float = 0.0, momentum: float = 0.9, global_bn: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.width_multiplier, self.cifar_stem = float(width_multiplier), bool(cifar_stem)
        self.sk_ratio, self.momentum, self.global_bn = float(sk_ratio), float(momentum), global_bn
        bn = {"momentum": self.momentum, "global_bn": self.global_bn, "dtype": self.dtype_policy}
        d = self.dtype_policy
        self.out_channels = scaled_width(64, self.width_multiplier)
        if self.cifar_stem:
            conv_layers = [FixedPaddingConv2D(self.out_channels, 3, 1, dtype=d, name="conv"),
                           BNReLU(name="bn", **bn)]
        elif self.sk_ratio > 0:
            half = max(1, self.out_channels // 2)
            conv_layers = [
                FixedPaddingConv2D(half, 3, 2, dtype=d, name="conv1"), BNReLU(name="bn1", **bn),
                FixedPaddingConv2D(half, 3, 1, dtype=d, name="conv2"), BNReLU(name="bn2", **bn),
                FixedPaddingConv2D(self.out_channels, 3, 1, dtype=d, name="conv3"),
                BNReLU(name="bn3", **bn),
            ]
        else:
            conv_layers = [FixedPaddingConv2D(self.out_channels, 7, 2, dtype=d, name="conv"),
                           BNReLU(name="bn", **bn)]
        self._conv_names = attach_layers(self, conv_layers)

    @property
    def conv_layers(self) -> list[keras.layers.Layer]:
        """Convolutions and BN+ReLU of the stem, in order."""
        return [getattr(self, n) for n in self._conv_names]

    def build(self, input_shape: tuple) -> None:
        shape = input_shape
        for layer in self.conv_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        b, h, w, _ = input_shape
        stride = 1 if self.cifar_stem else 4
        return (b, _out_size(h, stride), _out_size(w, stride), self.out_channels)

    def call(self, inputs: tf.Tensor, training: bool | None = None,
             return_endpoints: bool = False) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
        """Pooled output; with ``return_endpoints`` (initial_conv, initial_max_pool)."""
        x = inputs
        for layer in self.conv_layers:
            x = layer(x, training=training) if isinstance(layer, BNReLU) else layer(x)
        pooled = x if self.cifar_stem else tf.nn.max_pool2d(x, 3, 2, "SAME")
        return (x, pooled) if return_endpoints else pooled

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "width_multiplier": self.width_multiplier,
                "cifar_stem": self.cifar_stem, "sk_ratio": self.sk_ratio,
                "momentum": self.momentum, "global_bn": self.global_bn}


@_register
class ResNet(keras.Model):
    """ResNet v1 encoder returning the globally pooled representation h ([B, output_dim]).

    ``stages`` = [stem, block_group1, ..., block_group4]. ``frozen_stages=k`` in `call` runs the
    first k stages in inference mode (moving BN statistics, no updates) and stops gradients at
    their output, which is how linear evaluation (k = 5) and partial fine-tuning use the encoder.
    """

    def __init__(self, depth: int = 50, width_multiplier: float = 1.0, cifar_stem: bool = False,
                 sk_ratio: float = 0.0, se_ratio: float = 0.0, bn_momentum: float = 0.9,
                 global_bn: bool = True, first_block_projection: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if depth not in BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(BLOCKS)}, got {depth!r}.")
        if not width_multiplier > 0:
            raise ValueError(f"width_multiplier must be > 0, got {width_multiplier!r}.")
        if sk_ratio < 0 or se_ratio < 0:
            raise ValueError(
                f"sk_ratio and se_ratio must be >= 0 (0 disables), got {sk_ratio}, {se_ratio}."
            )
        self.depth, self.width_multiplier = int(depth), float(width_multiplier)
        self.cifar_stem, self.sk_ratio, self.se_ratio = bool(cifar_stem), float(sk_ratio), \
            float(se_ratio)
        self.bn_momentum, self.global_bn = float(bn_momentum), bool(global_bn)
        self.first_block_projection = bool(first_block_projection)
        block_type, counts = BLOCKS[self.depth]
        common = {"sk_ratio": self.sk_ratio, "momentum": self.bn_momentum,
                  "global_bn": self.global_bn, "dtype": self.dtype_policy}
        stem = Stem(self.width_multiplier, self.cifar_stem, name="stem", **common)
        stages: list[keras.layers.Layer] = [stem]
        channels = stem.out_channels
        for i, (base, count) in enumerate(zip((64, 128, 256, 512), counts, strict=True)):
            group = BlockGroup(
                scaled_width(base, self.width_multiplier), block_type, count,
                strides=1 if i == 0 else 2, in_channels=channels, se_ratio=self.se_ratio,
                first_block_projection=self.first_block_projection,
                name=f"block_group{i + 1}", **common,
            )
            channels = group.out_channels
            stages.append(group)
        self._stage_names = attach_layers(self, stages)
        self.output_dim: int = channels

    @property
    def stages(self) -> list[keras.layers.Layer]:
        """[stem, block_group1, ..., block_group4]."""
        return [getattr(self, n) for n in self._stage_names]

    def build(self, input_shape: tuple) -> None:
        shape = tuple(input_shape)
        if len(shape) != 4:
            raise ValueError(f"ResNet expects NHWC images [B, H, W, C], got shape {shape}.")
        for stage in self.stages:
            stage.build(shape)
            shape = stage.compute_output_shape(shape)
        self.built = True

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.output_dim)

    def freeze_stages(self, n: int) -> None:
        """Mark the first n stages non-trainable (and the others trainable).

        Non-trainable stages also run their BN in inference mode (Keras semantics); combine with
        ``frozen_stages=n`` in `call` to skip back-propagation through them as well.
        """
        if not 0 <= n <= len(self.stages):
            raise ValueError(f"freeze_stages takes 0..{len(self.stages)}, got {n}.")
        for i, stage in enumerate(self.stages):
            set_trainable(stage, i >= n)

    def call(self, images: tf.Tensor, training: bool | None = None,
             frozen_stages: int = 0) -> tf.Tensor:
        return self.call_endpoints(images, training=training,
                                   frozen_stages=frozen_stages)["final_avg_pool"]

    def call_endpoints(self, images: tf.Tensor, training: bool | None = None,
                       frozen_stages: int = 0) -> dict[str, tf.Tensor]:
        """All intermediate representations, keyed as in the reference SimCLR code."""
        if not 0 <= frozen_stages <= len(self.stages):
            raise ValueError(
                f"frozen_stages must be in 0..{len(self.stages)}, got {frozen_stages}."
            )
        x = tf.convert_to_tensor(images)
        if len(x.shape) != 4:
            raise ValueError(f"ResNet expects NHWC images [B, H, W, C], got shape {x.shape}.")
        if not self.built:
            self.build(tuple(x.shape))
        x = tf.cast(x, self.compute_dtype)
        endpoints: dict[str, tf.Tensor] = {}
        for i, stage in enumerate(self.stages):
            frozen = i < frozen_stages
            stage_training = False if frozen else training
            if i == 0:
                conv, x = stage(x, training=stage_training, return_endpoints=True)
                if frozen:
                    conv = tf.stop_gradient(conv)
                endpoints["initial_conv"] = conv
            else:
                x = stage(x, training=stage_training)
            if frozen:
                x = tf.stop_gradient(x)
            endpoints["initial_max_pool" if i == 0 else STAGE_NAMES[i]] = x
        endpoints["final_avg_pool"] = tf.reduce_mean(x, axis=[1, 2])
        return endpoints

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "trainable": self.trainable,
                "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
                "depth": self.depth, "width_multiplier": self.width_multiplier,
                "cifar_stem": self.cifar_stem, "sk_ratio": self.sk_ratio,
                "se_ratio": self.se_ratio, "bn_momentum": self.bn_momentum,
                "global_bn": self.global_bn, "first_block_projection": self.first_block_projection}
