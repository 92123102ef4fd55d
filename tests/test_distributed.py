"""Distribution in one process: MirroredStrategy over the 2 logical CPUs of conftest.py.

The reference for every check is the same computation on one device: SimCLR with global batch
norm and cross-replica negatives must be *the same algorithm* on 1 or 2 replicas, so a few full
training steps (LARS, projection head, live linear probe) must leave equal weights, and an
evaluation must count every example once with the same accuracy.
"""

from __future__ import annotations

import pathlib
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from simclr_tf import config, distribute, evaluate, train
from simclr_tf.data import pipeline
from simclr_tf.models.simclr import SimCLRModel

REPO = pathlib.Path(__file__).resolve().parents[1]
IMAGE = 16
GLOBAL_BATCH = 8
STEPS = 3
NUM_CLASSES = 10
INFO = types.SimpleNamespace(num_classes=NUM_CLASSES)


# This file's settings over conftest.TINY_CONFIG.
CASE = dict(
    seed=3,
    dataset="image_folder",
    image_size=IMAGE,
    eval_split="test",
    train_batch_size=GLOBAL_BATCH,
    train_steps=STEPS,
    learning_rate=0.05,
    learning_rate_scaling="sqrt",
    optimizer="lars",
    weight_decay=1e-4,
    temperature=0.5,
    global_bn=True,
    eval_batch_size=4,
    strategy="mirrored",
)


def _build(cfg: config.Config, strategy: tf.distribute.Strategy) -> SimCLRModel:
    schedule = train.make_schedule_for(cfg, num_train_examples=STEPS * GLOBAL_BATCH)
    return train.build_for_run(cfg, strategy, INFO, schedule)


def _two_view_batches() -> list[tuple[tuple[np.ndarray, np.ndarray], np.ndarray]]:
    """STEPS distinct fixed global batches of (view1, view2), labels (augmentation = fixed)."""
    rng = np.random.default_rng(7)
    out = []
    for _ in range(STEPS):
        base = rng.uniform(0.0, 1.0, (GLOBAL_BATCH, IMAGE, IMAGE, 3)).astype(np.float32)
        view1 = np.clip(base + rng.normal(0, 0.1, base.shape), 0, 1).astype(np.float32)
        view2 = np.clip(base[:, ::-1] * 0.8 + 0.1, 0, 1).astype(np.float32)
        labels = rng.integers(0, NUM_CLASSES, GLOBAL_BATCH).astype(np.int32)
        out.append(((view1, view2), labels))
    return out


def _one_device_dataset(batches) -> tf.data.Dataset:
    return tf.data.Dataset.from_generator(
        lambda: iter(batches),
        output_signature=(
            (tf.TensorSpec([GLOBAL_BATCH, IMAGE, IMAGE, 3]),) * 2,
            tf.TensorSpec([GLOBAL_BATCH], tf.int32),
        ),
    )


def _replica_dataset(strategy: tf.distribute.Strategy, batches):
    """Each global batch split into per-replica halves, fed the way train.py feeds fit."""
    replicas = strategy.num_replicas_in_sync
    per = pipeline.per_replica_batch_size(GLOBAL_BATCH, replicas)

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        # One input pipeline; its consecutive elements go to replicas 0, 1, 0, 1, ...
        assert ctx.num_input_pipelines == 1
        pieces = [
            ((v1[r * per : (r + 1) * per], v2[r * per : (r + 1) * per]), y[r * per : (r + 1) * per])
            for (v1, v2), y in batches
            for r in range(replicas)
        ]
        return tf.data.Dataset.from_generator(
            lambda: iter(pieces),
            output_signature=(
                (tf.TensorSpec([per, IMAGE, IMAGE, 3]),) * 2,
                tf.TensorSpec([per], tf.int32),
            ),
        )

    return pipeline.distribute(strategy, dataset_fn)


def _fit(model: SimCLRModel, dataset) -> None:
    model.fit(dataset, epochs=1, steps_per_epoch=STEPS, verbose=0, shuffle=False)
    assert int(model.optimizer.iterations.numpy()) == STEPS


def _weights(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: np.array(keras.ops.convert_to_numpy(v)) for v in model.weights}


def _mirrored() -> tf.distribute.MirroredStrategy:
    strategy = distribute.make_strategy("mirrored", num_cpu_devices=2)
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 2
    return strategy


@pytest.fixture(scope="module")
def single_device_run():
    """Initial and final weights of STEPS steps on one device (the reference)."""
    cfg = tiny_config(CASE, strategy="default")
    batches = _two_view_batches()
    model = _build(cfg, tf.distribute.get_strategy())
    initial = _weights(model)
    _fit(model, _one_device_dataset(batches))
    return batches, initial, _weights(model)


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, str]:
    assert a.keys() == b.keys()
    diffs = {k: float(np.max(np.abs(a[k] - b[k]))) for k in a}
    worst = max(diffs, key=diffs.get)
    return diffs[worst], worst


def test_mirrored_global_bn_steps_equal_single_device(single_device_run):
    batches, initial, expected = single_device_run
    strategy = _mirrored()
    model = _build(tiny_config(CASE), strategy)
    start = _weights(model)
    diff, name = _max_diff(start, initial)
    assert diff == 0.0, f"same seed must give the same initial weights ({name})"
    _fit(model, _replica_dataset(strategy, batches))
    got = _weights(model)

    moved, _ = _max_diff(expected, initial)
    assert moved > 1e-2, "the steps must move the weights far more than the tolerance"
    diff, name = _max_diff(got, expected)
    # Measured: 6.1e-6 (README, Distribution); float32 reduction order is the only difference.
    assert diff < 1e-5, f"2 replicas differ from 1 device by {diff:.3g} at {name}"
    # Both replicas hold the same copy of every variable.
    for v in model.weights:
        copies = [np.array(c) for c in v.value.values] if hasattr(v.value, "values") else []
        for c in copies[1:]:
            np.testing.assert_array_equal(c, copies[0], err_msg=v.path)


def test_mirrored_without_global_bn_differs(single_device_run):
    """Sensitivity check: per-replica BN statistics give measurably different weights."""
    batches, _, expected = single_device_run
    strategy = _mirrored()
    model = _build(tiny_config(CASE, global_bn=False), strategy)
    _fit(model, _replica_dataset(strategy, batches))
    diff, _ = _max_diff(_weights(model), expected)
    assert diff > 1e-3


def test_evaluate_counts_every_example_once_on_two_replicas(tmp_path, write_png_folder):
    """10 examples in batches 4, 4, 2: Keras's own logs average replicas (5 examples)."""
    write_png_folder(tmp_path, NUM_CLASSES, {"train": 1, "test": 1}, IMAGE)
    cfg = tiny_config(
        CASE, data_dir=str(tmp_path), model_dir=str(tmp_path / "run"), eval_batch_size=4
    )
    single = evaluate.evaluate(cfg, _build(cfg, tf.distribute.get_strategy()), None, 0, None)
    mirrored = evaluate.evaluate(cfg, _build(cfg, _mirrored()), None, 0, None)
    assert single["num_examples"] == mirrored["num_examples"] == 10
    assert mirrored["label_top_1_accuracy"] == pytest.approx(single["label_top_1_accuracy"])
    assert mirrored["label_top_5_accuracy"] == pytest.approx(single["label_top_5_accuracy"])
    assert mirrored["eval_loss"] == pytest.approx(single["eval_loss"], rel=1e-5)


def test_global_results_sum_replicas_unlike_keras_logs():
    strategy = _mirrored()
    with strategy.scope():
        total = keras.metrics.Sum("n")
        mean = keras.metrics.Mean("m")

    @tf.function
    def step():
        def replica_fn():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            value = tf.cast(3 + 2 * rid, tf.float32)  # 3 on replica 0, 5 on replica 1
            total.update_state(value)
            mean.update_state(tf.fill([1 + rid], value))  # one 3, two 5s
            return distribute.step_outputs({"n": total.result()})

        return strategy.run(replica_fn)

    step()
    got = distribute.global_results(strategy, [total, mean])
    assert got == {"n": pytest.approx(8.0), "m": pytest.approx((3 + 5 + 5) / 3)}


def test_auto_strategy_never_needs_an_accelerator(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    assert distribute._auto_strategy_name(None, 1) == "default"
    assert distribute._auto_strategy_name(None, 2) == "mirrored"
    assert distribute._auto_strategy_name("my-tpu", 1) == "tpu"
    monkeypatch.setattr(
        tf.config, "list_physical_devices", lambda kind=None: ["g0", "g1"] if kind == "GPU" else []
    )
    assert distribute._auto_strategy_name(None, 1) == "mirrored"
    monkeypatch.undo()
    strategy = distribute.make_strategy("auto")
    assert strategy.num_replicas_in_sync == 1
    assert "1 replica(s)" in distribute.describe(strategy)


@pytest.mark.parametrize(
    "tf_config, fragment",
    [
        (None, "TF_CONFIG environment variable"),
        ("{not json", "not valid JSON"),
        ('{"cluster": {}}', "no cluster with workers"),
        ('{"cluster": {"worker": ["a:1"]}}', "no task type and index"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "index"),
    ],
)
def test_multi_worker_needs_a_valid_tf_config(tf_config, fragment):
    environ = {} if tf_config is None else {"TF_CONFIG": tf_config}
    with pytest.raises(distribute.StrategyError, match=fragment):
        distribute.check_tf_config(environ)


def test_write_location_only_chief_writes_to_model_dir(tmp_path):
    chief = distribute.WriteLocation(str(tmp_path), chief=True)
    other = distribute.WriteLocation(str(tmp_path), chief=False)
    assert chief.path == chief.read_path == other.read_path == str(tmp_path)
    assert other.path != str(tmp_path)
    (tmp_path / "keep").write_text("x")
    with open(f"{other.path}/ckpt", "w") as f:
        f.write("x")
    chief.cleanup()
    other.cleanup()
    assert (tmp_path / "keep").exists()
    assert not tf.io.gfile.exists(other.path)


def test_cli_mirrored_on_split_cpu_logs_replicas_and_refuses_uneven_batch(
    tmp_path, write_png_folder, run_cli
):
    """run.py --strategy=mirrored --num_cpu_devices=2: 2 replicas, and 7 images do not split."""
    write_png_folder(tmp_path / "data", NUM_CLASSES, {"train": 1, "test": 1}, IMAGE)
    done = run_cli(
        "--strategy=mirrored",
        "--num_cpu_devices=2",
        "--dataset=image_folder",
        f"--data_dir={tmp_path / 'data'}",
        f"--model_dir={tmp_path / 'run'}",
        "--train_batch_size=7",
        "--train_steps=1",
        expect=None,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Strategy: MirroredStrategy (--strategy=mirrored) with 2 replica(s)" in done.stderr
    assert "not divisible by the 2 replicas" in done.stderr
    assert "--train_batch_size=6 or 8" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists(), "nothing is written before the batch is checked"
