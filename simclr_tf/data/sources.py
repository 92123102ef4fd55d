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

import dataclasses
import difflib
import hashlib
import os
import struct
from collections.abc import Sequence

import tensorflow as tf
from absl import logging

from simclr_tf.errors import UserError

IMAGE_FOLDER = "image_folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_SHAPE_SAMPLE = 32
# Keyed-hash key for fraction selection; the seed is the other half.
_FRACTION_KEY = 0x5EED_F4AC


class DataError(UserError, ValueError):
    """A user-facing data problem; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a run needs to know about a dataset before reading it."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    split_sizes: dict[str, int]  # examples per split (the subset size where a fraction applies)
    image_shape: tuple[int | None, int | None, int] | None  # fixed (H, W, 3) when known

    def num_examples(self, split: str) -> int:
        """Examples in ``split``; DataError naming the known splits otherwise."""
        if split not in self.split_sizes:
            raise DataError(
                f"Dataset '{self.name}' has no split '{split}'. Known splits: "
                f"{sorted(self.split_sizes)}. Pass one of these (e.g. --eval_split=...)."
            )
        return self.split_sizes[split]


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def dataset_info(dataset: str, data_dir: str | None = None) -> DatasetInfo:
    """Describes ``dataset`` (all splits) without building a pipeline."""
    if dataset == IMAGE_FOLDER:
        root = _check_root(data_dir)
        splits = _folder_splits(root)
        if not splits:
            raise _no_splits_error(root)
        classes = _folder_classes(root, splits)
        listings = {s: _list_split(os.path.join(root, s)) for s in splits}
        sizes = {s: sum(len(v) for v in lst.values()) for s, lst in listings.items()}
        ref = "train" if "train" in listings else splits[0]
        files = _flat_files(os.path.join(root, ref), listings[ref])
        return DatasetInfo(IMAGE_FOLDER, len(classes), classes, sizes, _sample_shape(files))
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
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """One split as ``(image uint8 [H, W, 3], label int32)`` examples, plus its info.

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
        return _load_folder_split(
            _check_root(data_dir), split, train_data_fraction, fraction_seed, shuffle_files,
            input_context,
        )
    return _load_tfds_split(
        dataset, split, data_dir, train_data_fraction, fraction_seed, shuffle_files, input_context
    )


def subset_size(class_counts: Sequence[int], fraction: float) -> list[int]:
    """Per-class subset sizes: ``max(1, round(fraction * n))`` (0 for an absent class)."""
    if fraction >= 1.0:
        return list(class_counts)
    return [max(1, round(fraction * n)) if n > 0 else 0 for n in class_counts]


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def _check_root(data_dir: str | None) -> str:
    if not data_dir:
        raise DataError(
            "--dataset=image_folder needs --data_dir=ROOT, where ROOT holds one folder per split "
            "with one sub-folder per class: ROOT/train/<class>/*.jpg (also .jpeg, .png)."
        )
    root = os.path.abspath(os.path.expanduser(data_dir))
    if not os.path.isdir(root):
        raise DataError(
            f"Image folder data_dir '{data_dir}' does not exist or is not a folder. Point "
            "--data_dir at ROOT with ROOT/<split>/<class>/*.jpg."
        )
    return root


def _subdirs(path: str) -> list[str]:
    """Sorted names of visible sub-folders (hidden ones like .ipynb_checkpoints are skipped)."""
    with os.scandir(path) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _folder_splits(root: str) -> list[str]:
    """Sub-folders of ``root`` that look like splits (they contain class folders)."""
    splits = []
    for name in _subdirs(root):
        if _subdirs(os.path.join(root, name)):
            splits.append(name)
    return splits


def _no_splits_error(root: str) -> DataError:
    looks_like_split = False
    for name in _subdirs(root):
        with os.scandir(os.path.join(root, name)) as it:
            if any(_is_image_name(e.name) for e in it):
                looks_like_split = True
                break
    hint = (
        f" '{root}' itself looks like a split folder (its sub-folders hold images): pass its "
        f"parent '{os.path.dirname(root)}' as --data_dir."
        if looks_like_split
        else ""
    )
    return DataError(
        f"No images found under '{root}': expected ROOT/<split>/<class>/*.jpg "
        f"(extensions {', '.join(IMAGE_EXTENSIONS)}, any case).{hint}"
    )


def _folder_classes(root: str, splits: Sequence[str], split: str | None = None) -> tuple[str, ...]:
    """Class names: sorted class folders of ``train``, or of ``split`` when there is no train."""
    ref = "train" if "train" in splits else (split if split is not None else splits[0])
    return tuple(_subdirs(os.path.join(root, ref)))


# Listing cache: (split dir) -> (validation key, listing). The key holds the mtimes of the class
# folders, which change whenever a file is added, removed or renamed in them.
_LISTING_CACHE: dict[str, tuple[tuple, dict[str, list[str]]]] = {}


def _list_split(split_dir: str) -> dict[str, list[str]]:
    """``{class: sorted image file names}`` for every class folder of ``split_dir``."""
    with os.scandir(split_dir) as it:
        class_entries = sorted(
            (e.name, e.stat().st_mtime_ns)
            for e in it
            if e.is_dir() and not e.name.startswith(".")
        )
    key = tuple(class_entries)
    cached = _LISTING_CACHE.get(split_dir)
    if cached is not None and cached[0] == key:
        return cached[1]
    listing = {}
    for name, _ in class_entries:
        with os.scandir(os.path.join(split_dir, name)) as it:
            listing[name] = sorted(e.name for e in it if _is_image_name(e.name) and e.is_file())
    _LISTING_CACHE[split_dir] = (key, listing)
    return listing


def _flat_files(split_dir: str, listing: dict[str, list[str]]) -> list[str]:
    return [os.path.join(split_dir, c, f) for c in sorted(listing) for f in listing[c]]


def _fraction_rank(seed: int, identity: str) -> int:
    """A keyed 64-bit hash: the same on every machine and Python version (unlike ``hash``)."""
    key = struct.pack("<QQ", seed % 2**64, _FRACTION_KEY)
    digest = hashlib.blake2b(identity.encode("utf-8"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little")


def _load_folder_split(
    root: str,
    split: str,
    fraction: float,
    seed: int,
    shuffle_files: bool,
    input_context: tf.distribute.InputContext | None,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    splits = _folder_splits(root)
    if not splits:
        raise _no_splits_error(root)
    split_dir = os.path.join(root, split)
    if split not in splits:
        what = "has no class sub-folders" if os.path.isdir(split_dir) else "does not exist"
        raise DataError(
            f"Split folder '{split_dir}' {what}. Splits found in '{root}': {splits}. Pass one "
            "of them (--train_split / --eval_split) or create ROOT/<split>/<class>/."
        )
    classes = _folder_classes(root, splits, split)
    listing = _list_split(split_dir)
    unknown = sorted(set(listing) - set(classes))
    if unknown:
        raise DataError(
            f"Split '{split}' has class folders {unknown} that the train split "
            f"'{os.path.join(root, 'train')}' lacks; labels come from the train classes "
            f"{list(classes)}. Rename or remove those folders, or add them to train."
        )
    empty = [c for c in sorted(listing) if not listing[c]]
    if empty:
        raise DataError(
            f"Class folder(s) {[os.path.join(split_dir, c) for c in empty]} hold no images "
            f"({', '.join(IMAGE_EXTENSIONS)}, any case). Add images or remove the folder(s)."
        )

    # (identity, label) for every selected file, in sorted class then file-name order.
    label_of = {c: i for i, c in enumerate(classes)}
    counts = [len(listing.get(c, ())) for c in classes]
    keep = subset_size(counts, fraction)
    rel_paths: list[str] = []
    labels: list[int] = []
    for c, k in zip(classes, keep, strict=True):
        names = listing.get(c, [])
        if k < len(names):
            ranked = sorted(names, key=lambda n, c=c: (_fraction_rank(seed, f"{c}/{n}"), n))
            names = sorted(ranked[:k])
        rel_paths.extend(f"{c}/{n}" for n in names)
        labels.extend([label_of[c]] * len(names))

    sizes = {}
    for s in splits:
        if s == split:
            sizes[s] = len(rel_paths)
        else:
            sizes[s] = sum(len(v) for v in _list_split(os.path.join(root, s)).values())
    shape = _sample_shape([os.path.join(split_dir, p) for p in rel_paths])
    info = DatasetInfo(IMAGE_FOLDER, len(classes), classes, sizes, shape)
    logging.info(
        "image_folder %s/%s: %d images, %d classes, image_shape %s",
        root, split, len(rel_paths), len(classes), shape,
    )

    order = list(range(len(rel_paths)))
    if shuffle_files:
        order.sort(key=lambda i: _fraction_rank(seed + 1, rel_paths[i]))
    if input_context is not None and input_context.num_input_pipelines > 1:
        order = order[input_context.input_pipeline_id :: input_context.num_input_pipelines]
        if not order:
            raise DataError(
                f"Split '{split}' has {len(rel_paths)} images, fewer than the "
                f"{input_context.num_input_pipelines} input pipelines; use more data or fewer "
                "workers."
            )
    rel_paths = [rel_paths[i] for i in order]
    labels = [labels[i] for i in order]
    return _decode_files(split_dir, rel_paths, labels, shape), info


def _decode_files(
    split_dir: str,
    rel_paths: list[str],
    labels: list[int],
    shape: tuple[int, int, int] | None,
) -> tf.data.Dataset:
    """Parallel decode whose failures are reported with the failing file's path.

    Decoding errors are dropped by ``ignore_errors`` and found by a cheap sequential scan over the
    (order-preserving) running index; a sentinel element at the end catches trailing failures.
    """
    n = len(rel_paths)
    prefix = split_dir.rstrip(os.sep) + os.sep
    paths_t = tf.constant(rel_paths)
    labels_t = tf.constant(labels, tf.int32)
    fixed = shape is not None

    def load(i):
        path = tf.strings.join([prefix, tf.gather(paths_t, i)])
        img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        ok = tf.constant(True)
        if fixed:
            ok = tf.reduce_all(tf.equal(tf.shape(img), shape))
            img = tf.cond(ok, lambda: img, lambda: tf.zeros(shape, tf.uint8))
            img = tf.ensure_shape(img, shape)
        return img, tf.gather(labels_t, i), i, ok

    sentinel_img = tf.zeros(shape if fixed else (1, 1, 3), tf.uint8)
    sentinel = tf.data.Dataset.from_tensors(
        (sentinel_img, tf.constant(-1, tf.int32), tf.constant(n, tf.int64), tf.constant(True))
    )
    decoded = (
        tf.data.Dataset.range(n)
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors()
        .concatenate(sentinel)
    )
    size_note = (
        f" It must be {shape[0]}x{shape[1]} like the sampled images of this folder (the pipeline "
        "batches before cropping); resize or remove it." if fixed else ""
    )

    def fail(message: list, path_index: tf.Tensor) -> tf.Tensor:
        path = tf.strings.join([prefix, tf.gather(paths_t, tf.minimum(path_index, n - 1))])
        message = [message[0], path, *message[1:]]
        with tf.control_dependencies([tf.debugging.Assert(False, message)]):
            return tf.constant(False)

    def check(expected, elem):
        # The messages (gather + join) are built only in the failing branch: this runs per image.
        img, label, i, ok = elem
        decoded_ok = tf.cond(
            tf.equal(i, expected),
            lambda: tf.constant(True),
            lambda: fail(
                ["Could not read or decode image file",
                 "(corrupt, truncated, unreadable or not a JPEG/PNG). Fix: replace or delete it."],
                expected,
            ),
        )
        with tf.control_dependencies([decoded_ok]):
            size_ok = tf.cond(
                ok,
                lambda: tf.constant(True),
                lambda: fail(["Image file", "has another size." + size_note], i),
            )
        with tf.control_dependencies([size_ok]):
            nxt = i + 1
        return nxt, (img, label)

    # take(n) stops before the sentinel when nothing failed; after a failure the scan sees the
    # gap (possibly at the sentinel) and raises first.
    return (
        decoded.scan(tf.constant(0, tf.int64), check)
        .take(n)
        .apply(tf.data.experimental.assert_cardinality(n))
    )


def _read_header_size(path: str) -> tuple[int, int] | None:
    """(height, width) from a PNG or JPEG header without decoding; None if unparseable."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                w, h = struct.unpack(">II", head[16:24])
                return h, w
            if head[:2] != b"\xff\xd8":
                return None
            f.seek(2)
            while True:
                byte = f.read(1)
                while byte == b"\xff":  # fill bytes before a marker
                    byte = f.read(1)
                if not byte:
                    return None
                marker = byte[0]
                if marker == 0x01 or 0xD0 <= marker <= 0xD8:
                    continue  # markers without a length
                if marker in (0xD9, 0xDA):
                    return None  # end of image / start of scan before any frame header
                length_bytes = f.read(2)
                if len(length_bytes) < 2:
                    return None
                (length,) = struct.unpack(">H", length_bytes)
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    frame = f.read(5)
                    if len(frame) < 5:
                        return None
                    _, h, w = struct.unpack(">BHH", frame)
                    return h, w
                f.seek(length - 2, os.SEEK_CUR)
                nxt = f.read(1)
                if nxt != b"\xff":
                    return None
    except OSError:
        return None


def _sample_shape(files: Sequence[str]) -> tuple[int, int, int] | None:
    """Common (H, W, 3) of a spread-out sample of ``files``, or None when sizes differ."""
    if not files:
        return None
    count = min(len(files), _SHAPE_SAMPLE)
    step = (len(files) - 1) / max(count - 1, 1)
    sizes = {_read_header_size(files[round(k * step)]) for k in range(count)}
    if len(sizes) != 1 or None in sizes:
        return None
    h, w = sizes.pop()
    return (h, w, 3)


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
            "or a TFDS name (list them with `python -c \"import tensorflow_datasets as tfds; "
            "print(tfds.list_builders())\"`)."
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
        sizes[split] = subset
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
        ds = ds.filter(
            lambda ex: _tfds_rank(ex["tfds_id"], seed)
            <= tf.gather(thr, tf.cast(ex[label_key], tf.int32))
        )
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
        tfds_id, num_buckets=2**63 - 1, key=[seed % 2**63, _FRACTION_KEY]
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
