"""The model card (``README.md``) of an export: a Markdown template filled from the run.

The layout follows TF Hub / Kaggle Models model cards: the metadata comments, then overview,
inputs, outputs, usage, training, evaluation, limitations and citation. Everything that changes
between runs is a ``$placeholder`` of :data:`TEMPLATE`; :func:`model_card` computes the values.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from string import Template
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from simclr_tf.config import Config

# The endpoints of the hub ``__call__`` and the number of top classes served; export.py builds
# the SavedModel with the same values.
ENDPOINTS = (
    "initial_conv",
    "initial_max_pool",
    "block_group1",
    "block_group2",
    "block_group3",
    "block_group4",
    "final_avg_pool",
)
TOP_K = 5

TEMPLATE = Template("""\
# SimCLR $arch $title_suffix

<!-- task: image-feature-vector -->
<!-- network-architecture: resnet-$resnet_depth -->
<!-- dataset: $dataset -->
<!-- format: saved_model_2 -->
<!-- fine-tunable: true -->
<!-- language: en -->

## Overview

A $arch encoder trained with SimCLR (Chen et al. 2020, arXiv:2002.05709; SimCLRv2 \
arXiv:2006.10029) $origin, exported at step $step ($date). $params parameters (including \
batch-norm statistics).$distill_note

The representation to use downstream is `final_avg_pool` (the encoder output h, before the \
projection head): linear classifiers on h beat those on the projection by over 10 points \
(SimCLR paper, Figure 8).

One folder serves TF Serving (signatures below) and TF Hub / Kaggle Models (the Reusable \
SavedModel API: `hub.load`, `hub.KerasLayer(..., trainable=True)`).

## Inputs

- `serving_default`: `image_bytes`, `tf.string [N]` encoded JPEG/PNG images of any size, \
preprocessed as in evaluation (resized to ${size}x${size}$crop_note).
- `serving_images`: `images`, `float32 [N, $size, $size, 3]`, RGB in [0, 1].
- `__call__(images, training=False)`: `float32 [N, H, W, 3]`, RGB in [0, 1], any H, W \
(trained at ${size}x${size}).

## Outputs

| output | shape | dtype | meaning |
|---|---|---|---|
| `final_avg_pool` | $h_shape | float32 | representation h (`default` in `__call__`) |
| `proj_head_output` | $z_shape | float32 | projection z used by the contrastive loss |
$head_rows
`__call__` returns a dict with every encoder endpoint ($endpoints), `proj_head_input`, \
`proj_head_output`$logits_sup and `default` (= `final_avg_pool`).

$class_ids## Usage

```python
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras  # tensorflow_hub's KerasLayer is a tf_keras layer

module = hub.load("PATH")  # or tf.saved_model.load
images = tf.random.uniform([8, $size, $size, 3])  # float32 in [0, 1]
features = module(images)["default"]  # [8, feature_dim]

# Fine-tuning: every layer is trainable; batch norm runs in training mode in fit().
inputs = tf_keras.Input([$size, $size, 3])
h = hub.KerasLayer("PATH", trainable=True, output_key="default")(inputs)
model = tf_keras.Model(inputs, tf_keras.layers.Dense(NUM_CLASSES)(h))

# Serving (same preprocessing as evaluation):
serve = tf.saved_model.load("PATH").signatures["serving_default"]
out = serve(image_bytes=tf.constant([open("cat.jpg", "rb").read()]))
```

TF Serving REST: `POST /v1/models/simclr:predict` with \
`{"instances": [{"image_bytes": {"b64": "..."}}]}`.

## Training

$training
<details><summary>All flags</summary>

```json
$all_flags
```

</details>

## Evaluation

$evaluation
## Limitations

$trained_on at ${size}x${size} pixels; representations of images far from that \
distribution or size are untested. Not for decisions about people.

## Citation

```bibtex
@inproceedings{chen2020simple,
  title={A Simple Framework for Contrastive Learning of Visual Representations},
  author={Chen, Ting and Kornblith, Simon and Norouzi, Mohammad and Hinton, Geoffrey},
  booktitle={International Conference on Machine Learning},
  year={2020}
}
```
""")

# The flags shown in the card's table (all flags are in the collapsed JSON below it).
CARD_FLAGS = (
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
    "teacher_checkpoint",
    "distill_temperature",
    "distill_label_weight",
    "train_batch_size",
    "train_epochs",
    "train_steps",
    "optimizer",
    "learning_rate",
    "learning_rate_scaling",
    "weight_decay",
    "temperature",
    "color_jitter_strength",
    "color_jitter_impl",
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


def _head_rows(cfg: Config, logits: tf.Tensor) -> str:
    """The table rows of the supervised head's outputs."""
    n = int(logits.shape[-1])
    k = min(TOP_K, n)
    probe = (
        "linear probe trained on stop_gradient(h) during pretraining"
        if cfg.train_mode == "pretrain"
        else "supervised head"
    )
    clamped = " (k clamped to the number of classes)" if k < TOP_K else ""
    return (
        f"| `logits` | [N, {n}] | float32 | {probe} |\n"
        f"| `probabilities` | [N, {n}] | float32 | softmax of `logits` |\n"
        f"| `top_5_classes` | [N, {k}] | int32 | class ids, most likely first{clamped} |\n"
        f"| `top_5_probabilities` | [N, {k}] | float32 | their probabilities |\n"
    )


def _evaluation(cfg: Config, step: int, result: dict[str, Any] | None) -> str:
    """The Evaluation section's body: the result's metrics and JSON, or a note without one."""
    if not result:
        return "No evaluation result was recorded for this step.\n"
    head = (
        "linear probe trained during pretraining"
        if cfg.train_mode == "pretrain"
        else "supervised head"
    )
    lines = [
        f"On `{result.get('dataset', cfg.dataset)}` split "
        f"`{result.get('eval_split', cfg.eval_split)}`, {result.get('num_examples', '?')} "
        f"examples, step {result.get('global_step', step)} ({head}):",
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
    return "\n".join(lines)


def _distill_note(cfg: Config) -> str:
    """Names the teacher of a distilled student (SimCLRv2 step 3); empty for other runs."""
    if cfg.train_mode != "distill":
        return ""
    labels = (
        f"plus labels on {_percent(cfg.train_data_fraction)} of them with weight "
        f"{cfg.distill_label_weight:g}"
        if cfg.distill_label_weight
        else "without their labels"
    )
    return (
        f"\n\nThis is a distilled student: trained on every `{cfg.train_split}` image to match "
        f"the predictions of the teacher `{cfg.teacher_checkpoint}` (distillation temperature "
        f"{cfg.distill_temperature:g}), {labels}."
    )


def _provenance(cfg: Config, official: dict[str, Any] | None) -> dict[str, str]:
    """The template values that say who trained the weights and on what.

    A converted reference checkpoint records neither its dataset nor its training flags: the
    card must not present this package's defaults as how it was trained.
    """
    fraction_note = ""
    if cfg.train_data_fraction < 1.0:
        fraction_note = f" ({_percent(cfg.train_data_fraction)} of the labels, class-balanced)"
    if official is None:
        rows = "".join(f"| `--{k}` | `{_flag_value(getattr(cfg, k))}` |\n" for k in CARD_FLAGS)
        return {
            "title_suffix": f"on {cfg.dataset}",
            "origin": f"using simclr_tf (training mode `{cfg.train_mode}`)",
            "training": (
                f"Data: `{cfg.dataset}` split `{cfg.train_split}`{fraction_note}. Main flags:\n\n"
                f"| flag | value |\n|---|---|\n{rows}"
            ),
            "trained_on": f"Trained on `{cfg.dataset}` only,",
        }
    ema = " (its EMA weights)" if official.get("use_ema") else ""
    return {
        "title_suffix": "converted from the reference SimCLR code",
        "origin": (
            f"by the reference code (google-research/simclr): its `{official.get('format')}` "
            f"`{official.get('source')}`{ema} was converted by simclr_tf, weights unchanged"
        ),
        "training": (
            "Trained by the reference code; the checkpoint records neither its dataset nor its "
            "training flags (see the SimCLR / SimCLRv2 papers for the published settings). "
            "Read from the checkpoint: "
            f"{official.get('summary', 'the architecture')}. The JSON below is the "
            "configuration simclr_tf rebuilt the model with, not how it was trained.\n"
        ),
        "trained_on": "Trained on the reference checkpoint's dataset (not recorded in it),",
    }


def model_card(
    model: keras.Model,
    cfg: Config,
    *,
    step: int,
    result: dict[str, Any] | None,
    class_names: Sequence[str] | None,
    official: dict[str, Any] | None = None,
) -> str:
    """The Markdown model card of ``model`` (a built SimCLRModel) exported at ``step``.

    ``official``: the record of a converted reference checkpoint (``official.json``); the
    card then names the source instead of describing a simclr_tf training run.
    """
    size = int(cfg.image_size)
    outputs = model(tf.zeros([1, size, size, 3]), training=False)
    outputs = {k: tf.cast(v, tf.float32) for k, v in outputs.items()}
    has_head = "logits_sup" in outputs
    class_ids = ""
    if has_head and class_names:
        ids = ", ".join(f"{i} `{c}`" for i, c in enumerate(class_names))
        class_ids = f"Class ids (also in `labels.txt`, line i = id i): {ids}.\n\n"
    return TEMPLATE.substitute(
        arch=_architecture(cfg),
        dataset=cfg.dataset if official is None else "unknown",
        resnet_depth=cfg.resnet_depth,
        step=int(step),
        date=datetime.date.today().isoformat(),
        distill_note=_distill_note(cfg),
        params=f"{int(sum(np.prod(v.shape) for v in model.weights)):,}",
        size=size,
        crop_note=", after an 87.5% centre crop" if size > 32 else "",
        h_shape=_shape(outputs["final_avg_pool"]),
        z_shape=_shape(outputs["proj_head_output"]),
        head_rows=_head_rows(cfg, outputs["logits_sup"]) if has_head else "",
        endpoints=", ".join(f"`{e}`" for e in ENDPOINTS),
        logits_sup=", `logits_sup`" if has_head else "",
        class_ids=class_ids,
        all_flags=cfg.to_json(),
        evaluation=_evaluation(cfg, step, result),
        **_provenance(cfg, official),
    )
