"""The ``--model_dir`` contract: one folder holds everything of one run, and this module names
every path in it (no other module joins a file name onto a run folder).

    model_dir/
      run.lock                   held while a run writes here (simclr_tf.run_lock)
      flags.json                 the resolved flags the run trains with (architecture checked
                                 on reuse), plus ``num_classes`` of its supervised head (export);
                                 written when training is about to start, after every check
      flags_history.jsonl        one line per (re)start that changed a flag: step, time, values
      checkpoint, ckpt-<step>.*  model + optimizer state (tf.train.Checkpoint)
      metrics.csv                per-epoch training metrics
      curves.png                 the picture of metrics.csv (simclr_tf.plots)
      train/, eval/              TensorBoard logs
      result.json, result_<step>.json   evaluation results
      saved_model/<step>/        serving + TF Hub SavedModel exports
      official.json              what a converted reference checkpoint held

Every file here is written atomically (:mod:`simclr_tf.atomic`) so a crash never leaves half a
result; what a killed run leaves of its temporaries is removed by the next run
(:func:`remove_leftovers`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
from typing import Any

import tensorflow as tf
from absl import logging

from simclr_tf.atomic import write_json_atomic, write_text_atomic
from simclr_tf.config import ARCHITECTURE_KEYS, Config
from simclr_tf.errors import UserError
from simclr_tf.run_lock import LOCK_FILE


class ModelDirError(UserError, RuntimeError):
    """A model_dir that holds something else; the message names the fix."""


FLAGS_FILE = "flags.json"
FLAGS_HISTORY_FILE = "flags_history.jsonl"
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


def flags_history_path(model_dir: str) -> str:
    return os.path.join(model_dir, FLAGS_HISTORY_FILE)


def lock_path(model_dir: str) -> str:
    """The lock of the run writing here (:mod:`simclr_tf.run_lock`)."""
    return os.path.join(model_dir, LOCK_FILE)


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


_CHECKPOINT_INDEX = re.compile(rf"^{CHECKPOINT_NAME}-(\d+)\.index$")


def checkpoint_prefixes(model_dir: str) -> list[tuple[int, str]]:
    """(step, prefix) of every ``ckpt-<step>`` on disk, newest first.

    Read from the file names, not from the ``checkpoint`` state file, so a damaged or stale
    state file cannot hide a checkpoint (and a new run cannot then overwrite it).
    """
    if not tf.io.gfile.isdir(model_dir):
        return []
    found = []
    for name in tf.io.gfile.listdir(model_dir):
        match = _CHECKPOINT_INDEX.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(model_dir, name[: -len(".index")])))
    return sorted(found, reverse=True)


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
    """Refuses a model_dir written by a run of another architecture or training mode.

    Only a folder with a checkpoint binds: the flags.json of a run that failed before its first
    checkpoint describes nothing that was kept, and a corrected rerun replaces it.
    """
    check_is_folder(model_dir)
    previous = read_flags(model_dir)
    if previous is None:
        return
    if not checkpoint_prefixes(model_dir) and read_official(model_dir) is None:
        logging.info(
            "%s has a flags.json but no checkpoint (an earlier run stopped before saving one): "
            "its flags do not bind this run and are replaced when training starts.",
            flags_path(model_dir),
        )
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


def prepare(cfg: Config, model_dir: str) -> None:
    """Creates the folder and checks it holds a compatible run (flags: :func:`record_flags`)."""
    check_compatible(cfg, model_dir)
    tf.io.gfile.makedirs(model_dir)


def record_flags(
    cfg: Config, model_dir: str, step: int, num_classes: int | None = None
) -> dict[str, Any]:
    """Writes flags.json for a run about to train from ``step``; returns what changed.

    Called after every check and the restore, so a run that fails before training leaves the
    folder's record as it was. A (re)start that changes any value appends one line to
    ``flags_history.jsonl`` -- ``{"step", "time", "changed": {flag: [before, after]}}`` -- so
    flags.json plus the history tell what trained at every step. ``num_classes`` (the dataset's
    classes) is recorded beside the flags so that an export can rebuild the supervised head
    without the dataset.
    """
    payload: dict[str, Any] = dataclasses.asdict(cfg)
    if num_classes is not None:
        payload[NUM_CLASSES_KEY] = int(num_classes)
    previous = read_flags(model_dir)
    if previous is not None and step > 0 and "checkpoint" in previous:
        # A resumed run does not use --checkpoint (it only starts a new run): keep the one
        # that did start it.
        payload["checkpoint"] = previous["checkpoint"]
    changed = {}
    if previous is not None:
        changed = {
            k: [previous.get(k), v] for k, v in sorted(payload.items()) if previous.get(k) != v
        }
    if changed:
        line = {
            "step": int(step),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "changed": changed,
        }
        history = flags_history_path(model_dir)
        text = ""
        if tf.io.gfile.exists(history):
            with tf.io.gfile.GFile(history) as f:
                text = f.read()
        write_text_atomic(history, text + json.dumps(line, sort_keys=True) + "\n")
        logging.info("Flags changed at step %d (recorded in %s): %s", step, history, changed)
    write_json_atomic(flags_path(model_dir), payload)
    return changed


def read_flags_history(model_dir: str) -> list[dict[str, Any]]:
    """The lines of ``flags_history.jsonl`` (oldest first); [] without one."""
    path = flags_history_path(model_dir)
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        return [json.loads(line) for line in f.read().splitlines() if line.strip()]


# What a killed run leaves behind: TF's checkpoint temporaries (ckpt-<step>_temp/ and the
# state file's checkpoint.tmp<hex>), unfinished exports (saved_model/<step>.partial-<hex>), and
# simclr_tf.atomic's temporary files (<name>.tmp-<pid>-<hex>).
_LEFTOVER_PATTERNS = (
    f"{CHECKPOINT_NAME}-*_temp",
    "checkpoint.tmp*",
    "*.tmp-*-*",
    os.path.join(EXPORT_SUBDIR, "*.partial-*"),
)


def remove_leftovers(model_dir: str) -> list[str]:
    """Removes the temporaries of earlier, killed runs; returns what was removed.

    Only call while holding the folder's lock: a temporary of a live run would look the same.
    """
    removed = []
    for pattern in _LEFTOVER_PATTERNS:
        for path in sorted(tf.io.gfile.glob(os.path.join(model_dir, pattern))):
            if path == lock_path(model_dir) or os.path.basename(path).startswith(LOCK_FILE):
                continue
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)
            logging.info("Removed %s, left by an earlier run that was stopped.", path)
            removed.append(path)
    return removed
