"""The matmul filter gradient (models.conv_grad) is the convolution's gradient.

Checked against a NumPy float64 sum written from the definition and against TensorFlow's own
autodiff, in float32 (tight) and bfloat16 (to bfloat16 rounding); the forward pass and the
input gradient are TensorFlow's own ops and must match autodiff exactly.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from simclr_tf import config, train
from simclr_tf.models import conv_grad
from simclr_tf.models.conv import FixedPaddingConv2D


@pytest.fixture(autouse=True)
def _native_after():
    yield
    conv_grad.set_filter_gradient("native")
    keras.mixed_precision.set_dtype_policy("float32")


def numpy_filter_grad(x, dy, k, strides, padding):
    """dW[i, j, c, d] = sum_{n, h, w} xpad[n, s*h + i, s*w + j, c] * dy[n, h, w, d], float64."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    if padding == "SAME":
        p = (k - 1) // 2
        x = np.pad(x, [(0, 0), (p, p), (p, p), (0, 0)])
    _, ho, wo, _ = dy.shape
    out = np.zeros((k, k, x.shape[-1], dy.shape[-1]))
    for i in range(k):
        for j in range(k):
            tap = x[
                :,
                i : i + strides * (ho - 1) + 1 : strides,
                j : j + strides * (wo - 1) + 1 : strides,
            ]
            out[i, j] = np.einsum("nhwc,nhwd->cd", tap, dy)
    return out


def _grads(fn, x, k, dy):
    with tf.GradientTape() as tape:
        tape.watch([x, k])
        y = fn(x, k)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * dy)
    return y, *tape.gradient(loss, [x, k])


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# A tiny run on an 8 px image folder (cli/train tests).
CASE = dict(
    dataset="image_folder",
    image_size=8,
    eval_split="test",
    train_batch_size=4,
    train_steps=1,
    proj_out_dim=8,
    eval_batch_size=4,
    width_multiplier=0.0625,
)

CASES = [
    (3, 1, "SAME", 6),
    (3, 2, "VALID", 7),
    (7, 2, "VALID", 11),
    (3, 1, "VALID", 5),
    (3, 3, "VALID", 8),  # strided taps read phases; 8 rows pad to 9 before the phase split
]


@pytest.mark.parametrize("k,strides,padding,size", CASES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matmul_filter_gradient_is_the_convolution_gradient(k, strides, padding, size, dtype):
    rng = np.random.default_rng(k * 10 + strides)
    x = tf.constant(rng.normal(size=(3, size, size, 5)), dtype)
    kern = tf.constant(rng.normal(size=(k, k, 5, 4)), dtype)
    native = lambda a, b: tf.nn.conv2d(a, b, strides, padding)  # noqa: E731
    ours = lambda a, b: conv_grad.conv2d(a, b, strides, padding)  # noqa: E731
    y0 = native(x, kern)
    dy = tf.constant(rng.normal(size=y0.shape), tf.float32)
    y0, dx0, dk0 = _grads(native, x, kern, dy)
    y1, dx1, dk1 = _grads(ours, x, kern, dy)
    np.testing.assert_array_equal(y1.numpy(), y0.numpy())  # TF's own forward op
    np.testing.assert_array_equal(dx1.numpy(), dx0.numpy())  # and input gradient
    want = numpy_filter_grad(x.numpy(), tf.cast(dy, dtype).numpy(), k, strides, padding)
    if dtype == "float32":
        assert _rel(dk1.numpy(), want) < 1e-5
        np.testing.assert_allclose(dk1.numpy(), dk0.numpy(), rtol=1e-4, atol=1e-4)
    else:  # both round their float32 sums to bfloat16 (relative step 2^-8)
        assert dk1.dtype == tf.bfloat16
        assert _rel(dk1.numpy(), want) < 8e-3
        assert _rel(dk1.numpy(), want) < 2 * _rel(dk0.numpy(), want) + 1e-3


@pytest.mark.parametrize("strides,size", [(2, 9), (3, 10)])
def test_strided_gradient_with_unknown_spatial_shape(strides, size):
    """Traced with unknown batch, height and width (the phase split then pads and reshapes with
    dynamic sizes), the strided gradient is still the NumPy sum."""
    rng = np.random.default_rng(strides)
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    out = (size - 3) // strides + 1
    dy = rng.normal(size=(2, out, out, 4)).astype(np.float32)
    spec = tf.TensorSpec([None, None, None, None], tf.float32)
    fn = tf.function(
        lambda a, g: conv_grad.matmul_filter_gradient(a, g, tf.TensorShape([3, 3, 3, 4]), strides),
        input_signature=[spec, spec],
    )
    got = fn(tf.constant(x), tf.constant(dy)).numpy()
    assert _rel(got, numpy_filter_grad(x, dy, 3, strides, "VALID")) < 1e-6


@pytest.mark.parametrize(
    "size,strides,channels,want",
    [
        (14, 1, 128, True),  # 14x14 output: the largest map that takes the matmul
        (16, 1, 256, False),  # 16x16: the native kernel is as fast
        (16, 2, 128, True),  # strided: padded to 18, an 8x8 output
        (30, 2, 256, False),  # 30 -> 15x15 output
        (8, 1, 64, False),  # too few channels
    ],
)
def test_layers_take_the_matmul_gradient_at_small_maps_only(size, strides, channels, want):
    """The rule reads the layer's *output* map (after a strided conv's padding): a traced
    bfloat16 training step has MatMul and no Conv2DBackpropFilter exactly when it applies."""
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    conv_grad.set_filter_gradient("matmul")
    layer = FixedPaddingConv2D(4, 3, strides)
    layer.build((1, size, size, channels))
    x = tf.zeros((1, size, size, channels), tf.bfloat16)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(layer(x, training=True), tf.float32))
        return tape.gradient(loss, layer.trainable_variables)

    ops = {op.type for op in step.get_concrete_function().graph.get_operations()}
    assert ("MatMul" in ops) is want
    assert ("Conv2DBackpropFilter" in ops) is not want


@pytest.mark.parametrize("strides,padding,out", [(1, "SAME", 6), (2, "VALID", 2)])
def test_matmul_gradient_under_xla_and_two_replicas(strategy, strides, padding, out):
    """The accelerator paths on CPU proxies: XLA-compiled, and a step under MirroredStrategy on
    two logical CPUs (each replica its own batch half), give autodiff's float32 gradient; the
    strided case runs the stride-phase taps."""
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(4, 6, 6, 5)), tf.float32)
    kern = tf.constant(rng.normal(size=(3, 3, 5, 4)), tf.float32)
    dy = tf.constant(rng.normal(size=(4, out, out, 4)), tf.float32)
    ours = lambda a, b: conv_grad.conv2d(a, b, strides, padding)  # noqa: E731
    native = lambda a, b: tf.nn.conv2d(a, b, strides, padding)  # noqa: E731
    _, _, want = _grads(native, x, kern, dy)
    _, _, xla = tf.function(lambda: _grads(ours, x, kern, dy), jit_compile=True)()
    np.testing.assert_allclose(xla.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)

    def replica_fn():
        ctx = tf.distribute.get_replica_context()
        half = slice(2 * ctx.replica_id_in_sync_group, 2 * ctx.replica_id_in_sync_group + 2)
        part = lambda t: tf.gather(t, tf.range(half.start, half.stop))  # noqa: E731
        _, _, dk = _grads(ours, part(x), kern, part(dy))
        return ctx.all_reduce("sum", dk)

    summed = strategy.run(tf.function(replica_fn))
    for replica in strategy.experimental_local_results(summed):
        np.testing.assert_allclose(replica.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


def test_same_padding_with_strides_is_refused():
    with pytest.raises(ValueError, match="SAME padding needs stride 1"):
        conv_grad.conv2d(tf.zeros([1, 4, 4, 1]), tf.zeros([3, 3, 1, 1]), 2, "SAME")


@pytest.mark.parametrize("strides", [1, 2])
def test_bfloat16_layer_trains_on_the_matmul_gradient_only_when_asked(strides):
    """A 256-channel bfloat16 FixedPaddingConv2D: identical forward either way, the same kernel
    gradient to bfloat16 rounding, and the matmul path traced only in training with "matmul"."""
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    layer = FixedPaddingConv2D(8, 3, strides)
    layer.build((2, 5, 5, conv_grad.MIN_CHANNELS))
    x = tf.constant(np.random.default_rng(1).normal(size=(2, 5, 5, conv_grad.MIN_CHANNELS)))
    x = tf.cast(x, tf.bfloat16)

    def run(mode, training=True):
        conv_grad.set_filter_gradient(mode)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                y = layer(x, training=training)
                loss = tf.reduce_sum(tf.square(tf.cast(y, tf.float32)))
            return y, tape.gradient(loss, layer.trainable_variables)[0]

        fn = step.get_concrete_function()
        ops = {op.type for op in fn.graph.get_operations()}
        y, grad = fn()
        return y.numpy(), grad.numpy(), ops

    y0, g0, ops0 = run("native")
    y1, g1, ops1 = run("matmul")
    _, _, ops_eval = run("matmul", training=False)
    np.testing.assert_array_equal(y1, y0)
    assert _rel(g1, g0) < 1e-2
    assert "Conv2DBackpropFilter" in ops0 and "MatMul" not in ops0
    assert "Conv2DBackpropFilter" not in ops1 and "MatMul" in ops1
    assert ops_eval == ops0  # inference (and export) traces never take it


def test_auto_takes_matmul_only_for_bfloat16_on_cpu_without_xla():
    cpu = tf.distribute.get_strategy()

    class GPUStrategy:
        extended = type(
            "E", (), {"worker_devices": ["/job:localhost/replica:0/task:0/device:GPU:0"]}
        )

    base = config.Config()
    assert base.conv_filter_grad == "auto"
    bf16 = base.replace(mixed_precision="bfloat16")
    assert train.filter_gradient_for(bf16, cpu) == "matmul"
    assert train.filter_gradient_for(base, cpu) == "native"  # float32: reference parity
    assert train.filter_gradient_for(bf16.replace(jit_compile=True), cpu) == "native"
    assert train.filter_gradient_for(bf16, GPUStrategy()) == "native"
    assert train.filter_gradient_for(base.replace(conv_filter_grad="matmul"), cpu) == "matmul"
    assert train.filter_gradient_for(bf16.replace(conv_filter_grad="native"), cpu) == "native"
    with pytest.raises(ValueError, match="native"):
        conv_grad.set_filter_gradient("fast")


def test_run_py_resolves_auto_logs_it_and_build_for_run_sets_it(
    tmp_path, write_png_folder, monkeypatch
):
    """run.py's resolution (cli.read_dataset): bfloat16 on this CPU records "matmul" (what
    flags.json holds), and train.build_for_run sets the layers' choice from the config."""
    from absl import logging as absl_logging

    from simclr_tf import cli

    root = write_png_folder(tmp_path / "data", 2, {"train": 4, "test": 2}, 8)
    cfg = tiny_config(
        CASE, data_dir=str(root), model_dir=str(tmp_path / "run"), mixed_precision="bfloat16"
    )
    lines = []
    monkeypatch.setattr(absl_logging, "info", lambda msg, *args: lines.append(msg % args))
    resolved, info = cli.read_dataset(cfg, tf.distribute.get_strategy())
    assert resolved.conv_filter_grad == "matmul"
    assert "Convolution filter gradient: matmul." in lines
    conv_grad.set_filter_gradient("native")
    train.build_for_run(resolved, tf.distribute.get_strategy(), info, None)
    assert conv_grad.filter_gradient() == "matmul"
    fp32 = resolved.replace(mixed_precision="none", conv_filter_grad="auto")
    train.build_for_run(fp32, tf.distribute.get_strategy(), info, None)
    assert conv_grad.filter_gradient() == "native"
