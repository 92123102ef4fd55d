"""Command line: ``python run.py --mode=train|eval|train_then_eval ...``.

Resolves the flags against the dataset, picks the strategy, then runs the modes; every
user-facing failure is one line on stderr naming the fix (exit code 2), never a stack trace.
"""

from __future__ import annotations

import os
import re
import sys

from absl import app, flags, logging

from simclr_tf import config

config.define_flags()
FLAGS = flags.FLAGS

def _user_errors() -> tuple[type[Exception], ...]:
    """The error types whose message is the whole story for the user (imported lazily)."""
    from simclr_tf.callbacks import NonFiniteLossError
    from simclr_tf.checkpoints import CheckpointError
    from simclr_tf.data.sources import DataError
    from simclr_tf.distribute import StrategyError
    from simclr_tf.model_dir import ModelDirError

    return (
        config.ConfigError,
        DataError,
        CheckpointError,
        ModelDirError,
        StrategyError,
        NonFiniteLossError,
    )


def run_config(cfg: config.Config) -> dict | None:
    """Runs one configured job; returns the evaluation result when the mode evaluates."""
    # The strategy comes first: splitting the CPU must happen before TF initialises devices.
    from simclr_tf import distribute

    strategy = distribute.make_strategy(
        cfg.strategy if not cfg.use_tpu else "tpu",
        tpu_name=cfg.tpu_name,
        tpu_zone=cfg.tpu_zone,
        gcp_project=cfg.gcp_project,
        num_cpu_devices=cfg.num_cpu_devices,
    )
    from simclr_tf import checkpoints, evaluate, model_dir, train
    from simclr_tf.data import pipeline, sources

    info = sources.dataset_info(cfg.dataset, cfg.data_dir)
    side = None
    if info.image_shape and info.image_shape[0] and info.image_shape[0] == info.image_shape[1]:
        side = info.image_shape[0]
    cfg = config.resolve(cfg, side, tuple(info.split_sizes)).validate()
    from simclr_tf.official import convert as official_convert

    cfg = official_convert.configure(cfg).validate()  # architecture of an official checkpoint
    trains = cfg.mode in ("train", "train_then_eval")
    evaluates = cfg.mode in ("eval", "train_then_eval")
    for split, needed in ((cfg.train_split, trains), (cfg.eval_split, evaluates)):
        if needed and split not in info.split_sizes:
            raise sources.DataError(
                f"Split {split!r} not found in {cfg.dataset}; it has {sorted(info.split_sizes)}. "
                "Pass --train_split / --eval_split."
            )
    if trains:
        per_replica = pipeline.per_replica_batch_size(
            cfg.train_batch_size, strategy.num_replicas_in_sync
        )
        if cfg.micro_batch_size and per_replica % cfg.micro_batch_size:
            raise config.ConfigError(
                f"--micro_batch_size={cfg.micro_batch_size} must divide the per-replica batch "
                f"{per_replica} (--train_batch_size={cfg.train_batch_size} over "
                f"{strategy.num_replicas_in_sync} replicas)."
            )
    location = distribute.WriteLocation(cfg.model_dir, distribute.is_chief(strategy))
    try:
        if not location.chief:
            # Every worker refuses an incompatible model_dir, not only the chief (which would
            # otherwise leave the others waiting in a collective).
            model_dir.check_compatible(cfg, location.read_path)
        model_dir.prepare(cfg, location.path, write_flags=trains)
        model = None
        if trains:
            model = train.train(cfg, strategy, info, location.path)
        if not evaluates:
            return None
        if model is None:
            train_size = max(1, info.split_sizes.get(cfg.train_split, 1))
            schedule = train.make_schedule_for(cfg, train_size)
            model = train.build_for_run(cfg, strategy, info, schedule)
            source = evaluate.restore_for_eval(cfg, model, location.read_path)
        else:
            source = checkpoints.resolve_checkpoint_path(location.path)
        step = checkpoints.checkpoint_step(source)
        result = evaluate.evaluate(cfg, model, source, step, location.path)
        if cfg.export_saved_model and location.chief:
            _export(cfg, model, location.path, step, result, info.class_names)
        return result
    finally:
        location.cleanup()


def _export(cfg, model, run_dir: str, step: int, result: dict, class_names) -> None:
    """Exports the evaluated weights; an export of the same step is kept (same weights)."""
    from simclr_tf import export

    existing = os.path.join(run_dir, "saved_model", str(step))
    if os.path.isdir(existing) and not cfg.overwrite:
        logging.info("Export %s exists (same step, same weights): kept.", existing)
        return
    export.export_run(model, cfg, run_dir, step, result, class_names)


# In-graph data checks (simclr_tf.data.sources) raise InvalidArgumentError with these texts.
_DATA_ASSERTIONS = ("Could not read or decode image file", "Image file")


def _data_problem(error: Exception) -> str | None:
    """The user-facing sentence of an in-graph data check, or None for other TF errors."""
    import tensorflow as tf

    if not isinstance(error, tf.errors.InvalidArgumentError):
        return None
    match = re.search(r"assertion failed: ((?:\[[^\]]*\] ?)+)", str(error))
    if not match:
        return None
    parts = re.findall(r"\[([^\]]*)\]", match.group(1))
    if not parts or not parts[0].startswith(_DATA_ASSERTIONS):
        return None
    return " ".join(parts)


def _fail(message: str) -> None:
    """One line on stderr (absl's own error log line would repeat it), exit code 2."""
    print(f"simclr_tf: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    errors = _user_errors()
    try:
        cfg = config.Config.from_flags(FLAGS).validate()
        run_config(cfg)
    except errors as e:
        _fail(str(e))
    except Exception as e:  # noqa: BLE001 - only data-check failures are turned into one line
        message = _data_problem(e)
        if message is None:
            raise
        _fail(message)


def run() -> None:
    """Console-script entry point (``simclr-tf``), same as ``python run.py``."""
    app.run(main)
