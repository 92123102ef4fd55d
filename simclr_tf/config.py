"""Every flag of simclr_tf in one place, turned into a frozen, validated :class:`Config`.

Flag names and meanings follow the reference SimCLR TF2 code (google-research/simclr, ``tf2/``)
wherever it has them, so its commands and the papers' recipes carry over. Defaults that depend on
the dataset (image size, colour strength, blur, eval split) are ``None`` here and resolved once the
dataset is known (:func:`resolve`), so one command works for CIFAR-10 and for ImageNet.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from absl import flags


class ConfigError(ValueError):
    """A flag value or combination that cannot work; the message names the fix."""


MODES = ("train", "eval", "train_then_eval")
TRAIN_MODES = ("pretrain", "finetune")
OPTIMIZERS = ("lars", "momentum", "adam")
LR_SCALINGS = ("linear", "sqrt")
PROJ_HEAD_MODES = ("none", "linear", "nonlinear")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("none", "bfloat16", "float16")
AUGMENT_PLACES = ("host", "device")
CROP_SAMPLERS = ("reference", "uniform_area")
RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)

# Flags that define the network's variables: a model_dir written with other values holds a
# different architecture and must not be silently reused.
ARCHITECTURE_KEYS = (
    "resnet_depth",
    "width_multiplier",
    "sk_ratio",
    "se_ratio",
    "proj_head_mode",
    "num_proj_layers",
    "proj_out_dim",
    "cifar_stem",
)


def define_flags() -> None:
    """Registers the flags with absl (idempotent, so tests can import twice)."""
    if "train_mode" in flags.FLAGS:
        return
    d = flags
    # What to run.
    d.DEFINE_enum("mode", "train", MODES, "train, eval, or train then evaluate the final weights.")
    d.DEFINE_enum("train_mode", "pretrain", TRAIN_MODES,
                  "pretrain: contrastive SimCLR; finetune: supervised head on a (pretrained) "
                  "encoder, including the linear evaluation protocol.")
    d.DEFINE_string("model_dir", None, "Folder holding everything of one run: checkpoints, "
                    "flags.json, metrics.csv, TensorBoard logs, result.json, saved_model/.")
    d.DEFINE_string("checkpoint", None, "Checkpoint (file prefix or folder) to start from: the "
                    "pretrained model for finetune, or the weights to evaluate in eval mode.")
    d.DEFINE_integer("seed", 0, "Seed for augmentations, shuffling and initial weights.")
    # Data.
    d.DEFINE_string("dataset", "imagenet2012", "A TFDS image classification dataset name "
                    "(cifar10, cifar100, stl10, imagenet2012, imagenet2012_subset/1pct, ...) or "
                    "image_folder (with --data_dir=ROOT holding ROOT/<split>/<class>/*.jpg).")
    d.DEFINE_string("data_dir", None, "TFDS data dir, or the image folder root for image_folder.")
    d.DEFINE_string("train_split", "train", "Split to train on.")
    d.DEFINE_string("eval_split", None, "Split to evaluate on (default: validation if the "
                    "dataset has one, else test).")
    d.DEFINE_float("train_data_fraction", 1.0, "Class-balanced, seeded fraction of the training "
                   "labels to use (0.01, 0.1 for the semi-supervised protocol).")
    d.DEFINE_bool("cache_dataset", False, "Cache decoded images in memory (small datasets).")
    d.DEFINE_integer("image_size", None, "Side of the square training images (default: the "
                     "dataset's own side when it is <= 64, else 224).")
    d.DEFINE_float("color_jitter_strength", None,
                   "Colour distortion strength s (default 0.5 for images <= 32 px, else 1.0).")
    d.DEFINE_bool("use_blur", None, "Gaussian blur in pretraining (default: on above 32 px).")
    d.DEFINE_enum("augment_on", "host", AUGMENT_PLACES, "Where the two-view augmentation runs: "
                  "host (tf.data) or device (batched, inside the train step). Same recipe and "
                  "distributions either way. Fixed-size images (CIFAR): the host only decodes, "
                  "the device does everything. Variable-size images: the host still draws both "
                  "crop boxes from each image's true size, decodes (JPEG: only the boxes) and "
                  "resizes them to --image_size, and sends them rounded to uint8; the device "
                  "does flip, colour, grayscale and blur.")
    d.DEFINE_enum("crop_sampler", "reference", CROP_SAMPLERS, "Random crop distribution: "
                  "reference = tf.image.sample_distorted_bounding_box as in the SimCLR code "
                  "(area 8-100%, uniform aspect 3/4-4/3, >= 10% of the image, 100 attempts, "
                  "else the whole image); uniform_area = torchvision-style (uniform area, "
                  "log-uniform aspect, clamped centre crop fallback).")
    # Schedule and optimizer.
    d.DEFINE_integer("train_batch_size", 512, "Global training batch size (all replicas).")
    d.DEFINE_integer("train_epochs", 100, "Training epochs (used when --train_steps is 0).")
    d.DEFINE_integer("train_steps", 0, "Training steps; overrides --train_epochs when > 0.")
    d.DEFINE_float("warmup_epochs", 10, "Linear warmup epochs before the cosine decay.")
    d.DEFINE_float("learning_rate", 0.3, "Learning rate per 256 images (see scaling).")
    d.DEFINE_enum("learning_rate_scaling", "linear", LR_SCALINGS,
                  "linear: lr * batch / 256; sqrt: lr * sqrt(batch).")
    d.DEFINE_enum("optimizer", "lars", OPTIMIZERS, "Optimizer.")
    d.DEFINE_float("momentum", 0.9, "Momentum of LARS / SGD.")
    d.DEFINE_float("weight_decay", 1e-6, "Weight decay (not on batch-norm parameters or biases).")
    d.DEFINE_float("temperature", 0.1, "NT-Xent temperature.")
    d.DEFINE_bool("hidden_norm", True, "L2-normalise projections before the contrastive loss.")
    # Network.
    d.DEFINE_integer("resnet_depth", 50, "ResNet depth: 18, 34, 50, 101, 152 or 200.")
    d.DEFINE_float("width_multiplier", 1.0, "Width multiplier of the ResNet (fractions allowed).")
    d.DEFINE_float("sk_ratio", 0.0, "Selective-kernel ratio (SimCLRv2 uses 0.0625); 0 = off.")
    d.DEFINE_float("se_ratio", 0.0, "Squeeze-excitation ratio; 0 = off.")
    d.DEFINE_bool("cifar_stem", None, "3x3 stride-1 stem without max pool (default: on for "
                  "images <= 32 px).")
    d.DEFINE_float("batch_norm_decay", 0.9, "Batch-norm moving-average momentum.")
    d.DEFINE_bool("global_bn", True, "Synchronise batch-norm statistics across replicas.")
    d.DEFINE_enum("proj_head_mode", "nonlinear", PROJ_HEAD_MODES, "Projection head type.")
    d.DEFINE_integer("num_proj_layers", 3, "Layers of the nonlinear head (2 = SimCLR v1).")
    d.DEFINE_integer("proj_out_dim", 128, "Projection output dimension.")
    d.DEFINE_integer("ft_proj_selector", 0, "Which projection-head layer feeds the supervised "
                     "head (0 = the encoder output h).")
    d.DEFINE_bool("lineareval_while_pretraining", True,
                  "Train a linear probe on stop_gradient(h) during pretraining.")
    d.DEFINE_integer("fine_tune_after_block", -1, "finetune: train only after this block "
                     "(-1 everything, 0 after the stem, 4 only the linear head = linear eval).")
    d.DEFINE_bool("zero_init_logits_layer", False, "Zero-initialise the supervised head.")
    # Checkpoints, evaluation, monitoring.
    d.DEFINE_integer("checkpoint_epochs", 1, "Save a checkpoint every this many epochs.")
    d.DEFINE_integer("checkpoint_steps", 0, "Save every this many steps (overrides epochs).")
    d.DEFINE_integer("keep_checkpoint_max", 5, "Checkpoints to keep.")
    d.DEFINE_integer("eval_batch_size", 256, "Global evaluation batch size.")
    d.DEFINE_integer("eval_steps", 0, "Evaluation batches (0 = the whole split).")
    d.DEFINE_integer("knn_every_epochs", 0, "Pretraining: kNN monitor on --eval_split every "
                     "this many epochs (0 = off).")
    d.DEFINE_integer("knn_bank_size", 10000, "Training examples in the kNN bank.")
    d.DEFINE_integer("knn_k", 200, "Neighbours of the kNN monitor.")
    d.DEFINE_integer("verbose", 1, "Keras progress output: 0 silent, 1 bar, 2 one line/epoch.")
    # Export.
    d.DEFINE_bool("export_saved_model", True, "Export a SavedModel after train_then_eval/eval.")
    d.DEFINE_integer("keep_hub_module_max", 1, "Exported SavedModels to keep.")
    d.DEFINE_bool("overwrite", False, "Allow replacing an existing export of the same step.")
    # Distribution and speed.
    d.DEFINE_enum("strategy", "auto", STRATEGIES, "tf.distribute strategy; auto picks a TPU if "
                  "one resolves, MirroredStrategy with several GPUs, else the default.")
    d.DEFINE_bool("use_tpu", None, "Alias of --strategy=tpu (reference flag).")
    d.DEFINE_string("tpu_name", None, "TPU name or grpc address.")
    d.DEFINE_string("tpu_zone", None, "TPU zone.")
    d.DEFINE_string("gcp_project", None, "GCP project of the TPU.")
    d.DEFINE_integer("num_cpu_devices", 1, "Split the CPU into this many logical devices "
                     "(development: lets --strategy=mirrored run on one CPU).")
    d.DEFINE_enum("mixed_precision", "none", PRECISIONS, "Mixed-precision compute dtype.")
    d.DEFINE_bool("jit_compile", False, "XLA-compile the train step.")
    d.DEFINE_integer("micro_batch_size", 0, "Gradient caching: compute the batch in chunks of "
                     "this many images per replica (0 = off).")


@dataclasses.dataclass(frozen=True)
class Config:
    """The validated settings of one run (flag names, resolved defaults)."""

    mode: str = "train"
    train_mode: str = "pretrain"
    model_dir: str | None = None
    checkpoint: str | None = None
    seed: int = 0
    dataset: str = "imagenet2012"
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str | None = None
    train_data_fraction: float = 1.0
    cache_dataset: bool = False
    image_size: int | None = None
    color_jitter_strength: float | None = None
    use_blur: bool | None = None
    augment_on: str = "host"
    crop_sampler: str = "reference"
    train_batch_size: int = 512
    train_epochs: int = 100
    train_steps: int = 0
    warmup_epochs: float = 10
    learning_rate: float = 0.3
    learning_rate_scaling: str = "linear"
    optimizer: str = "lars"
    momentum: float = 0.9
    weight_decay: float = 1e-6
    temperature: float = 0.1
    hidden_norm: bool = True
    resnet_depth: int = 50
    width_multiplier: float = 1.0
    sk_ratio: float = 0.0
    se_ratio: float = 0.0
    cifar_stem: bool | None = None
    batch_norm_decay: float = 0.9
    global_bn: bool = True
    proj_head_mode: str = "nonlinear"
    num_proj_layers: int = 3
    proj_out_dim: int = 128
    ft_proj_selector: int = 0
    lineareval_while_pretraining: bool = True
    fine_tune_after_block: int = -1
    zero_init_logits_layer: bool = False
    checkpoint_epochs: int = 1
    checkpoint_steps: int = 0
    keep_checkpoint_max: int = 5
    eval_batch_size: int = 256
    eval_steps: int = 0
    knn_every_epochs: int = 0
    knn_bank_size: int = 10000
    knn_k: int = 200
    verbose: int = 1
    export_saved_model: bool = True
    keep_hub_module_max: int = 1
    overwrite: bool = False
    strategy: str = "auto"
    use_tpu: bool | None = None
    tpu_name: str | None = None
    tpu_zone: str | None = None
    gcp_project: str | None = None
    num_cpu_devices: int = 1
    mixed_precision: str = "none"
    jit_compile: bool = False
    micro_batch_size: int = 0

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
        if self.train_mode != "finetune":
            return 0
        return self.fine_tune_after_block + 1

    @property
    def is_linear_eval(self) -> bool:
        return self.train_mode == "finetune" and self.fine_tune_after_block >= 4

    def validate(self) -> Config:
        """Fails fast, naming the fix, on values that cannot work. Returns self."""
        err = []
        if not self.model_dir:
            err.append("--model_dir is required: the folder for checkpoints, logs and results.")
        if self.mode in ("train", "train_then_eval"):
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
        head_layers = {"none": 0, "linear": 1, "nonlinear": self.num_proj_layers}
        n_head = head_layers[self.proj_head_mode]
        if not 0 <= self.ft_proj_selector <= n_head:
            err.append(
                f"--ft_proj_selector={self.ft_proj_selector} must be in [0, {n_head}] for "
                f"--proj_head_mode={self.proj_head_mode}."
            )
        if self.temperature <= 0:
            err.append("--temperature must be > 0.")
        if self.train_mode == "finetune" and self.micro_batch_size:
            err.append("--micro_batch_size is for pretraining; drop it with finetune.")
        if self.micro_batch_size < 0:
            err.append("--micro_batch_size must be >= 0.")
        trains = self.mode in ("train", "train_then_eval")
        if trains and self.micro_batch_size and self.train_batch_size % self.micro_batch_size:
            err.append(
                f"--train_batch_size={self.train_batch_size} is not a multiple of "
                f"--micro_batch_size={self.micro_batch_size}."
            )
        if self.checkpoint_steps < 0 or self.checkpoint_epochs < 0:
            err.append("--checkpoint_steps and --checkpoint_epochs must be >= 0.")
        if self.keep_checkpoint_max < 1:
            err.append("--keep_checkpoint_max must be >= 1.")
        if self.num_cpu_devices < 1:
            err.append("--num_cpu_devices must be >= 1.")
        if self.use_tpu and self.strategy not in ("auto", "tpu"):
            err.append(f"--use_tpu contradicts --strategy={self.strategy}: pass only one.")
        if self.train_mode == "finetune" and self.augment_on == "device":
            err.append("--augment_on=device is for pretraining (fine-tuning only crops and flips).")
        if self.crop_sampler not in CROP_SAMPLERS:
            err.append(f"--crop_sampler={self.crop_sampler} is not one of {CROP_SAMPLERS}.")
        if err:
            raise ConfigError("Invalid flags:\n  - " + "\n  - ".join(err))
        return self


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
    small = image_size <= 32
    eval_split = cfg.eval_split
    if eval_split is None:
        eval_split = next((s for s in ("validation", "test") if s in splits), None)
        if eval_split is None and cfg.mode != "train":
            raise ConfigError(
                f"The dataset has no validation or test split (splits: {sorted(splits)}): "
                "pass --eval_split."
            )
    strategy = "tpu" if cfg.use_tpu else cfg.strategy
    return cfg.replace(
        image_size=image_size,
        cifar_stem=small if cfg.cifar_stem is None else cfg.cifar_stem,
        color_jitter_strength=(0.5 if small else 1.0)
        if cfg.color_jitter_strength is None
        else cfg.color_jitter_strength,
        use_blur=(not small) if cfg.use_blur is None else cfg.use_blur,
        eval_split=eval_split,
        strategy=strategy,
    )
