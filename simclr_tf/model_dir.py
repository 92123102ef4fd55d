"""The ``--model_dir`` contract: one folder holds everything of one run.

    model_dir/
      flags.json                 the resolved flags of the run (architecture checked on reuse)
      checkpoint, ckpt-<step>.*  model + optimizer state (tf.train.Checkpoint)
      metrics.csv                per-epoch training metrics
      train/, eval/              TensorBoard logs
      result.json, result_<step>.json   evaluation results
      saved_model/<step>/        serving + TF Hub SavedModel exports

Writes of small files are atomic (temp file + rename) so a crash never leaves half a result.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import tensorflow as tf

from simclr_tf.config import ARCHITECTURE_KEYS, Config


class ModelDirError(RuntimeError):
    """A model_dir that holds something else; the message names the fix."""


FLAGS_FILE = "flags.json"


def write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tf.io.gfile.rename(tmp, path, overwrite=True)


def read_flags(model_dir: str) -> dict[str, Any] | None:
    path = os.path.join(model_dir, FLAGS_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def check_compatible(cfg: Config, model_dir: str) -> None:
    """Refuses a model_dir written by a run of another architecture or training mode."""
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


def prepare(cfg: Config, model_dir: str, write_flags: bool) -> None:
    """Creates the folder, checks it holds a compatible run, and records the flags."""
    tf.io.gfile.makedirs(model_dir)
    check_compatible(cfg, model_dir)
    if write_flags:
        write_json_atomic(os.path.join(model_dir, FLAGS_FILE), dataclasses.asdict(cfg))


def write_result(model_dir: str, result: dict[str, Any]) -> str:
    """Writes ``result.json`` and ``result_<global_step>.json``; returns the latter's path."""
    step_path = os.path.join(model_dir, f"result_{int(result['global_step'])}.json")
    write_json_atomic(step_path, result)
    write_json_atomic(os.path.join(model_dir, "result.json"), result)
    return step_path
