"""simclr_tf: SimCLR self-supervised learning for TensorFlow 2 / Keras 3.

The Python API (``run.py`` is the command line over the same code; neither needs the other):

* Pretraining: :class:`SimCLR`, a ``keras.Model`` around any encoder (this package's
  :class:`ResNet` or any Keras backbone, e.g. ``keras.applications``): ``model.fit(images)``.
* Downstream: :func:`knn_evaluate`, :func:`linear_evaluation`, :func:`encode`,
  :func:`classifier` (linear evaluation or fine-tuning as a model to ``fit``),
  :func:`distiller` (SimCLRv2 distillation), :func:`export_saved_model` (serving + TF Hub).
* Pieces: the augmentations (:func:`two_views` per image or batched, :func:`pretrain_view`,
  :func:`finetune_view`, :func:`eval_view`, :func:`color_distortion`,
  :func:`random_resized_crop`, the layer :class:`SimCLRAugmentation`), the losses
  (:func:`nt_xent`, :func:`nt_logistic`, :func:`margin_triplet` and the ``keras.losses.Loss``
  classes :class:`NTXent`, :class:`NTLogistic`, :class:`MarginTriplet`), :class:`LARS`,
  :class:`WarmupCosineDecay`, the kNN pieces (:func:`knn_predict`, :class:`KNNMonitor`), the
  encoders (:class:`ResNet`, :class:`KerasBackbone`, :class:`ProjectionHead`) and the
  published checkpoints (:func:`load_official`).

Example::

    import simclr_tf
    model = simclr_tf.SimCLR(my_keras_backbone, image_size=32, temperature=0.5)
    model.compile(optimizer=simclr_tf.LARS(simclr_tf.WarmupCosineDecay(1.0, 100, 1000)))
    model.fit(images, epochs=10)
    print(simclr_tf.knn_evaluate(model, train, test))

Names are imported on first use (``import simclr_tf`` alone does not import TensorFlow); the
names in ``__all__`` are the stable API, everything else is private by convention.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module defining it.
_PUBLIC = {
    "SimCLR": "simclr_tf.api",
    "classifier": "simclr_tf.api",
    "distiller": "simclr_tf.api",
    "encode": "simclr_tf.downstream",
    "export_saved_model": "simclr_tf.downstream",
    "knn_evaluate": "simclr_tf.downstream",
    "linear_evaluation": "simclr_tf.downstream",
    "KerasBackbone": "simclr_tf.models.backbone",
    "ResNet": "simclr_tf.models.resnet",
    "ProjectionHead": "simclr_tf.models.heads",
    "SimCLRAugmentation": "simclr_tf.data.augment.layer",
    "two_views": "simclr_tf.data.augment",
    "pretrain_view": "simclr_tf.data.augment",
    "finetune_view": "simclr_tf.data.augment",
    "eval_view": "simclr_tf.data.augment",
    "color_distortion": "simclr_tf.data.augment",
    "random_resized_crop": "simclr_tf.data.augment",
    "nt_xent": "simclr_tf.losses",
    "nt_logistic": "simclr_tf.losses",
    "margin_triplet": "simclr_tf.losses",
    "NTXent": "simclr_tf.loss_classes",
    "NTLogistic": "simclr_tf.loss_classes",
    "MarginTriplet": "simclr_tf.loss_classes",
    "LARS": "simclr_tf.optim",
    "WarmupCosineDecay": "simclr_tf.optim",
    "knn_predict": "simclr_tf.knn",
    "KNNMonitor": "simclr_tf.knn",
    "load_official": "simclr_tf.official",
    "UserError": "simclr_tf.errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """Imports a public name on first use (PEP 562), then caches it in the package."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'simclr_tf' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
