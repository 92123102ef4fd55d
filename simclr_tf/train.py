"""Training: wires data -> augment -> model -> loss -> optimizer -> fit with callbacks.

One function per piece so a newcomer can follow a run top to bottom: the model
(:func:`simclr_tf.models.build.build_model`), :func:`build_optimizer_for`, :func:`train_dataset`,
:func:`train`. Resuming (start step, seed shift, the interrupted epoch) is
:func:`simclr_tf.restore.resume` and :func:`~simclr_tf.checkpoints.fit_spans`.
"""

from __future__ import annotations

import functools
import math

import keras
import tensorflow as tf
from absl import logging

from simclr_tf import (
    checkpoints,
    data_service,
    distribute,
    evaluate,
    loss_scale,
    model_dir,
    neighbours,
    optim,
    plots,
)
from simclr_tf.callbacks import MetricsCSV, training_callbacks
from simclr_tf.config import Config
from simclr_tf.data import image_folder, image_list, pipeline, sources
from simclr_tf.data.recipe import choose_augment_on, is_recipe
from simclr_tf.knn import KNNMonitor
from simclr_tf.models import conv_grad
from simclr_tf.models.build import build_model
from simclr_tf.models.distill import fixed_view_dataset
from simclr_tf.models.simclr import SimCLRModel
from simclr_tf.restore import load_teacher, restore_student, resume
from simclr_tf.schedule import Schedule, make_schedule, per_replica_batch


def set_precision(cfg: Config) -> None:
    """Mixed precision for encoder and heads (the loss is always computed in float32)."""
    policy = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
    keras.mixed_precision.set_dtype_policy(policy[cfg.mixed_precision])


def filter_gradient_for(cfg: Config, strategy: tf.distribute.Strategy) -> str:
    """``--conv_filter_grad`` with ``auto`` resolved: matmul where it is the faster kernel.

    That is bfloat16 on CPU replicas (oneDNN's bfloat16 filter-gradient kernel is slow at small
    maps, see ``models.conv_grad``); GPUs, TPUs and XLA keep their own kernels, and float32 runs
    never take it (the layer only switches in bfloat16).
    """
    if cfg.conv_filter_grad != "auto":
        return cfg.conv_filter_grad
    cpu = distribute.accelerator(strategy) is None
    return (
        "matmul" if cpu and cfg.mixed_precision == "bfloat16" and not cfg.jit_compile else "native"
    )


def set_kernels(cfg: Config, strategy: tf.distribute.Strategy) -> None:
    """Kernel choices of layers traced from now on (the run's ``--conv_filter_grad``)."""
    conv_grad.set_filter_gradient(filter_gradient_for(cfg, strategy))


def build_optimizer_for(cfg: Config, schedule: Schedule) -> keras.optimizers.Optimizer:
    lr = optim.WarmupCosineDecay(
        schedule.peak_learning_rate, schedule.warmup_steps, schedule.total_steps
    )
    opt = optim.build_optimizer(cfg.optimizer, lr, cfg.momentum, cfg.weight_decay)
    if cfg.mixed_precision == "float16":
        opt = loss_scale.AgreedLossScaleOptimizer(opt)
    return opt


def compile_model(
    cfg: Config, model: SimCLRModel, optimizer: keras.optimizers.Optimizer | None
) -> None:
    """Compiles and creates every variable; the supervised head skips LARS adaptation."""
    jit = distribute.keras_jit_compile(tf.distribute.get_strategy(), cfg.jit_compile)
    model.compile(optimizer=optimizer, jit_compile=jit)
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


def augment_placement(
    cfg: Config, strategy: tf.distribute.Strategy, info: sources.DatasetInfo
) -> tuple[str, str]:
    """(host | device, why) for the run's ``--augment_on`` (``auto`` resolved; see
    :func:`simclr_tf.data.recipe.choose_augment_on`)."""
    shape = getattr(info, "image_shape", None)  # None: variable-size (or not described)
    return choose_augment_on(
        cfg.augment_on,
        train_mode=cfg.train_mode,
        accelerator=distribute.accelerator(strategy),
        fixed_size=shape is not None and all(shape),
        recipe=is_recipe(cfg.augmentations, bool(cfg.use_blur), cfg.augment_views),
    )


def place_augmentation(
    cfg: Config, strategy: tf.distribute.Strategy, info: sources.DatasetInfo
) -> Config:
    """``cfg`` with ``--augment_on=auto`` replaced by its placement (run.py does this once,
    logs it and records it in flags.json; library callers get the same choice here)."""
    if cfg.augment_on != "auto":
        return cfg
    return cfg.replace(augment_on=augment_placement(cfg, strategy, info)[0])


def load_train_split(cfg: Config, **kwargs) -> tuple[tf.data.Dataset, sources.DatasetInfo]:
    """The training split with the run's class-balanced label fraction (seeded by ``--seed``).

    Distillation keeps every image and labels only the fraction (the others get label -1).
    """
    return sources.load_split(
        cfg.dataset,
        cfg.train_split,
        data_dir=cfg.data_dir,
        train_data_fraction=cfg.train_data_fraction,
        fraction_seed=cfg.seed,
        unlabelled=cfg.train_mode == "distill",
        **kwargs,
    )


def train_dataset(
    cfg: Config, strategy: tf.distribute.Strategy, start_step: int
) -> tf.distribute.DistributedDataset:
    """The distributed training input: each input pipeline reads its shard, per-replica batch."""
    per_replica = per_replica_batch(cfg, strategy.num_replicas_in_sync)
    seed = checkpoints.resumed_seed(cfg.seed, start_step)

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        if cfg.train_mode == "pretrain" and cfg.data_service:
            return service_dataset(cfg, strategy, ctx, per_replica, start_step)
        if cfg.train_mode == "pretrain" and uses_permuted_files(cfg):
            return permuted_folder_dataset(cfg, strategy, ctx, per_replica, start_step)
        ds, info = load_train_split(cfg, shuffle_files=True, input_context=ctx)
        run = place_augmentation(cfg, strategy, info)
        common = dict(
            batch_size=per_replica,
            image_size=cfg.image_size,
            seed=seed + 7919 * ctx.input_pipeline_id,  # one stream of views per input pipeline
            cache=cfg.cache_dataset,
            crop_sampler=cfg.crop_sampler,
        )
        if cfg.train_mode == "pretrain":
            return pipeline.pretrain_dataset(
                ds,
                color_jitter_strength=cfg.color_jitter_strength,
                use_blur=cfg.use_blur,
                augment_on=run.augment_on,
                augmentations=cfg.augmentations,
                augment_views=cfg.augment_views,
                color_jitter_impl=cfg.color_jitter_impl,
                **common,
            )
        return pipeline.finetune_dataset(ds, **common)

    return pipeline.distribute(strategy, dataset_fn)


def uses_permuted_files(cfg: Config) -> bool:
    """Whether pretraining reads an image folder of variable-size images by index (a fresh
    permutation of the files per pass, nothing decoded held back) rather than through a
    shuffle buffer of decoded images. Fixed-size images (CIFAR-10: 3 KB each) keep their small
    buffer, and ``--cache_dataset`` the buffered path."""
    if cfg.dataset != sources.IMAGE_FOLDER or cfg.cache_dataset:
        return False
    return sources.dataset_info(cfg.dataset, cfg.data_dir).image_shape is None


def permuted_folder_dataset(
    cfg: Config,
    strategy: tf.distribute.Strategy,
    ctx: tf.distribute.InputContext,
    per_replica: int,
    start_step: int,
) -> tf.data.Dataset:
    """This input pipeline's pretraining batches from its shard of a variable-size image
    folder (:func:`simclr_tf.data.image_list.permuted_images`).

    The stream's position is a function of the step, so a resumed run continues its pass over
    the files with the views it would have drawn (the seed is not re-drawn on resume).
    """
    selection = _pretrain_selection(cfg, ctx)
    seed = cfg.seed + 7919 * ctx.input_pipeline_id  # one stream of views per input pipeline
    batches_per_step = ctx.num_replicas_in_sync // ctx.num_input_pipelines
    indexed = image_list.permuted_images(
        selection.split_dir,
        selection.rel_paths,
        selection.labels,
        seed=seed,
        start_index=start_step * batches_per_step * per_replica,
    )
    run = place_augmentation(cfg, strategy, selection.info)
    return pipeline.augment_indexed(
        indexed, fixed=False, batch_size=per_replica, seed=seed, **_view_args(run)
    )


def service_dataset(
    cfg: Config,
    strategy: tf.distribute.Strategy,
    ctx: tf.distribute.InputContext,
    per_replica: int,
    start_step: int,
) -> tf.data.Dataset:
    """This input pipeline's pretraining batches from the tf.data service at --data_service.

    Same seed on resume (the batch numbers carry the position, see :mod:`simclr_tf.data_service`);
    one seed per input pipeline, which reads its own shard of the files.
    """
    selection = _pretrain_selection(cfg, ctx)
    batches_per_step = ctx.num_replicas_in_sync // ctx.num_input_pipelines
    run = place_augmentation(cfg, strategy, sources.dataset_info(cfg.dataset, cfg.data_dir))
    return data_service.pretrain_dataset(
        cfg.data_service,
        selection,
        batch_size=per_replica,
        start_batch=start_step * batches_per_step,
        seed=cfg.seed + 7919 * ctx.input_pipeline_id,
        **_view_args(run),
    )


def _pretrain_selection(
    cfg: Config, ctx: tf.distribute.InputContext
) -> image_folder.FolderSelection:
    """This input pipeline's shard of the training folder, in the run's file order."""
    return image_folder.select_folder_split(
        cfg.data_dir,
        cfg.train_split,
        cfg.train_data_fraction,
        cfg.seed,
        shuffle_files=True,
        input_context=ctx,
    )


def _view_args(run: Config) -> dict:
    """The view arguments of :func:`simclr_tf.data.pipeline.augment_indexed` (placement
    resolved) that the indexed sources, local and tf.data service, pass on."""
    return dict(
        image_size=run.image_size,
        color_jitter_strength=run.color_jitter_strength,
        use_blur=run.use_blur,
        augment_on=run.augment_on,
        crop_sampler=run.crop_sampler,
        augmentations=run.augmentations,
        augment_views=run.augment_views,
        color_jitter_impl=run.color_jitter_impl,
    )


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
        # Epochs without a kNN pass log no knn_top1 (so the progress line shows no nan):
        # MetricsCSV adds the column when it first appears and leaves other epochs' cells empty.
        fill_value=None,
    )


def num_train_examples(cfg: Config) -> int:
    """Examples per training epoch, after ``--train_data_fraction`` (epochs are of the subset)."""
    if cfg.train_data_fraction >= 1.0:
        return sources.dataset_info(cfg.dataset, cfg.data_dir).split_sizes[cfg.train_split]
    _, subset = load_train_split(cfg)
    return subset.split_sizes[cfg.train_split]


def build_for_run(
    cfg: Config,
    strategy: tf.distribute.Strategy,
    info: sources.DatasetInfo,
    schedule: Schedule | None,
) -> SimCLRModel:
    """Model + optimizer built and compiled inside the strategy scope.

    ``schedule=None`` builds for evaluation only: no optimizer (nothing is trained).
    """
    cfg = place_augmentation(cfg, strategy, info)
    set_precision(cfg)
    set_kernels(cfg, strategy)
    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        model = build_model(cfg, info.num_classes)
        if cfg.train_mode == "distill" and cfg.teacher_checkpoint:
            model.set_teacher(
                load_teacher(cfg.teacher_checkpoint, info.num_classes, cfg.image_size)
            )
        optimizer = build_optimizer_for(cfg, schedule) if schedule is not None else None
        compile_model(cfg, model, optimizer)
    return model


# Auto steps_per_execution on a TPU: at most this many steps per host round trip.
TPU_STEPS_PER_EXECUTION = 1000


def steps_per_execution(
    requested: int,
    tpu: bool,
    start_step: int,
    steps_per_epoch: int,
    checkpoint_steps: int,
    total_steps: int,
) -> int:
    """Steps per device call that keep every step-counting event on an exact step.

    Keras runs whole executions (it would overrun an epoch that is not a multiple), and the
    callbacks see the step only between executions: so the count must divide the start step,
    the epoch, the checkpoint interval and the total. The largest such divisor not above the
    request (auto: 1 on CPU/GPU, where a step is long anyway; up to 1000 on a TPU, where a host
    round trip per step would cost most of its speed).
    """
    limit = requested or (TPU_STEPS_PER_EXECUTION if tpu else 1)
    common = math.gcd(start_step, steps_per_epoch, checkpoint_steps, total_steps)
    return max(d for d in range(1, min(limit, common) + 1) if common % d == 0)


def _set_steps_per_execution(model: SimCLRModel, steps: int) -> None:
    """Keras builds its train function once per value: drop it when the value changes."""
    if model.steps_per_execution != steps:
        model.steps_per_execution = steps
        model.train_function = None


def train(
    cfg: Config,
    strategy: tf.distribute.Strategy,
    info: sources.DatasetInfo,
    write_dir: str,
) -> SimCLRModel:
    """Trains to ``total_steps``, resuming from the newest checkpoint in ``write_dir``."""
    schedule = make_schedule_for(cfg, num_train_examples(cfg))
    model = build_for_run(cfg, strategy, info, schedule)
    checkpointer, step = resume(cfg, model, strategy, write_dir)
    if step == 0 and cfg.train_mode == "distill" and cfg.checkpoint not in (None, "none"):
        restore_student(model, cfg.checkpoint)
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
    # Every check and the restore passed: the run trains with these flags from here on.
    model_dir.record_flags(cfg, write_dir, step, num_classes=info.num_classes)

    extra: list[keras.callbacks.Callback] = []
    monitor = None
    if cfg.train_mode == "pretrain" and cfg.knn_every_epochs > 0:
        monitor = knn_monitor(cfg, info)
        extra.append(monitor)
    extra += [
        MetricsCSV(model_dir.metrics_path(write_dir)),
        keras.callbacks.TensorBoard(log_dir=model_dir.summaries_dir(write_dir), write_graph=False),
    ]
    callbacks = training_callbacks(
        checkpointer, schedule.checkpoint_steps, schedule.total_steps, extra
    )
    if cfg.train_mode == "distill" and not cfg.distill_augment:
        teacher = model.teacher if cfg.cache_teacher_logits else None
        dataset = fixed_view_dataset(cfg, strategy, step, teacher)
    else:
        dataset = train_dataset(cfg, strategy, step)
    # A run shorter than an epoch is one "epoch" of exactly its steps (honest progress bars).
    spe = min(schedule.steps_per_epoch, schedule.total_steps)
    per_call = steps_per_execution(
        cfg.steps_per_execution,
        distribute.is_tpu(strategy),
        step,
        spe,
        schedule.checkpoint_steps,
        schedule.total_steps,
    )
    if cfg.steps_per_execution and per_call != cfg.steps_per_execution:
        logging.info(
            "--steps_per_execution=%d lowered to %d, which divides the epoch (%d steps), the "
            "checkpoint interval (%d) and the start step (%d).",
            cfg.steps_per_execution,
            per_call,
            spe,
            schedule.checkpoint_steps,
            step,
        )
    _set_steps_per_execution(model, per_call)
    # Every epoch end (and the last step) is a multiple of this: the logged penalty is current.
    model.weight_decay_every = math.gcd(spe, schedule.total_steps)
    for span in checkpoints.fit_spans(step, schedule.steps_per_epoch, schedule.total_steps):
        if int(model.optimizer.iterations.numpy()) >= schedule.total_steps:
            break  # StopAtStep ended the run inside the previous span
        model.fit(
            dataset,
            epochs=span.epochs,
            initial_epoch=span.initial_epoch,
            steps_per_epoch=span.steps_per_epoch,
            callbacks=callbacks,
            verbose=cfg.verbose,
            shuffle=False,  # the input pipeline shuffles (seeded)
        )
    plots.write_curves_safely(write_dir)  # model_dir/curves.png, when matplotlib is installed
    if monitor is not None:  # model_dir/neighbours.png: what the kNN monitor's encoder finds
        neighbours.write_neighbours_safely(
            write_dir,
            features=monitor.features,
            bank=monitor.bank_dataset_fn,
            queries=monitor.eval_dataset_fn,
            bank_size=cfg.knn_bank_size,
            class_names=info.class_names,
        )
    return model
