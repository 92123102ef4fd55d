"""The SimCLR views: the recipe crop -> flip -> colour -> grayscale -> blur, and eval/fine-tune.

``two_views`` / ``pretrain_view`` compose the ops of :mod:`~simclr_tf.data.augment.crop`,
:mod:`~simclr_tf.data.augment.color` and :mod:`~simclr_tf.data.augment.blur`;
``two_crops`` is the host half of ``--augment_on=device`` for variable-size images.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from simclr_tf.data.augment.blur import _blur_params, _blur_step
from simclr_tf.data.augment.color import _check_strength, _gray_step, _jitter_params, _jitter_step
from simclr_tf.data.augment.common import Views, _check_size, _from_batch, _to_batch
from simclr_tf.data.augment.crop import (
    _crop_flip,
    _crop_resize_matmul,
    _crop_resize_single,
    _flip_step,
    center_crop_resize,
    sample_crop_boxes,
)
from simclr_tf.data.augment.seeds import _bernoulli, _split
from simclr_tf.data.recipe import CROP_SAMPLERS, DEFAULT_COLOR_JITTER_IMPL

# One recipe, two executions. A BATCH runs every op vectorised with per-example parameters
# (device side, fixed-size images): coins become neutral factors or identity kernels, colour
# orders a fixed 15-slot schedule. The views of ONE image (host side, variable-size images) are
# a Python list of [S, S, 3] tensors and each op runs per view: the SAME parameters are drawn
# (same seeds, same draw functions, so the distributions are those of the batched path), but an
# op whose coin says "no" is skipped (tf.cond) and each colour op runs once, in the view's own
# order (tf.switch_case), with tf.image's fused single-image kernels where they are faster.

VIEW_OPS = ("crop", "flip", "color", "grayscale", "blur")
_JITTER_P, _GRAY_P, _BLUR_P, _BLUR_SIGMA = 0.8, 0.2, 0.5, (0.1, 2.0)
CropFn = Callable[[tf.Tensor, tf.Tensor], tuple[Views, bool]]


def _compose_views(
    crop: CropFn,
    seed,
    n,
    strength: float,
    use_blur: bool,
    per_view: bool,
    impl: str = DEFAULT_COLOR_JITTER_IMPL,
) -> tf.Tensor:
    """The SimCLR view recipe, in order: crop -> flip -> colour jitter -> grayscale -> blur.

    ``crop(s_crop, flip)`` returns the ``n`` cropped views resized to S x S (float in [0, 1])
    and whether it already applied ``flip`` ([n] bool; the batched matmul crop mirrors for
    free). ``impl`` is the brightness form (``--color_jitter_impl``). Returns float32
    ``[n, S, S, 3]`` in [0, 1].
    """
    s_crop, s_flip, s_color, s_blur = _split(seed, 4)
    s_jitter, s_apply, s_gray = _split(s_color, 3)
    flip = _bernoulli(s_flip, n, 0.5)
    x, flipped = crop(s_crop, flip)
    if not flipped:
        x = _flip_step(x, flip, per_view)
    if float(strength) > 0.0:
        params = _jitter_params(s_jitter, n, strength, random_order=True, impl=impl)
        x = _jitter_step(x, params, _bernoulli(s_apply, n, _JITTER_P), per_view, impl)
    x = _gray_step(x, _bernoulli(s_gray, n, _GRAY_P), per_view)
    if use_blur:
        x = _blur_step(x, *_blur_params(s_blur, n, _BLUR_P, _BLUR_SIGMA), per_view)
    x = tf.stack(x) if per_view else x
    return tf.clip_by_value(x, 0.0, 1.0)


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
    color_jitter_impl: str = DEFAULT_COLOR_JITTER_IMPL,
) -> tf.Tensor:
    """One SimCLR view of an image [H, W, C] or of each image of a batch [B, H, W, C].

    Args:
      image: one image ``[H, W, 3]`` or a batch ``[B, H, W, 3]`` (uint8 or float in [0, 1]).
      seed: ``[2]`` int tensor of the stateless draws.
      size: output side.
      color_jitter_strength: colour distortion strength s.
      use_blur: Gaussian blur with probability 0.5.
      crop_sampler: ``"reference"`` or ``"uniform_area"``.

    Example::

        view = simclr_tf.pretrain_view(image, seed=[0, 1], size=32,
                                       color_jitter_strength=0.5, use_blur=False)
    """
    _check_view_args(color_jitter_strength, size, crop_sampler)
    image = tf.convert_to_tensor(image)
    strength, impl = color_jitter_strength, color_jitter_impl
    if image.shape.rank == 3:
        crop = _image_crop(image, 1, size, crop_sampler)
        return _compose_views(crop, seed, 1, strength, use_blur, True, impl)[0]
    x, _ = _to_batch(image)
    crop = _batched_crop(x, size, crop_sampler)
    return _compose_views(crop, seed, tf.shape(x)[0], strength, use_blur, False, impl)


def two_views(
    image,
    seed,
    size: int,
    color_jitter_strength: float,
    use_blur: bool,
    crop_sampler: str = "reference",
    color_jitter_impl: str = DEFAULT_COLOR_JITTER_IMPL,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Two independently augmented views of the same image(s) (``color_jitter_impl``: the
    brightness form, v1 additive or v2 multiplicative).

    * ``[H, W, C]`` (one image, host side): per-view ops on the two crops.
    * ``[B, H, W, C]``: one batched pass over the input stacked twice (each copy draws its own
      parameters), which halves the per-op overhead compared with two separate calls.
    * ``[B, 2, S, S, C]``: crops already taken and resized by :func:`two_crops` (host side,
      ``--augment_on=device`` with variable-size images); the crop step is skipped and the
      rest of the recipe runs batched.

    Args:
      image: ``[H, W, 3]``, ``[B, H, W, 3]`` (uint8 or float in [0, 1]) or ``[B, 2, S, S, 3]``.
      seed: ``[2]`` int tensor of the stateless draws.
      size: output side.
      color_jitter_strength: colour distortion strength s.
      use_blur: Gaussian blur with probability 0.5.
      crop_sampler: ``"reference"`` or ``"uniform_area"``.

    Example::

        v1, v2 = simclr_tf.two_views(images, seed=[0, step], size=32,
                                     color_jitter_strength=0.5, use_blur=False)
    """
    _check_view_args(color_jitter_strength, size, crop_sampler)
    image = tf.convert_to_tensor(image)
    strength, impl = color_jitter_strength, color_jitter_impl
    if image.shape.rank == 3:
        crop = _image_crop(image, 2, size, crop_sampler)
        views = _compose_views(crop, seed, 2, strength, use_blur, True, impl)
        return views[0], views[1]
    if image.shape.rank == 5:
        return _views_of_crops(image, seed, size, strength, use_blur, impl)
    x, _ = _to_batch(image)
    batch = tf.shape(x)[0]
    views = pretrain_view(
        tf.concat([x, x], axis=0), seed, size, strength, use_blur, crop_sampler, impl
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


def _views_of_crops(
    crops, seed, size: int, strength: float, use_blur: bool, impl: str = DEFAULT_COLOR_JITTER_IMPL
):
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
        lambda s_crop, flip: (flat, False), seed, 2 * batch, strength, use_blur, False, impl
    )
    return views[:batch], views[batch:]


def finetune_view(image, seed, size: int, crop_sampler: str = "reference") -> tf.Tensor:
    """Supervised fine-tuning view: random resized crop + horizontal flip only.

    Args:
      image: one image ``[H, W, 3]`` or a batch ``[B, H, W, 3]``.
      seed: ``[2]`` int tensor of the stateless draws.
      size: output side.
      crop_sampler: ``"reference"`` or ``"uniform_area"``.

    Example::

        x = simclr_tf.finetune_view(images, seed=[0, 1], size=32)
    """
    _check_view_args(0.0, size, crop_sampler)
    s_crop, s_flip = _split(seed, 2)
    single = tf.convert_to_tensor(image).shape.rank == 3
    x = _crop_flip(image, s_crop, s_flip, size, crop_sampler)
    return x[0] if single else x


def eval_view(image, size: int) -> tf.Tensor:
    """Evaluation view: for size > 32 centre crop 87.5% then resize; else resize only.

    Args:
      image: one image ``[H, W, 3]`` or a batch ``[B, H, W, 3]``.
      size: output side.

    Example::

        x = simclr_tf.eval_view(images, size=224)  # float32 [B, 224, 224, 3] in [0, 1]
    """
    _check_size(size)
    if size > 32:
        return center_crop_resize(image, size, 0.875)
    x, single = _to_batch(image)
    out = tf.image.resize(x, [size, size], method="bicubic")
    return _from_batch(tf.clip_by_value(out, 0.0, 1.0), single)
