"""What a run wires together (train.py, evaluate.py), checked in-process on a generated folder.

The optimizer run.py builds from the flags, the epoch size with --train_data_fraction, the seed
shift of a resumed run, the kNN monitor against a NumPy kNN, and the evaluation restore order.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config
from PIL import Image

from simclr_tf import checkpoints, config, evaluate, train
from simclr_tf.data import augment, sources

CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS, SIDE = 4, 8, 6, 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory, write_png_folder) -> pathlib.Path:
    root = tmp_path_factory.mktemp("folder")
    return write_png_folder(root, CLASSES, {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS}, SIDE)


# This file's settings over conftest.TINY_CONFIG (plus data_dir=the test's folder).
CASE = dict(
    dataset="image_folder",
    eval_split="test",
    image_size=SIDE,
    eval_batch_size=5,
    proj_out_dim=8,
    train_steps=10,
)


def _build(cfg: config.Config):
    """Model and optimizer exactly as train.train builds them for a run."""
    info = sources.dataset_info(cfg.dataset, cfg.data_dir)
    schedule = train.make_schedule_for(cfg, train.num_train_examples(cfg))
    return train.build_for_run(cfg, tf.distribute.get_strategy(), info, schedule), schedule


# -- optimizer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lars", "momentum"])
def test_weight_decay_and_momentum_flags_reach_the_optimizer(folder, name):
    """Two updates of the supervised head's kernel (decayed; LARS does not adapt it) against
    momentum SGD with L2 decay written in NumPy, with --weight_decay and --momentum values that
    differ from the defaults."""
    wd, momentum = 0.05, 0.7
    cfg = tiny_config(
        CASE,
        data_dir=str(folder),
        optimizer=name,
        weight_decay=wd,
        momentum=momentum,
        learning_rate=0.4,
    )
    model, schedule = _build(cfg)
    opt = model.optimizer
    assert (opt.weight_decay, opt.momentum) == (pytest.approx(wd), pytest.approx(momentum))
    kernel = model.supervised_head.trainable_variables[0]
    kernel.assign(np.random.default_rng(0).normal(size=kernel.shape).astype(np.float32))
    w = kernel.numpy().astype(np.float64)
    g = np.random.default_rng(1).normal(size=kernel.shape)
    peak, total = schedule.peak_learning_rate, schedule.total_steps
    assert peak == pytest.approx(0.4 * 8 / 256)
    velocity = np.zeros_like(w)
    for step in range(2):
        lr = peak * 0.5 * (1 + math.cos(math.pi * step / total))  # no warmup
        opt.apply([tf.constant(g, tf.float32)], [kernel])
        decayed = g + wd * w
        if name == "lars":  # v = m v + lr g';  w -= v
            velocity = momentum * velocity + lr * decayed
            w = w - velocity
        else:  # Keras Nesterov SGD: v = m v - lr g';  w += m v - lr g'
            velocity = momentum * velocity - lr * decayed
            w = w + momentum * velocity - lr * decayed
    np.testing.assert_allclose(kernel.numpy(), w, rtol=1e-5, atol=1e-6)


# -- epochs and seeds --------------------------------------------------------------------------


def test_epoch_is_the_label_fraction_not_the_whole_split(folder):
    cfg = tiny_config(
        CASE, data_dir=str(folder), train_data_fraction=0.5, train_steps=0, train_epochs=3
    )
    subset, _ = sources.load_split(
        "image_folder",
        "train",
        data_dir=str(folder),
        train_data_fraction=0.5,
        fraction_seed=cfg.seed,
    )
    counted = sum(1 for _ in subset)
    assert train.num_train_examples(cfg) == counted == CLASSES * TRAIN_PER_CLASS // 2
    schedule = train.make_schedule_for(cfg, train.num_train_examples(cfg))
    assert (schedule.steps_per_epoch, schedule.total_steps) == (2, 6)


def _first_views(cfg: config.Config, start_step: int) -> np.ndarray:
    batch = next(iter(train.train_dataset(cfg, tf.distribute.get_strategy(), start_step)))
    (view1, _), _ = batch
    return view1.numpy()


def test_resumed_run_draws_other_views_and_the_same_ones_each_time(folder):
    cfg = tiny_config(CASE, data_dir=str(folder))
    fresh = _first_views(cfg, 0)
    np.testing.assert_array_equal(_first_views(cfg, 0), fresh)  # seeded
    resumed = _first_views(cfg, 3)
    # A run resumed at step 3 does not replay the first batches of the run.
    assert np.abs(resumed - fresh).mean() > 0.05


# -- kNN monitor -------------------------------------------------------------------------------


def _folder_images(root: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Decoded with PIL (not the package's reader), eval view, labels from sorted class names."""
    images, labels = [], []
    for label, cls in enumerate(sorted(p.name for p in (root / split).iterdir())):
        for f in sorted((root / split / cls).iterdir()):
            images.append(np.asarray(Image.open(f).convert("RGB"), np.float32) / 255.0)
            labels.append(label)
    views = augment.eval_view(tf.constant(np.stack(images)), SIDE).numpy()
    return views, np.array(labels)


def test_knn_monitor_equals_a_numpy_knn_on_the_encoder_features(folder):
    k, temperature = 5, 0.1
    cfg = tiny_config(CASE, data_dir=str(folder), knn_k=k, knn_every_epochs=1)
    model, _ = _build(cfg)
    monitor = train.knn_monitor(cfg, sources.dataset_info(cfg.dataset, cfg.data_dir))
    monitor.set_model(model)
    got = monitor.evaluate()

    def features(images: np.ndarray) -> np.ndarray:
        h = model.encoder(images, training=False).numpy().astype(np.float64)
        return h / np.linalg.norm(h, axis=1, keepdims=True)

    bank_x, bank_y = _folder_images(folder, "train")
    query_x, query_y = _folder_images(folder, "test")
    sim = features(query_x) @ features(bank_x).T
    votes = np.zeros((len(query_y), CLASSES))
    for q in range(len(query_y)):
        for j in np.argsort(-sim[q])[:k]:
            votes[q, bank_y[j]] += np.exp(sim[q, j] / temperature)
    want = float(np.mean(votes.argmax(1) == query_y))
    assert got == pytest.approx(want, abs=1e-9)
    assert len(query_y) == CLASSES * TEST_PER_CLASS


# -- evaluation restore order ------------------------------------------------------------------


def _saved_model(cfg: config.Config, directory: pathlib.Path, step: int, seed: int):
    """A model with random weights, saved at ``step`` in ``directory``; returns its weights."""
    model, _ = _build(cfg)
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
    model.optimizer.iterations.assign(step)
    checkpoints.Checkpointer(model, str(directory)).save(step)
    return [w.copy() for w in model.get_weights()]


def test_eval_restores_model_dir_before_checkpoint_then_checkpoint_alone(folder, tmp_path):
    cfg = tiny_config(CASE, data_dir=str(folder), mode="eval")
    run_weights = _saved_model(cfg, tmp_path / "run", 3, seed=1)
    other_weights = _saved_model(cfg, tmp_path / "other", 5, seed=2)
    with_ckpt = cfg.replace(checkpoint=str(tmp_path / "other"))

    # The run's own checkpoint wins over --checkpoint (a fine-tuning run's start point).
    model, _ = _build(with_ckpt)
    source = evaluate.restore_for_eval(with_ckpt, model, str(tmp_path / "run"))
    assert source == str(tmp_path / "run" / "ckpt-3")
    for got, want in zip(model.get_weights(), run_weights, strict=True):
        np.testing.assert_array_equal(got, want)

    # A model_dir without checkpoints evaluates --checkpoint, and says so in result.json.
    (tmp_path / "empty").mkdir()
    model, _ = _build(with_ckpt)
    source = evaluate.restore_for_eval(with_ckpt, model, str(tmp_path / "empty"))
    assert source == str(tmp_path / "other" / "ckpt-5")
    for got, want in zip(model.get_weights(), other_weights, strict=True):
        np.testing.assert_array_equal(got, want)
    result = evaluate.evaluate(
        with_ckpt, model, source, checkpoints.checkpoint_step(source), str(tmp_path / "empty")
    )
    assert (result["checkpoint"], result["global_step"]) == (source, 5)
    assert result["num_examples"] == CLASSES * TEST_PER_CLASS

    # Neither: a one-line error naming both fixes.
    with pytest.raises(checkpoints.CheckpointError, match="train first.*--checkpoint=PATH"):
        evaluate.restore_for_eval(cfg, model, str(tmp_path / "empty"))
