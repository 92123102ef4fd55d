"""Native checkpoints: save, find, restore exactly, and refuse mismatches naming the variables.

This layer knows only simclr_tf's own ``ckpt-<step>`` format. Deciding between a native and an
official (reference SimCLR) checkpoint, and so resuming a run, starting fine-tuning from a
pretrained model and loading a teacher, is :mod:`simclr_tf.restore`, above both this module and
:mod:`simclr_tf.official`. The resume arithmetic is here: :func:`resumed_seed` (new views after a
resume) and :func:`fit_spans` (finishing an interrupted epoch before whole ones).

Damaged checkpoints (truncated data or index file, missing shard, not a checkpoint at all) are
named, never used and never deleted: :func:`damage` finds them cheaply (the index, the object
graph, which TF writes last into the data file, and the data files' sizes), and every read error
of a restore becomes a :class:`DamagedCheckpointError` naming the file. Resuming goes on from
the newest intact checkpoint, saying which step that is.

``tf.train.Checkpoint`` is used (not Keras ``.keras`` files) because it saves model *and*
optimizer state, writes atomically (the ``checkpoint`` index file is replaced only after the new
files are complete, so a crash during a save leaves the previous checkpoint loadable), and works
under every ``tf.distribute`` strategy.

Keras 3 pitfall guarded here: ``tf.train.Checkpoint`` follows attributes of Keras layers but not
layers held only in Python lists, which would be silently left out of a checkpoint.
:func:`untracked_variables` finds such variables and :class:`Checkpointer` refuses to save a
model that has any.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from simclr_tf.errors import UserError
from simclr_tf.model_dir import CHECKPOINT_NAME, checkpoint_prefixes

# Seeds of resumed runs are moved by this factor times the start step, so a resumed run sees
# new views rather than replaying the first epoch's.
RESUME_SEED_STRIDE = 1_000_003


# The serialized object graph of a TF2 checkpoint: written last into its data file.
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used as asked; the message names the fix."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint whose files cannot be read (truncated, missing shard, not a checkpoint)."""


# What TensorFlow raises reading damaged checkpoint files: OpError (not an sstable, missing
# shard, checksum mismatch), IndexError ("Read less bytes than requested": a truncated data
# file), and a protobuf DecodeError (a ValueError) of a garbled object graph.
_READ_ERRORS = (tf.errors.OpError, IndexError, ValueError)
_SHARD = re.compile(r"\.data-(\d+)-of-(\d+)$")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


def damage(prefix: str) -> tuple[str, str] | None:
    """(file, what is wrong) for a checkpoint whose files cannot be read; None when they can.

    Cheap (no tensor but the object graph is read), so it runs before every restore and on
    ``--checkpoint`` before any other work.
    """
    index = prefix + ".index"
    if not tf.io.gfile.exists(index):
        return index, "missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
        dtypes = reader.get_variable_to_dtype_map()
        shapes = reader.get_variable_to_shape_map()
    except _READ_ERRORS as e:
        return index, _first_line(e)
    data = sorted(tf.io.gfile.glob(prefix + ".data-*-of-*"))
    shards = {_SHARD.search(f).groups() for f in data if _SHARD.search(f)}
    total = max((int(n) for _, n in shards), default=1)
    for i in range(total):
        name = f"{prefix}.data-{i:05d}-of-{total:05d}"
        if name not in data:
            return name, "missing"
    if OBJECT_GRAPH_KEY in dtypes:
        try:
            reader.get_tensor(OBJECT_GRAPH_KEY)
        except _READ_ERRORS as e:
            return (data[0] if len(data) == 1 else prefix + ".data-*"), _first_line(e)
    needed = sum(
        int(np.prod(shapes[k], dtype=np.int64)) * dtypes[k].size
        for k in shapes
        if dtypes[k] != tf.string
    )
    held = sum(tf.io.gfile.stat(f).length for f in data)
    if held < needed:
        return (
            data[0] if len(data) == 1 else prefix + ".data-*",
            f"truncated: {held} bytes, its variables need {needed}",
        )
    return None


def check_intact(prefix: str) -> None:
    """DamagedCheckpointError naming the file when :func:`damage` finds one."""
    found = damage(prefix)
    if found is not None:
        raise DamagedCheckpointError(
            f"Checkpoint {prefix} is damaged: {found[0]} {found[1]}. Use another checkpoint "
            "(an older ckpt-<step> of the same folder), or restore the files from a copy."
        )


def _intact_prefixes(directory: str, damaged: list[str], log: bool = True) -> Iterator[str]:
    """The checkpoints of ``directory`` newest first, skipping damaged ones.

    Each skipped one is appended to ``damaged`` as "file (what is wrong)" (and logged).
    """
    for _, prefix in checkpoint_prefixes(directory):
        found = damage(prefix)
        if found is None:
            yield prefix
            continue
        if log:
            logging.warning("Checkpoint %s is damaged (%s %s): not used.", prefix, *found)
        damaged.append(f"{found[0]} ({found[1]})")


def check_resumable(directory: str) -> None:
    """Refuses a run folder whose checkpoints are all damaged, before a model is built.

    (Which one a resume uses, and the messages about the others, is
    :meth:`Checkpointer.restore_latest`'s.)
    """
    damaged: list[str] = []
    if next(_intact_prefixes(directory, damaged, log=False), None) is None and damaged:
        raise _all_damaged(directory, damaged)


def newest_intact(directory: str) -> str | None:
    """The newest checkpoint of ``directory`` whose files read; None when there is none.

    Damaged newer ones are reported (named, kept); all damaged: DamagedCheckpointError.
    """
    damaged: list[str] = []
    for prefix in _intact_prefixes(directory, damaged):
        if damaged:
            logging.warning(
                "Using %s: the newer %s %s damaged (kept, not used).",
                prefix,
                "; ".join(damaged),
                "is" if len(damaged) == 1 else "are",
            )
        return prefix
    if damaged:
        raise _all_damaged(directory, damaged)
    return None


def _all_damaged(directory: str, damaged: list[str]) -> DamagedCheckpointError:
    return DamagedCheckpointError(
        f"Every checkpoint in {directory} is damaged: {'; '.join(damaged)}. Nothing was changed: "
        "restore the files from a copy, or start over in a new --model_dir."
    )


def _saved_keys(root: tf.train.Checkpoint) -> dict[str, list[int]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = root.write(os.path.join(tmp, "probe"))
        return {
            name: shape
            for name, shape in tf.train.list_variables(path)
            if name.endswith("VARIABLE_VALUE")
        }


def untracked_variables(model: keras.Model) -> list[str]:
    """Paths of the model's variables that a ``tf.train.Checkpoint`` would not save."""
    root = tf.train.Checkpoint(model=model)
    reachable = {id(obj) for obj in tf.train.TrackableView(root).descendants()}
    return [v.path for v in model.variables if id(v) not in reachable]


def resolve_checkpoint_path(path: str) -> str:
    """A checkpoint prefix from a prefix or a folder; CheckpointError naming the fix otherwise.

    A folder means its newest intact checkpoint (:func:`newest_intact`).
    """
    if tf.io.gfile.isdir(path):
        latest = newest_intact(path) or tf.train.latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(
                f"No checkpoint in {path}: point --checkpoint at a model_dir of a finished "
                "pretraining run or at a checkpoint prefix such as MODEL_DIR/ckpt-1000."
            )
        return latest
    if not tf.io.gfile.exists(path + ".index"):
        raise CheckpointError(
            f"Checkpoint {path} does not exist (no {path}.index): pass a model_dir or a "
            "checkpoint prefix such as MODEL_DIR/ckpt-1000."
        )
    return path


class Checkpointer:
    """Saves and resumes model + optimizer state in ``directory`` (``ckpt-<step>``)."""

    def __init__(self, model: keras.Model, directory: str, max_to_keep: int = 5):
        self.model = model
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, directory, max_to_keep=max_to_keep, checkpoint_name=CHECKPOINT_NAME
        )
        missing = untracked_variables(model)
        if missing:
            raise CheckpointError(
                "These variables would be missing from checkpoints (a layer held only in a "
                f"list?): {missing[:10]}. Assign every sub-layer to an attribute."
            )

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def save(self, step: int) -> str:
        path = self.manager.save(checkpoint_number=step)
        logging.info("Saved checkpoint %s", path)
        return path

    def restore_latest(self, directory: str | None = None) -> int:
        """Resumes from the newest checkpoint; returns its step (0 when there is none).

        ``directory``: where to look instead of the save folder (multi-worker: every worker
        resumes from the chief's model_dir while non-chiefs save to a temporary folder).
        Checkpoints are found by their files (:func:`simclr_tf.model_dir.checkpoint_prefixes`),
        so a damaged ``checkpoint`` state file cannot make a run start over at step 0.

        A damaged newest checkpoint is reported and the next older intact one is used (the
        damaged files are kept; this run's save of the same step replaces them); all damaged:
        DamagedCheckpointError naming the files, before anything is written.
        """
        directory = directory or self.manager.directory
        damaged: list[str] = []
        for prefix in _intact_prefixes(directory, damaged):
            try:
                restore_exactly(self.checkpoint, prefix)
            except DamagedCheckpointError as e:  # a read error that damage() did not foresee
                logging.warning("%s Trying the next older checkpoint.", e)
                damaged.append(f"{prefix} ({e})")
                continue
            step = int(self.model.optimizer.iterations.numpy())
            if damaged:
                logging.warning(
                    "Resuming from %s at step %d: the newer %s %s damaged (kept, not used).",
                    prefix,
                    step,
                    "; ".join(damaged),
                    "is" if len(damaged) == 1 else "are",
                )
            logging.info("Resumed from %s at step %d", prefix, step)
            return step
        if damaged:
            raise _all_damaged(directory, damaged)
        return 0


def restore_exactly(root: tf.train.Checkpoint, path: str, partial: bool = False) -> None:
    """Restores ``root`` from ``path``; a mismatch raises CheckpointError naming the variables.

    Damaged files raise DamagedCheckpointError (checked first, and for any read error).
    """
    check_intact(path)
    try:
        status = root.restore(path)
        if partial:
            status.expect_partial()
        status.assert_existing_objects_matched()
    except (IndexError, tf.errors.DataLossError, tf.errors.NotFoundError) as e:
        raise DamagedCheckpointError(
            f"Checkpoint {path} is damaged: {_first_line(e)}. Use another checkpoint (an older "
            "ckpt-<step> of the same folder), or restore the files from a copy."
        ) from e
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        raise CheckpointError(
            f"Checkpoint {path} does not match this model.\n{describe_mismatch(root, path)}\n"
            "Use the same architecture flags (--resnet_depth, --width_multiplier, --sk_ratio, "
            "--proj_head_mode, --num_proj_layers, --proj_out_dim) as the run that wrote it."
        ) from e


def describe_mismatch(root: tf.train.Checkpoint, path: str, limit: int = 12) -> str:
    """Lists variables missing from either side or with different shapes."""
    ours = _saved_keys(root)
    theirs = {
        name: shape
        for name, shape in tf.train.list_variables(path)
        if name.endswith("VARIABLE_VALUE")
    }
    lines = []
    for name in sorted(ours):
        short = name.replace("/.ATTRIBUTES/VARIABLE_VALUE", "")
        if name not in theirs:
            lines.append(f"  missing in checkpoint: {short} {ours[name]}")
        elif list(theirs[name]) != list(ours[name]):
            lines.append(
                f"  shape differs: {short} model {ours[name]} vs checkpoint {theirs[name]}"
            )
    if not lines:
        lines.append("  (no variable-level difference found)")
    more = len(lines) - limit
    return "\n".join(lines[:limit] + ([f"  ... and {more} more"] if more > 0 else []))


def checkpoint_step(prefix: str) -> int:
    """The optimizer step stored in a checkpoint (0 when it holds no optimizer)."""
    reader = tf.train.load_checkpoint(prefix)
    key = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"
    if reader.has_tensor(key):
        return int(reader.get_tensor(key))
    tail = prefix.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


# --------------------------------------------------------------------------------------------
# Resuming a training run (resume() itself, which also reads official checkpoints, is in
# simclr_tf.restore)
# --------------------------------------------------------------------------------------------


def resumed_seed(seed: int, start_step: int) -> int:
    """The data seed of a run (re)started at ``start_step``: new views after every resume."""
    return seed + RESUME_SEED_STRIDE * start_step


@dataclasses.dataclass(frozen=True)
class FitSpan:
    """The epoch arguments of one ``model.fit`` call."""

    initial_epoch: int
    epochs: int
    steps_per_epoch: int


def fit_spans(start_step: int, steps_per_epoch: int, total_steps: int) -> list[FitSpan]:
    """The ``fit`` calls that take a run from ``start_step`` to ``total_steps``.

    A run resumed mid-epoch first finishes the interrupted epoch (a short ``fit``), so later
    epochs stay aligned with the data size; then whole epochs. A run shorter than an epoch is
    one "epoch" of exactly its steps (honest progress bars).
    """
    spe = min(steps_per_epoch, total_steps)
    epochs = -(-total_steps // spe)  # ceil
    first_epoch = start_step // spe
    spans = []
    if start_step % spe:
        spans.append(FitSpan(first_epoch, first_epoch + 1, spe - start_step % spe))
        first_epoch += 1
    if first_epoch < epochs:
        spans.append(FitSpan(first_epoch, epochs, spe))
    return spans
