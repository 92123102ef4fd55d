"""Every setting of simclr_tf in one place: the fields of the frozen, validated :class:`Config`.

How to add a flag: add one field to :class:`Config` with ``setting(default, help)`` (plus
``choices=`` for an enum; the flag kind follows the field's type: str, int, float or bool), and,
if some values cannot work, a check in :meth:`Config.validate`. :func:`define_flags` generates
the absl flag from the field; nothing else needs to change.

Flag names and meanings follow the reference SimCLR TF2 code (google-research/simclr, ``tf2/``)
wherever it has them, so its commands and the papers' recipes carry over. Defaults that depend on
the dataset (image size, colour strength, blur, eval split) are ``None`` here and resolved once the
dataset is known (:func:`resolve`), so one command works for CIFAR-10 and for ImageNet.
The derived rules (head depth, micro-batch divisibility, the ``--use_tpu`` alias, the
small-image colour/blur defaults) are written here once and imported by the modules using them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from absl import flags

from simclr_tf.errors import UserError


class ConfigError(UserError, ValueError):
    """A flag value or combination that cannot work; the message names the fix."""


MODES = ("train", "eval", "train_then_eval")
TRAIN_MODES = ("pretrain", "finetune", "distill")
OPTIMIZERS = ("lars", "momentum", "adam")
LR_SCALINGS = ("linear", "sqrt")
PROJ_HEAD_MODES = ("none", "linear", "nonlinear")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("none", "bfloat16", "float16")
AUGMENT_PLACES = ("host", "device")
CROP_SAMPLERS = ("reference", "uniform_area")
RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)
LOSSES = ("nt_xent", "nt_logistic", "margin_triplet")
AUGMENT_VIEWS = ("both", "one")

# Flags that define the network's variables: a model_dir written with other values holds a
# different architecture and must not be silently reused.
ARCHITECTURE_KEYS = (
    "encoder",
    "resnet_depth",
    "width_multiplier",
    "sk_ratio",
    "se_ratio",
    "proj_head_mode",
    "num_proj_layers",
    "proj_out_dim",
    "cifar_stem",
    "first_block_projection",
)


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


# Images up to this side get the paper's CIFAR-10 settings: colour strength 0.5, no blur, the
# 3x3 stem.
SMALL_IMAGE_SIDE = 32


def default_color_strength(image_size: int) -> float:
    """SimCLR colour strength: 0.5 for CIFAR-sized images (<= 32 px), else 1.0."""
    return 0.5 if image_size <= SMALL_IMAGE_SIDE else 1.0


def default_use_blur(image_size: int) -> bool:
    """SimCLR uses Gaussian blur on ImageNet-sized images but not on CIFAR (<= 32 px)."""
    return image_size > SMALL_IMAGE_SIDE


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


_FLAG_DEFINERS = {
    "str": flags.DEFINE_string,
    "int": flags.DEFINE_integer,
    "float": flags.DEFINE_float,
    "bool": flags.DEFINE_bool,
}


def setting(default: Any, help_text: str, *, choices: tuple[str, ...] | None = None) -> Any:
    """A :class:`Config` field that is also a flag: its default, help text and enum choices."""
    return dataclasses.field(default=default, metadata={"help": help_text, "choices": choices})


def define_flags(flag_values: flags.FlagValues | None = None) -> None:
    """Registers one absl flag per :class:`Config` field (idempotent, so tests can import twice)."""
    fv = flags.FLAGS if flag_values is None else flag_values
    if "train_mode" in fv:
        return
    for field in dataclasses.fields(Config):
        kind = str(field.type).replace(" | None", "")  # annotations are strings (__future__)
        if kind not in _FLAG_DEFINERS:
            raise TypeError(f"Config.{field.name}: type {field.type!r} has no absl flag kind.")
        help_text, choices = field.metadata["help"], field.metadata["choices"]
        if choices is not None:
            flags.DEFINE_enum(field.name, field.default, choices, help_text, flag_values=fv)
        else:
            _FLAG_DEFINERS[kind](field.name, field.default, help_text, flag_values=fv)


@dataclasses.dataclass(frozen=True)
class Config:
    """The validated settings of one run (flag names, resolved defaults)."""

    # What to run.
    mode: str = setting(
        "train",
        "train, eval, or train then evaluate the final weights.",
        choices=MODES,
    )
    train_mode: str = setting(
        "pretrain",
        "pretrain: contrastive SimCLR; finetune: supervised head on a (pretrained) encoder, "
        "including the linear evaluation protocol; distill: SimCLRv2's third step, a student "
        "trained on every training image to match the predictions of --teacher_checkpoint.",
        choices=TRAIN_MODES,
    )
    model_dir: str | None = setting(
        None,
        "Folder holding everything of one run: checkpoints, flags.json, metrics.csv, "
        "TensorBoard logs, result.json, saved_model/.",
    )
    checkpoint: str | None = setting(
        None,
        "Checkpoint (file prefix or folder) to start from: the pretrained model for finetune, "
        "or the weights to evaluate in eval mode.",
    )
    seed: int = setting(0, "Seed for augmentations, shuffling and initial weights.")

    # Data.
    dataset: str = setting(
        "imagenet2012",
        "A TFDS image classification dataset name (cifar10, cifar100, stl10, imagenet2012, "
        "imagenet2012_subset/1pct, ...) or image_folder (with --data_dir=ROOT holding "
        "ROOT/<split>/<class>/*.jpg).",
    )
    data_dir: str | None = setting(
        None,
        "TFDS data dir, or the image folder root for image_folder.",
    )
    train_split: str = setting("train", "Split to train on.")
    eval_split: str | None = setting(
        None,
        "Split to evaluate on (default: validation if the dataset has one, else test).",
    )
    train_data_fraction: float = setting(
        1.0,
        "Class-balanced, seeded fraction of the training labels to use (0.01, 0.1 for the semi-"
        "supervised protocol).",
    )
    cache_dataset: bool = setting(False, "Cache decoded images in memory (small datasets).")
    image_size: int | None = setting(
        None,
        "Side of the square training images (default: the dataset's own side when it is <= 64, "
        "else 224).",
    )
    color_jitter_strength: float | None = setting(
        None,
        "Colour distortion strength s (default 0.5 for images <= 32 px, else 1.0).",
    )
    use_blur: bool | None = setting(None, "Gaussian blur in pretraining (default: on above 32 px).")
    augment_on: str = setting(
        "host",
        "Where the two-view augmentation runs: host (tf.data) or device (batched, inside the "
        "train step). Same recipe and distributions either way. Fixed-size images (CIFAR): the "
        "host only decodes, the device does everything. Variable-size images: the host still "
        "draws both crop boxes from each image's true size, crops and resizes them to "
        "--image_size and sends them rounded to uint8; the device does flip, colour, grayscale "
        "and blur.",
        choices=AUGMENT_PLACES,
    )
    crop_sampler: str = setting(
        "reference",
        "Random crop distribution: reference = tf.image.sample_distorted_bounding_box as in the "
        "SimCLR code (area 8-100%, uniform aspect 3/4-4/3, at least 10% of the image, 100 "
        "attempts, else the whole image); uniform_area = torchvision-style (uniform area, "
        "log-uniform aspect, clamped centre-crop fallback).",
        choices=CROP_SAMPLERS,
    )

    # Schedule and optimizer.
    train_batch_size: int = setting(512, "Global training batch size (all replicas).")
    train_epochs: int = setting(100, "Training epochs (used when --train_steps is 0).")
    train_steps: int = setting(0, "Training steps; overrides --train_epochs when > 0.")
    warmup_epochs: float = setting(10, "Linear warmup epochs before the cosine decay.")
    learning_rate: float = setting(0.3, "Learning rate per 256 images (see scaling).")
    learning_rate_scaling: str = setting(
        "linear",
        "linear: lr * batch / 256; sqrt: lr * sqrt(batch).",
        choices=LR_SCALINGS,
    )
    optimizer: str = setting("lars", "Optimizer.", choices=OPTIMIZERS)
    momentum: float = setting(0.9, "Momentum of LARS / SGD.")
    weight_decay: float = setting(1e-06, "Weight decay (not on batch-norm parameters or biases).")
    temperature: float = setting(0.1, "NT-Xent temperature.")
    hidden_norm: bool = setting(True, "L2-normalise projections before the contrastive loss.")

    # Network.
    encoder: str = setting(
        RESNET_ENCODER,
        f"The encoder: {ENCODER_SYNTAX}. Partial freezing, --sk_ratio/--se_ratio and official "
        "checkpoints need the ResNet.",
    )
    resnet_depth: int = setting(50, "ResNet depth: 18, 34, 50, 101, 152 or 200.")
    width_multiplier: float = setting(1.0, "Width multiplier of the ResNet (fractions allowed).")
    sk_ratio: float = setting(0.0, "Selective-kernel ratio (SimCLRv2 uses 0.0625); 0 = off.")
    se_ratio: float = setting(0.0, "Squeeze-excitation ratio; 0 = off.")
    cifar_stem: bool | None = setting(
        None,
        "3x3 stride-1 stem without max pool (default: on for images <= 32 px).",
    )
    batch_norm_decay: float = setting(0.9, "Batch-norm moving-average momentum.")
    global_bn: bool = setting(True, "Synchronise batch-norm statistics across replicas.")
    proj_head_mode: str = setting("nonlinear", "Projection head type.", choices=PROJ_HEAD_MODES)
    num_proj_layers: int = setting(3, "Layers of the nonlinear head (2 = SimCLR v1).")
    proj_out_dim: int = setting(128, "Projection output dimension.")
    ft_proj_selector: int = setting(
        0,
        "Which projection-head layer feeds the supervised head (0 = the encoder output h).",
    )
    lineareval_while_pretraining: bool = setting(
        True,
        "Train a linear probe on stop_gradient(h) during pretraining.",
    )
    fine_tune_after_block: int = setting(
        -1,
        "finetune, distill: train only after this block (-1 everything, 0 after the stem, 4 "
        "only the linear head = linear eval).",
    )
    zero_init_logits_layer: bool = setting(False, "Zero-initialise the supervised head.")

    # Checkpoints, evaluation, monitoring.
    checkpoint_epochs: int = setting(1, "Save a checkpoint every this many epochs.")
    checkpoint_steps: int = setting(0, "Save every this many steps (overrides epochs).")
    keep_checkpoint_max: int = setting(5, "Checkpoints to keep.")
    eval_batch_size: int = setting(256, "Global evaluation batch size.")
    eval_steps: int = setting(0, "Evaluation batches (0 = the whole split).")
    knn_every_epochs: int = setting(
        0,
        "Pretraining: kNN monitor on --eval_split every this many epochs (0 = off).",
    )
    knn_bank_size: int = setting(10000, "Training examples in the kNN bank.")
    knn_k: int = setting(200, "Neighbours of the kNN monitor.")
    verbose: int = setting(1, "Keras progress output: 0 silent, 1 bar, 2 one line/epoch.")

    # Export.
    export_saved_model: bool = setting(True, "Export a SavedModel after train_then_eval/eval.")
    keep_hub_module_max: int = setting(1, "Exported SavedModels to keep.")
    overwrite: bool = setting(False, "Allow replacing an existing export of the same step.")

    # Distribution and speed.
    strategy: str = setting(
        "auto",
        "tf.distribute strategy; auto picks a TPU if one resolves, MirroredStrategy with "
        "several GPUs, else the default.",
        choices=STRATEGIES,
    )
    use_tpu: bool | None = setting(None, "Alias of --strategy=tpu (reference flag).")
    tpu_name: str | None = setting(None, "TPU name or grpc address.")
    tpu_zone: str | None = setting(None, "TPU zone.")
    gcp_project: str | None = setting(None, "GCP project of the TPU.")
    num_cpu_devices: int = setting(
        1,
        "Split the CPU into this many logical devices (development: lets --strategy=mirrored "
        "run on one CPU).",
    )
    mixed_precision: str = setting("none", "Mixed-precision compute dtype.", choices=PRECISIONS)
    jit_compile: bool = setting(
        False,
        "XLA-compile the train step (one replica: the whole step; several GPUs/CPUs: per device "
        "by XLA auto-clustering; TPUs always compile).",
    )
    micro_batch_size: int = setting(
        0,
        "Gradient caching: compute the batch in chunks of this many images per replica (0 = off).",
    )
    steps_per_execution: int = setting(
        0,
        "Training steps per call into the device (one host round trip each); 0 = auto: 1 on "
        "CPU/GPU, up to 1000 on TPU. Lowered to divide the epoch and the checkpoint interval.",
    )
    # Official (reference) checkpoints: see simclr_tf/official.
    first_block_projection: bool = setting(
        False,
        "Projection shortcut on the first block of every block group (the reference "
        "ResNet-18/34 layout; set automatically when --checkpoint is an official checkpoint).",
    )
    checkpoint_ema: bool = setting(
        False,
        "Load the ema_model/ weights of an official TF1 SimCLRv2 --checkpoint instead of its "
        "regular ones.",
    )
    # Distillation (--train_mode=distill; SimCLRv2 Section 2, step 3; models/distill.py).
    teacher_checkpoint: str | None = setting(
        None,
        "distill: the teacher, a fine-tuned simclr_tf run folder or checkpoint prefix (its "
        "architecture comes from that run's flags.json). The student's architecture comes from "
        "this run's flags: the same = self-distillation, smaller = big-to-small. --checkpoint "
        "optionally initialises the student (default: random).",
    )
    distill_temperature: float = setting(
        1.0,
        "distill: temperature tau of both softmaxes in the loss -sum_y P_T(y|x; tau) "
        "log P_S(y|x; tau) (SimCLRv2 Eq. 2). The paper uses 0.1 for self-distillation and 1.0 "
        "for big-to-small (Section 3). No tau^2 factor, as in Eq. 2; the authors' distillation "
        "colab multiplies the loss by tau^2, which differs only when tau != 1.",
    )
    distill_label_weight: float = setting(
        0.0,
        "distill: weight w of the labelled term, loss = w * CE(labels) over the "
        "--train_data_fraction subset + (1 - w) * distillation over all images, both summed "
        "per batch and divided by the global batch size (SimCLRv2 Eq. 3 with alpha = 1 - w). "
        "0 = Eq. 2, distillation only: the paper's setting for its distillation results.",
    )
    distill_augment: bool = setting(
        True,
        "distill: the student sees the fine-tuning augmentation (random crop + flip; the "
        "paper's setting) and the teacher the same views; false: both see each image's fixed "
        "evaluation view.",
    )
    cache_teacher_logits: bool = setting(
        False,
        "distill: compute the teacher's logits once per training image before training and "
        "reuse them every epoch instead of running the teacher in every step. Needs "
        "--nodistill_augment: with random crops the student sees a new view each epoch, which "
        "cached logits do not describe.",
    )

    # Studies: the paper's loss and augmentation ablations (Tables 1, 2, 4; Figure 5).
    loss: str = setting(
        "nt_xent",
        "Contrastive loss: nt_xent (SimCLR), nt_logistic (sigmoid of similarity / "
        "--temperature; the paper tuned 0.1, 0.2, 0.5, 1.0) or margin_triplet (--margin). The "
        "alternatives use negatives from both views; the paper's Table 4 used one view's only.",
        choices=LOSSES,
    )
    margin: float = setting(
        0.4,
        "Margin m of --loss=margin_triplet on cosine similarities (the paper tuned 0, 0.4, 0.8, "
        "1.6 and does not say which won); also bounds its semi-hard negatives.",
    )
    semi_hard_negatives: bool = setting(
        False,
        "nt_logistic / margin_triplet: per anchor only the one semi-hard negative, the closest "
        "of those less similar than the positive (for the margin loss also within --margin of "
        "it), as the paper's Section 5.1 defines it.",
    )
    augmentations: str | None = setting(
        None,
        "Comma list of view operations, applied in this order: crop, flip, color, grayscale, "
        "blur, cutout, sobel, noise, rotate (default: the paper recipe crop,flip,color,"
        "grayscale, plus blur with --use_blur; a given list overrides --use_blur).",
    )
    augment_views: str = setting(
        "both",
        "both: augment both views; one: the second view is only resized (the paper's "
        "asymmetric study).",
        choices=AUGMENT_VIEWS,
    )

    @classmethod
    def from_flags(cls, flag_values: flags.FlagValues | None = None) -> Config:
        fv = flag_values or flags.FLAGS
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{n: fv[n].value for n in names})

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @property
    def frozen_stages(self) -> int:
        """Encoder stages (stem + 4 block groups) kept frozen: fine_tune_after_block + 1."""
        if self.train_mode not in ("finetune", "distill"):
            return 0
        return self.fine_tune_after_block + 1

    @property
    def trains(self) -> bool:
        """The mode trains (train, train_then_eval)."""
        return self.mode in ("train", "train_then_eval")

    @property
    def evaluates(self) -> bool:
        """The mode evaluates (eval, train_then_eval)."""
        return self.mode in ("eval", "train_then_eval")

    @property
    def strategy_name(self) -> str:
        """The strategy to build, ``--use_tpu`` read as ``--strategy=tpu``."""
        return "tpu" if self.use_tpu else self.strategy

    @property
    def is_linear_eval(self) -> bool:
        return self.train_mode == "finetune" and self.fine_tune_after_block >= 4

    def validate(self) -> Config:
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
        if self.train_mode != "pretrain" and self.micro_batch_size:
            err.append(f"--micro_batch_size is for pretraining; drop it with {self.train_mode}.")
        if self.micro_batch_size < 0:
            err.append("--micro_batch_size must be >= 0.")
        if self.trains:
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
        err += self._encoder_errors()
        if self.crop_sampler not in CROP_SAMPLERS:
            err.append(f"--crop_sampler={self.crop_sampler} is not one of {CROP_SAMPLERS}.")
        err += self._study_errors()
        if err:
            raise ConfigError("Invalid flags:\n  - " + "\n  - ".join(err))
        return self

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
        from simclr_tf.data import study_ops  # TensorFlow-level import, only when validating

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
                study_ops.parse_augmentations(self.augmentations)
            except ValueError as e:
                err.append(str(e))
        return err


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Step counts derived from the config and the dataset size."""

    num_train_examples: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    checkpoint_steps: int
    peak_learning_rate: float


def make_schedule(cfg: Config, num_train_examples: int, peak_learning_rate: float) -> Schedule:
    """Steps from --train_steps or --train_epochs x the split size (never hard-coded)."""
    if num_train_examples <= 0:
        raise ConfigError("The training split is empty: check --dataset/--train_split.")
    steps_per_epoch = max(1, math.ceil(num_train_examples / cfg.train_batch_size))
    total = cfg.train_steps or cfg.train_epochs * steps_per_epoch
    warmup = min(total, int(round(cfg.warmup_epochs * steps_per_epoch)))
    if cfg.checkpoint_steps:
        ckpt = cfg.checkpoint_steps
    elif cfg.checkpoint_epochs:
        ckpt = cfg.checkpoint_epochs * steps_per_epoch
    else:
        ckpt = total
    return Schedule(
        num_train_examples=num_train_examples,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=warmup,
        checkpoint_steps=max(1, min(ckpt, total)),
        peak_learning_rate=peak_learning_rate,
    )


def resolve(cfg: Config, image_side: int | None, splits: tuple[str, ...]) -> Config:
    """Fills dataset-dependent defaults: image size, CIFAR stem, colour strength, blur, eval split.

    ``image_side`` is the dataset's fixed image side when known. The small-image rules follow the
    paper's CIFAR-10 settings (3x3 stem, s = 0.5, no blur).
    """
    image_size = cfg.image_size
    if image_size is None:
        image_size = image_side if image_side is not None and image_side <= 64 else 224
    small = image_size <= SMALL_IMAGE_SIDE
    eval_split = cfg.eval_split
    if eval_split is None:
        eval_split = next((s for s in ("validation", "test") if s in splits), None)
        if eval_split is None and cfg.mode != "train":
            raise ConfigError(
                f"The dataset has no validation or test split (splits: {sorted(splits)}): "
                "pass --eval_split."
            )
    from simclr_tf.data import study_ops

    use_blur = default_use_blur(image_size) if cfg.use_blur is None else cfg.use_blur
    try:
        ops = study_ops.parse_augmentations(cfg.augmentations, use_blur)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.augmentations is not None:
        use_blur = "blur" in ops  # an explicit list decides; --use_blur shapes only the default
    return cfg.replace(
        image_size=image_size,
        cifar_stem=small if cfg.cifar_stem is None else cfg.cifar_stem,
        color_jitter_strength=default_color_strength(image_size)
        if cfg.color_jitter_strength is None
        else cfg.color_jitter_strength,
        use_blur=use_blur,
        augmentations=",".join(ops),
        eval_split=eval_split,
        strategy=cfg.strategy_name,
    )
