"""Plumbing every augmentation op shares: one image or a batch, per-example values, checks.

Every op takes ONE image ``[H, W, C]`` or a BATCH ``[B, H, W, C]`` and runs one batched body
(``_to_batch`` / ``_from_batch``); per-example parameters are ``[B]`` tensors (``_per_example``,
``_bcast``). The random draws are in :mod:`simclr_tf.data.augment.seeds`.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

# The views of one recipe: [n, S, S, 3] (batched) or n tensors [S, S, 3] (per view).
Views = tf.Tensor | list


def _to_batch(image) -> tuple[tf.Tensor, bool]:
    """Returns (float32 [B,H,W,C] in [0,1], was_single) so every op has one batched body."""
    image = tf.convert_to_tensor(image)
    rank = image.shape.rank
    if rank not in (3, 4):
        raise ValueError(
            f"Expected one image [H, W, C] or a batch [B, H, W, C]; got shape {image.shape}. "
            "Add or remove a leading batch axis."
        )
    if not (image.dtype.is_floating or image.dtype.is_integer):
        raise TypeError(f"Images must be uint8 (0-255) or float (0-1); got dtype {image.dtype}.")
    x = tf.image.convert_image_dtype(image, tf.float32)
    if rank == 3:
        return x[tf.newaxis], True
    return x, False


def _from_batch(x: tf.Tensor, single: bool) -> tf.Tensor:
    return x[0] if single else x


def _check_p(name: str, p: float) -> None:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1]; got {p}.")


def _check_size(size: int) -> None:
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive int (output side in pixels); got {size!r}.")


def _check_rgb(x: tf.Tensor, what: str) -> None:
    channels = x.shape[-1]
    if channels is not None and channels != 3:
        raise ValueError(f"{what} needs RGB images with 3 channels; got {channels} channels.")


def _bcast(v: tf.Tensor) -> tf.Tensor:
    """[B] -> [B, 1, 1, 1] so per-example parameters broadcast over pixels."""
    return tf.reshape(v, [-1, 1, 1, 1])


def _per_example(value, batch) -> tf.Tensor:
    """Scalar or [B] -> float32 [B]."""
    value = tf.cast(tf.convert_to_tensor(value), tf.float32)
    return tf.broadcast_to(tf.reshape(value, [-1]), tf.reshape(batch, [1]))


def _cond(pred: tf.Tensor, true_fn: Callable[[], tf.Tensor], value: tf.Tensor) -> tf.Tensor:
    return tf.cond(pred, true_fn, lambda: value)
