"""The evaluation protocols from Python: kNN, linear evaluation, and the export of a model.

They take the user's own ``tf.data`` datasets of batched ``(images, labels)`` (uint8 in 0-255
or float in [0, 1], any size) and preprocess them as ``run.py`` does: the evaluation view
(resize, plus the 87.5% centre crop above 32 px) for every measured image, random crop + flip
for the images a linear classifier trains on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from simclr_tf import export as export_lib
from simclr_tf import knn, optim
from simclr_tf.api import classifier, image_size_of
from simclr_tf.data import augment
from simclr_tf.errors import UserError
from simclr_tf.models.simclr import SimCLRModel

__all__ = ["encode", "export_saved_model", "knn_evaluate", "linear_evaluation"]

AUTOTUNE = tf.data.AUTOTUNE


def _encoder_of(model: keras.layers.Layer) -> keras.layers.Layer:
    """The network up to ``h``: ``model.encoder`` of a SimCLR model, else ``model`` itself."""
    return model.encoder if isinstance(model, SimCLRModel) else model


def _size_of(model: keras.layers.Layer, image_size: int | None) -> int:
    size = (
        image_size
        or getattr(model, "image_size", None)
        or image_size_of(_encoder_of(model))
        or image_size_of(getattr(_encoder_of(model), "backbone", None))
    )
    if not size:
        raise UserError("Pass image_size=...: the model does not fix its input size.")
    return int(size)


def _pairs(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """(images, labels) batches from tuples or TFDS-style dicts."""
    if isinstance(dataset.element_spec, dict):
        return dataset.map(lambda d: (d["image"], d["label"]), num_parallel_calls=AUTOTUNE)
    return dataset


def eval_images(dataset: tf.data.Dataset, image_size: int) -> tf.data.Dataset:
    """Batches of ``(eval view in [0, 1], int32 labels)``: what every measurement sees."""
    return _pairs(dataset).map(
        lambda x, y: (augment.eval_view(x, image_size), tf.cast(y, tf.int32)),
        num_parallel_calls=AUTOTUNE,
    )


def encode(
    model: keras.layers.Layer, dataset: tf.data.Dataset, *, image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The representations ``h`` and labels of a dataset, in its order.

    Args:
      model: a :class:`~simclr_tf.SimCLR` model (its encoder is used) or an encoder.
      dataset: finite batches of ``(images, labels)``.
      image_size: the encoder's input size (default: the model's).

    Returns:
      ``(features [N, D] float32, labels [N] int32)`` as NumPy arrays.

    Example::

        h, y = simclr_tf.encode(model, test_dataset)
    """
    encoder = _encoder_of(model)
    size = _size_of(model, image_size)
    features, labels = knn.extract_features(
        lambda x: tf.cast(encoder(x, training=False), tf.float32), eval_images(dataset, size)
    )
    return features.numpy(), labels.numpy()


def knn_evaluate(
    model: keras.layers.Layer,
    bank: tf.data.Dataset,
    queries: tf.data.Dataset,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    image_size: int | None = None,
) -> float:
    """Weighted-kNN top-1 accuracy (Wu et al. 2018) of the representation ``h``.

    Each query votes with its ``k`` most cosine-similar bank examples, weighted by
    exp(similarity / temperature), as the kNN monitor of ``run.py`` does.

    Args:
      model: a :class:`~simclr_tf.SimCLR` model or an encoder.
      bank: labelled batches ``(images, labels)`` to vote (e.g. the training images).
      queries: labelled batches to classify (e.g. the test images).
      k, temperature: neighbours and vote temperature (200 and 0.1, the usual protocol).
      num_classes: default: 1 + the largest label seen.
      image_size: the encoder's input size (default: the model's).

    Returns:
      The fraction of queries classified correctly, in [0, 1].

    Example::

        top1 = simclr_tf.knn_evaluate(model, train_dataset, test_dataset)
    """
    bank_x, bank_y = encode(model, bank, image_size=image_size)
    query_x, query_y = encode(model, queries, image_size=image_size)
    classes = int(num_classes or max(bank_y.max(), query_y.max()) + 1)
    scores = knn.knn_predict(query_x, bank_x, bank_y, classes, k, temperature)
    return float(np.mean(np.argmax(scores.numpy(), axis=1) == query_y))


def _batch_size(dataset: tf.data.Dataset) -> int:
    images, _ = next(iter(_pairs(dataset)))
    return int(images.shape[0])


def _steps(dataset: tf.data.Dataset) -> int:
    count = int(dataset.cardinality())
    if count < 0:  # unknown (e.g. after filter): count the batches once
        count = sum(1 for _ in dataset)
    return max(count, 1)


def linear_evaluation(
    model: keras.layers.Layer,
    train: tf.data.Dataset,
    test: tf.data.Dataset,
    *,
    num_classes: int,
    epochs: int = 90,
    learning_rate: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    image_size: int | None = None,
    seed: int = 0,
    verbose: int | str = "auto",
) -> dict[str, Any]:
    """The linear evaluation protocol: a linear classifier on the frozen representation ``h``.

    As in the paper: the encoder runs in inference mode and gets no gradient, a zero-initialised
    linear layer is trained with Nesterov momentum, learning rate ``learning_rate x B / 256``
    with cosine decay and no warmup, on random crop + flip views; the test images get the
    evaluation view.

    Args:
      model: a :class:`~simclr_tf.SimCLR` model or an encoder (any Keras backbone).
      train: labelled batches ``(images, labels)`` the classifier learns from.
      test: labelled batches it is measured on.
      num_classes: classes of the classifier.
      epochs: passes over ``train`` (the paper: 90-100).
      learning_rate, momentum, weight_decay: the optimizer (lr before batch scaling).
      image_size: the encoder's input size (default: the model's).
      seed: seed of the crop + flip views.
      verbose: ``fit``'s progress output.

    Returns:
      ``{"top1", "top5"}`` (fractions) and ``"classifier"`` (the trained model).

    Example::

        result = simclr_tf.linear_evaluation(model, train_dataset, test_dataset,
                                             num_classes=10, epochs=90)
        print(result["top1"])
    """
    size = _size_of(model, image_size)
    clf = classifier(model, num_classes, image_size=size)
    batch = _batch_size(train)
    total = epochs * _steps(train)
    schedule = optim.WarmupCosineDecay(learning_rate * batch / 256.0, 0, total)
    clf.compile(optimizer=optim.build_optimizer("momentum", schedule, momentum, weight_decay))
    seeds = tf.random.Generator.from_seed(seed)

    def train_view(images, labels):
        view = augment.finetune_view(images, seeds.make_seeds(1)[:, 0], size)
        return view, tf.cast(labels, tf.int32)

    views = _pairs(train).map(train_view).prefetch(AUTOTUNE)
    clf.fit(views, epochs=epochs, verbose=verbose)
    result = clf.evaluate(eval_images(test, size), return_dict=True, verbose=0)
    return {
        "top1": float(result["label_top_1_accuracy"]),
        "top5": float(result["label_top_5_accuracy"]),
        "classifier": clf,
    }


def export_saved_model(
    model: SimCLRModel,
    export_dir: str,
    *,
    image_size: int | None = None,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> str:
    """Writes a SavedModel that serves (TF Serving) and is a TF Hub reusable module.

    Signatures ``serving_default`` (encoded image bytes) and ``serving_images`` (float images
    in [0, 1]) return ``final_avg_pool`` (``h``), ``proj_head_output`` and, with a classifier,
    ``logits``/``probabilities``/``top_5_classes``; ``hub.KerasLayer(export_dir)`` gives ``h``.

    Args:
      model: a :class:`~simclr_tf.SimCLR` model or a :func:`~simclr_tf.classifier`.
      export_dir: the folder to write (refused if it exists, unless ``overwrite``).
      image_size: input size of the serving signatures (default: the model's).
      class_names: written to ``labels.txt`` (line i = class i).
      overwrite: replace an existing export.

    Returns:
      ``export_dir``.

    Example::

        simclr_tf.export_saved_model(model, "exports/simclr")
        h = hub.KerasLayer("exports/simclr")(images)
    """
    size = _size_of(model, image_size)
    return export_lib.export_saved_model(
        model, export_dir, image_size=size, class_names=class_names, overwrite=overwrite
    )
