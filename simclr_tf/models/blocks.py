"""The building blocks of the ResNet encoders: squeeze-excitation, selective kernel, shortcuts,
and the basic / bottleneck residual blocks (their convolutions and BN+ReLU are
:mod:`simclr_tf.models.conv`).

The choices (initialisation, padding, zero-initialised last BN, SimCLRv2 options) are explained
in :mod:`simclr_tf.models.resnet`, which assembles these blocks into stages and networks.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from simclr_tf.models.conv import BNReLU, FixedPaddingConv2D, conv_initializer, out_size, register
from simclr_tf.models.layers import attach_layers, build_in_sequence


@register
class SqueezeExcite(keras.layers.Layer):
    """SE gate: global mean -> Dense(reduced) -> ReLU -> Dense(channels) -> sigmoid, times x.

    Dense on the pooled vector is the same map as the reference's 1x1 convs on [B, 1, 1, C].
    """

    def __init__(self, channels: int, reduced: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels, self.reduced = int(channels), int(reduced)
        self.reduce = keras.layers.Dense(
            self.reduced,
            kernel_initializer=conv_initializer(),
            dtype=self.dtype_policy,
            name="se_reduce",
        )
        self.expand = keras.layers.Dense(
            self.channels,
            kernel_initializer=conv_initializer(),
            dtype=self.dtype_policy,
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


@register
class SelectiveKernel(keras.layers.Layer):
    """SimCLRv2 selective-kernel 3x3 conv (reference semantics, arXiv 1903.06586).

    One 3x3 conv (+BN+ReLU) makes ``2 * filters`` channels = two branches of ``filters``; their
    sum is pooled, reduced to ``max(int(filters * sk_ratio), min_dim)`` (+BN+ReLU), expanded to
    2 logits per channel and softmax-ed over the two branches; output = weighted branch sum.
    """

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        sk_ratio: float = 0.0625,
        min_dim: int = 32,
        momentum: float = 0.9,
        global_bn: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters, self.strides = int(filters), int(strides)
        self.sk_ratio, self.min_dim = float(sk_ratio), int(min_dim)
        self.momentum, self.global_bn = float(momentum), bool(global_bn)
        self.mid_dim = max(int(self.filters * self.sk_ratio), self.min_dim)
        bn = {"momentum": self.momentum, "global_bn": self.global_bn, "dtype": self.dtype_policy}
        self.conv = FixedPaddingConv2D(
            2 * self.filters, 3, self.strides, dtype=self.dtype_policy, name="conv"
        )
        self.conv_bn = BNReLU(name="conv_bn", **bn)
        self.fc_reduce = keras.layers.Dense(
            self.mid_dim,
            use_bias=False,
            kernel_initializer=conv_initializer(),
            dtype=self.dtype_policy,
            name="fc_reduce",
        )
        self.fc_reduce_bn = BNReLU(name="fc_reduce_bn", **bn)
        self.fc_expand = keras.layers.Dense(
            2 * self.filters,
            use_bias=False,
            kernel_initializer=conv_initializer(),
            dtype=self.dtype_policy,
            name="fc_expand",
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

    def call(
        self, inputs: tf.Tensor, training: bool | None = None, return_attention: bool = False
    ) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
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
        return {
            **super().get_config(),
            "filters": self.filters,
            "strides": self.strides,
            "sk_ratio": self.sk_ratio,
            "min_dim": self.min_dim,
            "momentum": self.momentum,
            "global_bn": self.global_bn,
        }


@register
class Shortcut(keras.layers.Layer):
    """Projection shortcut: 1x1 conv (stride s) + BN, or ResNet-D: avg pool, 1x1 conv, BN."""

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        resnet_d: bool = False,
        momentum: float = 0.9,
        global_bn: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters, self.strides, self.resnet_d = int(filters), int(strides), bool(resnet_d)
        self.momentum, self.global_bn = float(momentum), bool(global_bn)
        self.conv = FixedPaddingConv2D(
            self.filters,
            1,
            1 if self.resnet_d else self.strides,
            dtype=self.dtype_policy,
            name="conv",
        )
        self.bn = BNReLU(
            relu=False,
            momentum=self.momentum,
            global_bn=self.global_bn,
            dtype=self.dtype_policy,
            name="bn",
        )

    def build(self, input_shape: tuple) -> None:
        b, h, w, c = input_shape
        conv_in = (b, out_size(h, self.strides), out_size(w, self.strides), c)
        self.conv.build(conv_in if self.resnet_d else input_shape)
        self.bn.build(self.compute_output_shape(input_shape))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        b, h, w, _ = input_shape
        return (b, out_size(h, self.strides), out_size(w, self.strides), self.filters)

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
        return {
            **super().get_config(),
            "filters": self.filters,
            "strides": self.strides,
            "resnet_d": self.resnet_d,
            "momentum": self.momentum,
            "global_bn": self.global_bn,
        }


class _Block(keras.layers.Layer):
    """Shared residual-block plumbing: ``relu(residual(x) + shortcut(x))``.

    ``in_channels`` decides whether the shortcut needs a projection; ``None`` (unknown) always
    uses one. `ResNet` passes the true value.
    """

    expansion = 1

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        in_channels: int | None = None,
        sk_ratio: float = 0.0,
        se_ratio: float = 0.0,
        momentum: float = 0.9,
        global_bn: bool = True,
        force_projection: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters, self.strides = int(filters), int(strides)
        self.force_projection = bool(force_projection)  # the reference ResNet-18/34 layout
        self.in_channels = None if in_channels is None else int(in_channels)
        self.sk_ratio, self.se_ratio = float(sk_ratio), float(se_ratio)
        self.momentum, self.global_bn = float(momentum), bool(global_bn)
        self.out_channels = self.expansion * self.filters
        self._bn = {
            "momentum": self.momentum,
            "global_bn": self.global_bn,
            "dtype": self.dtype_policy,
        }
        needs_projection = (
            self.force_projection or self.strides != 1 or self.in_channels != self.out_channels
        )
        self.projection = (
            Shortcut(
                self.out_channels,
                self.strides,
                resnet_d=self.sk_ratio > 0,
                name="projection",
                **self._bn,
            )
            if needs_projection
            else None
        )
        self._residual_names = attach_layers(self, self._residual_layers())
        self.se = (
            SqueezeExcite(
                self.out_channels,
                max(1, int(self.filters * self.se_ratio)),
                dtype=self.dtype_policy,
                name="se",
            )
            if self.se_ratio > 0
            else None
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
        shape = build_in_sequence(self.residual_layers, input_shape)
        if self.se is not None:
            self.se.build(shape)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        b, h, w, _ = input_shape
        return (b, out_size(h, self.strides), out_size(w, self.strides), self.out_channels)

    def shortcut(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """The shortcut branch alone (identity or projection)."""
        if self.projection is None:
            return inputs
        return self.projection(inputs, training=training)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x = inputs
        for layer in self.residual_layers:
            x = layer(x, training=training)  # Keras drops it for layers without the argument
        if self.se is not None:
            x = self.se(x)
        return tf.nn.relu(x + self.shortcut(inputs, training=training))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "filters": self.filters,
            "strides": self.strides,
            "in_channels": self.in_channels,
            "sk_ratio": self.sk_ratio,
            "se_ratio": self.se_ratio,
            "momentum": self.momentum,
            "global_bn": self.global_bn,
            "force_projection": self.force_projection,
        }


@register
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


@register
class BottleneckBlock(_Block):
    """1x1 reduce, 3x3 (strided; SK when ``sk_ratio > 0``), 1x1 expand to 4x filters."""

    expansion = 4

    def _residual_layers(self) -> list[keras.layers.Layer]:
        d = self.dtype_policy
        if self.sk_ratio > 0:
            middle = [
                SelectiveKernel(self.filters, self.strides, self.sk_ratio, name="sk", **self._bn)
            ]
        else:
            middle = [
                FixedPaddingConv2D(self.filters, 3, self.strides, dtype=d, name="conv2"),
                BNReLU(name="bn2", **self._bn),
            ]
        return [
            FixedPaddingConv2D(self.filters, 1, 1, dtype=d, name="conv1"),
            BNReLU(name="bn1", **self._bn),
            *middle,
            FixedPaddingConv2D(self.out_channels, 1, 1, dtype=d, name="conv3"),
            BNReLU(relu=False, zero_init=True, name="bn3", **self._bn),
        ]


BLOCK_TYPES = {"basic": BasicBlock, "bottleneck": BottleneckBlock}
