"""Gradient caching (``--micro_batch_size``) gives the gradients of the full-batch NT-Xent.

References are independent code paths written here: one ``GradientTape`` over all chunks
(activations kept, plain autodiff through ``model(...)`` and ``losses.nt_xent``), and the
ordinary (uncached) ``train_step`` of a model without batch norm, on one device and under
MirroredStrategy with cross-replica negatives. Gradients are read from plain SGD updates with a
large learning rate (``w0 - w1 = lr * g``), so float32 rounding of the weights does not hide
gradient differences.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import losses
from simclr_tf.models.heads import ProjectionHead
from simclr_tf.models.resnet import ResNet
from simclr_tf.models.simclr import SimCLRModel

LR = 1000.0
SIZE = 8
CLASSES = 3
TAU = 0.5


class NoBNEncoder(keras.layers.Layer):
    """A tiny encoder without batch norm: chunking cannot change its function."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3, activation="relu", name="conv")
        self.dense = keras.layers.Dense(6, activation="tanh", name="dense")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.dense.build((None, 4))

    def call_endpoints(self, images, training=None, frozen_stages=0):
        if not self.built:
            self.build(images.shape)
        h = self.dense(tf.reduce_mean(self.conv(images), axis=[1, 2]))
        return {"final_avg_pool": h}

    def call(self, images, training=None):
        return self.call_endpoints(images)["final_avg_pool"]


def _batch(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    v1 = rng.uniform(size=(n, SIZE, SIZE, 3)).astype(np.float32)
    v2 = rng.uniform(size=(n, SIZE, SIZE, 3)).astype(np.float32)
    labels = rng.integers(0, CLASSES, size=n).astype(np.int32)
    return v1, v2, labels


def _model(kind: str, micro: int, jit_compile: bool = False) -> SimCLRModel:
    if kind == "resnet":
        encoder = ResNet(depth=18, width_multiplier=0.125, cifar_stem=True, name="encoder")
        head = ProjectionHead("nonlinear", num_layers=2, out_dim=8, name="projection_head")
    elif kind == "bnhead":  # small enough to XLA-compile quickly, with batch norm
        encoder = NoBNEncoder(name="encoder")
        head = ProjectionHead("nonlinear", num_layers=2, out_dim=8, name="projection_head")
    else:
        encoder = NoBNEncoder(name="encoder")
        head = ProjectionHead("none", name="projection_head")
    model = SimCLRModel(encoder, head, CLASSES, temperature=TAU, micro_batch_size=micro)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=LR), jit_compile=jit_compile)
    model.build_all(SIZE)
    return model


def _fit_one_step(model: SimCLRModel, v1, v2, labels, global_batch: int) -> dict:
    ds = tf.data.Dataset.from_tensors(((v1, v2), labels)).repeat()
    del global_batch  # the element already is one global batch
    hist = model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0)
    return {k: float(v[-1]) for k, v in hist.history.items()}


def _grads_from_update(before: list[np.ndarray], model: SimCLRModel) -> list[np.ndarray]:
    return [(b - a.numpy()) / LR for b, a in zip(before, model.trainable_variables, strict=True)]


def _assert_grads_close(got: list[np.ndarray], want: list[np.ndarray], names, rel=1e-5):
    """Per variable: ||got - want|| <= rel * ||want|| (+ a floor for ~zero gradients)."""
    scale = max(float(np.linalg.norm(w)) for w in want)
    assert scale > 0
    for g, w, name in zip(got, want, names, strict=True):
        err = float(np.linalg.norm(g - w))
        bound = rel * float(np.linalg.norm(w)) + 1e-6 * scale
        assert err <= bound, f"{name}: |diff| {err:.3g} > {bound:.3g} (|ref| {np.linalg.norm(w)})"


def _reference_chunked(model: SimCLRModel, v1, v2, labels, m: int):
    """Plain autodiff through every chunk at once: what gradient caching must reproduce.

    Chunk i holds images i*m..(i+1)*m, both views, in one forward pass (its batch-norm
    statistics); NT-Xent over the whole batch; live linear probe mean cross-entropy.
    """
    n = v1.shape[0]
    with tf.GradientTape() as tape:
        z1, z2, logits, lab = [], [], [], []
        for i in range(n // m):
            sl = slice(i * m, (i + 1) * m)
            out = model(np.concatenate([v1[sl], v2[sl]]), training=True)
            z = tf.cast(out["proj_head_output"], tf.float32)
            z1.append(z[:m])
            z2.append(z[m:])
            logits.append(out["logits_sup"])
            lab.append(np.concatenate([labels[sl], labels[sl]]))
        con = losses.nt_xent(tf.concat(z1, 0), tf.concat(z2, 0), TAU)
        ce = keras.losses.sparse_categorical_crossentropy(
            np.concatenate(lab), tf.concat(logits, 0), from_logits=True
        )
        loss = con.loss + tf.reduce_mean(ce)
        # The train step optimises the reference's objective: the sum of both directions.
        objective = losses.contrastive_objective(con) + tf.reduce_mean(ce)
    grads = tape.gradient(objective, model.trainable_variables)
    return [g.numpy() for g in grads], float(con.loss), float(loss)


def test_cached_step_equals_chunked_autodiff_with_batch_norm():
    """ResNet + BN head, 4 chunks: gradients, loss and BN moving statistics match."""
    n, m = 8, 2
    v1, v2, labels = _batch(n)
    model = _model("resnet", micro=m)
    names = [v.path for v in model.trainable_variables]
    w0 = [v.numpy() for v in model.trainable_variables]
    moving0 = [v.numpy() for v in model.non_trainable_variables]
    assert len(moving0) > 0

    ref_grads, ref_con, ref_loss = _reference_chunked(model, v1, v2, labels, m)
    # The reference forward ran each chunk once in training mode: those are the moving
    # statistics after one update per example.
    ref_moving = [v.numpy() for v in model.non_trainable_variables]
    assert any(not np.allclose(a, b) for a, b in zip(moving0, ref_moving, strict=True))
    for v, val in zip(model.non_trainable_variables, moving0, strict=True):
        v.assign(val)

    logs = _fit_one_step(model, v1, v2, labels, n)
    _assert_grads_close(_grads_from_update(w0, model), ref_grads, names)
    np.testing.assert_allclose(logs["contrast_loss"], ref_con, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], ref_loss, rtol=1e-5)
    for got, want in zip(model.non_trainable_variables, ref_moving, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6, err_msg=got.path)


def test_single_chunk_equals_plain_train_step_with_batch_norm():
    """micro_batch_size = whole batch: same BN statistics, so exactly the ordinary step."""
    n = 6
    v1, v2, labels = _batch(n, seed=1)
    plain, cached = _model("resnet", micro=0), _model("resnet", micro=n)
    cached.set_weights(plain.get_weights())
    w0 = [v.numpy() for v in plain.trainable_variables]
    logs_plain = _fit_one_step(plain, v1, v2, labels, n)
    logs_cached = _fit_one_step(cached, v1, v2, labels, n)
    _assert_grads_close(
        _grads_from_update(w0, cached),
        _grads_from_update(w0, plain),
        [v.path for v in plain.trainable_variables],
    )
    for key in ("loss", "contrast_loss", "contrast_acc", "supervised_loss", "supervised_acc"):
        np.testing.assert_allclose(logs_cached[key], logs_plain[key], rtol=1e-5, err_msg=key)
    for a, b in zip(cached.non_trainable_variables, plain.non_trainable_variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def _no_bn_reference(v1, v2, labels):
    """Initial weights and the gradients of the ordinary full-batch step on one device."""
    model = _model("nobn", micro=0)
    w0 = [v.numpy() for v in model.trainable_variables]
    logs = _fit_one_step(model, v1, v2, labels, v1.shape[0])
    return model.get_weights(), w0, _grads_from_update(w0, model), logs


def test_cached_step_equals_full_batch_without_batch_norm():
    n, m = 8, 2
    v1, v2, labels = _batch(n, seed=2)
    model = _model("nobn", micro=m)
    ref = _model("nobn", micro=0)
    ref.set_weights(model.get_weights())
    w0 = [v.numpy() for v in model.trainable_variables]
    logs_ref = _fit_one_step(ref, v1, v2, labels, n)
    logs = _fit_one_step(model, v1, v2, labels, n)
    names = [v.path for v in model.trainable_variables]
    _assert_grads_close(_grads_from_update(w0, model), _grads_from_update(w0, ref), names)
    for key in ("loss", "contrast_loss", "contrast_entropy", "supervised_loss"):
        np.testing.assert_allclose(logs[key], logs_ref[key], rtol=1e-5, err_msg=key)


def test_cached_step_under_mirrored_strategy_equals_single_device_full_batch():
    """2 replicas x 2 chunks, cross-replica negatives: the single-device full-batch step."""
    n, m = 8, 2
    v1, v2, labels = _batch(n, seed=3)
    ref = _model("nobn", micro=0)
    w_init = ref.get_weights()
    w0 = [v.numpy() for v in ref.trainable_variables]
    logs_ref = _fit_one_step(ref, v1, v2, labels, n)
    ref_grads = _grads_from_update(w0, ref)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = _model("nobn", micro=m)
        model.set_weights(w_init)
    logs = _fit_one_step(model, v1, v2, labels, n)
    names = [v.path for v in model.trainable_variables]
    _assert_grads_close(_grads_from_update(w0, model), ref_grads, names)
    # Metrics are averaged over replicas; each replica's NT-Xent already sees all 2N views.
    np.testing.assert_allclose(logs["contrast_loss"], logs_ref["contrast_loss"], rtol=1e-5)


def test_cached_step_with_global_batch_norm_under_mirrored_strategy():
    """2 replicas x 2 chunks with global BN = one device with chunks twice as large.

    Replica r holds images 4r..4r+3; global BN normalises chunk i over both replicas' chunk i,
    i.e. over images {2i, 2i+1, 4+2i, 4+2i+1}. On one device, reordering the batch to
    [0, 1, 4, 5, 2, 3, 6, 7] with micro batch 4 gives chunks of the same images; NT-Xent and BN
    do not depend on the order, so gradients and BN averages must agree.
    """
    n, m = 8, 2
    v1, v2, labels = _batch(n, seed=6)
    ref = _model("bnhead", micro=2 * m)
    w_init = ref.get_weights()
    w0 = [v.numpy() for v in ref.trainable_variables]
    order = [0, 1, 4, 5, 2, 3, 6, 7]
    logs_ref = _fit_one_step(ref, v1[order], v2[order], labels[order], n)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = _model("bnhead", micro=m)
        model.set_weights(w_init)
    logs = _fit_one_step(model, v1, v2, labels, n)
    names = [v.path for v in model.trainable_variables]
    _assert_grads_close(_grads_from_update(w0, model), _grads_from_update(w0, ref), names, rel=1e-4)
    for a, b in zip(model.non_trainable_variables, ref.non_trainable_variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=a.path)
    np.testing.assert_allclose(logs["contrast_loss"], logs_ref["contrast_loss"], rtol=1e-5)


def test_cached_step_under_xla_matches_non_compiled():
    """The chunk loops (while loops, per-chunk gradients) compile with XLA and agree."""
    n, m = 8, 2
    v1, v2, labels = _batch(n, seed=5)
    ref = _model("bnhead", micro=m)
    xla = _model("bnhead", micro=m, jit_compile=True)
    xla.set_weights(ref.get_weights())
    w0 = [v.numpy() for v in ref.trainable_variables]
    logs_ref = _fit_one_step(ref, v1, v2, labels, n)
    logs = _fit_one_step(xla, v1, v2, labels, n)
    assert xla.jit_compile is True
    names = [v.path for v in ref.trainable_variables]
    _assert_grads_close(_grads_from_update(w0, xla), _grads_from_update(w0, ref), names, rel=1e-4)
    for a, b in zip(xla.non_trainable_variables, ref.non_trainable_variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logs["loss"], logs_ref["loss"], rtol=1e-5)


def test_micro_batch_must_divide_the_per_replica_batch():
    v1, v2, labels = _batch(6, seed=4)
    model = _model("nobn", micro=4)
    with pytest.raises(ValueError, match="multiple of --micro_batch_size=4"):
        _fit_one_step(model, v1, v2, labels, 6)


def _conv_count(model: SimCLRModel, n: int, xla: bool) -> tuple[int, bool]:
    """Convolutions in the traced (or XLA-compiled) train step, and whether it has a loop."""
    spec = ((tf.TensorSpec([n, SIZE, SIZE, 3]),) * 2, tf.TensorSpec([n], tf.int32))
    if xla:
        v1, v2, labels = _batch(n)
        hlo = tf.function(model.train_step, jit_compile=True).experimental_get_compiler_ir(
            ((v1, v2), labels)
        )(stage="hlo")
        return hlo.count(" convolution("), " while(" in hlo
    graph_def = tf.function(model.train_step).get_concrete_function(spec).graph.as_graph_def()
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    return sum(node.op == "Conv2D" for node in nodes), any(
        node.op in ("While", "StatelessWhile") for node in nodes
    )


@pytest.mark.parametrize("xla", [False, True])
def test_chunk_loop_is_kept_a_loop_so_memory_is_bounded(xla):
    """The program holds one chunk's forward/backward whatever the number of chunks: the loop
    is not unrolled (by the graph or by XLA), so one chunk's activations are alive at a time."""
    n = 8
    two_chunks, loop2 = _conv_count(_model("nobn", micro=4), n, xla)
    four_chunks, loop4 = _conv_count(_model("nobn", micro=2), n, xla)
    assert loop2 and loop4
    assert two_chunks == four_chunks > 0
