"""Whole train steps against the reference code's (google-research/simclr tf2/).

Each case starts from a checkpoint written by the reference code, takes the reference's training
steps on fixed inputs with our real step (``SimCLRModel.train_step`` driven by ``fit``, our LARS,
our weight-decay and exclusion rules, compiled by ``train.compile_model`` as run.py does) and
compares the inference outputs afterwards with the reference model's. The figure is

    max|ours_after - ref_after| / max|ref_after - ref_before|

per endpoint: the disagreement measured against the size of the steps' own effect (0 = the same
steps, 1 = as far off as taking no step). It catches the objective's scale, weight decay, which
variables LARS adapts, batch-norm moving statistics and the live probe all at once.

Cases: ../shared/official_checkpoints/<ckpt>/train_steps/ (their READMEs give the inputs and
settings) and tests/fixtures/reference_steps/ (more settings, made with the reference code; see
its README).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from conftest import require_shared

from simclr_tf import optim, train
from simclr_tf.official import load_official, restore_into

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "official_checkpoints"
TOLERANCE = 1e-3
ENDPOINTS = ("final_avg_pool", "proj_head_output", "logits_sup")

FIXTURES = REPO / "tests" / "fixtures" / "reference_steps"

# name -> (checkpoint folder, case, settings changed from the case's json, file of the reference
# outputs after the steps (None: the shared case's own npz), shift added to every input image,
# tolerance). The shared three_steps and finetune_two_steps cases are not here: float32 rounding
# grows so fast in them that the reference code itself, re-run, lands 0.22-0.30 (three_steps)
# and 3.8 (two fine-tuning steps) away from them (tests/fixtures/reference_steps/README.md).
CASES = {
    "r18_pretrain_one_step": ("tf2_ckpt_r18_cifar", "one_step", {}, None, 0.0, TOLERANCE),
    # Three pretraining steps: the reference code itself, with oneDNN's kernels or TF's, lands
    # 1.1e-3 / 1.3e-3 / 1.6e-3 from itself here, so 1e-3 is below what float32 can repeat; 1e-2
    # is 7x that and 1/70 of the halved objective's 0.69.
    "r18_pretrain_three_steps_lr0.1": (
        "tf2_ckpt_r18_cifar",
        "three_steps",
        {"learning_rate": 0.1, "weight_decay": 1e-4, "temperature": 0.5},
        "r18_pretrain_three_steps_lr0.1.npz",
        0.0,
        1e-2,
    ),
    # Centred images: with the shared [0, 1) images the first layers' batch-norm channels have
    # large means against their spread, and the reference's one-pass variance makes the step a
    # function of the CPU's rounding (its own two kernel sets land 7.6e-3 / 1.3e-2 apart; the
    # fixture made on another CPU 0.03-0.06 from both codes here); centred, they agree to 5e-5.
    "r50_sk1_finetune_one_step": (
        "tf2_ckpt_r50_sk1",
        "finetune_two_steps",
        {"steps": 1},
        "r50_sk1_finetune_one_step_centred.npz",
        -0.5,
        TOLERANCE,
    ),
}
IMAGE_KEYS = ("images", "view1", "view2", "probe_images")


def load_case(name: str) -> tuple[str, dict, dict[str, np.ndarray]]:
    """(checkpoint folder path, settings, arrays: inputs and reference outputs) of a case."""
    folder, case, changes, outputs, shift, _ = CASES[name]
    base = require_shared(SHARED / folder / "train_steps", "reference train-step fixtures")
    settings = {**json.loads((base / f"{case}.json").read_text()), **changes}
    with np.load(base / f"{case}.npz") as data:
        arrays = {k: data[k] for k in data.files}
    for key in IMAGE_KEYS:
        if key in arrays:
            arrays[key] = (arrays[key] + shift).astype(np.float32)
    if outputs is not None:  # the reference's outputs (and, shifted, its before) of these steps
        with np.load(FIXTURES / outputs) as data:
            arrays.update({k: data[k] for k in data.files})
    return str(SHARED / folder), settings, arrays


def case_model(checkpoint: str, settings: dict, image_size: int, moments: str = "reference"):
    """Our model of the checkpoint with the case's settings, compiled as run.py compiles it.

    ``moments``: ``--batch_norm_moments``; "reference" computes the batch variance with the
    reference's float32 arithmetic, so that only a difference of rule can remain.
    """
    _, info = load_official(checkpoint)
    cfg = info.config.replace(
        train_mode=settings["train_mode"],
        fine_tune_after_block=settings.get("fine_tune_after_block", -1),
        ft_proj_selector=settings.get("ft_proj_selector", 0),
        lineareval_while_pretraining=settings.get("lineareval_while_pretraining", True),
        temperature=settings.get("temperature", 0.1),
        hidden_norm=settings.get("hidden_norm", True),
        weight_decay=settings["weight_decay"],
        momentum=settings["momentum"],
        optimizer=settings["optimizer"],
        batch_norm_decay=settings["batch_norm_decay"],
        global_bn=settings["global_bn"],
        learning_rate=settings["learning_rate"],
        train_batch_size=settings["batch"],
        image_size=image_size,
        augment_on="host",
        mixed_precision="none",
        batch_norm_moments=moments,
    )
    train.set_precision(cfg)
    model = train.build_model(cfg, info.head.num_classes)
    # A constant learning rate: the optimizer run.py builds, without the schedule around it.
    opt = optim.build_optimizer(cfg.optimizer, cfg.learning_rate, cfg.momentum, cfg.weight_decay)
    train.compile_model(cfg, model, opt)
    restore_into(model, checkpoint, ("encoder", "projection_head", "supervised_head"))
    return model


def case_batch(settings: dict, arrays: dict[str, np.ndarray]):
    """The case's one batch as run.py's input pipeline gives it to the train step."""
    labels = tf.constant(arrays["labels"], tf.int64)
    if settings["train_mode"] == "finetune":
        return tf.constant(arrays["images"]), labels
    return (tf.constant(arrays["view1"]), tf.constant(arrays["view2"])), labels


def run_our_steps(
    checkpoint: str, settings: dict, arrays: dict[str, np.ndarray], moments: str = "reference"
):
    """Our model after the case's steps from the checkpoint, and its outputs on the probe."""
    model = case_model(checkpoint, settings, int(arrays["probe_images"].shape[1]), moments)
    data = tf.data.Dataset.from_tensors(case_batch(settings, arrays)).repeat(settings["steps"])
    model.fit(data, epochs=1, steps_per_epoch=settings["steps"], verbose=0, shuffle=False)
    assert int(model.optimizer.iterations.numpy()) == settings["steps"]
    out = model(tf.constant(arrays["probe_images"]), training=False)
    return model, {k: np.asarray(out[k]) for k in ENDPOINTS}


def step_figures(ours: dict, arrays: dict[str, np.ndarray]) -> dict[str, float]:
    figures = {}
    for key in ENDPOINTS:
        after, before = arrays[f"after_{key}"], arrays[f"before_{key}"]
        figures[key] = float(np.abs(ours[key] - after).max() / np.abs(after - before).max())
    return figures


@pytest.mark.parametrize("name", sorted(CASES))
def test_train_steps_equal_the_reference(name):
    """With the reference's batch-norm arithmetic, our steps are the reference's to float noise.

    Measured: 5e-4 (r18 one step; the reference code re-run lands the same 5e-4 from this
    fixture), 4e-3 (three steps), 2e-5 (r50-SK fine-tuning step). Before the objective became
    the sum of the two directions: 0.43 (r18 one step), 0.69 (three steps).
    """
    checkpoint, settings, arrays = load_case(name)
    _, ours = run_our_steps(checkpoint, settings, arrays)
    figures = step_figures(ours, arrays)
    assert max(figures.values()) <= CASES[name][-1], figures


def test_default_batch_norm_step_is_the_reference_step_up_to_rounding():
    """The default (exact) batch-norm variance: the same step but for float rounding.

    The reference's one-pass E[x^2] - E[x]^2 rounds differently from the fused kernel, and the
    step amplifies it (7e-3 measured); a difference of rule is far larger (the halved objective
    gave 0.43).
    """
    checkpoint, settings, arrays = load_case("r18_pretrain_one_step")
    _, ours = run_our_steps(checkpoint, settings, arrays, moments="exact")
    figures = step_figures(ours, arrays)
    assert max(figures.values()) <= 2e-2, figures
