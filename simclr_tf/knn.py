"""Weighted kNN classification of features and the kNN monitor callback.

(:func:`extract_features` lives in :mod:`simclr_tf.features`; it is re-exported here.)

The kNN monitor follows the protocol of Wu et al. 2018 ("Unsupervised Feature Learning via
Non-Parametric Instance Discrimination") that most self-supervised papers report: L2-normalised
features, cosine similarity, the k nearest bank examples vote for their class with weight
exp(similarity / temperature). It needs no training, so it tracks representation quality during
pretraining for the cost of two feature passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from simclr_tf import distribute
from simclr_tf.features import (
    extract_features,
    mask_of,
    sparse_batch_labels,
    split_element,
)

__all__ = ["KNNMonitor", "extract_features", "knn_predict"]


# ---------------------------------------------------------------------------------------------
# Weighted kNN
# ---------------------------------------------------------------------------------------------


def _knn_scores_impl(
    query: tf.Tensor,
    bank: tf.Tensor,
    bank_labels: tf.Tensor,
    num_classes: int,
    k: int,
    temperature: float,
    chunk_size: int,
) -> tf.Tensor:
    """Class scores for L2-normalised query/bank, one query chunk per loop iteration.

    A sequential while loop (parallel_iterations=1) keeps only one [chunk, bank] similarity
    block alive at a time: 10k x 50k floats would be 2 GB.
    """
    num_queries = tf.shape(query)[0]
    k_eff = tf.minimum(tf.constant(k, tf.int32), tf.shape(bank)[0])
    num_chunks = (num_queries + chunk_size - 1) // chunk_size
    scores = tf.TensorArray(
        tf.float32,
        size=num_chunks,
        infer_shape=False,
        element_shape=tf.TensorShape([None, num_classes]),
    )

    def body(i: tf.Tensor, scores: tf.TensorArray) -> tuple[tf.Tensor, tf.TensorArray]:
        start = i * chunk_size
        chunk = query[start : tf.minimum(start + chunk_size, num_queries)]
        rows = tf.shape(chunk)[0]
        sim = tf.matmul(chunk, bank, transpose_b=True)  # cosine: both sides are unit vectors
        top_sim, top_idx = tf.math.top_k(sim, k=k_eff, sorted=False)
        weights = tf.exp(top_sim / temperature)
        neighbour_labels = tf.gather(bank_labels, top_idx)  # [rows, k]
        # Segment id = row * num_classes + class: an [rows, num_classes] scatter-add that never
        # builds the [rows, k, num_classes] one-hot tensor (800 MB for ImageNet's 1000 classes).
        segments = tf.range(rows)[:, None] * num_classes + neighbour_labels
        chunk_scores = tf.math.unsorted_segment_sum(
            tf.reshape(weights, [-1]), tf.reshape(segments, [-1]), rows * num_classes
        )
        return i + 1, scores.write(i, tf.reshape(chunk_scores, [rows, num_classes]))

    _, scores = tf.while_loop(
        lambda i, _: i < num_chunks,
        body,
        [tf.constant(0, tf.int32), scores],
        parallel_iterations=1,
    )
    return scores.concat()


_knn_scores = tf.function(_knn_scores_impl, reduce_retracing=True, autograph=False)


def knn_predict(
    query: tf.Tensor,
    bank: tf.Tensor,
    bank_labels: tf.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> tf.Tensor:
    """Weighted-kNN class scores [Q, num_classes] for `query` [Q, D] against `bank` [N, D].

    Features are L2-normalised here, similarity is cosine, the top-k bank neighbours (k clamped
    to N) each add exp(sim / temperature) to their class's score; argmax is the prediction.
    Scores are float32: exp(1 / temperature) overflows below temperature ~0.0113.

    Args:
      query, bank: ``[Q, D]`` features to classify, ``[N, D]`` features of labelled examples.
      bank_labels: ``[N]`` class ids in [0, num_classes) (or one-hot ``[N, num_classes]``).
      num_classes, k, temperature: the classes, the voters (clamped to N), the vote weight.
      chunk_size: queries per similarity block (bounds the memory).

    Example: ``scores = simclr_tf.knn_predict(h_test, h_train, y_train, num_classes=10)``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    query = tf.cast(tf.convert_to_tensor(query), tf.float32)
    bank = tf.cast(tf.convert_to_tensor(bank), tf.float32)
    if query.shape.rank != 2 or bank.shape.rank != 2:
        raise ValueError(
            f"knn_predict wants 2-D features, got query {query.shape} and bank {bank.shape}; "
            "flatten or pool encoder outputs to [examples, dim] first."
        )
    if not query.shape[1:].is_compatible_with(bank.shape[1:]):
        raise ValueError(
            f"query dim {query.shape[1]} != bank dim {bank.shape[1]}: both must come from the "
            "same encoder."
        )
    bank_labels = tf.convert_to_tensor(bank_labels)
    if bank_labels.shape.rank == 2:
        bank_labels = tf.argmax(bank_labels, axis=-1)
    bank_labels = tf.cast(bank_labels, tf.int32)
    if bank_labels.shape.rank != 1:
        raise ValueError(f"bank_labels must be [N] class ids, got shape {bank_labels.shape}.")
    if bank.shape[0] == 0:
        raise ValueError("knn_predict got an empty bank: pass at least one bank example.")
    if None not in (bank.shape[0], bank_labels.shape[0]) and bank.shape[0] != bank_labels.shape[0]:
        raise ValueError(
            f"bank has {bank.shape[0]} rows but bank_labels has {bank_labels.shape[0]}."
        )
    # Out-of-range ids would silently land in another query's row of the segment sum.
    with tf.control_dependencies(
        [
            tf.debugging.assert_non_negative(bank_labels, message="negative bank label"),
            tf.debugging.assert_less(bank_labels, num_classes, message="bank label >= num_classes"),
        ]
    ):
        bank_labels = tf.identity(bank_labels)
    return _knn_scores(
        tf.math.l2_normalize(query, axis=1),
        tf.math.l2_normalize(bank, axis=1),
        bank_labels,
        num_classes,
        k,
        float(temperature),
        chunk_size,
    )


# ---------------------------------------------------------------------------------------------
# kNN monitor callback
# ---------------------------------------------------------------------------------------------


class KNNMonitor(keras.callbacks.Callback):
    """Weighted-kNN top-1 of `model.encoder` features (before the projection head) during fit.

    Every `every_n_epochs` epochs (counted from 1, so epoch index e runs when
    (e + 1) % every_n_epochs == 0) it embeds the bank and eval datasets with
    `model.encoder(images, training=False)`, classifies the eval set with `knn_predict`, and
    writes `logs["knn_top1"]` (a fraction in [0, 1]) so callbacks after it in the list
    (CSVLogger, TensorBoard, History) record it. With `log_dir` it also writes a TensorBoard
    scalar `knn_top1` at step `model.optimizer.iterations`.

    Under tf.distribute the encoder runs through the model's strategy (``strategy.run`` on a
    distributed dataset, then ``strategy.gather``), as TPUStrategy requires; batches are padded
    to a static, replica-divisible size with a mask, so every example counts once.

    Args:
      bank_dataset_fn, eval_dataset_fn: zero-argument functions returning batched
        ``(images, labels)`` datasets (evaluation views): the voters and the queries.
      num_classes, k, temperature, bank_size (None = all): the kNN settings.
      every_n_epochs: epochs between two passes; log_dir: for the TensorBoard scalar.
      fill_value: ``knn_top1`` on epochs without a pass; None (default) leaves it out; NaN
        suits a Keras CSVLogger, which fixes its columns from the first epoch.

    Example: ``model.fit(x, callbacks=[KNNMonitor(lambda: bank, lambda: test, num_classes=10)])``.
    """

    def __init__(
        self,
        bank_dataset_fn: Callable[[], tf.data.Dataset],
        eval_dataset_fn: Callable[[], tf.data.Dataset],
        num_classes: int,
        every_n_epochs: int = 1,
        k: int = 200,
        temperature: float = 0.1,
        bank_size: int | None = None,
        log_dir: str | None = None,
        *,
        fill_value: float | None = None,
    ) -> None:
        super().__init__()
        if not callable(bank_dataset_fn) or not callable(eval_dataset_fn):
            raise TypeError(
                "bank_dataset_fn and eval_dataset_fn must be zero-argument callables returning "
                "datasets (e.g. lambda: make_eval_dataset(...)), not datasets."
            )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}.")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        if bank_size is not None and bank_size < 1:
            raise ValueError(f"bank_size must be None or >= 1, got {bank_size}.")
        self.bank_dataset_fn = bank_dataset_fn
        self.eval_dataset_fn = eval_dataset_fn
        self.num_classes = num_classes
        self.every_n_epochs = every_n_epochs
        self.k = k
        self.temperature = temperature
        self.bank_size = bank_size
        self.log_dir = log_dir
        self.fill_value = fill_value
        self.results: list[dict[str, float]] = []  # one entry per kNN pass
        self.last_counts: dict[str, int] = {}  # queries and bank examples of the last pass
        self._writer: Any = None
        self._steps: dict[tuple[Any, ...], Callable[..., tuple[tf.Tensor, ...]]] = {}

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        self._steps = {}  # traces close over the old model's encoder

    def _step_for(self, spec: tf.TensorSpec) -> Callable[..., tuple[tf.Tensor, ...]]:
        """One compiled, replicated encoder step per batch spec, reused across epochs."""
        encoder = getattr(self.model, "encoder", None)
        if encoder is None:
            raise AttributeError(
                f"KNNMonitor needs the model to expose `.encoder` (the network up to the "
                f"representation h, before the projection head); {type(self.model).__name__} "
                "has none."
            )
        key = (tuple(spec.shape.as_list()), spec.dtype)
        if key not in self._steps:
            strategy = self.model.distribute_strategy

            def replica_step(images, labels, mask):
                features = tf.cast(encoder(images, training=False), tf.float32)
                return features, sparse_batch_labels(labels), mask

            @tf.function
            def step(images, labels, mask):
                per_replica = strategy.run(replica_step, args=(images, labels, mask))
                return tuple(strategy.gather(t, axis=0) for t in per_replica)

            self._steps[key] = step
        return self._steps[key]

    def _features(
        self, dataset: tf.data.Dataset, max_examples: int | None = None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """(features [N, D], labels [N]) of every real example, encoded on every replica."""
        strategy = self.model.distribute_strategy
        replicas = strategy.num_replicas_in_sync
        first = next(iter(dataset), None)
        if first is None:
            raise ValueError("KNNMonitor: a dataset yielded no examples.")
        images, _ = split_element(first)
        batch = -(-int(images.shape[0]) // replicas) * replicas  # rounded up to the replicas

        def as_tuple(*element):
            element = element[0] if len(element) == 1 else element
            mask = mask_of(element)
            return split_element(element) + (() if mask is None else (mask,))

        padded = distribute.pad_batches(dataset.map(as_tuple), batch)
        step = self._step_for(padded.element_spec[0])
        features, labels, seen = [], [], 0
        for images, batch_labels, mask in strategy.experimental_distribute_dataset(padded):
            x, y, m = step(images, batch_labels, mask)
            keep = tf.cast(m, tf.bool)
            features.append(tf.boolean_mask(x, keep))
            labels.append(tf.boolean_mask(y, keep))
            seen += int(tf.shape(labels[-1])[0])
            if max_examples is not None and seen >= max_examples:
                break
        features_all, labels_all = tf.concat(features, 0), tf.concat(labels, 0)
        if max_examples is not None:
            features_all, labels_all = features_all[:max_examples], labels_all[:max_examples]
        return features_all, labels_all

    def features(self, dataset: tf.data.Dataset, max_examples: int | None = None):
        """``(features [N, D], labels [N])`` of a batched dataset with the current encoder."""
        return self._features(dataset, max_examples)

    def evaluate(self) -> float:
        """One kNN pass with the current weights; returns top-1 accuracy in [0, 1]."""
        bank_x, bank_y = self._features(self.bank_dataset_fn(), self.bank_size)
        query_x, query_y = self._features(self.eval_dataset_fn())
        scores = knn_predict(query_x, bank_x, bank_y, self.num_classes, self.k, self.temperature)
        hits = tf.equal(tf.argmax(scores, axis=1, output_type=tf.int32), query_y)
        # Logged with the result: under several workers the counts show every example once.
        self.last_counts = {"num_queries": int(query_y.shape[0]), "bank_size": int(bank_y.shape[0])}
        return float(np.mean(hits.numpy()))

    def _step(self, epoch: int) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return epoch + 1
        return int(np.asarray(keras.ops.convert_to_numpy(optimizer.iterations)))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None:
            logs = {}
        if (epoch + 1) % self.every_n_epochs != 0:
            if self.fill_value is not None:
                logs["knn_top1"] = self.fill_value
            return
        start = time.perf_counter()
        top1 = self.evaluate()
        seconds = time.perf_counter() - start
        step = self._step(epoch)
        logs["knn_top1"] = top1
        self.results.append({"epoch": epoch, "step": step, "knn_top1": top1, **self.last_counts})
        logging.info(
            "kNN (k=%d, T=%g) on %d queries, bank of %d: top-1 after epoch %d (step %d): %.4f "
            "[%.1fs]",
            self.k,
            self.temperature,
            self.last_counts["num_queries"],
            self.last_counts["bank_size"],
            epoch + 1,
            step,
            top1,
            seconds,
        )
        if self.log_dir is not None:
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.log_dir)
            with self._writer.as_default():
                tf.summary.scalar("knn_top1", top1, step=step)
            self._writer.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
