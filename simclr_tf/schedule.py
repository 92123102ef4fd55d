"""What a training run's config implies once the data and the replicas are known.

One home for each: the step schedule (:func:`make_schedule`: epochs and steps, warmup, the
checkpoint interval, the peak learning rate the optimizer decays from) and the per-replica batch
(:func:`per_replica_batch`: divisible over the replicas and by ``--micro_batch_size``), which
run.py checks before building anything and the input pipelines batch by.
"""

from __future__ import annotations

import dataclasses
import math

from simclr_tf.config import Config
from simclr_tf.config_checks import ConfigError, check_micro_batch
from simclr_tf.data import pipeline


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Step counts derived from the config and the dataset size."""

    num_train_examples: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    checkpoint_steps: int
    peak_learning_rate: float


def make_schedule(cfg: Config, num_train_examples: int, peak_learning_rate: float) -> Schedule:
    """Steps from --train_steps or --train_epochs x the split size (never hard-coded)."""
    if num_train_examples <= 0:
        raise ConfigError("The training split is empty: check --dataset/--train_split.")
    steps_per_epoch = max(1, math.ceil(num_train_examples / cfg.train_batch_size))
    total = cfg.train_steps or cfg.train_epochs * steps_per_epoch
    warmup = min(total, int(round(cfg.warmup_epochs * steps_per_epoch)))
    if cfg.checkpoint_steps:
        ckpt = cfg.checkpoint_steps
    elif cfg.checkpoint_epochs:
        ckpt = cfg.checkpoint_epochs * steps_per_epoch
    else:
        ckpt = total
    return Schedule(
        num_train_examples=num_train_examples,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=warmup,
        checkpoint_steps=max(1, min(ckpt, total)),
        peak_learning_rate=peak_learning_rate,
    )


def per_replica_batch(cfg: Config, num_replicas: int) -> int:
    """The training batch of one replica: ``--train_batch_size`` split evenly over the replicas,
    and a multiple of ``--micro_batch_size`` (gradient caching cuts it into such chunks)."""
    per_replica = pipeline.per_replica_batch_size(cfg.train_batch_size, num_replicas)
    check_micro_batch(
        per_replica,
        cfg.micro_batch_size,
        f"The per-replica batch of --train_batch_size={cfg.train_batch_size} over {num_replicas} "
        "replicas",
    )
    return per_replica
