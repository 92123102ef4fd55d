"""Projection head g(h) and the supervised (linear) head of SimCLR.

The projection head returns every intermediate: SimCLRv2 fine-tunes from a middle layer of the
head (``ft_proj_selector``), so callers pick ``hiddens[k]``; ``hiddens[-1]`` is the projection z
fed to NT-Xent (not L2-normalised here: the loss normalises). Dense kernels use
``RandomNormal(stddev=0.01)`` like the reference code.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from simclr_tf.config_checks import PROJ_HEAD_MODES, head_depth
from simclr_tf.models.conv import BN_EPSILON
from simclr_tf.models.conv import register as _register
from simclr_tf.models.layers import BatchNorm, attach_layers


def _dense_init() -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(stddev=0.01)


@_register
class ProjectionHead(keras.layers.Layer):
    """SimCLR projection head.

    Modes:
        ``"none"``: no head, ``hiddens = [h]`` (z = h).
        ``"linear"``: Dense(out_dim, no bias) + BN(center=False); ``hiddens = [h, z]``.
        ``"nonlinear"``: ``num_layers`` layers. Each middle layer is Dense(dim(h), no bias) +
            BN(center=True) + ReLU; the last is Dense(out_dim, no bias) + BN(center=False), no
            ReLU. ``num_layers=2`` is the SimCLRv1 head, 3 the SimCLRv2 head.

    Args:
      mode: ``"none"``, ``"linear"`` or ``"nonlinear"``.
      num_layers: layers of the nonlinear head.
      out_dim: width of the projection z.
      bn_momentum: batch-norm moving-average momentum.
      global_bn: batch-norm moments over all replicas.

    Example::

        head = simclr_tf.ProjectionHead(num_layers=2, out_dim=128)
        hiddens = head(h, training=True)  # [h, layer 1, z]
    """

    def __init__(
        self,
        mode: str = "nonlinear",
        num_layers: int = 3,
        out_dim: int = 128,
        bn_momentum: float = 0.9,
        global_bn: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in PROJ_HEAD_MODES:
            raise ValueError(
                f"Unknown projection head mode {mode!r}; valid modes are {PROJ_HEAD_MODES}."
            )
        if mode == "nonlinear" and int(num_layers) < 1:
            raise ValueError(f"A nonlinear head needs num_layers >= 1, got {num_layers}.")
        if int(out_dim) < 1:
            raise ValueError(f"out_dim must be >= 1, got {out_dim}.")
        self.mode, self.num_layers, self.out_dim = mode, int(num_layers), int(out_dim)
        self.bn_momentum, self.global_bn = float(bn_momentum), bool(global_bn)
        self._dense_names: tuple[str, ...] = ()
        self._bn_names: tuple[str, ...] = ()

    @property
    def dense_layers(self) -> list[keras.layers.Dense]:
        return [getattr(self, n) for n in self._dense_names]

    @property
    def bn_layers(self) -> list[BatchNorm]:
        return [getattr(self, n) for n in self._bn_names]

    @property
    def depth(self) -> int:
        """Number of Dense+BN layers (0 for mode "none")."""
        return head_depth(self.mode, self.num_layers)

    def build(self, input_shape: tuple) -> None:
        in_dim = input_shape[-1]
        if in_dim is None:
            raise ValueError(f"ProjectionHead needs a known feature dimension, got {input_shape}.")
        dense_layers, bn_layers = [], []
        for i in range(self.depth):
            last = i == self.depth - 1
            dense = keras.layers.Dense(
                self.out_dim if last else int(in_dim),
                use_bias=False,
                kernel_initializer=_dense_init(),
                dtype=self.dtype_policy,
                name=f"dense_{i}",
            )
            bn = BatchNorm(
                momentum=self.bn_momentum,
                epsilon=BN_EPSILON,
                center=not last,
                synchronized=self.global_bn,
                dtype=self.dtype_policy,
                name=f"bn_{i}",
            )
            dense.build((input_shape[0], int(in_dim)))
            bn.build((input_shape[0], dense.units))
            dense_layers.append(dense)
            bn_layers.append(bn)
        self._dense_names = attach_layers(self, dense_layers)
        self._bn_names = attach_layers(self, bn_layers)

    def compute_output_shape(self, input_shape: tuple) -> list[tuple]:
        shapes = [tuple(input_shape)]
        for i in range(self.depth):
            dim = self.out_dim if i == self.depth - 1 else input_shape[-1]
            shapes.append((input_shape[0], dim))
        return shapes

    def call(self, h: tf.Tensor, training: bool | None = None) -> list[tf.Tensor]:
        hiddens = [h]
        x = h
        for i, (dense, bn) in enumerate(zip(self.dense_layers, self.bn_layers, strict=True)):
            x = bn(dense(x), training=training)
            if i != self.depth - 1:
                x = tf.nn.relu(x)
            hiddens.append(x)
        return hiddens

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "mode": self.mode,
            "num_layers": self.num_layers,
            "out_dim": self.out_dim,
            "bn_momentum": self.bn_momentum,
            "global_bn": self.global_bn,
        }


@_register
class LinearHead(keras.layers.Layer):
    """Supervised classifier on h: Dense(num_classes) with bias.

    ``zero_init=True`` zero-initialises kernel and bias (the reference's
    ``zero_init_logits_layer``), so logits start at exactly 0 and the first updates are not
    biased by a random initial classifier.
    """

    def __init__(self, num_classes: int, zero_init: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes, self.zero_init = int(num_classes), bool(zero_init)
        self.dense = keras.layers.Dense(
            self.num_classes,
            use_bias=True,
            kernel_initializer="zeros" if self.zero_init else _dense_init(),
            bias_initializer="zeros",
            dtype=self.dtype_policy,
            name="dense",
        )

    def build(self, input_shape: tuple) -> None:
        self.dense.build(input_shape)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*tuple(input_shape)[:-1], self.num_classes)

    def call(self, h: tf.Tensor) -> tf.Tensor:
        return self.dense(h)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "zero_init": self.zero_init,
        }
