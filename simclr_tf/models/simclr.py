"""The SimCLR Keras model: encoder + projection head + supervised head, with custom steps.

``train_step`` runs under any ``tf.distribute`` strategy: each replica encodes its share of the
two-view batch, NT-Xent gathers the projections of every replica so the negatives are those of
the *global* batch, and the loss is divided by the replica count because Keras's optimizer sums
gradients across replicas. The result equals the single-device full-batch step.

The representation used downstream is the encoder output ``h`` (``final_avg_pool``), taken
*before* the projection head (SimCLR paper, Section 4.2 / Figure 8).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from simclr_tf import distribute, losses, optim
from simclr_tf.metrics import ExampleCount, LastValue, TopKAccuracy
from simclr_tf.models import gradient_cache
from simclr_tf.models.backbone import BackboneError, as_encoder, uses_keras_batch_norm
from simclr_tf.models.heads import LinearHead, ProjectionHead
from simclr_tf.models.layers import set_batch_moments, set_trainable

AugmentFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


class SimCLRModel(keras.Model):
    """Encoder, projection head and supervised head, trained by ``fit`` with custom steps.

    Args:
      encoder: the network giving the representation ``h``: this package's ``ResNet`` or any
        ``keras.Model`` from images to a vector or feature map (wrapped in
        :class:`~simclr_tf.models.backbone.KerasBackbone`, which supports no partial freezing).
      projection_head: maps ``h`` to the projection ``z`` used by the contrastive loss.
      num_classes: classes of the supervised head (0 = no supervised head).
      train_mode: ``pretrain`` (NT-Xent, plus a live linear probe when
        ``lineareval_while_pretraining``) or ``finetune`` (supervised cross-entropy).
      temperature, hidden_norm: NT-Xent settings.
      ft_proj_selector: which projection-head layer feeds the supervised head (0 = ``h``).
      frozen_stages: encoder stages (stem + 4 block groups) kept frozen in finetune mode; 5 is
        the linear evaluation protocol (the projection head below the selector is frozen too).
      zero_init_logits_layer: start the supervised head at zero (really, unlike the reference).
      weight_decay: only *reported* here (``weight_decay`` metric, the penalty of the current
        weights, measured every :attr:`weight_decay_every` steps); the optimizer applies it.
      augment_fn: device-side augmentation ``(uint8 images, seed) -> (view1, view2)``; when
        set, pretraining batches hold decoded images instead of two views.
      seed: base seed of the device-side augmentation.
      micro_batch_size: gradient caching chunk (images per view per replica); 0 = off.
      contrastive_loss: ``(z1, z2) -> ContrastiveOutput`` (``losses.make_contrastive_loss``);
        default NT-Xent with ``temperature`` and ``hidden_norm``.
      batch_norm_moments: ``exact`` or ``reference`` (``--batch_norm_moments``): how training
        batch norm computes the batch variance (:mod:`simclr_tf.models.layers`).
    """

    def __init__(
        self,
        encoder: keras.Model,
        projection_head: ProjectionHead,
        num_classes: int,
        *,
        train_mode: str = "pretrain",
        temperature: float = 0.1,
        hidden_norm: bool = True,
        lineareval_while_pretraining: bool = True,
        ft_proj_selector: int = 0,
        frozen_stages: int = 0,
        zero_init_logits_layer: bool = False,
        weight_decay: float = 0.0,
        augment_fn: AugmentFn | None = None,
        seed: int = 0,
        micro_batch_size: int = 0,
        contrastive_loss: losses.ContrastiveLossFn | None = None,
        batch_norm_moments: str = "exact",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if train_mode not in ("pretrain", "finetune"):
            raise ValueError(f"train_mode must be pretrain or finetune, got {train_mode!r}.")
        self.encoder = as_encoder(encoder)
        if micro_batch_size and uses_keras_batch_norm(self.encoder):
            raise BackboneError(
                "Gradient caching (micro_batch_size) needs this package's BatchNorm (the encoder "
                "has keras.layers.BatchNormalization): use micro_batch_size=0 or the ResNet."
            )
        self.projection_head = projection_head
        self.train_mode = train_mode
        self.ft_proj_selector = ft_proj_selector
        self.frozen_stages = frozen_stages
        self.weight_decay = weight_decay
        self.augment_fn = augment_fn
        self.augment_seed = seed
        self.micro_batch_size = micro_batch_size
        self.contrastive_loss = contrastive_loss or losses.make_contrastive_loss(
            "nt_xent", temperature, hidden_norm
        )
        self.num_classes = num_classes
        # How training batch norm computes the batch variance (layers.BatchNorm); set again in
        # build_all for the batch norms created only when their layer is built.
        self.batch_norm_moments = batch_norm_moments
        set_batch_moments(self.encoder, batch_norm_moments)
        wants_head = train_mode == "finetune" or lineareval_while_pretraining
        self.supervised_head = (
            LinearHead(num_classes, zero_init=zero_init_logits_layer, name="head_supervised")
            if wants_head and num_classes > 0
            else None
        )
        if train_mode == "finetune" and self.supervised_head is None:
            raise ValueError("finetune needs num_classes > 0 for its supervised head.")
        self._freeze()

        mean = keras.metrics.Mean
        if train_mode == "pretrain":
            self.contrast_loss = mean("contrast_loss")
            self.contrast_objective = mean("contrast_objective")
            self.contrast_acc = mean("contrast_acc")
            self.contrast_entropy = mean("contrast_entropy")
        self.loss_tracker = mean("loss")
        self.weight_decay_tracker = LastValue("weight_decay")
        # Steps between two measurements of the penalty (a pass over every weight, for the log
        # only). train.py sets it so the measurement lands on every epoch end; 1 = every step.
        self.weight_decay_every = 1
        self.lr_tracker = mean("learning_rate")
        if self.supervised_head is not None:
            self.supervised_loss = mean("supervised_loss")
            self.supervised_acc = TopKAccuracy(k=1, name="supervised_acc")
            self.top1 = TopKAccuracy(k=1, name="label_top_1_accuracy")
            self.top5 = TopKAccuracy(k=5, name="label_top_5_accuracy")
            self.num_examples = ExampleCount("num_examples")

    def _freeze(self) -> None:
        """Freezes the first ``frozen_stages`` encoder stages (and the head for linear eval).

        Called again once the layers are built: Keras's ``trainable = False`` does not reach
        sub-layers created later.
        """
        if self.train_mode != "finetune":
            return
        if self.frozen_stages:
            if not hasattr(self.encoder, "freeze_stages"):
                raise BackboneError(
                    f"frozen_stages={self.frozen_stages} needs an encoder with freeze_stages(n) "
                    f"(the ResNet, or KerasBackbone); {type(self.encoder).__name__} has none."
                )
            self.encoder.freeze_stages(self.frozen_stages)
        if self.frozen_stages >= 5:
            # Linear evaluation: nothing but the linear classifier learns.
            set_trainable(self.projection_head, False)

    # ---------------------------------------------------------------- forward

    def _features(
        self, images: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, list[tf.Tensor], dict[str, tf.Tensor]]:
        frozen = self.frozen_stages if self.train_mode == "finetune" else 0
        endpoints = self.encoder.call_endpoints(images, training=training, frozen_stages=frozen)
        h = endpoints["final_avg_pool"]
        hiddens = self.projection_head(h, training=training and frozen < 5)
        if frozen >= 5:
            hiddens = [tf.stop_gradient(t) for t in hiddens]
        return h, hiddens, endpoints

    def _supervised_logits(self, hiddens: list[tf.Tensor], training: bool) -> tf.Tensor:
        sup_input = hiddens[self.ft_proj_selector]
        if self.train_mode == "pretrain":
            # The live linear probe must not shape the representation.
            sup_input = tf.stop_gradient(sup_input)
        return tf.cast(self.supervised_head(sup_input, training=training), tf.float32)

    def call(self, images: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        """Named outputs: encoder endpoints, ``proj_head_input``/``output``, ``logits_sup``."""
        training = bool(training)
        h, hiddens, endpoints = self._features(images, training)
        outputs = dict(endpoints)
        outputs["proj_head_input"] = h
        outputs["proj_head_output"] = hiddens[-1]
        if self.supervised_head is not None:
            outputs["logits_sup"] = self._supervised_logits(hiddens, training)
        return outputs

    # ----------------------------------------------------------------- steps

    def _replicas(self) -> int:
        return tf.distribute.get_strategy().num_replicas_in_sync

    def _device_views(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Both views of a decoded batch, augmented inside the train step.

        The seed is (``--seed``, optimizer step) with the replica id folded in: every step and
        every replica draws new views, the same run draws the same views, and a resumed run
        (whose step counter is restored) continues instead of replaying the first steps.
        """
        step = tf.cast(self.optimizer.iterations, tf.int64)
        seed = tf.stack([tf.constant(self.augment_seed, tf.int64), step])
        ctx = tf.distribute.get_replica_context()
        if ctx is not None:
            seed = tf.random.experimental.stateless_fold_in(
                seed, tf.cast(ctx.replica_id_in_sync_group, tf.int64)
            )
        return self.augment_fn(images, seed)

    def _sup_loss(self, labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        return tf.reduce_mean(per_example)

    def _scaled(self, loss: tf.Tensor) -> tf.Tensor:
        """Per-replica share of the loss (Keras sums replica gradients), loss-scaled for fp16.

        Must be computed inside the tape.
        """
        return self.optimizer.scale_loss(loss / self._replicas())

    def _apply(self, tape: tf.GradientTape, scaled_loss: tf.Tensor) -> None:
        variables = self.trainable_variables
        grads = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(grads, variables)

    def _report_common(self, loss: tf.Tensor) -> None:
        self.loss_tracker.update_state(loss)
        self.weight_decay_tracker.update_state(self._weight_decay_penalty())
        self.lr_tracker.update_state(self.optimizer.learning_rate)

    def _weight_decay_penalty(self) -> tf.Tensor:
        """The penalty of the weights after this step's update, or the last one measured.

        Measured when the optimizer's step count is a multiple of ``weight_decay_every`` (the
        epoch ends, where the logs are written), so the pass over every weight is not paid at
        every step only to be overwritten.
        """
        if not self.weight_decay:
            return tf.constant(0.0, tf.float32)

        def measure() -> tf.Tensor:
            return optim.weight_decay_penalty(self.trainable_variables, self.weight_decay)

        if self.weight_decay_every <= 1:
            return measure()
        due = tf.equal(self.optimizer.iterations % self.weight_decay_every, 0)
        return tf.cond(due, measure, self.weight_decay_tracker.result)

    def _update_supervised(self, labels, logits, sup_loss) -> None:
        self.supervised_loss.update_state(sup_loss)
        self.supervised_acc.update_state(labels, logits)

    def train_step(self, data):
        images, labels = data[0], data[1]
        if self.train_mode == "finetune":
            with tf.GradientTape() as tape:
                _, hiddens, _ = self._features(images, training=True)
                logits = self._supervised_logits(hiddens, training=True)
                loss = self._sup_loss(labels, logits)
                scaled = self._scaled(loss)
            self._apply(tape, scaled)
            self._update_supervised(labels, logits, loss)
            self._report_common(loss)
            return self._results()

        if self.augment_fn is not None:
            view1, view2 = self._device_views(images)
        else:
            view1, view2 = images
        if self.micro_batch_size:
            return gradient_cache.cached_train_step(self, view1, view2, labels)
        n = tf.shape(view1)[0]
        with tf.GradientTape() as tape:
            _, hiddens, _ = self._features(tf.concat([view1, view2], 0), training=True)
            z = hiddens[-1]
            con = self.contrastive_loss(z[:n], z[n:])
            objective = losses.contrastive_objective(con)
            loss = con.loss  # logged in the paper's accounting (contrast_loss + supervised)
            if self.supervised_head is not None:
                both_labels = tf.concat([labels, labels], 0)
                logits = self._supervised_logits(hiddens, training=True)
                sup_loss = self._sup_loss(both_labels, logits)
                objective = objective + sup_loss
                loss = loss + sup_loss
            scaled = self._scaled(objective)
        self._apply(tape, scaled)
        self._report_contrast(con, loss)
        if self.supervised_head is not None:
            self._update_supervised(both_labels, logits, sup_loss)
        return self._results()

    def _report_contrast(self, con: losses.ContrastiveOutput, loss: tf.Tensor) -> None:
        """``contrast_loss``: the paper's L (mean over the 2N anchors); ``contrast_objective``:
        what the step optimises, the reference's ``train/contrast_loss`` (2 L)."""
        self.contrast_loss.update_state(con.loss)
        self.contrast_objective.update_state(losses.contrastive_objective(con))
        self.contrast_acc.update_state(con.accuracy)
        self.contrast_entropy.update_state(con.entropy)
        self._report_common(loss)

    def test_step(self, data):
        """Loss, top-1/top-5 and the example count of one evaluation batch.

        ``data`` is ``(images, labels)`` or ``(images, labels, mask)``: evaluation pads its last
        batch to a static, replica-divisible size (``distribute.pad_batches``) and the 0/1 mask
        keeps the padding out of every number, so each example counts exactly once.
        """
        images, labels = data[0], data[1]
        if self.supervised_head is None:
            raise ValueError(
                "This model has no supervised head to evaluate: pretrain with "
                "--lineareval_while_pretraining, or fine-tune / linear-evaluate it first."
            )
        mask = data[2] if len(data) > 2 else tf.ones_like(labels, tf.float32)
        mask = tf.cast(mask, tf.float32)
        _, hiddens, _ = self._features(images, training=False)
        logits = self._supervised_logits(hiddens, training=False)
        per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        self.loss_tracker.update_state(per_example, sample_weight=mask)
        self.top1.update_state(labels, logits, sample_weight=mask)
        self.top5.update_state(labels, logits, sample_weight=mask)
        self.num_examples.update_state(mask)
        # Per-replica values for the progress bar; evaluate.py reads the global numbers from
        # the trackers (distribute.global_results).
        return distribute.step_outputs(
            {
                "eval_loss": self.loss_tracker.result(),
                "label_top_1_accuracy": self.top1.result(),
                "label_top_5_accuracy": self.top5.result(),
                "num_examples": tf.cast(self.num_examples.result(), tf.float32),
            }
        )

    def _results(self) -> dict[str, tf.Tensor]:
        trackers = [self.loss_tracker]
        if self.train_mode == "pretrain":
            trackers += [
                self.contrast_loss,
                self.contrast_objective,
                self.contrast_acc,
                self.contrast_entropy,
            ]
        if self.supervised_head is not None:
            trackers += [self.supervised_loss, self.supervised_acc]
        trackers += [self.weight_decay_tracker, self.lr_tracker]
        return distribute.step_outputs({m.name: m.result() for m in trackers})

    def eval_trackers(self) -> list[keras.metrics.Metric]:
        """The trackers :meth:`test_step` fills (read them with distribute.global_results)."""
        return [self.loss_tracker, self.top1, self.top5, self.num_examples]

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skips Keras's symbolic build once :meth:`build_all` has created every variable.

        Keras 3.15 builds by pulling one batch from a fresh input iterator and reducing it
        across replicas: under MultiWorkerMirroredStrategy that reduction fails ("Attempt to
        convert a value (PerReplica...) to a Tensor"), and under any non-default strategy it
        starts the input pipeline (shuffle buffer included) one extra time.
        """
        layers_built = all(layer.built for layer in self._flatten_layers())
        if layers_built and (self.optimizer is None or self.optimizer.built):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def build_all(self, image_size: int) -> None:
        """Creates every variable (model and optimizer) so checkpoints restore eagerly."""
        self(tf.zeros([1, image_size, image_size, 3]), training=False)
        set_batch_moments(self, self.batch_norm_moments)
        self._freeze()
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
