"""Building the SimCLR model of a :class:`~simclr_tf.config.Config`, for a run or for export.

Rebuilding a finished run from its folder (``flags.json`` + a checkpoint) is
:func:`simclr_tf.restore.read_run` / :func:`~simclr_tf.restore.rebuild`.

The exported network is a float32 copy of the trained one with every layer trainable (mixed
precision, frozen stages of linear evaluation, device augmentation, gradient caching and
distribution wrappers are dropped), so consumers get float32 outputs and choose what to freeze.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from simclr_tf import losses
from simclr_tf.config import Config
from simclr_tf.config_checks import RESNET_ENCODER
from simclr_tf.data.augment import study_ops
from simclr_tf.errors import ExportError
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
            color_jitter_impl=cfg.color_jitter_impl,
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
        batch_norm_moments=cfg.batch_norm_moments,
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
