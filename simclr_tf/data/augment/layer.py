"""The SimCLR augmentation as a Keras preprocessing layer, for models that augment on device.

A layer draws its own seeds (a step counter folded into ``seed``), so it can sit at the front
of any Keras model or ``tf.function`` without the caller threading seeds through.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from simclr_tf.data.augment.views import eval_view, two_views
from simclr_tf.data.recipe import default_color_strength, default_use_blur


class SimCLRAugmentation(keras.layers.Layer):
    """Two SimCLR views of a batch in training; the evaluation view otherwise.

    Args:
      image_size: side of the output views.
      color_jitter_strength: colour distortion strength s (default: 0.5 up to 32 px, else 1.0).
      use_blur: Gaussian blur (default: off up to 32 px, on above).
      crop_sampler: ``"reference"`` or ``"uniform_area"`` random-resized-crop sampler.
      seed: base seed; each call folds in a step counter, so every call draws new views and
        two layers with the same seed draw the same sequence.

    Example::

        augment = simclr_tf.SimCLRAugmentation(32)
        view1, view2 = augment(uint8_images, training=True)  # float32 [B, 32, 32, 3] in [0, 1]
        test_view = augment(uint8_images, training=False)
    """

    def __init__(
        self,
        image_size: int,
        color_jitter_strength: float | None = None,
        use_blur: bool | None = None,
        crop_sampler: str = "reference",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.color_jitter_strength = (
            default_color_strength(self.image_size)
            if color_jitter_strength is None
            else float(color_jitter_strength)
        )
        self.use_blur = default_use_blur(self.image_size) if use_blur is None else bool(use_blur)
        self.crop_sampler = crop_sampler
        self.seed = int(seed)
        self.calls = tf.Variable(0, dtype=tf.int64, trainable=False, name="calls")

    def call(self, images: tf.Tensor, training: bool | None = None):
        if not training:
            return eval_view(images, self.image_size)
        seed = tf.stack([tf.constant(self.seed, tf.int64), self.calls.assign_add(1)])
        return two_views(
            images,
            seed,
            self.image_size,
            self.color_jitter_strength,
            self.use_blur,
            crop_sampler=self.crop_sampler,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "color_jitter_strength": self.color_jitter_strength,
            "use_blur": self.use_blur,
            "crop_sampler": self.crop_sampler,
            "seed": self.seed,
        }
