"""The nearest-neighbour picture of an encoder: query images, each followed by its top-k.

What a kNN accuracy number hides is *which* images an encoder thinks alike; this picture shows
it. Each row is one query image from the evaluation split, then its ``k`` most cosine-similar
images of the bank (the kNN monitor's bank: training images), each framed green when its class
is the query's and red otherwise. Queries are the first evaluation image of each class in turn,
so the rows cover the classes.

Memory stays small at any bank size: the bank is encoded once (features only), and its images
are read again only for the few neighbours drawn.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from simclr_tf.atomic import atomic_path
from simclr_tf.plots import pyplot

NEIGHBOURS_FILE = "neighbours.png"
HIT, MISS = (0.1, 0.65, 0.2), (0.85, 0.1, 0.1)  # frame colours: same class / another class

Features = Callable[[tf.data.Dataset, int | None], tuple[tf.Tensor, tf.Tensor]]


def nearest_neighbours(
    query: np.ndarray, bank: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``[Q, k]`` and cosine similarities ``[Q, k]`` of each query's top-k bank rows.

    Args:
      query: ``[Q, D]`` features.
      bank: ``[N, D]`` features (same encoder).
      k: neighbours per query (clamped to N).

    Example::

        idx, sim = nearest_neighbours(h_test[:8], h_train, k=8)
    """
    q = tf.math.l2_normalize(tf.cast(query, tf.float32), axis=1)
    b = tf.math.l2_normalize(tf.cast(bank, tf.float32), axis=1)
    top = tf.math.top_k(tf.matmul(q, b, transpose_b=True), k=min(int(k), int(b.shape[0])))
    return top.indices.numpy(), top.values.numpy()


def pick_queries(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` queries, the first unused example of each class in turn."""
    labels = np.asarray(labels)
    by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < min(count, len(labels)):
        for members in by_class:
            if members and len(picked) < count:
                picked.append(int(members.pop(0)))
    return np.asarray(picked, np.int64)


def images_at(dataset: tf.data.Dataset, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """The images at these example positions of a batched (images, labels[, mask]) dataset."""
    wanted, found, seen = set(int(i) for i in indices), {}, 0
    for element in dataset:
        images = element[0]
        if len(element) > 2:  # padded batches: only the real rows count
            images = tf.boolean_mask(images, tf.cast(element[2], tf.bool))
        images = images.numpy()
        for row in range(images.shape[0]):
            if seen + row in wanted:
                found[seen + row] = images[row]
        seen += images.shape[0]
        if len(found) == len(wanted):
            break
    return found


def neighbours_figure(
    query_images: np.ndarray,
    query_labels: np.ndarray,
    neighbour_images: np.ndarray,
    neighbour_labels: np.ndarray,
    class_names: Sequence[str] | None = None,
) -> Any:
    """The figure: row i = query i, then its neighbours framed green (same class) or red.

    Args:
      query_images: ``[Q, H, W, 3]`` floats in [0, 1].
      query_labels: ``[Q]`` class ids.
      neighbour_images: ``[Q, k, H, W, 3]`` floats in [0, 1].
      neighbour_labels: ``[Q, k]`` class ids.
      class_names: names of the class ids (default: the ids).
    """
    plt = pyplot()
    rows, k = neighbour_labels.shape
    name = (lambda c: class_names[c]) if class_names else str
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.15 * (k + 1), 1.3 * rows), squeeze=False)
    for i in range(rows):
        cells = [(query_images[i], int(query_labels[i]), None)]
        cells += [(neighbour_images[i, j], int(neighbour_labels[i, j]), j) for j in range(k)]
        for ax, (image, label, j) in zip(axes[i], cells, strict=True):
            ax.imshow(np.clip(image, 0.0, 1.0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j is None:
                colour, width = (0.0, 0.0, 0.0), 1.0
                ax.set_title(f"query: {name(label)}", fontsize=6)
            else:
                colour = HIT if label == int(query_labels[i]) else MISS
                width = 3.0
                ax.set_title(name(label), fontsize=6, color=colour)
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(width)
    fig.suptitle("nearest neighbours in the bank (green: same class, red: another)", fontsize=8)
    fig.tight_layout()
    return fig


def write_neighbours(
    features: Features,
    bank: Callable[[], tf.data.Dataset],
    queries: Callable[[], tf.data.Dataset],
    out: str,
    *,
    num_queries: int = 8,
    k: int = 8,
    bank_size: int | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Encodes bank and queries, finds each query's top-k and draws them into ``out`` (PNG).

    Args:
      features: ``(dataset, max_examples) -> (features [N, D], labels [N])`` (e.g.
        ``KNNMonitor.features`` or a wrapper of :func:`simclr_tf.knn.extract_features`).
      bank, queries: zero-argument functions returning batched ``(images, labels)`` datasets
        of evaluation views in [0, 1], read in a fixed order.
      out: the PNG to write.
      num_queries, k: rows and neighbours per row.
      bank_size: bank examples used (None = all).
      class_names: names of the class ids.

    Returns:
      ``{"neighbour_precision": fraction of drawn neighbours of the query's class}``.
    """
    bank_x, bank_y = features(bank(), bank_size)
    query_x, query_y = features(queries(), None)
    chosen = pick_queries(query_y.numpy(), num_queries)
    idx, _ = nearest_neighbours(tf.gather(query_x, chosen).numpy(), bank_x.numpy(), k)
    query_found = images_at(queries(), chosen)
    bank_found = images_at(bank(), np.unique(idx))
    bank_labels = bank_y.numpy()
    fig = neighbours_figure(
        np.stack([query_found[int(i)] for i in chosen]),
        query_y.numpy()[chosen],
        np.stack([[bank_found[int(j)] for j in row] for row in idx]),
        bank_labels[idx],
        class_names,
    )
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        pyplot().close(fig)
    precision = float(np.mean(bank_labels[idx] == query_y.numpy()[chosen][:, None]))
    logging.info(
        "Nearest-neighbour picture %s (neighbours of the query's class: %.2f).", out, precision
    )
    return {"neighbour_precision": precision}


def write_neighbours_safely(model_dir: str, **kwargs: Any) -> str | None:
    """``model_dir/neighbours.png`` at the end of pretraining; one log line when it cannot."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logging.info("neighbours.png skipped: matplotlib is not installed.")
        return None
    out = os.path.join(model_dir, NEIGHBOURS_FILE)
    try:
        write_neighbours(out=out, **kwargs)
    except Exception as e:  # noqa: BLE001 - a picture must never fail a finished training run
        logging.warning("neighbours.png not written: %s", e)
        return None
    return out
