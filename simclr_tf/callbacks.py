"""Keras callbacks of a training run: step-exact stop, checkpoints, a non-finite-loss guard.

Order matters and is fixed by :func:`training_callbacks`: the guard runs before the checkpoint
saver, so a non-finite step never reaches a checkpoint.
"""

from __future__ import annotations

import csv
import io

import keras
import numpy as np
import tensorflow as tf

from simclr_tf.atomic import write_text_atomic
from simclr_tf.checkpoints import Checkpointer
from simclr_tf.errors import UserError


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss (or the weights) became NaN or infinite; the last good checkpoint is kept."""


def _step(model: keras.Model) -> int:
    return int(model.optimizer.iterations.numpy())


class StopAtStep(keras.callbacks.Callback):
    """Ends ``fit`` exactly at ``total_steps`` optimizer steps, also when resuming mid-epoch."""

    def __init__(self, total_steps: int):
        super().__init__()
        self.total_steps = total_steps

    def on_train_batch_end(self, batch, logs=None):
        if _step(self.model) >= self.total_steps:
            self.model.stop_training = True


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops the run at the first non-finite loss, naming the step (nothing is saved after it)."""

    def __init__(self, key: str = "loss"):
        super().__init__()
        self.key = key

    def on_train_batch_end(self, batch, logs=None):
        value = (logs or {}).get(self.key)
        if value is None:
            return
        value = np.asarray(keras.ops.convert_to_numpy(value), np.float64).reshape(-1)
        if not np.all(np.isfinite(value)):
            self.model.stop_training = True
            value = float(value[0]) if value.size == 1 else value.tolist()
            raise NonFiniteLossError(
                f"Non-finite {self.key} ({value}) at step {_step(self.model)}. The last "
                "good checkpoint is kept; lower --learning_rate, raise --warmup_epochs, or check "
                "the data."
            )


def all_finite(variables) -> bool:
    """True when every float variable is free of NaN and inf (one fused reduction)."""
    checks = [
        tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(v)))
        for v in variables
        if tf.as_dtype(v.dtype).is_floating
    ]
    return bool(tf.reduce_all(tf.stack(checks))) if checks else True


class CheckpointSaver(keras.callbacks.Callback):
    """Saves every ``every_steps`` optimizer steps and at the end of training.

    With several steps per execution it sees the step only between executions: train.py picks
    a ``steps_per_execution`` that divides ``every_steps``, so saves land on the same steps.

    A checkpoint is only written when every weight is finite: a step whose loss was finite can
    still overflow the weights (e.g. a huge learning rate), and such a checkpoint must never
    replace the last good one.
    """

    def __init__(self, checkpointer: Checkpointer, every_steps: int):
        super().__init__()
        self.checkpointer = checkpointer
        self.every_steps = max(1, every_steps)
        self.last_saved = -1
        self._interval = 0

    def _save(self) -> None:
        step = _step(self.model)
        if step != self.last_saved and step > 0:
            if not all_finite([*self.model.weights, *self.model.optimizer.variables]):
                self.model.stop_training = True
                raise NonFiniteLossError(
                    f"Non-finite weights after step {step}; not saved, the last good checkpoint "
                    "is kept. Lower --learning_rate, raise --warmup_epochs, or check the data."
                )
            self.checkpointer.save(step)
            self.last_saved = step

    def on_train_begin(self, logs=None):
        self._interval = _step(self.model) // self.every_steps

    def on_train_batch_end(self, batch, logs=None):
        # Called once per execution (``steps_per_execution`` steps): save when an interval
        # boundary was reached or crossed, not only when it is hit exactly.
        interval = _step(self.model) // self.every_steps
        if interval > self._interval:
            self._interval = interval
            self._save()

    def on_train_end(self, logs=None):
        self._save()


class MetricsCSV(keras.callbacks.Callback):
    """Appends one row per epoch (epoch, step, every logged metric) to ``metrics.csv``.

    Unlike Keras's CSVLogger it adds no empty ``val_*`` columns, records the optimizer step (so
    rows of a resumed run line up), and extends the header when a new metric appears.
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "step": _step(self.model)}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        rows, fields = [], list(row)
        if tf.io.gfile.exists(self.path):
            with tf.io.gfile.GFile(self.path) as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                old = list(reader.fieldnames or [])
                fields = old + [k for k in row if k not in old]
        rows.append(row)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.path, text.getvalue())


def training_callbacks(
    checkpointer: Checkpointer,
    checkpoint_steps: int,
    total_steps: int,
    extra: list[keras.callbacks.Callback] | None = None,
) -> list[keras.callbacks.Callback]:
    """Guard first, then stop-at-step and checkpoints, then monitors and loggers (``extra``)."""
    return [
        NonFiniteGuard(),
        StopAtStep(total_steps),
        CheckpointSaver(checkpointer, checkpoint_steps),
        *(extra or []),
    ]
