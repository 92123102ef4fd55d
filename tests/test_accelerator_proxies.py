"""TPU and multi-GPU code paths, proven on CPU proxies (issue 16).

No accelerator is reachable here, so each accelerator requirement is checked through its CPU
equivalent: the traced step graphs (TPUs have no float64), MirroredStrategy over the two logical
CPUs of conftest.py (several replicas), XLA on CPU, and the TPU cluster resolver faked at the
boundary. References are one-device runs, NumPy, or the same run with the feature off.
"""

from __future__ import annotations

import json
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config
from tensorflow.core.framework import types_pb2

from simclr_tf import config, distribute, evaluate, knn, tpu, train
from simclr_tf.data import recipe as recipe_rules

SIZE = 8
CLASSES = 3


@pytest.fixture(autouse=True)
def _float32_policy_after():
    """The dtype policy is global: leave it as the other tests expect it."""
    yield
    keras.mixed_precision.set_dtype_policy("float32")


# This file's settings over conftest.TINY_CONFIG.
CASE = dict(
    seed=1,
    dataset="image_folder",
    image_size=SIZE,
    eval_split="test",
    train_batch_size=4,
    train_steps=2,
    learning_rate=0.1,
    learning_rate_scaling="sqrt",
    temperature=0.5,
    proj_out_dim=8,
    eval_batch_size=4,
)


def _build(cfg: config.Config, strategy: tf.distribute.Strategy | None = None):
    strategy = strategy or tf.distribute.get_strategy()
    schedule = train.make_schedule_for(cfg, num_train_examples=100)
    return train.build_for_run(cfg, strategy, types.SimpleNamespace(num_classes=CLASSES), schedule)


# ------------------------------------------------------------------------------------ float64


def float64_ops(function: tf.types.experimental.ConcreteFunction) -> list[str]:
    """Ops of a traced function, nested functions (loops, conds, calls) included, that touch
    float64: any dtype attribute (T, SrcT, DstT, dtype, output types ...) equal to DT_DOUBLE."""
    graph_def = function.graph.as_graph_def()
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    found = []
    for node in nodes:
        for value in node.attr.values():
            if value.type == types_pb2.DT_DOUBLE or types_pb2.DT_DOUBLE in value.list.type:
                found.append(f"{node.op} {node.name}")
                break
    return found


# Every train mode; the second combines three features in one trace to keep the test short.
_TRAIN_MODES = {
    "pretrain_probe_host": {},
    "pretrain_device_augment_gradient_cache_bfloat16": {
        "augment_on": "device",
        "micro_batch_size": 2,
        "mixed_precision": "bfloat16",
    },
    "finetune": {"train_mode": "finetune", "checkpoint": "none"},
}


@pytest.mark.parametrize("mode", sorted(_TRAIN_MODES))
def test_train_and_test_steps_have_no_float64(mode):
    """TPUs have no float64: not one op of a traced train or test step may use it."""
    cfg = tiny_config(CASE, **_TRAIN_MODES[mode])
    model = _build(cfg)
    images = tf.TensorSpec([4, SIZE, SIZE, 3])
    labels = tf.TensorSpec([4], tf.int32)
    if cfg.train_mode == "finetune":
        train_input = (images, labels)
    elif cfg.augment_on == "device":
        train_input = (tf.TensorSpec([4, SIZE, SIZE, 3], tf.uint8), labels)
    else:
        train_input = ((images, images), labels)
    step = tf.function(model.train_step).get_concrete_function(train_input)
    assert float64_ops(step) == []
    test = tf.function(model.test_step).get_concrete_function(
        (images, labels, tf.TensorSpec([4], tf.float32))
    )
    assert float64_ops(test) == []


def test_float64_detector_sees_nested_functions():
    """The check can fail: a float64 op inside a while loop body is found."""

    @tf.function
    def f(x):
        return tf.while_loop(
            lambda i, v: i < 2,
            lambda i, v: (i + 1, v + tf.cast(tf.cast(v, tf.float64), v.dtype)),
            (0, x),
        )[1]

    assert float64_ops(f.get_concrete_function(tf.TensorSpec([2]))) != []
    assert float64_ops(tf.function(lambda x: x * 2).get_concrete_function(tf.TensorSpec([2]))) == []


# ------------------------------------------------------------------ evaluation with padding


@pytest.mark.parametrize("per_class", [3])
def test_eval_last_batch_smaller_than_replicas_matches_one_device(
    tmp_path, write_png_folder, strategy, per_class
):
    """9 test images at batch 4 on 2 replicas: the last batch holds 1 image, so replica 1 gets
    nothing but padding. Counts and accuracies equal one device's result.json."""
    write_png_folder(tmp_path / "data", CLASSES, {"train": 1, "test": per_class}, SIZE)
    cfg = tiny_config(CASE, data_dir=str(tmp_path / "data"), eval_batch_size=4)
    batches = list(distribute.pad_batches(evaluate.eval_input(cfg), cfg.eval_batch_size))
    assert [b[0].shape[0] for b in batches] == [4, 4, 4], "static, padded batches"
    assert [float(b[2].numpy().sum()) for b in batches] == [4, 4, 1]

    results, models = {}, {}
    for name, strat in (("one", tf.distribute.get_strategy()), ("two", strategy)):
        model = models[name] = _build(cfg, strat)
        if name == "two":
            model.set_weights(models["one"].get_weights())
        (tmp_path / name).mkdir()
        evaluate.evaluate(cfg, model, None, 0, str(tmp_path / name))
        results[name] = json.loads((tmp_path / name / "result.json").read_text())
    one, two = results["one"], results["two"]
    assert one["num_examples"] == two["num_examples"] == CLASSES * per_class
    assert two["label_top_1_accuracy"] == pytest.approx(one["label_top_1_accuracy"], abs=1e-7)
    assert two["label_top_5_accuracy"] == pytest.approx(one["label_top_5_accuracy"], abs=1e-7)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-5)

    # Independent reference: NumPy over every real image once.
    images = np.concatenate([b[0].numpy()[b[2].numpy() > 0] for b in batches])
    labels = np.concatenate([b[1].numpy()[b[2].numpy() > 0] for b in batches])
    logits = models["one"](images, training=False)["logits_sup"].numpy()
    assert one["label_top_1_accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))


def test_eval_batch_not_divisible_by_replicas_names_the_fix():
    with pytest.raises(distribute.StrategyError, match="--eval_batch_size=4 or 6"):
        distribute.check_eval_batch(5, 2)
    distribute.check_eval_batch(6, 2)


# ------------------------------------------------------------------------------ kNN monitor


class _RecordingEncoder(keras.layers.Layer):
    """A fixed random projection that records whether it was called in replica context."""

    def __init__(self):
        super().__init__(name="recording_encoder")
        self.contexts = []
        self.kernel = tf.constant(
            np.random.default_rng(3).normal(size=(SIZE * SIZE * 3, 5)), tf.float32
        )

    def call(self, images, training=None):
        self.contexts.append(tf.distribute.in_cross_replica_context())
        return tf.matmul(tf.reshape(images, [-1, SIZE * SIZE * 3]), self.kernel)


class _EncoderModel(keras.Model):
    def __init__(self):
        super().__init__()
        self.encoder = _RecordingEncoder()

    def call(self, x, training=False):
        return self.encoder(x)


def test_knn_monitor_runs_through_the_strategy(strategy):
    """Bank of 10 at batch 4 and 7 queries at batch 4 (last batch 3; padded) on 2 replicas:
    the encoder runs in replica context, and top-1 equals the one-device NumPy kNN."""
    rng = np.random.default_rng(5)
    bank_x = rng.uniform(size=(10, SIZE, SIZE, 3)).astype(np.float32)
    bank_y = np.arange(10) % CLASSES
    query_x = rng.uniform(size=(7, SIZE, SIZE, 3)).astype(np.float32)
    query_y = np.arange(7) % CLASSES
    with strategy.scope():
        model = _EncoderModel()
    monitor = knn.KNNMonitor(
        lambda: tf.data.Dataset.from_tensor_slices((bank_x, bank_y)).batch(4),
        lambda: tf.data.Dataset.from_tensor_slices((query_x, query_y)).batch(4),
        num_classes=CLASSES,
        k=3,
        bank_size=9,
    )
    monitor.set_model(model)
    got = monitor.evaluate()
    assert model.encoder.contexts and not any(model.encoder.contexts)

    kernel = model.encoder.kernel.numpy()

    def unit(x):
        f = x.reshape(len(x), -1) @ kernel
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    sim = unit(query_x) @ unit(bank_x[:9]).T
    scores = np.zeros((7, CLASSES))
    for q in range(7):
        top = np.argsort(-sim[q])[:3]
        for j in top:
            scores[q, bank_y[j]] += np.exp(sim[q, j] / 0.1)
    assert got == pytest.approx(np.mean(scores.argmax(1) == query_y), abs=1e-9)


# ---------------------------------------------------------------------------- TPU resolution


class _FakeResolver:
    """Stands in for TPUClusterResolver: records what it was asked to resolve."""

    calls: list[dict] = []

    def __init__(self, tpu=None, zone=None, project=None):
        _FakeResolver.calls.append({"tpu": tpu, "zone": zone, "project": project})
        if tpu not in ("local", "my-tpu"):
            raise ValueError(f"Could not resolve {tpu!r} through the cloud API")


class _FakeTPUStrategy:
    """Named like TF's class, as distribute.is_tpu recognises it."""

    num_replicas_in_sync = 8

    def __init__(self, resolver):
        self.resolver = resolver


_FakeTPUStrategy.__name__ = "TPUStrategy"


@pytest.fixture
def fake_tpu(monkeypatch):
    """The TPU boundary faked: resolver, connection, initialisation, TPU devices, strategy."""
    _FakeResolver.calls = []
    state = {"tpu_devices": ["/device:TPU:0"], "files": []}
    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", _FakeResolver)
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", lambda r: None)
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", lambda r: None)
    real_list = tf.config.list_logical_devices
    monkeypatch.setattr(
        tf.config,
        "list_logical_devices",
        lambda kind=None: state["tpu_devices"] if kind == "TPU" else real_list(kind),
    )
    monkeypatch.setattr(tf.distribute, "TPUStrategy", _FakeTPUStrategy)
    monkeypatch.setattr(distribute, "describe", lambda strategy, requested="": "fake")
    monkeypatch.setattr(
        tpu.glob,
        "glob",
        lambda pattern: [
            f for f in state["files"] if f.startswith(pattern.split("*")[0].split("[")[0])
        ],
    )
    for var in ("TPU_NAME", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID"):
        monkeypatch.delenv(var, raising=False)
    return state


def test_tpu_vm_detection(fake_tpu):
    assert tpu.tpu_vm_evidence({}) is None
    fake_tpu["files"] = ["/dev/accel0", "/dev/accel1"]
    assert "/dev/accel0" in tpu.tpu_vm_evidence({})
    fake_tpu["files"] = ["/dev/vfio/0"]
    assert tpu.tpu_vm_evidence({}) is None, "vfio alone is ordinary PCI pass-through"
    assert "/dev/vfio/0" in tpu.tpu_vm_evidence({"TPU_WORKER_ID": "0"})
    fake_tpu["files"] = []
    assert tpu.tpu_target(None, {"TPU_NAME": "local"}) == "local"
    assert tpu.tpu_target("my-tpu", {"TPU_NAME": "other"}) == "my-tpu"
    assert tpu.tpu_target(None, {}) is None
    assert tpu.tpu_target(None, {"TPU_ACCELERATOR_TYPE": "v4-8"}) == "local"


def test_auto_on_a_tpu_vm_uses_the_local_tpu(fake_tpu):
    fake_tpu["files"] = ["/dev/accel0"]
    strategy = distribute.make_strategy("auto")
    assert _FakeResolver.calls == [{"tpu": "local", "zone": None, "project": None}]
    assert strategy.num_replicas_in_sync == 8


def test_tpu_name_local_from_env_skips_the_cloud_api(fake_tpu, monkeypatch):
    monkeypatch.setenv("TPU_NAME", "local")
    distribute.make_strategy("tpu")
    assert _FakeResolver.calls[0]["tpu"] == "local"
    distribute.make_strategy("auto", tpu_name="my-tpu", tpu_zone="z", gcp_project="p")
    assert _FakeResolver.calls[1] == {"tpu": "my-tpu", "zone": "z", "project": "p"}


def test_auto_on_a_tpu_vm_never_falls_back_to_the_host_cpu(fake_tpu, monkeypatch):
    fake_tpu["files"] = ["/dev/accel0"]
    fake_tpu["tpu_devices"] = []  # resolved, but this TensorFlow build sees no TPU
    with pytest.raises(distribute.StrategyError, match="sees no TPU device"):
        distribute.make_strategy("auto")
    monkeypatch.setenv("TPU_NAME", "unknown-tpu")
    with pytest.raises(distribute.StrategyError, match="looks like a TPU VM.*--tpu_name=local"):
        distribute.make_strategy("auto")


def test_float16_on_a_tpu_is_refused_naming_bfloat16(fake_tpu):
    strategy = distribute.make_strategy("tpu", tpu_name="my-tpu")
    assert distribute.is_tpu(strategy)
    with pytest.raises(distribute.StrategyError, match="--mixed_precision=bfloat16"):
        distribute.check_precision(strategy, "float16")
    distribute.check_precision(strategy, "bfloat16")
    distribute.check_precision(tf.distribute.get_strategy(), "float16")  # GPUs/CPUs: allowed


# ------------------------------------------------------------- float16 across replicas


@pytest.mark.parametrize("agreed", [True, False])
def test_float16_overflow_on_one_replica_skips_the_step_everywhere(strategy, agreed):
    """Replica 1's gradient overflows, replica 0's is finite: no replica may apply the step."""
    cfg = tiny_config(CASE, mixed_precision="float16", optimizer="momentum", learning_rate=0.1)
    with strategy.scope():
        opt = train.build_optimizer_for(cfg, train.make_schedule_for(cfg, 100))
        if not agreed:  # Keras's own optimizer: the sensitivity check of this test
            opt = keras.optimizers.LossScaleOptimizer(opt.inner_optimizer)
        weight = keras.Variable(np.ones(3, np.float32), name="w")
        opt.build([weight])
    scale = float(opt.dynamic_scale.numpy())

    @tf.function
    def step():
        def replica_fn():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            grad = tf.where(rid == 1, tf.fill([3], float("inf")), tf.ones([3]))
            opt.apply([grad], [weight])

        strategy.run(replica_fn)

    step()
    copies = [np.array(c) for c in weight.value.values]
    if agreed:
        for c in copies:
            np.testing.assert_array_equal(c, np.ones(3, np.float32))
        assert float(opt.dynamic_scale.numpy()) == scale / 2
    else:
        assert not all(np.all(np.isfinite(c)) for c in copies)


# ------------------------------------------------------------------- steps_per_execution


def test_steps_per_execution_divides_every_step_counting_event():
    assert train.steps_per_execution(0, False, 0, 313, 313, 31300) == 1  # CPU/GPU auto
    assert train.steps_per_execution(0, True, 0, 313, 313, 31300) == 313  # TPU: one per epoch
    assert train.steps_per_execution(0, True, 0, 2502, 2502, 250200) == 834  # <= 1000
    assert train.steps_per_execution(4, False, 6, 12, 12, 120) == 3  # resumed at step 6
    assert train.steps_per_execution(3, False, 0, 3, 3, 6) == 3


def _csv_rows(path) -> list[dict[str, str]]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_steps_per_execution_gives_the_same_run(tmp_path, write_png_folder):
    """N=3 and N=1: same weights, same checkpoints (steps and values), same metrics.csv.

    N=4 is requested and lowered to 3, the epoch length (12 images at batch 4)."""
    from simclr_tf.data import sources

    data = write_png_folder(tmp_path / "data", CLASSES, {"train": 4, "test": 1}, SIZE)
    runs = {}
    for n in (1, 3):
        cfg = tiny_config(
            CASE,
            data_dir=str(data),
            train_steps=6,
            checkpoint_steps=3,
            steps_per_execution=4 if n == 3 else 1,
            verbose=0,
            model_dir=str(tmp_path / f"run{n}"),
        )
        info = sources.dataset_info(cfg.dataset, cfg.data_dir)
        (tmp_path / f"run{n}").mkdir()
        model = train.train(cfg, tf.distribute.get_strategy(), info, str(tmp_path / f"run{n}"))
        assert model.steps_per_execution == n
        runs[n] = model.get_weights()
    for a, b in zip(runs[1], runs[3], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    ckpts = {n: tf.train.get_checkpoint_state(str(tmp_path / f"run{n}")) for n in (1, 3)}
    assert [p.rsplit("-", 1)[1] for p in ckpts[3].all_model_checkpoint_paths] == ["3", "6"]
    assert [p.rsplit("-", 1)[1] for p in ckpts[1].all_model_checkpoint_paths] == ["3", "6"]
    for p1, p3 in zip(
        ckpts[1].all_model_checkpoint_paths, ckpts[3].all_model_checkpoint_paths, strict=True
    ):
        r1, r3 = tf.train.load_checkpoint(p1), tf.train.load_checkpoint(p3)
        names = sorted(r1.get_variable_to_shape_map())
        assert names == sorted(r3.get_variable_to_shape_map())
        for name in names:
            if "VARIABLE_VALUE" in name:
                np.testing.assert_allclose(
                    r1.get_tensor(name), r3.get_tensor(name), rtol=1e-6, atol=1e-7, err_msg=name
                )
    rows1, rows3 = (_csv_rows(tmp_path / f"run{n}" / "metrics.csv") for n in (1, 3))
    assert [r["step"] for r in rows1] == [r["step"] for r in rows3] == ["3", "6"]
    for r1, r3 in zip(rows1, rows3, strict=True):
        assert r1.keys() == r3.keys()
        for key in r1:
            assert float(r3[key]) == pytest.approx(float(r1[key]), rel=1e-5, abs=1e-7), key


# --------------------------------------------------------------- --jit_compile, 2 replicas

_JIT_SCRIPT = """
import types
import keras
import numpy as np
from simclr_tf import config, distribute, train
distribute.allow_cpu_xla_clusters()  # before TF optimises a graph, as cli.py does
import tensorflow as tf
from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.layers import BatchNorm
from simclr_tf.models.simclr import SimCLRModel

class TinyEncoder(keras.layers.Layer):
    # conv + global batch norm + pool: a few seconds of XLA compilation, unlike a ResNet.
    def __init__(self, **kw):
        super().__init__(**kw)
        self.conv = keras.layers.Conv2D(4, 3, name="conv")
        self.bn = BatchNorm(synchronized=True, name="bn")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build((None, None, None, 4))

    def call_endpoints(self, images, training=None, frozen_stages=0):
        if not self.built:
            self.build(images.shape)
        x = tf.nn.relu(self.bn(self.conv(images), training=training))
        return {"final_avg_pool": tf.reduce_mean(x, axis=[1, 2])}

strategy = distribute.make_strategy("mirrored", num_cpu_devices=2)
assert strategy.num_replicas_in_sync == 2
rng = np.random.default_rng(0)
batches = [rng.uniform(size=(8, 8, 8, 3)).astype(np.float32) for _ in range(2)]
labels = (np.arange(8) % 3).astype(np.int32)
weights = {}
for jit in (False, True):
    # lr 0.5: the step optimises the reference's objective (twice the mean NT-Xent), so this is
    # the same momentum-SGD step as lr 1.0 on the mean was when the tolerance was set.
    cfg = config.Config(train_batch_size=8, train_steps=2, warmup_epochs=0, learning_rate=0.5,
                        optimizer="momentum", jit_compile=jit)
    keras.utils.set_random_seed(4)
    with strategy.scope():
        head = ProjectionHead("nonlinear", num_layers=2, out_dim=4, global_bn=True,
                              name="projection_head")
        model = SimCLRModel(TinyEncoder(name="encoder"), head, 3, temperature=0.5)
        opt = train.build_optimizer_for(cfg, train.make_schedule_for(cfg, 16))
        train.compile_model(cfg.replace(image_size=8), model, opt)
    assert model.jit_compile is False, "never one XLA cluster around strategy.run"
    ds = tf.data.Dataset.from_generator(
        lambda: iter([((b, b[:, ::-1] * 0.8), labels) for b in batches]),
        output_signature=((tf.TensorSpec([8, 8, 8, 3]),) * 2, tf.TensorSpec([8], tf.int32)),
    )
    if not jit:
        initial = model.get_weights()
    model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 2
    weights[jit] = model.get_weights()
moved = max(float(np.abs(a - b).max()) for a, b in zip(initial, weights[False]))
diff = max(float(np.abs(a - b).max()) for a, b in zip(weights[False], weights[True]))
print("MOVED", moved, "MAXDIFF", diff)
"""


@pytest.mark.slow  # XLA compilation on a shared CPU: about a minute
def test_jit_compile_under_mirrored_compiles_per_device_and_matches(tmp_path):
    """--jit_compile with 2 replicas (2 logical CPUs): XLA clusters are compiled (per device;
    Keras's single cluster around strategy.run crashes here), and 2 steps give the weights of
    the run without XLA."""
    import os
    import pathlib
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "0",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": str(repo),
    }
    env.pop("TF_XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, "-c", _JIT_SCRIPT],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Compiled cluster using XLA" in done.stderr, "XLA must really compile"
    moved, diff = (float(t) for t in done.stdout.split()[1::2][-2:])
    assert moved > 1e-2, "the steps must move the weights far more than the tolerance"
    assert diff < 1e-5, f"XLA run differs from the plain run by {diff}"


# ------------------------------------------------------- per-replica BN moving statistics


def test_per_replica_batch_norm_averages_moving_statistics(strategy):
    """--global_bn=false on 2 replicas: each replica normalises with its own batch, but the
    moving statistics are the replicas' average on every copy (not replica 0's alone)."""
    from simclr_tf.models.layers import BatchNorm

    rng = np.random.default_rng(2)
    halves = [
        rng.normal(loc=r * 3.0, scale=1.0 + r, size=(4, 2, 2, 3)).astype(np.float32)
        for r in range(2)
    ]
    with strategy.scope():
        bn = BatchNorm(momentum=0.9, synchronized=False)
        bn.build((None, 2, 2, 3))

    @tf.function
    def step():
        def replica_fn():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            x = tf.where(rid == 0, tf.constant(halves[0]), tf.constant(halves[1]))
            return bn(x, training=True)

        return strategy.run(replica_fn)

    out = strategy.experimental_local_results(step())
    # Normalisation stays per replica: each replica's output has zero mean over its batch.
    for y in out:
        np.testing.assert_allclose(y.numpy().mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    means = [h.mean(axis=(0, 1, 2)) for h in halves]
    variances = [h.var(axis=(0, 1, 2)) for h in halves]
    want_mean = 0.1 * np.mean(means, axis=0)
    want_var = 0.9 + 0.1 * np.mean(variances, axis=0)
    for copy in bn.moving_mean.value.values:
        np.testing.assert_allclose(copy.numpy(), want_mean, rtol=1e-5, atol=1e-6)
    for copy in bn.moving_variance.value.values:
        np.testing.assert_allclose(copy.numpy(), want_var, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- image folders on any gfile


def test_image_folder_reads_any_gfile_path():
    """TPU VMs read gs://; TF's in-memory ram:// filesystem stands in for it (no network)."""
    import io

    from PIL import Image

    from simclr_tf.data import sources

    root = "ram://accel_image_folder"
    rng = np.random.default_rng(0)
    written = {}
    for split, count in (("train", 2), ("test", 1)):
        for c in range(CLASSES):
            tf.io.gfile.makedirs(f"{root}/{split}/class{c}")
            for i in range(count):
                pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG")
                with tf.io.gfile.GFile(f"{root}/{split}/class{c}/{i}.png", "wb") as f:
                    f.write(buffer.getvalue())
                written.setdefault(split, []).append((pixels, c))
    info = sources.dataset_info("image_folder", root)
    assert info.split_sizes == {"train": 6, "test": 3}
    assert info.class_names == ("class0", "class1", "class2")
    assert info.image_shape == (SIZE, SIZE, 3)
    ds, _ = sources.load_split("image_folder", "train", data_dir=root)
    got = [(x.numpy(), int(y)) for x, y in ds]
    assert len(got) == 6
    for (x, y), (pixels, c) in zip(got, written["train"], strict=True):
        assert y == c
        np.testing.assert_array_equal(x, pixels)


# ------------------------------------------------------------ --augment_on=auto placement

_GPU = "/job:localhost/replica:0/task:0/device:GPU:"


class _FakeStrategy:
    """A strategy's device list, faked at the boundary ``distribute.accelerator`` reads."""

    def __init__(self, devices: list[str]):
        self.extended = types.SimpleNamespace(worker_devices=devices)
        self.num_replicas_in_sync = len(devices)


class TPUStrategyFake(_FakeStrategy):
    """Named like TPUStrategy: ``distribute.is_tpu`` goes by the class name."""


def test_accelerator_of_strategies():
    assert distribute.accelerator(tf.distribute.get_strategy()) is None  # this CPU machine
    assert distribute.accelerator(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])) is None
    assert distribute.accelerator(_FakeStrategy([_GPU + "0", _GPU + "1"])) == "GPU"
    assert distribute.accelerator(TPUStrategyFake(["/job:worker/task:0/device:CPU:0"])) == "TPU"


@pytest.mark.parametrize(
    "requested,train_mode,accel,fixed,recipe,expected",
    [
        ("auto", "pretrain", None, False, True, "host"),  # CPU run: host, any images
        ("auto", "pretrain", None, True, True, "host"),
        ("auto", "pretrain", "GPU", False, True, "device"),  # ImageNet on GPUs
        ("auto", "pretrain", "TPU", True, True, "device"),  # CIFAR on a TPU
        ("auto", "pretrain", "TPU", False, False, "host"),  # study recipe, variable size
        ("auto", "pretrain", "GPU", True, False, "device"),  # study recipe, fixed size
        ("auto", "finetune", "TPU", False, True, "host"),  # only pretraining augments on device
        ("host", "pretrain", "TPU", False, True, "host"),  # explicit values are kept
        ("device", "pretrain", None, True, True, "device"),
    ],
)
def test_choose_augment_on(requested, train_mode, accel, fixed, recipe, expected):
    place, why = recipe_rules.choose_augment_on(
        requested, train_mode=train_mode, accelerator=accel, fixed_size=fixed, recipe=recipe
    )
    assert place == expected and why.startswith(f"--augment_on={requested}")


@pytest.mark.parametrize(
    "devices,expected", [([_GPU + "0", _GPU + "1"], "device"), (["/cpu:0", "/cpu:1"], "host")]
)
def test_run_py_resolves_auto_placement_logs_it_and_records_it(
    tmp_path, write_png_folder, monkeypatch, devices, expected
):
    """run.py's resolution (cli.read_dataset) on variable-size images: a faked two-GPU strategy
    gets the device path, two CPUs the host path; the log names the choice and the resolved
    config (what flags.json records) holds it, so the model and the input agree on it."""
    from absl import logging as absl_logging

    from simclr_tf import cli, model_dir

    root = write_png_folder(tmp_path / "data", CLASSES, {"train": 2, "test": 1}, SIZE)
    (root / "train" / "class00" / "big.png").write_bytes(
        tf.io.encode_png(tf.zeros([SIZE + 4, SIZE, 3], tf.uint8)).numpy()
    )  # a second size: variable-size images
    cfg = tiny_config(CASE, data_dir=str(root), model_dir=str(tmp_path / "run"), image_size=None)
    assert cfg.replace(augment_on=config.Config().augment_on).augment_on == "auto"  # default
    lines = []
    monkeypatch.setattr(absl_logging, "info", lambda msg, *args: lines.append(msg % args))
    resolved, info = cli.read_dataset(cfg.replace(augment_on="auto"), _FakeStrategy(devices))
    assert info.image_shape is None  # the folder is variable-size
    assert resolved.augment_on == expected
    assert any(line.startswith(f"Augmentation placement: {expected} (") for line in lines), lines
    model_dir.prepare(resolved, str(tmp_path / "run"))
    model_dir.record_flags(resolved, str(tmp_path / "run"), step=0, num_classes=CLASSES)
    assert json.loads((tmp_path / "run" / "flags.json").read_text())["augment_on"] == expected
    # Library callers that skip run.py get the same choice.
    assert train.place_augmentation(cfg, _FakeStrategy(devices), info).augment_on == expected
