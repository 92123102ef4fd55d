"""Augmentation composition for the paper's ablations (SimCLR, Figure 5 and Table 1).

``--augmentations=crop,color`` picks which operations make a view and in which ORDER they run
(Figure 5's off-diagonal cells are "first op, then second op"). ``--augment_views=one`` is the
paper's asymmetric study (Figure 5: "we always first randomly crop images and resize them to the
same resolution, and we then apply the targeted transformation(s) only to one branch"): both
views are randomly cropped (crop is added first when not listed) and flipped when flip is
listed, and only the first view gets the other listed ops. ``--augment_views=one_resize`` leaves
the second view un-augmented instead (only a centre resize).

The operations:

=========  ==================================================================================
crop       random resized crop (area 8%-100%, aspect 3/4-4/3) to the output size
flip       horizontal flip, p = 0.5
color      colour jitter of strength s (brightness, contrast, saturation, hue), p = 0.8
grayscale  colour drop, p = 0.2
blur       Gaussian blur, p = 0.5, sigma in [0.1, 2], kernel 10% of the side
cutout     one square of half the image side, centre uniform, filled with black
sobel      Sobel edge magnitude of the luma, scaled by its per-image maximum, in 3 channels
noise      additive Gaussian noise, sigma ~ U(0.05, 0.15) per image, clipped to [0, 1]
rotate     rotation by 90, 180 or 270 degrees (uniform per image)
=========  ==================================================================================

The first five are the recipe ops of this package; the last four are defined here. Every op is
random per image, batched (one call per batch, ``[B]``-shaped parameters) and stateless (all
randomness from a ``[2]`` seed), so a composition runs in ``tf.data`` (host) and inside a train
step (device). The paper's recipe (``crop,flip,color,grayscale,blur``, the default) takes
:func:`simclr_tf.data.augment.two_views`, the tuned path used by every ordinary run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import tensorflow as tf

from simclr_tf.data.augment.blur import random_blur
from simclr_tf.data.augment.color import color_distortion, random_grayscale
from simclr_tf.data.augment.common import _to_batch
from simclr_tf.data.augment.crop import random_flip, random_resized_crop
from simclr_tf.data.augment.seeds import _split, _uniform
from simclr_tf.data.augment.views import eval_view, two_views
from simclr_tf.data.recipe import (
    ASYMMETRIC_BASE_OPS,
    AUGMENT_VIEWS,
    DEFAULT_COLOR_JITTER_IMPL,
    OPERATIONS,
    is_recipe,
    parse_augmentations,
)

CUTOUT_FRACTION = 0.5  # side of the cutout square / image side (DeVries & Taylor on CIFAR)
NOISE_SIGMA = (0.05, 0.15)
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
_LUMA = (0.2989, 0.5870, 0.1140)

TwoViewsFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


# --------------------------------------------------------------------------------------------
# The four operations the default recipe does not use
# --------------------------------------------------------------------------------------------


def cutout_boxes(seed, height, width, batch, fraction: float = CUTOUT_FRACTION) -> tf.Tensor:
    """int32 ``[B, 4]`` rows (y0, x0, y1, x1) of the cutout squares, clipped to the image.

    The square's side is ``round(fraction * min(H, W))`` and its centre is uniform over the
    image, so near a border only part of it is inside (DeVries & Taylor's cutout).
    """
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    side = tf.maximum(tf.round(fraction * tf.minimum(h, w)), 1.0)
    u = _uniform(tf.stack([tf.cast(batch, tf.int32), 2]), seed)
    cy = tf.floor(u[:, 0] * h)
    cx = tf.floor(u[:, 1] * w)
    y0 = tf.clip_by_value(cy - tf.floor(side / 2.0), 0.0, h)
    x0 = tf.clip_by_value(cx - tf.floor(side / 2.0), 0.0, w)
    y1 = tf.clip_by_value(cy - tf.floor(side / 2.0) + side, 0.0, h)
    x1 = tf.clip_by_value(cx - tf.floor(side / 2.0) + side, 0.0, w)
    return tf.cast(tf.stack([y0, x0, y1, x1], axis=1), tf.int32)


def random_cutout(image, seed, fraction: float = CUTOUT_FRACTION) -> tf.Tensor:
    """Blacks out one square of side ``fraction * min(H, W)`` per image (always applied)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"cutout fraction must be in (0, 1]; got {fraction}.")
    x, single = _to_batch(image)
    shape = tf.shape(x)
    boxes = cutout_boxes(seed, shape[1], shape[2], shape[0], fraction)
    rows = tf.range(shape[1])[tf.newaxis, :]
    cols = tf.range(shape[2])[tf.newaxis, :]
    in_rows = (rows >= boxes[:, 0:1]) & (rows < boxes[:, 2:3])  # [B, H]
    in_cols = (cols >= boxes[:, 1:2]) & (cols < boxes[:, 3:4])  # [B, W]
    hole = in_rows[:, :, tf.newaxis] & in_cols[:, tf.newaxis, :]  # [B, H, W]
    out = x * (1.0 - tf.cast(hole, tf.float32))[..., tf.newaxis]
    return out[0] if single else out


def sobel_edges(image) -> tf.Tensor:
    """Sobel gradient magnitude of the luma, divided by each image's maximum, in 3 channels.

    Deterministic (the paper's "Sobel filtering"); borders use symmetric padding so a flat image
    has no edges. An image without edges maps to black.
    """
    x, single = _to_batch(image)
    channels = x.shape[-1]
    if channels is not None and channels != 3:
        raise ValueError(f"sobel needs RGB images with 3 channels; got {channels}.")
    luma = tf.reduce_sum(x * tf.constant(_LUMA, tf.float32), axis=-1, keepdims=True)
    padded = tf.pad(luma, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    kx = tf.constant(_SOBEL_X, tf.float32)
    kernels = tf.stack([kx, tf.transpose(kx)], axis=-1)[:, :, tf.newaxis, :]  # [3, 3, 1, 2]
    grads = tf.nn.conv2d(padded, kernels, strides=1, padding="VALID")  # [B, H, W, 2]
    magnitude = tf.sqrt(tf.reduce_sum(tf.square(grads), axis=-1, keepdims=True) + 1e-12)
    peak = tf.reduce_max(magnitude, axis=[1, 2, 3], keepdims=True)
    out = tf.where(peak > 1e-4, magnitude / tf.maximum(peak, 1e-4), tf.zeros_like(magnitude))
    out = tf.tile(out, [1, 1, 1, 3])
    return out[0] if single else out


def random_noise(image, seed, sigma_range: Sequence[float] = NOISE_SIGMA) -> tf.Tensor:
    """Adds N(0, sigma^2) per pixel and channel, sigma ~ U(sigma_range) per image; clipped."""
    lo, hi = float(sigma_range[0]), float(sigma_range[1])
    if not 0.0 <= lo <= hi:
        raise ValueError(f"sigma_range must satisfy 0 <= low <= high; got {sigma_range}.")
    x, single = _to_batch(image)
    s_sigma, s_radius, s_angle = _split(seed, 3)
    sigma = _uniform(tf.shape(x)[:1], s_sigma, lo, hi)
    # Box-Muller on the bit-exact uniforms: the same noise with and without XLA.
    radius = tf.sqrt(-2.0 * tf.math.log(1.0 - _uniform(tf.shape(x), s_radius)))
    noise = radius * tf.cos(6.283185307179586 * _uniform(tf.shape(x), s_angle))
    out = tf.clip_by_value(x + sigma[:, tf.newaxis, tf.newaxis, tf.newaxis] * noise, 0.0, 1.0)
    return out[0] if single else out


def rotation_quarters(seed, batch) -> tf.Tensor:
    """int32 ``[B]`` in {1, 2, 3}: quarter turns (90, 180, 270 degrees) of each image."""
    u = _uniform(tf.reshape(tf.cast(batch, tf.int32), [1]), seed)
    return 1 + tf.minimum(tf.cast(u * 3.0, tf.int32), 2)


def random_rotate(image, seed) -> tf.Tensor:
    """Rotates each image counter-clockwise by 90, 180 or 270 degrees (uniform per image).

    A batch must be square (rotate after ``crop`` for non-square images); a single image of any
    shape is rotated with ``tf.image.rot90``.
    """
    image = tf.convert_to_tensor(image)
    if image.shape.rank == 3:
        k = rotation_quarters(seed, 1)[0]
        return tf.image.rot90(tf.image.convert_image_dtype(image, tf.float32), k)
    x, _ = _to_batch(image)
    h, w = x.shape[1], x.shape[2]
    if h is not None and w is not None and h != w:
        raise ValueError(
            f"rotate of a batch needs square images, got {h}x{w}: list crop before rotate."
        )
    k = rotation_quarters(seed, tf.shape(x)[0])[:, tf.newaxis, tf.newaxis, tf.newaxis]
    r90 = tf.reverse(tf.transpose(x, [0, 2, 1, 3]), axis=[1])  # counter-clockwise, as rot90
    r180 = tf.reverse(x, axis=[1, 2])
    r270 = tf.reverse(tf.transpose(x, [0, 2, 1, 3]), axis=[2])
    return tf.where(k == 1, r90, tf.where(k == 2, r180, r270))


# --------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------


def _apply(
    op: str,
    x: tf.Tensor,
    seed: tf.Tensor,
    size: int,
    strength: float,
    crop_sampler: str,
    impl: str = DEFAULT_COLOR_JITTER_IMPL,
) -> tf.Tensor:
    if op == "crop":
        return random_resized_crop(x, seed, size, sampler=crop_sampler)
    if op == "flip":
        return random_flip(x, seed)
    if op == "color":
        return color_distortion(x, seed, strength, jitter_p=0.8, grayscale_p=0.0, impl=impl)
    if op == "grayscale":
        return random_grayscale(x, seed, p=0.2)
    if op == "blur":
        return random_blur(x, seed)
    if op == "cutout":
        return random_cutout(x, seed)
    if op == "sobel":
        return sobel_edges(x)
    if op == "noise":
        return random_noise(x, seed)
    if op == "rotate":
        return random_rotate(x, seed)
    raise ValueError(f"Unknown augmentation {op!r}: choose from {','.join(OPERATIONS)}.")


def centre_view(image, size: int) -> tf.Tensor:
    """The un-augmented view: the image itself when it already has ``size``, else the
    evaluation view (centre crop and resize)."""
    image = tf.convert_to_tensor(image)
    if image.shape[-3] == size and image.shape[-2] == size:
        return tf.image.convert_image_dtype(image, tf.float32)
    return tf.clip_by_value(eval_view(image, size), 0.0, 1.0)


def composed_view(
    image,
    seed,
    size: int,
    ops: Sequence[str],
    color_jitter_strength: float = 0.5,
    crop_sampler: str = "reference",
    color_jitter_impl: str = DEFAULT_COLOR_JITTER_IMPL,
) -> tf.Tensor:
    """One view: the ``ops`` in the given order; float32 ``size x size`` in [0, 1].

    Without ``crop`` the image is first brought to ``size`` by the evaluation view (a centre
    resize), so every composition yields the same shape. The result keeps the input's rank.
    """
    ops = parse_augmentations(list(ops))
    x = tf.convert_to_tensor(image)
    if "crop" not in ops:
        x = centre_view(x, size)
    seeds = _split(seed, len(ops))
    for op, s in zip(ops, seeds, strict=True):
        x = _apply(op, x, s, size, color_jitter_strength, crop_sampler, color_jitter_impl)
    x = tf.clip_by_value(tf.image.convert_image_dtype(x, tf.float32), 0.0, 1.0)
    rank = 3 if x.shape.rank == 3 else 4
    return tf.ensure_shape(x, [size, size, None] if rank == 3 else [None, size, size, None])


def composed_two_views(
    image,
    seed,
    size: int,
    ops: Sequence[str],
    color_jitter_strength: float = 0.5,
    augment_views: str = "both",
    crop_sampler: str = "reference",
    color_jitter_impl: str = DEFAULT_COLOR_JITTER_IMPL,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Two views of the same image(s).

    ``augment_views``: ``both`` = the ``ops`` on each view; ``one`` = the paper's asymmetric
    study, both views cropped (and flipped when listed), the other ops on the first view only
    (:func:`asymmetric_ops`); ``one_resize`` = the ``ops`` on the first view, the second only
    resized (:func:`centre_view`).
    """
    if augment_views not in AUGMENT_VIEWS:
        raise ValueError(f"augment_views must be one of {AUGMENT_VIEWS}; got {augment_views!r}.")
    image = tf.convert_to_tensor(image)
    s1, s2 = _split(seed, 2)
    view = functools.partial(
        composed_view,
        size=size,
        ops=ops,
        color_jitter_strength=color_jitter_strength,
        crop_sampler=crop_sampler,
        color_jitter_impl=color_jitter_impl,
    )
    if augment_views == "one_resize":
        return view(image, s1), centre_view(image, size)
    if augment_views == "one":
        first, second = asymmetric_ops(ops)
        return view(image, s1, ops=first), view(image, s2, ops=second)
    if image.shape.rank == 3:
        return view(image, s1), view(image, s2)
    # One batched pass over both copies: every image of the doubled batch draws its own values.
    batch = tf.shape(image)[0]
    views = view(tf.concat([image, image], 0), s1)
    return views[:batch], views[batch:]


def asymmetric_ops(ops: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The two views' ops of ``--augment_views=one`` (the paper's Figure 5 asymmetric setting).

    The first view runs ``ops``, with ``crop`` put first when it is not listed (every Figure 5
    branch starts with a random crop); the second keeps only the crop and, when listed, the
    flip, in the same order. So the studied transformations are the only difference.
    """
    ops = parse_augmentations(list(ops))
    first = ops if "crop" in ops else ("crop", *ops)
    return first, tuple(op for op in first if op in ASYMMETRIC_BASE_OPS)


def two_views_fn(
    size: int,
    color_jitter_strength: float,
    use_blur: bool,
    augmentations: str | Sequence[str] | None = None,
    augment_views: str = "both",
    crop_sampler: str = "reference",
    color_jitter_impl: str = DEFAULT_COLOR_JITTER_IMPL,
) -> TwoViewsFn:
    """``(images, seed) -> (view1, view2)`` of a run's flags.

    The paper recipe with both views augmented is :func:`simclr_tf.data.augment.two_views`
    itself (bit-identical to runs before ``--augmentations`` existed); anything else composes.
    """
    ops = parse_augmentations(augmentations, use_blur)
    if is_recipe(augmentations, use_blur, augment_views):
        return functools.partial(
            two_views,
            size=size,
            color_jitter_strength=color_jitter_strength,
            use_blur=use_blur,
            crop_sampler=crop_sampler,
            color_jitter_impl=color_jitter_impl,
        )
    return functools.partial(
        composed_two_views,
        size=size,
        ops=ops,
        color_jitter_strength=color_jitter_strength,
        augment_views=augment_views,
        crop_sampler=crop_sampler,
        color_jitter_impl=color_jitter_impl,
    )


# --------------------------------------------------------------------------------------------
# Why crop alone is not enough (the paper's Figure 6)
# --------------------------------------------------------------------------------------------


def colour_histogram_intersection(a: tf.Tensor, b: tf.Tensor, bins: int = 8) -> tf.Tensor:
    """Per-pair intersection of joint RGB histograms (``bins`` per channel), in [0, 1].

    ``a`` and ``b`` are batches ``[B, H, W, 3]`` in [0, 1]; 1 means the same colour
    distribution. Two crops of one image score high, which is the shortcut the paper blames for
    crop-only contrastive learning; colour distortion breaks it.
    """

    def histogram(x: tf.Tensor) -> tf.Tensor:
        q = tf.clip_by_value(tf.cast(tf.floor(x * bins), tf.int32), 0, bins - 1)
        index = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]  # [B, H, W]
        flat = tf.reshape(index, [tf.shape(x)[0], -1])
        counts = tf.math.bincount(flat, minlength=bins**3, maxlength=bins**3, axis=-1)
        counts = tf.cast(counts, tf.float32)
        return counts / tf.reduce_sum(counts, axis=1, keepdims=True)

    a = tf.image.convert_image_dtype(tf.convert_to_tensor(a), tf.float32)
    b = tf.image.convert_image_dtype(tf.convert_to_tensor(b), tf.float32)
    return tf.reduce_sum(tf.minimum(histogram(a), histogram(b)), axis=1)
