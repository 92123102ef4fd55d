"""Where a model's weights come from: resuming a run, a pretrained start, another run's weights,
a distillation teacher, a finished run rebuilt from its folder.

The one place that decides between a native simclr_tf checkpoint (:mod:`simclr_tf.checkpoints`)
and an official reference-SimCLR one (:mod:`simclr_tf.official`): it sits above both, so neither
imports the other. Entry points: :func:`resume` (training), :func:`restore_pretrained`
(fine-tuning), :func:`restore_model_weights` (evaluation), :func:`load_teacher` and
:func:`restore_student` (distillation), :func:`read_run` + :func:`rebuild` (export).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import keras
import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import trackable_object_graph_pb2

from simclr_tf import checkpoints, distribute, official
from simclr_tf import model_dir as model_dir_lib
from simclr_tf.checkpoints import Checkpointer, CheckpointError
from simclr_tf.config import Config
from simclr_tf.data import sources
from simclr_tf.errors import ExportError, UserError
from simclr_tf.models.build import build_model, build_serving_model
from simclr_tf.models.distill import TeacherLogits
from simclr_tf.models.simclr import SimCLRModel

# --------------------------------------------------------------------- pretrained and evaluated


def _restore_official(
    model: keras.Model, path: str, parts: tuple[str, ...], use_ema: bool
) -> str | None:
    """Loads an official (reference SimCLR) checkpoint's ``parts``; None if ``path`` is not one."""
    if not official.is_official(path):
        return None
    info = official.restore_into(model, path, parts, use_ema=use_ema)
    logging.info("Loaded official checkpoint: %s", info.describe())
    return info.prefix


def restore_pretrained(model: keras.Model, path: str, use_ema: bool = False) -> str:
    """Loads encoder and projection-head weights (not optimizer, not step) for fine-tuning.

    ``path`` may also be an official checkpoint (simclr_tf.official); ``use_ema`` then picks
    the ``ema_model/`` weights of a TF1 SimCLRv2 checkpoint.
    """
    official_prefix = _restore_official(model, path, ("encoder", "projection_head"), use_ema)
    if official_prefix is not None:
        return official_prefix
    prefix = checkpoints.resolve_checkpoint_path(path)
    root = tf.train.Checkpoint(
        model=tf.train.Checkpoint(encoder=model.encoder, projection_head=model.projection_head)
    )
    checkpoints.restore_exactly(root, prefix, partial=True)
    logging.info("Initialised encoder and projection head from %s", prefix)
    return prefix


def restore_model_weights(model: keras.Model, path: str, use_ema: bool = False) -> str:
    """Loads all model weights (for eval of another run's checkpoint); ignores the optimizer.

    ``path`` may also be an official checkpoint (simclr_tf.official).
    """
    parts = ("encoder", "projection_head", "supervised_head")
    official_prefix = _restore_official(model, path, parts, use_ema)
    if official_prefix is not None:
        return official_prefix
    prefix = checkpoints.resolve_checkpoint_path(path)
    checkpoints.restore_exactly(tf.train.Checkpoint(model=model), prefix, partial=True)
    return prefix


# -------------------------------------------------------------------------------------- resume


def resume(
    cfg: Config, model: keras.Model, strategy: tf.distribute.Strategy, write_dir: str
) -> tuple[Checkpointer, int]:
    """Where a training run starts; returns the checkpointer (saving to ``write_dir``) and the
    start step (0 for a new run).

    * The newest checkpoint of the run restores model *and* optimizer (step, schedule position,
      momentum), so the same command after a crash continues where the last save left off.
    * Multi-worker: every worker resumes from the chief's ``--model_dir`` (non-chiefs save to a
      temporary ``write_dir``), and all must have resumed from the same step.
    * A new fine-tuning run starts from the pretrained ``--checkpoint`` (encoder and projection
      head only); a resumed one from its own checkpoint, saying that ``--checkpoint`` is unused.
    * A damaged newest checkpoint is reported and the next older intact one is used
      (:meth:`simclr_tf.checkpoints.Checkpointer.restore_latest`).
    """
    checkpointer = Checkpointer(model, write_dir, cfg.keep_checkpoint_max)
    multi = distribute.is_multi_worker(strategy) and cfg.model_dir
    step = checkpointer.restore_latest(cfg.model_dir if multi else write_dir)
    distribute.check_same_step(strategy, step)
    if step > 0 and cfg.checkpoint not in (None, "none"):
        logging.warning(
            "--model_dir=%s holds checkpoints of this run: resuming it at step %d; "
            "--checkpoint=%s is not used (it only starts a new run; use a new --model_dir to "
            "start from it).",
            cfg.model_dir,
            step,
            cfg.checkpoint,
        )
    if step == 0 and cfg.train_mode == "finetune" and cfg.checkpoint != "none":
        restore_pretrained(model, cfg.checkpoint, use_ema=cfg.checkpoint_ema)
    return checkpointer, step


# ---------------------------------------------------------------------------------- distillation


class TeacherError(CheckpointError):
    """A teacher that cannot be used; the message names the fix."""


def _head_classes(prefix: str) -> int:
    """Classes of the supervised head stored in a checkpoint (0 when it has none).

    Read through the checkpoint's object graph: with an optimizer in the checkpoint, a variable's
    key names the optimizer's path to it, not ``model/supervised_head/...``.
    """
    reader = tf.train.load_checkpoint(prefix)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    node = 0
    for name in ("model", "supervised_head"):
        node = next((c.node_id for c in graph.nodes[node].children if c.local_name == name), -1)
        if node < 0:
            return 0
    shapes = reader.get_variable_to_shape_map()
    stack, seen = [node], set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for attr in graph.nodes[node].attributes:
            shape = shapes.get(attr.checkpoint_key)
            if attr.name == "VARIABLE_VALUE" and shape is not None and len(shape) == 2:
                return int(shape[-1])  # the classifier's kernel [features, classes]
        stack.extend(c.node_id for c in graph.nodes[node].children)
    return 0


def load_teacher(path: str, num_classes: int, image_size: int) -> keras.Model:
    """The frozen teacher of ``path`` as a :class:`TeacherLogits` (call in the strategy scope).

    ``path``: a simclr_tf run folder or checkpoint prefix; the teacher's architecture is read from
    that run's ``flags.json``. Anything else is handed to the published-checkpoint loader
    ``simclr_tf.official.load_official(path)``.
    """
    is_folder = tf.io.gfile.isdir(path)
    flags_dict = None
    if is_folder or tf.io.gfile.exists(path + ".index"):
        run_dir = path if is_folder else (os.path.dirname(path) or ".")
        flags_dict = model_dir_lib.read_flags(run_dir)
    if flags_dict is None:  # not a simclr_tf run: perhaps a published checkpoint
        return _official_teacher(path, num_classes)
    prefix = checkpoints.resolve_checkpoint_path(path)
    tcfg = model_dir_lib.config_from_flags(flags_dict)
    classes = _head_classes(prefix)
    if classes == 0:
        raise TeacherError(
            f"Teacher {prefix} has no classifier: fine-tune it first (--train_mode=finetune "
            f"--checkpoint={run_dir}) and pass that run as --teacher_checkpoint."
        )
    if classes != num_classes:
        raise TeacherError(
            f"Teacher {prefix} predicts {classes} classes but this dataset has {num_classes}: "
            "distil on the dataset the teacher was fine-tuned on."
        )
    if tcfg.image_size and int(tcfg.image_size) != int(image_size):
        raise TeacherError(
            f"Teacher {prefix} was trained on {tcfg.image_size}x{tcfg.image_size} images but "
            f"the student gets {image_size}x{image_size}: pass --image_size={tcfg.image_size}."
        )
    if tcfg.train_mode == "pretrain":
        logging.warning("Teacher %s is a pretraining run: its logits are the linear probe's.", path)
    model = build_model(tcfg.replace(teacher_checkpoint=None), classes)
    model(tf.zeros([1, image_size, image_size, 3]), training=False)  # creates the variables
    restore_model_weights(model, prefix)
    logging.info("Teacher: %s (%s, %d classes).", prefix, _describe(tcfg), classes)
    return TeacherLogits(model, name="teacher")


def _describe(cfg: Any) -> str:
    return f"ResNet-{cfg.resnet_depth} {cfg.width_multiplier:g}x, sk {cfg.sk_ratio:g}"


def _official_teacher(path: str, num_classes: int) -> keras.Model:
    """A published (official) checkpoint as the teacher: ``simclr_tf.official.load_official``.

    It returns a simclr_tf model (and what it loaded) whose ``logits_sup`` are the teacher's
    logits.
    """
    if not official.is_official(path):
        raise TeacherError(
            f"--teacher_checkpoint={path} is not a simclr_tf run (no flags.json beside it) nor "
            "a published checkpoint this package reads: pass the model_dir of a fine-tuned run."
        )
    try:
        model = official.load_official(path)
    except official.OfficialCheckpointError as e:
        if "--ft_proj_selector" not in str(e):
            raise
        raise TeacherError(
            f"--teacher_checkpoint={path} does not tell which projection layer feeds its "
            "supervised head: convert it with tools/convert_checkpoint.py --ft_proj_selector=N "
            "and pass the converted run folder as --teacher_checkpoint."
        ) from None
    model = model[0] if isinstance(model, tuple) else model
    classes = int(getattr(model, "num_classes", num_classes))
    if classes != num_classes:
        raise TeacherError(
            f"Teacher {path} predicts {classes} classes but this dataset has {num_classes}: "
            "distil on the dataset the teacher was fine-tuned on."
        )
    return TeacherLogits(model, name="teacher")


def restore_student(model: SimCLRModel, path: str) -> str:
    """Initialises a student from ``path`` (``--checkpoint`` of a distill run).

    Encoder and projection head as in fine-tuning; the classifier too when the checkpoint has one
    of the same shape (a fine-tuned run, e.g. the teacher itself: self-distillation that starts
    at the teacher). Returns the checkpoint prefix.
    """
    prefix = checkpoints.resolve_checkpoint_path(path)
    parts = {"encoder": model.encoder, "projection_head": model.projection_head}
    if model.supervised_head is not None and _head_classes(prefix) == model.num_classes:
        parts["supervised_head"] = model.supervised_head
    root = tf.train.Checkpoint(model=tf.train.Checkpoint(**parts))
    checkpoints.restore_exactly(root, prefix, partial=True)
    logging.info("Student initialised from %s (%s).", prefix, ", ".join(parts))
    return prefix


# ----------------------------------------------------------------------- a run rebuilt for export


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What rebuilding a run's network needs, read from its folder (cheap: no model yet)."""

    cfg: Config
    checkpoint: str  # the checkpoint prefix to restore
    step: int
    num_classes: int  # of the supervised head; 0 without one


def _num_classes(cfg: Config, flags_dict: dict, model_dir: str) -> int:
    """Classes of the run's supervised head (0 without one), as recorded in flags.json.

    Runs recorded before flags.json held ``num_classes`` fall back to the dataset's metadata.
    """
    if cfg.train_mode == "pretrain" and not cfg.lineareval_while_pretraining:
        return 0
    recorded = flags_dict.get(model_dir_lib.NUM_CLASSES_KEY)
    if recorded is not None:
        return int(recorded)
    try:
        return int(sources.dataset_info(cfg.dataset, cfg.data_dir).num_classes)
    except UserError as e:
        raise ExportError(
            f"{model_dir_lib.flags_path(model_dir)} does not record num_classes and the dataset "
            f'is not readable here ({e}): add "num_classes": N to that flags.json.'
        ) from e


def read_run(model_dir: str, checkpoint: str | None = None) -> RunRecord:
    """The config of the run in ``model_dir`` (its ``flags.json``) and the checkpoint to
    restore (default: the newest in ``model_dir``)."""
    flags_dict = model_dir_lib.read_flags(model_dir)
    if flags_dict is None:
        raise ExportError(
            f"No {model_dir_lib.FLAGS_FILE} in {model_dir}: point --model_dir at the folder of a "
            "run started with run.py (it records the flags needed to rebuild the model)."
        )
    cfg = model_dir_lib.config_from_flags(flags_dict)
    if not cfg.image_size:
        raise ExportError(
            f"{model_dir_lib.flags_path(model_dir)} has no resolved image_size: it was not "
            "written by a training run of run.py."
        )
    prefix = checkpoints.resolve_checkpoint_path(checkpoint or model_dir)
    step = checkpoints.checkpoint_step(prefix)
    return RunRecord(cfg, prefix, step, _num_classes(cfg, flags_dict, model_dir))


def rebuild(run: RunRecord) -> SimCLRModel:
    """The run's float32 network with the weights of ``run.checkpoint``."""
    model = build_serving_model(run.cfg, run.num_classes)
    untracked = checkpoints.untracked_variables(model)
    if untracked:
        # A restore would silently leave these at their random initial values.
        raise ExportError(
            f"{len(untracked)} variables of the network are not reachable by checkpoints (a "
            f"layer held only in a Python list?), e.g. {untracked[:3]}; their trained values "
            "cannot be restored. Fix the model code so every sub-layer is tracked."
        )
    restore_model_weights(model, run.checkpoint)
    return model
