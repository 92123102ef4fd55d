"""The ``--model_dir`` contract: one folder holds everything of one run, and this module names
every path in it (no other module joins a file name onto a run folder).

    model_dir/
      flags.json                 the resolved flags of the run (architecture checked on reuse),
                                 plus ``num_classes`` of its supervised head (for export)
      checkpoint, ckpt-<step>.*  model + optimizer state (tf.train.Checkpoint)
      metrics.csv                per-epoch training metrics
      curves.png                 the picture of metrics.csv (simclr_tf.plots)
      train/, eval/              TensorBoard logs
      result.json, result_<step>.json   evaluation results
      saved_model/<step>/        serving + TF Hub SavedModel exports
      official.json              what a converted reference checkpoint held

Every file here is written atomically (:mod:`simclr_tf.atomic`) so a crash never leaves half a
result.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import tensorflow as tf

from simclr_tf.atomic import write_json_atomic
from simclr_tf.config import ARCHITECTURE_KEYS, Config
from simclr_tf.errors import UserError


class ModelDirError(UserError, RuntimeError):
    """A model_dir that holds something else; the message names the fix."""


FLAGS_FILE = "flags.json"
METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
RESULT_FILE = "result.json"
CHECKPOINT_NAME = "ckpt"  # checkpoints are <model_dir>/ckpt-<step>.*
EXPORT_SUBDIR = "saved_model"
EVAL_SUMMARIES = "eval"
OFFICIAL_FILE = "official.json"  # marks a run folder converted from a reference checkpoint
# Recorded in flags.json beside the flags: facts of the run that are not flags.
NUM_CLASSES_KEY = "num_classes"


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def flags_path(model_dir: str) -> str:
    return os.path.join(model_dir, FLAGS_FILE)


def metrics_path(model_dir: str) -> str:
    return os.path.join(model_dir, METRICS_FILE)


def curves_path(model_dir: str) -> str:
    return os.path.join(model_dir, CURVES_FILE)


def summaries_dir(model_dir: str) -> str:
    """TensorBoard root: Keras's TensorBoard callback writes ``train/`` below it."""
    return model_dir


def eval_summaries_dir(model_dir: str) -> str:
    return os.path.join(model_dir, EVAL_SUMMARIES)


def result_path(model_dir: str, step: int | None = None) -> str:
    """``result.json`` (the latest evaluation), or ``result_<step>.json`` for one step."""
    name = RESULT_FILE if step is None else f"result_{int(step)}.json"
    return os.path.join(model_dir, name)


def official_path(model_dir: str) -> str:
    """What ``tools/convert_checkpoint.py`` loaded (source, format, architecture, step)."""
    return os.path.join(model_dir, OFFICIAL_FILE)


def export_root(model_dir: str) -> str:
    return os.path.join(model_dir, EXPORT_SUBDIR)


def export_path(model_dir: str, step: int) -> str:
    return os.path.join(export_root(model_dir), str(int(step)))


# --------------------------------------------------------------------------------------------
# Writing and reading
# --------------------------------------------------------------------------------------------


def _read_json(path: str) -> dict[str, Any] | None:
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def read_flags(model_dir: str) -> dict[str, Any] | None:
    """The contents of ``flags.json`` (flags and recorded facts), or None without one."""
    return _read_json(flags_path(model_dir))


def config_from_flags(flags_dict: dict[str, Any]) -> Config:
    """The Config recorded in a flags.json (keys that are not flags are left out)."""
    names = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in flags_dict.items() if k in names})


def read_official(model_dir: str) -> dict[str, Any] | None:
    """The record of a run folder converted from a reference checkpoint, or None."""
    return _read_json(official_path(model_dir))


def read_result(model_dir: str, step: int) -> dict[str, Any] | None:
    return _read_json(result_path(model_dir, step))


def write_result(model_dir: str, result: dict[str, Any]) -> str:
    """Writes ``result.json`` and ``result_<global_step>.json``; returns the latter's path."""
    step_path = result_path(model_dir, int(result["global_step"]))
    write_json_atomic(step_path, result)
    write_json_atomic(result_path(model_dir), result)
    return step_path


# --------------------------------------------------------------------------------------------
# Preparing a run's folder
# --------------------------------------------------------------------------------------------


def check_is_folder(model_dir: str) -> None:
    """A ``--model_dir`` naming an existing file is refused in one line (not a TF traceback)."""
    if tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
        raise ModelDirError(
            f"--model_dir={model_dir} is a file, not a folder: pass the path of a folder (a new "
            "one, or the folder of an earlier run to resume). The file was left unchanged."
        )


def check_compatible(cfg: Config, model_dir: str) -> None:
    """Refuses a model_dir written by a run of another architecture or training mode."""
    check_is_folder(model_dir)
    previous = read_flags(model_dir)
    if previous is None:
        return
    keys = (*ARCHITECTURE_KEYS, "train_mode")
    diffs = [
        f"--{k}: model_dir has {previous[k]!r}, this run asks for {getattr(cfg, k)!r}"
        for k in keys
        if k in previous and previous[k] != getattr(cfg, k)
    ]
    if diffs:
        raise ModelDirError(
            f"{model_dir} holds a run with a different model:\n  "
            + "\n  ".join(diffs)
            + "\nUse a new --model_dir (or the same flags as that run). Nothing was changed."
        )


def prepare(cfg: Config, model_dir: str, write_flags: bool, num_classes: int | None = None) -> None:
    """Creates the folder, checks it holds a compatible run, and records the flags.

    ``num_classes`` (the dataset's classes) is recorded beside the flags so that an export can
    rebuild the supervised head without the dataset.
    """
    check_compatible(cfg, model_dir)
    tf.io.gfile.makedirs(model_dir)
    if write_flags:
        payload: dict[str, Any] = dataclasses.asdict(cfg)
        if num_classes is not None:
            payload[NUM_CLASSES_KEY] = int(num_classes)
        write_json_atomic(flags_path(model_dir), payload)
