"""Per-op profile of the per-image host path (``tools/benchmark.py --what=ops``).

Milliseconds per image (two views) of each step, old and new variants side by side, on one
thread, repeats interleaved; see ``tools/benchmark.py`` for the command.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

from benchmark_case import load_reference, machine_info, reference_two_views

# --------------------------------------------------------------------------------------------
# Per-op profile of the per-image host path
# --------------------------------------------------------------------------------------------


def _profile_ops_table(tf, size: int, strength: float, ref) -> list[tuple[str, str, Any]]:
    """(name, input kind, fn) of each profiled step; kinds: path, file, image, views.

    "before" rows are the per-image host path before the 224 px work (batched ops on the two
    crops of an image), "after" rows what ``two_views`` runs now; "not used" rows are ideas
    measured and dropped.
    """
    return [
        *_decode_and_crop_rows(tf, size),
        *_view_op_rows(tf, strength),
        *_whole_view_rows(tf, size, strength, ref),
    ]


def _decode_and_crop_rows(tf, size: int) -> list[tuple[str, str, Any]]:
    """Reading, decoding and cropping one image into two crops."""
    from simclr_tf.data.augment import crop as aug_crop

    def boxes(image, seed):
        shape = tf.shape(image)
        return aug_crop.sample_crop_boxes(seed, shape[0], shape[1], 2)

    def slices(image, seed):
        b = boxes(image, seed)
        return [tf.slice(image, [b[i, 0], b[i, 1], 0], [b[i, 2], b[i, 3], -1]) for i in range(2)]

    def old_resize(image, seed):  # before: float copy of each crop, then resize
        return [
            tf.clip_by_value(
                tf.image.resize(
                    tf.image.convert_image_dtype(c, tf.float32), [size, size], "bicubic"
                ),
                0.0,
                1.0,
            )
            for c in slices(image, seed)
        ]

    def decode_crops(raw, seed):  # decodes only each box, but twice the rows of one decode
        shape = tf.io.extract_jpeg_shape(raw)
        b = aug_crop.sample_crop_boxes(seed, shape[0], shape[1], 2)
        return [
            tf.image.resize(
                tf.io.decode_and_crop_jpeg(raw, b[i], channels=3), [size, size], "bicubic"
            )
            for i in range(2)
        ]

    return [
        ("read file", "path", lambda path, seed: tf.io.read_file(path)),
        (
            "decode whole JPEG",
            "file",
            lambda raw, seed: tf.io.decode_image(raw, channels=3, expand_animations=False),
        ),
        (
            "float conversion of the whole image",
            "image",
            lambda image, seed: tf.image.convert_image_dtype(image, tf.float32),
        ),
        ("2 crop boxes (reference sampler)", "image", boxes),
        ("2 crops: slice", "image", slices),
        ("2 crops: slice, float, bicubic resize (before and after)", "image", old_resize),
        (
            "2 crops: slice, bicubic resize from uint8 (not used)",
            "image",
            lambda image, seed: [
                tf.image.resize(c, [size, size], "bicubic") for c in slices(image, seed)
            ],
        ),
        ("2 crops: decode_and_crop_jpeg each, resize (not used)", "file", decode_crops),
    ]


def _view_op_rows(tf, strength: float) -> list[tuple[str, str, Any]]:
    """The ops on the two crops of one image: flip, colour jitter, hue, grayscale, blur."""
    from simclr_tf.data.augment import blur as aug_blur
    from simclr_tf.data.augment import color as aug_color
    from simclr_tf.data.augment import crop as aug_crop
    from simclr_tf.data.augment import seeds as aug_seeds

    def seeds(seed, n):
        return tf.unstack(tf.random.experimental.stateless_split(seed, n))

    def old_jitter(views, seed):
        s_jitter, s_apply = seeds(seed, 2)
        params = aug_color._jitter_params(s_jitter, 2, strength)
        return aug_color._jitter_step(views, params, aug_seeds._bernoulli(s_apply, 2, 0.8), False)

    def new_jitter(views, seed):
        s_jitter, s_apply = seeds(seed, 2)
        params = aug_color._jitter_params(s_jitter, 2, strength)
        return aug_color._jitter_step(
            tf.unstack(views), params, aug_seeds._bernoulli(s_apply, 2, 0.8), True
        )

    def new_jitter_no_xla(views, seed):
        compiled = aug_color._jitter_one_compiled
        aug_color._jitter_one_compiled = aug_color._jitter_one
        try:
            return new_jitter(views, seed)
        finally:
            aug_color._jitter_one_compiled = compiled

    def blur(per_view):
        def fn(views, seed):
            apply, sigma = aug_blur._blur_params(seed, 2, 0.5, (0.1, 2.0))
            x = tf.unstack(views) if per_view else views
            return aug_blur._blur_step(x, apply, sigma, per_view)

        return fn

    def gray(per_view):
        def fn(views, seed):
            mask = aug_seeds._bernoulli(seed, 2, 0.2)
            return aug_color._gray_step(tf.unstack(views) if per_view else views, mask, per_view)

        return fn

    def flip(per_view):
        def fn(views, seed):
            mask = aug_seeds._bernoulli(seed, 2, 0.5)
            return aug_crop._flip_step(tf.unstack(views) if per_view else views, mask, per_view)

        return fn

    return [
        ("flip, batched gather (before)", "views", flip(False)),
        ("flip, per view (after)", "views", flip(True)),
        ("colour jitter p=0.8, 15-slot schedule (before)", "views", old_jitter),
        ("colour jitter p=0.8, each op once, XLA-compiled (after)", "views", new_jitter),
        ("colour jitter p=0.8, each op once, plain TF ops (not used)", "views", new_jitter_no_xla),
        (
            "hue only, HSV round trip batched (before)",
            "views",
            lambda views, seed: aug_color._hue(views, tf.fill([2], 0.1)),
        ),
        (
            "hue only, tf.image.adjust_hue per view (now inside the XLA jitter)",
            "views",
            lambda views, seed: [tf.image.adjust_hue(v, 0.1) for v in tf.unstack(views)],
        ),
        ("grayscale p=0.2, batched (before)", "views", gray(False)),
        ("grayscale p=0.2, per view (after)", "views", gray(True)),
        ("blur p=0.5, batched (before)", "views", blur(False)),
        ("blur p=0.5, per view (after)", "views", blur(True)),
    ]


def _whole_view_rows(tf, size: int, strength: float, ref) -> list[tuple[str, str, Any]]:
    """Both views of one decoded image, before and after, and the reference's when given."""
    from simclr_tf.data.augment import views as aug_views

    def old_whole(image, seed):  # before: per-image crops, then the batched ops on the pair
        def crop(s_crop, flip_mask):
            return tf.stack(
                aug_views._image_crop(image, 2, size, "reference")(s_crop, None)[0]
            ), False

        return aug_views._compose_views(crop, seed, 2, strength, True, False)

    table = [
        ("whole two views, before (decoded image)", "image", old_whole),
        (
            "whole two views, after (decoded image)",
            "image",
            lambda image, seed: aug_views.two_views(image, seed, size, strength, True),
        ),
        (
            "whole two views, after, no blur (decoded image)",
            "image",
            lambda image, seed: aug_views.two_views(image, seed, size, strength, False),
        ),
    ]
    if ref is not None:

        def ref_views(image, seed):
            views = reference_two_views(ref, image, size, strength)
            return ref.batch_random_blur([tf.stack(views)], size, size)

        table.append(("whole two views, reference (decoded image, batch blur)", "image", ref_views))
    return table


def profile_ops(
    case: dict[str, Any], num_images: int, repeats: int, reference: str | None = None
) -> int:
    """Prints ms per image (two views) of every step, one thread, interleaved repeats."""
    import glob

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    size = int(case.get("image_size") or 224)
    strength = float(case.get("color_jitter_strength") or 1.0)
    ref = None
    if reference:
        ref = load_reference(reference)
    paths = sorted(glob.glob(os.path.join(case["data_dir"], "train", "*", "*.*")))[:num_images]
    if not paths:
        raise SystemExit(f"benchmark: no images under {case['data_dir']}/train/<class>/.")
    files = [tf.io.read_file(p) for p in paths]
    images = [tf.io.decode_image(f, channels=3, expand_animations=False) for f in files]
    rng = tf.random.Generator.from_seed(0)
    views = [rng.uniform([2, size, size, 3]) for _ in range(min(16, len(paths)))]
    inputs = {
        "path": [tf.constant(p) for p in paths],
        "file": files,
        "image": images,
        "views": views,
    }
    specs = {
        "path": tf.TensorSpec([], tf.string),
        "file": tf.TensorSpec([], tf.string),
        "image": tf.TensorSpec([None, None, 3], tf.uint8),
        "views": tf.TensorSpec([2, size, size, 3], tf.float32),
    }
    seed_spec = tf.TensorSpec([2], tf.int64)
    table = _profile_ops_table(tf, size, strength, ref)
    fns = [tf.function(fn, input_signature=[specs[kind], seed_spec]) for _, kind, fn in table]
    seeds = [tf.constant([k, 17], tf.int64) for k in range(len(paths))]
    for fn, (_, kind, _) in zip(fns, table, strict=True):
        for x, sd in zip(inputs[kind][:2], seeds, strict=False):
            fn(x, sd)  # trace and warm up
    times: list[list[float]] = [[] for _ in table]
    for _ in range(max(1, repeats)):
        for k, (fn, (_, kind, _)) in enumerate(zip(fns, table, strict=True)):
            t0 = time.perf_counter()
            for x, sd in zip(inputs[kind], seeds, strict=False):
                out = fn(x, sd)
            tf.nest.map_structure(lambda t: t.numpy(), out)
            times[k].append((time.perf_counter() - t0) / len(inputs[kind]))
    info = {
        "machine": machine_info(),
        "tensorflow": tf.__version__,
        "image_size": size,
        "color_jitter_strength": strength,
        "images": len(paths),
        "repeats": repeats,
        "threads": 1,
    }
    print(json.dumps(info), flush=True)
    for (name, _, _), ts in zip(table, times, strict=True):
        print(
            json.dumps(
                {
                    "op": name,
                    "ms_per_image_median": round(1e3 * statistics.median(ts), 3),
                    "ms_per_image_min": round(1e3 * min(ts), 3),
                }
            ),
            flush=True,
        )
    return 0
