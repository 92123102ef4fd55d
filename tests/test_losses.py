"""NT-Xent and cross_replica_concat against NumPy references written here (float64)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.losses import ContrastiveOutput, cross_replica_concat, nt_xent

# --------------------------------------------------------------------------- NumPy reference


def _np_normalise(z):
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def np_nt_xent(z1, z2, tau, hidden_norm=True):
    """Per-anchor loop over all 2N anchors of a single-device batch; returns loss, acc, entropy."""
    z1 = np.asarray(z1, np.float64)
    z2 = np.asarray(z2, np.float64)
    if hidden_norm:
        z1, z2 = _np_normalise(z1), _np_normalise(z2)
    n = len(z1)
    z = np.concatenate([z1, z2])
    losses, hits, entropies = [], [], []
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        s = np.array([z[i] @ z[k] / tau for k in others])
        m = s.max()
        log_z = m + math.log(np.exp(s - m).sum())
        log_p = s - log_z
        p = np.exp(log_p)
        losses.append(-log_p[others.index(pos)])
        hits.append(others[int(np.argmax(s))] == pos)
        entropies.append(-(p * log_p).sum())
    return float(np.mean(losses)), float(np.mean(hits)), float(np.mean(entropies))


def np_reference_two_direction_sum(z1, z2, tau):
    """The reference code's layout: [logits_ab, logits_aa] per direction, summed (not averaged)."""
    a, b = _np_normalise(np.asarray(z1, np.float64)), _np_normalise(np.asarray(z2, np.float64))
    n = len(a)
    eye = np.eye(n)

    def direction(x, y):
        xy = x @ y.T / tau
        xx = x @ x.T / tau - 1e9 * eye
        logits = np.concatenate([xy, xx], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return -np.mean(log_p[np.arange(n), np.arange(n)])

    return direction(a, b) + direction(b, a)


def np_grad_fd(z1, z2, tau, hidden_norm, h=1e-6):
    """Central finite differences of the NumPy loss w.r.t. every entry of z1 and z2."""
    z1 = np.asarray(z1, np.float64)
    z2 = np.asarray(z2, np.float64)
    grads = []
    for which in (0, 1):
        base = [z1.copy(), z2.copy()]
        g = np.zeros_like(base[which])
        for idx in np.ndindex(*g.shape):
            plus = [z1.copy(), z2.copy()]
            minus = [z1.copy(), z2.copy()]
            plus[which][idx] += h
            minus[which][idx] -= h
            g[idx] = (
                np_nt_xent(*plus, tau, hidden_norm)[0] - np_nt_xent(*minus, tau, hidden_norm)[0]
            ) / (2 * h)
        grads.append(g)
    return grads


def _tf_loss_and_grads(z1, z2, tau, hidden_norm):
    a = tf.constant(z1, tf.float32)
    b = tf.constant(z2, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        out = nt_xent(a, b, temperature=tau, hidden_norm=hidden_norm)
    ga, gb = tape.gradient(out.loss, [a, b])
    return out, ga.numpy(), gb.numpy()


# --------------------------------------------------------------------------- single device


@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("hidden_norm", [True, False])
def test_nt_xent_matches_numpy(n, tau, hidden_norm):
    rng = np.random.default_rng(100 * n + int(10 * tau) + hidden_norm)
    d = 5
    scale = 1.0 if hidden_norm else 0.4  # keep unnormalised logits moderate for float32
    z1 = rng.normal(size=(n, d)) * scale
    z2 = z1 + 0.7 * rng.normal(size=(n, d)) * scale  # correlated views: accuracy not trivial
    out, ga, gb = _tf_loss_and_grads(z1, z2, tau, hidden_norm)
    loss, acc, ent = np_nt_xent(z1, z2, tau, hidden_norm)

    assert isinstance(out, ContrastiveOutput)
    np.testing.assert_allclose(out.loss.numpy(), loss, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(out.accuracy.numpy(), acc, atol=1e-7)
    np.testing.assert_allclose(out.entropy.numpy(), ent, rtol=2e-5, atol=2e-6)

    fd1, fd2 = np_grad_fd(z1, z2, tau, hidden_norm)
    np.testing.assert_allclose(ga, fd1, rtol=1e-3, atol=2e-5)
    np.testing.assert_allclose(gb, fd2, rtol=1e-3, atol=2e-5)


def test_logits_and_labels_layout():
    rng = np.random.default_rng(0)
    n, d, tau = 3, 4, 0.5
    z1, z2 = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    out = nt_xent(tf.constant(z1, tf.float32), tf.constant(z2, tf.float32), temperature=tau)
    z = _np_normalise(np.concatenate([z1, z2]))
    expected = z @ z.T / tau
    logits = out.logits.numpy()
    assert logits.shape == (2 * n, 2 * n)
    np.testing.assert_array_equal(out.labels.numpy(), [3, 4, 5, 0, 1, 2])
    off_diag = ~np.eye(2 * n, dtype=bool)
    np.testing.assert_allclose(logits[off_diag], expected[off_diag], rtol=1e-5, atol=1e-6)
    assert np.all(np.diag(logits) < -1e8)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_reference_two_direction_sum_is_twice_our_loss(tau):
    rng = np.random.default_rng(7)
    z1, z2 = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    out = nt_xent(tf.constant(z1, tf.float32), tf.constant(z2, tf.float32), temperature=tau)
    ref_sum = np_reference_two_direction_sum(z1, z2, tau)
    np.testing.assert_allclose(2.0 * out.loss.numpy(), ref_sum, rtol=2e-5)


def test_identical_views_tiny_temperature():
    rng = np.random.default_rng(1)
    z = tf.constant(rng.normal(size=(8, 64)), tf.float32)
    out = nt_xent(z, z, temperature=0.01)
    assert out.accuracy.numpy() == 1.0
    assert out.loss.numpy() < 1e-6
    assert out.entropy.numpy() < 1e-4


@pytest.mark.parametrize("n", [4, 16])
def test_random_embeddings_loss_near_log_2n_minus_1(n):
    rng = np.random.default_rng(2)
    z1 = tf.constant(rng.normal(size=(n, 4096)), tf.float32)
    z2 = tf.constant(rng.normal(size=(n, 4096)), tf.float32)
    out = nt_xent(z1, z2, temperature=0.1)
    expected = math.log(2 * n - 1)
    np.testing.assert_allclose(out.loss.numpy(), expected, rtol=0.03)
    np.testing.assert_allclose(out.entropy.numpy(), expected, rtol=0.03)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_inputs_compute_in_float32(dtype):
    rng = np.random.default_rng(3)
    z1, z2 = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    out = nt_xent(tf.constant(z1, dtype), tf.constant(z2, dtype), temperature=0.5)
    assert out.loss.dtype == tf.float32
    assert out.logits.dtype == tf.float32
    # Same values as float32 inputs rounded to `dtype` first.
    r1 = tf.cast(tf.cast(z1, dtype), tf.float32).numpy()
    r2 = tf.cast(tf.cast(z2, dtype), tf.float32).numpy()
    np.testing.assert_allclose(out.loss.numpy(), np_nt_xent(r1, r2, 0.5)[0], rtol=1e-5)


def test_bad_arguments_raise():
    z = tf.zeros([2, 3])
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z, z, temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(z, tf.zeros([3, 3]))
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        nt_xent(tf.zeros([2]), tf.zeros([2]))


def test_cross_replica_concat_is_identity_without_strategy():
    x = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(cross_replica_concat(x).numpy(), x.numpy())


# --------------------------------------------------------------------------- two replicas


def _split(strategy, array, dtype=tf.float32):
    """Per-replica values: replica r gets rows [r*m, (r+1)*m) of `array`."""
    m = len(array) // strategy.num_replicas_in_sync

    def value_fn(ctx):
        r = ctx.replica_id_in_sync_group
        return tf.constant(array[r * m : (r + 1) * m], dtype)

    return strategy.experimental_distribute_values_from_function(value_fn)


def _local(strategy, value):
    return [t.numpy() for t in strategy.experimental_local_results(value)]


def test_cross_replica_concat_values_and_gradient(strategy):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 3))  # replica r owns rows 2r, 2r+1
    w = rng.normal(size=(2, 4, 3))  # replica r's upstream weights on the gathered [4, 3]

    @tf.function
    def step(x_local, w_local):
        def fn(xl, wl):
            with tf.GradientTape() as tape:
                tape.watch(xl)
                y = cross_replica_concat(xl)
                loss = tf.reduce_sum(wl * y)
            return y, tape.gradient(loss, xl)

        return strategy.run(fn, args=(x_local, w_local))

    y, g = step(_split(strategy, x), _split(strategy, w.reshape(8, 3)))
    for y_r in _local(strategy, y):
        np.testing.assert_allclose(y_r, x, rtol=1e-7)
    # d(sum_r' <w_r', y>)/dx_r = sum over replicas of the rows of w that belong to replica r.
    summed = w.sum(axis=0)
    grads = _local(strategy, g)
    np.testing.assert_allclose(grads[0], summed[0:2], rtol=1e-6)
    np.testing.assert_allclose(grads[1], summed[2:4], rtol=1e-6)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_two_replicas_match_single_device(strategy, tau):
    rng = np.random.default_rng(5)
    big_n, d = 6, 5
    z1 = rng.normal(size=(big_n, d))
    z2 = z1 + rng.normal(size=(big_n, d))
    replicas = strategy.num_replicas_in_sync
    single, g1, g2 = _tf_loss_and_grads(z1, z2, tau, True)

    @tf.function
    def step(a_local, b_local):
        def fn(a, b):
            with tf.GradientTape() as tape:
                tape.watch([a, b])
                out = nt_xent(a, b, temperature=tau)
                scaled = out.loss / replicas
            ga, gb = tape.gradient(scaled, [a, b])
            return scaled, ga, gb, out.accuracy, out.entropy, out.labels, out.logits

        return strategy.run(fn, args=(a_local, b_local))

    res = step(_split(strategy, z1), _split(strategy, z2))
    scaled, ga, gb, acc, ent, labels, logits = (_local(strategy, v) for v in res)

    np.testing.assert_allclose(sum(scaled), single.loss.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.concatenate(ga), g1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(gb), g2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.mean(acc), single.accuracy.numpy(), atol=1e-7)
    np.testing.assert_allclose(np.mean(ent), single.entropy.numpy(), rtol=1e-5)
    # Replica 1 holds images 3..5: its view-1 positives are at N + 3.. and view-2 at 3..
    np.testing.assert_array_equal(labels[1], [9, 10, 11, 3, 4, 5])
    np.testing.assert_array_equal(labels[0], [6, 7, 8, 0, 1, 2])
    assert logits[0].shape == (6, 12)
    # Single-device rows, reordered: replica r's rows are view-1 rows r*3.. then view-2 rows.
    full = single.logits.numpy()
    np.testing.assert_allclose(logits[1][:3], full[3:6], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[1][3:], full[9:12], rtol=1e-5, atol=1e-5)


def test_two_replicas_dense_weight_gradients(strategy):
    """The summed per-replica gradient of a Dense layer = the single-device full-batch one."""
    import keras

    rng = np.random.default_rng(6)
    big_n, d_in, d_out, tau = 4, 3, 5, 0.5
    x1, x2 = rng.normal(size=(big_n, d_in)), rng.normal(size=(big_n, d_in))
    kernel = rng.normal(size=(d_in, d_out))
    bias = rng.normal(size=(d_out,))
    replicas = strategy.num_replicas_in_sync

    with strategy.scope():
        dense = keras.layers.Dense(d_out)
        dense.build((None, d_in))
        dense.set_weights([kernel, bias])

    @tf.function
    def step(a_local, b_local):
        def fn(a, b):
            with tf.GradientTape() as tape:
                loss = nt_xent(dense(a), dense(b), temperature=tau).loss / replicas
            return tape.gradient(loss, dense.trainable_variables)

        grads = strategy.run(fn, args=(a_local, b_local))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in grads]

    dist_grads = [g.numpy() for g in step(_split(strategy, x1), _split(strategy, x2))]

    k = tf.constant(kernel, tf.float32)
    b = tf.constant(bias, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([k, b])
        loss = nt_xent(
            tf.matmul(tf.constant(x1, tf.float32), k) + b,
            tf.matmul(tf.constant(x2, tf.float32), k) + b,
            temperature=tau,
        ).loss
    ref_grads = [g.numpy() for g in tape.gradient(loss, [k, b])]
    assert np.abs(ref_grads[0]).max() > 1e-3  # a real signal, not zeros matching zeros
    for got, want in zip(dist_grads, ref_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_two_replicas_without_cross_replica_are_local(strategy):
    rng = np.random.default_rng(8)
    z1, z2 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))

    @tf.function
    def step(a_local, b_local):
        return strategy.run(
            lambda a, b: nt_xent(a, b, temperature=0.5, cross_replica=False).loss,
            args=(a_local, b_local),
        )

    losses = _local(strategy, step(_split(strategy, z1), _split(strategy, z2)))
    np.testing.assert_allclose(losses[0], np_nt_xent(z1[:2], z2[:2], 0.5)[0], rtol=1e-5)
    np.testing.assert_allclose(losses[1], np_nt_xent(z1[2:], z2[2:], 0.5)[0], rtol=1e-5)
