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

from typing import Any

import keras
import tensorflow as tf

from simclr_tf.models.blocks import BLOCK_TYPES, SelectiveKernel, SqueezeExcite
from simclr_tf.models.conv import BNReLU, FixedPaddingConv2D, out_size, register, scaled_width
from simclr_tf.models.layers import attach_layers, build_in_sequence, set_trainable

# Blocks re-exported for callers that know them from here.
__all__ = [
    "BLOCKS",
    "STAGE_NAMES",
    "BlockGroup",
    "FixedPaddingConv2D",
    "ResNet",
    "SelectiveKernel",
    "SqueezeExcite",
    "Stem",
]

BLOCKS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
STAGE_NAMES = ("stem", "block_group1", "block_group2", "block_group3", "block_group4")


class _Chain(keras.layers.Layer):
    """A layer whose sublayers run one after the other (attached by name, see attach_layers)."""

    def _attach_chain(self, layers: list[keras.layers.Layer]) -> None:
        self._chain_names = attach_layers(self, layers)

    @property
    def chain(self) -> list[keras.layers.Layer]:
        return [getattr(self, n) for n in self._chain_names]

    def build(self, input_shape: tuple) -> None:
        build_in_sequence(self.chain, input_shape)


@register
class BlockGroup(_Chain):
    """``blocks`` residual blocks; the first one carries the stride (and the projection)."""

    def __init__(
        self,
        filters: int,
        block_type: str,
        blocks: int,
        strides: int,
        in_channels: int,
        sk_ratio: float = 0.0,
        se_ratio: float = 0.0,
        momentum: float = 0.9,
        global_bn: bool = True,
        first_block_projection: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if block_type not in BLOCK_TYPES:
            raise ValueError(
                f"block_type must be one of {sorted(BLOCK_TYPES)}, got {block_type!r}."
            )
        self.filters, self.block_type, self.blocks = int(filters), block_type, int(blocks)
        self.strides, self.in_channels = int(strides), int(in_channels)
        self.sk_ratio, self.se_ratio = float(sk_ratio), float(se_ratio)
        self.momentum, self.global_bn = float(momentum), bool(global_bn)
        self.first_block_projection = bool(first_block_projection)
        cls = BLOCK_TYPES[block_type]
        self.out_channels = cls.expansion * self.filters
        self._attach_chain(
            [
                cls(
                    self.filters,
                    self.strides if i == 0 else 1,
                    in_channels=self.in_channels if i == 0 else self.out_channels,
                    sk_ratio=self.sk_ratio,
                    se_ratio=self.se_ratio,
                    momentum=self.momentum,
                    global_bn=self.global_bn,
                    force_projection=self.first_block_projection and i == 0,
                    dtype=self.dtype_policy,
                    name=f"block{i + 1}",
                )
                for i in range(self.blocks)
            ]
        )

    @property
    def block_layers(self) -> list[keras.layers.Layer]:
        """The residual blocks, in order."""
        return self.chain

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        b, h, w, _ = input_shape
        return (b, out_size(h, self.strides), out_size(w, self.strides), self.out_channels)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x = inputs
        for block in self.block_layers:
            x = block(x, training=training)
        return x

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "filters": self.filters,
            "block_type": self.block_type,
            "blocks": self.blocks,
            "strides": self.strides,
            "in_channels": self.in_channels,
            "sk_ratio": self.sk_ratio,
            "se_ratio": self.se_ratio,
            "momentum": self.momentum,
            "global_bn": self.global_bn,
            "first_block_projection": self.first_block_projection,
        }


@register
class Stem(_Chain):
    """ImageNet stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool; ResNet-D 3x(3x3) when SK) or the
    CIFAR stem (3x3/1 conv, BN, ReLU, no pool)."""

    def __init__(
        self,
        width_multiplier: float = 1.0,
        cifar_stem: bool = False,
        sk_ratio: float = 0.0,
        momentum: float = 0.9,
        global_bn: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.width_multiplier, self.cifar_stem = float(width_multiplier), bool(cifar_stem)
        self.sk_ratio, self.momentum, self.global_bn = float(sk_ratio), float(momentum), global_bn
        bn = {"momentum": self.momentum, "global_bn": self.global_bn, "dtype": self.dtype_policy}
        d = self.dtype_policy
        self.out_channels = scaled_width(64, self.width_multiplier)
        if self.cifar_stem:
            conv_layers = [
                FixedPaddingConv2D(self.out_channels, 3, 1, dtype=d, name="conv"),
                BNReLU(name="bn", **bn),
            ]
        elif self.sk_ratio > 0:
            half = max(1, self.out_channels // 2)
            conv_layers = [
                FixedPaddingConv2D(half, 3, 2, dtype=d, name="conv1"),
                BNReLU(name="bn1", **bn),
                FixedPaddingConv2D(half, 3, 1, dtype=d, name="conv2"),
                BNReLU(name="bn2", **bn),
                FixedPaddingConv2D(self.out_channels, 3, 1, dtype=d, name="conv3"),
                BNReLU(name="bn3", **bn),
            ]
        else:
            conv_layers = [
                FixedPaddingConv2D(self.out_channels, 7, 2, dtype=d, name="conv"),
                BNReLU(name="bn", **bn),
            ]
        self._attach_chain(conv_layers)

    @property
    def conv_layers(self) -> list[keras.layers.Layer]:
        """Convolutions and BN+ReLU of the stem, in order."""
        return self.chain

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        b, h, w, _ = input_shape
        stride = 1 if self.cifar_stem else 4
        return (b, out_size(h, stride), out_size(w, stride), self.out_channels)

    def call(
        self, inputs: tf.Tensor, training: bool | None = None, return_endpoints: bool = False
    ) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
        """Pooled output; with ``return_endpoints`` (initial_conv, initial_max_pool)."""
        x = inputs
        for layer in self.conv_layers:
            x = layer(x, training=training)
        pooled = x if self.cifar_stem else tf.nn.max_pool2d(x, 3, 2, "SAME")
        return (x, pooled) if return_endpoints else pooled

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "width_multiplier": self.width_multiplier,
            "cifar_stem": self.cifar_stem,
            "sk_ratio": self.sk_ratio,
            "momentum": self.momentum,
            "global_bn": self.global_bn,
        }


@register
class ResNet(keras.Model):
    """ResNet v1 encoder returning the globally pooled representation h ([B, output_dim]).

    ``stages`` = [stem, block_group1, ..., block_group4]. ``frozen_stages=k`` in `call` runs the
    first k stages in inference mode (moving BN statistics, no updates) and stops gradients at
    their output, which is how linear evaluation (k = 5) and partial fine-tuning use the encoder.

    Args:
      depth: 18, 34, 50, 101, 152 or 200.
      width_multiplier: channel multiplier (fractions allowed).
      cifar_stem: 3x3 stride-1 stem without max pool (for 32 px images).
      sk_ratio, se_ratio: selective-kernel / squeeze-excitation ratios (0 = off).
      bn_momentum: batch-norm moving-average momentum.
      global_bn: batch-norm moments over all replicas.
      first_block_projection: a projection shortcut in every group's first block.

    Example::

        encoder = simclr_tf.ResNet(depth=18, cifar_stem=True)
        h = encoder(tf.zeros([2, 32, 32, 3]))  # [2, 512]
    """

    def __init__(
        self,
        depth: int = 50,
        width_multiplier: float = 1.0,
        cifar_stem: bool = False,
        sk_ratio: float = 0.0,
        se_ratio: float = 0.0,
        bn_momentum: float = 0.9,
        global_bn: bool = True,
        first_block_projection: bool = False,
        **kwargs: Any,
    ) -> None:
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
        self.cifar_stem, self.sk_ratio, self.se_ratio = (
            bool(cifar_stem),
            float(sk_ratio),
            float(se_ratio),
        )
        self.bn_momentum, self.global_bn = float(bn_momentum), bool(global_bn)
        self.first_block_projection = bool(first_block_projection)
        block_type, counts = BLOCKS[self.depth]
        common = {
            "sk_ratio": self.sk_ratio,
            "momentum": self.bn_momentum,
            "global_bn": self.global_bn,
            "dtype": self.dtype_policy,
        }
        stem = Stem(self.width_multiplier, self.cifar_stem, name="stem", **common)
        stages: list[keras.layers.Layer] = [stem]
        channels = stem.out_channels
        for i, (base, count) in enumerate(zip((64, 128, 256, 512), counts, strict=True)):
            group = BlockGroup(
                scaled_width(base, self.width_multiplier),
                block_type,
                count,
                strides=1 if i == 0 else 2,
                in_channels=channels,
                se_ratio=self.se_ratio,
                first_block_projection=self.first_block_projection,
                name=f"block_group{i + 1}",
                **common,
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
        build_in_sequence(self.stages, shape)
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

    def call(
        self, images: tf.Tensor, training: bool | None = None, frozen_stages: int = 0
    ) -> tf.Tensor:
        return self.call_endpoints(images, training=training, frozen_stages=frozen_stages)[
            "final_avg_pool"
        ]

    def call_endpoints(
        self, images: tf.Tensor, training: bool | None = None, frozen_stages: int = 0
    ) -> dict[str, tf.Tensor]:
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
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
            "depth": self.depth,
            "width_multiplier": self.width_multiplier,
            "cifar_stem": self.cifar_stem,
            "sk_ratio": self.sk_ratio,
            "se_ratio": self.se_ratio,
            "bn_momentum": self.bn_momentum,
            "global_bn": self.global_bn,
            "first_block_projection": self.first_block_projection,
        }
