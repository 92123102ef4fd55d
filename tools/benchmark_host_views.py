#!/usr/bin/env python
"""Two-view augmentation alone at ImageNet size: ours against the reference's host function.

Isolates the augmentation from file reading and decoding: every case maps the same in-memory
decoded images (``--images`` random 375x500 uint8 images, cycled) through ``tf.data`` with
AUTOTUNE parallelism, batches them and reads ``--batches`` batches after two warm-up batches.
Each case runs in its own process, interleaved ``--repeats`` times (A B C A B C), so their
ratios come from one command. Cases:

* ``ours_blur`` / ``ours``: :func:`simclr_tf.data.augment.two_views` of one image (the host
  path of variable-size images), blur on / off;
* ``ours_batched_blur``: per-image :func:`~simclr_tf.data.augment.two_crops`, then the rest of
  the recipe on the batch of crops (the split ``--augment_on=device`` uses, here on the host);
* ``ours_crops``: the crops alone;
* ``reference``: two ``preprocess_image(..., is_training=True)`` of the reference code
  (google-research/simclr ``tf2/data_util.py``, not shipped: ``--reference_dir``), which leaves
  blur to its train step.

    python tools/benchmark_host_views.py --reference_dir=/tmp/ref/tf2 --repeats=2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = ("reference", "ours", "ours_blur", "ours_batched_blur", "ours_crops")


def measure(case: str, args: argparse.Namespace) -> float:
    """Images (two views each) per second of one case, in this process."""
    import tensorflow as tf

    size, batch = args.image_size, args.batch
    images = tf.cast(
        tf.random.stateless_uniform([args.images, 375, 500, 3], [1, 2], maxval=255), tf.uint8
    )
    source = tf.data.Dataset.from_tensor_slices(images).repeat().enumerate()

    def seed(i):
        return tf.random.experimental.stateless_fold_in(tf.constant([0, 1], tf.int64), i)

    auto = tf.data.AUTOTUNE
    if case == "reference":
        from benchmark_case import load_reference, reference_two_views

        ref = load_reference(os.path.join(args.reference_dir, "data_util.py"))

        def views(i, x):
            return tf.concat(reference_two_views(ref, x, size, args.strength), -1)

        ds = source.map(views, num_parallel_calls=auto).batch(batch, drop_remainder=True)
    else:
        sys.path.insert(0, REPO)
        from simclr_tf.data import augment

        blur = case.endswith("_blur")
        if case in ("ours", "ours_blur"):
            ds = source.map(
                lambda i, x: augment.two_views(x, seed(i), size, args.strength, blur),
                num_parallel_calls=auto,
            ).batch(batch, drop_remainder=True)
        else:
            crops = source.map(lambda i, x: augment.two_crops(x, seed(i), size), auto)
            ds = crops.batch(batch, drop_remainder=True)
            if case == "ours_batched_blur":
                ds = ds.enumerate().map(
                    lambda i, c: augment.two_views(c, seed(i), size, args.strength, True), auto
                )
    iterator = iter(ds.prefetch(2))
    for _ in range(2):
        next(iterator)
    start = time.perf_counter()
    for _ in range(args.batches):
        next(iterator)
    return args.batches * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference_dir", help="the reference's tf2/ folder (reference case)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--strength", type=float, default=1.0, help="colour strength s")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # a child process: measure one case
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps({"case": args.case, "images_per_sec": measure(args.case, args)}))
        return 0
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown or ("reference" in cases and not args.reference_dir):
        parser.error(f"unknown cases {unknown}" if unknown else "reference needs --reference_dir")
    results: dict[str, list[float]] = {c: [] for c in cases}
    child = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--case")]
    for _ in range(args.repeats):
        for case in cases:
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            if case == "reference":
                env["TF_USE_LEGACY_KERAS"] = "1"  # the reference is tf.keras 2 code
            proc = subprocess.run(
                [sys.executable, __file__, *child, f"--case={case}"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            line = (proc.stdout.strip().splitlines() or [""])[-1]
            if proc.returncode != 0 or not line.startswith("{"):
                print(f"{case}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 1
            results[case].append(json.loads(line)["images_per_sec"])
            print(line, flush=True)
    base = results.get("reference") or results[cases[0]]
    base_median = statistics.median(base)
    for case, rates in results.items():
        median = statistics.median(rates)
        shown = " / ".join(f"{r:.0f}" for r in rates)
        print(f"{case:18s} {shown:>24s} images/s  {median / base_median:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
