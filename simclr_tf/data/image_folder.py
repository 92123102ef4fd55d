"""Image-folder datasets: ``ROOT/<split>/<class>/*.jpg`` (also .jpeg, .png), any case.

Labels are the sorted class folders of ``train``; the file list is read once per split (and
cached until a class folder changes); the label fraction, file shuffle and input sharding pick
the files, and :mod:`simclr_tf.data.image_list` reads them (the list as data, parallel decode,
bad files named). See :mod:`simclr_tf.data.sources` for the choices shared with TFDS
(fractions, sharding, shapes)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
from collections.abc import Sequence

import tensorflow as tf
from absl import logging

from simclr_tf.data.dataset_info import (
    FRACTION_KEY,
    UNLABELLED,
    DataError,
    DatasetInfo,
    subset_size,
)
from simclr_tf.data.image_list import decode_files

IMAGE_FOLDER = "image_folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_SHAPE_SAMPLE = 32


def folder_info(data_dir: str | None) -> DatasetInfo:
    """Describes the image folder ``data_dir`` (all splits) without building a pipeline."""
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


def _check_root(data_dir: str | None) -> str:
    if not data_dir:
        raise DataError(
            "--dataset=image_folder needs --data_dir=ROOT, where ROOT holds one folder per split "
            "with one sub-folder per class: ROOT/train/<class>/*.jpg (also .jpeg, .png)."
        )
    # Any path tf.io.gfile reads (gs:// on TPU VMs, hdfs://, ...); local paths made absolute.
    root = data_dir if "://" in data_dir else os.path.abspath(os.path.expanduser(data_dir))
    if not tf.io.gfile.isdir(root):
        raise DataError(
            f"Image folder data_dir '{data_dir}' does not exist or is not a folder. Point "
            "--data_dir at ROOT with ROOT/<split>/<class>/*.jpg."
        )
    return root


def _subdirs(path: str) -> list[str]:
    """Sorted names of visible sub-folders (hidden ones like .ipynb_checkpoints are skipped)."""
    return sorted(
        name.rstrip("/")
        for name in tf.io.gfile.listdir(path)
        if not name.startswith(".") and tf.io.gfile.isdir(os.path.join(path, name))
    )


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
        if any(_is_image_name(f) for f in tf.io.gfile.listdir(os.path.join(root, name))):
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
    class_entries = sorted(
        (name, tf.io.gfile.stat(os.path.join(split_dir, name)).mtime_nsec)
        for name in _subdirs(split_dir)
    )
    key = tuple(class_entries)
    cached = _LISTING_CACHE.get(split_dir)
    if cached is not None and cached[0] == key:
        return cached[1]
    listing = {}
    for name, _ in class_entries:
        # Listing by name, without a stat per file (a round trip each on GCS).
        names = tf.io.gfile.listdir(os.path.join(split_dir, name))
        listing[name] = sorted(f for f in names if _is_image_name(f) and not f.endswith("/"))
    _LISTING_CACHE[split_dir] = (key, listing)
    return listing


def _flat_files(split_dir: str, listing: dict[str, list[str]]) -> list[str]:
    return [os.path.join(split_dir, c, f) for c in sorted(listing) for f in listing[c]]


def _fraction_rank(seed: int, identity: str) -> int:
    """A keyed 64-bit hash: the same on every machine and Python version (unlike ``hash``)."""
    key = struct.pack("<QQ", seed % 2**64, FRACTION_KEY)
    digest = hashlib.blake2b(identity.encode("utf-8"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little")


@dataclasses.dataclass(frozen=True)
class FolderSelection:
    """The files of one split after the label fraction, file shuffle and input sharding.

    ``rel_paths[i]`` (relative to ``split_dir``) has label ``labels[i]``; ``shape`` is the
    common image shape when the sampled images share one, else None.
    """

    split_dir: str
    rel_paths: list[str]
    labels: list[int]
    shape: tuple[int, int, int] | None
    info: DatasetInfo


def load_folder_split(
    data_dir: str | None,
    split: str,
    fraction: float,
    seed: int,
    shuffle_files: bool,
    input_context: tf.distribute.InputContext | None,
    unlabelled: bool = False,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """One split of the image folder (see :func:`simclr_tf.data.sources.load_split`)."""
    chosen = select_folder_split(
        data_dir, split, fraction, seed, shuffle_files, input_context, unlabelled
    )
    dataset = decode_files(chosen.split_dir, chosen.rel_paths, chosen.labels, chosen.shape)
    return dataset, chosen.info


def select_folder_split(
    data_dir: str | None,
    split: str,
    fraction: float,
    seed: int,
    shuffle_files: bool,
    input_context: tf.distribute.InputContext | None,
    unlabelled: bool = False,
) -> FolderSelection:
    """The files :func:`load_folder_split` reads, in its order, without building a dataset.

    For input built elsewhere (the tf.data service source reads files by index)."""
    root = _check_root(data_dir)
    splits = _folder_splits(root)
    if not splits:
        raise _no_splits_error(root)
    split_dir = os.path.join(root, split)
    if split not in splits:
        what = "has no class sub-folders" if tf.io.gfile.isdir(split_dir) else "does not exist"
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

    rel_paths, labels = _select_files(classes, listing, fraction, seed, unlabelled)

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
        root,
        split,
        len(rel_paths),
        len(classes),
        shape,
    )

    order = _file_order(rel_paths, split, seed, shuffle_files, input_context)
    rel_paths = [rel_paths[i] for i in order]
    labels = [labels[i] for i in order]
    return FolderSelection(split_dir, rel_paths, labels, shape, info)


def _select_files(
    classes: list[str], listing: dict[str, list[str]], fraction: float, seed: int, unlabelled: bool
) -> tuple[list[str], list[int]]:
    """(identity, label) for every selected file, in sorted class then file-name order: the
    class-balanced, seeded ``fraction`` (with ``unlabelled``: every file, the others labelled
    :data:`UNLABELLED`)."""
    label_of = {c: i for i, c in enumerate(classes)}
    counts = [len(listing.get(c, ())) for c in classes]
    keep = subset_size(counts, fraction)
    rel_paths: list[str] = []
    labels: list[int] = []
    for c, k in zip(classes, keep, strict=True):
        names = listing.get(c, [])
        label = [label_of[c]] * len(names)
        if k < len(names):
            ranked = sorted(names, key=lambda n, c=c: (_fraction_rank(seed, f"{c}/{n}"), n))
            if unlabelled:
                chosen = set(ranked[:k])
                label = [label_of[c] if n in chosen else UNLABELLED for n in names]
            else:
                names = sorted(ranked[:k])
                label = label[: len(names)]
        rel_paths.extend(f"{c}/{n}" for n in names)
        labels.extend(label)
    return rel_paths, labels


def _file_order(
    rel_paths: list[str],
    split: str,
    seed: int,
    shuffle_files: bool,
    input_context: tf.distribute.InputContext | None,
) -> list[int]:
    """Indices of this input pipeline's files: seeded-shuffled if asked, then its shard."""
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
    return order


def _read_header_size(path: str) -> tuple[int, int] | None:
    """(height, width) from a PNG or JPEG header without decoding; None if unparseable.

    JPEG: ``tf.io.extract_jpeg_shape`` (libjpeg reads the header only); PNG: the IHDR chunk,
    which TensorFlow has no header-only reader for.
    """
    try:
        data = tf.io.read_file(path)
        head = data.numpy()[:24]
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            return h, w
        if head[:2] != b"\xff\xd8":
            return None
        h, w, _ = tf.io.extract_jpeg_shape(data).numpy().tolist()
        return h, w
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, OSError):
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
