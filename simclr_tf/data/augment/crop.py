"""Random resized crop (two box samplers), exact batched bicubic crop-resize, flip, centre crop.

The crop is SimCLR's (area 8%-100%, aspect 3/4-4/3, bicubic resize): a single image is sliced
and resized (any size), a batch is resized as two matmuls with per-example bicubic matrices, into
which a horizontal flip folds for free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

from simclr_tf.data.augment.common import (
    Views,
    _check_p,
    _check_size,
    _cond,
    _from_batch,
    _to_batch,
)
from simclr_tf.data.augment.seeds import _as_seed, _bernoulli, _split, _uniform
from simclr_tf.data.recipe import CROP_SAMPLERS

# Keys cubic parameter used by tf.image.resize(..., "bicubic") (half-pixel centres).
_KEYS_A = -0.5
# ResizeBicubic looks the kernel up in a 1024-entry table: the fractional offset is quantised.
_BICUBIC_TABLE_SIZE = 1024.0


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
    # The horizontal pass as one batched matmul over (output row, channel) columns: einsum
    # "bpw,bowc->bopc" broadcasts wx over the rows and ran 1.7x slower on CPU (8.8 against
    # 5.2 ms at 512 x 32 x 32 x 3, the same values).
    n, channels = shape[0], shape[3]
    cols = tf.reshape(tf.transpose(rows, [0, 2, 1, 3]), [n, shape[2], size * channels])
    out = tf.transpose(tf.reshape(tf.matmul(wx, cols), [n, size, size, channels]), [0, 2, 1, 3])
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

    Args:
      image: one image ``[H, W, C]`` or a batch ``[B, H, W, C]``.
      seed: ``[2]`` int tensor of the stateless draws.
      size: output side.
      area_range, aspect_ratio_range: the crop's area fraction and aspect ratio ranges.
      max_attempts: box draws before falling back to the centre crop.
      sampler: ``"reference"`` or ``"uniform_area"``.

    Example::

        crops = simclr_tf.random_resized_crop(images, seed=[0, 7], size=32)
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


def _flip_step(x: Views, flip: tf.Tensor, per_view: bool) -> Views:
    if not per_view:
        return _flip_batch(x, flip)
    return [_cond(flip[i], lambda v=v: tf.reverse(v, [1]), v) for i, v in enumerate(x)]


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
