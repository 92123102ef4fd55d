"""Evaluation maths as Keras metrics: top-k accuracy (one-shot and streaming), counts, last value.

The weighted-kNN classifier and the kNN monitor callback live in :mod:`simclr_tf.knn`.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

__all__ = [
    "ExampleCount",
    "LastValue",
    "TopKAccuracy",
    "topk_correct",
]

# ---------------------------------------------------------------------------------------------
# Top-k accuracy
# ---------------------------------------------------------------------------------------------


def _sparse_labels(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Returns int32 class ids; accepts sparse ids or one-hot / soft labels shaped like logits.

    The reference SimCLR pipelines carry one-hot labels, Keras datasets usually sparse ones, so
    both are accepted: a label tensor with the logits' rank and more than one column is one-hot.
    """
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank is None or logits.shape.rank is None:
        raise ValueError("topk_correct needs labels and logits of known rank.")
    if labels.shape.rank == logits.shape.rank:
        if labels.shape[-1] == 1:
            labels = tf.squeeze(labels, axis=-1)
        else:
            labels = tf.argmax(labels, axis=-1)
    elif labels.shape.rank != logits.shape.rank - 1:
        raise ValueError(
            f"labels of shape {labels.shape} do not fit logits of shape {logits.shape}: pass "
            "sparse class ids [batch] or one-hot labels [batch, num_classes]."
        )
    if labels.dtype.is_floating:
        labels = tf.cast(tf.round(labels), tf.int32)
    return tf.cast(labels, tf.int32)


def _clamp_k(k: int, num_classes: int | tf.Tensor) -> int | tf.Tensor:
    """min(k, num_classes), static when possible so shapes stay known."""
    if isinstance(num_classes, int):
        return min(k, num_classes)
    return tf.minimum(tf.constant(k, tf.int32), tf.cast(num_classes, tf.int32))


def _topk_hits(labels: tf.Tensor, logits: tf.Tensor, k: int) -> tf.Tensor:
    """Boolean per example: is the label among the top-k logits (tf.math.top_k order)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}.")
    logits = tf.convert_to_tensor(logits)
    if not logits.dtype.is_floating:
        logits = tf.cast(logits, tf.float32)
    labels = _sparse_labels(labels, logits)
    num_classes = logits.shape[-1]
    if num_classes is None:
        num_classes = tf.shape(logits)[-1]
    _, top_idx = tf.math.top_k(logits, k=_clamp_k(k, num_classes), sorted=False)
    return tf.reduce_any(tf.equal(top_idx, labels[..., None]), axis=-1)


def topk_correct(labels: tf.Tensor, logits: tf.Tensor, k: int) -> tf.Tensor:
    """int32 count of examples whose label is among the top-k logits.

    `labels` are sparse ids [batch] or one-hot [batch, num_classes]. k is clamped to the number
    of classes, so top-5 with 3 classes counts every example.

    Ties follow `tf.math.top_k`: among equal logits the lower class index ranks first, and only
    k classes ever count as "top-k". This is deliberate: with a zero-initialised logits layer
    (all logits equal) top-1 accuracy is the share of class 0, not 100% as `tf.math.in_top_k`
    (which counts every class tied at the boundary) would report.
    """
    return tf.reduce_sum(tf.cast(_topk_hits(labels, logits, k), tf.int32))


class TopKAccuracy(keras.metrics.Metric):
    """Streaming top-k accuracy with int64 counters, so counts over 1.28M examples stay exact.

    Keras' float32 accumulators stop being exact integers at 2**24 and drift under weighted
    updates; integer counters avoid both and work on every device (TPUs lack float64).

    `sample_weight` is a 0/1 mask (any non-zero weight counts the example once), the form used
    to drop padded examples from evaluation batches; fractional weights are not supported.
    """

    def __init__(self, k: int = 1, name: str | None = None, dtype: Any = None) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"TopKAccuracy: k must be a positive int, got {k!r}.")
        super().__init__(name=name or f"top_{k}_accuracy", dtype=dtype)
        self.k = k
        self.correct = self.add_variable(
            shape=(), initializer="zeros", dtype="int64", name="correct"
        )
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="int64", name="total")

    def update_state(
        self, y_true: tf.Tensor, y_pred: tf.Tensor, sample_weight: tf.Tensor | None = None
    ) -> None:
        """Adds one batch; y_true sparse [batch] or one-hot [batch, classes], y_pred logits."""
        hits = _topk_hits(y_true, y_pred, self.k)
        if sample_weight is None:
            counted = tf.ones_like(hits)
        else:
            weight = tf.convert_to_tensor(sample_weight)
            counted = tf.reshape(tf.not_equal(weight, tf.zeros_like(weight)), tf.shape(hits))
        hits = tf.logical_and(hits, counted)
        self.correct.assign_add(tf.reduce_sum(tf.cast(hits, tf.int64)))
        self.total.assign_add(tf.reduce_sum(tf.cast(counted, tf.int64)))

    def result(self) -> tf.Tensor:
        """correct / total (0 before any update), in the metric's dtype.

        The division is in float32, never float64: ``result`` runs inside train steps (the live
        probe), and TPUs have no float64. Relative error ~6e-8, far below one example in 10^6.
        """
        correct = tf.cast(tf.convert_to_tensor(self.correct), tf.float32)
        total = tf.cast(tf.convert_to_tensor(self.total), tf.float32)
        return tf.cast(tf.math.divide_no_nan(correct, total), self.dtype)

    def reset_state(self) -> None:
        """Zeroes both counters (Keras calls this at the start of each epoch / evaluate)."""
        self.correct.assign(0)
        self.total.assign(0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "k": self.k}


class ExampleCount(keras.metrics.Metric):
    """Examples seen (the 0/1 ``sample_weight`` mask counts only real ones), an int64 counter.

    Keras's ``Sum`` would need float64 to stay exact past 2**24 examples, and TPUs have no
    float64; an integer counter is exact and runs everywhere.
    """

    def __init__(self, name: str = "num_examples", dtype: Any = None) -> None:
        super().__init__(name=name, dtype=dtype)
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="int64", name="count")

    def update_state(self, mask: tf.Tensor) -> None:
        """Adds the number of non-zero entries of ``mask`` (one entry per example)."""
        mask = tf.convert_to_tensor(mask)
        self.count.assign_add(tf.math.count_nonzero(mask, dtype=tf.int64))

    def result(self) -> tf.Tensor:
        return tf.convert_to_tensor(self.count)

    def reset_state(self) -> None:
        self.count.assign(0)


class LastValue(keras.metrics.Metric):
    """The latest value given, kept across Keras's per-epoch metric resets.

    For quantities of the *weights* (e.g. the weight-decay penalty), which are measured now and
    then rather than averaged over the steps: between two measurements the last one stands.
    Each replica holds its own copy; the first replica's is read (they agree: weights are
    mirrored).
    """

    def __init__(self, name: str, dtype: Any = None) -> None:
        super().__init__(name=name, dtype=dtype)
        self.value = self.add_variable(
            shape=(), initializer="zeros", aggregation="only_first_replica", name="value"
        )

    def update_state(self, value: tf.Tensor) -> None:
        self.value.assign(tf.cast(value, self.dtype))

    def result(self) -> tf.Tensor:
        return tf.convert_to_tensor(self.value)

    def reset_state(self) -> None:
        """Keeps the value: Keras resets metrics every epoch, but the weights did not reset."""
