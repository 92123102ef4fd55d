"""The primitives of the ResNet encoders: width scaling, the convolution initialiser, padded
convolutions and BN+ReLU, and the Keras serialization package of every simclr_tf layer.

The choices (initialisation, padding, zero-initialised last BN) are explained in
:mod:`simclr_tf.models.resnet`.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from simclr_tf.models import conv_grad
from simclr_tf.models.layers import BatchNorm

BN_EPSILON = 1e-5
# Keras serialization names are "simclr_tf>ClassName", whichever module defines the class.
register = keras.saving.register_keras_serializable(package="simclr_tf")


def scaled_width(channels: int, width_multiplier: float) -> int:
    """Width after the multiplier: rounded to an integer, never below 1."""
    return max(1, int(round(channels * width_multiplier)))


def conv_initializer() -> keras.initializers.Initializer:
    """He initialisation over fan-out (a fresh instance per layer, so draws differ)."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="truncated_normal"
    )


def out_size(size: int | None, strides: int) -> int | None:
    return None if size is None else math.ceil(size / strides)


@register
class FixedPaddingConv2D(keras.layers.Layer):
    """Bias-free conv; strided ones pad ``k - 1`` explicitly and run "valid" (reference style)."""

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides = int(filters), int(kernel_size), int(strides)
        self.conv = keras.layers.Conv2D(
            self.filters,
            self.kernel_size,
            strides=self.strides,
            padding="same" if self.strides == 1 else "valid",
            use_bias=False,
            kernel_initializer=conv_initializer(),
            dtype=self.dtype_policy,
            name="conv",
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
        return (b, out_size(h, self.strides), out_size(w, self.strides), self.filters)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        _, h, w, _ = self.compute_output_shape(tuple(inputs.shape))
        positions = None if h is None or w is None else h * w
        if self.strides > 1 and self.kernel_size > 1:
            beg, end = self._pads()
            inputs = tf.pad(inputs, [[0, 0], [beg, end], [beg, end], [0, 0]])
        if conv_grad.wants_matmul(
            inputs.shape[-1], positions, self.kernel_size, self.compute_dtype, training
        ):
            # Same forward op; only the bfloat16 filter gradient differs (see conv_grad).
            kernel = tf.cast(self.conv.kernel, self.compute_dtype)
            return conv_grad.conv2d(inputs, kernel, self.strides, self.conv.padding.upper())
        return self.conv(inputs)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
        }


@register
class BNReLU(keras.layers.Layer):
    """`BatchNorm` (eps 1e-5) optionally followed by ReLU; ``zero_init`` sets gamma to 0."""

    def __init__(
        self,
        relu: bool = True,
        zero_init: bool = False,
        center: bool = True,
        momentum: float = 0.9,
        global_bn: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.relu, self.zero_init, self.center = bool(relu), bool(zero_init), bool(center)
        self.momentum, self.global_bn = float(momentum), bool(global_bn)
        self.bn = BatchNorm(
            momentum=self.momentum,
            epsilon=BN_EPSILON,
            center=self.center,
            gamma_initializer="zeros" if self.zero_init else "ones",
            synchronized=self.global_bn,
            dtype=self.dtype_policy,
            name="bn",
        )

    def build(self, input_shape: tuple) -> None:
        self.bn.build(input_shape)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x = self.bn(inputs, training=training)
        return tf.nn.relu(x) if self.relu else x

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "relu": self.relu,
            "zero_init": self.zero_init,
            "center": self.center,
            "momentum": self.momentum,
            "global_bn": self.global_bn,
        }
