"""Official checkpoints wherever simclr_tf takes a checkpoint, and as simclr_tf run folders.

The top layer of :mod:`simclr_tf.official`: reading (``reader``, ``layout``, ``load``) sits below
:mod:`simclr_tf.checkpoints`' users, while this module writes run folders and exports, so it
imports ``train`` and ``export``; the package's ``__init__`` does not import it.

* :func:`configure`: run.py's flags get the architecture of an official ``--checkpoint`` (or of
  a run folder converted from one), so ``--checkpoint=PATH`` needs no architecture flags.
* :func:`convert`: an official checkpoint -> a normal run folder (flags.json, ``ckpt-<step>``,
  ``official.json``, and the serving + TF Hub export of ``saved_model/<step>/``).
* :func:`export_official`: the serving + TF Hub SavedModel of an official checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from typing import Any

import tensorflow as tf
from absl import logging

from simclr_tf import checkpoints, train
from simclr_tf import export as export_lib
from simclr_tf import model_dir as model_dir_lib
from simclr_tf.atomic import replace_folder, write_json_atomic
from simclr_tf.config import ARCHITECTURE_KEYS, Config
from simclr_tf.config_checks import RESNET_ENCODER
from simclr_tf.model_card import model_card
from simclr_tf.official.load import (
    OfficialInfo,
    arch_config,
    checkpoint_selector,
    inspect,
    load_official,
    trained_selector,
)
from simclr_tf.official.reader import TF2_SAVED_MODEL, OfficialCheckpointError, is_official


def default_image_size(cifar_stem: bool) -> int:
    """The reference picks the CIFAR stem exactly for images <= 32 px; ImageNet models: 224."""
    return 32 if cifar_stem else 224


def _converted_run(path: str | None) -> str | None:
    """The run folder of ``path`` (folder or prefix inside it) if it was converted here."""
    if not path or path == "none":
        return None
    folder = path if tf.io.gfile.isdir(path) else os.path.dirname(path)
    if folder and tf.io.gfile.exists(model_dir_lib.official_path(folder)):
        return folder
    return None


def configure(cfg: Config, given: frozenset[str] = frozenset()) -> Config:
    """``cfg`` with the architecture of an official ``--checkpoint`` (or converted run).

    Flags the user gave for the architecture are replaced: the checkpoint decides them. A
    converted run folder is recognised as ``--checkpoint`` and as ``--model_dir`` of
    ``--mode=eval``, so its flags.json need not be repeated on the command line. ``given``: the
    flags set on the command line or in a flagfile (:func:`eval_selector` needs to know whether
    ``--ft_proj_selector`` was).
    """
    if cfg.checkpoint and is_official(cfg.checkpoint):
        if cfg.encoder != RESNET_ENCODER:
            raise OfficialCheckpointError(
                f"{cfg.checkpoint} is a published ResNet checkpoint: it cannot be loaded into "
                f"--encoder={cfg.encoder} (drop --encoder)."
            )
        source, arch, head, layer_slots = inspect(cfg.checkpoint, cfg.checkpoint_ema)
        if head.proj_mode == "none" and cfg.ft_proj_selector:
            raise OfficialCheckpointError(
                f"{cfg.checkpoint} has no projection head, so --ft_proj_selector must be 0."
            )
        selector = cfg.ft_proj_selector
        if cfg.mode == "eval":  # evaluates the checkpoint's own supervised head
            selector = eval_selector(cfg, source, head, layer_slots, given)
        new = arch_config(arch, head, cfg, selector)
        logging.info(
            "Architecture from official checkpoint %s: %s",
            cfg.checkpoint,
            {k: getattr(new, k) for k in ARCHITECTURE_KEYS},
        )
        return new
    keys: tuple[str, ...] = ARCHITECTURE_KEYS
    run = _converted_run(cfg.checkpoint)
    if run is None and cfg.mode == "eval" and not cfg.checkpoint:
        run = _converted_run(cfg.model_dir)
        keys += ("ft_proj_selector",)  # evaluating its own supervised head
    if run is None:
        return cfg
    flags = model_dir_lib.read_flags(run) or {}
    return cfg.replace(**{k: flags[k] for k in keys if k in flags})


def eval_selector(cfg: Config, source, head, layer_slots, given: frozenset[str]) -> int:
    """The projection layer feeding the supervised head that ``--mode=eval`` evaluates.

    On ResNet-50 1x the first projection layer is as wide as ``h``, so a wrong selector loads
    and gives wrong logits in silence. The flag when given, else the checkpoint's own
    (:func:`~simclr_tf.official.load.checkpoint_selector`: its optimizer slots, or a refusal
    naming the flag; no default of 0). A given flag that the slots contradict is refused here,
    before any work. A SavedModel is measured when it is restored.
    """
    explicit = cfg.ft_proj_selector if "ft_proj_selector" in given else None
    selector = checkpoint_selector(cfg.checkpoint, source, head, layer_slots, explicit)
    if explicit is not None and source.format != TF2_SAVED_MODEL and head.num_classes:
        inferred = trained_selector(source, head, layer_slots)
        if inferred is not None and inferred != explicit:
            raise OfficialCheckpointError(
                f"{cfg.checkpoint}: its optimizer slots show its supervised head reads "
                f"projection layer {inferred}, not {explicit}: pass "
                f"--ft_proj_selector={inferred} or leave the flag out."
            )
    return selector


def _run_config(
    info: OfficialInfo, checkpoint: str, model_dir: str, image_size: int, use_ema: bool
) -> Config:
    return info.config.replace(
        mode="eval",
        model_dir=model_dir,
        checkpoint=checkpoint,
        image_size=image_size,
        checkpoint_ema=use_ema,
        keep_hub_module_max=1,
        overwrite=False,
    )


def _official_record(info: OfficialInfo, seconds: float | None = None) -> dict[str, Any]:
    """What was loaded (``official.json``, and the model card's source); ``seconds`` when timed."""
    record = {
        "source": info.path,
        "format": info.format,
        "checkpoint_prefix": info.prefix,
        "global_step": info.global_step,
        "architecture": dataclasses.asdict(info.arch),
        "heads": dataclasses.asdict(info.head),
        "not_in_checkpoint": info.not_found,
        "ignored": info.ignored,
        "use_ema": info.use_ema,
        "variables_loaded": info.num_variables,
        "summary": info.describe(),
    }
    if seconds is not None:
        record["seconds"] = round(seconds, 2)
    return record


def convert(
    checkpoint: str,
    model_dir: str,
    *,
    image_size: int | None = None,
    use_ema: bool = False,
    ft_proj_selector: int | None = None,
    overwrite: bool = False,
    export: bool = True,
) -> OfficialInfo:
    """Writes a simclr_tf run folder holding the official ``checkpoint``; returns what loaded.

    The folder is written next to ``model_dir`` and renamed into place when complete; an
    existing folder is replaced only with ``overwrite``.
    """
    model_dir = model_dir.rstrip("/")
    if tf.io.gfile.exists(model_dir) and tf.io.gfile.listdir(model_dir) and not overwrite:
        raise OfficialCheckpointError(
            f"{model_dir} already exists and is not empty: pass --overwrite to replace it, or "
            "choose another --model_dir. Nothing was changed."
        )
    start = time.time()
    model, info = load_official(checkpoint, use_ema=use_ema, ft_proj_selector=ft_proj_selector)
    size = int(image_size or default_image_size(info.arch.cifar_stem))
    step = int(info.global_step or 0)
    tmp = f"{model_dir}.partial-{uuid.uuid4().hex[:8]}"
    cfg = _run_config(info, checkpoint, model_dir, size, use_ema)
    try:
        model_dir_lib.prepare(cfg, tmp)
        model_dir_lib.record_flags(cfg, tmp, step, num_classes=info.head.num_classes)
        _save_like_a_run(model, cfg, tmp, step)
        # Written before the export, whose model card names the source from it.
        write_json_atomic(
            model_dir_lib.official_path(tmp), _official_record(info, time.time() - start)
        )
        if export:
            export_lib.export_run(model, cfg, tmp, step, None, None)
        replace_folder(tmp, model_dir)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    logging.info("Converted %s to %s in %.1fs", checkpoint, model_dir, time.time() - start)
    return info


def _save_like_a_run(model, cfg: Config, directory: str, step: int) -> None:
    """``ckpt-<step>`` as a run writes it: model + (fresh) optimizer at the checkpoint's step.

    A compiled simclr_tf model tracks its optimizer, so evaluation restores expect one; its
    step counter is the official global step, which also numbers results and exports.
    """
    schedule = train.make_schedule_for(cfg, num_train_examples=1)
    train.compile_model(cfg, model, train.build_optimizer_for(cfg, schedule))
    model.optimizer.iterations.assign(step)
    checkpoints.Checkpointer(model, directory, max_to_keep=1).save(step)


def export_official(
    checkpoint: str,
    export_dir: str,
    *,
    image_size: int | None = None,
    use_ema: bool = False,
    ft_proj_selector: int | None = None,
    overwrite: bool = False,
) -> str:
    """Writes the serving + TF Hub SavedModel of an official checkpoint to ``export_dir``."""
    model, info = load_official(checkpoint, use_ema=use_ema, ft_proj_selector=ft_proj_selector)
    size = int(image_size or default_image_size(info.arch.cifar_stem))
    cfg = _run_config(info, checkpoint, os.path.dirname(export_dir), size, use_ema)
    step = int(info.global_step or 0)
    record = _official_record(info)
    card = model_card(model, cfg, step=step, result=None, class_names=None, official=record)
    return export_lib.export_saved_model(
        model, export_dir, image_size=size, card=card, overwrite=overwrite
    )


def export_dir_for(checkpoint: str, model_dir: str, use_ema: bool = False) -> str:
    """``model_dir/saved_model/<global step of the official checkpoint>``."""
    source, _, _, _ = inspect(checkpoint, use_ema)
    return model_dir_lib.export_path(model_dir, int(source.global_step or 0))
