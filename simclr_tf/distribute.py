"""Choosing a tf.distribute strategy, who writes files, and what a multi-worker step returns.

``auto`` never breaks a GPU or CPU user (the reference code defaults to a TPU): a TPU when one is
named (``--tpu_name`` or ``TPU_NAME``) or when this machine is a TPU VM (:mod:`simclr_tf.tpu`),
MirroredStrategy with more than one GPU or with ``--num_cpu_devices > 1``, otherwise the default
strategy. On a TPU VM ``auto`` either gets the TPU or stops with a message: it never trains on
the VM's host CPU. ``local`` (``--tpu_name=local`` or ``TPU_NAME=local``, the default on a TPU VM)
is the TPU attached to this VM.

What works with MultiWorkerMirroredStrategy and Keras 3.15 ``fit`` (pinned by
tests/test_multi_worker.py), and how this package does it:

* every variable (model and optimizer) is created before ``fit`` (``SimCLRModel.build_all``)
  and Keras's own "symbolic build" is skipped: it pulls a batch from the input and reduces it
  across workers, which fails ("Attempt to convert a value (PerReplica...) to a Tensor");
* train/test steps return values with a leading axis of 1 (:func:`step_outputs`): Keras reduces
  step outputs with ``strategy.reduce(MEAN, axis=0)``, which rejects scalars;
* numbers that must count every example of every worker (evaluation) are read from the metric
  trackers in cross-replica context after ``evaluate`` (:func:`global_results`), not from the
  step outputs, which Keras averages over replicas;
* evaluation and kNN batches are split across workers by rows, never by files
  (:func:`pad_batches`), so every worker runs the same number of steps;
* every worker saves checkpoints (a save is collective) but only the chief's land in
  ``model_dir``; the others write to a temporary folder that is removed (:class:`WriteLocation`);
  every worker *reads* (resumes) from ``model_dir``, so ``model_dir`` must be on a filesystem all
  workers see (GCS, NFS, or one machine).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping

import keras
import tensorflow as tf
from absl import logging

from simclr_tf.config import Config
from simclr_tf.errors import StrategyError
from simclr_tf.tpu import connect_tpu, tpu_target


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


def check_tf_config(environ: Mapping[str, str] | None = None) -> dict:
    """The parsed TF_CONFIG of a multi-worker run; StrategyError naming the fix otherwise."""
    environ = os.environ if environ is None else environ
    example = (
        'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:port", "host2:port"]}, '
        '"task": {"type": "worker", "index": 0}}\' (index 1 on the second host)'
    )
    raw = environ.get("TF_CONFIG")
    if not raw:
        raise StrategyError(
            f"--strategy=multi_worker needs the cluster in the TF_CONFIG environment variable, "
            f"{example}."
        )
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise StrategyError(f"TF_CONFIG is not valid JSON ({e}): {example}.") from e
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not (cluster.get("worker") or cluster.get("chief")):
        raise StrategyError(f"TF_CONFIG has no cluster with workers: {example}.")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise StrategyError(f"TF_CONFIG has no task type and index for this process: {example}.")
    members = cluster.get(task["type"]) or []
    if not 0 <= int(task["index"]) < len(members):
        raise StrategyError(
            f"TF_CONFIG task {task['type']}:{task['index']} is not in the cluster "
            f"({task['type']} has {len(members)} address(es)): fix the task index."
        )
    return tf_config


def make_strategy(
    name: str = "auto",
    *,
    tpu_name: str | None = None,
    tpu_zone: str | None = None,
    gcp_project: str | None = None,
    num_cpu_devices: int = 1,
) -> tf.distribute.Strategy:
    """Builds the strategy ``name`` (auto | default | mirrored | multi_worker | tpu).

    Call before anything else creates tensors: splitting the CPU and joining a multi-worker
    cluster both need TensorFlow's runtime not to be initialised yet.
    """
    if name == "multi_worker":
        check_tf_config()
    split_cpu(num_cpu_devices)
    requested = name
    if name == "auto":
        name = _auto_strategy_name(tpu_name, num_cpu_devices)
    if name == "tpu":
        resolver = connect_tpu(tpu_target(tpu_name), tpu_zone, gcp_project)
        strategy: tf.distribute.Strategy = tf.distribute.TPUStrategy(resolver)
    elif name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
    elif name == "multi_worker":
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            raise StrategyError(
                f"Could not join the multi-worker cluster of TF_CONFIG ({e}). Start every worker "
                "with the same cluster and its own task index, before anything else uses TF."
            ) from e
    elif name == "default":
        strategy = tf.distribute.get_strategy()
    else:
        raise StrategyError(
            f"Unknown strategy {name!r}: use auto, default, mirrored, multi_worker or tpu."
        )
    logging.info("%s", describe(strategy, requested))
    return strategy


def describe(strategy: tf.distribute.Strategy, requested: str = "") -> str:
    """One line for the log: strategy, replicas, devices, and this task's role."""
    try:
        devices = list(strategy.extended.worker_devices)
    except (RuntimeError, AttributeError, NotImplementedError):  # the default strategy
        devices = []
    text = (
        f"Strategy: {type(strategy).__name__}"
        + (f" (--strategy={requested})" if requested else "")
        + f" with {strategy.num_replicas_in_sync} replica(s) in sync"
        + (f" on {', '.join(devices)}" if devices else "")
    )
    resolver = getattr(strategy, "cluster_resolver", None)
    if is_multi_worker(strategy) and resolver is not None:
        role = "chief" if is_chief(strategy) else "non-chief (writes to a temporary folder)"
        text += f"; task {resolver.task_type}:{resolver.task_id}, {role}"
    return text + "."


def _auto_strategy_name(tpu_name: str | None, num_cpu_devices: int = 1) -> str:
    if tpu_target(tpu_name):  # named, or this is a TPU VM: never the VM's host CPU
        return "tpu"
    gpus = len(tf.config.list_physical_devices("GPU"))
    if gpus > 1 or (gpus == 0 and num_cpu_devices > 1):
        return "mirrored"
    return "default"


def is_tpu(strategy: tf.distribute.Strategy) -> bool:
    """True under TPUStrategy (whole-step XLA compilation, bfloat16, no float64)."""
    # By class name: TPUStrategy, TPUStrategyV2 and the experimental one share no public base.
    return any(c.__name__.startswith("TPUStrategy") for c in type(strategy).__mro__)


def strategy_for(cfg: Config) -> tf.distribute.Strategy:
    """The strategy of a run's flags, built the one way run.py and tools/benchmark.py share.

    First thing of a run: XLA auto-clustering on CPUs (``--jit_compile``) must be allowed before
    TF optimises its first graph, and splitting the CPU before TF starts.
    """
    if cfg.jit_compile:
        allow_cpu_xla_clusters()
    strategy = make_strategy(
        cfg.strategy_name,
        tpu_name=cfg.tpu_name,
        tpu_zone=cfg.tpu_zone,
        gcp_project=cfg.gcp_project,
        num_cpu_devices=cfg.num_cpu_devices,
    )
    check_precision(strategy, cfg.mixed_precision)
    return strategy


def check_precision(strategy: tf.distribute.Strategy, mixed_precision: str) -> None:
    """float16 on a TPU is refused: TPUs compute in bfloat16 and need no loss scaling."""
    if mixed_precision == "float16" and is_tpu(strategy):
        raise StrategyError(
            "--mixed_precision=float16 is for GPUs; TPUs compute in bfloat16: use "
            "--mixed_precision=bfloat16."
        )


def allow_cpu_xla_clusters(environ: dict | None = None) -> None:
    """Lets XLA auto-clustering compile on CPU devices too (the multi-replica CPU proxy).

    TensorFlow auto-clusters only GPU ops unless ``--tf_xla_cpu_global_jit`` is in
    ``TF_XLA_FLAGS``, which is read once, the first time a graph is optimised: call this
    before anything runs a tf.function (cli.py does, for --jit_compile).
    """
    environ = os.environ if environ is None else environ
    flags = environ.get("TF_XLA_FLAGS", "")
    if "--tf_xla_cpu_global_jit" not in flags:
        environ["TF_XLA_FLAGS"] = (flags + " --tf_xla_cpu_global_jit").strip()


def keras_jit_compile(strategy: tf.distribute.Strategy, jit_compile: bool) -> bool:
    """The ``jit_compile`` to give Keras for ``--jit_compile`` under ``strategy``.

    * one replica: Keras compiles the whole step with XLA;
    * TPUStrategy: False, the TPU compiles the whole step anyway;
    * several GPU/CPU replicas: Keras would put *one* XLA cluster around ``strategy.run``,
      spanning every device ("Trying to access resource ... located in device CPU:1 from device
      CPU:0"). Instead TF's XLA auto-clustering compiles the step per device, never across
      devices, and leaves the cross-replica collectives between the clusters. Returns False.
    """
    if not jit_compile:
        return False
    if is_tpu(strategy):
        return False
    if strategy.num_replicas_in_sync > 1:
        tf.config.optimizer.set_jit("autoclustering")
        logging.info(
            "--jit_compile with %d replicas: XLA auto-clustering, compiled per device.",
            strategy.num_replicas_in_sync,
        )
        return False
    return True


def is_multi_worker(strategy: tf.distribute.Strategy | None = None) -> bool:
    """True under a MultiWorkerMirroredStrategy that spans more than one worker."""
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    in_multi = getattr(strategy.extended, "_in_multi_worker_mode", None)
    return bool(in_multi()) if callable(in_multi) else True


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


def step_outputs(values: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """What a train/test step returns to Keras: scalars, or shape [1] across workers.

    Keras 3.15 reduces step outputs of a multi-worker strategy with
    ``strategy.reduce(MEAN, value, axis=0)``, which fails on scalars ("Invalid reduction
    dimension 0 for input with 0 dimensions"); a leading axis of 1 reduces to the scalar mean.
    """
    if not is_multi_worker():
        return values
    return {k: tf.reshape(v, [1]) for k, v in values.items()}


def check_eval_batch(global_batch: int, num_replicas: int, flag: str = "--eval_batch_size") -> None:
    """StrategyError naming two valid sizes when ``global_batch`` does not split over replicas.

    Evaluation batches are padded to exactly ``global_batch`` (:func:`pad_batches`), so every
    replica gets ``global_batch / num_replicas`` rows: the size must divide evenly.
    """
    if global_batch < 1 or global_batch % num_replicas:
        lower = max(num_replicas, global_batch // num_replicas * num_replicas)
        upper = (global_batch // num_replicas + 1) * num_replicas
        raise StrategyError(
            f"{flag}={global_batch} is not divisible by the {num_replicas} replicas: use a "
            f"multiple of {num_replicas}, e.g. {flag}={lower} or {upper}."
        )


def pad_batches(dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """``(x, y[, mask])`` batches padded to exactly ``batch_size`` rows, plus a 0/1 mask.

    Why: the last batch of an evaluation split is usually partial. A partial batch has a dynamic
    shape (one more XLA compilation, refused by TPUs), and when it is smaller than the replica
    count some replicas get an empty batch (convolutions fail, means are NaN). Padding with
    zeros to the full static batch and masking the padding out keeps shapes static and counts
    every real example exactly once.

    Across workers (MultiWorkerMirroredStrategy) the batches are split by rows, never by files:
    every worker reads the whole split and keeps its replicas' rows of each padded batch, so all
    workers run the same number of steps. tf.data's default (AUTO) would give each worker its own
    files when there are enough (TFRecord/TFDS splits); a worker with fewer examples then runs
    out first and gets empty batches (the encoder fails on them) or waits in a collective.
    """

    def pad(*element):
        images, labels = element[0], element[1]
        n = tf.shape(images)[0]
        mask = element[2] if len(element) > 2 else tf.ones([n], tf.float32)
        extra = batch_size - n

        def grow(t: tf.Tensor) -> tf.Tensor:
            padding = tf.concat([[[0, extra]], tf.zeros([t.shape.rank - 1, 2], tf.int32)], 0)
            return tf.ensure_shape(tf.pad(t, padding), [batch_size, *t.shape[1:]])

        return grow(images), grow(labels), grow(tf.cast(mask, tf.float32))

    by_rows = tf.data.Options()
    by_rows.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    padded = dataset.map(pad, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return padded.with_options(by_rows)


def global_results(
    strategy: tf.distribute.Strategy, metrics: Iterable[keras.metrics.Metric]
) -> dict[str, float]:
    """Metric results over every replica of every worker (call outside ``strategy.run``).

    Keras keeps metric state per replica (sync-on-read) and averages the step outputs across
    replicas, which is wrong for sums and uneven batches; reading the trackers in cross-replica
    context aggregates their state first. Collective under multi-worker: every worker calls it.
    """
    with strategy.scope():
        return {m.name: float(keras.ops.convert_to_numpy(m.result())) for m in metrics}


class WriteLocation:
    """The folder a task writes to: the real ``model_dir`` on the chief, a temporary one elsewhere.

    Every worker of a MultiWorkerMirroredStrategy must take part in saving (the save is a
    collective), but only the chief's files are kept; the others write to a temporary folder that
    :meth:`cleanup` removes. Every task reads (resumes, evaluates) from :attr:`read_path`, the real
    ``model_dir``.
    """

    def __init__(self, model_dir: str, chief: bool):
        self.chief = chief
        self.read_path = model_dir
        self.path = model_dir if chief else tempfile.mkdtemp(prefix="simclr_worker_")

    def cleanup(self) -> None:
        if not self.chief:
            shutil.rmtree(self.path, ignore_errors=True)


def check_same_step(strategy: tf.distribute.Strategy, step: int) -> None:
    """Multi-worker: fails on every worker when they resumed from different steps.

    That happens when ``model_dir`` is not on a filesystem every worker sees; without this check
    the workers would train out of step and hang in a collective.
    """
    if not is_multi_worker(strategy):
        return

    @tf.function  # eager collectives are slow and warn
    def gather() -> tf.Tensor:
        local = strategy.run(lambda: tf.constant([step], tf.int64))
        return strategy.gather(local, axis=0)

    steps = sorted({int(s) for s in gather().numpy()})
    if len(steps) > 1:
        raise StrategyError(
            f"The workers resumed from different steps {steps}: --model_dir must be a folder "
            "every worker can read (GCS, NFS, or all workers on one machine)."
        )
