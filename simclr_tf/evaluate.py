"""Evaluation: top-1/top-5 of the supervised head on ``--eval_split``, written to result.json.

Every example of the split counts exactly once: the eval pipeline keeps the last partial batch,
pads it to the full static batch with a 0/1 mask (static shapes for TPUs, no empty replica
batch), never repeats, splits the batches across workers by rows, and the accuracy counters are
exact integers.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
from absl import logging

from simclr_tf import checkpoints, distribute, model_dir, restore
from simclr_tf.config import Config
from simclr_tf.data import pipeline, sources
from simclr_tf.models.simclr import SimCLRModel


def eval_input(cfg: Config) -> tf.data.Dataset:
    """The eval split, or with ``--eval_steps`` a class-balanced, seeded part of it.

    Batches of ``(images, labels)``; the last one may be smaller (:func:`evaluate` and the kNN
    monitor pad it to a static batch with a mask, :func:`distribute.pad_batches`).
    """
    ds, _ = sources.load_split(
        cfg.dataset,
        cfg.eval_split,
        data_dir=cfg.data_dir,
        fraction_seed=cfg.seed,
        max_examples=cfg.eval_steps * cfg.eval_batch_size if cfg.eval_steps else None,
    )
    ds = pipeline.eval_dataset(ds, batch_size=cfg.eval_batch_size, image_size=cfg.image_size)
    return ds.take(cfg.eval_steps) if cfg.eval_steps else ds


def restore_for_eval(cfg: Config, model: SimCLRModel, run_dir: str) -> str:
    """Loads the weights to evaluate: the newest checkpoint of model_dir, else ``--checkpoint``.

    model_dir wins because a fine-tuning run's ``--checkpoint`` is its *pretrained* start point,
    not the weights it produced.
    """
    latest = tf.train.latest_checkpoint(run_dir)
    source = latest or cfg.checkpoint
    if not source or source == "none":
        raise checkpoints.CheckpointError(
            f"No checkpoint in {run_dir} to evaluate: train first (--mode=train or "
            "train_then_eval) or pass --checkpoint=PATH."
        )
    return restore.restore_model_weights(model, source, use_ema=cfg.checkpoint_ema)


def evaluate(
    cfg: Config,
    model: SimCLRModel,
    checkpoint_path: str | None,
    step: int,
    write_dir: str | None,
) -> dict[str, Any]:
    """Evaluates ``model`` on the eval split; writes result files into ``write_dir``."""
    distribute.check_eval_batch(cfg.eval_batch_size, model.distribute_strategy.num_replicas_in_sync)
    padded = distribute.pad_batches(eval_input(cfg), cfg.eval_batch_size)
    model.evaluate(padded, verbose=2 if cfg.verbose else 0)
    # The trackers, read across replicas and workers: Keras's returned logs average the
    # per-replica values (half the examples on 2 replicas).
    metrics = distribute.global_results(model.distribute_strategy, model.eval_trackers())
    result: dict[str, Any] = {
        "label_top_1_accuracy": float(metrics["label_top_1_accuracy"]),
        "label_top_5_accuracy": float(metrics["label_top_5_accuracy"]),
        "eval_loss": float(metrics["loss"]),
        "num_examples": int(round(float(metrics["num_examples"]))),
        "global_step": step,
        "dataset": cfg.dataset,
        "eval_split": cfg.eval_split,
        "train_mode": cfg.train_mode,
        "checkpoint": checkpoint_path,
    }
    if "teacher_top_1_agreement" in metrics:  # a distilled student evaluated beside its teacher
        result["teacher_top_1_agreement"] = float(metrics["teacher_top_1_agreement"])
        result["teacher_checkpoint"] = cfg.teacher_checkpoint
    logging.info("Eval at step %d: %s", step, result)
    if write_dir is not None:
        model_dir.write_result(write_dir, result)
        writer = tf.summary.create_file_writer(model_dir.eval_summaries_dir(write_dir))
        with writer.as_default():
            for key in ("label_top_1_accuracy", "label_top_5_accuracy", "eval_loss"):
                tf.summary.scalar(key, result[key], step=step)
        writer.close()
    return result
