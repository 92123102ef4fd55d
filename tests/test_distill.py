"""--train_mode=distill (SimCLRv2 step 3): loss, frozen teacher, fixed point, replicas, run.py.

References are independent of the code under test: the loss and its gradient in NumPy, the
closed form of the fixed point (a student equal to its teacher has loss H(p_teacher) and zero
gradient at temperature 1), the same steps on one device, and the files a run.py subprocess
leaves in its model_dir.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from conftest import tiny_config

from simclr_tf import atomic, checkpoints, config, distribute, restore, train
from simclr_tf.data import pipeline, sources
from simclr_tf.models import distill

REPO = pathlib.Path(__file__).resolve().parents[1]
IMAGE = 16
NUM_CLASSES = 5
GLOBAL_BATCH = 8
STEPS = 2
INFO = types.SimpleNamespace(num_classes=NUM_CLASSES)
# This file's settings over conftest.TINY_CONFIG.
CASE = dict(
    dataset="image_folder",
    image_size=IMAGE,
    eval_split="test",
    seed=3,
    train_batch_size=GLOBAL_BATCH,
    train_steps=STEPS,
    learning_rate=0.5,
    learning_rate_scaling="linear",
    optimizer="momentum",
    weight_decay=0.0,
    eval_batch_size=4,
)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ------------------------------------------------------------------------------------ the loss


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0, 2.0, 4.0])
def test_loss_and_gradient_match_numpy(temperature):
    rng = np.random.default_rng(int(temperature * 10))
    t = rng.normal(0, 3, (6, NUM_CLASSES)).astype(np.float32)
    s = rng.normal(0, 3, (6, NUM_CLASSES)).astype(np.float32)
    labels = np.array([2, -1, 0, -1, 4, 1], np.int32)
    w = 0.3

    mask = (labels >= 0).astype(np.float64)
    p_t = _softmax(t.astype(np.float64) / temperature)
    log_p_s = np.log(_softmax(s.astype(np.float64) / temperature))
    want_distill = -(p_t * log_p_s).sum(-1)
    p_s1 = _softmax(s.astype(np.float64))
    want_ce = -np.log(p_s1[np.arange(6), np.maximum(labels, 0)]) * mask
    want = (1 - w) * want_distill + w * want_ce
    onehot = np.eye(NUM_CLASSES)[np.maximum(labels, 0)]
    want_grad = (1 - w) * (_softmax(s / temperature) - p_t) / temperature + w * mask[:, None] * (
        p_s1 - onehot
    )

    t_var, s_var = tf.Variable(t), tf.Variable(s)
    with tf.GradientTape() as tape:
        terms = distill.distillation_terms(t_var, s_var, labels, temperature, w)
        total = tf.reduce_sum(terms.objective)
    grad_s, grad_t = tape.gradient(total, [s_var, t_var])
    np.testing.assert_allclose(terms.distill.numpy(), want_distill, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(terms.label_ce.numpy(), want_ce, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(terms.objective.numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_s.numpy(), want_grad, rtol=1e-4, atol=1e-5)
    assert grad_t is None or not np.any(grad_t.numpy()), "no gradient may reach the teacher"
    np.testing.assert_array_equal(terms.mask.numpy(), mask)
    np.testing.assert_array_equal(
        terms.agreement.numpy(), (t.argmax(-1) == s.argmax(-1)).astype(np.float32)
    )
    assert terms.objective.dtype == tf.float32


def test_equal_logits_at_temperature_one_give_entropy_and_zero_gradient():
    t = np.random.default_rng(0).normal(0, 2, (4, NUM_CLASSES)).astype(np.float32)
    s = tf.Variable(t)
    with tf.GradientTape() as tape:
        loss = distill.distillation_loss(t, s, 1.0)
        total = tf.reduce_sum(loss)
    p = _softmax(t.astype(np.float64))
    np.testing.assert_allclose(loss.numpy(), -(p * np.log(p)).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(total, s).numpy(), 0.0, atol=1e-6)


# ---------------------------------------------------------------------------- teacher on disk


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> pathlib.Path:
    """A 'fine-tuned' teacher run folder: flags.json + ckpt-7 with non-trivial BN statistics."""
    folder = tmp_path_factory.mktemp("teacher")
    cfg = tiny_config(CASE, train_mode="finetune", checkpoint="none", model_dir=str(folder))
    keras.utils.set_random_seed(11)
    model = train.build_model(cfg, NUM_CLASSES)
    model(tf.zeros([1, IMAGE, IMAGE, 3]), training=False)
    rng = np.random.default_rng(5)
    for v in model.weights:
        if v.path.endswith("moving_mean"):
            v.assign(rng.normal(0, 0.2, v.shape).astype(np.float32))
        elif v.path.endswith("moving_variance"):
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype(np.float32))
        elif "head_supervised" in v.path:
            v.assign(rng.normal(0, 2.0, v.shape).astype(np.float32))
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model), str(folder), 1, checkpoint_name="ckpt"
    )
    manager.save(checkpoint_number=7)
    atomic.write_json_atomic(str(folder / "flags.json"), dataclasses.asdict(cfg))
    return folder


def _build(cfg: config.Config, strategy=None) -> distill.DistillationModel:
    strategy = strategy or tf.distribute.get_strategy()
    schedule = train.make_schedule_for(cfg, num_train_examples=STEPS * GLOBAL_BATCH)
    model = train.build_for_run(cfg, strategy, INFO, schedule)
    assert isinstance(model, distill.DistillationModel) and model.teacher is not None
    return model


def _weights(variables) -> dict[str, np.ndarray]:
    return {v.path: np.array(keras.ops.convert_to_numpy(v)) for v in variables}


def _batches(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(STEPS):
        images = rng.uniform(0, 1, (GLOBAL_BATCH, IMAGE, IMAGE, 3)).astype(np.float32)
        # Uneven labelled counts: replica 0 gets 3 labels, replica 1 gets 1 (see the mirror test).
        labels = np.array([1, 4, -1, 0, -1, -1, 2, -1], np.int32)
        out.append((images, labels))
    return out


def _dataset(batches, per: int = GLOBAL_BATCH) -> tf.data.Dataset:
    pieces = [
        (x[r : r + per], y[r : r + per]) for x, y in batches for r in range(0, GLOBAL_BATCH, per)
    ]
    return tf.data.Dataset.from_generator(
        lambda: iter(pieces),
        output_signature=(
            tf.TensorSpec([per, IMAGE, IMAGE, 3]),
            tf.TensorSpec([per], tf.int32),
        ),
    )


def _fit(model, dataset) -> None:
    model.fit(dataset, epochs=1, steps_per_epoch=STEPS, verbose=0, shuffle=False)
    assert int(model.optimizer.iterations.numpy()) == STEPS


def test_teacher_is_frozen_untracked_and_unchanged(teacher_dir):
    """A smaller student trains; the teacher's weights and BN moving statistics do not move."""
    cfg = tiny_config(
        CASE,
        train_mode="distill",
        teacher_checkpoint=str(teacher_dir),
        width_multiplier=0.03125,  # big-to-small
        distill_label_weight=0.5,
    )
    model = _build(cfg)
    teacher_before = _weights(model.teacher.weights)
    moving = [k for k in teacher_before if "moving_" in k]
    assert moving, "the teacher has batch-norm statistics to check"
    # The teacher was restored: its statistics are the saved ones, not the initial 0 / 1.
    assert max(float(np.abs(teacher_before[k]).max()) for k in moving if "mean" in k) > 0.1
    student_before = _weights(model.weights)
    _fit(model, _dataset(_batches()))
    teacher_after = _weights(model.teacher.weights)
    for k, v in teacher_before.items():
        np.testing.assert_array_equal(teacher_after[k], v, err_msg=k)
    after = _weights(model.weights)
    moved = max(float(np.abs(v - student_before[k]).max()) for k, v in after.items())
    assert moved > 1e-3, "the student must train"
    # Neither Keras nor checkpoints see the teacher: optimizer, exports and resumes are the
    # student's alone.
    teacher_ids = {id(v) for v in model.teacher.weights}
    assert not teacher_ids & {id(v) for v in model.weights}
    assert not checkpoints.untracked_variables(model)
    path = tf.train.Checkpoint(model=model).write(str(teacher_dir.parent / "student_probe"))
    assert not [n for n, _ in tf.train.list_variables(path) if "teacher" in n]
    # Accelerator-safe: no float64 anywhere in the traced train step (TPUs have none).
    step = tf.function(model.train_step).get_concrete_function(
        (tf.TensorSpec([GLOBAL_BATCH, IMAGE, IMAGE, 3]), tf.TensorSpec([GLOBAL_BATCH], tf.int32))
    )
    doubles = [
        op.name
        for op in step.graph.get_operations()
        if any(t.dtype == tf.float64 for t in op.outputs)
    ]
    assert not doubles, doubles[:5]


def test_student_equal_to_teacher_stays_at_teacher_entropy(teacher_dir):
    """Self-distillation fixed point: student == teacher (initialised from it) at T = 1.

    Batch norm in training mode would give the student batch statistics where the teacher uses
    moving ones, so the student's network below the classifier is frozen
    (--fine_tune_after_block=4, inference-mode BN); its classifier trains. Then the loss is the
    teacher's entropy, the gradient is zero and nothing moves, for any learning rate.
    """
    cfg = tiny_config(
        CASE,
        train_mode="distill",
        teacher_checkpoint=str(teacher_dir),
        fine_tune_after_block=4,
        learning_rate=5.0,
        distill_temperature=1.0,
    )
    model = _build(cfg)
    restore.restore_student(model, str(teacher_dir))
    before = _weights(model.weights)
    batches = _batches(seed=1)
    p = [_softmax(model.teacher(x).numpy().astype(np.float64)) for x, _ in batches]
    entropy = np.concatenate([-(q * np.log(q)).sum(-1) for q in p])
    assert 0.05 < entropy.mean() < np.log(NUM_CLASSES) - 0.1, "neither one-hot nor uniform"
    history = model.fit(_dataset(batches), epochs=1, steps_per_epoch=STEPS, verbose=0)
    np.testing.assert_allclose(history.history["distill_loss"][-1], entropy.mean(), rtol=1e-5)
    np.testing.assert_allclose(history.history["loss"][-1], entropy.mean(), rtol=1e-5)
    assert history.history["teacher_agreement"][-1] == 1.0
    for k, v in _weights(model.weights).items():
        np.testing.assert_allclose(v, before[k], atol=1e-6, err_msg=k)


def test_two_replicas_match_one_device(teacher_dir):
    """MirroredStrategy on two logical CPUs = one device, with uneven labels per replica."""
    cfg = tiny_config(
        CASE,
        train_mode="distill",
        teacher_checkpoint=str(teacher_dir),
        distill_label_weight=0.7,
        distill_temperature=2.0,
        global_bn=True,
    )
    batches = _batches(seed=2)
    single = _build(cfg.replace(strategy="default"))
    initial = _weights(single.weights)
    _fit(single, _dataset(batches))
    expected = _weights(single.weights)
    metrics = [
        single.distill_loss_tracker,
        single.supervised_loss,
        single.labelled_tracker,
        single.label_acc_tracker,
    ]
    expected_metrics = distribute.global_results(tf.distribute.get_strategy(), metrics)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirrored = _build(cfg.replace(strategy="mirrored"), strategy)
    for k, v in _weights(mirrored.weights).items():
        np.testing.assert_array_equal(v, initial[k], err_msg=f"same seed, same start: {k}")
    per = GLOBAL_BATCH // 2
    data = pipeline.distribute(strategy, lambda ctx: _dataset(batches, per))
    _fit(mirrored, data)
    moved = max(float(np.abs(expected[k] - initial[k]).max()) for k in initial)
    assert moved > 1e-2, "the steps move the weights far more than the tolerance"
    for k, v in _weights(mirrored.weights).items():
        np.testing.assert_allclose(v, expected[k], atol=2e-5, err_msg=k)
    got = distribute.global_results(
        strategy,
        [
            mirrored.distill_loss_tracker,
            mirrored.supervised_loss,
            mirrored.labelled_tracker,
            mirrored.label_acc_tracker,
        ],
    )
    for name, value in expected_metrics.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, err_msg=name)
    assert got["labelled_fraction"] == pytest.approx(0.5)


def test_unlabelled_split_keeps_every_image_and_labels_the_fraction(tmp_path, write_png_folder):
    root = write_png_folder(tmp_path / "f", 2, {"train": 10}, 8)
    full, _ = sources.load_split("image_folder", "train", str(root))
    subset, _ = sources.load_split("image_folder", "train", str(root), train_data_fraction=0.3)
    mixed, info = sources.load_split(
        "image_folder", "train", str(root), train_data_fraction=0.3, unlabelled=True
    )
    assert info.split_sizes["train"] == 20
    pixels = {x.tobytes(): int(y) for x, y in full.as_numpy_iterator()}
    labelled = {x.tobytes(): int(y) for x, y in subset.as_numpy_iterator()}
    got = {x.tobytes(): int(y) for x, y in mixed.as_numpy_iterator()}
    assert got.keys() == pixels.keys()
    assert {k: v for k, v in got.items() if v >= 0} == labelled  # the fine-tuning subset
    assert sum(v == sources.UNLABELLED for v in got.values()) == 20 - 6


def test_cached_teacher_logits_belong_to_their_images(tmp_path, write_png_folder, teacher_dir):
    """--cache_teacher_logits: each element's cached row is the teacher on that very image."""
    data = write_png_folder(tmp_path / "data", NUM_CLASSES, {"train": 4}, IMAGE)
    cfg = tiny_config(
        CASE,
        train_mode="distill",
        teacher_checkpoint=str(teacher_dir),
        data_dir=str(data),
        train_data_fraction=0.5,
        distill_augment=False,
        cache_teacher_logits=True,
    )
    model = _build(cfg)
    strategy = tf.distribute.get_strategy()
    dataset = distill.fixed_view_dataset(cfg, strategy, 0, model.teacher)
    labelled = 0
    for images, labels, cached in dataset.take(2 * 20 // GLOBAL_BATCH):
        np.testing.assert_allclose(cached.numpy(), model.teacher(images).numpy(), atol=1e-4)
        labelled += int(np.sum(labels.numpy() >= 0))
    assert 0 < labelled < 2 * 20 // GLOBAL_BATCH * GLOBAL_BATCH
    history = model.fit(dataset, epochs=1, steps_per_epoch=STEPS, verbose=0)
    assert np.isfinite(history.history["distill_loss"][-1])
    with pytest.raises(config.ConfigError, match="--nodistill_augment"):
        cfg.replace(distill_augment=True).validate()


# ------------------------------------------------------------------------- run.py end to end

COMMON = [
    "--dataset=image_folder",
    "--resnet_depth=18",
    "--width_multiplier=0.0625",
    "--image_size=16",
    "--train_batch_size=8",
    "--eval_batch_size=8",
    "--verbose=0",
    "--proj_out_dim=16",
    "--num_proj_layers=2",
    "--eval_split=test",
]


def _run(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def test_run_py_distill_resume_export(tmp_path, write_png_folder, teacher_dir):
    data = write_png_folder(tmp_path / "data", NUM_CLASSES, {"train": 4, "test": 2}, IMAGE)
    student = tmp_path / "student"
    args = [
        "--train_mode=distill",
        f"--teacher_checkpoint={teacher_dir}",
        "--checkpoint_steps=1",
        "--train_data_fraction=0.25",
        "--distill_label_weight=0.5",
        f"--data_dir={data}",
        f"--model_dir={student}",
        *COMMON,
    ]
    _run("--mode=train", "--train_steps=1", *args)
    assert checkpoints.checkpoint_step(tf.train.latest_checkpoint(str(student))) == 1
    # Resume: the same command with a longer schedule continues from step 1.
    proc = _run("--mode=train_then_eval", "--train_steps=2", *args)
    assert "Resumed from" in proc.stderr and "from step 1 to 2" in proc.stderr
    prefix = tf.train.latest_checkpoint(str(student))
    assert checkpoints.checkpoint_step(prefix) == 2
    assert not [n for n, _ in tf.train.list_variables(prefix) if "teacher" in n]

    result = json.loads((student / "result.json").read_text())
    assert result["train_mode"] == "distill" and result["num_examples"] == 2 * NUM_CLASSES
    assert result["teacher_checkpoint"] == str(teacher_dir)
    assert 0.0 <= result["teacher_top_1_agreement"] <= 1.0
    rows = (student / "metrics.csv").read_text().splitlines()
    assert {"distill_loss", "teacher_agreement", "labelled_fraction"} <= set(rows[0].split(","))
    # Every image is trained on, a quarter of them with labels (1 of 4 per class).
    assert "20 steps/epoch" not in proc.stderr and "(3 steps/epoch" in proc.stderr
    card = (student / "saved_model" / "2" / "README.md").read_text()
    assert "distilled student" in card and str(teacher_dir) in card


def test_teacher_problems_name_the_fix(tmp_path, teacher_dir):
    with pytest.raises(restore.TeacherError, match="--teacher_checkpoint"):
        restore.load_teacher(str(tmp_path / "nope"), NUM_CLASSES, IMAGE)
    with pytest.raises(restore.TeacherError, match=f"--image_size={IMAGE}"):
        restore.load_teacher(str(teacher_dir), NUM_CLASSES, 2 * IMAGE)
    with pytest.raises(restore.TeacherError, match=f"predicts {NUM_CLASSES} classes"):
        restore.load_teacher(str(teacher_dir), NUM_CLASSES + 1, IMAGE)
    with pytest.raises(config.ConfigError, match="--teacher_checkpoint=PATH"):
        tiny_config(CASE, train_mode="distill").validate()
    with pytest.raises(config.ConfigError, match="--distill_label_weight"):
        tiny_config(
            CASE, train_mode="distill", teacher_checkpoint="x", distill_label_weight=1.0
        ).validate()


def test_published_checkpoint_plug_point(monkeypatch, tmp_path, teacher_dir):
    """A path that is no simclr_tf run goes to simclr_tf.official.load_official when present."""
    inner = restore.load_teacher(str(teacher_dir), NUM_CLASSES, IMAGE).inner
    fake = types.ModuleType("simclr_tf.official")
    fake.is_official = lambda path: path.endswith("published")
    fake.load_official = lambda path: (inner, "info")
    monkeypatch.setattr(restore, "official", fake)
    teacher = restore.load_teacher(str(tmp_path / "published"), NUM_CLASSES, IMAGE)
    images = np.random.default_rng(4).uniform(0, 1, (3, IMAGE, IMAGE, 3)).astype(np.float32)
    want = inner(images, training=False)["logits_sup"].numpy()
    np.testing.assert_allclose(teacher(images).numpy(), want, rtol=1e-6)
    assert not teacher.trainable_weights
    with pytest.raises(restore.TeacherError, match="not a simclr_tf run"):
        restore.load_teacher(str(tmp_path / "other"), NUM_CLASSES, IMAGE)


@pytest.mark.parametrize(
    "preset",
    ["imagenet_distill_self", "imagenet_distill_big_to_small", "cpu_cifar10_distill"],
)
def test_presets_are_valid_distill_runs(preset):
    config.define_flags()
    values = {"model_dir": "/x", "teacher_checkpoint": "/teacher"}
    for line in (REPO / "flags" / f"{preset}.cfg").read_text().splitlines():
        if line.startswith("--"):
            name, value = line[2:].split("=", 1)
            values[name] = flags.FLAGS[name].parser.parse(value)
    cfg = config.Config(**values).validate()
    assert cfg.train_mode == "distill" and cfg.distill_label_weight == 0.0
    # The paper: tau = 0.1 for self-distillation, 1.0 big-to-small (Section 3 settings).
    assert cfg.distill_temperature == (0.1 if preset.endswith("_self") else 1.0)
