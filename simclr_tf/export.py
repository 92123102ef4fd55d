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

The exported network is a float32 copy of the trained one with every layer trainable (mixed
precision, frozen stages of linear evaluation and distribution wrappers are dropped), so
consumers get float32 outputs and choose what to freeze themselves.

Safety: an export is written to a temporary sibling folder and renamed into place when complete,
and an existing export is replaced only with ``overwrite=True`` (``--overwrite``).
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from simclr_tf import checkpoints
from simclr_tf import model_dir as model_dir_lib
from simclr_tf.config import Config
from simclr_tf.data import augment, sources
from simclr_tf.errors import UserError

__all__ = [
    "ENDPOINTS",
    "EXPORT_SUBDIR",
    "ExportError",
    "LoadedExport",
    "SERVING_BYTES",
    "SERVING_IMAGES",
    "build_module",
    "export_from_model_dir",
    "export_run",
    "export_saved_model",
    "load_export",
    "model_card",
    "prune_exports",
    "serving_copy",
]

SERVING_BYTES = "serving_default"
SERVING_IMAGES = "serving_images"
EXPORT_SUBDIR = model_dir_lib.EXPORT_SUBDIR
MODEL_CARD = "README.md"
LABELS_FILE = "labels.txt"
TOP_K = 5
# Encoder endpoints of the hub __call__, keyed as in the reference SimCLR code.
ENDPOINTS = (
    "initial_conv",
    "initial_max_pool",
    "block_group1",
    "block_group2",
    "block_group3",
    "block_group4",
    "final_avg_pool",
)
# serving_images tolerates float round-off just outside [0, 1], not 0-255 images.
_RANGE_TOLERANCE = 1e-3


class ExportError(UserError, RuntimeError):
    """An export that cannot be written or used as asked; the message names the fix."""


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
                        "- divide 0-255 images by 255, or send encoded images to "
                        f"{SERVING_BYTES}.",
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
    tag = uuid.uuid4().hex[:8]
    tmp = f"{export_dir}.partial-{tag}"
    try:
        tf.saved_model.save(module, tmp, signatures=signatures)
        if card is not None:
            _write_text(os.path.join(tmp, MODEL_CARD), card)
        if class_names:
            _write_text(os.path.join(tmp, LABELS_FILE), "".join(f"{c}\n" for c in class_names))
        _move_into_place(tmp, export_dir, overwrite, tag)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    logging.info("Exported SavedModel (serving + TF Hub) to %s", export_dir)
    return export_dir


def _move_into_place(tmp: str, export_dir: str, overwrite: bool, tag: str) -> None:
    """Renames the finished ``tmp`` to ``export_dir``, replacing an old export if allowed."""
    if not tf.io.gfile.exists(export_dir):
        tf.io.gfile.rename(tmp, export_dir)
        return
    _refuse_existing(export_dir, overwrite)  # appeared while we were writing
    old = f"{export_dir}.replaced-{tag}"
    tf.io.gfile.rename(export_dir, old)
    try:
        tf.io.gfile.rename(tmp, export_dir)
    except BaseException:
        tf.io.gfile.rename(old, export_dir)
        raise
    tf.io.gfile.rmtree(old)


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


def _export_config(cfg: Config) -> Config:
    """The config of the exported network: float32, every layer trainable, no device augment."""
    return cfg.replace(
        fine_tune_after_block=-1,
        mixed_precision="none",
        augment_on="host",
        micro_batch_size=0,
    )


def _build_export_model(cfg: Config, num_classes: int) -> keras.Model:
    from simclr_tf import train  # the training stack is only needed to rebuild a model

    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        model = train.build_model(_export_config(cfg), num_classes)
        size = int(cfg.image_size)
        model(tf.zeros([1, size, size, 3]), training=False)  # creates the variables
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    return model


def serving_copy(model: keras.Model, cfg: Config) -> keras.Model:
    """A float32, fully trainable copy of ``model`` outside any distribution strategy."""
    copy = _build_export_model(cfg, int(getattr(model, "num_classes", 0)))
    src, dst = model.weights, copy.weights
    shapes_src = [tuple(v.shape) for v in src]
    shapes_dst = [tuple(v.shape) for v in dst]
    if shapes_src != shapes_dst:
        raise ExportError(
            f"The model to export ({len(src)} weights) does not match the network the flags "
            f"describe ({len(dst)} weights): export with the flags the model was built with."
        )
    for d, s in zip(dst, src, strict=True):
        d.assign(keras.ops.convert_to_numpy(s))
    return copy


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
    copy = serving_copy(model, cfg)
    card = model_card(copy, cfg, step=step, result=result, class_names=class_names)
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


def _num_classes(cfg: Config, flags_dict: dict[str, Any], model_dir: str) -> int:
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
            f"is not readable here ({e}): add \"num_classes\": N to that flags.json."
        ) from e


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
    flags_dict = model_dir_lib.read_flags(model_dir)
    if flags_dict is None:
        raise ExportError(
            f"No {model_dir_lib.FLAGS_FILE} in {model_dir}: point --model_dir at the folder of a "
            "run started with run.py (it records the flags needed to rebuild the model)."
        )
    cfg = model_dir_lib.config_from_flags(flags_dict)
    if not cfg.image_size:
        raise ExportError(
            f"{model_dir}/{model_dir_lib.FLAGS_FILE} has no resolved image_size: it was not "
            "written by a training run of run.py."
        )
    prefix = checkpoints.resolve_checkpoint_path(checkpoint or model_dir)
    step = checkpoints.checkpoint_step(prefix)
    path = (export_dir or model_dir_lib.export_path(model_dir, step)).rstrip("/")
    _refuse_existing(path, overwrite)
    num_classes = _num_classes(cfg, flags_dict, model_dir)
    model = _build_export_model(cfg, num_classes)
    untracked = checkpoints.untracked_variables(model)
    if untracked:
        # A restore would silently leave these at their random initial values.
        raise ExportError(
            f"{len(untracked)} variables of the network are not reachable by checkpoints (a "
            f"layer held only in a Python list?), e.g. {untracked[:3]}; their trained values "
            "cannot be restored. Fix the model code so every sub-layer is tracked."
        )
    checkpoints.restore_model_weights(model, prefix)
    class_names = _class_names(cfg, num_classes)
    result = model_dir_lib.read_result(model_dir, step)
    card = model_card(model, cfg, step=step, result=result, class_names=class_names)
    return export_saved_model(
        model,
        path,
        image_size=int(cfg.image_size),
        class_names=class_names,
        card=card,
        overwrite=overwrite,
    )


# --------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------

_CARD_FLAGS = (
    "dataset",
    "train_split",
    "train_data_fraction",
    "train_mode",
    "image_size",
    "resnet_depth",
    "width_multiplier",
    "sk_ratio",
    "se_ratio",
    "cifar_stem",
    "proj_head_mode",
    "num_proj_layers",
    "proj_out_dim",
    "ft_proj_selector",
    "fine_tune_after_block",
    "train_batch_size",
    "train_epochs",
    "train_steps",
    "optimizer",
    "learning_rate",
    "learning_rate_scaling",
    "weight_decay",
    "temperature",
    "color_jitter_strength",
    "use_blur",
    "seed",
)


def _percent(value: Any) -> str:
    return f"{100.0 * float(value):.2f}%"


def _shape(x: tf.Tensor) -> str:
    """``[N, ...]``: the batch axis of a sample output, written as N."""
    return "[" + ", ".join(["N", *(str(d) for d in x.shape.as_list()[1:])]) + "]"


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


def _architecture(cfg: Config) -> str:
    sk = f", SK {cfg.sk_ratio:g}" if cfg.sk_ratio else ""
    se = f", SE {cfg.se_ratio:g}" if cfg.se_ratio else ""
    stem = ", CIFAR stem" if cfg.cifar_stem else ""
    return f"ResNet-{cfg.resnet_depth} ({cfg.width_multiplier:g}x{sk}{se}{stem})"


def model_card(
    model: keras.Model,
    cfg: Config,
    *,
    step: int,
    result: dict[str, Any] | None,
    class_names: Sequence[str] | None,
) -> str:
    """A Markdown model card: overview, inputs, outputs, usage, training, evaluation."""
    size = int(cfg.image_size)
    sample = tf.zeros([1, size, size, 3])
    outputs = _float_outputs(model(sample, training=False))
    has_head = "logits_sup" in outputs
    arch = _architecture(cfg)
    params = int(sum(np.prod(v.shape) for v in model.weights))
    title = f"SimCLR {arch} on {cfg.dataset}"
    lines = [
        f"# {title}",
        "",
        "<!-- task: image-feature-vector -->",
        f"<!-- network-architecture: resnet-{cfg.resnet_depth} -->",
        f"<!-- dataset: {cfg.dataset} -->",
        "<!-- format: saved_model_2 -->",
        "<!-- fine-tunable: true -->",
        "<!-- language: en -->",
        "",
        "## Overview",
        "",
        f"A {arch} encoder trained with SimCLR (Chen et al. 2020, arXiv:2002.05709; SimCLRv2 "
        f"arXiv:2006.10029) using simclr_tf, exported at step {int(step)} "
        f"({datetime.date.today().isoformat()}). Training mode: `{cfg.train_mode}`. "
        f"{params:,} parameters (including batch-norm statistics).",
        "",
        "The representation to use downstream is `final_avg_pool` (the encoder output h, before "
        "the projection head): linear classifiers on h beat those on the projection by over "
        "10 points (SimCLR paper, Figure 8).",
        "",
        "One folder serves TF Serving (signatures below) and TF Hub / Kaggle Models (the "
        "Reusable SavedModel API: `hub.load`, `hub.KerasLayer(..., trainable=True)`).",
        "",
        "## Inputs",
        "",
        f"- `serving_default`: `image_bytes`, `tf.string [N]` encoded JPEG/PNG images of any "
        f"size, preprocessed as in evaluation (resized to {size}x{size}"
        f"{', after an 87.5% centre crop' if size > 32 else ''}).",
        f"- `serving_images`: `images`, `float32 [N, {size}, {size}, 3]`, RGB in [0, 1].",
        "- `__call__(images, training=False)`: `float32 [N, H, W, 3]`, RGB in [0, 1], any H, W "
        f"(trained at {size}x{size}).",
        "",
        "## Outputs",
        "",
        "| output | shape | dtype | meaning |",
        "|---|---|---|---|",
        f"| `final_avg_pool` | {_shape(outputs['final_avg_pool'])} | float32 | representation h "
        "(`default` in `__call__`) |",
        f"| `proj_head_output` | {_shape(outputs['proj_head_output'])} | float32 | projection z "
        "used by the contrastive loss |",
    ]
    if has_head:
        n = int(outputs["logits_sup"].shape[-1])
        k = min(TOP_K, n)
        probe = (
            "linear probe trained on stop_gradient(h) during pretraining"
            if cfg.train_mode == "pretrain"
            else "supervised head"
        )
        lines += [
            f"| `logits` | [N, {n}] | float32 | {probe} |",
            f"| `probabilities` | [N, {n}] | float32 | softmax of `logits` |",
            f"| `top_5_classes` | [N, {k}] | int32 | class ids, most likely first"
            f"{' (k clamped to the number of classes)' if k < TOP_K else ''} |",
            f"| `top_5_probabilities` | [N, {k}] | float32 | their probabilities |",
        ]
    lines += [
        "",
        "`__call__` returns a dict with every encoder endpoint ("
        + ", ".join(f"`{e}`" for e in ENDPOINTS)
        + "), `proj_head_input`, `proj_head_output`"
        + (", `logits_sup`" if has_head else "")
        + " and `default` (= `final_avg_pool`).",
        "",
    ]
    if has_head and class_names:
        lines += [
            "Class ids (also in `labels.txt`, line i = id i): "
            + ", ".join(f"{i} `{c}`" for i, c in enumerate(class_names))
            + ".",
            "",
        ]
    lines += [
        "## Usage",
        "",
        "```python",
        "import tensorflow as tf",
        "import tensorflow_hub as hub",
        "import tf_keras  # tensorflow_hub's KerasLayer is a tf_keras layer",
        "",
        'module = hub.load("PATH")  # or tf.saved_model.load',
        f"images = tf.random.uniform([8, {size}, {size}, 3])  # float32 in [0, 1]",
        'features = module(images)["default"]  # [8, feature_dim]',
        "",
        "# Fine-tuning: every layer is trainable; batch norm runs in training mode in fit().",
        f"inputs = tf_keras.Input([{size}, {size}, 3])",
        'h = hub.KerasLayer("PATH", trainable=True, output_key="default")(inputs)',
        "model = tf_keras.Model(inputs, tf_keras.layers.Dense(NUM_CLASSES)(h))",
        "",
        "# Serving (same preprocessing as evaluation):",
        'serve = tf.saved_model.load("PATH").signatures["serving_default"]',
        'out = serve(image_bytes=tf.constant([open("cat.jpg", "rb").read()]))',
        "```",
        "",
        "TF Serving REST: `POST /v1/models/simclr:predict` with "
        '`{"instances": [{"image_bytes": {"b64": "..."}}]}`.',
        "",
        "## Training",
        "",
        f"Data: `{cfg.dataset}` split `{cfg.train_split}`"
        + (
            f" ({_percent(cfg.train_data_fraction)} of the labels, class-balanced)"
            if cfg.train_data_fraction < 1.0
            else ""
        )
        + ". Main flags:",
        "",
        "| flag | value |",
        "|---|---|",
    ]
    lines += [f"| `--{k}` | `{_flag_value(getattr(cfg, k))}` |" for k in _CARD_FLAGS]
    lines += [
        "",
        "<details><summary>All flags</summary>",
        "",
        "```json",
        cfg.to_json(),
        "```",
        "",
        "</details>",
        "",
        "## Evaluation",
        "",
    ]
    if result:
        lines += [
            f"On `{result.get('dataset', cfg.dataset)}` split "
            f"`{result.get('eval_split', cfg.eval_split)}`, "
            f"{result.get('num_examples', '?')} examples, step {result.get('global_step', step)}"
            f" ({'linear probe trained during pretraining' if cfg.train_mode == 'pretrain' else 'supervised head'}):",  # noqa: E501
            "",
            "| metric | value |",
            "|---|---|",
        ]
        for key in ("label_top_1_accuracy", "label_top_5_accuracy"):
            if key in result:
                lines.append(f"| {key.replace('label_', '')} | {_percent(result[key])} |")
        if "eval_loss" in result:
            lines.append(f"| eval_loss | {float(result['eval_loss']):.4f} |")
        lines += ["", "```json", json.dumps(result, indent=2, sort_keys=True), "```", ""]
    else:
        lines += ["No evaluation result was recorded for this step.", ""]
    lines += [
        "## Limitations",
        "",
        f"Trained on `{cfg.dataset}` only, at {size}x{size} pixels; representations of images "
        "far from that distribution or size are untested. Not for decisions about people.",
        "",
        "## Citation",
        "",
        "```bibtex",
        "@inproceedings{chen2020simple,",
        "  title={A Simple Framework for Contrastive Learning of Visual Representations},",
        "  author={Chen, Ting and Kornblith, Simon and Norouzi, Mohammad and Hinton, Geoffrey},",
        "  booktitle={International Conference on Machine Learning},",
        "  year={2020}",
        "}",
        "```",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


class LoadedExport:
    """A loaded export whose entry points check their inputs and name the fix on misuse.

    Attributes: ``module`` (the raw ``tf.saved_model.load`` object), ``image_size``,
    ``class_names`` (from ``labels.txt``, or None).
    """

    def __init__(self, path: str):
        self.path = path
        self.module = tf.saved_model.load(path)
        missing = [s for s in (SERVING_BYTES, SERVING_IMAGES) if s not in self.module.signatures]
        if missing:
            raise ExportError(
                f"{path} is not a simclr_tf export (no {missing} signature): export it with "
                "tools/export.py."
            )
        spec = self.module.signatures[SERVING_IMAGES].structured_input_signature[1]["images"]
        self.image_size = int(spec.shape[1])
        labels = os.path.join(path, LABELS_FILE)
        self.class_names: tuple[str, ...] | None = None
        if tf.io.gfile.exists(labels):
            with tf.io.gfile.GFile(labels) as f:
                self.class_names = tuple(line.rstrip("\n") for line in f if line.strip())

    def _images(self, images: Any, what: str, size: int | None) -> tf.Tensor:
        x = tf.convert_to_tensor(images)
        if not x.dtype.is_floating:
            raise ExportError(
                f"{what} expects float32 images in [0, 1]; got dtype {x.dtype.name}. Convert "
                "with tf.image.convert_image_dtype(images, tf.float32) (divides uint8 by 255)"
                + (f", or pass encoded bytes to {SERVING_BYTES}." if size else ".")
            )
        x = tf.cast(x, tf.float32)
        shape = x.shape.as_list()
        if len(shape) != 4 or shape[-1] != 3:
            raise ExportError(
                f"{what} expects a batch of RGB images [N, H, W, 3]; got shape {shape}. Add a "
                "batch axis with images[None] for one image; drop alpha with images[..., :3]."
            )
        if size is not None and shape[1:3] != [size, size]:
            raise ExportError(
                f"{what} expects images of {size}x{size} (this export's image_size); got "
                f"{shape[1]}x{shape[2]}. Resize with simclr_tf.data.augment.eval_view(images, "
                f"{size}), call the module directly (any size), or send encoded images to "
                f"{SERVING_BYTES}."
            )
        return x

    def __call__(self, images: Any, training: bool = False) -> dict[str, tf.Tensor]:
        """The hub ``__call__``: every endpoint plus ``default``."""
        return self.module(self._images(images, "__call__", None), training=bool(training))

    def serve_images(self, images: Any) -> dict[str, tf.Tensor]:
        """The ``serving_images`` signature on float images of the export's size."""
        x = self._images(images, SERVING_IMAGES, self.image_size)
        return self.module.signatures[SERVING_IMAGES](images=x)

    def serve_bytes(self, image_bytes: Any) -> dict[str, tf.Tensor]:
        """The ``serving_default`` signature on a batch of encoded images."""
        if isinstance(image_bytes, (bytes, str)):
            raise ExportError(
                f"{SERVING_BYTES} expects a batch of encoded images; got a single one. Pass "
                "[image_bytes]."
            )
        x = tf.convert_to_tensor(image_bytes)
        if x.dtype != tf.string or x.shape.rank != 1:
            raise ExportError(
                f"{SERVING_BYTES} expects tf.string [N] (encoded JPEG/PNG bytes); got "
                f"{x.dtype.name} {x.shape.as_list()}. Read files with tf.io.read_file or "
                f"open(path, 'rb').read(); send decoded float images to {SERVING_IMAGES}."
            )
        return self.module.signatures[SERVING_BYTES](image_bytes=x)


def load_export(path: str) -> LoadedExport:
    """Loads an export with input checks that name the fix (see :class:`LoadedExport`)."""
    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        raise ExportError(
            f"No SavedModel at {path} (no saved_model.pb): pass a folder such as "
            f"MODEL_DIR/{EXPORT_SUBDIR}/<step>."
        )
    return LoadedExport(path)
