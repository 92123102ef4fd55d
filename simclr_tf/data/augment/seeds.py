"""Stateless randomness of the augmentations: seed checks, sub-seeds, uniform and coin draws.

Randomness comes only from a shape-``[2]`` integer seed; sub-seeds come from ``_split`` and every
draw from ``_uniform`` (raw Philox bits), so the same seed gives the same values eagerly, in
``tf.data`` and under XLA.
"""

from __future__ import annotations

import tensorflow as tf


def _as_seed(seed) -> tf.Tensor:
    """Checks the seed is a shape-[2] integer tensor, as the stateless RNG ops need."""
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise TypeError(
            f"seed must be an int32/int64 tensor of shape [2]; got dtype {seed.dtype}. "
            "Pass e.g. tf.constant([1, 2])."
        )
    if seed.dtype not in (tf.int32, tf.int64):
        seed = tf.cast(seed, tf.int64)
    if seed.shape.rank is not None and seed.shape.as_list() != [2]:
        raise ValueError(
            f"seed must have shape [2]; got {seed.shape}. Split a batch of seeds before calling, "
            "or derive one with tf.random.experimental.stateless_fold_in."
        )
    return seed


def _split(seed, num: int) -> list[tf.Tensor]:
    seeds = tf.random.experimental.stateless_split(_as_seed(seed), num, alg="philox")
    return [seeds[i] for i in range(num)]


def _uniform(shape, seed, minval: float = 0.0, maxval: float = 1.0) -> tf.Tensor:
    """Stateless float32 uniform in [minval, maxval) built from raw 32-bit Philox draws.

    ``tf.random.stateless_uniform`` maps bits to floats differently with and without XLA;
    the integer bits agree, so converting them here keeps views identical whether the
    augmentation runs eagerly, in tf.data or inside a jit-compiled train step.
    """
    bits = tf.random.stateless_uniform(
        shape, seed, minval=None, maxval=None, dtype=tf.uint32, alg="philox"
    )
    unit = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / (1 << 24))
    return minval + (maxval - minval) * unit


def _bernoulli(seed, batch, p: float) -> tf.Tensor:
    """[B] bool mask, True with probability p (exactly never for p=0, always for p=1)."""
    return _uniform(tf.reshape(batch, [1]), seed) < p
