"""Writes a PNG grid of SimCLR views: each row is an original image and several augmented views.

    python tools/show_augmentations.py --dataset=image_folder \
        --data_dir=../shared/data/cifar10 --split=train --rows=6 --views=7 --out=augmentations.png

The views come from ``simclr_tf.data.augment.pretrain_view`` with the dataset-dependent defaults
of a real run (colour strength 0.5 and no blur at 32 px; 1.0 and blur above), so the picture
shows exactly what the encoder sees. ``--augmentations=crop,rotate`` shows a study's
composition instead (any of crop, flip, color, grayscale, blur, cutout, sobel, noise, rotate, in
the order given), and ``--histograms`` prints how alike the colour histograms of two views are
with crop alone and with crop + colour distortion (the paper's reason crop alone fails):

    python tools/show_augmentations.py --augmentations=rotate,cutout --out=rotate_cutout.png
    python tools/show_augmentations.py --histograms --rows=500
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from simclr_tf.data import augment, recipe, sources  # noqa: E402
from simclr_tf.data.augment import study_ops  # noqa: E402

flags.DEFINE_string("dataset", "image_folder", "TFDS name or image_folder.")
flags.DEFINE_string("data_dir", "../shared/data/cifar10", "TFDS data dir or image folder root.")
flags.DEFINE_string("split", "train", "Split to draw images from.")
flags.DEFINE_integer("rows", 6, "Images (rows).")
flags.DEFINE_integer("views", 7, "Augmented views per image.")
flags.DEFINE_integer("image_size", None, "View size (default: the dataset's side, else 224).")
flags.DEFINE_float("color_jitter_strength", None, "Colour strength (default by image size).")
flags.DEFINE_bool("use_blur", None, "Blur (default: on above 32 px).")
flags.DEFINE_integer("scale", 4, "Nearest-neighbour upscaling of small images in the PNG.")
flags.DEFINE_integer("seed", 0, "Seed of the views.")
flags.DEFINE_string("out", "augmentations.png", "Output PNG path.")
flags.DEFINE_string(
    "augmentations",
    None,
    "Comma list of operations to show, in order (default: the paper recipe of a real run).",
)
flags.DEFINE_bool(
    "histograms",
    False,
    "Print the mean colour-histogram intersection of two "
    "views of --rows images: crop alone vs crop + colour distortion.",
)
FLAGS = flags.FLAGS


def grid(originals: list[np.ndarray], views: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Rows of [original | views...] as one uint8 image with white padding."""
    size = originals[0].shape[0]
    cols = 1 + len(views[0])
    out = np.full(
        (len(originals) * (size + pad) + pad, cols * (size + pad) + pad + pad, 3), 255, np.uint8
    )
    for r, (orig, row) in enumerate(zip(originals, views, strict=True)):
        y = pad + r * (size + pad)
        for c, img in enumerate([orig, *row]):
            x = pad + c * (size + pad) + (pad if c else 0)  # a wider gap after the original
            out[y : y + size, x : x + size] = img
    return out


def main(argv: list[str]) -> None:
    del argv
    from PIL import Image

    ds, info = sources.load_split(FLAGS.dataset, FLAGS.split, data_dir=FLAGS.data_dir)
    side = info.image_shape[0] if info.image_shape and info.image_shape[0] else None
    size = FLAGS.image_size or (side if side and side <= 64 else 224)
    strength = FLAGS.color_jitter_strength
    strength = recipe.default_color_strength(size) if strength is None else strength
    blur = recipe.default_use_blur(size) if FLAGS.use_blur is None else FLAGS.use_blur
    # Spread the rows over the classes (folders are sorted by class).
    stride = max(1, info.split_sizes[FLAGS.split] // FLAGS.rows)
    picked = [img for img, _ in ds.shard(stride, 0).take(FLAGS.rows)]
    if FLAGS.histograms:
        print_histogram_similarity(picked, size, strength)
        return
    make_view = None
    if FLAGS.augmentations:
        ops = recipe.parse_augmentations(FLAGS.augmentations)
        blur = "blur" in ops

        def make_view(image, seed):
            return study_ops.composed_view(image, seed, size, ops, strength)

    originals, views = [], []
    for r, image in enumerate(picked):
        originals.append(augment.eval_view(image, size))
        row = []
        for v in range(FLAGS.views):
            seed = tf.constant([FLAGS.seed, r * 1000 + v])
            if make_view is not None:
                row.append(make_view(image, seed))
            else:
                row.append(augment.pretrain_view(image, seed, size, strength, blur))
        views.append(row)

    def to_uint8(x: tf.Tensor) -> np.ndarray:
        arr = (np.clip(x.numpy(), 0, 1) * 255 + 0.5).astype(np.uint8)
        return arr.repeat(FLAGS.scale, 0).repeat(FLAGS.scale, 1) if size <= 64 else arr

    picture = grid([to_uint8(o) for o in originals], [[to_uint8(v) for v in r] for r in views])
    Image.fromarray(picture).save(FLAGS.out)
    what = FLAGS.augmentations or f"paper recipe, blur {blur}"
    print(
        f"Wrote {FLAGS.out}: {len(picked)} images x {FLAGS.views} views, {size} px, "
        f"colour strength {strength}, {what}."
    )


def print_histogram_similarity(images: list[tf.Tensor], size: int, strength: float) -> None:
    """Mean joint-RGB histogram intersection of two views per image, for three compositions."""
    batch = tf.stack([study_ops.centre_view(img, size) for img in images])
    seed = tf.constant([FLAGS.seed, 1])
    print(
        f"Colour-histogram intersection of two views (8 bins per channel, {len(images)} "
        "images; 1 = same colours):"
    )
    for ops in (["crop"], ["crop", "color"], ["crop", "color", "grayscale"]):
        a, b = study_ops.composed_two_views(batch, seed, size, ops, strength)
        same = study_ops.colour_histogram_intersection(a, b).numpy().mean()
        other = study_ops.colour_histogram_intersection(a, tf.roll(b, 1, 0)).numpy().mean()
        print(f"  {','.join(ops):24s} same image {same:.3f}   different images {other:.3f}")


if __name__ == "__main__":
    app.run(main)
