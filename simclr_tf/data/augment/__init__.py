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

One module per idea; this package defines the public API (import from here):

* :mod:`.crop`: crop boxes (two samplers), exact bicubic crop-resize, flip, centre crop;
* :mod:`.color`: colour jitter, grayscale, colour distortion (batched and per-view paths);
* :mod:`.blur`: Gaussian blur;
* :mod:`.views`: the view recipes (``two_views``, ``pretrain_view``, ``finetune_view``,
  ``eval_view``, ``two_crops``) that compose the ops;
* :mod:`.seeds`: stateless randomness (seed checks, sub-seeds, uniform and coin draws);
* :mod:`.common`: the plumbing the ops share (one image or a batch, per-example values, checks);
* :mod:`.study_ops`: the paper's ablation ops (cutout, sobel, noise, rotate) and
  ``--augmentations`` compositions (import it as a module; the names are in
  :mod:`simclr_tf.data.recipe`).
"""

from simclr_tf.data.augment.blur import gaussian_blur, random_blur
from simclr_tf.data.augment.color import (
    adjust_brightness,
    adjust_brightness_additive,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_distortion,
    color_jitter,
    random_grayscale,
)
from simclr_tf.data.augment.crop import (
    CROP_SAMPLERS,
    center_crop_resize,
    crop_resize_bicubic,
    random_flip,
    random_resized_crop,
    sample_crop_boxes,
)
from simclr_tf.data.augment.views import (
    VIEW_OPS,
    eval_view,
    finetune_view,
    pretrain_view,
    two_crops,
    two_views,
)
from simclr_tf.data.recipe import (
    COLOR_JITTER_IMPLS,
    DEFAULT_COLOR_JITTER_IMPL,
    default_color_strength,
    default_use_blur,
)

__all__ = [
    "adjust_brightness",
    "adjust_brightness_additive",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "center_crop_resize",
    "color_distortion",
    "color_jitter",
    "COLOR_JITTER_IMPLS",
    "CROP_SAMPLERS",
    "DEFAULT_COLOR_JITTER_IMPL",
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
