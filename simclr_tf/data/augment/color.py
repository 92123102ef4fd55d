"""Colour: jitter (brightness, contrast, saturation, hue in random order), grayscale, both.

Two executions of the same draws (see :mod:`simclr_tf.data.augment.views`): a batch runs the
jitter through a fixed 15-slot schedule with neutral factors for skipped slots; the views of one
image run each op once, in the view's own order, XLA-compiled (``_jitter_one_compiled``).
"""

from __future__ import annotations

import itertools

import tensorflow as tf

from simclr_tf.data.augment.common import (
    Views,
    _bcast,
    _check_p,
    _check_rgb,
    _cond,
    _from_batch,
    _per_example,
    _to_batch,
)
from simclr_tf.data.augment.seeds import _as_seed, _bernoulli, _split, _uniform
from simclr_tf.data.recipe import COLOR_JITTER_IMPLS, DEFAULT_COLOR_JITTER_IMPL

# tf.image.rgb_to_grayscale weights (ITU-R 601-2 luma).
_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


# The jitter ops take per-example factors and are exact identities at their neutral value
# (brightness/contrast/saturation 1, hue 0), so "not this example" is expressed by a neutral
# factor instead of a broadcast tf.where (which costs ~8 elementwise passes on CPU).


def _brightness(x: tf.Tensor, f: tf.Tensor) -> tf.Tensor:
    return tf.minimum(x * _bcast(f), 1.0)  # f >= 0, so only the upper clip can bind


def _brightness_additive(x: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    # SimCLR v1's brightness (tf.image.adjust_brightness, then the jitter's clip); exactly x
    # when delta == 0, its neutral value.
    return tf.clip_by_value(x + _bcast(delta), 0.0, 1.0)


def _contrast(x: tf.Tensor, f: tf.Tensor) -> tf.Tensor:
    f = _bcast(f)
    mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    # x*f + mean*(1-f) == (x - mean)*f + mean, and is exactly x when f == 1.
    return tf.clip_by_value(x * f + mean * (1.0 - f), 0.0, 1.0)


def _saturation(x: tf.Tensor, f: tf.Tensor) -> tf.Tensor:
    # With V = max(rgb) and the hue fixed, scaling S moves every channel along the line to V:
    # c' = V - (V - c) * min(f, V / chroma). Elementwise, so no HSV round trip.
    r, g, b = x[..., 0:1], x[..., 1:2], x[..., 2:3]
    v = tf.maximum(tf.maximum(r, g), b)
    chroma = v - tf.minimum(tf.minimum(r, g), b)
    ratio = tf.minimum(_bcast(tf.maximum(f, 0.0)), v / tf.maximum(chroma, 1e-12))
    return x * ratio + v * (1.0 - ratio)  # stays in [0, 1]; exactly x when ratio == 1


def _hue(x: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    hsv = tf.image.rgb_to_hsv(x)
    hue = hsv[..., :1] + _bcast(delta)
    hue = hue - tf.floor(hue)
    out = tf.image.hsv_to_rgb(tf.concat([hue, hsv[..., 1:]], axis=-1))
    # Blend so that delta == 0 returns x bit-exactly (x + 0 * (...)); cheaper than tf.where.
    # HSV -> RGB with V and S in [0, 1] stays in [0, 1], so no clip pass is needed here.
    moved = _bcast(tf.cast(tf.not_equal(delta, 0.0), tf.float32))
    return x + (out - x) * moved


def _public_adjust(op, what: str, image, factor) -> tf.Tensor:
    x, single = _to_batch(image)
    _check_rgb(x, what)
    return _from_batch(op(x, _per_example(factor, tf.shape(x)[0])), single)


def adjust_brightness(image, factor) -> tf.Tensor:
    """Multiplicative brightness ``x * factor`` (SimCLR's form), clipped; factor scalar or [B]."""
    # The jitter only draws factors >= 0; clip both sides here for arbitrary user factors.
    return tf.clip_by_value(_public_adjust(_brightness, "adjust_brightness", image, factor), 0, 1)


def adjust_brightness_additive(image, delta) -> tf.Tensor:
    """Additive brightness ``x + delta`` (SimCLR v1's form, ``--color_jitter_impl=v1``), clipped."""
    return _public_adjust(_brightness_additive, "adjust_brightness_additive", image, delta)


def adjust_contrast(image, factor) -> tf.Tensor:
    """``(x - mean) * factor + mean`` with per-channel means over H, W (tf.image's rule)."""
    return _public_adjust(_contrast, "adjust_contrast", image, factor)


def adjust_saturation(image, factor) -> tf.Tensor:
    """Scales HSV saturation by ``factor`` (S clamped to [0, 1]), as tf.image.adjust_saturation."""
    return _public_adjust(_saturation, "adjust_saturation", image, factor)


def adjust_hue(image, delta) -> tf.Tensor:
    """Rotates hue by ``delta`` (fraction of the colour wheel), as tf.image.adjust_hue."""
    return tf.clip_by_value(_public_adjust(_hue, "adjust_hue", image, delta), 0.0, 1.0)


# Op ids: 0 brightness, 1 contrast, 2 saturation, 3 hue. The brightness op and its neutral
# value depend on the jitter's form (recipe.COLOR_JITTER_IMPLS).
_JITTER_OPS = {
    "v2": (_brightness, _contrast, _saturation, _hue),
    "v1": (_brightness_additive, _contrast, _saturation, _hue),
}
_NEUTRAL = {"v2": (1.0, 1.0, 1.0, 0.0), "v1": (0.0, 1.0, 1.0, 0.0)}


def _check_impl(impl: str) -> None:
    if impl not in COLOR_JITTER_IMPLS:
        raise ValueError(f"colour jitter impl must be one of {COLOR_JITTER_IMPLS}; got {impl!r}.")


def _build_schedule() -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """A fixed op sequence that contains every order of the 4 ops as a subsequence.

    "B C S B C B S" contains every order of {B, C, S} (a shortest such sequence); putting it
    on both sides of a single hue slot embeds all 24 orders while running the costly HSV op
    once. Each example runs its own order by giving neutral factors to the slots it skips:
    15 cheap-or-single passes instead of 4 stages x 4 candidate ops + 16 selects.
    Returns (schedule, next_slot) where next_slot[i][op] is the first slot >= i running op.
    """
    half = (0, 1, 2, 0, 1, 0, 2)
    schedule = (*half, 3, *half)
    n = len(schedule)
    next_slot = tuple(
        tuple(next((s for s in range(i, n) if schedule[s] == op), n) for op in range(4))
        for i in range(n + 1)
    )
    for order in itertools.permutations(range(4)):
        pos = 0
        for op in order:
            pos = next_slot[pos][op] + 1
        if pos > n:
            raise AssertionError(f"jitter schedule misses order {order}")
    return schedule, next_slot


_SCHEDULE, _NEXT_SLOT = _build_schedule()


def _check_strength(strength: float) -> None:
    if float(strength) < 0.0:
        raise ValueError(f"colour jitter strength must be >= 0; got {strength}.")


def _jitter_params(
    seed, batch, strength: float, random_order: bool = True, impl: str = DEFAULT_COLOR_JITTER_IMPL
) -> dict:
    """Draws per-example jitter factors and op order (exposed for tests).

    Returns brightness, contrast, saturation factors and hue delta (each [B] float32) and
    ``order`` ([B, 4] int32, a permutation of 0..3 = brightness, contrast, saturation, hue).
    Lower bounds are clamped at 0 so strengths > 1.25 stay valid. With ``impl="v1"`` the
    brightness entry is an additive delta U(-0.8s, 0.8s) instead of a factor.
    """
    _check_strength(strength)
    _check_impl(impl)
    s = float(strength)
    seeds = _split(seed, 5)
    shape = tf.reshape(tf.cast(batch, tf.int32), [1])
    lo = max(0.0, 1.0 - 0.8 * s)
    if impl == "v1":
        brightness = _uniform(shape, seeds[0], -0.8 * s, 0.8 * s)
    else:
        brightness = _uniform(shape, seeds[0], lo, 1.0 + 0.8 * s)
    params = {
        "brightness": brightness,
        "contrast": _uniform(shape, seeds[1], lo, 1.0 + 0.8 * s),
        "saturation": _uniform(shape, seeds[2], lo, 1.0 + 0.8 * s),
        "hue": _uniform(shape, seeds[3], -0.2 * s, 0.2 * s),
    }
    if random_order:
        keys = _uniform(tf.concat([shape, [4]], 0), seeds[4])
        order = tf.argsort(keys, axis=1)
    else:
        order = tf.tile(tf.range(4, dtype=tf.int32)[tf.newaxis], tf.concat([shape, [1]], 0))
    params["order"] = order
    return params


def _apply_jitter(
    x: tf.Tensor,
    params: dict,
    active: tf.Tensor | None = None,
    impl: str = DEFAULT_COLOR_JITTER_IMPL,
) -> tf.Tensor:
    """Runs each example's four ops in its own order (``active``: [B] bool, else all).

    Every example's order is embedded greedily in the fixed slot schedule; slots an example
    skips (and all slots of inactive examples) get the neutral factor, an exact identity.
    Only [B]-sized index arithmetic differs per example: no gathers of images, no dynamic
    shapes, so it also compiles with XLA.
    """
    _check_impl(impl)
    ops, neutral = _JITTER_OPS[impl], _NEUTRAL[impl]
    factors = [params["brightness"], params["contrast"], params["saturation"], params["hue"]]
    if active is not None:
        factors = [tf.where(active, f, n) for f, n in zip(factors, neutral, strict=True)]
    order = params["order"]
    next_slot = tf.constant(_NEXT_SLOT, tf.int32)  # [n + 1, 4]
    pos = tf.zeros_like(order[:, 0])
    slot_of_op = [tf.zeros_like(pos)] * 4
    for k in range(4):
        op = order[:, k]
        slot = tf.gather_nd(next_slot, tf.stack([pos, op], axis=1))
        slot_of_op = [tf.where(tf.equal(op, j), slot, s) for j, s in enumerate(slot_of_op)]
        pos = slot + 1
    for index, op_id in enumerate(_SCHEDULE):
        f = tf.where(tf.equal(slot_of_op[op_id], index), factors[op_id], neutral[op_id])
        x = ops[op_id](x, f)
    return x


def color_jitter(
    image,
    seed,
    strength: float,
    random_order: bool = True,
    impl: str = DEFAULT_COLOR_JITTER_IMPL,
) -> tf.Tensor:
    """SimCLR colour jitter of ``strength`` s on every example (no apply probability).

    Brightness x*U(max(0, 1-0.8s), 1+0.8s) (``impl="v2"``, the reference's default) or
    x + U(-0.8s, 0.8s) (``impl="v1"``, SimCLR v1), contrast and saturation factors
    U(max(0, 1-0.8s), 1+0.8s), hue delta U(-0.2s, 0.2s); in a random order per example when
    ``random_order``; clipped to [0, 1] after each op. s = 0 is the identity.
    """
    x, single = _to_batch(image)
    _check_rgb(x, "color_jitter")
    params = _jitter_params(seed, tf.shape(x)[0], strength, random_order, impl)
    if float(strength) == 0.0:
        return _from_batch(x, single)
    if not random_order:
        for op_id, name in enumerate(("brightness", "contrast", "saturation", "hue")):
            x = _JITTER_OPS[impl][op_id](x, params[name])
        return _from_batch(x, single)
    return _from_batch(_apply_jitter(x, params, impl=impl), single)


def _grayscale_mix(x: tf.Tensor, gray_mask: tf.Tensor) -> tf.Tensor:
    """Luma in all 3 channels for masked examples, x otherwise, as one batched 3x3 matmul.

    Each example's colour matrix is either the identity (exact: x*1 + 0) or a matrix whose 3
    columns are the luma weights (3 identical channels). One pass, no broadcast select.
    """
    weights = tf.constant(_GRAY_WEIGHTS, tf.float32)
    to_gray = tf.tile(weights[:, tf.newaxis], [1, 3])
    matrices = tf.where(gray_mask[:, tf.newaxis, tf.newaxis], to_gray, tf.eye(3))
    return tf.clip_by_value(tf.einsum("bhwc,bcd->bhwd", x, matrices), 0.0, 1.0)


def random_grayscale(image, seed, p: float = 0.2) -> tf.Tensor:
    """Replaces each example by its luma (3 equal channels) with probability ``p``."""
    _check_p("p", p)
    x, single = _to_batch(image)
    _check_rgb(x, "random_grayscale")
    gray_mask = _bernoulli(_as_seed(seed), tf.shape(x)[0], p)
    return _from_batch(_grayscale_mix(x, gray_mask), single)


def color_distortion(
    image,
    seed,
    strength: float,
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    impl: str = DEFAULT_COLOR_JITTER_IMPL,
) -> tf.Tensor:
    """Colour jitter (random order, brightness form ``impl``) with probability ``jitter_p``,
    then grayscale with p.

    Args:
      image: one image ``[H, W, 3]`` or a batch ``[B, H, W, 3]`` (uint8 or float in [0, 1]).
      seed: ``[2]`` int tensor of the stateless draws.
      strength: colour jitter strength s (0.5 CIFAR-10, 1.0 ImageNet).
      jitter_p, grayscale_p: probabilities of the jitter and of grayscale.
      impl: brightness form, "v1" (additive) or "v2" (multiplicative, the reference default).

    Example::

        x = simclr_tf.color_distortion(images, seed=[1, 2], strength=0.5)
    """
    _check_p("jitter_p", jitter_p)
    _check_p("grayscale_p", grayscale_p)
    x, single = _to_batch(image)
    _check_rgb(x, "color_distortion")
    s_jitter, s_apply, s_gray = _split(seed, 3)
    batch = tf.shape(x)[0]
    params = _jitter_params(s_jitter, batch, strength, random_order=True, impl=impl)
    if float(strength) > 0.0 and jitter_p > 0.0:
        x = _apply_jitter(x, params, active=_bernoulli(s_apply, batch, jitter_p), impl=impl)
    x = _grayscale_mix(x, _bernoulli(s_gray, batch, grayscale_p))
    return _from_batch(x, single)


# The steps of the view recipe (views.py): batched, or per view (each op once, own order).


def _jitter_step(
    x: Views,
    params: dict,
    active: tf.Tensor,
    per_view: bool,
    impl: str = DEFAULT_COLOR_JITTER_IMPL,
) -> Views:
    _check_impl(impl)
    if not per_view:
        return _apply_jitter(x, params, active=active, impl=impl)
    names = ("brightness", "contrast", "saturation", "hue")
    factors = tf.stack([params[k] for k in names], axis=1)  # [n, 4]
    order = params["order"]
    out = [
        _cond(active[i], lambda v=v, i=i: _jitter_one_compiled(v, factors[i], order[i], impl), v)
        for i, v in enumerate(x)
    ]
    return [tf.ensure_shape(v, x[0].shape) for v in out]


def _jitter_one(
    v: tf.Tensor, factors: tf.Tensor, order: tf.Tensor, impl: str = DEFAULT_COLOR_JITTER_IMPL
) -> tf.Tensor:
    """The four jitter ops on one view [S, S, 3], each once, in ``order`` (clipped after each).

    ``factors``: brightness factor (v1: delta), contrast, saturation factors and hue delta. A
    while loop over the 4 stages traces (and XLA compiles) the 4 ops once instead of once per
    stage.
    """
    view_ops = _VIEW_JITTER_OPS[impl]

    def stage(k, v):
        op = order[k]
        f = tf.gather(factors, op)
        v = tf.switch_case(op, [lambda fn=fn, v=v, f=f: fn(v, f) for fn in view_ops])
        return k + 1, tf.ensure_shape(v, v_shape)

    v_shape = v.shape
    return tf.while_loop(lambda k, _: k < 4, stage, (tf.constant(0), v))[1]


def _view_brightness(v: tf.Tensor, f: tf.Tensor) -> tf.Tensor:
    return tf.minimum(v * f, 1.0)  # factor >= 0


def _view_brightness_additive(v: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(v + delta, 0.0, 1.0)


def _view_contrast(v: tf.Tensor, f: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(tf.image.adjust_contrast(v, f), 0.0, 1.0)


def _view_saturation(v: tf.Tensor, f: tf.Tensor) -> tf.Tensor:
    return _saturation(v[tf.newaxis], f[tf.newaxis])[0]


def _view_hue(v: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(tf.image.adjust_hue(v, delta), 0.0, 1.0)


_VIEW_JITTER_OPS = {
    "v2": (_view_brightness, _view_contrast, _view_saturation, _view_hue),
    "v1": (_view_brightness_additive, _view_contrast, _view_saturation, _view_hue),
}
# XLA fuses the elementwise passes of each op into one loop: 2.6x faster on a CPU host than op
# by op (tools/benchmark.py --what=ops), same values to ~1e-6. It compiles in about 2 s once
# per process and view size (unrolling the 4 stages instead of the while loop took a minute).
_jitter_one_compiled = tf.function(_jitter_one, jit_compile=True)


def _gray_step(x: Views, gray: tf.Tensor, per_view: bool) -> Views:
    if not per_view:
        return _grayscale_mix(x, gray)
    return [_cond(gray[i], lambda v=v: _gray_one_compiled(v), v) for i, v in enumerate(x)]


def _gray_one(v: tf.Tensor) -> tf.Tensor:
    """Luma (tf.image.rgb_to_grayscale's weights) in all 3 channels of one view [S, S, 3]."""
    luma = v[..., 0:1] * _GRAY_WEIGHTS[0] + v[..., 1:2] * _GRAY_WEIGHTS[1]
    luma = luma + v[..., 2:3] * _GRAY_WEIGHTS[2]
    return tf.concat([luma, luma, luma], axis=-1)


# One fused XLA loop: 3-6x faster on a CPU host than rgb_to_grayscale's matmul + tile, the same
# values to float32 rounding (tested).
_gray_one_compiled = tf.function(_gray_one, jit_compile=True)
