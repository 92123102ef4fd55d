"""The augmentation recipe in words: operation names, crop samplers, view modes, the small-image
defaults, and the parser of ``--augmentations``.

Plain Python, no TensorFlow: :mod:`simclr_tf.config` validates and resolves flags with it before
TensorFlow starts, and :mod:`simclr_tf.data.augment` (the ops themselves) imports it, so the
names are written once and neither side reaches up to the other.
"""

from __future__ import annotations

from collections.abc import Sequence

# Keep in this order: it is also the order of the paper recipe.
RECIPE = ("crop", "flip", "color", "grayscale", "blur")
OPERATIONS = (*RECIPE, "cutout", "sobel", "noise", "rotate")

CROP_SAMPLERS = ("reference", "uniform_area")
# both: the two views run the same ops. one: the paper's asymmetric study (Figure 5): both
# views are randomly cropped (and flipped when flip is listed), only the first gets the other
# listed (studied) ops. one_resize: the first view gets the listed ops, the second is only
# resized to the output size (the centre evaluation view).
AUGMENT_VIEWS = ("both", "one", "one_resize")
# The ops the second view keeps under augment_views=one: the crop every Figure 5 branch starts
# with, and flip.
ASYMMETRIC_BASE_OPS = ("crop", "flip")
AUGMENT_PLACES = ("auto", "host", "device")
# Brightness of the colour jitter, the reference data_util's two forms: v1 additive
# (x + delta, delta ~ U(-0.8s, 0.8s), SimCLR v1's tf.image.random_brightness), v2 multiplicative
# (x * f, f ~ U(max(0, 1 - 0.8s), 1 + 0.8s)). The reference's default is v2.
COLOR_JITTER_IMPLS = ("v1", "v2")
DEFAULT_COLOR_JITTER_IMPL = "v2"

# Images up to this side get the paper's CIFAR-10 settings: colour strength 0.5, no blur, the
# 3x3 stem.
SMALL_IMAGE_SIDE = 32


def default_color_strength(image_size: int) -> float:
    """SimCLR colour strength: 0.5 for CIFAR-sized images (<= 32 px), else 1.0."""
    return 0.5 if image_size <= SMALL_IMAGE_SIDE else 1.0


def default_use_blur(image_size: int) -> bool:
    """SimCLR uses Gaussian blur on ImageNet-sized images but not on CIFAR (<= 32 px)."""
    return image_size > SMALL_IMAGE_SIDE


def parse_augmentations(text: str | Sequence[str] | None, use_blur: bool = True) -> tuple[str, ...]:
    """A comma list (or sequence) of operation names -> tuple; None -> the paper recipe.

    Raises ValueError naming the unknown or repeated operation. ``use_blur`` only shapes the
    default recipe (no blur on CIFAR-sized images, as the paper).
    """
    if text is None:
        return RECIPE if use_blur else tuple(op for op in RECIPE if op != "blur")
    names = text.split(",") if isinstance(text, str) else list(text)
    ops = tuple(n.strip().lower() for n in names if n.strip())
    if not ops:
        raise ValueError(
            "--augmentations is empty: list at least one of " + ",".join(OPERATIONS) + "."
        )
    unknown = [op for op in ops if op not in OPERATIONS]
    if unknown:
        raise ValueError(
            f"Unknown augmentation(s) {','.join(unknown)}: choose from {','.join(OPERATIONS)}."
        )
    repeated = sorted({op for op in ops if ops.count(op) > 1})
    if repeated:
        raise ValueError(f"Augmentation(s) listed twice: {','.join(repeated)}; list each once.")
    return ops


def is_recipe(
    augmentations: str | Sequence[str] | None, use_blur: bool, augment_views: str = "both"
) -> bool:
    """The paper recipe on both views (what ``--augment_on=device`` runs on variable-size
    images), as opposed to a study of other operations or of one augmented view."""
    ops = parse_augmentations(augmentations, use_blur)
    return ops == parse_augmentations(None, use_blur) and augment_views == "both"


def choose_augment_on(
    requested: str,
    *,
    train_mode: str,
    accelerator: str | None,
    fixed_size: bool,
    recipe: bool,
) -> tuple[str, str]:
    """(placement, reason) of ``--augment_on``: an explicit host/device is kept; ``auto`` picks.

    ``auto`` runs the augmentation on the device when the replicas are accelerators
    (``accelerator`` "TPU"/"GPU"): the host then only decodes (and crops variable-size images),
    which is what keeps a TPU or GPU fed at ImageNet scale (benchmarks/README.md: the device
    path's host part is several times the host path's rate at 224 px). On CPU-only runs the
    "device" is the same cores as the host, and the per-image host path (coins skip ops, each
    colour op once) is the cheaper one, so ``auto`` stays on the host. Only pretraining augments
    on the device; a study recipe (``--augmentations`` / ``--augment_views``) on variable-size
    images runs on the host only.
    """
    if requested != "auto":
        return requested, f"--augment_on={requested}"
    if train_mode != "pretrain":
        return "host", f"--augment_on=auto: {train_mode} only crops and flips, on the host"
    if accelerator is None:
        return "host", "--augment_on=auto: CPU-only replicas, the host path is the faster one"
    if not fixed_size and not recipe:
        return "host", (
            f"--augment_on=auto: {accelerator} replicas, but a study recipe on variable-size "
            "images runs on the host only"
        )
    return "device", f"--augment_on=auto: {accelerator} replicas, augmenting on the device"
