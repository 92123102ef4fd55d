"""The selected image list as data: a cached text file read by ``TextLineDataset``, decoded in
parallel, every unreadable or odd-sized file named with its path.

The list, in its final order, is a ``label<TAB>class/file`` text file named by the hash of its
content, in a folder of this process in the temp folder (removed at exit). As a graph constant
it was about 80 MB for an ImageNet-size folder; handing it over from Python
(``from_generator``) hung at interpreter exit after a data error (1 run in 4), as tf.data
threads called into Python during shutdown. :mod:`simclr_tf.data.image_folder` chooses the
files; this module reads them."""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import shutil
import tempfile

import tensorflow as tf
from absl import logging

from simclr_tf.atomic import write_text_atomic
from simclr_tf.data.dataset_info import DataError

LIST_DIR_PREFIX = "simclr_tf_lists-"


@functools.cache
def _list_dir() -> str:
    """This process's folder for image lists, in the temp folder: made on first use, removed at
    exit. Private to the process (``mkdtemp``), so no other process or user can change or delete
    a list it reads every epoch, and a worker leaves nothing behind."""
    path = tempfile.mkdtemp(prefix=LIST_DIR_PREFIX)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def write_file_list(split_dir: str, rel_paths: list[str], labels: list[int]) -> str:
    """The path of a text file holding ``label<TAB>relative/path`` per image, in this order.

    Named by the SHA-256 of its content: a second build with the same selection and order (an
    evaluation per checkpoint, the kNN monitor) reuses it, another selection gets another file.
    Written with the atomic helper and compared byte for byte before reuse, so a half-written
    or damaged file is rewritten rather than read.
    """
    text = "".join(f"{label}\t{path}\n" for label, path in zip(labels, rel_paths, strict=True))
    if text.count("\n") != len(rel_paths) or "\r" in text:
        bad = next(p for p in rel_paths if "\n" in p or "\r" in p)
        raise DataError(
            f"Image file {os.path.join(split_dir, bad)!r} has a line break in its name, which "
            "the image list (one file per line) cannot hold; rename the file."
        )
    data = text.encode("utf-8")
    name = hashlib.sha256(data).hexdigest() + ".txt"
    try:
        path = os.path.join(_list_dir(), name)
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    return path
            logging.warning("Image list %s is damaged (content != name); rewriting it.", path)
        except FileNotFoundError:
            pass
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_text_atomic(path, text)
    except (OSError, tf.errors.OpError) as e:
        raise DataError(
            f"Could not write the image list {name} in the temp folder ({e}). Free space there "
            "or point TMPDIR at a writable folder."
        ) from e
    return path


# A list line is ``label<TAB>path``; the path may hold tabs (not line breaks). Regex ops rather
# than ``tf.strings.split``, whose ragged machinery makes the first trace about 2x slower.
def _path_of(line: tf.Tensor) -> tf.Tensor:
    return tf.strings.regex_replace(line, "^[^\t]*\t", "", replace_global=False)


def _label_of(line: tf.Tensor) -> tf.Tensor:
    return tf.strings.to_number(tf.strings.regex_replace(line, "\t.*", ""), tf.int32)


# The message of an image file that cannot be read or decoded, around its path.
_UNREADABLE = (
    "Could not read or decode image file",
    "(corrupt, truncated, unreadable or not a JPEG/PNG). Fix: replace or delete it.",
)


def _read_image(prefix: str, line: tf.Tensor) -> tf.Tensor:
    """The decoded uint8 [H, W, 3] image of one list line (``prefix`` + its path)."""
    path = tf.strings.join([prefix, _path_of(line)])
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


def decode_files(
    split_dir: str,
    rel_paths: list[str],
    labels: list[int],
    shape: tuple[int, int, int] | None,
) -> tf.data.Dataset:
    """Parallel decode whose failures are reported with the failing file's path.

    (Longer than most functions on purpose: ``load``, ``fail`` and ``check`` are one tf.data
    graph that shares the list file, the prefix and the expected shape; apart they would pass
    all of them around.)

    The list is read from a text file (:func:`write_file_list`) by ``TextLineDataset``, so the
    graph stays small and no Python runs inside tf.data. Decoding errors are dropped by
    ``ignore_errors`` and found by a cheap sequential scan over the (order-preserving) running
    index; a sentinel element at the end catches trailing failures.
    """
    n = len(rel_paths)
    prefix = split_dir.rstrip(os.sep) + os.sep
    list_file = write_file_list(split_dir, rel_paths, labels)
    fixed = shape is not None

    def load(i, line):
        img = _read_image(prefix, line)
        ok = tf.constant(True)
        if fixed:
            ok = tf.reduce_all(tf.equal(tf.shape(img), shape))
            img = tf.cond(ok, lambda: img, lambda: tf.zeros(shape, tf.uint8))
            img = tf.ensure_shape(img, shape)
        return img, _label_of(line), i, ok

    sentinel_img = tf.zeros(shape if fixed else (1, 1, 3), tf.uint8)
    sentinel = tf.data.Dataset.from_tensors(
        (sentinel_img, tf.constant(-1, tf.int32), tf.constant(n, tf.int64), tf.constant(True))
    )
    decoded = (
        tf.data.TextLineDataset(list_file)
        .enumerate()
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors()
        .concatenate(sentinel)
    )
    size_note = (
        f" It must be {shape[0]}x{shape[1]} like the sampled images of this folder (the pipeline "
        "batches before cropping); resize or remove it."
        if fixed
        else ""
    )

    def fail(message: list, path_index: tf.Tensor) -> tf.Tensor:
        # Only a failing run gets here: it reads the one line it needs from the list file. (A
        # tf.io.read_file of the list would be constant-folded into the function by Grappler
        # when an iterator is made: the whole list in memory again, +60 ms per 100k names.)
        lines = tf.data.TextLineDataset(list_file).skip(tf.minimum(path_index, n - 1))
        line = lines.take(1).get_single_element()
        message = [message[0], tf.strings.join([prefix, _path_of(line)]), *message[1:]]
        with tf.control_dependencies([tf.debugging.Assert(False, message)]):
            return tf.constant(False)

    def check(expected, elem):
        # The messages are built only in the failing branch: this runs per image.
        img, label, i, ok = elem
        decoded_ok = tf.cond(
            tf.equal(i, expected),
            lambda: tf.constant(True),
            lambda: fail(list(_UNREADABLE), expected),
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


# Seed "purpose" of the per-pass permutation (the augmentation seeds use 1 and 2).
PERMUTATION_PURPOSE = 3


def file_of_example(index: tf.Tensor, n: int, seed: int) -> tf.Tensor:
    """File number of example ``index`` in a stream of passes over ``n`` files: pass
    ``index div n`` is the permutation ``index_shuffle(., fold_in([seed, 3], pass), n - 1)``.
    The rule of both the local stream (:func:`permuted_images`) and the tf.data service
    source, so the two streams of one selection are the same."""
    base = tf.constant([seed, PERMUTATION_PURPOSE], tf.int64)
    key = tf.random.experimental.stateless_fold_in(base, index // n)
    return tf.random.experimental.index_shuffle(index % n, key, n - 1)


def permuted_images(
    split_dir: str,
    rel_paths: list[str],
    labels: list[int],
    *,
    seed: int,
    start_index: int = 0,
) -> tf.data.Dataset:
    """Endless ``(index, (image uint8 [H, W, 3], label int32))``: a fresh permutation per pass.

    Example ``i`` is file :func:`file_of_example` of ``i``.
    Why not a shuffle buffer of decoded images: at ImageNet size a 10,000-image buffer holds
    about 5 GB, and it only mixes neighbours of one file order that every pass repeats; here
    nothing is buffered, each pass over the files is a uniform permutation, and a run that
    resumes at ``start_index`` continues its pass. The list stays a file (a lookup table reads
    it; no 80 MB graph constant). A file that cannot be read or decoded stops the stream with
    its path, as in :func:`decode_files`.
    """
    n = len(rel_paths)
    prefix = split_dir.rstrip(os.sep) + os.sep
    list_file = write_file_list(split_dir, rel_paths, labels)
    whole_line = tf.lookup.TextFileIndex.WHOLE_LINE
    table = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            list_file, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, tf.string, whole_line
        ),
        default_value="",
    )

    def line_of(index: tf.Tensor) -> tf.Tensor:
        return table.lookup(file_of_example(index, n, seed))

    def load(index):
        line = line_of(index)
        return index, _read_image(prefix, line), _label_of(line)

    def check(expected, elem):
        # A failed element was dropped by ignore_errors: the next index skips `expected`.
        index, image, label = elem

        def fail():
            path = tf.strings.join([prefix, _path_of(line_of(expected))])
            message = [_UNREADABLE[0], path, _UNREADABLE[1]]
            with tf.control_dependencies([tf.debugging.Assert(False, message)]):
                return tf.constant(False)

        ok = tf.cond(tf.equal(index, expected), lambda: tf.constant(True), fail)
        with tf.control_dependencies([ok]):
            nxt = index + 1
        return nxt, (index, (image, label))

    indices = tf.data.Dataset.range(start_index, tf.int64.max)
    decoded = indices.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return decoded.ignore_errors().scan(tf.constant(start_index, tf.int64), check)
