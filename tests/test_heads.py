"""Projection head structure and values vs NumPy; LinearHead zero-init."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.models.heads import LinearHead, ProjectionHead
from simclr_tf.models.layers import BatchNorm

EPS = 1e-5


def _np_bn_train(x, gamma=None, beta=None):
    y = (x - x.mean(0)) / np.sqrt(x.var(0) + EPS)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def _randomise_bn(head, rng):
    """Non-trivial gamma/beta so that center/scale mistakes show up in the values."""
    for bn in head.bn_layers:
        bn.gamma.assign(rng.uniform(0.5, 1.5, bn.gamma.shape).astype("float32"))
        if bn.center:
            bn.beta.assign(rng.normal(size=bn.beta.shape).astype("float32"))


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_nonlinear_head_matches_numpy(num_layers):
    rng = np.random.default_rng(0)
    h = rng.normal(size=(16, 12)).astype("float32")
    head = ProjectionHead("nonlinear", num_layers=num_layers, out_dim=5, global_bn=False)
    head.build(h.shape)
    _randomise_bn(head, rng)
    hiddens = head(tf.constant(h), training=True)
    assert len(hiddens) == num_layers + 1
    np.testing.assert_array_equal(hiddens[0].numpy(), h)
    x = h
    for i in range(num_layers):
        dense, bn = head.dense_layers[i], head.bn_layers[i]
        last = i == num_layers - 1
        assert dense.bias is None and dense.units == (5 if last else 12)
        assert bn.center == (not last)
        x = x @ dense.kernel.numpy()
        x = _np_bn_train(x, bn.gamma.numpy(), None if last else bn.beta.numpy())
        if not last:
            x = np.maximum(x, 0.0)
        np.testing.assert_allclose(hiddens[i + 1].numpy(), x, rtol=1e-4, atol=1e-4)
    if num_layers > 1:  # middle outputs went through ReLU, the projection did not
        assert hiddens[1].numpy().min() >= 0.0
    assert hiddens[-1].numpy().min() < 0.0


def test_linear_head_matches_numpy():
    rng = np.random.default_rng(1)
    h = rng.normal(size=(10, 6)).astype("float32")
    head = ProjectionHead("linear", out_dim=4, global_bn=False)
    hiddens = head(tf.constant(h), training=True)
    assert len(hiddens) == 2 and len(head.dense_layers) == 1
    bn = head.bn_layers[0]
    assert not bn.center and bn.beta is None
    ref = _np_bn_train(h @ head.dense_layers[0].kernel.numpy(), bn.gamma.numpy())
    np.testing.assert_allclose(hiddens[1].numpy(), ref, rtol=1e-4, atol=1e-4)


def test_none_head_is_identity():
    h = tf.constant(np.arange(12, dtype="float32").reshape(3, 4))
    head = ProjectionHead("none")
    hiddens = head(h, training=True)
    assert len(hiddens) == 1
    np.testing.assert_array_equal(hiddens[0].numpy(), h.numpy())
    assert head.trainable_weights == []


def test_head_bn_settings_and_inference_mode():
    head = ProjectionHead("nonlinear", num_layers=2, out_dim=3, bn_momentum=0.8, global_bn=True)
    head.build((None, 6))
    assert all(isinstance(b, BatchNorm) for b in head.bn_layers)
    assert all(b.synchronized and b.momentum == 0.8 and b.epsilon == EPS for b in head.bn_layers)
    # Inference: moving stats at init (mean 0, var 1) -> BN is x / sqrt(1 + eps) * gamma (+beta).
    h = np.random.default_rng(2).normal(size=(4, 6)).astype("float32")
    out = head(tf.constant(h), training=False)
    x = np.maximum(h @ head.dense_layers[0].kernel.numpy() / np.sqrt(1 + EPS), 0)
    x = x @ head.dense_layers[1].kernel.numpy() / np.sqrt(1 + EPS)
    np.testing.assert_allclose(out[-1].numpy(), x, rtol=1e-4, atol=1e-6)


def test_invalid_mode_names_valid_modes():
    with pytest.raises(ValueError, match="nonlinear"):
        ProjectionHead("mlp")
    with pytest.raises(ValueError, match="num_layers"):
        ProjectionHead("nonlinear", num_layers=0)


def test_projection_head_config_roundtrip():
    head = ProjectionHead("linear", num_layers=2, out_dim=7, bn_momentum=0.95, global_bn=False)
    clone = ProjectionHead.from_config(head.get_config())
    assert clone.get_config() == head.get_config()


def test_linear_head_zero_init_outputs_exactly_zero():
    head = LinearHead(10, zero_init=True)
    h = np.random.default_rng(3).normal(size=(5, 8)).astype("float32") * 100
    logits = head(tf.constant(h)).numpy()
    assert logits.shape == (5, 10)
    np.testing.assert_array_equal(logits, np.zeros((5, 10), "float32"))
    np.testing.assert_array_equal(head.dense.kernel.numpy(), 0.0)
    np.testing.assert_array_equal(head.dense.bias.numpy(), 0.0)


def test_linear_head_random_init_is_dense_with_bias():
    keras.utils.set_random_seed(0)
    head = LinearHead(3)
    h = np.random.default_rng(4).normal(size=(4, 6)).astype("float32")
    head.build(h.shape)
    head.dense.bias.assign(np.array([1.0, -2.0, 0.5], "float32"))
    kernel = head.dense.kernel.numpy()
    assert 0.002 < kernel.std() < 0.05  # RandomNormal(stddev=0.01)
    np.testing.assert_allclose(
        head(tf.constant(h)).numpy(), h @ kernel + [1.0, -2.0, 0.5], rtol=1e-5, atol=1e-6
    )
    clone = LinearHead.from_config(head.get_config())
    assert clone.num_classes == 3 and not clone.zero_init


def test_tf_train_checkpoint_roundtrip(tmp_path):
    h = np.random.default_rng(5).normal(size=(4, 6)).astype("float32")
    src = ProjectionHead("nonlinear", num_layers=3, out_dim=2)
    src(tf.constant(h), training=True)
    path = tf.train.Checkpoint(head=src).save(str(tmp_path / "ckpt"))
    stored = [name for name, _ in tf.train.list_variables(path) if name.startswith("head/")]
    assert len(stored) == len(src.weights) == 3 + 4 + 4 + 3
    dst = ProjectionHead("nonlinear", num_layers=3, out_dim=2)
    dst.build(h.shape)
    tf.train.Checkpoint(head=dst).restore(path).assert_existing_objects_matched()
    for a, b in zip(src.weights, dst.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
