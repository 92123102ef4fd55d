"""Mixed precision (bfloat16 / float16) and XLA compilation of the real train step.

Models, optimizers and compilation come from ``simclr_tf.train`` exactly as ``run.py`` builds
them; the references are the float32, non-compiled steps on the same weights and batch.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from simclr_tf import train
from simclr_tf.config import Config
from simclr_tf.models.layers import BatchNorm

SIZE = 16
CLASSES = 4


@pytest.fixture(autouse=True)
def _float32_policy_after():
    """The dtype policy is global: leave it as the other tests expect it."""
    yield
    keras.mixed_precision.set_dtype_policy("float32")


# This file's settings over conftest.TINY_CONFIG.
CASE = dict(
    width_multiplier=0.125,
    image_size=SIZE,
    train_steps=10,
    learning_rate=0.5,
    temperature=0.5,
    weight_decay=1e-4,
)


def _build(cfg: Config):
    """set_precision + build_model + compile_model, as train.build_for_run does."""
    train.set_precision(cfg)
    keras.utils.set_random_seed(cfg.seed)
    model = train.build_model(cfg, CLASSES)
    schedule = train.make_schedule_for(cfg, 1000)
    train.compile_model(cfg, model, train.build_optimizer_for(cfg, schedule))
    return model


def _batch(n: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    views = tuple(rng.uniform(size=(n, SIZE, SIZE, 3)).astype(np.float32) for _ in range(2))
    return views, rng.integers(0, CLASSES, size=n).astype(np.int32)


def _step(model, x, labels) -> dict:
    ds = tf.data.Dataset.from_tensors((x, labels)).repeat()
    hist = model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
    return {k: float(v[-1]) for k, v in hist.history.items()}


def _all_float32(model) -> list[str]:
    opt_vars = list(model.optimizer.variables)
    return [
        v.path
        for v in [*model.variables, *opt_vars]
        if v.dtype != "float32" and "iteration" not in v.path and "int" not in str(v.dtype)
    ]


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_step_matches_float32(precision):
    """Three applied steps against float32 on the same weights and batch, per variable group.

    float16 steps whose scaled gradients overflow are skipped (weights unchanged, loss scale
    halved): the model steps until three are applied, and the comparison is with three float32
    steps. The tolerances per group sit well below the effect of a missing weight decay on the
    encoder kernels (their LARS updates change by ~65% without it).
    """
    steps = 3
    views, labels = _batch()
    ref = _build(tiny_config(CASE))
    w0 = ref.get_weights()
    ref_logs = _step(ref, views, labels)
    for _ in range(steps - 1):
        _step(ref, views, labels)

    model = _build(tiny_config(CASE, mixed_precision=precision))
    model.set_weights(w0)
    # The encoder and heads really compute in low precision ...
    out = model(views[0], training=False)
    assert out["proj_head_input"].dtype == precision
    assert out["proj_head_output"].dtype == precision
    assert out["logits_sup"].dtype == tf.float32
    if precision == "float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    logs = _step(model, views, labels)
    # ... while every variable (weights, BN statistics, optimizer slots) stays float32.
    assert _all_float32(model) == []
    assert np.isfinite(logs["loss"])
    # Loss close to the float32 loss on the same batch and weights (bf16 has ~3 digits).
    np.testing.assert_allclose(logs["contrast_loss"], ref_logs["contrast_loss"], rtol=2e-2)
    np.testing.assert_allclose(logs["supervised_loss"], ref_logs["supervised_loss"], rtol=2e-2)
    calls = 1
    while int(model.optimizer.iterations.numpy()) < steps and calls < steps + 5:
        _step(model, views, labels)
        calls += 1
    assert int(model.optimizer.iterations.numpy()) == steps, "float16 steps kept overflowing"
    skipped = calls - steps
    if skipped:  # only float16 may skip, and a skip halves the loss scale
        assert precision == "float16"
        assert float(model.optimizer.dynamic_scale) < 2.0**15

    trainable = [i for i, w in enumerate(model.weights) if w.trainable]
    before = _flat(w0, trainable)
    want = _flat(ref.get_weights(), trainable) - before
    got = _flat(model.get_weights(), trainable) - before
    assert np.linalg.norm(want) > 0

    def same_direction(a, b) -> bool:
        cos = float(a @ b) / float(np.linalg.norm(a) * np.linalg.norm(b))
        return cos > 0.98 and np.linalg.norm(a - b) <= 0.25 * np.linalg.norm(b)

    assert same_direction(got, want)
    # Per group: relative error of the update (bf16 sums of many small terms, e.g. the BN
    # scale gradients of the encoder, keep ~15%; the heads are within a few percent).
    tolerances = {
        "encoder kernels": 0.3,
        "encoder BN": 0.3,
        "projection head": 0.15,
        "supervised head": 0.03,
    }
    if not skipped:  # skipped steps still move the BN averages
        tolerances["BN moving statistics"] = 0.02
    groups: dict[str, list[int]] = {}
    for i, w in enumerate(model.weights):
        name = w.path.rsplit("/", 1)[-1]
        if name.startswith("moving_"):
            group = "BN moving statistics"
        elif "/encoder/" in w.path:
            group = "encoder kernels" if name == "kernel" else "encoder BN"
        elif "/projection_head/" in w.path:
            group = "projection head"
        else:
            group = "supervised head"
        groups.setdefault(group, []).append(i)
    assert set(groups) == {*tolerances, "BN moving statistics"}
    w_ref, w_got = ref.get_weights(), model.get_weights()
    for group, tol in tolerances.items():
        idx = groups[group]
        want_g = _flat(w_ref, idx) - _flat(w0, idx)
        got_g = _flat(w_got, idx) - _flat(w0, idx)
        error = np.linalg.norm(got_g - want_g) / np.linalg.norm(want_g)
        assert error < tol, (group, error)


def _flat(weights, indices) -> np.ndarray:
    return np.concatenate([np.ravel(weights[i]) for i in indices])


def test_fused_batch_norm_takes_bfloat16_inputs():
    """Fused kernel with bf16 activations: float32 parameters/statistics, bf16 output, right
    moments (NumPy), and a gradient."""
    rng = np.random.default_rng(1)
    x32 = rng.normal(2.0, 3.0, size=(6, 5, 5, 7)).astype(np.float32)
    x = tf.cast(x32, tf.bfloat16)
    bn = BatchNorm(momentum=0.5, dtype="mixed_bfloat16")
    bn.build(x.shape)
    with tf.GradientTape() as tape:
        y = bn(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * np.arange(7, dtype=np.float32))
    assert y.dtype == tf.bfloat16
    assert all(v.dtype == "float32" for v in bn.variables)
    xb = tf.cast(x, tf.float32).numpy()  # the bf16-rounded inputs
    mean, var = xb.mean(axis=(0, 1, 2)), xb.var(axis=(0, 1, 2))
    want = (xb - mean) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), want, atol=3e-2)
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.5 * mean, rtol=1e-3)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.5 + 0.5 * var, rtol=1e-3)
    g_gamma, g_beta = tape.gradient(loss, [bn.gamma, bn.beta])
    # d loss / d beta = sum over positions of the channel weight.
    np.testing.assert_allclose(g_beta.numpy(), 150.0 * np.arange(7), rtol=1e-2)
    # d loss / d gamma = sum of normalised values * weight = ~0 (normalised values sum to 0).
    assert np.all(np.abs(g_gamma.numpy()) < 1.0)


def _weights_after_step(cfg: Config, w0, x, labels):
    model = _build(cfg)
    if w0 is not None:
        model.set_weights(w0)
    logs = _step(model, x, labels)
    return model, logs


def test_xla_step_matches_non_compiled():
    """Device-side augmentation included: the views, hence the weights, must not depend on
    XLA (the gradient-caching loop under XLA is tested in test_gradient_cache.py)."""
    variant = {"augment_on": "device"}
    views, labels = _batch(seed=2)
    x = (views[0] * 255).astype(np.uint8)  # decoded images; the model augments them
    ref, ref_logs = _weights_after_step(tiny_config(CASE, **variant), None, x, labels)
    w_ref = ref.get_weights()
    w0 = _build(tiny_config(CASE, **variant)).get_weights()  # same seed: the same initial weights
    xla, logs = _weights_after_step(tiny_config(CASE, jit_compile=True, **variant), w0, x, labels)
    assert xla.jit_compile is True
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(w_ref, w0, strict=True))
    assert moved > 1e-3
    for got, want in zip(xla.get_weights(), w_ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logs["loss"], ref_logs["loss"], rtol=1e-4)
