"""The defaults that depend on the dataset, filled in once it is known.

One command works for CIFAR-10 and for ImageNet because image size, stem, colour strength,
blur and eval split are ``None`` in :class:`simclr_tf.config.Config` until :func:`resolve` sees
the dataset's image side and splits; the small-image rules themselves live in
:mod:`simclr_tf.data.recipe`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simclr_tf.config_checks import ConfigError
from simclr_tf.data.recipe import (
    SMALL_IMAGE_SIDE,
    default_color_strength,
    default_use_blur,
    parse_augmentations,
)

if TYPE_CHECKING:
    from simclr_tf.config import Config


def resolve(cfg: Config, image_side: int | None, splits: tuple[str, ...]) -> Config:
    """Fills dataset-dependent defaults: image size, CIFAR stem, colour strength, blur, eval split.

    ``image_side`` is the dataset's fixed image side when known. The small-image rules follow the
    paper's CIFAR-10 settings (3x3 stem, s = 0.5, no blur).
    """
    image_size = cfg.image_size
    if image_size is None:
        image_size = image_side if image_side is not None and image_side <= 64 else 224
    small = image_size <= SMALL_IMAGE_SIDE
    eval_split = cfg.eval_split
    if eval_split is None:
        eval_split = next((s for s in ("validation", "test") if s in splits), None)
        if eval_split is None and cfg.mode != "train":
            raise ConfigError(
                f"The dataset has no validation or test split (splits: {sorted(splits)}): "
                "pass --eval_split."
            )
    use_blur = default_use_blur(image_size) if cfg.use_blur is None else cfg.use_blur
    try:
        ops = parse_augmentations(cfg.augmentations, use_blur)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.augmentations is not None:
        use_blur = "blur" in ops  # an explicit list decides; --use_blur shapes only the default
    return cfg.replace(
        image_size=image_size,
        cifar_stem=small if cfg.cifar_stem is None else cfg.cifar_stem,
        color_jitter_strength=default_color_strength(image_size)
        if cfg.color_jitter_strength is None
        else cfg.color_jitter_strength,
        use_blur=use_blur,
        augmentations=",".join(ops),
        eval_split=eval_split,
        strategy=cfg.strategy_name,
    )
