"""Tests for simclr_tf.metrics against NumPy references written here."""

from __future__ import annotations

import csv
import glob
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import knn, metrics

# ------------------------------------------------------------------------------------------
# NumPy references
# ------------------------------------------------------------------------------------------


def np_topk_hits(labels: np.ndarray, logits: np.ndarray, k: int) -> np.ndarray:
    """Per-row: label among the k largest logits (stable sort, so ties favour low indices)."""
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return (order == labels[:, None]).any(axis=1)


def np_knn_scores(query, bank, bank_labels, num_classes, k, temperature):
    """Weighted kNN of Wu et al. 2018, straight from the definition, in float64."""
    # Zero vectors stay zero, as with tf.math.l2_normalize.
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-6)
    b = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-6)
    sim = q.astype(np.float64) @ b.astype(np.float64).T
    k = min(k, bank.shape[0])
    scores = np.zeros((query.shape[0], num_classes))
    for row in range(query.shape[0]):
        neighbours = np.argsort(-sim[row])[:k]
        for j in neighbours:
            scores[row, bank_labels[j]] += math.exp(sim[row, j] / temperature)
    return scores


# ------------------------------------------------------------------------------------------
# topk_correct / TopKAccuracy
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 5])
def test_topk_correct_matches_numpy(k):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=64)
    expected = int(np_topk_hits(labels, logits, k).sum())
    assert 0 < expected < 64  # the case is not degenerate
    got = metrics.topk_correct(tf.constant(labels), tf.constant(logits), k)
    assert got.dtype == tf.int32
    assert int(got) == expected
    one_hot = np.eye(10, dtype=np.float32)[labels]
    assert int(metrics.topk_correct(one_hot, logits, k)) == expected


def test_topk_correct_clamps_k_to_num_classes():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(17, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=17)
    # top-5 of 3 classes is top-3: every label is among all classes.
    assert int(metrics.topk_correct(labels, logits, 5)) == 17
    assert int(metrics.topk_correct(labels, logits, 5)) == int(
        metrics.topk_correct(labels, logits, 3)
    )
    assert int(metrics.topk_correct(labels, logits, 2)) == int(
        np_topk_hits(labels, logits, 2).sum()
    )


def test_topk_correct_ties_follow_top_k_order():
    # Zero-initialised logits layer: all logits tie; top-1 picks class 0 for every row.
    labels = np.array([0, 1, 2, 0, 3, 0])
    logits = np.zeros((6, 4), np.float32)
    assert int(metrics.topk_correct(labels, logits, 1)) == int((labels == 0).sum())
    assert int(metrics.topk_correct(labels, logits, 2)) == int((labels <= 1).sum())


def test_topk_correct_rejects_bad_k():
    with pytest.raises(ValueError, match="positive int"):
        metrics.topk_correct([0], [[1.0, 2.0]], 0)


@pytest.mark.parametrize("k", [1, 5])
def test_topk_accuracy_streams_uneven_batches(k):
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(41, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=41)
    metric = metrics.TopKAccuracy(k, name=f"label_top_{k}_accuracy")
    assert metric.name == f"label_top_{k}_accuracy"
    start = 0
    for size in (7, 1, 13, 4, 16):
        metric.update_state(labels[start : start + size], logits[start : start + size])
        start += size
    assert start == 41
    expected = np_topk_hits(labels, logits, k).mean()
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_topk_accuracy_mask_and_config():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(30, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=30)
    mask = (rng.random(30) > 0.4).astype(np.float32)
    metric = metrics.TopKAccuracy(5)  # clamped to 4 classes: all counted examples are hits
    metric.update_state(labels, logits, sample_weight=mask)
    assert float(metric.result()) == 1.0
    top1 = metrics.TopKAccuracy(1)
    top1.update_state(np.eye(4)[labels], logits, sample_weight=mask)
    hits = np_topk_hits(labels, logits, 1)
    np.testing.assert_allclose(float(top1.result()), hits[mask > 0].mean(), rtol=1e-6)
    clone = metrics.TopKAccuracy.from_config(top1.get_config())
    assert (clone.k, clone.name) == (1, "top_1_accuracy")


def test_topk_accuracy_counts_exactly_past_float32_precision():
    metric = metrics.TopKAccuracy(1)
    metric.correct.assign(2**24 + 1)  # float32 counters cannot hold this integer
    metric.total.assign(2**25 + 2)
    metric.update_state([1], [[0.0, 1.0]])
    assert int(metric.correct.numpy()) == 2**24 + 2
    assert int(metric.total.numpy()) == 2**25 + 3


def test_topk_accuracy_in_mirrored_evaluate():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(4)
    x = rng.normal(size=(22, 5)).astype(np.float32)
    y = rng.integers(0, 6, size=22)
    with strategy.scope():
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6)])
        model.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[metrics.TopKAccuracy(1), metrics.TopKAccuracy(3)],
        )
    logits = model.predict(x, batch_size=8, verbose=0)
    result = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    np.testing.assert_allclose(result["top_1_accuracy"], np_topk_hits(y, logits, 1).mean(), 1e-6)
    np.testing.assert_allclose(result["top_3_accuracy"], np_topk_hits(y, logits, 3).mean(), 1e-6)


# ------------------------------------------------------------------------------------------
# knn_predict
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "chunk_size"), [(1, 10), (7, 64), (50, 8), (200, 11)])
def test_knn_predict_matches_numpy(k, chunk_size):
    rng = np.random.default_rng(5)
    query = rng.normal(size=(37, 8)).astype(np.float32)
    bank = rng.normal(size=(50, 8)).astype(np.float32) * rng.uniform(0.5, 3.0, size=(50, 1))
    bank_labels = rng.integers(0, 5, size=50)
    expected = np_knn_scores(query, bank, bank_labels, 5, k, 0.1)
    got = knn.knn_predict(query, bank, bank_labels, 5, k=k, chunk_size=chunk_size)
    assert got.shape == (37, 5)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.argmax(got.numpy(), 1), np.argmax(expected, 1))


def test_knn_predict_k_above_bank_uses_whole_bank_and_temperature():
    rng = np.random.default_rng(6)
    query = rng.normal(size=(9, 4)).astype(np.float32)
    bank = rng.normal(size=(6, 4)).astype(np.float32)
    bank_labels = np.array([0, 1, 2, 0, 1, 2])
    # k >= bank size: each class scores the sum over all its bank members.
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    weights = np.exp((q @ b.T) / 0.5)
    expected = np.stack([weights[:, bank_labels == c].sum(1) for c in range(3)], axis=1)
    got = knn.knn_predict(query, bank, bank_labels, 3, k=200, temperature=0.5, chunk_size=4)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_knn_predict_separable_clusters_are_all_correct():
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(4, 16)) * 5.0
    bank_labels = np.repeat(np.arange(4), 50)
    query_labels = np.tile(np.arange(4), 20)
    bank = centres[bank_labels] + rng.normal(size=(200, 16))
    query = centres[query_labels] + rng.normal(size=(80, 16))
    scores = knn.knn_predict(query, bank, bank_labels, 4, k=20, chunk_size=30)
    np.testing.assert_array_equal(np.argmax(scores.numpy(), axis=1), query_labels)


def test_knn_predict_validates_inputs():
    with pytest.raises(tf.errors.InvalidArgumentError):
        knn.knn_predict(np.ones((2, 3)), np.ones((2, 3)), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="same encoder"):
        knn.knn_predict(np.ones((2, 3)), np.ones((2, 4)), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="temperature"):
        knn.knn_predict(np.ones((2, 3)), np.ones((2, 3)), np.array([0, 1]), 3, temperature=0)


# ------------------------------------------------------------------------------------------
# extract_features
# ------------------------------------------------------------------------------------------


def _toy_dataset(
    n: int, batch: int, seed: int = 0
) -> tuple[tf.data.Dataset, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.random((n, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=n)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)
    return ds, images, labels


def test_extract_features_counts_each_example_once_with_partial_batch():
    ds, images, labels = _toy_dataset(23, 5)  # 4 full batches + a partial batch of 3
    traces = []

    def encoder(x):
        traces.append(x.shape)
        return tf.stack([tf.reduce_sum(x, axis=[1, 2, 3]), tf.reduce_max(x, axis=[1, 2, 3])], 1)

    feats, labs = knn.extract_features(encoder, ds)
    assert len(traces) == 1  # one trace serves full and partial batches
    expected = np.stack([images.sum(axis=(1, 2, 3)), images.max(axis=(1, 2, 3))], axis=1)
    assert feats.dtype == tf.float32 and labs.dtype == tf.int32
    np.testing.assert_allclose(feats.numpy(), expected, rtol=1e-5)
    np.testing.assert_array_equal(labs.numpy(), labels)

    feats, labs = knn.extract_features(encoder, ds, max_examples=12)
    np.testing.assert_allclose(feats.numpy(), expected[:12], rtol=1e-5)
    np.testing.assert_array_equal(labs.numpy(), labels[:12])


def test_extract_features_one_hot_labels_and_errors():
    ds, images, labels = _toy_dataset(7, 3)
    one_hot_ds = ds.map(lambda x, y: (x, tf.one_hot(y, 3)))
    _, labs = knn.extract_features(lambda x: tf.reshape(x, [-1, 48]), one_hot_ds)
    np.testing.assert_array_equal(labs.numpy(), labels)
    with pytest.raises(ValueError, match="infinite"):
        knn.extract_features(lambda x: x, ds.repeat())
    with pytest.raises(ValueError, match=r"\.batch"):
        knn.extract_features(lambda x: x, ds.unbatch())


# ------------------------------------------------------------------------------------------
# KNNMonitor
# ------------------------------------------------------------------------------------------


class TinySimCLR(keras.Model):
    """Stand-in for the SimCLR model: exposes `.encoder` before a head."""

    def __init__(self):
        super().__init__()
        self.encoder = keras.Sequential(
            [keras.layers.Flatten(), keras.layers.Dense(6, activation="tanh")], name="encoder"
        )
        self.head = keras.layers.Dense(3)

    def call(self, x, training=False):
        return self.head(self.encoder(x, training=training))


class LogRecorder(keras.callbacks.Callback):
    """Placed after the monitor: records what it sees plus an independent kNN reference."""

    def __init__(self, bank, eval_, num_classes, k, temperature):
        super().__init__()
        self.bank, self.eval_ = bank, eval_
        self.num_classes, self.k, self.temperature = num_classes, k, temperature
        self.seen = {}
        self.reference = {}

    def on_epoch_end(self, epoch, logs=None):
        self.seen[epoch] = dict(logs)
        (bx, by), (qx, qy) = self.bank, self.eval_
        bank_feats = self.model.encoder(bx, training=False).numpy()
        query_feats = self.model.encoder(qx, training=False).numpy()
        scores = np_knn_scores(
            query_feats, bank_feats, by, self.num_classes, self.k, self.temperature
        )
        self.reference[epoch] = float((scores.argmax(1) == qy).mean())


@pytest.mark.parametrize("distributed", [False, True])
def test_knn_monitor_in_fit_writes_logs_and_tensorboard(tmp_path, distributed):
    rng = np.random.default_rng(8)
    centres = rng.normal(size=(3, 4, 4, 3)).astype(np.float32)
    bank_y = np.arange(30) % 3
    eval_y = np.arange(13) % 3
    bank_x = np.clip(0.5 + centres[bank_y] + 0.8 * rng.normal(size=(30, 4, 4, 3)), 0, 1)
    eval_x = np.clip(0.5 + centres[eval_y] + 0.8 * rng.normal(size=(13, 4, 4, 3)), 0, 1)
    bank_x, eval_x = bank_x.astype(np.float32), eval_x.astype(np.float32)
    bank_size = 25  # the monitor's bank is the first 25 bank examples

    strategy = (
        tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        if distributed
        else tf.distribute.get_strategy()
    )
    with strategy.scope():
        model = TinySimCLR()
        model.compile(
            optimizer=keras.optimizers.SGD(0.5),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    monitor = knn.KNNMonitor(
        lambda: tf.data.Dataset.from_tensor_slices((bank_x, bank_y)).batch(8),
        lambda: tf.data.Dataset.from_tensor_slices((eval_x, eval_y)).batch(4),
        num_classes=3,
        every_n_epochs=2,
        k=5,
        temperature=0.2,
        bank_size=bank_size,
        log_dir=str(tmp_path / "eval"),
        fill_value=float("nan"),
    )
    recorder = LogRecorder((bank_x[:bank_size], bank_y[:bank_size]), (eval_x, eval_y), 3, 5, 0.2)
    csv_path = tmp_path / "metrics.csv"
    model.fit(
        bank_x,
        bank_y,
        batch_size=10,
        epochs=3,
        verbose=0,
        callbacks=[monitor, recorder, keras.callbacks.CSVLogger(str(csv_path))],
    )

    # Epoch indices 0 and 2 are skipped (every 2 epochs counted from 1): NaN fill.
    assert math.isnan(recorder.seen[0]["knn_top1"]) and math.isnan(recorder.seen[2]["knn_top1"])
    assert recorder.seen[1]["knn_top1"] == pytest.approx(recorder.reference[1], abs=1e-9)
    assert [r["epoch"] for r in monitor.results] == [1]
    assert monitor.results[0]["step"] == 2 * 3  # 30 examples / batch 10 = 3 steps per epoch

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [r["knn_top1"] for r in rows][0] == "nan"
    assert float(rows[1]["knn_top1"]) == pytest.approx(recorder.reference[1], abs=1e-9)

    events = []
    for path in glob.glob(str(tmp_path / "eval" / "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == "knn_top1":
                    events.append((event.step, float(tf.make_ndarray(value.tensor))))
    assert len(events) == 1
    assert events[0][0] == 6
    assert events[0][1] == pytest.approx(recorder.reference[1], abs=1e-6)


def test_knn_monitor_schedule_without_fill_and_missing_encoder():
    x = np.random.default_rng(9).random((6, 2, 2, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])

    def make_ds():
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(4)

    monitor = knn.KNNMonitor(make_ds, make_ds, num_classes=3, every_n_epochs=3, k=1)
    model = TinySimCLR()
    model(x)
    monitor.set_model(model)
    feats = model.encoder(x).numpy()
    expected = float((np_knn_scores(feats, feats, y, 3, 1, 0.1).argmax(1) == y).mean())
    for epoch, runs in [(0, False), (1, False), (2, True), (5, True)]:
        logs = {"loss": 1.0}
        monitor.on_epoch_end(epoch, logs)
        assert ("knn_top1" in logs) == runs
        if runs:
            assert logs["knn_top1"] == pytest.approx(expected, abs=1e-9)

    plain = keras.Sequential([keras.Input((2, 2, 3)), keras.layers.Flatten()])
    monitor.set_model(plain)
    with pytest.raises(AttributeError, match="encoder"):
        monitor.on_epoch_end(2, {})
    with pytest.raises(TypeError, match="callables"):
        knn.KNNMonitor(make_ds(), make_ds, num_classes=3)


class IdentityEncoderModel(keras.Model):
    """Encoder without weights, so features are the flattened images themselves."""

    def __init__(self):
        super().__init__()
        self.encoder = keras.layers.Flatten()

    def call(self, x, training=False):
        return self.encoder(x)


def test_knn_monitor_bank_size_takes_first_examples():
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    bank_x = np.array([e1, e2, e1, e1, e1], np.float32)[:, :, None]  # [5, 2, 1] "images"
    bank_y = np.array([0, 1, 1, 1, 1])
    query_x, query_y = np.array([e1], np.float32)[:, :, None], np.array([0])

    def monitor_top1(bank_size):
        monitor = knn.KNNMonitor(
            lambda: tf.data.Dataset.from_tensor_slices((bank_x, bank_y)).batch(2),
            lambda: tf.data.Dataset.from_tensor_slices((query_x, query_y)).batch(2),
            num_classes=2,
            k=3,
            bank_size=bank_size,
        )
        monitor.set_model(IdentityEncoderModel())
        logs = {}
        monitor.on_epoch_end(0, logs)
        return logs["knn_top1"]

    # First two bank examples: neighbours e1 (class 0, weight e^10) and e2 (class 1, weight 1).
    assert monitor_top1(2) == 1.0
    # Whole bank, k=3: e1 (class 0) is outvoted by two copies of e1 labelled class 1.
    assert monitor_top1(None) == 0.0
