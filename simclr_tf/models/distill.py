"""SimCLRv2's third step: distillation / self-training of a student on unlabelled images.

Chen et al. 2020, "Big Self-Supervised Models are Strong Semi-Supervised Learners" (arXiv
2006.10029), Section 2: a fine-tuned *teacher* imputes soft labels on every training image and a
*student* learns them,

    L_distill = - sum_{x in D} sum_y P_T(y | x; tau) log P_S(y | x; tau)          (Eq. 2)

with ``P(y | x; tau) = softmax(logits / tau)``, optionally mixed with the labelled examples,

    L = - (1 - alpha) sum_{(x, y) in D_L} log P_S(y | x) - alpha L_distill         (Eq. 3).

Here ``--distill_label_weight`` is ``w = 1 - alpha`` (0 = Eq. 2, the paper's default). A batch
mixes labelled and unlabelled images; an unlabelled one carries the label
:data:`simclr_tf.data.sources.UNLABELLED` (-1) and contributes only to the distillation term.
Both sums are divided by the *global* batch size, a static number, so the loss is an unbiased
estimate of Eq. 3 / |D| and every replica computes its share without knowing how many labelled
images the others hold (a per-replica mean over the labelled images would not be).

The teacher is frozen and runs in inference mode (batch-norm moving statistics, no update) on
the very images the student sees, inside the same step and under the same strategy. It is held
outside Keras/checkpoint tracking: a student's checkpoints, exports and evaluation are those of a
fine-tuned model of the student's architecture, and a resumed run reloads the teacher from
``--teacher_checkpoint`` (recorded in ``flags.json``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from simclr_tf import checkpoints, distribute
from simclr_tf.data import augment, pipeline, sources
from simclr_tf.metrics import TopKAccuracy
from simclr_tf.models.simclr import SimCLRModel
from simclr_tf.schedule import per_replica_batch

# ------------------------------------------------------------------------------------------ loss


def distillation_loss(
    teacher_logits: tf.Tensor, student_logits: tf.Tensor, temperature: float
) -> tf.Tensor:
    """Per-example ``-sum_y softmax(t / tau)_y log softmax(s / tau)_y``, float32 ``[batch]``.

    No ``tau^2`` factor (the paper's Eq. 2 has none; the authors' distillation colab weights the
    loss by ``tau**2``, the same at tau = 1). The teacher side is a constant: no gradient
    flows into the teacher. d loss / d s = (softmax(s / tau) - softmax(t / tau)) / tau.
    """
    t = tf.cast(teacher_logits, tf.float32) / temperature
    s = tf.cast(student_logits, tf.float32) / temperature
    targets = tf.stop_gradient(tf.nn.softmax(t, axis=-1))
    return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=s)


@dataclasses.dataclass(frozen=True)
class DistillTerms:
    """Per-example parts of the objective (all float32 ``[batch]``)."""

    objective: tf.Tensor  # (1 - w) * distill + w * mask * label_ce: what is minimised
    distill: tf.Tensor  # Eq. 2 per example
    label_ce: tf.Tensor  # -log P_S(y | x) at temperature 1, 0 where unlabelled
    mask: tf.Tensor  # 1.0 for a labelled example, 0.0 for an unlabelled one
    agreement: tf.Tensor  # 1.0 where argmax student == argmax teacher


def distillation_terms(
    teacher_logits: tf.Tensor,
    student_logits: tf.Tensor,
    labels: tf.Tensor,
    temperature: float,
    label_weight: float,
) -> DistillTerms:
    """Eq. 3 per example; ``labels`` < 0 mark unlabelled images (no label term)."""
    student_logits = tf.cast(student_logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    mask = tf.cast(labels >= 0, tf.float32)
    distill = distillation_loss(teacher_logits, student_logits, temperature)
    # Unlabelled rows get a valid dummy class; the mask removes them (a -1 label would raise).
    label_ce = mask * tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.maximum(labels, 0), logits=student_logits
    )
    agreement = tf.cast(
        tf.equal(tf.argmax(student_logits, -1), tf.argmax(teacher_logits, -1)), tf.float32
    )
    objective = (1.0 - label_weight) * distill + label_weight * label_ce
    return DistillTerms(objective, distill, label_ce, mask, agreement)


# --------------------------------------------------------------------------------------- teacher


class TeacherLogits(keras.Model):
    """Frozen ``images -> logits [N, classes]`` (float32) around a model that outputs them.

    ``model(images, training=False)`` may return the logits or a dict holding ``logits_sup``
    (simclr_tf models) or ``logits``. Always called in inference mode.
    """

    def __init__(self, model: Any, **kwargs):
        super().__init__(**kwargs)
        self.inner = model
        self.trainable = False

    def call(self, images: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        del training  # a teacher never trains: batch norm always uses its moving statistics
        out = self.inner(images, training=False)
        if isinstance(out, dict):
            out = out["logits_sup"] if "logits_sup" in out else out["logits"]
        return tf.cast(out, tf.float32)


class _Unsaved:
    """Holds an object out of sight of Keras and tf.train.Checkpoint tracking."""

    def __init__(self, value: Any = None):
        self.value = value


# ----------------------------------------------------------------------------------------- model


class DistillationModel(SimCLRModel):
    """A student (a fine-tunable SimCLR model) trained on a frozen teacher's predictions.

    Its variables, checkpoints and exports are exactly those of a ``SimCLRModel`` in finetune
    mode of the same architecture; the teacher is attached with :meth:`set_teacher`.

    Args (besides SimCLRModel's):
      distill_temperature: tau of Eq. 2.
      label_weight: ``w = 1 - alpha`` of Eq. 3 (0 = distillation only).
    """

    def __init__(
        self,
        encoder,
        projection_head,
        num_classes: int,
        *,
        distill_temperature: float = 1.0,
        label_weight: float = 0.0,
        **kwargs,
    ):
        kwargs["train_mode"] = "finetune"  # the student's network is that of fine-tuning
        super().__init__(encoder, projection_head, num_classes, **kwargs)
        self.distill_temperature = float(distill_temperature)
        self.label_weight = float(label_weight)
        self._teacher = _Unsaved()
        mean = keras.metrics.Mean
        self.distill_loss_tracker = mean("distill_loss")
        self.agreement_tracker = mean("teacher_agreement")
        self.labelled_tracker = mean("labelled_fraction")
        # float32 means, not the int64/float64 TopKAccuracy: no float64 in the train step.
        self.label_acc_tracker = mean("label_acc")
        self.eval_agreement = TopKAccuracy(k=1, name="teacher_top_1_agreement")

    @property
    def teacher(self) -> keras.Model | None:
        return self._teacher.value

    def set_teacher(self, teacher: keras.Model) -> None:
        """Attaches the frozen teacher (built in the same strategy scope as the student)."""
        teacher.trainable = False
        self._teacher.value = teacher

    def teacher_logits(self, images: tf.Tensor) -> tf.Tensor:
        if self.teacher is None:
            raise ValueError("No teacher attached: call set_teacher() before training.")
        return tf.stop_gradient(tf.cast(self.teacher(images, training=False), tf.float32))

    def train_step(self, data):
        images, labels = data[0], data[1]
        # (images, labels, cached teacher logits) with --cache_teacher_logits.
        teacher_logits = data[2] if len(data) > 2 else self.teacher_logits(images)
        # Each replica's share: its sum over the global batch size (static shapes, equal
        # per-replica batches); Keras sums the replicas' gradients.
        global_batch = tf.cast(tf.shape(images)[0] * self._replicas(), tf.float32)
        with tf.GradientTape() as tape:
            _, hiddens, _ = self._features(images, training=True)
            logits = self._supervised_logits(hiddens, training=True)
            terms = distillation_terms(
                teacher_logits, logits, labels, self.distill_temperature, self.label_weight
            )
            share = tf.reduce_sum(terms.objective) / global_batch
            scaled = self.optimizer.scale_loss(share)
        self._apply(tape, scaled)
        self._report_common(terms.objective)
        self.distill_loss_tracker.update_state(terms.distill)
        self.agreement_tracker.update_state(terms.agreement)
        self.labelled_tracker.update_state(terms.mask)
        # Label loss and accuracy over the labelled images only.
        self.supervised_loss.update_state(terms.label_ce, sample_weight=terms.mask)
        hits = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32))
        self.label_acc_tracker.update_state(tf.cast(hits, tf.float32), sample_weight=terms.mask)
        return self._results()

    def test_step(self, data):
        """The student's evaluation (SimCLRModel's), plus top-1 agreement with the teacher.

        The student's logits are computed a second time for the agreement: evaluation is cheap
        next to training, and the base step (padding masks, counters) stays the one place.
        """
        outputs = super().test_step(data)
        if self.teacher is None:
            return outputs
        images = data[0]
        mask = data[2] if len(data) > 2 else tf.ones_like(data[1], tf.float32)
        _, hiddens, _ = self._features(images, training=False)
        logits = self._supervised_logits(hiddens, training=False)
        teacher_classes = tf.argmax(self.teacher_logits(images), -1, output_type=tf.int32)
        self.eval_agreement.update_state(teacher_classes, logits, sample_weight=mask)
        agreement = {"teacher_top_1_agreement": self.eval_agreement.result()}
        return {**outputs, **distribute.step_outputs(agreement)}

    def eval_trackers(self) -> list[keras.metrics.Metric]:
        extra = [self.eval_agreement] if self.teacher is not None else []
        return super().eval_trackers() + extra

    def _results(self) -> dict[str, tf.Tensor]:
        trackers = [
            self.loss_tracker,
            self.distill_loss_tracker,
            self.agreement_tracker,
            self.supervised_loss,
            self.label_acc_tracker,
            self.labelled_tracker,
            self.weight_decay_tracker,
            self.lr_tracker,
        ]
        return distribute.step_outputs({m.name: m.result() for m in trackers})


# ------------------------------------------------------------------------------ fixed-view input


def _fixed_view_source(cfg: Any) -> tf.data.Dataset:
    """Every training image in file order (labels only on the fraction): the cache's order."""
    ds, _ = sources.load_split(
        cfg.dataset,
        cfg.train_split,
        data_dir=cfg.data_dir,
        train_data_fraction=cfg.train_data_fraction,
        fraction_seed=cfg.seed,
        unlabelled=True,
    )
    return ds


def teacher_logits_table(cfg: Any, teacher: keras.Model) -> np.ndarray:
    """The teacher's logits of every training image's evaluation view, float32 ``[N, classes]``.

    Row i belongs to example i of :func:`_fixed_view_source` (deterministic order).
    """
    ds = pipeline.eval_dataset(
        _fixed_view_source(cfg), batch_size=cfg.eval_batch_size, image_size=cfg.image_size
    )
    predict = tf.function(lambda x: teacher(x, training=False))
    rows = [predict(x).numpy() for x, _ in ds]
    table = np.concatenate(rows).astype(np.float32)
    logging.info("Cached the teacher's logits of %d training images.", len(table))
    return table


def fixed_view_dataset(
    cfg: Any,
    strategy: tf.distribute.Strategy,
    start_step: int,
    teacher: keras.Model | None = None,
) -> tf.distribute.DistributedDataset:
    """``--nodistill_augment`` input: each image's evaluation view, shuffled, repeated.

    With ``teacher`` (``--cache_teacher_logits``) its logits are computed once here and every
    element is ``(image, label, teacher_logits)``; the train step then skips the teacher.
    """
    per_replica = per_replica_batch(cfg, strategy.num_replicas_in_sync)
    table = None if teacher is None else teacher_logits_table(cfg, teacher)
    seed = checkpoints.resumed_seed(cfg.seed, start_step)  # a resumed run: a new order

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        ds = _fixed_view_source(cfg)
        if table is not None:
            logits = tf.data.Dataset.from_tensor_slices(table)
            ds = tf.data.Dataset.zip((ds, logits)).map(lambda xy, t: (xy[0], xy[1], t))
        if ctx.num_input_pipelines > 1:  # after the join, so rows stay with their images
            ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        if cfg.cache_dataset:
            ds = ds.cache()
        n = int(ds.cardinality())
        buffer = min(max(10 * per_replica, 10_000), n) if n > 0 else 10_000
        ds = ds.shuffle(buffer, seed=seed + 7919 * ctx.input_pipeline_id)
        ds = ds.repeat().map(
            lambda x, *rest: (augment.eval_view(x, cfg.image_size), *rest),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        ds = ds.batch(per_replica, drop_remainder=True)
        return ds.prefetch(tf.data.AUTOTUNE)

    return pipeline.distribute(strategy, dataset_fn)
