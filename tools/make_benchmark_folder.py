#!/usr/bin/env python
"""Builds an ImageNet-like image folder from the CIFAR-10 folder, for input-pipeline benchmarks.

    python tools/make_benchmark_folder.py --out=/tmp/bench_folder --num_images=2560

ImageNet training JPEGs are about 400x350 on average and vary in size and orientation; CIFAR-10
images are 32x32. This tool upscales CIFAR-10 images (bicubic) to sizes drawn around 500x375
(long side 400-500, aspect 1.25-1.40, about one in four portrait) and saves them as quality-90
JPEGs in ``OUT/train/<class>/`` (and a small ``OUT/test/``), so the 224 px pipeline figures in
``benchmarks/README.md`` can be reproduced without ImageNet. Sizes and the choice of source
images come from ``--seed``: the same command gives the same folder.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SOURCE = os.path.join(os.path.dirname(REPO), "shared", "data", "cifar10")


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) around 500x375: long side U[400, 500], aspect U[1.25, 1.40]."""
    long_side = int(rng.integers(400, 501))
    short_side = int(round(long_side / rng.uniform(1.25, 1.40)))
    portrait = rng.random() < 0.25
    return (short_side, long_side) if portrait else (long_side, short_side)


def build(source: str, out: str, num_images: int, num_test: int, seed: int, quality: int) -> int:
    """Writes the folder; returns the number of images written."""
    src_train = os.path.join(source, "train")
    if not os.path.isdir(src_train):
        raise SystemExit(
            f"make_benchmark_folder: no '{src_train}'. Pass --source=ROOT of an image folder "
            "with ROOT/train/<class>/*.jpg (the CIFAR-10 folder)."
        )
    if os.path.exists(out) and os.listdir(out):
        raise SystemExit(
            f"make_benchmark_folder: '{out}' exists and is not empty; pass another --out or "
            "delete it first."
        )
    classes = sorted(d for d in os.listdir(src_train) if os.path.isdir(os.path.join(src_train, d)))
    files = {c: sorted(os.listdir(os.path.join(src_train, c))) for c in classes}
    rng = np.random.default_rng(seed)
    written = 0
    for split, count in (("train", num_images), ("test", num_test)):
        for k in range(count):
            cls = classes[k % len(classes)]
            index = k // len(classes) + (0 if split == "train" else num_images)
            name = files[cls][index % len(files[cls])]
            with Image.open(os.path.join(src_train, cls, name)) as img:
                big = img.convert("RGB").resize(image_size(rng), Image.Resampling.BICUBIC)
            folder = os.path.join(out, split, cls)
            os.makedirs(folder, exist_ok=True)
            big.save(os.path.join(folder, f"{index:05d}.jpg"), quality=quality)
            written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="Folder to create (must not hold files).")
    p.add_argument("--source", default=DEFAULT_SOURCE, help="CIFAR-10 image folder root.")
    p.add_argument("--num_images", type=int, default=2560, help="Training images.")
    p.add_argument("--num_test", type=int, default=100, help="Test images.")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality.")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.num_images < 1 or args.num_test < 0:
        raise SystemExit("make_benchmark_folder: --num_images must be >= 1, --num_test >= 0.")
    n = build(args.source, args.out, args.num_images, args.num_test, args.seed, args.quality)
    print(f"wrote {n} JPEGs to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
