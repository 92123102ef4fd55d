"""Native checkpoints: save, find, restore exactly, and refuse mismatches naming the variables.

This layer knows only simclr_tf's own ``ckpt-<step>`` format. Deciding between a native and an
official (reference SimCLR) checkpoint, and so resuming a run, starting fine-tuning from a
pretrained model and loading a teacher, is :mod:`simclr_tf.restore`, above both this module and
:mod:`simclr_tf.official`. The resume arithmetic is here: :func:`resumed_seed` (new views after a
resume) and :func:`fit_spans` (finishing an interrupted epoch before whole ones).

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
import tempfile

import keras
import tensorflow as tf
from absl import logging

from simclr_tf.errors import UserError
from simclr_tf.model_dir import CHECKPOINT_NAME

# Seeds of resumed runs are moved by this factor times the start step, so a resumed run sees
# new views rather than replaying the first epoch's.
RESUME_SEED_STRIDE = 1_000_003


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used as asked; the message names the fix."""


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
    """A checkpoint prefix from a prefix or a folder; CheckpointError naming the fix otherwise."""
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
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
        """
        if directory is None or directory == self.manager.directory:
            latest = self.manager.latest_checkpoint
        else:
            latest = tf.train.latest_checkpoint(directory)
        if latest is None:
            return 0
        restore_exactly(self.checkpoint, latest)
        step = int(self.model.optimizer.iterations.numpy())
        logging.info("Resumed from %s at step %d", latest, step)
        return step


def restore_exactly(root: tf.train.Checkpoint, path: str, partial: bool = False) -> None:
    """Restores ``root`` from ``path``; a mismatch raises CheckpointError naming the variables."""
    try:
        status = root.restore(path)
        if partial:
            status.expect_partial()
        status.assert_existing_objects_matched()
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
