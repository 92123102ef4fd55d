"""BatchNorm vs stock Keras BN and a NumPy reference; global BN on 2 replicas vs one device."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.models.layers import BatchNorm

MOMENTUM, EPS = 0.9, 1e-5


def _pair(shape, center=True, scale=True, seed=0, **kw):
    """Our BatchNorm and stock Keras BN with identical (random) gamma/beta."""
    ours = BatchNorm(momentum=MOMENTUM, epsilon=EPS, center=center, scale=scale, **kw)
    ref = keras.layers.BatchNormalization(
        momentum=MOMENTUM, epsilon=EPS, center=center, scale=scale
    )
    ours.build(shape)
    ref.build(shape)
    rng = np.random.default_rng(seed)
    c = shape[-1]
    if scale:
        g = rng.uniform(0.5, 1.5, c).astype("float32")
        ours.gamma.assign(g)
        ref.gamma.assign(g)
    if center:
        b = rng.normal(size=c).astype("float32")
        ours.beta.assign(b)
        ref.beta.assign(b)
    return ours, ref


def _step(layer, x, w, training):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * w)
    grads = tape.gradient(loss, [x] + layer.trainable_weights)
    return y.numpy(), [g.numpy() for g in grads]


def _numpy_bn(x, gamma, beta):
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axes), x.var(axes)  # biased variance, as Keras
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta, mean, var


@pytest.mark.parametrize(
    "shape,center,scale",
    [
        ((6, 5, 4, 3), True, True),
        ((16, 7), True, True),
        ((6, 5, 4, 3), False, True),
        ((16, 7), False, False),
    ],
)
def test_training_and_inference_match_keras(shape, center, scale):
    ours, ref = _pair(shape, center, scale)
    rng = np.random.default_rng(1)
    for step in range(3):
        # Non-zero mean and non-unit scale, different every step.
        x = (rng.normal(size=shape) * (1.0 + step) + 2.0 - step).astype("float32")
        w = rng.normal(size=shape).astype("float32")
        y1, g1 = _step(ours, x, w, True)
        y2, g2 = _step(ref, x, w, True)
        np.testing.assert_allclose(y1, y2, rtol=1e-4, atol=1e-4)
        assert len(g1) == len(g2) == 1 + int(center) + int(scale)
        for a, b in zip(g1, g2, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(ours.moving_mean.numpy(), ref.moving_mean.numpy(), 1e-5, 1e-6)
        np.testing.assert_allclose(
            ours.moving_variance.numpy(), ref.moving_variance.numpy(), 1e-5, 1e-6
        )
    # Inference: moving statistics, gradients still flow to x and gamma/beta.
    x = rng.normal(size=shape).astype("float32")
    w = rng.normal(size=shape).astype("float32")
    mm_before = ours.moving_mean.numpy().copy()
    y1, g1 = _step(ours, x, w, False)
    y2, g2 = _step(ref, x, w, False)
    np.testing.assert_allclose(y1, y2, rtol=1e-4, atol=1e-4)
    for a, b in zip(g1, g2, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(ours.moving_mean.numpy(), mm_before)


def test_training_matches_numpy_closed_form():
    """Independent of Keras: output and moving stats from the textbook formulas."""
    shape = (4, 3, 3, 5)
    ours, _ = _pair(shape, seed=3)
    x = (np.random.default_rng(2).normal(size=shape) * 3 + 1).astype("float32")
    y = ours(tf.constant(x), training=True).numpy()
    ref, mean, var = _numpy_bn(x, ours.gamma.numpy(), ours.beta.numpy())
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.moving_mean.numpy(), (1 - MOMENTUM) * mean, rtol=1e-5)
    np.testing.assert_allclose(
        ours.moving_variance.numpy(), MOMENTUM + (1 - MOMENTUM) * var, rtol=1e-5
    )
    # Inference with the updated stats: (x - mm) / sqrt(mv + eps) * g + b.
    yi = ours(tf.constant(x), training=False).numpy()
    mm, mv = ours.moving_mean.numpy(), ours.moving_variance.numpy()
    np.testing.assert_allclose(
        yi,
        (x - mm) / np.sqrt(mv + EPS) * ours.gamma.numpy() + ours.beta.numpy(),
        rtol=1e-4,
        atol=1e-4,
    )


def test_trainable_false_runs_inference_and_keeps_stats():
    shape = (8, 4)
    ours, ref = _pair(shape)
    x = np.random.default_rng(0).normal(size=shape).astype("float32") + 3.0
    ours(tf.constant(x), training=True)  # move the statistics away from init first
    ours.trainable = False
    assert ours.trainable_weights == []
    mm, mv = ours.moving_mean.numpy().copy(), ours.moving_variance.numpy().copy()
    y_train = ours(tf.constant(x), training=True).numpy()
    y_inf = ours(tf.constant(x), training=False).numpy()
    np.testing.assert_array_equal(y_train, y_inf)
    np.testing.assert_array_equal(ours.moving_mean.numpy(), mm)
    np.testing.assert_array_equal(ours.moving_variance.numpy(), mv)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    shape = (8, 4, 4, 6)
    ours = BatchNorm(dtype=policy)
    ref = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPS, dtype=policy)
    x = (np.random.default_rng(0).normal(size=shape) * 4 + 10).astype("float32")
    xt = tf.constant(x)
    y1, y2 = ours(xt, training=True), ref(xt, training=True)
    assert y1.dtype == y2.dtype == tf.as_dtype(policy.split("_")[1])
    assert ours.gamma.dtype == ours.moving_mean.dtype == "float32"
    tol = 2e-2 if policy == "mixed_bfloat16" else 2e-3
    np.testing.assert_allclose(
        tf.cast(y1, tf.float32).numpy(), tf.cast(y2, tf.float32).numpy(), atol=tol * 5, rtol=tol
    )
    # Statistics are accumulated in float32 from the (low precision) inputs.
    xin = tf.cast(tf.cast(xt, y1.dtype), tf.float32).numpy()
    np.testing.assert_allclose(ours.moving_mean.numpy(), 0.1 * xin.mean((0, 1, 2)), rtol=1e-3)
    np.testing.assert_allclose(
        ours.moving_mean.numpy(), ref.moving_mean.numpy(), rtol=1e-3, atol=1e-3
    )


def test_get_config_roundtrip():
    layer = BatchNorm(
        momentum=0.8,
        epsilon=1e-3,
        center=False,
        gamma_initializer="zeros",
        synchronized=True,
        name="bn_x",
    )
    clone = BatchNorm.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert clone.momentum == 0.8 and clone.synchronized and not clone.center
    clone.build((2, 3))
    np.testing.assert_array_equal(clone.gamma.numpy(), np.zeros(3, "float32"))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(momentum=1.5)
    with pytest.raises(ValueError, match="rank"):
        BatchNorm()(tf.zeros([3]))


# -- two replicas ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strategy():
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs 2 logical CPU devices (see conftest.py)")
    return tf.distribute.MirroredStrategy([d.name for d in devices[:2]])


def _replica_run(strategy, layer, x, w):
    """Forward + backward on 2 replicas, each getting half of x; returns per-replica results."""
    half = x.shape[0] // 2

    def value_fn(ctx):
        i = ctx.replica_id_in_sync_group
        return tf.constant(x[i * half : (i + 1) * half]), tf.constant(w[i * half : (i + 1) * half])

    dist = strategy.experimental_distribute_values_from_function(value_fn)

    @tf.function
    def step(xw):
        xr, wr = xw
        with tf.GradientTape() as tape:
            tape.watch(xr)
            y = layer(xr, training=True)
            loss = tf.reduce_sum(y * wr)
        gx, *gv = tape.gradient(loss, [xr] + layer.trainable_weights)
        return y, gx, gv

    y, gx, gv = strategy.run(step, args=(dist,))
    cat = lambda v: np.concatenate([t.numpy() for t in strategy.experimental_local_results(v)])  # noqa: E731
    gsum = [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None).numpy() for g in gv]
    return cat(y), cat(gx), gsum


@pytest.mark.parametrize("shape", [(8, 3, 3, 4), (12, 5)])
def test_synchronized_two_replicas_match_global_batch(strategy, shape):
    rng = np.random.default_rng(7)
    with strategy.scope():
        ours = BatchNorm(momentum=MOMENTUM, epsilon=EPS, synchronized=True)
        ours.build(shape)
    ref = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPS)
    ref.build(shape)
    g = rng.uniform(0.5, 1.5, shape[-1]).astype("float32")
    b = rng.normal(size=shape[-1]).astype("float32")
    for layer in (ours, ref):
        layer.gamma.assign(g)
        layer.beta.assign(b)
    for step in range(2):
        # Replica halves with very different statistics: local BN would be far off.
        x = rng.normal(size=shape).astype("float32")
        x[: shape[0] // 2] = x[: shape[0] // 2] * 0.5 + 3.0 + step
        w = rng.normal(size=shape).astype("float32")
        y, gx, gvars = _replica_run(strategy, ours, x, w)
        y_ref, g_ref = _step(ref, x, w, True)
        np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(gx, g_ref[0], rtol=1e-3, atol=1e-4)
        for a, r in zip(gvars, g_ref[1:], strict=True):
            np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4)
        for v, r in (
            (ours.moving_mean, ref.moving_mean),
            (ours.moving_variance, ref.moving_variance),
        ):
            for local in strategy.experimental_local_results(v.value):
                np.testing.assert_allclose(local.numpy(), r.numpy(), rtol=1e-5, atol=1e-5)


def test_unsynchronized_two_replicas_use_local_statistics(strategy):
    shape = (8, 2, 2, 3)
    rng = np.random.default_rng(9)
    x = rng.normal(size=shape).astype("float32")
    x[:4] += 5.0
    w = rng.normal(size=shape).astype("float32")
    with strategy.scope():
        ours = BatchNorm(synchronized=False)
        ours.build(shape)
    y, _, _ = _replica_run(strategy, ours, x, w)
    for half in (slice(0, 4), slice(4, 8)):
        ref, _, _ = _numpy_bn(x[half], np.ones(3), np.zeros(3))
        np.testing.assert_allclose(y[half], ref, rtol=1e-4, atol=1e-4)
