"""SimCLR augmentations in pure TensorFlow ops, per image or vectorised over a batch.

Every public op takes ONE image ``[H, W, C]`` or a BATCH ``[B, H, W, C]`` (uint8 in [0, 255] or
float in [0, 1]) and returns float32 in [0, 1] with the same rank. For a batch each example gets
its own random parameters, drawn as ``[B]``-shaped tensors (no per-example Python loops), so the
two-view augmentation can run per image inside ``tf.data`` or batched on an accelerator inside a
train step. Randomness comes only from ``seed``: an int32/int64 tensor of shape ``[2]`` fed to
``tf.random.stateless_*``; sub-seeds are derived with ``stateless_split``, so the same seed gives
the same output.

Settings follow SimCLR (arXiv 2002.05709, appendix A) and its reference implementation:
random resized crop (area 8%-100%, aspect 3/4-4/3, bicubic), horizontal flip, colour jitter of
strength s (brightness/contrast/saturation 0.8s, hue 0.2s, random order, p=0.8), grayscale
(p=0.2), Gaussian blur (p=0.5, sigma in [0.1, 2], kernel 10% of the side).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import tensorflow as tf

from simclr_tf.config import default_color_strength, default_use_blur  # re-exported

__all__ = [
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "center_crop_resize",
    "color_distortion",
    "color_jitter",
    "CROP_SAMPLERS",
    "crop_resize_bicubic",
    "default_color_strength",
    "default_use_blur",
    "eval_view",
    "finetune_view",
    "gaussian_blur",
    "pretrain_view",
    "random_blur",
    "random_flip",
    "random_grayscale",
    "random_resized_crop",
    "sample_crop_boxes",
    "two_crops",
    "two_views",
    "VIEW_OPS",
]

# tf.image.rgb_to_grayscale weights (ITU-R 601-2 luma).
_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
# Keys cubic parameter used by tf.image.resize(..., "bicubic") (half-pixel centres).
_KEYS_A = -0.5
# ResizeBicubic looks the kernel up in a 1024-entry table: the fractional offset is quantised.
_BICUBIC_TABLE_SIZE = 1024.0


# --------------------------------------------------------------------------------------------
# Input / seed plumbing
# --------------------------------------------------------------------------------------------


def _to_batch(image) -> tuple[tf.Tensor, bool]:
    """Returns (float32 [B,H,W,C] in [0,1], was_single) so every op has one batched body."""
    image = tf.convert_to_tensor(image)
    rank = image.shape.rank
    if rank not in (3, 4):
        raise ValueError(
            f"Expected one image [H, W, C] or a batch [B, H, W, C]; got shape {image.shape}. "
            "Add or remove a leading batch axis."
        )
    if not (image.dtype.is_floating or image.dtype.is_integer):
        raise TypeError(f"Images must be uint8 (0-255) or float (0-1); got dtype {image.dtype}.")
    x = tf.image.convert_image_dtype(image, tf.float32)
    if rank == 3:
        return x[tf.newaxis], True
    return x, False


def _from_batch(x: tf.Tensor, single: bool) -> tf.Tensor:
    return x[0] if single else x


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


def _check_p(name: str, p: float) -> None:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1]; got {p}.")


def _check_size(size: int) -> None:
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive int (output side in pixels); got {size!r}.")


def _check_rgb(x: tf.Tensor, what: str) -> None:
    channels = x.shape[-1]
    if channels is not None and channels != 3:
        raise ValueError(f"{what} needs RGB images with 3 channels; got {channels} channels.")


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


def _bcast(v: tf.Tensor) -> tf.Tensor:
    """[B] -> [B, 1, 1, 1] so per-example parameters broadcast over pixels."""
    return tf.reshape(v, [-1, 1, 1, 1])


def _per_example(value, batch) -> tf.Tensor:
    """Scalar or [B] -> float32 [B]."""
    value = tf.cast(tf.convert_to_tensor(value), tf.float32)
    return tf.broadcast_to(tf.reshape(value, [-1]), tf.reshape(batch, [1]))


# --------------------------------------------------------------------------------------------
# Random resized crop
# --------------------------------------------------------------------------------------------


def _check_crop_ranges(area_range, aspect_ratio_range, max_attempts) -> None:
    lo, hi = area_range
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"area_range must satisfy 0 < low <= high <= 1; got {area_range}.")
    rlo, rhi = aspect_ratio_range
    if not 0.0 < rlo <= rhi:
        raise ValueError(
            f"aspect_ratio_range must satisfy 0 < low <= high; got {aspect_ratio_range}."
        )
    if int(max_attempts) < 1:
        raise ValueError(f"max_attempts must be >= 1; got {max_attempts}.")


CROP_SAMPLERS = ("reference", "uniform_area")


def sample_crop_boxes(
    seed,
    height,
    width,
    batch,
    area_range: Sequence[float] = (0.08, 1.0),
    aspect_ratio_range: Sequence[float] = (3 / 4, 4 / 3),
    max_attempts: int = 100,
    sampler: str = "reference",
    min_object_covered: float = 0.1,
) -> tf.Tensor:
    """Samples random crop boxes: int32 ``[batch, 4]`` rows of (y0, x0, h, w).

    ``sampler="reference"`` (default) draws what ``tf.image.sample_distorted_bounding_box`` draws
    in the SimCLR reference code (whole-image bounding box, ``min_object_covered``);
    ``"uniform_area"`` draws torchvision-style boxes (area uniform, log-uniform aspect). Both are
    vectorised over ``batch`` x ``max_attempts`` candidates and stateless. ``height``/``width``
    may be tensors (one image size for the whole batch).
    """
    _check_crop_ranges(area_range, aspect_ratio_range, max_attempts)
    if sampler == "reference":
        if not 0.0 <= float(min_object_covered) <= 1.0:
            raise ValueError(f"min_object_covered must be in [0, 1]; got {min_object_covered}.")
        return _reference_boxes(
            seed,
            height,
            width,
            batch,
            area_range,
            aspect_ratio_range,
            max_attempts,
            float(min_object_covered),
        )
    if sampler == "uniform_area":
        return _uniform_area_boxes(
            seed, height, width, batch, area_range, aspect_ratio_range, max_attempts
        )
    raise ValueError(f"crop sampler must be one of {CROP_SAMPLERS}; got {sampler!r}.")


def _reference_boxes(
    seed, height, width, batch, area_range, aspect_ratio_range, max_attempts, min_covered
) -> tf.Tensor:
    """``sample_distorted_bounding_box`` semantics (TF's kernel), all attempts at once.

    Per attempt: aspect ratio a ~ U(range) (not log-uniform); crop height an integer uniform in
    [rint(sqrt(min_area / a)), max_h] with max_h = rint(sqrt(max_area / a)) lowered until
    rint(max_h * a) <= W and max_h <= H; width rint(h * a); one +1 / -1 step on h when rounding
    pushed the area out of range; rejected when still out of range or when the crop covers
    less than ``min_covered`` of the image or fewer than 10 pixels. Offsets are uniform in
    [0, H - h) (TF never places a smaller crop flush with the bottom/right edge). The first
    accepted attempt wins; none accepted -> the whole image.
    """
    s_ratio, s_height, s_offset = _split(seed, 3)
    h_img = tf.cast(height, tf.float32)
    w_img = tf.cast(width, tf.float32)
    shape = tf.stack([tf.cast(batch, tf.int32), int(max_attempts)])
    ratio = _uniform(shape, s_ratio, float(aspect_ratio_range[0]), float(aspect_ratio_range[1]))
    min_area = float(area_range[0]) * w_img * h_img
    max_area = float(area_range[1]) * w_img * h_img

    lo_h = tf.math.rint(tf.sqrt(min_area / ratio))
    max_h = tf.math.rint(tf.sqrt(max_area / ratio))
    narrower = tf.floor((w_img + (0.5 - 1e-7)) / ratio)
    narrower = tf.where(tf.math.rint(narrower * ratio) > w_img, narrower - 1.0, narrower)
    max_h = tf.where(tf.math.rint(max_h * ratio) > w_img, narrower, max_h)
    max_h = tf.minimum(max_h, h_img)
    lo_h = tf.minimum(lo_h, max_h)
    pick = tf.floor(_uniform(shape, s_height) * (max_h - lo_h + 1.0))
    h = lo_h + tf.minimum(pick, max_h - lo_h)
    w = tf.math.rint(h * ratio)
    too_small = w * h < min_area
    h = tf.where(too_small, h + 1.0, h)
    w = tf.math.rint(h * ratio)
    still_small = w * h < min_area
    too_big = w * h > max_area
    h = tf.where(too_big, h - 1.0, h)
    w = tf.math.rint(h * ratio)
    area = w * h
    ok = (
        ~still_small
        & (area >= min_area)
        & (area <= max_area)
        & (w <= w_img)
        & (h <= h_img)
        & (w > 0.0)
        & (h > 0.0)
        & (area >= 10.0)
        & (area / (w_img * h_img) >= min_covered)
    )
    first = tf.argmax(tf.cast(ok, tf.int32), axis=1, output_type=tf.int32)
    found = tf.reduce_any(ok, axis=1)
    box_h = tf.where(found, tf.gather(h, first, axis=1, batch_dims=1), h_img)
    box_w = tf.where(found, tf.gather(w, first, axis=1, batch_dims=1), w_img)
    u = _uniform(tf.stack([shape[0], 2]), s_offset)
    y0 = tf.floor(u[:, 0] * (h_img - box_h))
    x0 = tf.floor(u[:, 1] * (w_img - box_w))
    return tf.cast(tf.stack([y0, x0, box_h, box_w], axis=1), tf.int32)


def _uniform_area_boxes(
    seed, height, width, batch, area_range, aspect_ratio_range, max_attempts
) -> tf.Tensor:
    """Inception/torchvision-style boxes.

    Each attempt draws an area fraction ~ U(area_range) and a log-uniform aspect ratio (w/h);
    all ``max_attempts`` candidates are drawn at once and the first that fits the image is
    taken. When none fits, the box is a centre crop with the image's aspect ratio clamped to
    ``aspect_ratio_range`` (torchvision's fallback).
    """
    s_area, s_ratio, s_offset = _split(seed, 3)
    h_img = tf.cast(height, tf.float32)
    w_img = tf.cast(width, tf.float32)
    shape = tf.stack([tf.cast(batch, tf.int32), int(max_attempts)])

    target = h_img * w_img * _uniform(shape, s_area, float(area_range[0]), float(area_range[1]))
    log_lo, log_hi = math.log(aspect_ratio_range[0]), math.log(aspect_ratio_range[1])
    ratio = tf.exp(_uniform(shape, s_ratio, log_lo, log_hi))
    cand_w = tf.round(tf.sqrt(target * ratio))
    cand_h = tf.round(tf.sqrt(target / ratio))
    fits = (cand_w >= 1.0) & (cand_w <= w_img) & (cand_h >= 1.0) & (cand_h <= h_img)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    found = tf.reduce_any(fits, axis=1)
    pick_h = tf.gather(cand_h, first, axis=1, batch_dims=1)
    pick_w = tf.gather(cand_w, first, axis=1, batch_dims=1)

    # Fallback: the largest centred box whose aspect ratio is clamped into the allowed range.
    in_ratio = w_img / h_img
    rlo, rhi = float(aspect_ratio_range[0]), float(aspect_ratio_range[1])
    fb_w = tf.where(in_ratio > rhi, tf.round(h_img * rhi), w_img)
    fb_h = tf.where(in_ratio < rlo, tf.round(w_img / rlo), h_img)
    fb_w = tf.clip_by_value(fb_w, 1.0, w_img)
    fb_h = tf.clip_by_value(fb_h, 1.0, h_img)

    box_h = tf.where(found, pick_h, fb_h)
    box_w = tf.where(found, pick_w, fb_w)
    u = _uniform(tf.stack([shape[0], 2]), s_offset)
    rand_y = tf.minimum(tf.floor(u[:, 0] * (h_img - box_h + 1.0)), h_img - box_h)
    rand_x = tf.minimum(tf.floor(u[:, 1] * (w_img - box_w + 1.0)), w_img - box_w)
    y0 = tf.where(found, rand_y, tf.floor((h_img - box_h) / 2.0))
    x0 = tf.where(found, rand_x, tf.floor((w_img - box_w) / 2.0))
    return tf.cast(tf.stack([y0, x0, box_h, box_w], axis=1), tf.int32)


def _keys_cubic(d: tf.Tensor) -> tf.Tensor:
    """Keys cubic convolution kernel (a = -0.5), support |d| < 2."""
    a = _KEYS_A
    d = tf.abs(d)
    near = ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
    far = ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
    return tf.where(d <= 1.0, near, tf.where(d < 2.0, far, tf.zeros_like(d)))


def _bicubic_matrix(start: tf.Tensor, length: tf.Tensor, in_size, out_size: int) -> tf.Tensor:
    """Per-example 1-D resize matrices ``[B, out_size, in_size]`` for crops [start, start+len).

    Reproduces ``ResizeBicubic(half_pixel_centers=True)`` applied to the sliced crop: sample
    position t = (o + 0.5) * len / out - 0.5 in crop coordinates, its fractional part quantised
    to the op's 1/1024 table, taps outside the crop dropped and the rest renormalised.
    """
    length_f = tf.cast(length, tf.float32)
    scale = length_f / float(out_size)  # float32 division, as the kernel does
    o = tf.range(out_size, dtype=tf.float32)
    t = (o[tf.newaxis, :] + 0.5) * scale[:, tf.newaxis] - 0.5  # [B, out]
    t_floor = tf.floor(t)
    frac = tf.round((t - t_floor) * _BICUBIC_TABLE_SIZE) / _BICUBIC_TABLE_SIZE
    t_q = t_floor + frac
    j = tf.range(in_size, dtype=tf.float32)[tf.newaxis, :] - tf.cast(start, tf.float32)[:, None]
    inside = (j >= 0.0) & (j < length_f[:, tf.newaxis])  # [B, in]
    w = _keys_cubic(t_q[:, :, tf.newaxis] - j[:, tf.newaxis, :])
    w = w * tf.cast(inside, tf.float32)[:, tf.newaxis, :]
    return w / tf.reduce_sum(w, axis=-1, keepdims=True)


def _crop_resize_matmul(
    x: tf.Tensor, boxes: tf.Tensor, size: int, flip: tf.Tensor | None = None
) -> tf.Tensor:
    """Batched bicubic crop-resize as two matmuls; ``flip`` ([B] bool) mirrors the output for
    free by reversing the rows of the horizontal interpolation matrix."""
    shape = tf.shape(x)
    wy = _bicubic_matrix(boxes[:, 0], boxes[:, 2], shape[1], size)  # [B, s, H]
    wx = _bicubic_matrix(boxes[:, 1], boxes[:, 3], shape[2], size)  # [B, s, W]
    if flip is not None:
        wx = tf.where(flip[:, tf.newaxis, tf.newaxis], tf.reverse(wx, axis=[1]), wx)
    rows = tf.einsum("boh,bhwc->bowc", wy, x)
    out = tf.einsum("bpw,bowc->bopc", wx, rows)
    out = tf.ensure_shape(out, [x.shape[0], size, size, x.shape[-1]])
    return tf.clip_by_value(out, 0.0, 1.0)


def crop_resize_bicubic(images, boxes, size: int) -> tf.Tensor:
    """Exact batched bicubic crop-and-resize: ``[B,H,W,C]`` + ``[B,4]`` boxes -> ``[B,s,s,C]``.

    Equals ``tf.image.resize(crop, [size, size], "bicubic")`` of each sliced crop, computed as
    two batched matmuls with per-example interpolation matrices, so it runs as dense matmuls on
    an accelerator. Boxes are rows of (y0, x0, h, w). Output clipped to [0, 1].
    """
    _check_size(size)
    x, single = _to_batch(images)
    if single:
        raise ValueError("crop_resize_bicubic expects a batch [B, H, W, C]; add a batch axis.")
    return _crop_resize_matmul(x, tf.convert_to_tensor(boxes), size)


def _crop_resize_single(image: tf.Tensor, box: tf.Tensor, size: int) -> tf.Tensor:
    """Per-image path: slice the box (cheap for large, variable-size images), then resize.

    Only the crop is converted to float (tf.image.resize reads uint8 directly too, but was
    measured slower than converting the crop first).
    """
    crop = tf.slice(image, tf.stack([box[0], box[1], 0]), tf.stack([box[2], box[3], -1]))
    crop = tf.image.convert_image_dtype(crop, tf.float32)
    out = tf.image.resize(crop, [size, size], method="bicubic")
    return tf.clip_by_value(out, 0.0, 1.0)


def random_resized_crop(
    image,
    seed,
    size: int,
    area_range: Sequence[float] = (0.08, 1.0),
    aspect_ratio_range: Sequence[float] = (3 / 4, 4 / 3),
    max_attempts: int = 100,
    sampler: str = "reference",
) -> tf.Tensor:
    """Random area/aspect crop resized (bicubic) to ``size x size``; float32 in [0, 1].

    A single image takes the slice-and-resize path (any H, W, even unknown); a batch takes the
    exact matmul path of :func:`crop_resize_bicubic`, each example with its own box.
    ``sampler`` picks the box distribution (see :func:`sample_crop_boxes`).
    """
    _check_size(size)
    image = tf.convert_to_tensor(image)
    ranges = (area_range, aspect_ratio_range, max_attempts, sampler)
    if image.shape.rank == 3:
        shape = tf.shape(image)
        box = sample_crop_boxes(seed, shape[0], shape[1], 1, *ranges)[0]
        out = _crop_resize_single(image, box, size)
        return tf.ensure_shape(out, [size, size, image.shape[-1]])
    x, _ = _to_batch(image)
    shape = tf.shape(x)
    boxes = sample_crop_boxes(seed, shape[1], shape[2], shape[0], *ranges)
    return _crop_resize_matmul(x, boxes, size)


def _crop_flip(image, s_crop, s_flip, size: int, sampler: str = "reference") -> tf.Tensor:
    """random_flip(random_resized_crop(image, s_crop, size), s_flip) as a batch; on the
    batched path the flip is folded into the crop's interpolation matrix."""
    image = tf.convert_to_tensor(image)
    if image.shape.rank == 3:
        crop = random_resized_crop(image, s_crop, size, sampler=sampler)
        return random_flip(crop[tf.newaxis], s_flip)
    x, _ = _to_batch(image)
    shape = tf.shape(x)
    boxes = sample_crop_boxes(s_crop, shape[1], shape[2], shape[0], sampler=sampler)
    return _crop_resize_matmul(x, boxes, size, flip=_bernoulli(s_flip, shape[0], 0.5))


# --------------------------------------------------------------------------------------------
# Flip
# --------------------------------------------------------------------------------------------


def random_flip(image, seed, p: float = 0.5) -> tf.Tensor:
    """Horizontal flip of each example with probability ``p``."""
    _check_p("p", p)
    x, single = _to_batch(image)
    shape = tf.shape(x)
    flip = _bernoulli(_as_seed(seed), shape[0], p)
    return _from_batch(_flip_batch(x, flip), single)


def _flip_batch(x: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    """Mirrors the examples where ``flip`` ([B] bool) is set.

    Per-example column indices (reversed or not) and one gather: cheaper than a broadcast
    tf.where between x and its mirror image.
    """
    cols = tf.range(tf.shape(x)[2])
    cols = tf.where(flip[:, tf.newaxis], tf.reverse(cols, [0])[tf.newaxis], cols[tf.newaxis])
    return tf.gather(x, cols, axis=2, batch_dims=1)


# --------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------
#
# The jitter ops take per-example factors and are exact identities at their neutral value
# (brightness/contrast/saturation 1, hue 0), so "not this example" is expressed by a neutral
# factor instead of a broadcast tf.where (which costs ~8 elementwise passes on CPU).


def _brightness(x: tf.Tensor, f: tf.Tensor) -> tf.Tensor:
    return tf.minimum(x * _bcast(f), 1.0)  # f >= 0, so only the upper clip can bind


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


def adjust_contrast(image, factor) -> tf.Tensor:
    """``(x - mean) * factor + mean`` with per-channel means over H, W (tf.image's rule)."""
    return _public_adjust(_contrast, "adjust_contrast", image, factor)


def adjust_saturation(image, factor) -> tf.Tensor:
    """Scales HSV saturation by ``factor`` (S clamped to [0, 1]), as tf.image.adjust_saturation."""
    return _public_adjust(_saturation, "adjust_saturation", image, factor)


def adjust_hue(image, delta) -> tf.Tensor:
    """Rotates hue by ``delta`` (fraction of the colour wheel), as tf.image.adjust_hue."""
    return tf.clip_by_value(_public_adjust(_hue, "adjust_hue", image, delta), 0.0, 1.0)


# Op ids: 0 brightness, 1 contrast, 2 saturation, 3 hue.
_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)
_NEUTRAL = (1.0, 1.0, 1.0, 0.0)


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


def _jitter_params(seed, batch, strength: float, random_order: bool = True) -> dict:
    """Draws per-example jitter factors and op order (exposed for tests).

    Returns brightness, contrast, saturation factors and hue delta (each [B] float32) and
    ``order`` ([B, 4] int32, a permutation of 0..3 = brightness, contrast, saturation, hue).
    Lower bounds are clamped at 0 so strengths > 1.25 stay valid.
    """
    _check_strength(strength)
    s = float(strength)
    seeds = _split(seed, 5)
    shape = tf.reshape(tf.cast(batch, tf.int32), [1])
    lo = max(0.0, 1.0 - 0.8 * s)
    params = {
        "brightness": _uniform(shape, seeds[0], lo, 1.0 + 0.8 * s),
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


def _apply_jitter(x: tf.Tensor, params: dict, active: tf.Tensor | None = None) -> tf.Tensor:
    """Runs each example's four ops in its own order (``active``: [B] bool, else all).

    Every example's order is embedded greedily in the fixed slot schedule; slots an example
    skips (and all slots of inactive examples) get the neutral factor, an exact identity.
    Only [B]-sized index arithmetic differs per example: no gathers of images, no dynamic
    shapes, so it also compiles with XLA.
    """
    factors = [params["brightness"], params["contrast"], params["saturation"], params["hue"]]
    if active is not None:
        factors = [tf.where(active, f, n) for f, n in zip(factors, _NEUTRAL, strict=True)]
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
        f = tf.where(tf.equal(slot_of_op[op_id], index), factors[op_id], _NEUTRAL[op_id])
        x = _JITTER_OPS[op_id](x, f)
    return x


def color_jitter(image, seed, strength: float, random_order: bool = True) -> tf.Tensor:
    """SimCLR colour jitter of ``strength`` s on every example (no apply probability).

    Brightness x*U(max(0, 1-0.8s), 1+0.8s), contrast and saturation factors
    U(max(0, 1-0.8s), 1+0.8s), hue delta U(-0.2s, 0.2s); in a random order per example when
    ``random_order``; clipped to [0, 1] after each op. s = 0 is the identity.
    """
    x, single = _to_batch(image)
    _check_rgb(x, "color_jitter")
    params = _jitter_params(seed, tf.shape(x)[0], strength, random_order)
    if float(strength) == 0.0:
        return _from_batch(x, single)
    if not random_order:
        for op_id, name in enumerate(("brightness", "contrast", "saturation", "hue")):
            x = _JITTER_OPS[op_id](x, params[name])
        return _from_batch(x, single)
    return _from_batch(_apply_jitter(x, params), single)


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
    image, seed, strength: float, jitter_p: float = 0.8, grayscale_p: float = 0.2
) -> tf.Tensor:
    """Colour jitter (random order) with probability ``jitter_p``, then grayscale with p."""
    _check_p("jitter_p", jitter_p)
    _check_p("grayscale_p", grayscale_p)
    x, single = _to_batch(image)
    _check_rgb(x, "color_distortion")
    s_jitter, s_apply, s_gray = _split(seed, 3)
    batch = tf.shape(x)[0]
    params = _jitter_params(s_jitter, batch, strength, random_order=True)
    if float(strength) > 0.0 and jitter_p > 0.0:
        x = _apply_jitter(x, params, active=_bernoulli(s_apply, batch, jitter_p))
    x = _grayscale_mix(x, _bernoulli(s_gray, batch, grayscale_p))
    return _from_batch(x, single)


# --------------------------------------------------------------------------------------------
# Gaussian blur
# --------------------------------------------------------------------------------------------


def _gaussian_kernels(sigma: tf.Tensor, radius) -> tf.Tensor:
    """[B] sigmas -> [B, 2r+1] normalised 1-D Gaussian kernels."""
    taps = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    sigma = tf.maximum(sigma, 1e-6)[:, tf.newaxis]
    k = tf.exp(-tf.square(taps)[tf.newaxis] / (2.0 * tf.square(sigma)))
    return k / tf.reduce_sum(k, axis=1, keepdims=True)


def _blur_with_kernels(x: tf.Tensor, kernels: tf.Tensor) -> tf.Tensor:
    """Separable per-example blur: the batch is folded into channels [1, H, W, B*C] so one
    depthwise convolution per axis applies every example's own kernel; REFLECT padding keeps
    the mean at the borders (zero padding would darken them)."""
    shape = tf.shape(x)
    b, h, w, c = shape[0], shape[1], shape[2], shape[3]
    taps = tf.shape(kernels)[1]
    radius = taps // 2
    folded = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), tf.stack([1, h, w, b * c]))
    per_channel = tf.repeat(kernels, c, axis=0)  # [B*C, k], channel index = b*C + c
    k_t = tf.transpose(per_channel)  # [k, B*C]
    k_vert = tf.reshape(k_t, tf.stack([taps, 1, b * c, 1]))
    k_horiz = tf.reshape(k_t, tf.stack([1, taps, b * c, 1]))
    pad = tf.stack([[0, 0], [radius, radius], [radius, radius], [0, 0]])
    padded = tf.pad(folded, pad, mode="REFLECT")
    out = tf.nn.depthwise_conv2d(padded, k_vert, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, k_horiz, [1, 1, 1, 1], "VALID")
    out = tf.reshape(out, tf.stack([h, w, b, c]))
    out = tf.transpose(out, [2, 0, 1, 3])
    return tf.ensure_shape(out, x.shape)


def gaussian_blur(image, sigma, kernel_size: int) -> tf.Tensor:
    """Separable Gaussian blur with REFLECT padding; ``sigma`` scalar or [B].

    The kernel has radius ``kernel_size // 2`` (so ``2 * radius + 1`` taps, as the reference
    implementation does); the radius must be smaller than the image side for REFLECT padding.
    """
    if isinstance(kernel_size, int) and kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1; got {kernel_size}.")
    x, single = _to_batch(image)
    radius = kernel_size // 2
    if isinstance(radius, int):
        for side in x.shape[1:3]:
            if side is not None and radius >= side:
                raise ValueError(
                    f"kernel radius {radius} must be < image side {side} for REFLECT padding; "
                    "use a smaller kernel_size."
                )
    sigma = _per_example(sigma, tf.shape(x)[0])
    out = _blur_with_kernels(x, _gaussian_kernels(sigma, radius))
    return _from_batch(tf.clip_by_value(out, 0.0, 1.0), single)


def _blur_radius(x: tf.Tensor):
    """Kernel radius = side // 20 (kernel 10% of the side), static when H is known."""
    height = x.shape[1]
    return height // 20 if height is not None else tf.shape(x)[1] // 20


def _blur_params(seed, batch, p: float, sigma_range: Sequence[float]):
    """(apply [B] bool, sigma [B] float32) for random_blur (exposed for tests)."""
    _check_p("p", p)
    lo, hi = float(sigma_range[0]), float(sigma_range[1])
    if not 0.0 < lo <= hi:
        raise ValueError(f"sigma_range must satisfy 0 < low <= high; got {sigma_range}.")
    s_apply, s_sigma = _split(seed, 2)
    apply = _bernoulli(s_apply, batch, p)
    sigma = _uniform(tf.reshape(batch, [1]), s_sigma, lo, hi)
    return apply, sigma


def random_blur(
    image, seed, p: float = 0.5, sigma_range: Sequence[float] = (0.1, 2.0)
) -> tf.Tensor:
    """Gaussian blur with probability ``p`` per example, sigma ~ U(sigma_range), kernel 10% of
    the image side (radius side // 20)."""
    x, single = _to_batch(image)
    apply, sigma = _blur_params(seed, tf.shape(x)[0], p, sigma_range)
    radius = _blur_radius(x)
    if isinstance(radius, int) and radius == 0:
        return _from_batch(x, single)
    kernels = _gaussian_kernels(sigma, radius)
    # Examples that are not blurred get a unit impulse: the convolution is then exact identity.
    impulse = tf.one_hot(radius, 2 * radius + 1, dtype=tf.float32)[tf.newaxis]
    kernels = tf.where(apply[:, tf.newaxis], kernels, impulse)
    out = _blur_with_kernels(x, kernels)
    return _from_batch(tf.clip_by_value(out, 0.0, 1.0), single)


# --------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------


# One recipe, two executions. A BATCH runs every op vectorised with per-example parameters
# (device side, fixed-size images): coins become neutral factors or identity kernels, colour
# orders a fixed 15-slot schedule. The views of ONE image (host side, variable-size images) are
# a Python list of [S, S, 3] tensors and each op runs per view: the SAME parameters are drawn
# (same seeds, same draw functions, so the distributions are those of the batched path), but an
# op whose coin says "no" is skipped (tf.cond) and each colour op runs once, in the view's own
# order (tf.switch_case), with tf.image's fused single-image kernels where they are faster.

VIEW_OPS = ("crop", "flip", "color", "grayscale", "blur")
_JITTER_P, _GRAY_P, _BLUR_P, _BLUR_SIGMA = 0.8, 0.2, 0.5, (0.1, 2.0)

Views = tf.Tensor | list  # [n, S, S, 3] (batched) or n tensors [S, S, 3] (per view)
CropFn = Callable[[tf.Tensor, tf.Tensor], tuple[Views, bool]]


def _compose_views(
    crop: CropFn, seed, n, strength: float, use_blur: bool, per_view: bool
) -> tf.Tensor:
    """The SimCLR view recipe, in order: crop -> flip -> colour jitter -> grayscale -> blur.

    ``crop(s_crop, flip)`` returns the ``n`` cropped views resized to S x S (float in [0, 1])
    and whether it already applied ``flip`` ([n] bool; the batched matmul crop mirrors for
    free). Returns float32 ``[n, S, S, 3]`` in [0, 1].
    """
    s_crop, s_flip, s_color, s_blur = _split(seed, 4)
    s_jitter, s_apply, s_gray = _split(s_color, 3)
    flip = _bernoulli(s_flip, n, 0.5)
    x, flipped = crop(s_crop, flip)
    if not flipped:
        x = _flip_step(x, flip, per_view)
    if float(strength) > 0.0:
        params = _jitter_params(s_jitter, n, strength, random_order=True)
        x = _jitter_step(x, params, _bernoulli(s_apply, n, _JITTER_P), per_view)
    x = _gray_step(x, _bernoulli(s_gray, n, _GRAY_P), per_view)
    if use_blur:
        x = _blur_step(x, *_blur_params(s_blur, n, _BLUR_P, _BLUR_SIGMA), per_view)
    x = tf.stack(x) if per_view else x
    return tf.clip_by_value(x, 0.0, 1.0)


def _flip_step(x: Views, flip: tf.Tensor, per_view: bool) -> Views:
    if not per_view:
        return _flip_batch(x, flip)
    return [_cond(flip[i], lambda v=v: tf.reverse(v, [1]), v) for i, v in enumerate(x)]


def _jitter_step(x: Views, params: dict, active: tf.Tensor, per_view: bool) -> Views:
    if not per_view:
        return _apply_jitter(x, params, active=active)
    names = ("brightness", "contrast", "saturation", "hue")
    factors = tf.stack([params[k] for k in names], axis=1)  # [n, 4]
    order = params["order"]
    out = [
        _cond(active[i], lambda v=v, i=i: _jitter_one_compiled(v, factors[i], order[i]), v)
        for i, v in enumerate(x)
    ]
    return [tf.ensure_shape(v, x[0].shape) for v in out]


def _jitter_one(v: tf.Tensor, factors: tf.Tensor, order: tf.Tensor) -> tf.Tensor:
    """The four jitter ops on one view [S, S, 3], each once, in ``order`` (clipped after each).

    ``factors``: brightness, contrast, saturation factors and hue delta. A while loop over the
    4 stages traces (and XLA compiles) the 4 ops once instead of once per stage.
    """

    def stage(k, v):
        op = order[k]
        f = tf.gather(factors, op)
        v = tf.switch_case(op, [lambda fn=fn, v=v, f=f: fn(v, f) for fn in _VIEW_JITTER_OPS])
        return k + 1, tf.ensure_shape(v, v_shape)

    v_shape = v.shape
    return tf.while_loop(lambda k, _: k < 4, stage, (tf.constant(0), v))[1]


def _view_brightness(v: tf.Tensor, f: tf.Tensor) -> tf.Tensor:
    return tf.minimum(v * f, 1.0)  # factor >= 0


def _view_contrast(v: tf.Tensor, f: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(tf.image.adjust_contrast(v, f), 0.0, 1.0)


def _view_saturation(v: tf.Tensor, f: tf.Tensor) -> tf.Tensor:
    return _saturation(v[tf.newaxis], f[tf.newaxis])[0]


def _view_hue(v: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(tf.image.adjust_hue(v, delta), 0.0, 1.0)


_VIEW_JITTER_OPS = (_view_brightness, _view_contrast, _view_saturation, _view_hue)
# XLA fuses the elementwise passes of each op into one loop: 2.6x faster on a CPU host than op
# by op (tools/benchmark.py --what=ops), same values to ~1e-6. It compiles in about 2 s once
# per process and view size (unrolling the 4 stages instead of the while loop took a minute).
_jitter_one_compiled = tf.function(_jitter_one, jit_compile=True)


def _gray_step(x: Views, gray: tf.Tensor, per_view: bool) -> Views:
    if not per_view:
        return _grayscale_mix(x, gray)
    return [
        _cond(gray[i], lambda v=v: tf.tile(tf.image.rgb_to_grayscale(v), [1, 1, 3]), v)
        for i, v in enumerate(x)
    ]


def _blur_step(x: Views, apply: tf.Tensor, sigma: tf.Tensor, per_view: bool) -> Views:
    """Blur with kernel radius side // 20 (kernel 10% of the side)."""
    if not per_view:
        radius = _blur_radius(x)
        if isinstance(radius, int) and radius == 0:
            return x
        # Examples that are not blurred get a unit impulse: an exact identity convolution.
        impulse = tf.one_hot(radius, 2 * radius + 1, dtype=tf.float32)[tf.newaxis]
        kernels = tf.where(apply[:, tf.newaxis], _gaussian_kernels(sigma, radius), impulse)
        return tf.clip_by_value(_blur_with_kernels(x, kernels), 0.0, 1.0)
    radius = x[0].shape[0] // 20
    if radius == 0:
        return x
    kernels = _gaussian_kernels(sigma, radius)
    return [
        _cond(apply[i], lambda v=v, i=i: _blur_one(v, kernels[i], radius), v)
        for i, v in enumerate(x)
    ]


def _blur_one(v: tf.Tensor, kernel: tf.Tensor, radius: int) -> tf.Tensor:
    """Separable blur of one [S, S, C] view, REFLECT padding (as the batched path).

    Each 1-D pass is a depthwise convolution over a [1, S, 1, S * C] layout: TF's CPU kernel
    vectorises over channels, so S * C of them run ~1.5x faster than 3 (same taps, same sums).
    """
    taps = 2 * radius + 1
    h, w, c = v.shape
    kernel = tf.reshape(kernel, [taps, 1, 1, 1])

    def along_rows(x, rows, cols):
        x = tf.pad(x, [[radius, radius], [0, 0], [0, 0]], "REFLECT")
        x = tf.reshape(x, [1, rows + 2 * radius, 1, cols * c])
        k = tf.tile(kernel, [1, 1, cols * c, 1])
        return tf.reshape(tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "VALID"), [rows, cols, c])

    x = along_rows(v, h, w)
    x = along_rows(tf.transpose(x, [1, 0, 2]), w, h)
    return tf.transpose(x, [1, 0, 2])


def _cond(pred: tf.Tensor, true_fn: Callable[[], tf.Tensor], value: tf.Tensor) -> tf.Tensor:
    return tf.cond(pred, true_fn, lambda: value)


def _check_view_args(strength: float, size: int, sampler: str) -> None:
    _check_strength(strength)
    _check_size(size)
    if sampler not in CROP_SAMPLERS:
        raise ValueError(f"crop sampler must be one of {CROP_SAMPLERS}; got {sampler!r}.")


def _batched_crop(x: tf.Tensor, size: int, sampler: str) -> CropFn:
    """Crop of a batch [B, H, W, C]: exact bicubic matmuls, flip folded in."""

    def crop(s_crop, flip):
        shape = tf.shape(x)
        boxes = sample_crop_boxes(s_crop, shape[1], shape[2], shape[0], sampler=sampler)
        return _crop_resize_matmul(x, boxes, size, flip=flip), True

    return crop


def _image_crop(image: tf.Tensor, n: int, size: int, sampler: str) -> CropFn:
    """``n`` crops of ONE decoded image [H, W, C]: slice each box, resize it."""

    def crop(s_crop, flip):
        shape = tf.shape(image)
        boxes = sample_crop_boxes(s_crop, shape[0], shape[1], n, sampler=sampler)
        views = [_crop_resize_single(image, boxes[i], size) for i in range(n)]
        return [tf.ensure_shape(v, [size, size, image.shape[-1]]) for v in views], False

    return crop


def pretrain_view(
    image,
    seed,
    size: int,
    color_jitter_strength: float,
    use_blur: bool,
    crop_sampler: str = "reference",
) -> tf.Tensor:
    """One SimCLR view of an image [H, W, C] or of each image of a batch [B, H, W, C]."""
    _check_view_args(color_jitter_strength, size, crop_sampler)
    image = tf.convert_to_tensor(image)
    if image.shape.rank == 3:
        crop = _image_crop(image, 1, size, crop_sampler)
        return _compose_views(crop, seed, 1, color_jitter_strength, use_blur, True)[0]
    x, _ = _to_batch(image)
    crop = _batched_crop(x, size, crop_sampler)
    return _compose_views(crop, seed, tf.shape(x)[0], color_jitter_strength, use_blur, False)


def two_views(
    image,
    seed,
    size: int,
    color_jitter_strength: float,
    use_blur: bool,
    crop_sampler: str = "reference",
) -> tuple[tf.Tensor, tf.Tensor]:
    """Two independently augmented views of the same image(s).

    * ``[H, W, C]`` (one image, host side): per-view ops on the two crops.
    * ``[B, H, W, C]``: one batched pass over the input stacked twice (each copy draws its own
      parameters), which halves the per-op overhead compared with two separate calls.
    * ``[B, 2, S, S, C]``: crops already taken and resized by :func:`two_crops` (host side,
      ``--augment_on=device`` with variable-size images); the crop step is skipped and the
      rest of the recipe runs batched.
    """
    _check_view_args(color_jitter_strength, size, crop_sampler)
    image = tf.convert_to_tensor(image)
    if image.shape.rank == 3:
        crop = _image_crop(image, 2, size, crop_sampler)
        views = _compose_views(crop, seed, 2, color_jitter_strength, use_blur, True)
        return views[0], views[1]
    if image.shape.rank == 5:
        return _views_of_crops(image, seed, size, color_jitter_strength, use_blur)
    x, _ = _to_batch(image)
    batch = tf.shape(x)[0]
    views = pretrain_view(
        tf.concat([x, x], axis=0), seed, size, color_jitter_strength, use_blur, crop_sampler
    )
    return views[:batch], views[batch:]


def two_crops(image, seed, size: int, crop_sampler: str = "reference") -> tf.Tensor:
    """The two crops of :func:`two_views`, resized to ``size`` and rounded to uint8 [2, S, S, 3].

    Host part of ``--augment_on=device`` for variable-size images: the boxes come from the
    image's true size (as on the host path), the device runs flip, colour, grayscale and blur
    (``two_views`` of the ``[B, 2, S, S, 3]`` batch).
    """
    _check_view_args(0.0, size, crop_sampler)
    crop = _image_crop(tf.convert_to_tensor(image), 2, size, crop_sampler)
    views, _ = crop(_split(seed, 4)[0], None)  # the crop seed of two_views
    return tf.cast(tf.math.rint(tf.stack(views) * 255.0), tf.uint8)


def _views_of_crops(crops, seed, size: int, strength: float, use_blur: bool):
    """Batched flip -> colour -> grayscale -> blur of pre-cropped pairs [B, 2, S, S, C]."""
    x = tf.image.convert_image_dtype(crops, tf.float32)
    if x.shape[2] is not None and x.shape[2] != size:
        raise ValueError(
            f"Pre-cropped views are {x.shape[2]} px but image_size is {size}; rebuild the input "
            "pipeline with the same image_size."
        )
    batch = tf.shape(x)[0]
    # View-major like the [B, H, W, C] path: all first views, then all second views.
    shape = tf.concat([[2 * batch], tf.shape(x)[2:]], 0)
    flat = tf.reshape(tf.transpose(x, [1, 0, 2, 3, 4]), shape)
    views = _compose_views(
        lambda s_crop, flip: (flat, False), seed, 2 * batch, strength, use_blur, False
    )
    return views[:batch], views[batch:]


def finetune_view(image, seed, size: int, crop_sampler: str = "reference") -> tf.Tensor:
    """Supervised fine-tuning view: random resized crop + horizontal flip only."""
    _check_view_args(0.0, size, crop_sampler)
    s_crop, s_flip = _split(seed, 2)
    single = tf.convert_to_tensor(image).shape.rank == 3
    x = _crop_flip(image, s_crop, s_flip, size, crop_sampler)
    return x[0] if single else x


def center_crop_resize(image, size: int, crop_fraction: float = 0.875) -> tf.Tensor:
    """Centre square crop of side rint(crop_fraction * min(H, W)), bicubic-resized to size."""
    _check_size(size)
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1]; got {crop_fraction}.")
    x, single = _to_batch(image)
    shape = tf.shape(x)
    h, w = shape[1], shape[2]
    side = tf.cast(tf.math.rint(crop_fraction * tf.cast(tf.minimum(h, w), tf.float32)), tf.int32)
    side = tf.maximum(side, 1)
    y0 = (h - side + 1) // 2
    x0 = (w - side + 1) // 2
    crop = x[:, y0 : y0 + side, x0 : x0 + side, :]
    out = tf.image.resize(crop, [size, size], method="bicubic")
    return _from_batch(tf.clip_by_value(out, 0.0, 1.0), single)


def eval_view(image, size: int) -> tf.Tensor:
    """Evaluation view: for size > 32 centre crop 87.5% then resize; else resize only."""
    _check_size(size)
    if size > 32:
        return center_crop_resize(image, size, 0.875)
    x, single = _to_batch(image)
    out = tf.image.resize(x, [size, size], method="bicubic")
    return _from_batch(tf.clip_by_value(out, 0.0, 1.0), single)
