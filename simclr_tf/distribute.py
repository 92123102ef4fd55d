"""Choosing a tf.distribute strategy, and who writes files in a multi-worker run.

``auto`` never breaks a GPU or CPU user (the reference code defaults to a TPU): a TPU only when
one resolves, MirroredStrategy with more than one GPU, otherwise the default strategy.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import tensorflow as tf
from absl import logging


class StrategyError(RuntimeError):
    """A strategy that cannot be built here; the message names the fix."""


def split_cpu(num_devices: int) -> None:
    """Splits the CPU into ``num_devices`` logical devices (before TF initialises its runtime)."""
    if num_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == num_devices:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices
        )
    except RuntimeError as e:  # The runtime was initialised before we got here.
        raise StrategyError(
            f"Cannot split the CPU into {num_devices} devices after TensorFlow started: "
            "pass --num_cpu_devices before anything else touches TF."
        ) from e


def _resolve_tpu(tpu_name: str | None, tpu_zone: str | None, project: str | None):
    return tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu_name or "", zone=tpu_zone, project=project
    )


def make_strategy(
    name: str = "auto",
    *,
    tpu_name: str | None = None,
    tpu_zone: str | None = None,
    gcp_project: str | None = None,
    num_cpu_devices: int = 1,
) -> tf.distribute.Strategy:
    """Builds the strategy ``name`` (auto | default | mirrored | multi_worker | tpu)."""
    split_cpu(num_cpu_devices)
    if name == "auto":
        name = _auto_strategy_name(tpu_name)
    if name == "tpu":
        try:
            resolver = _resolve_tpu(tpu_name, tpu_zone, gcp_project)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError, RuntimeError) as e:
            raise StrategyError(
                f"No TPU could be resolved ({e}). Pass --tpu_name (and --tpu_zone, "
                "--gcp_project), or use --strategy=auto/mirrored/default on GPUs and CPUs."
            ) from e
        strategy: tf.distribute.Strategy = tf.distribute.TPUStrategy(resolver)
    elif name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
    elif name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise StrategyError(
                "--strategy=multi_worker needs the cluster in the TF_CONFIG environment "
                'variable, e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}}.'
            )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == "default":
        strategy = tf.distribute.get_strategy()
    else:
        raise StrategyError(f"Unknown strategy {name!r}: use auto, default, mirrored, "
                            "multi_worker or tpu.")
    logging.info(
        "Strategy: %s with %d replica(s) in sync.",
        type(strategy).__name__,
        strategy.num_replicas_in_sync,
    )
    return strategy


def _auto_strategy_name(tpu_name: str | None) -> str:
    if tpu_name or os.environ.get("TPU_NAME"):
        return "tpu"
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one task that writes checkpoints, summaries, results and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


class WriteLocation:
    """The folder a task writes to: the real ``model_dir`` on the chief, a temporary one elsewhere.

    Every worker of a MultiWorkerMirroredStrategy must take part in saving (the save is a
    collective), but only the chief's files are kept; the others write to a temporary folder that
    :meth:`cleanup` removes.
    """

    def __init__(self, model_dir: str, chief: bool):
        self.chief = chief
        self.path = model_dir if chief else tempfile.mkdtemp(prefix="simclr_worker_")

    def cleanup(self) -> None:
        if not self.chief:
            shutil.rmtree(self.path, ignore_errors=True)
