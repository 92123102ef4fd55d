"""Any Keras backbone as the SimCLR encoder: an adapter giving it the interface of ``ResNet``.

``SimCLRModel`` asks its encoder for ``call_endpoints(images, training, frozen_stages)`` (a dict
with the representation ``final_avg_pool``) and ``freeze_stages(n)``. This package's ResNet has
five stages to freeze; a foreign backbone (``keras.applications``, KerasHub, a functional model
of your own) is one block, so it supports exactly two settings: train everything (0) or freeze
everything (5, the linear evaluation protocol). Partial freezing needs named stages, so it is
refused with a one-line error that says so.

A backbone may return a vector ``[B, D]`` (``pooling="avg"``) or a feature map ``[B, H, W, C]``,
which is averaged over space like the ResNet's ``final_avg_pool``.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import keras
import tensorflow as tf

from simclr_tf.config_checks import KERAS_APPLICATIONS, check_encoder_spec
from simclr_tf.errors import UserError
from simclr_tf.models.layers import set_trainable

# ResNet.freeze_stages counts stem + 4 block groups; 5 = everything (linear evaluation).
ALL_STAGES = 5


class BackboneError(UserError, ValueError):
    """A backbone that cannot be used as asked (the message names the fix)."""


class KerasBackbone(keras.Model):
    """Wraps a ``keras.Model`` (images -> features) so SimCLR can pretrain and evaluate it.

    Args:
      backbone: a Keras model (or layer) mapping ``[B, H, W, 3]`` float images in [0, 1] to a
        ``[B, D]`` vector or a ``[B, H', W', C]`` feature map (averaged over space). Models that
        expect another input range (e.g. ``keras.applications`` with built-in preprocessing to
        0-255) should be built without it or given a ``keras.layers.Rescaling`` in front.

    Example::

        base = keras.applications.MobileNetV3Small(
            input_shape=(32, 32, 3), include_top=False, weights=None, pooling="avg")
        encoder = KerasBackbone(base)
        h = encoder(tf.zeros([2, 32, 32, 3]))  # [2, D]
    """

    def __init__(self, backbone: keras.layers.Layer, **kwargs: Any) -> None:
        kwargs.setdefault("name", "encoder")
        super().__init__(**kwargs)
        if not isinstance(backbone, keras.layers.Layer):
            raise BackboneError(
                f"The encoder must be a keras.Model (images -> features), got "
                f"{type(backbone).__name__}."
            )
        self.backbone = backbone
        self._frozen = False

    @property
    def output_dim(self) -> int | None:
        """Width of ``h`` once built (None before)."""
        shape = getattr(self.backbone, "output_shape", None)
        return int(shape[-1]) if shape is not None and shape[-1] is not None else None

    def build(self, input_shape: tuple) -> None:
        if not self.backbone.built:
            self.backbone.build(tuple(input_shape))
        self.built = True

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        out = self.backbone.compute_output_shape(tuple(input_shape))
        return (input_shape[0], out[-1])

    def freeze_stages(self, n: int) -> None:
        """0 = everything trains, 5 = nothing does; a foreign backbone has no stages between."""
        if n not in (0, ALL_STAGES):
            raise BackboneError(
                f"Freezing {n} of {ALL_STAGES} stages needs this package's ResNet (a custom "
                "encoder is frozen whole or not at all): use --fine_tune_after_block=-1 or 4."
            )
        self._frozen = n == ALL_STAGES
        set_trainable(self.backbone, not self._frozen)

    def call(
        self, images: tf.Tensor, training: bool | None = None, frozen_stages: int = 0
    ) -> tf.Tensor:
        return self.call_endpoints(images, training=training, frozen_stages=frozen_stages)[
            "final_avg_pool"
        ]

    def call_endpoints(
        self, images: tf.Tensor, training: bool | None = None, frozen_stages: int = 0
    ) -> dict[str, tf.Tensor]:
        """``{"final_avg_pool": h}`` (plus ``feature_map`` when the backbone returns one)."""
        if frozen_stages not in (0, ALL_STAGES):
            self.freeze_stages(frozen_stages)  # raises the one-line error
        frozen = frozen_stages == ALL_STAGES
        x = tf.cast(tf.convert_to_tensor(images), self.compute_dtype)
        features = self.backbone(x, training=False if frozen else training)
        if isinstance(features, dict | list | tuple):
            raise BackboneError(
                f"The encoder returned a {type(features).__name__}; it must return one tensor "
                "(a [B, D] vector or a [B, H, W, C] feature map)."
            )
        endpoints: dict[str, tf.Tensor] = {}
        if len(features.shape) == 4:
            endpoints["feature_map"] = features
            features = tf.reduce_mean(features, axis=[1, 2])
        elif len(features.shape) != 2:
            raise BackboneError(
                f"The encoder returned shape {features.shape}; it must return a [B, D] vector "
                "or a [B, H, W, C] feature map."
            )
        if frozen:
            features = tf.stop_gradient(features)
            endpoints = {k: tf.stop_gradient(v) for k, v in endpoints.items()}
        endpoints["final_avg_pool"] = features
        return endpoints


def as_encoder(encoder: keras.layers.Layer) -> keras.Model:
    """``encoder`` itself when it has the endpoint interface (``call_endpoints``, as the ResNet;
    ``freeze_stages`` is needed only to freeze stages), else wrapped in a KerasBackbone."""
    if hasattr(encoder, "call_endpoints"):
        return encoder
    return KerasBackbone(encoder)


def uses_keras_batch_norm(encoder: keras.layers.Layer) -> bool:
    """Whether ``encoder`` holds Keras BatchNormalization layers (not this package's BatchNorm).

    Gradient caching defers this package's moving-statistics updates during its first pass; a
    Keras BatchNormalization would update them twice per step.
    """
    return any(
        isinstance(layer, keras.layers.BatchNormalization) for layer in encoder._flatten_layers()
    )


def keras_application(name: str, image_size: int) -> keras.Model:
    """``keras.applications.<name>`` with random weights, no classifier, average pooling.

    Built for float images in [0, 1]: applications with built-in 0-255 preprocessing
    (``include_preprocessing``) get it switched off.
    """
    factory = getattr(keras.applications, name, None)
    if factory is None or not callable(factory):
        known = sorted(n for n in dir(keras.applications) if n[:1].isupper())
        raise BackboneError(
            f"keras.applications has no model {name!r}: pick one of {', '.join(known)}."
        )
    kwargs: dict[str, Any] = dict(
        input_shape=(image_size, image_size, 3), include_top=False, weights=None, pooling="avg"
    )
    if "include_preprocessing" in inspect.signature(factory).parameters:
        kwargs["include_preprocessing"] = False
    try:
        return factory(**kwargs)
    except ValueError as e:
        raise BackboneError(
            f"keras.applications.{name} cannot be built at {image_size} px: {e}"
        ) from None


def backbone_from_spec(spec: str, image_size: int) -> keras.Model:
    """The backbone named by a non-ResNet ``--encoder`` value (see ``config.ENCODER_SYNTAX``)."""
    check_encoder_spec(spec)
    source, _, name = spec.partition(":")
    if source == KERAS_APPLICATIONS:
        return keras_application(name, image_size)
    try:
        factory = getattr(importlib.import_module(source), name)
    except (ImportError, AttributeError) as e:
        raise BackboneError(
            f"--encoder={spec!r}: cannot import {name} from {source} ({e})."
        ) from None
    model = factory(image_size)
    if not isinstance(model, keras.layers.Layer):
        raise BackboneError(
            f"--encoder={spec!r} returned a {type(model).__name__}, not a keras.Model."
        )
    return model
