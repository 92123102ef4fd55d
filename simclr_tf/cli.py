"""Command line: ``python run.py --mode=train|eval|train_then_eval ...``.

Resolves the flags against the dataset, picks the strategy, then runs the modes; every
user-facing failure is one line on stderr naming the fix (exit code 2), never a stack trace.
"""

from __future__ import annotations

import os
import re
import sys

from absl import app, flags, logging

from simclr_tf import config, config_defaults
from simclr_tf.errors import UserError

config.define_flags()
FLAGS = flags.FLAGS

# The TensorFlow modules are imported inside the steps below: ``--help`` and flag errors stay
# fast, and the strategy (which may split the CPU) is made before anything runs in TF (reading
# checkpoint files and the lock before it does not start TF's runtime).


def run_config(cfg: config.Config, given: frozenset[str] = frozenset()) -> dict | None:
    """Runs one configured job; returns the evaluation result when the mode evaluates.

    The steps, in order: :func:`take_run_folder` (the lock), :func:`check_checkpoints`,
    :func:`pick_strategy`, :func:`read_dataset`, then in the run's folder
    (:func:`run_in_folder`) :func:`train_model`, :func:`model_to_evaluate`,
    :func:`evaluate_model`, :func:`export_model`. ``given``: the flags the user set (command
    line or flagfile); the rest are defaults.
    """
    lock = take_run_folder(cfg)
    try:
        check_checkpoints(cfg)
        if cfg.data_service and cfg.trains:
            from simclr_tf import data_service

            data_service.check_dispatcher(cfg.data_service)  # one line now, not a hang later
        strategy = pick_strategy(cfg)
        cfg, info = read_dataset(cfg, strategy, given)
        return run_in_folder(cfg, strategy, info, lock is not None)
    finally:
        if lock is not None:
            lock.release()


def check_checkpoints(cfg: config.Config) -> None:
    """A damaged ``--checkpoint`` or ``--teacher_checkpoint``, or a run folder whose checkpoints
    are all damaged: one line, before any other work (the lock's folder, when the lock created
    it, is removed again on the way out)."""
    from simclr_tf import checkpoints
    from simclr_tf.official import reader

    checkpoints.check_resumable(cfg.model_dir)
    reader.check_readable(cfg.checkpoint, "--checkpoint")
    if cfg.train_mode == "distill":
        reader.check_readable(cfg.teacher_checkpoint, "--teacher_checkpoint")


def take_run_folder(cfg: config.Config):
    """The lock of ``--model_dir`` (:mod:`simclr_tf.run_lock`), taken before anything is
    written; None on the workers of a multi-worker run that are not the chief (they write
    elsewhere). Refuses at once when another run holds the folder."""
    from simclr_tf import run_lock, tf_config  # no TensorFlow yet: a second run stops at once

    if not tf_config.is_chief_task(cfg.strategy_name):
        return None
    lock = run_lock.RunLock(cfg.model_dir)
    lock.acquire()
    return lock


def run_in_folder(cfg: config.Config, strategy, info, locked: bool) -> dict | None:
    """Trains, evaluates and exports in the run folder (the lock held by the chief)."""
    from simclr_tf import distribute, model_dir

    location = distribute.WriteLocation(cfg.model_dir, distribute.is_chief(strategy))
    if location.chief != locked:
        raise distribute.StrategyError(
            "TF_CONFIG and the strategy disagree about which worker is the chief: check the "
            "task type and index in TF_CONFIG."
        )
    try:
        if not location.chief:
            # Every worker refuses an incompatible model_dir, not only the chief (which would
            # otherwise leave the others waiting in a collective).
            model_dir.check_compatible(cfg, location.read_path)
        model_dir.prepare(cfg, location.path)
        if location.chief:
            model_dir.remove_leftovers(location.path)  # under the lock: no live run's files
        model = train_model(cfg, strategy, info, location.path) if cfg.trains else None
        if not cfg.evaluates:
            return None
        model, source = model_to_evaluate(cfg, strategy, info, location, model)
        result, step = evaluate_model(cfg, model, source, location.path)
        if cfg.export_saved_model and location.chief:
            export_model(cfg, model, location.path, step, result, info.class_names)
        return result
    finally:
        location.cleanup()


def pick_strategy(cfg: config.Config):
    """The tf.distribute strategy; first, because splitting the CPU must precede TF's start."""
    from simclr_tf import distribute

    return distribute.strategy_for(cfg)


def read_dataset(cfg: config.Config, strategy, given: frozenset[str] = frozenset()):
    """The dataset's metadata, and the config resolved and checked against it and the replicas."""
    from simclr_tf.data import sources

    info = sources.dataset_info(cfg.dataset, cfg.data_dir)
    side = None
    if info.image_shape and info.image_shape[0] and info.image_shape[0] == info.image_shape[1]:
        side = info.image_shape[0]
    cfg = config_defaults.resolve(cfg, side, tuple(info.split_sizes)).validate()
    from simclr_tf.official import convert as official_convert

    # The architecture (and the supervised head's input) of an official checkpoint:
    cfg = official_convert.configure(cfg, given).validate()
    if cfg.trains:
        from simclr_tf import train

        placement, why = train.augment_placement(cfg, strategy, info)
        logging.info("Augmentation placement: %s (%s).", placement, why)
        cfg = cfg.replace(augment_on=placement)  # flags.json records the placement that ran
        cfg = cfg.replace(conv_filter_grad=train.filter_gradient_for(cfg, strategy))
        logging.info("Convolution filter gradient: %s.", cfg.conv_filter_grad)
    for split, needed in ((cfg.train_split, cfg.trains), (cfg.eval_split, cfg.evaluates)):
        if needed and split not in info.split_sizes:
            raise sources.DataError(
                f"Split {split!r} not found in {cfg.dataset}; it has {sorted(info.split_sizes)}. "
                "Pass --train_split / --eval_split."
            )
    if cfg.trains:
        from simclr_tf import schedule

        schedule.per_replica_batch(cfg, strategy.num_replicas_in_sync)  # fails before building
    if cfg.evaluates or cfg.knn_every_epochs:  # checked before training, not after it
        from simclr_tf import distribute

        distribute.check_eval_batch(cfg.eval_batch_size, strategy.num_replicas_in_sync)
    return cfg, info


def train_model(cfg: config.Config, strategy, info, write_dir: str):
    """Trains (or resumes) to the configured step; returns the trained model."""
    from simclr_tf import train

    return train.train(cfg, strategy, info, write_dir)


def model_to_evaluate(cfg: config.Config, strategy, info, location, trained):
    """The model to evaluate and its checkpoint: the one just trained, or rebuilt and restored
    (newest checkpoint of model_dir, else ``--checkpoint``) in eval mode."""
    from simclr_tf import checkpoints, evaluate, train

    if trained is not None:
        return trained, checkpoints.resolve_checkpoint_path(location.path)
    model = train.build_for_run(cfg, strategy, info, schedule=None)  # evaluation: no optimizer
    return model, evaluate.restore_for_eval(cfg, model, location.read_path)


def evaluate_model(cfg: config.Config, model, source: str, write_dir: str) -> tuple[dict, int]:
    """Evaluates on ``--eval_split``, writes result.json; returns the result and its step."""
    from simclr_tf import checkpoints, evaluate

    step = checkpoints.checkpoint_step(source)
    return evaluate.evaluate(cfg, model, source, step, write_dir), step


def export_model(cfg, model, run_dir: str, step: int, result: dict, class_names) -> None:
    """Exports the evaluated weights; an export of the same step is kept (same weights)."""
    from simclr_tf import export, model_dir

    existing = model_dir.export_path(run_dir, step)
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
    try:
        cfg = config.Config.from_flags(FLAGS).validate()
        run_config(cfg, frozenset(name for name in FLAGS if FLAGS[name].present))
    except UserError as e:
        _fail(str(e))
    except Exception as e:  # noqa: BLE001 - only data-check failures are turned into one line
        message = _data_problem(e)
        if message is None:
            raise
        _fail(message)


def run() -> None:
    """Console-script entry point (``simclr-tf``), same as ``python run.py``."""
    app.run(main)
