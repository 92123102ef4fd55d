"""Dataset sources: TFDS datasets and ``ROOT/<split>/<class>/*.jpg`` image folders.

Both kinds yield ``(image uint8 [H, W, 3], label int32 [])`` and come with a :class:`DatasetInfo`
read from the data itself (TFDS ``builder.info`` or the folder listing), never hard-coded.

Choices worth knowing:

* **No network, ever.** TFDS datasets must already be prepared in ``data_dir``; GCS lookups are
  switched off and an unprepared dataset raises :class:`DataError` saying how to prepare it.
* **Label fractions** (``train_data_fraction < 1``) are class balanced: each class keeps
  ``max(1, round(fraction * count))`` examples (Python ``round``, halves to even). Which ones is
  decided by ranking each example with a keyed hash of ``(fraction_seed, identity)``, where the
  identity is ``"<class>/<file name>"`` for image folders and the ``tfds_id`` (shard file and
  index, fixed for a prepared dataset version) for TFDS. The ranking is a seeded permutation of
  each class that does not depend on the machine, on library versions or on the other files, and
  smaller fractions are subsets of larger ones for the same seed. ``DatasetInfo.split_sizes`` of
  the loaded split holds the subset size.
* **Image shape** of a folder is read from the headers of up to ``_SHAPE_SAMPLE`` files spread
  over the sorted listing. If they agree, ``image_shape`` is that shape and the decoder checks it
  for every image (a file of another size stops the run with its path); if they differ it is
  ``None``. Reading every header of a 1M-file folder would cost minutes, a sample costs ~1 ms.
* **Corrupt files are named.** Decoding runs in parallel under ``ignore_errors``; a sequential
  check afterwards sees the gap in the running index and fails with the missing file's path
  (``tf.errors.InvalidArgumentError`` whose message contains the path).
* **Sharding** (``input_context``): image folders split the file list, TFDS splits shard files
  when there are enough of them and examples otherwise. ``split_sizes`` stays the global size.
"""

from __future__ import annotations

import difflib
import os

import tensorflow as tf
from absl import logging

from simclr_tf.data.dataset_info import (
    FRACTION_KEY,
    UNLABELLED,
    DataError,
    DatasetInfo,
    subset_size,
)
from simclr_tf.data.image_folder import IMAGE_FOLDER, folder_info, load_folder_split

__all__ = [
    "IMAGE_FOLDER",
    "UNLABELLED",
    "DataError",
    "DatasetInfo",
    "dataset_info",
    "load_split",
    "subset_size",
]


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def dataset_info(dataset: str, data_dir: str | None = None) -> DatasetInfo:
    """Describes ``dataset`` (all splits) without building a pipeline."""
    if dataset == IMAGE_FOLDER:
        return folder_info(data_dir)
    builder = _tfds_builder(dataset, data_dir)
    return _tfds_info(dataset, builder)


def load_split(
    dataset: str,
    split: str,
    data_dir: str | None = None,
    train_data_fraction: float = 1.0,
    fraction_seed: int = 0,
    shuffle_files: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    max_examples: int | None = None,
    unlabelled: bool = False,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """One split as ``(image uint8 [H, W, 3], label int32)`` examples, plus its info.

    ``unlabelled=True`` keeps *every* example of the split but gives those outside the
    ``train_data_fraction`` subset the label :data:`UNLABELLED` (-1): the same subset fine-tuning
    trains on is the labelled part, the rest is the unlabelled data of distillation.

    ``shuffle_files`` permutes the file order once with ``fraction_seed`` (image folders) or
    shuffles shard files with that seed (TFDS); the pipelines shuffle examples on top.
    ``max_examples`` caps the split by lowering the class-balanced fraction (splits are often
    sorted by class, so the first N examples would cover only the first classes).
    """
    if not 0.0 < train_data_fraction <= 1.0:
        raise DataError(
            f"train_data_fraction must be in (0, 1], got {train_data_fraction}. Use e.g. 0.01 "
            "or 0.1 for the semi-supervised protocol, 1.0 for all labels."
        )
    if max_examples is not None:
        size = dataset_info(dataset, data_dir).split_sizes.get(split, 0)
        train_data_fraction = min(train_data_fraction, max_examples / max(1, size))
    if dataset == IMAGE_FOLDER:
        return load_folder_split(
            data_dir,
            split,
            train_data_fraction,
            fraction_seed,
            shuffle_files,
            input_context,
            unlabelled,
        )
    return _load_tfds_split(
        dataset,
        split,
        data_dir,
        train_data_fraction,
        fraction_seed,
        shuffle_files,
        input_context,
        unlabelled,
    )


# --------------------------------------------------------------------------------------------
# TFDS
# --------------------------------------------------------------------------------------------


def _tfds():
    """Imports tensorflow_datasets with every GCS / network lookup switched off."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import gcs_utils

    gcs_utils._is_gcs_disabled = True  # noqa: SLF001 - the documented switch in TFDS tests
    return tfds


def _tfds_builder(name: str, data_dir: str | None):
    tfds = _tfds()
    if ":" in name:
        raise DataError(
            f"Dataset '{name}' is a community/namespaced TFDS dataset, which would need the "
            "network. Prepare it elsewhere and pass --dataset=image_folder with its images, or "
            "use a plain TFDS name (cifar10, imagenet2012, ...)."
        )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        base = name.split("/")[0]
        known = list(tfds.list_builders(with_community_datasets=False)) + [IMAGE_FOLDER]
        close = difflib.get_close_matches(base, known, n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise DataError(
            f"Unknown dataset '{name}'.{hint} Use --dataset=image_folder for a folder of images, "
            'or a TFDS name (list them with `python -c "import tensorflow_datasets as tfds; '
            'print(tfds.list_builders())"`).'
        ) from None
    except (ValueError, AssertionError) as e:
        raise DataError(
            f"TFDS could not open dataset '{name}': {e}. Check the name and config "
            "(e.g. imagenet2012_subset/1pct) and --data_dir."
        ) from e
    if not builder.is_prepared():
        where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        raise DataError(
            f"TFDS dataset '{name}' is not prepared in '{where}' (looked for {builder.data_dir}) "
            "and simclr_tf never downloads. Prepare it on a machine with network access: "
            f"`tfds build {name} --data_dir={where}` (ImageNet needs the manual tar files), then "
            "copy the folder here; or use --dataset=image_folder --data_dir=ROOT with "
            "ROOT/<split>/<class>/*.jpg."
        )
    return builder


def _tfds_keys(name: str, builder) -> tuple[str, str]:
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise DataError(
            f"TFDS dataset '{name}' has no (image, label) supervised keys; simclr_tf needs an "
            "image classification dataset. Use one, or --dataset=image_folder."
        )
    return keys[0], keys[1]


def _tfds_info(name: str, builder, split_sizes: dict[str, int] | None = None) -> DatasetInfo:
    image_key, label_key = _tfds_keys(name, builder)
    label = builder.info.features[label_key]
    image = builder.info.features[image_key]
    names = tuple(label.names) if getattr(label, "names", None) else ()
    num_classes = int(label.num_classes) if hasattr(label, "num_classes") else len(names)
    sizes = {s: int(v.num_examples) for s, v in builder.info.splits.items()}
    if split_sizes:
        sizes.update(split_sizes)
    h, w = (tuple(image.shape[:2]) + (None, None))[:2]
    shape = (h, w, 3) if h is not None and w is not None else None
    return DatasetInfo(name, num_classes, names, sizes, shape)


def _split_info(name: str, builder, split: str):
    try:
        return builder.info.splits[split]
    except (KeyError, ValueError, AssertionError) as e:
        raise DataError(
            f"TFDS dataset '{name}' has no split '{split}' ({e}). Splits: "
            f"{sorted(builder.info.splits)}; slices like 'train[:10%]' also work."
        ) from None


def _load_tfds_split(
    name: str,
    split: str,
    data_dir: str | None,
    fraction: float,
    seed: int,
    shuffle_files: bool,
    input_context: tf.distribute.InputContext | None,
    unlabelled: bool = False,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    tfds = _tfds()
    builder = _tfds_builder(name, data_dir)
    image_key, label_key = _tfds_keys(name, builder)
    split_info = _split_info(name, builder, split)
    num_classes = _tfds_info(name, builder).num_classes

    thresholds = None
    sizes: dict[str, int] = {}
    if fraction < 1.0:
        thresholds, subset = _tfds_fraction_thresholds(
            builder, split, image_key, label_key, num_classes, fraction, seed
        )
        sizes[split] = int(split_info.num_examples) if unlabelled else subset
    elif split not in builder.info.splits:
        sizes[split] = int(split_info.num_examples)

    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    shard_files = pipelines > 1 and int(getattr(split_info, "num_shards", 0)) >= pipelines
    read_config = tfds.ReadConfig(
        shuffle_seed=seed if shuffle_files else None,
        add_tfds_id=thresholds is not None,
        input_context=input_context if shard_files else None,
        try_autocache=False,  # the pipelines cache decoded images when asked to
    )
    ds = builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config)
    if pipelines > 1 and not shard_files:
        ds = ds.shard(pipelines, input_context.input_pipeline_id)
    if thresholds is not None:
        thr = tf.constant(thresholds, tf.int64)

        def selected(ex):
            return _tfds_rank(ex["tfds_id"], seed) <= tf.gather(
                thr, tf.cast(ex[label_key], tf.int32)
            )

        if unlabelled:
            ds = ds.map(
                lambda ex: {
                    **ex,
                    label_key: tf.where(
                        selected(ex), ex[label_key], tf.cast(UNLABELLED, ex[label_key].dtype)
                    ),
                }
            )
        else:
            ds = ds.filter(selected)
    channels = builder.info.features[image_key].shape[-1]

    def to_pair(ex):
        img = ex[image_key]
        if channels == 1:
            img = tf.image.grayscale_to_rgb(img)
        return tf.cast(img, tf.uint8), tf.cast(ex[label_key], tf.int32)

    ds = ds.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds, _tfds_info(name, builder, sizes)


def _tfds_rank(tfds_id: tf.Tensor, seed: int) -> tf.Tensor:
    """Keyed SipHash of the example id: non-negative int64, machine independent."""
    return tf.strings.to_hash_bucket_strong(
        tfds_id, num_buckets=2**63 - 1, key=[seed % 2**63, FRACTION_KEY]
    )


def _tfds_fraction_thresholds(
    builder, split, image_key, label_key, num_classes, fraction, seed
) -> tuple[list[int], int]:
    """Per-class rank thresholds keeping ``subset_size`` examples of each class.

    Needs one pass over the split's labels and ids (images are not decoded); for ImageNet prefer
    the TFDS ``imagenet2012_subset/1pct`` / ``10pct`` splits, which match the published protocol.
    """
    tfds = _tfds()
    logging.info("Selecting a %.4g label fraction of %s: reading labels once.", fraction, split)
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        read_config=tfds.ReadConfig(add_tfds_id=True, try_autocache=False),
        decoders={image_key: tfds.decode.SkipDecoding()},
    )
    ds = ds.map(
        lambda ex: (tf.cast(ex[label_key], tf.int32), _tfds_rank(ex["tfds_id"], seed)),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).batch(4096)
    per_class: list[list[int]] = [[] for _ in range(num_classes)]
    for labels, ranks in ds.as_numpy_iterator():
        for lab, r in zip(labels.tolist(), ranks.tolist(), strict=True):
            per_class[lab].append(r)
    keep = subset_size([len(r) for r in per_class], fraction)
    thresholds = []
    for ranks, k in zip(per_class, keep, strict=True):
        thresholds.append(sorted(ranks)[k - 1] if k > 0 else -1)
    return thresholds, sum(keep)
