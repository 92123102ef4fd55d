"""Every setting of simclr_tf in one place: the fields of the frozen, validated :class:`Config`.

How to add a flag: add one field to :class:`Config` with ``setting(default, help)`` (plus
``choices=`` for an enum; the flag kind follows the field's type: str, int, float or bool), and,
if some values cannot work, a check in :class:`simclr_tf.config_checks.ConfigChecks` (which
``Config`` inherits: ``cfg.validate()``). :func:`define_flags` generates the absl flag from the
field; nothing else needs to change.

Flag names and meanings follow the reference SimCLR TF2 code (google-research/simclr, ``tf2/``)
wherever it has them, so its commands and the papers' recipes carry over. Defaults that depend on
the dataset (image size, colour strength, blur, eval split) are ``None`` here and resolved once
the dataset is known (:func:`simclr_tf.config_defaults.resolve`), so one command works for
CIFAR-10 and for ImageNet.

Where the rules live: the choices and checks in :mod:`simclr_tf.config_checks`, the augmentation
names and small-image defaults in :mod:`simclr_tf.data.recipe`, the step schedule in
:mod:`simclr_tf.schedule`; all of them below or beside this table, none above it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from absl import flags

from simclr_tf.config_checks import (
    AUGMENT_PLACES,
    AUGMENT_VIEWS,
    BN_MOMENTS,
    COLOR_JITTER_IMPLS,
    CROP_SAMPLERS,
    ENCODER_SYNTAX,
    LOSSES,
    LR_SCALINGS,
    MODES,
    OPTIMIZERS,
    PRECISIONS,
    PROJ_HEAD_MODES,
    RESNET_ENCODER,
    STRATEGIES,
    TRAIN_MODES,
    ConfigChecks,
    ConfigError,
)
from simclr_tf.data.recipe import DEFAULT_COLOR_JITTER_IMPL

__all__ = ["ARCHITECTURE_KEYS", "Config", "ConfigError", "define_flags", "setting"]

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
class Config(ConfigChecks):
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
        "or the weights to evaluate in eval mode. Only a new run uses it: when --model_dir "
        "already holds checkpoints, the run resumes from them and says that --checkpoint is "
        "not used. A damaged checkpoint is refused before any other work.",
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
    color_jitter_impl: str = setting(
        DEFAULT_COLOR_JITTER_IMPL,
        "Brightness form of the colour jitter, as the reference's data_util random_brightness: "
        "v1 = additive, x + U(-0.8s, 0.8s) (SimCLR v1's tf.image.random_brightness); v2 = "
        "multiplicative, x * U(max(0, 1 - 0.8s), 1 + 0.8s) (the reference's default, SimCLRv2).",
        choices=COLOR_JITTER_IMPLS,
    )
    use_blur: bool | None = setting(None, "Gaussian blur in pretraining (default: on above 32 px).")
    augment_on: str = setting(
        "auto",
        "Where the two-view augmentation runs: host (tf.data), device (batched, inside the "
        "train step) or auto (default): device when the strategy's replicas are accelerators "
        "(TPU, GPU), so the host only decodes (and, for variable-size images, crops) and never "
        "starves them; host on CPU-only runs, where host and device are the same cores and the "
        "per-image host path is the faster one. The choice is logged and recorded in "
        "flags.json. Same recipe and distributions either way. Fixed-size images (CIFAR): the "
        "host only decodes, the device does everything. Variable-size images: the host still "
        "draws both crop boxes from each image's true size, crops and resizes them to "
        "--image_size and sends them rounded to uint8; the device does flip, colour, grayscale "
        "and blur.",
        choices=AUGMENT_PLACES,
    )
    data_service: str = setting(
        "",
        "Address of a tf.data service dispatcher, grpc://HOST:PORT: the pretraining input "
        "(decode + augmentation + batching) then runs on its workers, on any number of machines "
        "(start them with: python -m simclr_tf.data_service dispatcher|worker ...). Image "
        "folders only, seen at the same --data_dir path by every worker. Each image is used once "
        "per epoch (processing mode distributed_epoch), views are seeded by the global batch / "
        "example number (never by worker), a resumed run continues at its step's batch. Empty: "
        "input on this host.",
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
    batch_norm_moments: str = setting(
        "exact",
        "How training batch norm computes the batch variance: 'exact' (fused kernel / shifted "
        "sums: fast, accurate) or 'reference' (E[x^2] - E[x]^2 in one float32 pass, as the "
        "reference code's SyncBatchNormalization: reproduces its train steps to float32 noise; "
        "the exact form differs from them by float rounding amplified through the step, "
        "docs/reference_steps.md).",
        choices=BN_MOMENTS,
    )
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
    conv_filter_grad: str = setting(
        "auto",
        "Filter gradient of the encoder's bfloat16 convolutions: matmul (one matrix product per "
        "kernel tap, 3x3 layers with output maps of at most 14x14 from >= 128 input channels; "
        "faster on CPUs), native (TF's kernel), "
        "auto (matmul for --mixed_precision=bfloat16 on CPU replicas without --jit_compile, "
        "else native; recorded in flags.json).",
        choices=("auto", "native", "matmul"),
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
        "both: augment both views. one: the paper's asymmetric study (Figure 5): both views are "
        "randomly cropped (and flipped if flip is listed), only the first gets the other "
        "--augmentations. one_resize: the second view is only resized (centre view), the "
        "first gets all --augmentations.",
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
