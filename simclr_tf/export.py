"""Export: one SavedModel per step that serves (TF Serving) *and* is a TF Hub reusable module.

Layout (``model_dir/saved_model/<step>/``, one folder holds everything of one export)::

    saved_model.pb, variables/   the SavedModel
    README.md                    model card (TF Hub / Kaggle Models layout)
    labels.txt                   class names, line i = class id i (when there is a supervised head)

Why one folder rather than a sibling ``hub/``: the serving signatures and the reusable
``__call__`` share the same variables, so two copies would double the disk use and could drift
apart; every consumer (TF Serving, ``tf.saved_model.load``, ``hub.load``, ``hub.KerasLayer``)
reads the same directory.

What the SavedModel holds:

* ``serving_default`` signature: ``image_bytes`` (``tf.string [N]``, JPEG/PNG/GIF/BMP) decoded
  and preprocessed exactly like evaluation (:func:`simclr_tf.data.augment.eval_view` to
  ``image_size``).
* ``serving_images`` signature: ``images`` (``float32 [N, image_size, image_size, 3]`` in [0, 1]).
* Both return ``final_avg_pool`` (the representation h), ``proj_head_output`` and, with a
  supervised head, ``logits``, ``probabilities``, ``top_5_classes`` (int32 ids, k clamped to the
  number of classes) and ``top_5_probabilities``.
* The Reusable SavedModel API (https://www.tensorflow.org/hub/reusable_saved_models):
  ``__call__(images, training=False)`` on float32 ``[N, H, W, 3]`` images of any size, returning
  every endpoint (``initial_conv`` ... ``block_group4``, ``final_avg_pool``, ``proj_head_input``,
  ``proj_head_output``, ``logits_sup`` when present) plus ``default`` (= ``final_avg_pool``);
  ``variables``, ``trainable_variables`` and ``regularization_losses`` (empty: weight decay is
  the optimizer's job) as plain attributes, so ``hub.KerasLayer(path, trainable=True)`` fine-tunes
  every layer.

The exported network is a float32, fully trainable copy of the trained one
(:func:`simclr_tf.models.build.serving_copy`); the model card is :mod:`simclr_tf.model_card`.

Safety: an export is written to a temporary sibling folder and renamed into place when complete,
and an existing export is replaced only with ``overwrite=True`` (``--overwrite``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from simclr_tf import model_dir as model_dir_lib
from simclr_tf import restore
from simclr_tf.atomic import replace_folder
from simclr_tf.config import Config
from simclr_tf.data import augment, sources
from simclr_tf.errors import ExportError
from simclr_tf.model_card import ENDPOINTS, TOP_K, model_card
from simclr_tf.models import build

__all__ = [
    "ENDPOINTS",
    "EXPORT_SUBDIR",
    "ExportError",
    "SERVING_BYTES",
    "SERVING_IMAGES",
    "build_module",
    "export_from_model_dir",
    "export_run",
    "export_saved_model",
    "prune_exports",
]

SERVING_BYTES = "serving_default"
SERVING_IMAGES = "serving_images"
EXPORT_SUBDIR = model_dir_lib.EXPORT_SUBDIR
MODEL_CARD = "README.md"
LABELS_FILE = "labels.txt"
# serving_images tolerates float round-off just outside [0, 1], not 0-255 images.
_RANGE_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------
# The exported object
# --------------------------------------------------------------------------------------------


class _ReusableModule(tf.__internal__.tracking.AutoTrackable):
    """Root of the SavedModel.

    An AutoTrackable rather than a ``tf.Module``: the Reusable SavedModel API wants
    ``variables``, ``trainable_variables`` and ``regularization_losses`` as plain attributes,
    which are read-only properties on ``tf.Module``.
    """


def _float_outputs(outputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {k: tf.cast(v, tf.float32) for k, v in outputs.items()}


def _serving_outputs(model: keras.Model, images: tf.Tensor) -> dict[str, tf.Tensor]:
    """The serving outputs of a batch of preprocessed images (inference mode)."""
    out = _float_outputs(model(images, training=False))
    result = {
        "final_avg_pool": out["final_avg_pool"],
        "proj_head_output": out["proj_head_output"],
    }
    if "logits_sup" in out:
        logits = out["logits_sup"]
        probabilities = tf.nn.softmax(logits, axis=-1)
        k = min(TOP_K, int(logits.shape[-1]))
        top = tf.math.top_k(probabilities, k=k)
        result.update(
            logits=logits,
            probabilities=probabilities,
            top_5_classes=tf.cast(top.indices, tf.int32),
            top_5_probabilities=top.values,
        )
    return result


def build_module(model: keras.Model, image_size: int) -> tuple[_ReusableModule, dict[str, Any]]:
    """The root object and the signatures of an export of ``model`` (a built SimCLRModel).

    ``model(images, training)`` must return the SimCLRModel dict of named outputs.
    """
    size = int(image_size)
    module = _ReusableModule()
    # Only the network's weights: no optimizer slots, no metric state.
    module.variables = list(model.weights)
    module.trainable_variables = list(model.trainable_weights)
    module.regularization_losses = []

    @tf.function
    def call(images: tf.Tensor, training: bool = False) -> dict[str, tf.Tensor]:
        outputs = _float_outputs(model(images, training=training))
        outputs["default"] = outputs["final_avg_pool"]
        return outputs

    any_size = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
    for training in (False, True):
        call.get_concrete_function(any_size, training=training)
    module.__call__ = call

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, "images")])
    def serve_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        lo = tf.reduce_min(images)
        hi = tf.reduce_max(images)
        with tf.control_dependencies(
            [
                tf.debugging.Assert(
                    tf.logical_and(lo >= -_RANGE_TOLERANCE, hi <= 1.0 + _RANGE_TOLERANCE),
                    [
                        f"{SERVING_IMAGES} expects float32 images in [0, 1]; got values in",
                        lo,
                        hi,
                        f"- divide 0-255 images by 255, or send encoded images to {SERVING_BYTES}.",
                    ],
                )
            ]
        ):
            images = tf.identity(images)
        return _serving_outputs(model, images)

    def decode(image_bytes: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        return tf.ensure_shape(augment.eval_view(image, size), [size, size, 3])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(
            decode,
            image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )
        return _serving_outputs(model, images)

    module.serve_images = serve_images
    module.serve_bytes = serve_bytes
    signatures = {
        SERVING_BYTES: serve_bytes.get_concrete_function(),
        SERVING_IMAGES: serve_images.get_concrete_function(),
    }
    return module, signatures


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _refuse_existing(export_dir: str, overwrite: bool) -> None:
    if tf.io.gfile.exists(export_dir) and not overwrite:
        raise ExportError(
            f"An export already exists at {export_dir}: pass --overwrite (overwrite=True) to "
            "replace it (run.py: or --noexport_saved_model to skip exporting; tools/export.py: "
            "or another --export_dir). The existing export was left unchanged."
        )


def _write_text(path: str, text: str) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def export_saved_model(
    model: keras.Model,
    export_dir: str,
    *,
    image_size: int,
    class_names: Sequence[str] | None = None,
    card: str | None = None,
    overwrite: bool = False,
) -> str:
    """Writes the serving + TF Hub SavedModel of ``model`` to ``export_dir``; returns it.

    The SavedModel is written to a temporary sibling folder and renamed into place when it is
    complete, so ``export_dir`` never holds half an export. An existing ``export_dir`` is
    replaced only with ``overwrite=True``.
    """
    export_dir = export_dir.rstrip("/")
    _refuse_existing(export_dir, overwrite)
    module, signatures = build_module(model, image_size)
    parent = os.path.dirname(export_dir) or "."
    tf.io.gfile.makedirs(parent)
    tmp = f"{export_dir}.partial-{uuid.uuid4().hex[:8]}"
    try:
        tf.saved_model.save(module, tmp, signatures=signatures)
        if card is not None:
            _write_text(os.path.join(tmp, MODEL_CARD), card)
        if class_names:
            _write_text(os.path.join(tmp, LABELS_FILE), "".join(f"{c}\n" for c in class_names))
        _refuse_existing(export_dir, overwrite)  # appeared while we were writing
        replace_folder(tmp, export_dir)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    logging.info("Exported SavedModel (serving + TF Hub) to %s", export_dir)
    return export_dir


def _export_steps(export_root: str) -> list[tuple[int, str]]:
    """(step, path) of the finished exports under ``export_root``, oldest first."""
    if not tf.io.gfile.isdir(export_root):
        return []
    found = []
    for name in tf.io.gfile.listdir(export_root):
        name = name.rstrip("/")
        path = os.path.join(export_root, name)
        if name.isdigit() and tf.io.gfile.isdir(path):
            found.append((int(name), path))
    return sorted(found)


def prune_exports(export_root: str, keep_max: int, keep: str | None = None) -> list[str]:
    """Deletes the oldest ``<step>`` exports beyond ``keep_max``; returns the deleted paths.

    ``keep`` (the export just written) is never deleted, even if older than the others.
    ``keep_max < 1`` keeps everything. Temporary ``*.partial-*`` folders are left alone: they
    may belong to an export still being written.
    """
    if keep_max < 1:
        return []
    exports = _export_steps(export_root)
    keep_norm = os.path.normpath(keep) if keep else None
    excess = len(exports) - keep_max
    deleted = []
    for _, path in exports:
        if excess <= 0:
            break
        if os.path.normpath(path) == keep_norm:
            continue
        tf.io.gfile.rmtree(path)
        deleted.append(path)
        excess -= 1
    for path in deleted:
        logging.info("Deleted old export %s (--keep_hub_module_max=%d)", path, keep_max)
    return deleted


# --------------------------------------------------------------------------------------------
# From a training run
# --------------------------------------------------------------------------------------------


def export_run(
    model: keras.Model,
    cfg: Config,
    model_dir: str,
    step: int,
    result: dict[str, Any] | None,
    class_names: Sequence[str] | None,
) -> str:
    """Exports ``model`` to ``model_dir/saved_model/<step>/`` and prunes old exports.

    Keeps at most ``cfg.keep_hub_module_max`` exports; refuses to replace an existing export of
    the same step unless ``cfg.overwrite``. Returns the export path.
    """
    root = model_dir_lib.export_root(model_dir)
    path = model_dir_lib.export_path(model_dir, step)
    _refuse_existing(path, cfg.overwrite)  # fail before any work
    copy = build.serving_copy(model, cfg)
    official = model_dir_lib.read_official(model_dir)
    card = model_card(
        copy, cfg, step=step, result=result, class_names=class_names, official=official
    )
    export_saved_model(
        copy,
        path,
        image_size=int(cfg.image_size),
        class_names=class_names if copy.supervised_head is not None else None,
        card=card,
        overwrite=cfg.overwrite,
    )
    prune_exports(root, cfg.keep_hub_module_max, keep=path)
    return path


def _class_names(cfg: Config, num_classes: int) -> tuple[str, ...] | None:
    """The dataset's class names if its metadata is reachable; else None (export still works)."""
    if not num_classes:
        return None
    try:
        names = tuple(sources.dataset_info(cfg.dataset, cfg.data_dir).class_names)
    except Exception as e:  # noqa: BLE001 - the names are a convenience, never a reason to fail
        logging.warning("Class names unavailable (%s); labels.txt will not be written.", e)
        return None
    return names if len(names) == num_classes else None


def export_from_model_dir(
    model_dir: str,
    checkpoint: str | None = None,
    export_dir: str | None = None,
    overwrite: bool = False,
) -> str:
    """Rebuilds the model of a run from ``flags.json``, restores a checkpoint, exports it.

    ``checkpoint`` defaults to the newest in ``model_dir``; ``export_dir`` to
    ``model_dir/saved_model/<step>``. No pruning: an explicit export is never deleted here.
    """
    run = restore.read_run(model_dir, checkpoint)
    path = (export_dir or model_dir_lib.export_path(model_dir, run.step)).rstrip("/")
    _refuse_existing(path, overwrite)  # fail before building anything
    model = restore.rebuild(run)
    class_names = _class_names(run.cfg, run.num_classes)
    result = model_dir_lib.read_result(model_dir, run.step)
    official = model_dir_lib.read_official(model_dir)
    card = model_card(
        model, run.cfg, step=run.step, result=result, class_names=class_names, official=official
    )
    return export_saved_model(
        model,
        path,
        image_size=int(run.cfg.image_size),
        class_names=class_names,
        card=card,
        overwrite=overwrite,
    )
