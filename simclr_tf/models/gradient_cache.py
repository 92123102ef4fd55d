"""Gradient caching (Gao et al. 2021): the whole batch's NT-Xent on bounded memory.

``--micro_batch_size=m`` trains on the full batch's contrastive loss while holding only one
chunk of ``m`` images (both views) of activations at a time:

1. project every chunk without a tape;
2. NT-Xent (cross-replica) on the full batch, and its gradient w.r.t. every projection;
3. re-run each chunk under a tape and back-propagate the cached projection gradients, summing
   parameter gradients; apply once.

A chunk holds the *same* images, both views, in both passes, so batch norm sees the same batch
statistics and the cached gradients belong to exactly the function re-run in 3. Batch-norm
statistics are per chunk (like per-replica BN); moving statistics are carried through the loop
and assigned once after it (pass 1's are discarded), so they move once per example.

The chunk loop is a ``tf.while_loop`` with ``parallel_iterations=1``: the compiler keeps it a
loop (XLA compiles one body and reuses its buffers), so the memory bound holds under XLA and on
TPUs. Only under MirroredStrategy-style strategies, whose cross-replica batch norm synchronises
through ``merge_call`` (not allowed inside a while loop), is it unrolled, each chunk
control-dependent on the previous one; those strategies run the graph with TF's executor, which
honours the dependencies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from simclr_tf import distribute
from simclr_tf.config_checks import check_micro_batch
from simclr_tf.models.layers import BatchNorm, deferred_moving_updates


def keeps_loop(strategy: tf.distribute.Strategy) -> bool:
    """True when the chunk loop can be a real loop (no merge_call inside it)."""
    if strategy.num_replicas_in_sync == 1 or distribute.is_tpu(strategy):
        return True
    return bool(tf.__internal__.distribute.strategy_supports_no_merge_call())


def for_each_chunk(
    chunks: int, body: Callable[[tf.Tensor, Any], Any], state: Any, loop: bool
) -> Any:
    """``state = body(i, state)`` for ``i < chunks``, strictly one chunk after the other."""
    if loop:
        return tf.while_loop(
            lambda i, _: i < chunks,
            lambda i, s: (i + 1, body(i, s)),
            (tf.constant(0), state),
            parallel_iterations=1,
        )[1]
    for i in range(chunks):
        flat = tf.nest.flatten(state, expand_composites=True)
        with tf.control_dependencies([t for t in flat if isinstance(t, tf.Tensor)]):
            state = body(tf.constant(i), state)
    return state


def _batch_norms(model: keras.Model) -> list[BatchNorm]:
    return [layer for layer in model._flatten_layers() if isinstance(layer, BatchNorm)]


def _carry_moving(
    norms: list[BatchNorm], carried: list[tuple[tf.Tensor, tf.Tensor]], updates
) -> list[tuple[tf.Tensor, tf.Tensor]]:
    """Applies one chunk's recorded batch moments to the carried moving statistics."""
    index = {id(layer): k for k, layer in enumerate(norms)}
    carried = list(carried)
    for layer, mean, variance in updates:
        k, mom = index[id(layer)], layer.momentum
        old_mean, old_var = carried[k]
        carried[k] = (old_mean * mom + mean * (1.0 - mom), old_var * mom + variance * (1.0 - mom))
    return carried


def _by_chunk(x: tf.Tensor, chunks, m: int) -> tf.Tensor:
    """[n, ...] -> [chunks, m, ...]: chunk i holds rows i*m..(i+1)*m."""
    return tf.reshape(x, tf.concat([[chunks, m], tf.shape(x)[1:]], 0))


def _unchunk(z: tf.Tensor, m: int) -> tuple[tf.Tensor, tf.Tensor]:
    """[chunks, 2m, d] -> (z1 [n, d], z2 [n, d]) in the batch's row order."""
    d = tf.shape(z)[-1]
    return tf.reshape(z[:, :m], [-1, d]), tf.reshape(z[:, m:], [-1, d])


def cached_train_step(model: keras.Model, view1: tf.Tensor, view2: tf.Tensor, labels: tf.Tensor):
    """One optimizer step of ``model`` (a SimCLRModel: this module is below it, so it is typed as
    its Keras base) on the two views, in chunks of ``micro_batch_size``."""
    m = int(model.micro_batch_size)
    n_static = view1.shape[0]
    if n_static is not None:
        check_micro_batch(n_static, m, "The per-replica batch")
    strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if replicas > 1 and n_static is None:
        raise ValueError(
            "--micro_batch_size with several replicas needs a static per-replica batch "
            "size: batch the input with drop_remainder=True."
        )
    loop = keeps_loop(strategy)
    n = tf.shape(view1)[0]
    chunks = n // m if n_static is None else n_static // m
    if not loop and not isinstance(chunks, int):
        raise ValueError("Unrolled gradient caching needs a static batch size.")

    # [chunks, 2m, H, W, C]: chunk i = (view 1 of images i*m..(i+1)*m, then their view 2).
    both = tf.concat([_by_chunk(view1, chunks, m), _by_chunk(view2, chunks, m)], axis=1)
    both = tf.ensure_shape(both, [n_static and n_static // m, 2 * m, *view1.shape[1:]])
    con, cached = _projection_gradients(model, both, chunks, m, replicas, loop)

    sup = model.supervised_head is not None
    chunk_labels = None
    if sup:
        chunk_labels = _by_chunk(labels, chunks, m)
        chunk_labels = tf.concat([chunk_labels, chunk_labels], axis=1)  # [chunks, 2m]
    variables = model.trainable_variables
    grads, logits_acc = _rerun_chunks(model, both, cached, chunk_labels, chunks, replicas, loop)
    model.optimizer.apply(grads, variables)
    total = con.loss
    if sup:
        all_labels = tf.reshape(chunk_labels, [-1])
        all_logits = tf.reshape(logits_acc.stack(), [2 * n, -1])
        sup_loss = model._sup_loss(all_labels, all_logits)
        total = total + sup_loss
    model._report_contrast(con, total)
    if sup:
        model._update_supervised(all_labels, all_logits, sup_loss)
    return model._results()


def _projection_gradients(model: keras.Model, both: tf.Tensor, chunks, m: int, replicas, loop):
    """Passes 1 and 2: every chunk's projections without a tape, then the full batch's loss
    and its gradient w.r.t. each projection, ``[chunks, 2m, d]`` like ``both``."""

    def project(i, zs):
        # training=True: batch norm uses the batch statistics of the re-run below; its moving
        # statistics are not touched by this pass (the recorded moments are dropped).
        with deferred_moving_updates():
            _, hiddens, _ = model._features(both[i], training=True)
        return zs.write(i, tf.cast(hiddens[-1], tf.float32))

    zs = for_each_chunk(chunks, project, tf.TensorArray(tf.float32, size=chunks), loop)
    z1, z2 = _unchunk(tf.stop_gradient(zs.stack()), m)

    with tf.GradientTape() as tape:
        tape.watch([z1, z2])
        con = model.contrastive_loss(z1, z2)
        scaled = con.loss / tf.cast(replicas, tf.float32)
    g1, g2 = tape.gradient(scaled, [z1, z2])
    cached = tf.concat([_by_chunk(g1, chunks, m), _by_chunk(g2, chunks, m)], axis=1)
    return con, cached


def _rerun_chunks(model: keras.Model, both, cached, chunk_labels, chunks, replicas, loop):
    """Pass 3: each chunk again under a tape, back-propagating its cached projection gradients
    (and its supervised loss); returns the summed gradients and the chunks' logits. Moving
    statistics are carried through the loop and assigned once at its end."""
    variables = model.trainable_variables
    sup = chunk_labels is not None
    # Each chunk's mean supervised loss, weighted so the sum is the batch mean per replica.
    sup_weight = 1.0 / tf.cast(chunks * replicas, tf.float32)
    norms = _batch_norms(model)

    def rerun(i, state):
        grads, logits_acc, moving = state
        with tf.GradientTape() as chunk_tape, deferred_moving_updates() as updates:
            _, hiddens, _ = model._features(both[i], training=True)
            z = tf.cast(hiddens[-1], tf.float32)
            # sum(z * dL/dz) has the parameter gradient dL/dz . dz/dparams (chain rule).
            surrogate = tf.reduce_sum(z * cached[i])
            if sup:
                logits = model._supervised_logits(hiddens, training=True)
                surrogate += model._sup_loss(chunk_labels[i], logits) * sup_weight
                logits_acc = logits_acc.write(i, tf.stop_gradient(logits))
            surrogate = model.optimizer.scale_loss(surrogate)
        step_grads = chunk_tape.gradient(surrogate, variables)
        grads = [
            g if sg is None else g + tf.convert_to_tensor(sg)
            for g, sg in zip(grads, step_grads, strict=True)
        ]
        return grads, logits_acc, _carry_moving(norms, moving, updates)

    moving0 = [
        (tf.convert_to_tensor(bn.moving_mean), tf.convert_to_tensor(bn.moving_variance))
        for bn in norms
    ]
    grads, logits_acc, moving = for_each_chunk(
        chunks,
        rerun,
        (
            [tf.zeros_like(v) for v in variables],
            tf.TensorArray(tf.float32, size=chunks if sup else 0),
            moving0,
        ),
        loop,
    )
    for bn, (mean, variance) in zip(norms, moving, strict=True):
        bn.moving_mean.assign(mean)
        bn.moving_variance.assign(variance)
    return grads, logits_acc
