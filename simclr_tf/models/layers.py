"""Batch normalisation for SimCLR: fast on one device, global across replicas.

Why a layer of our own: on CPU (TF 2.21 / Keras 3.15) the stock `keras.layers.BatchNormalization`
builds BN out of many small elementwise ops (a ResNet-18 step takes about 1.07x the time with
it, benchmarks/README.md), while TensorFlow's fused kernel (`FusedBatchNormV3`, which has a
registered gradient) costs about what legacy Keras BN cost. SimCLR also needs *global* BN
(statistics over the whole batch across all replicas), otherwise BN leaks which views belong
together (paper, section 2.3 / 4).

Semantics follow `keras.layers.BatchNormalization(axis=-1)` exactly:

* training (``training=True`` and ``layer.trainable``): normalise with the batch mean and the
  *biased* batch variance, and update ``moving = momentum * moving + (1 - momentum) * batch``
  with that biased variance (Keras 3 uses the biased variance for the moving average; the fused
  kernel returns the Bessel-corrected one, which we convert back);
* otherwise: normalise with the moving statistics.

The channel axis is always the last one (NHWC images, [batch, features] vectors).

How the batch variance is *computed* (``moments``, set for a whole model by
:func:`set_batch_moments`): ``"exact"`` (default) uses the fused kernel on one replica and a shifted
one-pass sum across replicas; ``"reference"`` computes ``E[x^2] - E[x]^2`` in one float32 pass,
exactly as the reference code's ``SyncBatchNormalization`` does (on any replica count). Both are
the same number in exact arithmetic, but the one-pass form loses digits when a channel's mean is
large against its spread, and a train step amplifies that rounding (through the batch-norm
backward pass) into a visibly different step: ~0.5% of a ResNet-18 pretraining step, ~10% of a
ResNet-50-SK fine-tuning step (tests/test_reference_steps.py). ``"reference"`` reproduces the
reference code's steps to float32 noise; ``"exact"`` is faster on CPU and more accurate.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf

from simclr_tf.config_checks import BN_MOMENTS

_FUSED_DTYPES = (tf.float32, tf.float16, tf.bfloat16)
_LOW_PRECISION = (tf.float16, tf.bfloat16)


def set_batch_moments(layer: keras.layers.Layer, kind: str) -> int:
    """Sets ``moments`` on every built :class:`BatchNorm` inside ``layer``; returns the count.

    A walk rather than a constructor argument because some layers (the projection head) create
    their batch norms only when built: call it once the model is built.
    """
    if kind not in BN_MOMENTS:
        raise ValueError(f"Unknown batch-norm moments {kind!r}; use one of {BN_MOMENTS}.")
    count = 0
    for sub in layer._flatten_layers(include_self=True):
        if isinstance(sub, BatchNorm):
            sub.moments = kind
            count += 1
    return count


def attach_layers(owner: keras.layers.Layer, layers: list[keras.layers.Layer]) -> tuple[str, ...]:
    """Store sublayers as attributes named after them; return the names, in order.

    Why: Keras 3 tracks layers held in Python lists for its own weight lists (and .weights.h5
    files), but those lists are not TensorFlow trackables, so ``tf.train.Checkpoint`` silently
    skips every variable under them. Named attributes are tracked by both.
    """
    names = []
    for layer in layers:
        if layer.name in owner.__dict__ or hasattr(type(owner), layer.name):
            raise ValueError(f"{owner.name} already has an attribute {layer.name!r}.")
        setattr(owner, layer.name, layer)
        names.append(layer.name)
    return tuple(names)


def build_in_sequence(layers: list[keras.layers.Layer], input_shape: tuple) -> tuple:
    """Builds ``layers`` as a chain (each on the previous one's output shape); returns the last
    output shape."""
    shape = input_shape
    for layer in layers:
        layer.build(shape)
        shape = layer.compute_output_shape(shape)
    return shape


def set_trainable(layer: keras.layers.Layer, value: bool) -> None:
    """Sets ``layer.trainable`` and pushes it to every sub-layer, even when unchanged.

    Why: TF's trackable ``__setattr__`` skips ``x.a = x.a``, so re-setting ``trainable = False``
    after sub-layers were built (they start trainable) would silently do nothing.
    """
    keras.layers.Layer.trainable.fset(layer, bool(value))


# Active deferred_moving_updates() recorders (innermost last), per thread: MirroredStrategy
# traces each replica in its own thread.
_DEFERRED = threading.local()


def _recorders() -> list[list[tuple[Any, tf.Tensor, tf.Tensor]]]:
    if not hasattr(_DEFERRED, "stack"):
        _DEFERRED.stack = []
    return _DEFERRED.stack


@contextlib.contextmanager
def deferred_moving_updates() -> Iterator[list[tuple[Any, tf.Tensor, tf.Tensor]]]:
    """Inside: batch-norm layers record ``(layer, batch_mean, batch_variance)`` instead of
    assigning their moving statistics.

    Why: gradient caching runs its chunks in a ``tf.while_loop``; assigning a distributed
    variable inside the loop is a synchronisation point TF refuses there. The recorded moments
    are carried through the loop and assigned once after it (or dropped).
    """
    records: list[tuple[Any, tf.Tensor, tf.Tensor]] = []
    _recorders().append(records)
    try:
        yield records
    finally:
        _recorders().pop()


def _global_replica_context() -> tf.distribute.ReplicaContext | None:
    """The replica context when more than one replica runs in sync, else None."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return None
    return ctx


@keras.saving.register_keras_serializable(package="simclr_tf")
class BatchNorm(keras.layers.Layer):
    """Batch normalisation over the last axis; fused kernel locally, all-reduce when global.

    Args:
        momentum: decay of the moving statistics (the reference SimCLR code uses 0.9).
        epsilon: added to the variance (1e-5 in the reference ResNet).
        center: learn an offset ``beta``.
        scale: learn a scale ``gamma``.
        gamma_initializer: initializer of ``gamma``; ``"zeros"`` for the last BN of a residual
            block makes the block start as its shortcut.
        synchronized: when running with more than one replica in sync, compute the moments of
            the global batch (sum, sum of squares and count all-reduced across replicas). With a
            single replica this is identical to the local path and uses the fused kernel.
        moments: how training computes the batch variance, ``"exact"`` or ``"reference"``
            (module docstring).
    """

    def __init__(
        self,
        momentum: float = 0.9,
        epsilon: float = 1e-5,
        center: bool = True,
        scale: bool = True,
        gamma_initializer: Any = "ones",
        synchronized: bool = False,
        moments: str = "exact",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if moments not in BN_MOMENTS:
            raise ValueError(f"BatchNorm moments must be one of {BN_MOMENTS}, got {moments!r}.")
        self.moments = moments
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"BatchNorm momentum must be in [0, 1], got {momentum}.")
        if float(epsilon) <= 0.0:
            raise ValueError(f"BatchNorm epsilon must be > 0, got {epsilon}.")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.synchronized = bool(synchronized)
        self.gamma = None
        self.beta = None
        self.moving_mean = None
        self.moving_variance = None

    def build(self, input_shape: tuple) -> None:
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"BatchNorm needs a known channel (last) dimension, got input shape {input_shape}."
            )
        shape = (int(channels),)
        # Parameters and statistics stay float32 under mixed precision (autocast=False), like
        # Keras BN: BN statistics overflow/underflow in float16.
        if self.scale:
            self.gamma = self.add_weight(
                shape=shape,
                name="gamma",
                initializer=self.gamma_initializer,
                trainable=True,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                shape=shape, name="beta", initializer="zeros", trainable=True, autocast=False
            )
        self.moving_mean = self.add_weight(
            shape=shape, name="moving_mean", initializer="zeros", trainable=False, autocast=False
        )
        self.moving_variance = self.add_weight(
            shape=shape,
            name="moving_variance",
            initializer="ones",
            trainable=False,
            autocast=False,
        )

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    # -- helpers -------------------------------------------------------------------------------

    def _params(self, channels: int) -> tuple[tf.Tensor, tf.Tensor]:
        """gamma and beta as float32 tensors (constants when scale/center are off)."""
        gamma = tf.convert_to_tensor(self.gamma) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.convert_to_tensor(self.beta) if self.center else tf.zeros([channels], tf.float32)
        return tf.cast(gamma, tf.float32), tf.cast(beta, tf.float32)

    def _update_moving(self, mean: tf.Tensor, variance: tf.Tensor) -> None:
        """Keras' update rule: moving = momentum * moving + (1 - momentum) * batch.

        Per-replica BN (``synchronized=False``) on several replicas averages the replicas'
        batch moments first (one small all-reduce): the replicas' moving statistics stay
        identical, and the saved ones are those of every replica, not replica 0's alone.
        """
        mean, variance = tf.stop_gradient(mean), tf.stop_gradient(variance)
        ctx = _global_replica_context()
        if ctx is not None and not self.synchronized:
            channels = int(mean.shape[-1])
            both = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, tf.concat([mean, variance], 0))
            mean, variance = both[:channels], both[channels:]
        if _recorders():
            _recorders()[-1].append((self, mean, variance))
            return
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + tf.stop_gradient(mean) * (1.0 - m))
        self.moving_variance.assign(
            self.moving_variance * m + tf.stop_gradient(variance) * (1.0 - m)
        )

    def _fused(self, x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, training: bool) -> tf.Tensor:
        """FusedBatchNormV3 on a 4-D NHWC tensor (float32/float16/bfloat16, float32 params).

        The raw op, not tf.nn.fused_batch_norm: that wrapper silently raises epsilon to
        1.001e-5 (a cuDNN limit), which would break exact agreement with Keras BN.
        """
        if training:
            y, mean, var_unbiased, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=gamma,
                offset=beta,
                mean=tf.zeros([0], tf.float32),
                variance=tf.zeros([0], tf.float32),
                epsilon=self.epsilon,
                exponential_avg_factor=1.0,
                data_format="NHWC",
                is_training=True,
            )
            # The kernel reports the Bessel-corrected variance; Keras averages the biased one.
            # (Its reserve outputs differ between CPU and GPU, so we do not use them.)
            shape = tf.shape(x)
            n = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
            variance = var_unbiased * (tf.maximum(n - 1.0, 0.0) / tf.maximum(n, 1.0))
            self._update_moving(mean, variance)
            return y
        y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=gamma,
            offset=beta,
            mean=tf.cast(self.moving_mean, tf.float32),
            variance=tf.cast(self.moving_variance, tf.float32),
            epsilon=self.epsilon,
            exponential_avg_factor=1.0,
            data_format="NHWC",
            is_training=False,
        )
        return y

    def _one_pass_moments(
        self, x: tf.Tensor, ctx: tf.distribute.ReplicaContext | None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Mean and biased variance of the batch (concatenated over all replicas with ``ctx``).

        Per-replica sums are all-reduced in one packed tensor (one collective per layer). The
        all-reduce's registered gradient all-reduces the upstream gradient, so gradients of the
        global statistics reach every replica's inputs. ``exact`` moments shift the values by the
        (replica invariant) moving mean before squaring to limit cancellation in
        E[x^2] - E[x]^2; ``reference`` moments do not shift, as the reference code.
        """
        axes = list(range(len(x.shape) - 1))
        channels = int(x.shape[-1])
        if self.moments == "exact":
            shift = tf.stop_gradient(tf.cast(self.moving_mean, x.dtype))
        else:
            shift = tf.zeros([channels], x.dtype)
        xs = x - shift
        local_sum = tf.reduce_sum(xs, axis=axes)
        local_sq = tf.reduce_sum(tf.square(xs), axis=axes)
        local_n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), x.dtype)
        packed = tf.concat([local_sum, local_sq, tf.reshape(local_n, [1])], axis=0)
        total = packed if ctx is None else ctx.all_reduce(tf.distribute.ReduceOp.SUM, packed)
        g_sum, g_sq, g_n = total[:channels], total[channels : 2 * channels], total[2 * channels]
        g_n = tf.maximum(g_n, 1.0)
        mean_shifted = g_sum / g_n
        variance = tf.maximum(g_sq / g_n - tf.square(mean_shifted), 0.0)
        return mean_shifted + shift, variance

    # -- forward -------------------------------------------------------------------------------

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x = tf.convert_to_tensor(inputs)
        rank = len(x.shape)
        if rank < 2:
            raise ValueError(
                f"BatchNorm expects inputs of rank >= 2 (channels last), got shape {x.shape}."
            )
        channels = int(x.shape[-1])
        training = bool(training) and self.trainable  # like Keras: frozen BN runs in inference
        gamma, beta = self._params(channels)

        ctx = _global_replica_context() if (training and self.synchronized) else None
        exact = self.moments == "exact"
        if ctx is None and exact and x.dtype in _FUSED_DTYPES and rank in (2, 4):
            # Fused kernel: it takes float16/bfloat16 inputs with float32 parameters and
            # accumulates in float32 internally, so no up-cast of the activations is needed.
            if rank == 2:
                y = self._fused(x[:, None, None, :], gamma, beta, training)
                y = tf.reshape(y, [-1, channels])
            else:
                y = self._fused(x, gamma, beta, training)
            return tf.cast(y, self.compute_dtype)

        # General path (global BN, other ranks or dtypes): compute in float32 at least.
        compute = tf.float64 if x.dtype == tf.float64 else tf.float32
        xc = tf.cast(x, compute)
        if training:
            if ctx is not None or not exact:
                mean, variance = self._one_pass_moments(xc, ctx)
            else:
                mean, variance = tf.nn.moments(xc, axes=list(range(rank - 1)))
            self._update_moving(tf.cast(mean, tf.float32), tf.cast(variance, tf.float32))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        mean, variance = tf.cast(mean, compute), tf.cast(variance, compute)
        y = tf.nn.batch_normalization(
            xc, mean, variance, tf.cast(beta, compute), tf.cast(gamma, compute), self.epsilon
        )
        return tf.cast(y, self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
                "synchronized": self.synchronized,
                "moments": self.moments,
            }
        )
        return config
