"""LARS, L2-decay optimizers, schedule and weight-decay rules against NumPy written here."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.optim import (
    LARS,
    AdamWithL2,
    SGDWithL2,
    WarmupCosineDecay,
    build_optimizer,
    is_weight_decay_exempt,
    scaled_learning_rate,
    weight_decay_penalty,
)

# --------------------------------------------------------------------------- NumPy references


def np_schedule(step, peak, warmup, total):
    if step >= total:
        return 0.0
    if step < warmup:
        return peak * step / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def np_lars(weights, grads_per_step, lrs, momentum, wd, eeta, nesterov, decay, adapt):
    """Reference LARS on lists of float64 arrays; decay/adapt are per-variable booleans."""
    w = [np.array(x, np.float64) for x in weights]
    v = [np.zeros_like(x) for x in w]
    for grads, lr in zip(grads_per_step, lrs, strict=True):
        for i, g in enumerate(grads):
            g = np.array(g, np.float64)
            if decay[i]:
                g = g + wd * w[i]
            trust = 1.0
            if adapt[i]:
                w_norm, g_norm = np.linalg.norm(w[i]), np.linalg.norm(g)
                if w_norm > 0 and g_norm > 0:
                    trust = eeta * w_norm / g_norm
            v[i] = momentum * v[i] + lr * trust * g
            w[i] = w[i] - (momentum * v[i] + lr * trust * g if nesterov else v[i])
    return w


def np_sgd(weights, grads_per_step, lr, momentum, nesterov, wd, decay):
    """Keras SGD semantics (m = mu*m - lr*g) with L2 decay added to the gradient first."""
    w = [np.array(x, np.float64) for x in weights]
    m = [np.zeros_like(x) for x in w]
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            g = np.array(g, np.float64) + (wd * w[i] if decay[i] else 0.0)
            m[i] = momentum * m[i] - lr * g
            w[i] = w[i] + (momentum * m[i] - lr * g if nesterov else m[i])
    return w


def np_adam(weights, grads_per_step, lr, wd, decay, b1=0.9, b2=0.999, eps=1e-7):
    w = [np.array(x, np.float64) for x in weights]
    m = [np.zeros_like(x) for x in w]
    s = [np.zeros_like(x) for x in w]
    for t, grads in enumerate(grads_per_step, start=1):
        lr_t = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        for i, g in enumerate(grads):
            g = np.array(g, np.float64) + (wd * w[i] if decay[i] else 0.0)
            m[i] = b1 * m[i] + (1 - b1) * g
            s[i] = b2 * s[i] + (1 - b2) * g * g
            w[i] = w[i] - lr_t * m[i] / (np.sqrt(s[i]) + eps)
    return w


# --------------------------------------------------------------------------- fixtures


def _problem(seed=0, steps=4):
    """Weights: kernel, bias (rank 1), no-adapt kernel, no-decay kernel, zero kernel."""
    rng = np.random.default_rng(seed)
    weights = [
        rng.normal(size=(3, 4)),
        rng.normal(size=(4,)),
        rng.normal(size=(4, 2)),
        rng.normal(size=(2, 2)),
        np.zeros((2, 3)),
    ]
    grads = [[rng.normal(size=w.shape) for w in weights] for _ in range(steps)]
    grads[0][3] = np.zeros((2, 2))  # zero gradient (and no decay) -> ||g'|| = 0 -> trust 1
    # Flags for the reference: the explicit exclusions are set on the optimizer below.
    decay = [True, False, True, False, True]
    adapt = [True, False, False, True, True]
    return weights, grads, decay, adapt


def _variables(weights):
    return [keras.Variable(w.astype(np.float32), name=f"v{i}") for i, w in enumerate(weights)]


def _apply(opt, variables, grads_per_step):
    step = tf.function(lambda grads: opt.apply(grads, variables))
    for grads in grads_per_step:
        step([tf.constant(g, tf.float32) for g in grads])


# --------------------------------------------------------------------------- LARS


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_matches_numpy(nesterov):
    weights, grads, decay, adapt = _problem()
    momentum, wd, eeta = 0.9, 0.05, 0.5
    schedule = WarmupCosineDecay(2.0, warmup_steps=2, total_steps=6)
    opt = LARS(schedule, momentum=momentum, weight_decay=wd, eeta=eeta, nesterov=nesterov)
    variables = _variables(weights)
    opt.exclude_from_layer_adaptation([variables[2]])
    opt.exclude_from_weight_decay(var_list=[variables[3]])
    _apply(opt, variables, grads)

    lrs = [np_schedule(t, 2.0, 2, 6) for t in range(len(grads))]
    want = np_lars(weights, grads, lrs, momentum, wd, eeta, nesterov, decay, adapt)
    for var, w in zip(variables, want, strict=True):
        np.testing.assert_allclose(var.numpy(), w, rtol=2e-5, atol=1e-6)
    # The zero-initialised kernel moved (trust 1, not 0 * anything).
    assert np.abs(variables[4].numpy()).max() > 0.1
    assert int(opt.iterations.numpy()) == len(grads)


def test_lars_default_exemption_is_by_rank_only():
    """Without explicit exclusions, only rank <= 1 variables skip decay and adaptation."""
    weights, grads, _, _ = _problem(seed=1, steps=3)
    opt = LARS(0.3, momentum=0.8, weight_decay=0.1, eeta=0.2)
    variables = _variables(weights)
    _apply(opt, variables, grads)
    flags = [w.ndim > 1 for w in weights]
    want = np_lars(weights, grads, [0.3] * 3, 0.8, 0.1, 0.2, False, flags, flags)
    for var, w in zip(variables, want, strict=True):
        np.testing.assert_allclose(var.numpy(), w, rtol=2e-5, atol=1e-6)


def test_lars_does_not_apply_keras_decoupled_decay():
    """Zero gradients: only the coupled decay acts; Keras's own decay would shrink more."""
    w0 = np.full((2, 2), 2.0)
    var = keras.Variable(w0.astype(np.float32))
    opt = LARS(0.5, momentum=0.0, weight_decay=0.1, eeta=1.0)
    _apply(opt, [var], [[np.zeros((2, 2))]])
    # g' = 0.1 w, trust = ||w|| / ||0.1 w|| = 10, step = 0.5 * 10 * 0.1 w = 0.5 w.
    np.testing.assert_allclose(var.numpy(), 0.5 * w0, rtol=1e-6)
    assert opt.weight_decay == 0.1


def test_lars_config_roundtrip_and_validation():
    opt = LARS(
        WarmupCosineDecay(1.0, 3, 10), momentum=0.8, weight_decay=1e-4, eeta=0.01, nesterov=True
    )
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(clone, LARS)
    assert (clone.momentum, clone.weight_decay, clone.eeta, clone.nesterov) == (
        0.8,
        1e-4,
        0.01,
        True,
    )
    assert isinstance(clone._learning_rate, WarmupCosineDecay)
    assert clone._learning_rate.get_config() == {
        "peak_learning_rate": 1.0,
        "warmup_steps": 3,
        "total_steps": 10,
    }
    assert LARS(1).get_config()["learning_rate"] == 1.0  # int learning rates accepted
    with pytest.raises(ValueError, match="momentum"):
        LARS(0.1, momentum=1.5)
    with pytest.raises(ValueError, match="eeta"):
        LARS(0.1, eeta=0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        LARS(0.1, weight_decay=-1.0)


def test_lars_in_keras_fit():
    """LARS + schedule drive a compiled Keras model (int64 iterations into the schedule)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    opt = LARS(WarmupCosineDecay(1.0, 1, 4), weight_decay=1e-4, eeta=0.1)
    model.compile(optimizer=opt, loss="mse")
    before = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    model.fit(x, np.zeros((8, 3), np.float32), batch_size=4, epochs=1, verbose=0)
    assert int(opt.iterations.numpy()) == 2
    assert not np.allclose(model.get_weights()[0], before[0])
    np.testing.assert_allclose(
        float(opt.learning_rate.numpy()), np_schedule(2, 1.0, 1, 4), rtol=1e-6
    )


# --------------------------------------------------------------------------- distribution


def test_lars_two_replicas_equal_one_device_with_summed_gradient(strategy):
    weights, grads0, decay, adapt = _problem(seed=2, steps=3)
    grads1 = [[g * -0.5 + 0.3 for g in step] for step in grads0]  # replica 1's gradients
    momentum, wd, eeta, lr = 0.9, 0.05, 0.5, 0.4

    with strategy.scope():
        variables = _variables(weights)
        opt = LARS(lr, momentum=momentum, weight_decay=wd, eeta=eeta)
        opt.exclude_from_layer_adaptation([variables[2]])
        opt.exclude_from_weight_decay(var_list=[variables[3]])
        opt.build(variables)  # as Keras's trainer does: slots are created in cross-replica scope

    @tf.function
    def step(per_replica):
        strategy.run(lambda g: opt.apply(g, variables), args=(per_replica,))

    for g0, g1 in zip(grads0, grads1, strict=True):
        per_replica = strategy.experimental_distribute_values_from_function(
            lambda ctx, g0=g0, g1=g1: [
                tf.constant(g, tf.float32) for g in (g0, g1)[ctx.replica_id_in_sync_group]
            ]
        )
        step(per_replica)

    summed = [
        [a + b for a, b in zip(s0, s1, strict=True)] for s0, s1 in zip(grads0, grads1, strict=True)
    ]
    want = np_lars(weights, summed, [lr] * 3, momentum, wd, eeta, False, decay, adapt)
    for var, w in zip(variables, want, strict=True):
        for component in strategy.experimental_local_results(var.value):
            np.testing.assert_allclose(component.numpy(), w, rtol=2e-5, atol=1e-6)

    # And the same LARS on one device with the summed gradient.
    single_vars = _variables(weights)
    single = LARS(lr, momentum=momentum, weight_decay=wd, eeta=eeta)
    single.exclude_from_layer_adaptation([single_vars[2]])
    single.exclude_from_weight_decay(var_list=[single_vars[3]])
    _apply(single, single_vars, summed)
    for var, ref in zip(variables, single_vars, strict=True):
        np.testing.assert_allclose(var.numpy(), ref.numpy(), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- SGD / Adam L2


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_l2_matches_numpy(nesterov):
    weights, grads, _, _ = _problem(seed=3, steps=3)
    opt = build_optimizer("momentum", 0.2, momentum=0.9, weight_decay=0.1, nesterov=nesterov)
    assert isinstance(opt, SGDWithL2)
    variables = _variables(weights)
    opt.exclude_from_weight_decay(var_list=[variables[3]])
    _apply(opt, variables, grads)
    decay = [True, False, True, False, True]
    want = np_sgd(weights, grads, 0.2, 0.9, nesterov, 0.1, decay)
    for var, w in zip(variables, want, strict=True):
        np.testing.assert_allclose(var.numpy(), w, rtol=2e-5, atol=1e-6)


def test_momentum_defaults_to_nesterov_like_the_reference():
    assert build_optimizer("momentum", 0.1).nesterov is True
    assert build_optimizer("lars", 0.1).nesterov is False


def test_adam_l2_matches_numpy():
    weights, grads, _, _ = _problem(seed=4, steps=3)
    opt = build_optimizer("adam", 0.01, weight_decay=0.5)
    assert isinstance(opt, AdamWithL2)
    variables = _variables(weights)
    _apply(opt, variables, grads)
    decay = [w.ndim > 1 for w in weights]
    want = np_adam(weights, grads, 0.01, 0.5, decay)
    for var, w in zip(variables, want, strict=True):
        np.testing.assert_allclose(var.numpy(), w, rtol=2e-5, atol=1e-6)
    # Without the decay the result is measurably different (the test can see the decay).
    assert not np.allclose(want[0], np_adam(weights, grads, 0.01, 0.0, decay)[0], atol=1e-4)


def test_l2_optimizers_config_roundtrip():
    for opt in (SGDWithL2(0.1, momentum=0.8, weight_decay=1e-4), AdamWithL2(0.1, 1e-3)):
        clone = type(opt).from_config(opt.get_config())
        assert clone.weight_decay == opt.weight_decay
        assert clone.weight_decay > 0


def test_build_optimizer_names():
    assert isinstance(build_optimizer("LARS", 1), LARS)
    with pytest.raises(ValueError, match="lars, momentum, adam"):
        build_optimizer("rmsprop", 0.1)


# --------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("warmup,total", [(3, 10), (0, 5), (4, 4), (0, 1)])
def test_schedule_matches_closed_form(warmup, total):
    peak = 1.7
    schedule = WarmupCosineDecay(peak, warmup, total)
    for step in range(total + 3):
        got = float(schedule(tf.constant(step, tf.int64)))
        np.testing.assert_allclose(
            got, np_schedule(step, peak, warmup, total), rtol=1e-6, atol=1e-7
        )
    assert float(schedule(tf.constant(total, tf.int64))) == 0.0
    if warmup:
        assert float(schedule(0)) == 0.0
    assert float(schedule(warmup)) == pytest.approx(peak if warmup < total else 0.0)


def test_schedule_in_tf_function_and_config():
    schedule = WarmupCosineDecay(0.5, 2, 8)
    values = tf.function(lambda: [schedule(tf.constant(s, tf.int64)) for s in range(9)])()
    np.testing.assert_allclose(
        [float(v) for v in values],
        [np_schedule(s, 0.5, 2, 8) for s in range(9)],
        rtol=1e-6,
        atol=1e-7,
    )
    clone = WarmupCosineDecay.from_config(schedule.get_config())
    assert float(clone(5)) == pytest.approx(np_schedule(5, 0.5, 2, 8), rel=1e-6)
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosineDecay(1.0, 5, 3)
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosineDecay(1.0, -1, 3)


def test_scaled_learning_rate():
    assert scaled_learning_rate(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_learning_rate(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scaled_learning_rate(1.0, 512, "linear") == pytest.approx(2.0)
    with pytest.raises(ValueError, match="linear, sqrt"):
        scaled_learning_rate(0.1, 256, "cubic")
    with pytest.raises(ValueError, match="batch_size"):
        scaled_learning_rate(0.1, 0, "linear")


# --------------------------------------------------------------------------- decay rules


def _small_model():
    conv = keras.layers.Conv2D(4, 3)
    bn = keras.layers.BatchNormalization()
    dense = keras.layers.Dense(5)
    model = keras.Sequential([keras.Input((6, 6, 3)), conv, bn, keras.layers.Flatten(), dense])
    return model, conv, bn, dense


def test_weight_decay_exemption_on_keras_model():
    model, conv, bn, dense = _small_model()
    exempt = {id(v) for v in model.trainable_variables if is_weight_decay_exempt(v)}
    want = {id(conv.bias), id(bn.gamma), id(bn.beta), id(dense.bias)}
    assert exempt == want
    assert not is_weight_decay_exempt(conv.kernel)
    assert not is_weight_decay_exempt(dense.kernel)


def test_weight_decay_penalty_matches_numpy():
    model, conv, _, dense = _small_model()
    rng = np.random.default_rng(9)
    for v in model.trainable_variables:
        v.assign(rng.normal(size=v.shape).astype(np.float32))
    k1, k2 = conv.kernel.numpy().astype(np.float64), dense.kernel.numpy().astype(np.float64)
    want = 3e-4 * 0.5 * ((k1**2).sum() + (k2**2).sum())
    got = float(weight_decay_penalty(model.trainable_variables, 3e-4))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert float(weight_decay_penalty([conv.bias, dense.bias], 1.0)) == 0.0
