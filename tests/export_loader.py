"""Loading an export in tests: entry points that check their inputs and name the fix on misuse.

Test-only (consumers use ``tf.saved_model.load`` / ``hub.load`` directly); it checks that the
signatures of :mod:`simclr_tf.export` are what the model card promises.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf

from simclr_tf.errors import ExportError
from simclr_tf.export import LABELS_FILE, SERVING_BYTES, SERVING_IMAGES
from simclr_tf.model_dir import EXPORT_SUBDIR


class LoadedExport:
    """A loaded export whose entry points check their inputs and name the fix on misuse.

    Attributes: ``module`` (the raw ``tf.saved_model.load`` object), ``image_size``,
    ``class_names`` (from ``labels.txt``, or None).
    """

    def __init__(self, path: str):
        self.path = path
        self.module = tf.saved_model.load(path)
        missing = [s for s in (SERVING_BYTES, SERVING_IMAGES) if s not in self.module.signatures]
        if missing:
            raise ExportError(
                f"{path} is not a simclr_tf export (no {missing} signature): export it with "
                "tools/export.py."
            )
        spec = self.module.signatures[SERVING_IMAGES].structured_input_signature[1]["images"]
        self.image_size = int(spec.shape[1])
        labels = os.path.join(path, LABELS_FILE)
        self.class_names: tuple[str, ...] | None = None
        if tf.io.gfile.exists(labels):
            with tf.io.gfile.GFile(labels) as f:
                self.class_names = tuple(line.rstrip("\n") for line in f if line.strip())

    def _images(self, images: Any, what: str, size: int | None) -> tf.Tensor:
        x = tf.convert_to_tensor(images)
        if not x.dtype.is_floating:
            raise ExportError(
                f"{what} expects float32 images in [0, 1]; got dtype {x.dtype.name}. Convert "
                "with tf.image.convert_image_dtype(images, tf.float32) (divides uint8 by 255)"
                + (f", or pass encoded bytes to {SERVING_BYTES}." if size else ".")
            )
        x = tf.cast(x, tf.float32)
        shape = x.shape.as_list()
        if len(shape) != 4 or shape[-1] != 3:
            raise ExportError(
                f"{what} expects a batch of RGB images [N, H, W, 3]; got shape {shape}. Add a "
                "batch axis with images[None] for one image; drop alpha with images[..., :3]."
            )
        if size is not None and shape[1:3] != [size, size]:
            raise ExportError(
                f"{what} expects images of {size}x{size} (this export's image_size); got "
                f"{shape[1]}x{shape[2]}. Resize with simclr_tf.data.augment.eval_view(images, "
                f"{size}), call the module directly (any size), or send encoded images to "
                f"{SERVING_BYTES}."
            )
        return x

    def __call__(self, images: Any, training: bool = False) -> dict[str, tf.Tensor]:
        """The hub ``__call__``: every endpoint plus ``default``."""
        return self.module(self._images(images, "__call__", None), training=bool(training))

    def serve_images(self, images: Any) -> dict[str, tf.Tensor]:
        """The ``serving_images`` signature on float images of the export's size."""
        x = self._images(images, SERVING_IMAGES, self.image_size)
        return self.module.signatures[SERVING_IMAGES](images=x)

    def serve_bytes(self, image_bytes: Any) -> dict[str, tf.Tensor]:
        """The ``serving_default`` signature on a batch of encoded images."""
        if isinstance(image_bytes, (bytes, str)):
            raise ExportError(
                f"{SERVING_BYTES} expects a batch of encoded images; got a single one. Pass "
                "[image_bytes]."
            )
        x = tf.convert_to_tensor(image_bytes)
        if x.dtype != tf.string or x.shape.rank != 1:
            raise ExportError(
                f"{SERVING_BYTES} expects tf.string [N] (encoded JPEG/PNG bytes); got "
                f"{x.dtype.name} {x.shape.as_list()}. Read files with tf.io.read_file or "
                f"open(path, 'rb').read(); send decoded float images to {SERVING_IMAGES}."
            )
        return self.module.signatures[SERVING_BYTES](image_bytes=x)


def load_export(path: str) -> LoadedExport:
    """Loads an export with input checks that name the fix (see :class:`LoadedExport`)."""
    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        raise ExportError(
            f"No SavedModel at {path} (no saved_model.pb): pass a folder such as "
            f"MODEL_DIR/{EXPORT_SUBDIR}/<step>."
        )
    return LoadedExport(path)
