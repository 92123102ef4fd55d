"""Features of a finite dataset through an encoder: one pass, every example once.

Shared by the kNN monitor, kNN evaluation and the neighbour pictures: accepts (images, labels)
tuples, TFDS-style dicts and padded ``(images, labels, mask)`` batches, and traces the encoder
once for full and partial batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

__all__ = ["extract_features"]


def split_element(element: Any) -> tuple[Any, Any]:
    """(images, labels) from a dataset element: a tuple/list or a TFDS-style dict."""
    if isinstance(element, dict):
        if "image" in element and "label" in element:
            return element["image"], element["label"]
    elif isinstance(element, tuple | list) and len(element) >= 2:
        return element[0], element[1]
    raise ValueError(
        "extract_features needs a dataset of (images, labels) batches (or dicts with 'image' "
        f"and 'label'); got elements of structure {element!r}."
    )


def mask_of(element: Any) -> tf.Tensor | None:
    """The boolean row mask of a padded ``(images, labels, mask)`` batch, else None."""
    if isinstance(element, tuple | list) and len(element) >= 3:
        return tf.cast(element[2], tf.bool)
    return None


def _compile_encoder(
    encoder_fn: Callable[[tf.Tensor], tf.Tensor], image_spec: tf.TensorSpec
) -> Callable[[tf.Tensor], tf.Tensor]:
    """tf.function with a batch-agnostic signature: one trace serves full and partial batches."""
    if isinstance(encoder_fn, tf.types.experimental.PolymorphicFunction):
        return encoder_fn
    signature = tf.TensorSpec([None, *image_spec.shape[1:]], image_spec.dtype)
    return tf.function(encoder_fn, input_signature=[signature])


def _describe(value: Any) -> str:
    """Shape-level description for error messages (never dumps tensor contents)."""
    if isinstance(value, tf.Tensor):
        return f"a tensor of shape {value.shape}"
    return f"a {type(value).__name__}"


def sparse_batch_labels(labels: tf.Tensor) -> tf.Tensor:
    """int32 [batch] ids from sparse, [batch, 1] or one-hot labels."""
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 2:
        labels = tf.squeeze(labels, 1) if labels.shape[1] == 1 else tf.argmax(labels, axis=1)
    if labels.shape.rank != 1:
        raise ValueError(f"labels must be [batch] ids or one-hot, got shape {labels.shape}.")
    return tf.cast(labels, tf.int32)


def extract_features(
    encoder_fn: Callable[[tf.Tensor], tf.Tensor],
    dataset: tf.data.Dataset,
    max_examples: int | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Runs `encoder_fn` over a finite batched (images, labels) dataset.

    Returns (features [N, D] float32, labels [N] int32), every example once including the last
    partial batch; `max_examples` stops after that many. The encoder is wrapped in one
    tf.function with an unknown batch size, so it is traced once per call, not per batch shape
    (pass an existing tf.function to reuse its traces across calls).
    """
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be None or >= 1, got {max_examples}.")
    if max_examples is None and dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "extract_features got an infinite dataset (drop .repeat()) and no max_examples."
        )
    image_spec, _ = split_element(dataset.element_spec)
    if not isinstance(image_spec, tf.TensorSpec) or image_spec.shape.rank in (None, 0, 1):
        raise ValueError(
            f"images must be batched tensors [batch, ...], got spec {image_spec}: call "
            ".batch(n) on the dataset."
        )
    encode = _compile_encoder(encoder_fn, image_spec)
    features, labels, seen = [], [], 0
    for element in dataset:
        images, batch_labels = split_element(element)
        mask = mask_of(element)
        if mask is not None:  # padded batches (distribute.pad_batches): keep the real rows
            images = tf.boolean_mask(images, mask)
            batch_labels = tf.boolean_mask(batch_labels, mask)
        if max_examples is not None and seen + int(tf.shape(images)[0]) > max_examples:
            images = images[: max_examples - seen]
            batch_labels = batch_labels[: max_examples - seen]
        batch_features = encode(images)
        if isinstance(batch_features, dict | list | tuple) or batch_features.shape.rank != 2:
            raise ValueError(
                "the encoder must return one [batch, dim] tensor (pooled features), got "
                f"{_describe(batch_features)} for images of shape {images.shape}; if the "
                "dataset is unbatched, call .batch(n) on it."
            )
        features.append(tf.cast(batch_features, tf.float32))
        labels.append(sparse_batch_labels(batch_labels))
        seen += int(tf.shape(features[-1])[0])
        if max_examples is not None and seen >= max_examples:
            break
    if not features:
        raise ValueError("extract_features: the dataset yielded no examples.")
    return tf.concat(features, axis=0), tf.concat(labels, axis=0)
