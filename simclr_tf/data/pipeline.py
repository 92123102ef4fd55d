"""tf.data pipelines for SimCLR pretraining, fine-tuning and evaluation.

Inputs are the ``(image uint8 [H, W, 3], label int32)`` datasets of :mod:`simclr_tf.data.sources`.
The pipelines are built so that input never limits training:

* decode once (``cache=True`` keeps decoded uint8 images in memory) -> seeded shuffle -> repeat;
* **fixed-size images** (the image spec is fully known, e.g. CIFAR): batch *first*, then run the
  augmentations of :mod:`simclr_tf.data.augment` vectorised over the whole batch: one op call per
  batch instead of per image;
* **variable-size images** (ImageNet-like): augment per image in parallel (a crop must be taken
  from each image's own size), then batch. The per-image ops skip what their coin rules out and
  run each colour op once per view (see :mod:`simclr_tf.data.augment`);
* prefetch, with ``tf.data.Options`` that keep the order deterministic and let autotune size the
  parallelism.

Determinism: shuffles use ``seed``; every batch (fixed size) or example (variable size) gets the
augmentation seed ``stateless_fold_in([seed, purpose], index)``, where ``index`` counts batches
or examples from the start of the *repeated* stream (``Dataset.enumerate`` after ``repeat``) and
``purpose`` separates pretraining from fine-tuning. The same seed therefore gives the same
batches and the same views on every run; per-example randomness inside a batch comes from the
augment ops themselves.

Batch sizes here are per replica (per input pipeline); use :func:`per_replica_batch_size` and
:func:`distribute` for several replicas.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from simclr_tf.data import augment
from simclr_tf.data.augment import study_ops
from simclr_tf.data.recipe import AUGMENT_PLACES
from simclr_tf.data.sources import DataError

_PRETRAIN, _FINETUNE = 1, 2  # seed "purposes"


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def pretrain_dataset(
    dataset: tf.data.Dataset,
    *,
    batch_size: int,
    image_size: int,
    color_jitter_strength: float,
    use_blur: bool,
    seed: int,
    augment_on: str = "host",
    cache: bool = False,
    shuffle_buffer: int | None = None,
    crop_sampler: str = "reference",
    augmentations: str | None = None,
    augment_views: str = "both",
    color_jitter_impl: str = augment.DEFAULT_COLOR_JITTER_IMPL,
) -> tf.data.Dataset:
    """Endless two-view batches for contrastive pretraining.

    ``augment_on="host"``: elements ``((view1, view2), labels)``, views float32
    ``[batch, image_size, image_size, 3]`` in [0, 1], labels int32 ``[batch]``.
    ``augment_on="device"``: the model augments inside its train step. Fixed-size images
    arrive whole, ``(images uint8 [batch, H, W, 3], labels)``; variable-size images arrive as
    their two crops, drawn here from each image's true size and resized to ``image_size``,
    ``(crops uint8 [batch, 2, image_size, image_size, 3], labels)``, and the device runs the
    rest of the recipe (flip, colour, grayscale, blur). ``batch_size`` is per replica; the
    remainder is dropped; the stream repeats forever. Labels are passed through for the live
    linear probe. ``color_jitter_impl`` is the brightness form (v1 additive, v2
    multiplicative). ``augmentations`` / ``augment_views`` choose the view operations
    (:mod:`simclr_tf.data.augment.study_ops`; default: the paper recipe).
    """
    _check_common(dataset, batch_size, image_size)
    ds = _source(dataset, cache)
    fixed = _fixed_shape(dataset) is not None
    buffer = _shuffle_buffer(dataset, batch_size, shuffle_buffer, fixed)
    ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    if fixed:
        ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)
    return augment_indexed(
        ds.enumerate(),
        fixed=fixed,
        batch_size=batch_size,
        image_size=image_size,
        color_jitter_strength=color_jitter_strength,
        use_blur=use_blur,
        seed=seed,
        augment_on=augment_on,
        crop_sampler=crop_sampler,
        augmentations=augmentations,
        augment_views=augment_views,
        color_jitter_impl=color_jitter_impl,
    )


def augment_indexed(
    indexed: tf.data.Dataset,
    *,
    fixed: bool,
    batch_size: int,
    image_size: int,
    color_jitter_strength: float,
    use_blur: bool,
    seed: int,
    augment_on: str = "host",
    crop_sampler: str = "reference",
    augmentations: str | None = None,
    augment_views: str = "both",
    color_jitter_impl: str = augment.DEFAULT_COLOR_JITTER_IMPL,
) -> tf.data.Dataset:
    """The augmentation half of :func:`pretrain_dataset`, over an endless indexed stream.

    ``indexed`` yields ``(index, (images, labels))``: whole batches of fixed-size images
    (``fixed=True``, ``index`` counts batches) or single variable-size images (``index`` counts
    examples; batched here). Each element's augmentation seed is
    ``stateless_fold_in([seed, purpose], index)``, so whoever computes an element (this
    process or a tf.data service worker) draws the same views for the same index.
    """
    if augment_on not in AUGMENT_PLACES or augment_on == "auto":
        raise DataError(
            f"augment_on must be one of ('host', 'device') here, got '{augment_on}': host "
            "(tf.data) or device (inside the train step); resolve auto with "
            "train.place_augmentation."
        )
    _check_sampler(crop_sampler)
    if augment_on == "device" and fixed:
        return _finish(indexed.map(lambda index, example: (_to_uint8(example[0]), example[1])))

    two_views = study_ops.two_views_fn(
        image_size,
        color_jitter_strength,
        use_blur,
        augmentations,
        augment_views,
        crop_sampler=crop_sampler,
        color_jitter_impl=color_jitter_impl,
    )

    recipe = getattr(two_views, "func", None) is augment.two_views
    if augment_on == "device" and not recipe:
        raise DataError(
            "--augment_on=device with variable-size images runs the paper recipe only (the host "
            "crops, the device does the rest); use --augment_on=host for --augmentations / "
            "--augment_views studies on such images."
        )

    def views(x):
        if augment_on == "device":
            return lambda s: augment.two_crops(x, s, image_size, crop_sampler)
        return lambda s: two_views(x, s)

    ds = _apply_indexed(indexed, seed, _PRETRAIN, views)
    if not fixed:
        ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)
    return _finish(ds)


def finetune_dataset(
    dataset: tf.data.Dataset,
    *,
    batch_size: int,
    image_size: int,
    seed: int,
    cache: bool = False,
    shuffle_buffer: int | None = None,
    crop_sampler: str = "reference",
) -> tf.data.Dataset:
    """Endless ``(images float32 [batch, S, S, 3], labels int32 [batch])`` with crop + flip."""
    _check_common(dataset, batch_size, image_size)
    _check_sampler(crop_sampler)
    ds = _source(dataset, cache)
    fixed = _fixed_shape(dataset) is not None
    buffer = _shuffle_buffer(dataset, batch_size, shuffle_buffer, fixed)
    ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = _augment(
        ds,
        fixed,
        batch_size,
        seed,
        _FINETUNE,
        lambda x: lambda s: augment.finetune_view(x, s, image_size, crop_sampler),
    )
    return _finish(ds)


def eval_dataset(
    dataset: tf.data.Dataset, *, batch_size: int, image_size: int, cache: bool = False
) -> tf.data.Dataset:
    """One pass of ``(images float32 [b, S, S, 3], labels int32 [b])`` with ``eval_view``.

    No repeat and no dropped remainder: every example is seen exactly once, the last batch may
    be smaller.
    """
    _check_common(dataset, batch_size, image_size)
    ds = _source(dataset, cache)

    def view(x, y):
        return augment.eval_view(x, image_size), y

    if _fixed_shape(dataset) is not None:
        ds = ds.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.map(view, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(view, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds)


def per_replica_batch_size(global_batch: int, num_replicas: int) -> int:
    """``global_batch // num_replicas``; DataError when it does not divide evenly."""
    if num_replicas < 1:
        raise DataError(f"num_replicas must be >= 1, got {num_replicas}.")
    if global_batch < 1:
        raise DataError(f"The global batch size must be >= 1, got {global_batch}.")
    if global_batch % num_replicas:
        lower = max(num_replicas, global_batch // num_replicas * num_replicas)
        upper = (global_batch // num_replicas + 1) * num_replicas
        raise DataError(
            f"Global batch size {global_batch} is not divisible by the {num_replicas} replicas. "
            f"Use a multiple of {num_replicas}, e.g. --train_batch_size={lower} or {upper}."
        )
    return global_batch // num_replicas


def distribute(
    strategy: tf.distribute.Strategy,
    dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
    options: tf.distribute.InputOptions | None = None,
) -> tf.distribute.DistributedDataset:
    """One input pipeline per worker via ``strategy.distribute_datasets_from_function``.

    ``dataset_fn(input_context)`` must batch with the per-replica size
    (``input_context.get_per_replica_batch_size(global_batch)``) and may pass ``input_context``
    to :func:`simclr_tf.data.sources.load_split` to shard its files.
    """

    def checked(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        ds = dataset_fn(input_context)
        if not isinstance(ds, tf.data.Dataset):
            raise DataError(
                f"dataset_fn must return a tf.data.Dataset, got {type(ds).__name__}. Return the "
                "result of pretrain_dataset / finetune_dataset / eval_dataset."
            )
        return ds

    return strategy.distribute_datasets_from_function(checked, options)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_common(dataset: tf.data.Dataset, batch_size: int, image_size: int) -> None:
    if not isinstance(dataset, tf.data.Dataset):
        raise DataError(
            f"Expected a tf.data.Dataset of (image, label), got {type(dataset).__name__}. Build "
            "it with simclr_tf.data.sources.load_split."
        )
    spec = dataset.element_spec
    if not (
        isinstance(spec, tuple)
        and len(spec) == 2
        and isinstance(spec[0], tf.TensorSpec)
        and spec[0].shape.rank == 3
        and spec[0].shape[-1] == 3
    ):
        raise DataError(
            f"Expected unbatched (image [H, W, 3], label) elements, got {spec}. Use "
            "simclr_tf.data.sources.load_split, or unbatch and convert to RGB first."
        )
    if int(batch_size) != batch_size or batch_size < 1:
        raise DataError(f"batch_size must be a positive int (per replica), got {batch_size!r}.")
    if int(image_size) != image_size or image_size < 1:
        raise DataError(f"image_size must be a positive int, got {image_size!r}.")


def _check_sampler(crop_sampler: str) -> None:
    if crop_sampler not in augment.CROP_SAMPLERS:
        raise DataError(
            f"crop_sampler must be one of {augment.CROP_SAMPLERS}, got '{crop_sampler}'. "
            "reference = the SimCLR code's sample_distorted_bounding_box crops."
        )


def _fixed_shape(dataset: tf.data.Dataset) -> tuple[int, int, int] | None:
    shape = dataset.element_spec[0].shape
    return tuple(shape.as_list()) if shape.is_fully_defined() else None


def _source(dataset: tf.data.Dataset, cache: bool) -> tf.data.Dataset:
    ds = dataset
    if ds.element_spec[1].dtype != tf.int32:
        ds = ds.map(lambda x, y: (x, tf.cast(y, tf.int32)))
    return ds.cache() if cache else ds


def _shuffle_buffer(
    dataset: tf.data.Dataset, batch_size: int, given: int | None, fixed: bool
) -> int:
    """Given size, else max(10 * batch, 10000) for fixed-size (small) images and 10 * batch for
    variable-size ones (the reference's rule above 32 px: 10,000 decoded ImageNet images would
    hold ~5 GB), capped at the dataset size when that is known."""
    if given is not None:
        if given < 1:
            raise DataError(f"shuffle_buffer must be >= 1, got {given}.")
        return int(given)
    buffer = max(10 * batch_size, 10_000) if fixed else 10 * batch_size
    n = int(dataset.cardinality())
    return min(buffer, n) if n > 0 else buffer


def _step_seed(seed: int, purpose: int, index: tf.Tensor) -> tf.Tensor:
    base = tf.constant([seed, purpose], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, index)


def _augment(
    ds: tf.data.Dataset,
    fixed: bool,
    batch_size: int,
    seed: int,
    purpose: int,
    make_view: Callable[[tf.Tensor], Callable[[tf.Tensor], object]],
) -> tf.data.Dataset:
    """Seeded augmentation of a repeated (image, label) stream, batched with drop_remainder.

    Fixed-size images: batch, then one vectorised call per batch. Otherwise: one call per image
    (each crop needs its image's size), then batch.
    """

    if fixed:
        ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)
        return _apply_indexed(ds.enumerate(), seed, purpose, make_view)
    ds = _apply_indexed(ds.enumerate(), seed, purpose, make_view)
    return ds.batch(batch_size, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)


def _apply_indexed(
    indexed: tf.data.Dataset,
    seed: int,
    purpose: int,
    make_view: Callable[[tf.Tensor], Callable[[tf.Tensor], object]],
) -> tf.data.Dataset:
    """``(index, (x, y))`` -> ``(make_view(x)(seed of index), y)``, parallel, order kept."""

    def apply(index, example):
        x, y = example
        return make_view(x)(_step_seed(seed, purpose, index)), y

    return indexed.map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _to_uint8(x: tf.Tensor) -> tf.Tensor:
    return x if x.dtype == tf.uint8 else tf.image.convert_image_dtype(x, tf.uint8, saturate=True)


def _finish(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)
