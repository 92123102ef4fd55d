"""Building the SimCLR model of a :class:`~simclr_tf.config.Config`: for a run, and again from
a finished run's folder (``flags.json`` + a checkpoint) for export.

The exported network is a float32 copy of the trained one with every layer trainable (mixed
precision, frozen stages of linear evaluation, device augmentation, gradient caching and
distribution wrappers are dropped), so consumers get float32 outputs and choose what to freeze.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from simclr_tf import checkpoints, losses
from simclr_tf import model_dir as model_dir_lib
from simclr_tf.config import RESNET_ENCODER, Config
from simclr_tf.data import sources, study_ops
from simclr_tf.errors import ExportError, UserError
from simclr_tf.models.backbone import KerasBackbone, backbone_from_spec
from simclr_tf.models.distill import DistillationModel
from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.simclr import SimCLRModel


def build_encoder(cfg: Config) -> keras.Model:
    """The ``--encoder`` of the config: this package's ResNet or a wrapped Keras backbone."""
    if cfg.encoder != RESNET_ENCODER:
        return KerasBackbone(backbone_from_spec(cfg.encoder, int(cfg.image_size)), name="encoder")
    return ResNet(
        depth=cfg.resnet_depth,
        width_multiplier=cfg.width_multiplier,
        cifar_stem=bool(cfg.cifar_stem),
        sk_ratio=cfg.sk_ratio,
        se_ratio=cfg.se_ratio,
        bn_momentum=cfg.batch_norm_decay,
        global_bn=cfg.global_bn,
        first_block_projection=cfg.first_block_projection,
        name="encoder",
    )


def build_model(cfg: Config, num_classes: int) -> SimCLRModel:
    """The SimCLR model of the config (call inside the strategy scope)."""
    encoder = build_encoder(cfg)
    head = ProjectionHead(
        mode=cfg.proj_head_mode,
        num_layers=cfg.num_proj_layers,
        out_dim=cfg.proj_out_dim,
        bn_momentum=cfg.batch_norm_decay,
        global_bn=cfg.global_bn,
        name="projection_head",
    )
    augment_fn = None
    if cfg.train_mode == "pretrain" and cfg.augment_on == "device":
        augment_fn = study_ops.two_views_fn(
            cfg.image_size,
            cfg.color_jitter_strength,
            cfg.use_blur,
            cfg.augmentations,
            cfg.augment_views,
            crop_sampler=cfg.crop_sampler,
        )
    model_class, mode_kwargs = SimCLRModel, {"train_mode": cfg.train_mode}
    if cfg.train_mode == "distill":  # the student; train.build_for_run attaches its teacher
        model_class = DistillationModel
        mode_kwargs = {
            "distill_temperature": cfg.distill_temperature,
            "label_weight": cfg.distill_label_weight,
        }
    return model_class(
        encoder,
        head,
        num_classes,
        **mode_kwargs,
        temperature=cfg.temperature,
        hidden_norm=cfg.hidden_norm,
        lineareval_while_pretraining=cfg.lineareval_while_pretraining,
        ft_proj_selector=cfg.ft_proj_selector,
        frozen_stages=cfg.frozen_stages,
        zero_init_logits_layer=cfg.zero_init_logits_layer,
        weight_decay=cfg.weight_decay,
        augment_fn=augment_fn,
        seed=cfg.seed,
        micro_batch_size=cfg.micro_batch_size,
        contrastive_loss=losses.make_contrastive_loss(
            cfg.loss, cfg.temperature, cfg.hidden_norm, cfg.margin, cfg.semi_hard_negatives
        ),
        name="simclr",
    )


def serving_config(cfg: Config) -> Config:
    """The config of the exported network: float32, every layer trainable, no device augment."""
    return cfg.replace(
        fine_tune_after_block=-1,
        mixed_precision="none",
        augment_on="host",
        micro_batch_size=0,
    )


def build_serving_model(cfg: Config, num_classes: int) -> SimCLRModel:
    """The float32, fully trainable network of ``cfg``, built (variables created)."""
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        model = build_model(serving_config(cfg), num_classes)
        size = int(cfg.image_size)
        model(tf.zeros([1, size, size, 3]), training=False)  # creates the variables
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    return model


def serving_copy(model: keras.Model, cfg: Config) -> SimCLRModel:
    """A float32, fully trainable copy of ``model`` outside any distribution strategy."""
    copy = build_serving_model(cfg, int(getattr(model, "num_classes", 0)))
    src, dst = model.weights, copy.weights
    if [tuple(v.shape) for v in src] != [tuple(v.shape) for v in dst]:
        raise ExportError(
            f"The model to export ({len(src)} weights) does not match the network the flags "
            f"describe ({len(dst)} weights): export with the flags the model was built with."
        )
    for d, s in zip(dst, src, strict=True):
        d.assign(keras.ops.convert_to_numpy(s))
    return copy


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What rebuilding a run's network needs, read from its folder (cheap: no model yet)."""

    cfg: Config
    checkpoint: str  # the checkpoint prefix to restore
    step: int
    num_classes: int  # of the supervised head; 0 without one


def _num_classes(cfg: Config, flags_dict: dict, model_dir: str) -> int:
    """Classes of the run's supervised head (0 without one), as recorded in flags.json.

    Runs recorded before flags.json held ``num_classes`` fall back to the dataset's metadata.
    """
    if cfg.train_mode == "pretrain" and not cfg.lineareval_while_pretraining:
        return 0
    recorded = flags_dict.get(model_dir_lib.NUM_CLASSES_KEY)
    if recorded is not None:
        return int(recorded)
    try:
        return int(sources.dataset_info(cfg.dataset, cfg.data_dir).num_classes)
    except UserError as e:
        raise ExportError(
            f"{model_dir_lib.flags_path(model_dir)} does not record num_classes and the dataset "
            f'is not readable here ({e}): add "num_classes": N to that flags.json.'
        ) from e


def read_run(model_dir: str, checkpoint: str | None = None) -> RunRecord:
    """The config of the run in ``model_dir`` (its ``flags.json``) and the checkpoint to
    restore (default: the newest in ``model_dir``)."""
    flags_dict = model_dir_lib.read_flags(model_dir)
    if flags_dict is None:
        raise ExportError(
            f"No {model_dir_lib.FLAGS_FILE} in {model_dir}: point --model_dir at the folder of a "
            "run started with run.py (it records the flags needed to rebuild the model)."
        )
    cfg = model_dir_lib.config_from_flags(flags_dict)
    if not cfg.image_size:
        raise ExportError(
            f"{model_dir_lib.flags_path(model_dir)} has no resolved image_size: it was not "
            "written by a training run of run.py."
        )
    prefix = checkpoints.resolve_checkpoint_path(checkpoint or model_dir)
    step = checkpoints.checkpoint_step(prefix)
    return RunRecord(cfg, prefix, step, _num_classes(cfg, flags_dict, model_dir))


def rebuild(run: RunRecord) -> SimCLRModel:
    """The run's float32 network with the weights of ``run.checkpoint``."""
    model = build_serving_model(run.cfg, run.num_classes)
    untracked = checkpoints.untracked_variables(model)
    if untracked:
        # A restore would silently leave these at their random initial values.
        raise ExportError(
            f"{len(untracked)} variables of the network are not reachable by checkpoints (a "
            f"layer held only in a Python list?), e.g. {untracked[:3]}; their trained values "
            "cannot be restored. Fix the model code so every sub-layer is tracked."
        )
    checkpoints.restore_model_weights(model, run.checkpoint)
    return model
