"""float16 loss scaling whose "gradients are finite" decision is taken by all replicas together.

Keras's ``LossScaleOptimizer`` decides from replica 0's *local* gradients (its comment assumes
they were already all-reduced; they are not): an overflow on another replica is then summed into
the update and the weights become NaN everywhere. Here every replica's finite flag is
all-reduced first, and a step with an overflow anywhere is skipped on every replica (the scale
is halved, as for a local overflow).
"""

from __future__ import annotations

import keras
import tensorflow as tf


def agree_on_finite(grads: list, ctx: tf.distribute.ReplicaContext) -> list:
    """``grads`` unchanged when every replica's gradients are finite, else all NaN.

    Adding 0.0 leaves finite values bit-identical; adding NaN makes every replica's own check
    (replica 0's included) see the overflow, so all take the same branch.
    """
    finite = [tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None]
    local_bad = tf.cast(tf.logical_not(tf.reduce_all(tf.stack(finite))), tf.float32)
    any_bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_bad) > 0.0
    poison = tf.where(any_bad, tf.constant(float("nan")), tf.constant(0.0))
    return [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]


@keras.saving.register_keras_serializable(package="simclr_tf")
class AgreedLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """``LossScaleOptimizer`` whose skip-the-step decision is the same on every replica."""

    def apply(self, grads, trainable_variables=None):
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            grads = agree_on_finite(
                [None if g is None else tf.convert_to_tensor(g) for g in grads], ctx
            )
        return super().apply(grads, trainable_variables)
