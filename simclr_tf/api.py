"""The models of the Python API: pretraining (:class:`SimCLR`), classifiers, distillation.

These are thin constructors over :class:`~simclr_tf.models.simclr.SimCLRModel`, the model that
``run.py`` trains: the same ``train_step`` (cross-replica NT-Xent, the live linear probe,
gradient caching, augmentation inside the step), but built from keyword arguments instead of a
``Config``, with any Keras backbone as the encoder.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from simclr_tf import losses, optim
from simclr_tf.data import augment as augment_ops
from simclr_tf.data.recipe import default_color_strength, default_use_blur
from simclr_tf.models.backbone import ALL_STAGES, BackboneError
from simclr_tf.models.distill import DistillationModel, TeacherLogits
from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.simclr import SimCLRModel

__all__ = ["SimCLR", "classifier", "distiller", "image_size_of"]


def _as_pair(data: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """(images, labels) of a batch that may be images alone, a 1-tuple or a TFDS-style dict."""
    if isinstance(data, dict):
        images = data["image"]
        labels = data.get("label")
    elif isinstance(data, tuple | list):
        images, labels = data[0], (data[1] if len(data) > 1 else None)
    else:
        images, labels = data, None
    if labels is None:  # unlabelled images: the (absent) probe never reads them
        batch = tf.shape(tf.nest.flatten(images)[0])[0]
        labels = tf.zeros([batch], tf.int32)
    return images, labels


def image_size_of(encoder: keras.layers.Layer) -> int | None:
    """The square input size an encoder was built for (None when it takes any size)."""
    shape = getattr(encoder, "input_shape", None)
    if isinstance(shape, tuple) and len(shape) == 4 and shape[1] and shape[1] == shape[2]:
        return int(shape[1])
    return None


class SimCLR(SimCLRModel):
    """SimCLR pretraining of any Keras encoder: ``model.fit(images)`` and nothing else.

    The batches (images ``[B, H, W, 3]``, uint8 in 0-255 or float in [0, 1], optionally with
    labels ``(images, labels)`` for the live linear probe) are augmented into two views inside
    the train step, on the accelerator; the loss is NT-Xent over the global batch (every
    replica's views are negatives).

    Args:
      encoder: this package's :class:`~simclr_tf.ResNet`, or any ``keras.Model`` from images in
        [0, 1] to a ``[B, D]`` vector or a ``[B, H, W, C]`` feature map (average-pooled).
      image_size: side of the views (default: the encoder's input size when it has one).
      num_classes: classes of the live linear probe trained on ``stop_gradient(h)`` from the
        labels in the batches (0 = no probe; the dataset may then hold images only).
      projection_dim: output width of the projection head (128 in the paper).
      projection_layers: layers of the nonlinear head (2 = SimCLRv1, 3 = SimCLRv2).
      temperature: NT-Xent temperature (0.1 ImageNet, 0.5 CIFAR-10 in the paper).
      loss: ``"nt_xent"``, ``"nt_logistic"`` or ``"margin_triplet"`` (paper, Table 2).
      color_jitter_strength, use_blur: augmentation strength (default: the paper's choice for
        the image size: 0.5 and no blur up to 32 px, else 1.0 and blur).
      crop_sampler: ``"reference"`` or ``"uniform_area"`` random-resized-crop sampler.
      augment: False when the dataset already yields ``((view1, view2), labels)``.
      micro_batch_size: gradient caching chunk (images per view per replica); 0 = off.
      seed: base seed of the augmentation (step and replica are folded in).
      **kwargs: passed to :class:`~simclr_tf.models.simclr.SimCLRModel` (e.g. ``hidden_norm``).

    Example::

        base = keras.applications.MobileNetV3Small(
            input_shape=(32, 32, 3), include_top=False, weights=None, pooling="avg",
            include_preprocessing=False)
        model = simclr_tf.SimCLR(base, temperature=0.5)
        model.compile(optimizer=simclr_tf.LARS(simclr_tf.WarmupCosineDecay(1.0, 10, 100)))
        model.fit(images_dataset, epochs=1)       # batches of uint8 images, no labels needed
        h = model.encoder(images, training=False)  # the representation, before the head
    """

    def __init__(
        self,
        encoder: keras.layers.Layer,
        *,
        image_size: int | None = None,
        num_classes: int = 0,
        projection_dim: int = 128,
        projection_layers: int = 3,
        temperature: float = 0.1,
        loss: str = "nt_xent",
        color_jitter_strength: float | None = None,
        use_blur: bool | None = None,
        crop_sampler: str = "reference",
        augment: bool = True,
        micro_batch_size: int = 0,
        seed: int = 0,
        name: str = "simclr",
        **kwargs: Any,
    ) -> None:
        size = image_size or image_size_of(encoder)
        if augment and not size:
            raise BackboneError(
                "SimCLR(augment=True) needs the view size: pass image_size=... (the encoder "
                "does not fix its input size)."
            )
        strength = default_color_strength(size or 224)
        strength = strength if color_jitter_strength is None else float(color_jitter_strength)
        blur = default_use_blur(size or 224) if use_blur is None else bool(use_blur)
        augment_fn = None
        if augment:

            def augment_fn(images, seed):
                return augment_ops.two_views(
                    images, seed, int(size), strength, blur, crop_sampler=crop_sampler
                )

        head = ProjectionHead(
            mode="nonlinear",
            num_layers=projection_layers,
            out_dim=projection_dim,
            name="projection_head",
        )
        hidden_norm = kwargs.pop("hidden_norm", True)
        super().__init__(
            encoder,
            head,
            num_classes,
            train_mode="pretrain",
            temperature=temperature,
            hidden_norm=hidden_norm,
            lineareval_while_pretraining=num_classes > 0,
            augment_fn=augment_fn,
            seed=seed,
            micro_batch_size=micro_batch_size,
            contrastive_loss=losses.make_contrastive_loss(loss, temperature, hidden_norm),
            name=name,
            **kwargs,
        )
        self.image_size = int(size) if size else None

    def train_step(self, data):
        """SimCLRModel's step; batches of images alone get placeholder labels (no probe)."""
        return super().train_step(_as_pair(data))

    def fit(self, *args, **kwargs):
        """``keras.Model.fit``, after creating the variables (the probe skips LARS adaptation)."""
        _prepare(self)
        return super().fit(*args, **kwargs)


def _prepare(model: SimCLRModel) -> None:
    """Builds model and optimizer once; LARS trains the supervised head without adaptation."""
    size = getattr(model, "image_size", None)
    if size and not model.built:
        model.build_all(int(size))
    inner = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    if isinstance(inner, optim.LARS) and model.supervised_head is not None and inner.built:
        inner.exclude_from_layer_adaptation(model.supervised_head.trainable_variables)


class _Classifier(SimCLRModel):
    """A SimCLRModel in finetune mode that remembers its image size (see :func:`classifier`)."""

    def __init__(self, *args: Any, image_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.image_size = image_size

    def fit(self, *args, **kwargs):
        _prepare(self)
        return super().fit(*args, **kwargs)


def _parts(pretrained: keras.layers.Layer) -> tuple[keras.layers.Layer, ProjectionHead]:
    """(encoder, projection head) of a SimCLR model, or (encoder, no head) of a bare encoder."""
    if isinstance(pretrained, SimCLRModel):
        return pretrained.encoder, pretrained.projection_head
    return pretrained, ProjectionHead(mode="none", name="projection_head")


def classifier(
    pretrained: keras.layers.Layer,
    num_classes: int,
    *,
    frozen_stages: int = ALL_STAGES,
    ft_proj_selector: int = 0,
    zero_init: bool = True,
    image_size: int | None = None,
) -> SimCLRModel:
    """A classifier on a pretrained encoder: linear evaluation or fine-tuning.

    The classifier *shares* the encoder (and projection head) layers of ``pretrained``: train it
    after pretraining. ``fit`` takes batches ``(images, labels)`` of float images in [0, 1] at
    the encoder's size (augment them yourself, e.g. with :func:`simclr_tf.finetune_view`);
    ``evaluate`` reports ``label_top_1_accuracy`` and ``label_top_5_accuracy``.

    Args:
      pretrained: a :class:`SimCLR` model (its encoder and projection head are used) or a bare
        encoder (any ``keras.Model`` from images to features).
      num_classes: classes of the linear classifier.
      frozen_stages: 5 = linear evaluation (frozen encoder in inference mode, only the
        classifier trains); 0 = fine-tune everything; 1-4 freeze the first stages of this
        package's ResNet only.
      ft_proj_selector: projection-head layer feeding the classifier (0 = ``h``; SimCLRv2
        fine-tunes from the first head layer, 1).
      zero_init: start the classifier at zero.
      image_size: the input size (default: that of ``pretrained``), to create the variables.

    Example::

        clf = simclr_tf.classifier(model, num_classes=10)           # linear evaluation
        clf.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        clf.fit(labelled, epochs=10)
        top1 = clf.evaluate(test, return_dict=True)["label_top_1_accuracy"]
    """
    encoder, head = _parts(pretrained)
    if head.mode == "none" and ft_proj_selector:
        raise BackboneError(
            "ft_proj_selector > 0 needs a projection head: pass the SimCLR model, not its encoder."
        )
    size = image_size or getattr(pretrained, "image_size", None) or image_size_of(encoder)
    return _Classifier(
        encoder,
        head,
        num_classes,
        train_mode="finetune",
        frozen_stages=frozen_stages,
        ft_proj_selector=ft_proj_selector,
        zero_init_logits_layer=zero_init,
        image_size=size,
        name="classifier",
    )


def distiller(
    teacher: keras.Model,
    student: keras.layers.Layer,
    num_classes: int,
    *,
    temperature: float = 1.0,
    label_weight: float = 0.0,
    image_size: int | None = None,
) -> DistillationModel:
    """SimCLRv2 step 3: a student trained on a frozen teacher's predictions.

    ``fit`` takes batches ``(images, labels)`` (label -1 = unlabelled; with
    ``label_weight=0`` the labels are not used at all).

    Args:
      teacher: a model returning logits (or a dict with ``logits_sup``, like a
        :func:`classifier`); it is frozen and always runs in inference mode.
      student: the student's encoder (any Keras backbone, or a :class:`SimCLR` model whose
        encoder and projection head start the student).
      num_classes: classes of the teacher's logits.
      temperature: distillation temperature tau (SimCLRv2, Eq. 2).
      label_weight: weight of the label cross-entropy (0 = distillation only, Eq. 3).
      image_size: the input size, to create the variables before ``fit``.

    Example::

        student = simclr_tf.distiller(teacher_clf, simclr_tf.ResNet(depth=18), num_classes=10)
        student.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        student.fit(images_with_labels, epochs=5)
    """
    encoder, head = _parts(student)
    model = DistillationModel(
        encoder,
        head,
        num_classes,
        distill_temperature=temperature,
        label_weight=label_weight,
        name="distiller",
    )
    model.set_teacher(TeacherLogits(teacher, name="teacher"))
    size = image_size or image_size_of(encoder)
    if size:  # creates the variables (the optimizer's are made by compile + fit)
        model(tf.zeros([1, int(size), int(size), 3]), training=False)
    return model
