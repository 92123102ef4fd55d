"""The rules the settings obey: their choices, two derived rules, and every check of
:meth:`simclr_tf.config.Config.validate`.

Split from the settings table (:mod:`simclr_tf.config`) by meaning: the table says what each
setting is, this module what values and combinations can work. ``Config`` inherits
:class:`ConfigChecks`, so ``cfg.validate()`` runs them; the derived rules (:func:`head_depth`,
:func:`check_micro_batch`) are written here once and imported by the modules using them. Plain
Python: flags are checked before TensorFlow starts.
"""

from __future__ import annotations

from simclr_tf.data.recipe import (
    AUGMENT_PLACES,
    AUGMENT_VIEWS,
    COLOR_JITTER_IMPLS,
    CROP_SAMPLERS,
    parse_augmentations,
)
from simclr_tf.errors import UserError

__all__ = [  # the choices of the settings table, including the augmentation ones
    "AUGMENT_PLACES",
    "AUGMENT_VIEWS",
    "BN_MOMENTS",
    "COLOR_JITTER_IMPLS",
    "CROP_SAMPLERS",
    "LOSSES",
    "LR_SCALINGS",
    "MODES",
    "OPTIMIZERS",
    "PRECISIONS",
    "PROJ_HEAD_MODES",
    "RESNET_DEPTHS",
    "STRATEGIES",
    "TRAIN_MODES",
    "ConfigChecks",
    "ConfigError",
    "ENCODER_SYNTAX",
    "KERAS_APPLICATIONS",
    "RESNET_ENCODER",
    "check_encoder_spec",
    "check_micro_batch",
    "head_depth",
]


class ConfigError(UserError, ValueError):
    """A flag value or combination that cannot work; the message names the fix."""


MODES = ("train", "eval", "train_then_eval")
TRAIN_MODES = ("pretrain", "finetune", "distill")
OPTIMIZERS = ("lars", "momentum", "adam")
LR_SCALINGS = ("linear", "sqrt")
PROJ_HEAD_MODES = ("none", "linear", "nonlinear")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("none", "bfloat16", "float16")
RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)
LOSSES = ("nt_xent", "nt_logistic", "margin_triplet")
BN_MOMENTS = ("exact", "reference")  # how training batch norm computes the batch variance


# --encoder values: this package's ResNet, a keras.applications model, or a function of yours.
RESNET_ENCODER = "resnet"
KERAS_APPLICATIONS = "keras_applications"
ENCODER_SYNTAX = (
    "'resnet' (this package's ResNet, sized by --resnet_depth / --width_multiplier), "
    "'keras_applications:NAME' (e.g. keras_applications:MobileNetV3Small: random weights, no "
    "top, average pooling, built-in 0-255 preprocessing off) or 'python.module:function' (a "
    "function of image_size returning a keras.Model from images in [0, 1] to features)"
)


def check_encoder_spec(spec: str) -> None:
    """Raises ConfigError unless ``spec`` has the ``--encoder`` syntax (nothing is imported)."""
    if spec == RESNET_ENCODER:
        return
    source, sep, name = spec.partition(":")
    if not sep or not source or not name:
        raise ConfigError(f"--encoder={spec!r} is not understood: use {ENCODER_SYNTAX}.")


def head_depth(proj_head_mode: str, num_proj_layers: int) -> int:
    """Dense+BN layers of the projection head: 0 for "none", 1 for "linear", else the count."""
    return {"none": 0, "linear": 1, "nonlinear": int(num_proj_layers)}[proj_head_mode]


def check_micro_batch(batch: int, micro_batch_size: int, what: str) -> None:
    """Gradient caching cuts ``batch`` images into chunks of ``micro_batch_size``: it must divide.

    ``what`` names the batch in the message ("--train_batch_size", "The per-replica batch").
    """
    if micro_batch_size and batch % micro_batch_size:
        raise ConfigError(
            f"{what} ({batch} images) is not a multiple of --micro_batch_size={micro_batch_size}"
            " (images per view per replica): pick a micro batch that divides "
            "--train_batch_size / the number of replicas."
        )


class ConfigChecks:
    """The checks of :class:`simclr_tf.config.Config` (its base class: ``cfg.validate()``).

    Reads only the config's fields, so it needs nothing from the settings table.
    """

    def validate(self):
        """Fails fast, naming the fix, on values that cannot work. Returns self."""
        err = []
        if not self.model_dir:
            err.append("--model_dir is required: the folder for checkpoints, logs and results.")
        if self.trains:
            if self.train_steps <= 0 and self.train_epochs <= 0:
                err.append("Both --train_steps and --train_epochs are 0: set one of them > 0.")
            if self.train_batch_size <= 0:
                err.append("--train_batch_size must be > 0.")
            if self.train_mode == "finetune" and not self.checkpoint:
                err.append(
                    "--train_mode=finetune needs --checkpoint=PATH of a pretrained model (a "
                    "checkpoint prefix or a model_dir of a pretraining run); to train from "
                    "scratch use --train_mode=finetune --checkpoint=none."
                )
        if self.image_size is not None and self.image_size < 8:
            err.append(f"--image_size={self.image_size} is too small: use at least 8.")
        if self.resnet_depth not in RESNET_DEPTHS:
            err.append(f"--resnet_depth={self.resnet_depth} is not one of {RESNET_DEPTHS}.")
        if self.width_multiplier <= 0:
            err.append("--width_multiplier must be > 0 (fractions like 0.25 are fine).")
        if not 0.0 < self.train_data_fraction <= 1.0:
            err.append("--train_data_fraction must be in (0, 1].")
        if not -1 <= self.fine_tune_after_block <= 4:
            err.append("--fine_tune_after_block must be in [-1, 4] (4 = linear evaluation).")
        if self.proj_head_mode == "nonlinear" and self.num_proj_layers < 1:
            err.append("--num_proj_layers must be >= 1 for --proj_head_mode=nonlinear.")
        n_head = head_depth(self.proj_head_mode, self.num_proj_layers)
        if not 0 <= self.ft_proj_selector <= n_head:
            err.append(
                f"--ft_proj_selector={self.ft_proj_selector} must be in [0, {n_head}] for "
                f"--proj_head_mode={self.proj_head_mode}."
            )
        if self.temperature <= 0:
            err.append("--temperature must be > 0.")
        err += self._optimizer_errors()
        err += self._count_errors()
        if self.train_mode != "pretrain" and self.micro_batch_size:
            err.append(f"--micro_batch_size is for pretraining; drop it with {self.train_mode}.")
        if self.micro_batch_size < 0:
            err.append("--micro_batch_size must be >= 0.")
        if self.trains:  # the global batch at flag time; per replica: schedule.per_replica_batch
            try:
                check_micro_batch(
                    self.train_batch_size, self.micro_batch_size, "--train_batch_size"
                )
            except ConfigError as e:
                err.append(str(e))
        if self.checkpoint_steps < 0 or self.checkpoint_epochs < 0:
            err.append("--checkpoint_steps and --checkpoint_epochs must be >= 0.")
        if self.keep_checkpoint_max < 1:
            err.append("--keep_checkpoint_max must be >= 1.")
        if self.num_cpu_devices < 1:
            err.append("--num_cpu_devices must be >= 1.")
        if self.steps_per_execution < 0:
            err.append("--steps_per_execution must be >= 0 (0 = auto).")
        if self.use_tpu and self.strategy not in ("auto", "tpu"):
            err.append(f"--use_tpu contradicts --strategy={self.strategy}: pass only one.")
        if self.train_mode != "pretrain" and self.augment_on == "device":
            err.append(
                f"--augment_on=device is for pretraining ({self.train_mode} only crops and flips)."
            )
        err += self._distill_errors()
        if self.data_service and self.train_mode != "pretrain":
            err.append(f"--data_service serves pretraining input; drop it with {self.train_mode}.")
        if self.data_service and self.dataset != "image_folder":
            err.append(
                "--data_service reads image folders (--dataset=image_folder): its workers read "
                "the files by index; TFDS datasets are read on this host."
            )
        err += self._encoder_errors()
        if self.crop_sampler not in CROP_SAMPLERS:
            err.append(f"--crop_sampler={self.crop_sampler} is not one of {CROP_SAMPLERS}.")
        if self.color_jitter_impl not in COLOR_JITTER_IMPLS:
            err.append(
                f"--color_jitter_impl={self.color_jitter_impl} is not one of {COLOR_JITTER_IMPLS} "
                "(v1 additive brightness, v2 multiplicative)."
            )
        err += self._study_errors()
        if err:
            raise ConfigError("Invalid flags:\n  - " + "\n  - ".join(err))
        return self

    def _optimizer_errors(self) -> list[str]:
        """Learning rate, warmup, momentum, weight decay, batch-norm decay, precision."""
        err = []
        if not self.learning_rate > 0:  # also refuses nan
            err.append(
                f"--learning_rate={self.learning_rate} must be > 0 (it is per 256 images; the "
                "paper uses 0.3 with linear scaling, 0.075 with sqrt)."
            )
        if not self.warmup_epochs >= 0:
            err.append(f"--warmup_epochs={self.warmup_epochs} must be >= 0 (0 = no warmup).")
        if not 0 <= self.momentum < 1:
            err.append(f"--momentum={self.momentum} must be in [0, 1) (the paper uses 0.9).")
        if not 0 <= self.weight_decay < 1:
            err.append(f"--weight_decay={self.weight_decay} must be in [0, 1) (the paper: 1e-6).")
        if not 0 <= self.batch_norm_decay < 1:
            err.append(f"--batch_norm_decay={self.batch_norm_decay} must be in [0, 1).")
        if self.mixed_precision == "float16" and self.strategy_name == "tpu":
            # Checked here, before any TPU is resolved (distribute.check_precision repeats it
            # for --strategy=auto, which may find a TPU).
            err.append(
                "--mixed_precision=float16 is for GPUs; TPUs compute in bfloat16: use "
                "--mixed_precision=bfloat16."
            )
        return err

    def _count_errors(self) -> list[str]:
        """Numeric flags that count something: no negative (or zero) counts."""
        err = []
        if self.train_steps < 0 or self.train_epochs < 0:
            err.append("--train_steps and --train_epochs must be >= 0.")
        if self.eval_batch_size <= 0:
            err.append("--eval_batch_size must be > 0.")
        if self.eval_steps < 0:
            err.append("--eval_steps must be >= 0 (0 = the whole split).")
        if self.knn_every_epochs < 0:
            err.append("--knn_every_epochs must be >= 0 (0 = off).")
        if self.knn_every_epochs and (self.knn_k < 1 or self.knn_bank_size < 1):
            err.append("--knn_k and --knn_bank_size must be >= 1 with --knn_every_epochs.")
        if self.proj_out_dim < 1:
            err.append("--proj_out_dim must be >= 1.")
        if self.sk_ratio < 0 or self.se_ratio < 0:
            err.append("--sk_ratio and --se_ratio must be >= 0 (0 = off).")
        if self.color_jitter_strength is not None and self.color_jitter_strength < 0:
            err.append("--color_jitter_strength must be >= 0.")
        if self.verbose not in (0, 1, 2):
            err.append(f"--verbose={self.verbose} must be 0, 1 or 2.")
        return err

    def _encoder_errors(self) -> list[str]:
        """What only this package's ResNet can do, refused for another ``--encoder``."""
        try:
            check_encoder_spec(self.encoder)
        except ConfigError as e:
            return [str(e)]
        if self.encoder == RESNET_ENCODER:
            return []
        err = []
        if self.train_mode != "pretrain" and self.fine_tune_after_block not in (-1, 4):
            err.append(
                f"--fine_tune_after_block={self.fine_tune_after_block} freezes ResNet stages: "
                f"--encoder={self.encoder} is frozen whole (4) or not at all (-1)."
            )
        if self.sk_ratio or self.se_ratio:
            err.append(
                "--sk_ratio / --se_ratio are ResNet blocks: drop them with "
                f"--encoder={self.encoder}."
            )
        return err

    def _distill_errors(self) -> list[str]:
        err = []
        if self.distill_temperature <= 0:
            err.append("--distill_temperature must be > 0 (the paper uses 0.1 to 1.0).")
        if not 0.0 <= self.distill_label_weight < 1.0:
            err.append(
                "--distill_label_weight must be in [0, 1); to train on labels only use "
                "--train_mode=finetune."
            )
        if self.train_mode == "distill" and self.trains and not self.teacher_checkpoint:
            err.append(
                "--train_mode=distill needs --teacher_checkpoint=PATH: the model_dir (or "
                "checkpoint prefix) of a fine-tuned run."
            )
        if self.train_mode != "distill" and self.teacher_checkpoint:
            err.append("--teacher_checkpoint is only used with --train_mode=distill.")
        if self.cache_teacher_logits and self.distill_augment:
            err.append(
                "--cache_teacher_logits needs --nodistill_augment: random crops and flips give "
                "the student a new view of every image each epoch, and logits cached once would "
                "describe another view. Drop --cache_teacher_logits to run the teacher on each "
                "step's views (the paper's setting)."
            )
        return err

    def _study_errors(self) -> list[str]:
        """Checks of the loss and augmentation study flags."""
        err = []
        if self.margin < 0:
            err.append("--margin must be >= 0.")
        if self.semi_hard_negatives and self.loss == "nt_xent":
            err.append(
                "--semi_hard_negatives is for --loss=nt_logistic or margin_triplet (NT-Xent "
                "weighs negatives by hardness itself): drop it or change --loss."
            )
        if self.augmentations is not None:
            try:
                parse_augmentations(self.augmentations)
            except ValueError as e:
                err.append(str(e))
        return err
