"""Training: wires data -> augment -> model -> loss -> optimizer -> fit with callbacks.

One function per piece so a newcomer can follow a run top to bottom: :func:`build_model`,
:func:`build_optimizer_for`, :func:`train_dataset`, :func:`train`.
"""

from __future__ import annotations

import functools
import math

import keras
import tensorflow as tf
from absl import logging

from simclr_tf import checkpoints, distribute, evaluate, model_dir, optim
from simclr_tf.callbacks import MetricsCSV, training_callbacks
from simclr_tf.config import Config, Schedule, make_schedule
from simclr_tf.data import augment, pipeline, sources
from simclr_tf.metrics import KNNMonitor
from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.simclr import SimCLRModel

# Seeds of resumed runs are moved by this factor times the start step, so a resumed run sees
# new views rather than replaying the first epoch's.
_RESUME_SEED_STRIDE = 1_000_003


def set_precision(cfg: Config) -> None:
    """Mixed precision for encoder and heads (the loss is always computed in float32)."""
    policy = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
    keras.mixed_precision.set_dtype_policy(policy[cfg.mixed_precision])


def build_model(cfg: Config, num_classes: int) -> SimCLRModel:
    """The SimCLR model of the config (call inside the strategy scope)."""
    encoder = ResNet(
        depth=cfg.resnet_depth,
        width_multiplier=cfg.width_multiplier,
        cifar_stem=bool(cfg.cifar_stem),
        sk_ratio=cfg.sk_ratio,
        se_ratio=cfg.se_ratio,
        bn_momentum=cfg.batch_norm_decay,
        global_bn=cfg.global_bn,
        name="encoder",
    )
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
        augment_fn = functools.partial(
            augment.two_views,
            size=cfg.image_size,
            color_jitter_strength=cfg.color_jitter_strength,
            use_blur=cfg.use_blur,
            crop_sampler=cfg.crop_sampler,
        )
    return SimCLRModel(
        encoder,
        head,
        num_classes,
        train_mode=cfg.train_mode,
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
        name="simclr",
    )


def build_optimizer_for(cfg: Config, schedule: Schedule) -> keras.optimizers.Optimizer:
    lr = optim.WarmupCosineDecay(
        schedule.peak_learning_rate, schedule.warmup_steps, schedule.total_steps
    )
    opt = optim.build_optimizer(cfg.optimizer, lr, cfg.momentum, cfg.weight_decay)
    if cfg.mixed_precision == "float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def compile_model(
    cfg: Config, model: SimCLRModel, optimizer: keras.optimizers.Optimizer | None
) -> None:
    """Compiles and creates every variable; the supervised head skips LARS adaptation."""
    model.compile(optimizer=optimizer, jit_compile=cfg.jit_compile)
    model.build_all(cfg.image_size)
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if isinstance(inner, optim.LARS) and model.supervised_head is not None:
        # As in the reference code: the linear head is trained by plain momentum SGD.
        inner.exclude_from_layer_adaptation(model.supervised_head.trainable_variables)


def make_schedule_for(cfg: Config, num_train_examples: int) -> Schedule:
    peak = optim.scaled_learning_rate(
        cfg.learning_rate, cfg.train_batch_size, cfg.learning_rate_scaling
    )
    return make_schedule(cfg, num_train_examples, peak)


def train_dataset(
    cfg: Config, strategy: tf.distribute.Strategy, start_step: int
) -> tf.distribute.DistributedDataset:
    """The distributed training input: each input pipeline reads its shard, per-replica batch."""
    per_replica = pipeline.per_replica_batch_size(
        cfg.train_batch_size, strategy.num_replicas_in_sync
    )
    seed = cfg.seed + _RESUME_SEED_STRIDE * start_step

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        ds, _ = sources.load_split(
            cfg.dataset,
            cfg.train_split,
            data_dir=cfg.data_dir,
            train_data_fraction=cfg.train_data_fraction,
            fraction_seed=cfg.seed,
            shuffle_files=True,
            input_context=ctx,
        )
        shard_seed = seed + 7919 * ctx.input_pipeline_id
        if cfg.train_mode == "pretrain":
            return pipeline.pretrain_dataset(
                ds,
                batch_size=per_replica,
                image_size=cfg.image_size,
                color_jitter_strength=cfg.color_jitter_strength,
                use_blur=cfg.use_blur,
                seed=shard_seed,
                augment_on=cfg.augment_on,
                cache=cfg.cache_dataset,
                crop_sampler=cfg.crop_sampler,
            )
        return pipeline.finetune_dataset(
            ds,
            batch_size=per_replica,
            image_size=cfg.image_size,
            seed=shard_seed,
            cache=cfg.cache_dataset,
            crop_sampler=cfg.crop_sampler,
        )

    return pipeline.distribute(strategy, dataset_fn)


def knn_monitor(cfg: Config, info: sources.DatasetInfo) -> KNNMonitor:
    """kNN top-1 into the epoch logs (Keras's TensorBoard and CSV callbacks record it)."""

    def bank():
        ds, _ = sources.load_split(
            cfg.dataset,
            cfg.train_split,
            data_dir=cfg.data_dir,
            fraction_seed=cfg.seed,
            max_examples=cfg.knn_bank_size,  # class-balanced
        )
        return pipeline.eval_dataset(ds, batch_size=cfg.eval_batch_size, image_size=cfg.image_size)

    return KNNMonitor(
        bank,
        functools.partial(evaluate.eval_input, cfg),  # the images evaluation reports on
        num_classes=info.num_classes,
        every_n_epochs=cfg.knn_every_epochs,
        k=cfg.knn_k,
        bank_size=cfg.knn_bank_size,
        fill_value=float("nan"),  # epochs without a kNN pass log nan, not a missing column
    )


def num_train_examples(cfg: Config) -> int:
    """Examples per training epoch, after ``--train_data_fraction`` (epochs are of the subset)."""
    if cfg.train_data_fraction >= 1.0:
        return sources.dataset_info(cfg.dataset, cfg.data_dir).split_sizes[cfg.train_split]
    _, subset = sources.load_split(
        cfg.dataset,
        cfg.train_split,
        data_dir=cfg.data_dir,
        train_data_fraction=cfg.train_data_fraction,
        fraction_seed=cfg.seed,
    )
    return subset.split_sizes[cfg.train_split]


def build_for_run(
    cfg: Config, strategy: tf.distribute.Strategy, info: sources.DatasetInfo, schedule: Schedule
) -> SimCLRModel:
    """Model + optimizer built and compiled inside the strategy scope."""
    set_precision(cfg)
    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        model = build_model(cfg, info.num_classes)
        compile_model(cfg, model, build_optimizer_for(cfg, schedule))
    return model


def train(
    cfg: Config,
    strategy: tf.distribute.Strategy,
    info: sources.DatasetInfo,
    write_dir: str,
) -> SimCLRModel:
    """Trains to ``total_steps``, resuming from the newest checkpoint in ``write_dir``."""
    schedule = make_schedule_for(cfg, num_train_examples(cfg))
    model = build_for_run(cfg, strategy, info, schedule)
    checkpointer = checkpoints.Checkpointer(model, write_dir, cfg.keep_checkpoint_max)
    # Every worker resumes from the chief's model_dir (non-chiefs save to a temporary folder).
    multi = distribute.is_multi_worker(strategy) and cfg.model_dir
    step = checkpointer.restore_latest(cfg.model_dir if multi else write_dir)
    distribute.check_same_step(strategy, step)
    if step == 0 and cfg.train_mode == "finetune" and cfg.checkpoint != "none":
        checkpoints.restore_pretrained(model, cfg.checkpoint)
    logging.info(
        "Training %s from step %d to %d (%d steps/epoch, warmup %d, peak lr %.4g, "
        "global batch %d on %d replica(s)).",
        cfg.train_mode,
        step,
        schedule.total_steps,
        schedule.steps_per_epoch,
        schedule.warmup_steps,
        schedule.peak_learning_rate,
        cfg.train_batch_size,
        strategy.num_replicas_in_sync,
    )
    if step >= schedule.total_steps:
        logging.info("Already at step %d: nothing to train.", step)
        return model

    extra: list[keras.callbacks.Callback] = []
    if cfg.train_mode == "pretrain" and cfg.knn_every_epochs > 0:
        extra.append(knn_monitor(cfg, info))
    extra += [
        MetricsCSV(model_dir.metrics_path(write_dir)),
        keras.callbacks.TensorBoard(log_dir=model_dir.summaries_dir(write_dir), write_graph=False),
    ]
    callbacks = training_callbacks(
        checkpointer, schedule.checkpoint_steps, schedule.total_steps, extra
    )
    dataset = train_dataset(cfg, strategy, step)
    # A run shorter than an epoch is one "epoch" of exactly its steps (honest progress bars).
    spe = min(schedule.steps_per_epoch, schedule.total_steps)
    epochs = math.ceil(schedule.total_steps / spe)
    first_epoch = step // spe
    if step % spe:
        # Finish the interrupted epoch first, so later epochs stay aligned with the data size.
        model.fit(
            dataset,
            epochs=first_epoch + 1,
            initial_epoch=first_epoch,
            steps_per_epoch=spe - step % spe,
            callbacks=callbacks,
            verbose=cfg.verbose,
            shuffle=False,  # the input pipeline shuffles (seeded)
        )
        first_epoch += 1
    if first_epoch < epochs and int(model.optimizer.iterations.numpy()) < schedule.total_steps:
        model.fit(
            dataset,
            epochs=epochs,
            initial_epoch=first_epoch,
            steps_per_epoch=spe,
            callbacks=callbacks,
            verbose=cfg.verbose,
            shuffle=False,  # the input pipeline shuffles (seeded)
        )
    return model
