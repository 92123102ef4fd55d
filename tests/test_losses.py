"""NT-Xent and cross_replica_concat against NumPy references written here (float64)."""

import math

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from simclr_tf.losses import ContrastiveOutput, cross_replica_concat, nt_xent
from simclr_tf.schedule import make_schedule

# --------------------------------------------------------------------------- NumPy reference


def _np_normalise(z):
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def _np_batch(z1, z2, hidden_norm):
    """(N, the 2N float64 projections [view 1 rows; view 2 rows]), normalised if asked."""
    z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    if hidden_norm:
        z1, z2 = _np_normalise(z1), _np_normalise(z2)
    return len(z1), np.concatenate([z1, z2])


def np_nt_xent(z1, z2, tau, hidden_norm=True):
    """Per-anchor loop over all 2N anchors of a single-device batch; returns loss, acc, entropy."""
    n, z = _np_batch(z1, z2, hidden_norm)
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


# --------------------------------------------------------------------------- NT-Logistic, margin


def _np_sigmoid_log(x):
    """log sigmoid(x), stable."""
    return -np.logaddexp(0.0, -x)


def np_pair_loss(z1, z2, kind, tau=0.5, margin=0.4, semi_hard=False, hidden_norm=True):
    """The paper's Table 2 objectives, one anchor at a time, over all 2N anchors (float64).

    Per anchor i with positive p: negatives are every k other than i and p; semi-hard keeps,
    as the paper's Section 5.1 words it ("those that are within the loss margin and closest in
    distance, but farther than positive examples"), the one k of largest s_k among those with
    s_k < s_p (and, for the margin loss, s_k > s_p - margin). NT-Logistic:
    -log sig(s_p/tau) - mean_k log sig(-s_k/tau); margin: mean_k max(s_k - s_p + margin, 0).
    Also returns how many negatives semi-hard mining dropped (so tests can check it bites).
    """
    n, z = _np_batch(z1, z2, hidden_norm)
    total, dropped = 0.0, 0
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        s_p = z[i] @ z[p]
        negs = []
        for k in range(2 * n):
            if k in (i, p):
                continue
            s_k = z[i] @ z[k]
            keep = True
            if semi_hard:
                keep = s_k < s_p and (kind == "nt_logistic" or s_k > s_p - margin)
            if keep:
                negs.append(s_k)
            else:
                dropped += 1
        if semi_hard and negs:
            dropped += len(negs) - 1
            negs = [max(negs)]  # the closest of the semi-hard window
        if kind == "nt_logistic":
            term = -_np_sigmoid_log(s_p / tau)
            if negs:
                term += np.mean([-_np_sigmoid_log(-s / tau) for s in negs])
        else:
            term = np.mean([max(s - s_p + margin, 0.0) for s in negs]) if negs else 0.0
        total += term
    return total / (2 * n), dropped


def np_pair_grad_fd(z1, z2, h=1e-6, **kw):
    """Central finite differences of np_pair_loss w.r.t. every entry of z1 and z2."""
    grads = []
    for which in (0, 1):
        g = np.zeros_like(np.asarray((z1, z2)[which], np.float64))
        for idx in np.ndindex(*g.shape):
            plus = [np.array(z1, np.float64), np.array(z2, np.float64)]
            minus = [np.array(z1, np.float64), np.array(z2, np.float64)]
            plus[which][idx] += h
            minus[which][idx] -= h
            g[idx] = (np_pair_loss(*plus, **kw)[0] - np_pair_loss(*minus, **kw)[0]) / (2 * h)
        grads.append(g)
    return grads


def _pair_tf(z1, z2, kind, tau, margin, semi_hard):
    from simclr_tf.losses import make_contrastive_loss

    fn = make_contrastive_loss(kind, tau, True, margin, semi_hard)
    a = tf.constant(z1, tf.float32)
    b = tf.constant(z2, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        out = fn(a, b)
    ga, gb = tape.gradient(out.loss, [a, b])
    return out, ga.numpy(), gb.numpy()


def _pair_data(seed, n=5, d=4, noise=0.6):
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=(n, d))
    return z1, z1 + noise * rng.normal(size=(n, d))  # correlated views: semi-hard is partial


@pytest.mark.parametrize("kind", ["nt_logistic", "margin_triplet"])
@pytest.mark.parametrize("semi_hard", [False, True])
@pytest.mark.parametrize("tau_or_margin", [0.2, 1.0])
def test_pair_losses_values_and_gradients_match_numpy(kind, semi_hard, tau_or_margin):
    z1, z2 = _pair_data(11)
    kw = {"kind": kind, "semi_hard": semi_hard}
    kw["tau" if kind == "nt_logistic" else "margin"] = tau_or_margin
    tau, margin = kw.get("tau", 0.5), kw.get("margin", 0.4)
    out, ga, gb = _pair_tf(z1, z2, kind, tau, margin, semi_hard)
    want, dropped = np_pair_loss(z1, z2, **kw)
    if semi_hard:
        assert 0 < dropped < 2 * len(z1) * (2 * len(z1) - 2)  # mining keeps some, drops some
    assert want > 1e-3
    np.testing.assert_allclose(out.loss.numpy(), want, rtol=2e-5, atol=1e-6)
    fd1, fd2 = np_pair_grad_fd(z1, z2, **kw)
    assert np.abs(fd1).max() > 1e-3
    np.testing.assert_allclose(ga, fd1, rtol=1e-3, atol=2e-5)
    np.testing.assert_allclose(gb, fd2, rtol=1e-3, atol=2e-5)
    # The reported accuracy is that of the similarity ranking, whatever the loss.
    np.testing.assert_allclose(out.accuracy.numpy(), np_nt_xent(z1, z2, tau)[1], atol=1e-7)


def test_semi_hard_keeps_the_one_closest_negative_farther_than_the_positive():
    """Paper, Section 5.1: semi-hard terms are "those that are within the loss margin and
    closest in distance, but farther than positive examples"."""
    from simclr_tf.losses import _negatives

    # One anchor (column 0 is itself, column 1 its positive at s+ = 0.9).
    sims = tf.constant([[1.0, 0.9, 0.95, 0.8, 0.6, 0.3]])
    labels = tf.constant([1])
    self_mask = tf.constant([[True, False, False, False, False, False]])
    pos, neg = _negatives(sims, labels, self_mask, semi_hard=True, margin=0.4)
    np.testing.assert_allclose(pos.numpy(), [0.9])
    # 0.95 is harder than the positive, 0.3 beyond the margin, 0.8 is closer than 0.6.
    assert neg.numpy().tolist() == [[False, False, False, True, False, False]]
    _, neg = _negatives(sims, labels, self_mask, semi_hard=True, margin=0.05)
    assert not neg.numpy().any()  # nothing within the margin: no negative term
    _, neg = _negatives(sims, labels, self_mask, semi_hard=False, margin=None)
    assert neg.numpy().tolist() == [[False, False, True, True, True, True]]


def test_margin_triplet_is_zero_when_every_negative_is_beyond_the_margin():
    from simclr_tf.losses import margin_triplet

    # Orthogonal images, identical views: s+ = 1, every s- = 0, so s- - s+ + 0.9 < 0.
    z = tf.eye(4, 8)
    assert margin_triplet(z, z, margin=0.9).loss.numpy() == 0.0
    np.testing.assert_allclose(margin_triplet(z, z, margin=1.5).loss.numpy(), 0.5, rtol=1e-6)


def test_loss_factory_and_bad_arguments():
    from simclr_tf.losses import make_contrastive_loss, margin_triplet

    z1, z2 = _pair_data(12)
    a, b = tf.constant(z1, tf.float32), tf.constant(z2, tf.float32)
    np.testing.assert_allclose(
        make_contrastive_loss("nt_xent", 0.5)(a, b).loss.numpy(),
        np_nt_xent(z1, z2, 0.5)[0],
        rtol=2e-5,
    )
    with pytest.raises(ValueError, match="nt_logistic or margin_triplet"):
        make_contrastive_loss("nt_xent", semi_hard_negatives=True)
    with pytest.raises(ValueError, match="Unknown loss"):
        make_contrastive_loss("hinge")
    with pytest.raises(ValueError, match="margin"):
        margin_triplet(a, b, margin=-0.1)


@pytest.mark.parametrize(
    "kind, semi_hard", [("nt_logistic", False), ("nt_logistic", True), ("margin_triplet", True)]
)
def test_pair_losses_two_replicas_match_numpy(strategy, kind, semi_hard):
    """Per-replica losses / R sum to the global NumPy loss, and the gradients (negatives from the
    other replica included) are the NumPy finite differences of the full-batch loss."""
    from simclr_tf.losses import make_contrastive_loss

    z1, z2 = _pair_data(13, n=6)
    tau, margin = 0.5, 0.8
    replicas = strategy.num_replicas_in_sync
    fn = make_contrastive_loss(kind, tau, True, margin, semi_hard)

    @tf.function
    def step(a_local, b_local):
        def body(a, b):
            with tf.GradientTape() as tape:
                tape.watch([a, b])
                scaled = fn(a, b).loss / replicas
            ga, gb = tape.gradient(scaled, [a, b])
            return scaled, ga, gb

        return strategy.run(body, args=(a_local, b_local))

    scaled, ga, gb = (_local(strategy, v) for v in step(_split(strategy, z1), _split(strategy, z2)))
    kw = {"kind": kind, "tau": tau, "margin": margin, "semi_hard": semi_hard}
    np.testing.assert_allclose(sum(scaled), np_pair_loss(z1, z2, **kw)[0], rtol=2e-5, atol=1e-6)
    fd1, fd2 = np_pair_grad_fd(z1, z2, **kw)
    np.testing.assert_allclose(np.concatenate(ga), fd1, rtol=1e-3, atol=2e-5)
    np.testing.assert_allclose(np.concatenate(gb), fd2, rtol=1e-3, atol=2e-5)


@pytest.mark.parametrize("kind", ["nt_logistic", "margin_triplet"])
def test_train_step_uses_the_configured_loss(kind):
    """--loss reaches the model: the step reports the NumPy loss of its own projections."""
    from simclr_tf import train

    cfg = tiny_config(
        width_multiplier=0.125, temperature=0.5, optimizer="momentum", learning_rate=0.1,
        lineareval_while_pretraining=False, loss=kind, margin=0.8, semi_hard_negatives=True,
    )  # fmt: skip
    schedule = make_schedule(cfg.replace(train_steps=5), 64, cfg.learning_rate)
    tf.keras.utils.set_random_seed(0)
    model = train.build_model(cfg, 4)
    train.compile_model(cfg, model, train.build_optimizer_for(cfg, schedule))
    rng = np.random.default_rng(14)
    v1 = tf.constant(rng.uniform(size=(8, 16, 16, 3)), tf.float32)
    v2 = tf.constant(np.clip(v1.numpy() + 0.2 * rng.normal(size=v1.shape), 0, 1), tf.float32)
    z = model(tf.concat([v1, v2], 0), training=True)["proj_head_output"].numpy()
    want, _ = np_pair_loss(z[:8], z[8:], kind, tau=0.5, margin=0.8, semi_hard=True)
    logs = model.train_step(((v1, v2), tf.zeros([8], tf.int32)))
    assert float(logs["contrast_loss"]) == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert float(logs["loss"]) == pytest.approx(want, rel=1e-4, abs=1e-6)
