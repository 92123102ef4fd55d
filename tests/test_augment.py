"""Tests for simclr_tf.data.augment against independent references (NumPy, tf.image kernels)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.data import augment as aug
from simclr_tf.data.augment import blur as aug_blur
from simclr_tf.data.augment import color as aug_color
from simclr_tf.data.augment import seeds as aug_seeds

RNG = np.random.default_rng(1234)


def seed(i: int) -> tf.Tensor:
    return tf.constant([i, 9876], tf.int32)


def rand_images(b: int, h: int, w: int, rng=RNG) -> np.ndarray:
    return rng.random((b, h, w, 3), dtype=np.float32)


def binomial_ok(count: int, n: int, p: float, sds: float = 5.0) -> bool:
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p)) + 1


# ------------------------------------------------------------------------------------------
# NumPy references
# ------------------------------------------------------------------------------------------


def np_crop_boxes(rng, height, width, n, area=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=100):
    """Torchvision's RandomResizedCrop.get_params, vectorised over n samples (NumPy)."""
    target = height * width * rng.uniform(area[0], area[1], (n, attempts))
    r = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, attempts)))
    w = np.round(np.sqrt(target * r))
    h = np.round(np.sqrt(target / r))
    ok = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = ok.argmax(axis=1)
    rows = np.arange(n)
    found = ok.any(axis=1)
    return h[rows, first], w[rows, first], found


def np_gauss(sigma: float, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def np_blur(img: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Separable Gaussian blur with reflect padding, one [H, W, C] image."""
    k = np_gauss(sigma, radius)
    p = np.pad(img.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), "reflect")
    h, w = img.shape[:2]
    rows = sum(k[i] * p[i : i + h] for i in range(2 * radius + 1))
    return sum(k[i] * rows[:, i : i + w] for i in range(2 * radius + 1))


def ref_jitter_op(img: np.ndarray, op: int, factor: float) -> np.ndarray:
    """One jitter op on one [H, W, 3] image, then clip: NumPy or tf.image kernels."""
    if op == 0:
        out = img * factor
    elif op == 1:
        mean = img.mean(axis=(0, 1), keepdims=True)
        out = (img - mean) * factor + mean
    elif op == 2:
        out = tf.image.adjust_saturation(img, factor).numpy()
    else:
        out = tf.image.adjust_hue(img, factor).numpy()
    return np.clip(out, 0.0, 1.0)


# ------------------------------------------------------------------------------------------
# Random resized crop
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(64, 64), (48, 80)])
def test_crop_boxes_in_range(height, width):
    boxes = aug.sample_crop_boxes(seed(1), height, width, 3000, sampler="uniform_area").numpy()
    y0, x0, h, w = boxes.T.astype(np.float64)
    assert (y0 >= 0).all() and (x0 >= 0).all()
    assert (y0 + h <= height).all() and (x0 + w <= width).all()
    assert (h >= 1).all() and (w >= 1).all()
    # Integer boxes come from real (h*, w*) rounded to nearest: some pair within 0.5 of (h, w)
    # must have area fraction in [0.08, 1] and aspect ratio in [3/4, 4/3].
    assert ((h + 0.5) * (w + 0.5) >= 0.08 * height * width).all()
    assert ((h - 0.5) * (w - 0.5) <= height * width).all()
    assert ((w + 0.5) / (h - 0.5) >= 3 / 4).all()
    assert ((w - 0.5) / (h + 0.5) <= 4 / 3).all()
    # Offsets uniform over the valid positions.
    u = (y0 + 0.5) / (height - h + 1)
    assert abs(u.mean() - 0.5) < 0.03
    v = (x0 + 0.5) / (width - w + 1)
    assert abs(v.mean() - 0.5) < 0.03


def test_crop_box_distribution_matches_numpy_reference():
    height, width, n = 48, 80, 4000
    boxes = aug.sample_crop_boxes(seed(2), height, width, n, sampler="uniform_area")
    boxes = boxes.numpy().astype(np.float64)
    area = boxes[:, 2] * boxes[:, 3] / (height * width)
    log_ratio = np.log(boxes[:, 3] / boxes[:, 2])
    rh, rw, found = np_crop_boxes(np.random.default_rng(0), height, width, 100_000)
    assert found.all()
    ref_area = rh * rw / (height * width)
    ref_log_ratio = np.log(rw / rh)
    se = ref_area.std() / math.sqrt(n)
    assert abs(area.mean() - ref_area.mean()) < 5 * se
    se = ref_log_ratio.std() / math.sqrt(n)
    assert abs(log_ratio.mean() - ref_log_ratio.mean()) < 5 * se
    # Histogram of area fractions, bin by bin.
    bins = np.linspace(0.0, 1.0, 6)
    got = np.histogram(area, bins)[0] / n
    ref = np.histogram(ref_area, bins)[0] / len(ref_area)
    assert np.all(np.abs(got - ref) < 5 * np.sqrt(ref * (1 - ref) / n) + 1e-3)


@pytest.mark.parametrize(
    "height,width,expected",
    [(4, 100, [0, 47, 4, 5]), (100, 4, [47, 0, 5, 4])],
)
def test_crop_fallback_is_clamped_center_crop(height, width, expected):
    # No 8%-area box with aspect in [3/4, 4/3] fits: torchvision's fallback, a centred box
    # with the image's aspect ratio clamped into range (4 * 4/3 = 5.33 -> 5).
    boxes = aug.sample_crop_boxes(seed(3), height, width, 16, sampler="uniform_area").numpy()
    np.testing.assert_array_equal(boxes, np.tile(expected, (16, 1)))


def tf_sample_distorted_boxes(height: int, width: int, n: int) -> np.ndarray:
    """n draws of the reference code's crop: TF's own sampler, one seed [77, i] per draw.

    (Seeds [i, 77] for consecutive i gave visibly correlated draws: two such TF samples of
    2,000 differed by KS distances up to 0.05, near the 1% critical value.)
    """

    def one(i):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            [height, width, 3],
            tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=tf.stack([tf.constant(77, tf.int64), i]),
            min_object_covered=0.1,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0),
            max_attempts=100,
            use_image_if_no_bounding_boxes=True,
        )
        return tf.concat([begin[:2], size[:2]], 0)

    return tf.data.Dataset.range(n).map(one).batch(n).get_single_element().numpy()


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance (NumPy)."""
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / a.size
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


@pytest.mark.parametrize("height,width", [(32, 32), (224, 224), (375, 500)])
def test_reference_sampler_matches_tf_sample_distorted_bounding_box(height, width):
    n = 2000
    ours = aug.sample_crop_boxes(seed(11), height, width, n).numpy().astype(np.float64)
    ref = tf_sample_distorted_boxes(height, width, n).astype(np.float64)
    critical = 1.628 * math.sqrt(2.0 / n)  # two-sample KS, alpha = 1%
    for name, column in (
        ("area", lambda b: b[:, 2] * b[:, 3] / (height * width)),
        ("aspect", lambda b: b[:, 3] / b[:, 2]),
    ):
        assert ks_statistic(column(ours), column(ref)) < critical, name
    # Boxes lie inside the image; TF never puts a smaller box flush with the far edge.
    y0, x0, h, w = ours.T
    assert (y0 >= 0).all() and (x0 >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert ((y0 + h < height) | (h == height)).all() and ((x0 + w < width) | (w == width)).all()
    assert (h * w >= 0.1 * height * width).all()  # min_object_covered of the whole image


def test_reference_sampler_falls_back_to_the_whole_image():
    # No box of 10% area with aspect 3/4..4/3 fits a 4x100 image: TF returns the image.
    ref = tf_sample_distorted_boxes(4, 100, 16)
    ours = aug.sample_crop_boxes(seed(12), 4, 100, 16).numpy()
    np.testing.assert_array_equal(ref, np.tile([0, 0, 4, 100], (16, 1)))
    np.testing.assert_array_equal(ours, ref)


def test_per_view_path_equals_batched_path_at_224_on_a_non_square_image():
    """The host's per-view execution (coins skip ops, each colour op once, XLA-fused jitter,
    tf.image's fused contrast/hue) draws the batched path's parameters and gives its values."""
    image = (255 * rand_images(1, 150, 200, np.random.default_rng(5))[0]).astype(np.uint8)
    image = tf.image.resize(image[None], [150, 200], "bicubic")[0]  # smooth, like photos
    image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
    per_view_fn = tf.function(lambda x, s: aug.two_views(x, s, 224, 1.0, True))
    batched_fn = tf.function(lambda x, s: aug.two_views(x[tf.newaxis], s, 224, 1.0, True))
    plain = []
    for k in range(4):
        s = seed(40 + k)
        per_view = per_view_fn(image, s)
        batched = batched_fn(image, s)
        for a, b in zip(per_view, batched, strict=True):
            np.testing.assert_allclose(a.numpy(), b[0].numpy(), atol=2e-4)
        crop_only = aug.random_resized_crop(image, aug_seeds._split(s, 4)[0], 224)
        plain.append(np.abs(per_view[0].numpy() - crop_only.numpy()).max())
    assert max(plain) > 0.1  # the ops did change the views


def crop_reference(images: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    out = []
    for img, (y0, x0, h, w) in zip(images, boxes, strict=True):
        crop = img[y0 : y0 + h, x0 : x0 + w]
        out.append(tf.image.resize(crop, [size, size], method="bicubic").numpy())
    return np.clip(np.stack(out), 0.0, 1.0)


def test_batched_bicubic_matches_tf_resize_of_slice():
    images = rand_images(12, 40, 36)
    boxes = np.array(
        [
            [0, 0, 40, 36],  # whole image, downscale
            [0, 0, 1, 1],  # single pixel
            [39, 35, 1, 1],
            [3, 4, 1, 32],  # one row
            [10, 5, 2, 3],  # tiny: heavy upsampling
            [0, 0, 24, 24],  # identity scale
            [5, 5, 30, 7],
            [1, 2, 3, 30],
            [20, 10, 17, 26],
            [7, 0, 33, 36],
        ],
        np.int32,
    )
    boxes = np.concatenate([boxes, aug.sample_crop_boxes(seed(4), 40, 36, 2).numpy()])
    for size in (24, 13):
        got = aug.crop_resize_bicubic(images, boxes, size).numpy()
        ref = crop_reference(images, boxes, size)
        assert np.abs(got - ref).max() < 1e-4


def test_random_resized_crop_batched_and_per_image_paths():
    images = rand_images(6, 37, 45)
    # Batched path: boxes from sample_crop_boxes(seed), resize via matmuls.
    got = aug.random_resized_crop(images, seed(5), 20).numpy()
    boxes = aug.sample_crop_boxes(seed(5), 37, 45, 6).numpy()
    np.testing.assert_allclose(got, crop_reference(images, boxes, 20), atol=1e-4)
    # Per-image path: slice + tf.image.resize with the box from a batch of one.
    single = aug.random_resized_crop(images[0], seed(6), 20).numpy()
    box = aug.sample_crop_boxes(seed(6), 37, 45, 1).numpy()
    np.testing.assert_allclose(single, crop_reference(images[:1], box, 20)[0], atol=1e-6)
    assert got.shape == (6, 20, 20, 3) and single.shape == (20, 20, 3)


def test_uint8_input_equals_float_input():
    images = RNG.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    as_float = images.astype(np.float32) / 255.0
    for fn in (
        lambda x: aug.random_resized_crop(x, seed(7), 24),
        lambda x: aug.pretrain_view(x, seed(7), 32, 1.0, True),
        lambda x: aug.eval_view(x, 32),
    ):
        np.testing.assert_allclose(fn(images).numpy(), fn(as_float).numpy(), atol=1e-5)
    np.testing.assert_allclose(
        aug.pretrain_view(images[0], seed(8), 16, 0.5, False).numpy(),
        aug.pretrain_view(as_float[0], seed(8), 16, 0.5, False).numpy(),
        atol=1e-5,
    )


# ------------------------------------------------------------------------------------------
# Flip and grayscale
# ------------------------------------------------------------------------------------------


def test_flip_rate_and_exactness():
    n = 2000
    x = rand_images(n, 4, 5)
    out = aug.random_flip(x, seed(9)).numpy()
    same = np.all(out == x, axis=(1, 2, 3))
    flipped = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same ^ flipped)
    assert binomial_ok(int(flipped.sum()), n, 0.5)
    assert np.all(aug.random_flip(x[:50], seed(9), p=0.0).numpy() == x[:50])
    assert np.all(aug.random_flip(x[:50], seed(9), p=1.0).numpy() == x[:50, :, ::-1])


def test_flip_rate_per_image():
    img = rand_images(1, 3, 4)[0]
    flips = [
        bool(np.all(aug.random_flip(img, seed(i)).numpy() == img[:, ::-1])) for i in range(200)
    ]
    assert binomial_ok(sum(flips), 200, 0.5)


def test_fused_crop_flip_equals_crop_then_flip():
    x = rand_images(16, 30, 34)
    s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed(10), 2))
    ref = aug.random_flip(aug.random_resized_crop(x, s_crop, 18), s_flip).numpy()
    np.testing.assert_allclose(aug.finetune_view(x, seed(10), 18).numpy(), ref, atol=1e-6)


def test_grayscale_rate_equal_channels_and_luma():
    n = 3000
    x = rand_images(n, 3, 3)
    out = aug.random_grayscale(x, seed(11)).numpy()
    gray = np.all(out[..., 0] == out[..., 1], axis=(1, 2)) & np.all(
        out[..., 1] == out[..., 2], axis=(1, 2)
    )
    assert binomial_ok(int(gray.sum()), n, 0.2)
    luma = x @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    np.testing.assert_allclose(out[gray][..., 0], luma[gray], atol=1e-6)
    assert np.all(out[~gray] == x[~gray])


# ------------------------------------------------------------------------------------------
# Colour jitter
# ------------------------------------------------------------------------------------------


def colour_test_images(b: int) -> np.ndarray:
    x = rand_images(b, 6, 7)
    x[:, 0, 0] = 0.0  # black
    x[:, 0, 1] = 0.5  # gray (zero chroma)
    x[:, 0, 2] = [1.0, 1.0, 0.2]  # saturated bright pixel
    return x


def test_brightness_and_contrast_match_numpy():
    x = colour_test_images(4)
    factors = np.array([0.0, 0.6, 1.0, 1.8], np.float32)
    got_b = aug.adjust_brightness(x, factors).numpy()
    got_c = aug.adjust_contrast(x, factors).numpy()
    for i, f in enumerate(factors):
        np.testing.assert_allclose(got_b[i], ref_jitter_op(x[i], 0, f), atol=1e-6)
        np.testing.assert_allclose(got_c[i], ref_jitter_op(x[i], 1, f), atol=1e-6)
        ref_tf = np.clip(tf.image.adjust_contrast(x[i], f).numpy(), 0, 1)
        np.testing.assert_allclose(got_c[i], ref_tf, atol=1e-6)


def test_saturation_and_hue_match_tf_image():
    x = colour_test_images(6)
    sat = np.array([0.0, 0.3, 1.0, 1.7, 5.0, 0.9], np.float32)
    hue = np.array([-0.5, -0.2, 0.0, 0.1, 0.37, 0.5], np.float32)
    got_s = aug.adjust_saturation(x, sat).numpy()
    got_h = aug.adjust_hue(x, hue).numpy()
    for i in range(len(x)):
        np.testing.assert_allclose(got_s[i], ref_jitter_op(x[i], 2, sat[i]), atol=1e-5)
        np.testing.assert_allclose(got_h[i], ref_jitter_op(x[i], 3, hue[i]), atol=1e-5)
    # Scalar factor and a single image.
    np.testing.assert_allclose(
        aug.adjust_hue(x[1], 0.25).numpy(), ref_jitter_op(x[1], 3, 0.25), atol=1e-5
    )


def jitter_reference(x: np.ndarray, params: dict) -> np.ndarray:
    names = ("brightness", "contrast", "saturation", "hue")
    out = []
    for i, img in enumerate(x):
        for op in np.asarray(params["order"])[i]:
            img = ref_jitter_op(img, int(op), float(np.asarray(params[names[op]])[i]))
        out.append(img)
    return np.stack(out)


def test_every_op_order_matches_sequential_reference():
    orders = np.array(list(itertools.permutations(range(4))), np.int32)  # all 24
    n = len(orders)
    rng = np.random.default_rng(5)
    params = {
        "brightness": rng.uniform(0.2, 1.8, n).astype(np.float32),
        "contrast": rng.uniform(0.2, 1.8, n).astype(np.float32),
        "saturation": rng.uniform(0.2, 1.8, n).astype(np.float32),
        "hue": rng.uniform(-0.2, 0.2, n).astype(np.float32),
        "order": orders,
    }
    x = colour_test_images(n)
    got = aug_color._apply_jitter(tf.constant(x), {k: tf.constant(v) for k, v in params.items()})
    np.testing.assert_allclose(got.numpy(), jitter_reference(x, params), atol=1e-4)


def test_color_jitter_uses_sampled_params_and_random_order():
    x = colour_test_images(32)
    got = aug.color_jitter(x, seed(12), strength=1.0).numpy()
    params = aug_color._jitter_params(seed(12), 32, 1.0)
    np.testing.assert_allclose(got, jitter_reference(x, params), atol=1e-4)
    fixed = aug.color_jitter(x[:4], seed(12), strength=1.0, random_order=False).numpy()
    params = aug_color._jitter_params(seed(12), 4, 1.0, random_order=False)
    assert (params["order"].numpy() == np.arange(4)).all()
    np.testing.assert_allclose(fixed, jitter_reference(x[:4], params), atol=1e-4)


def test_jitter_param_ranges_and_order_distribution():
    n, s = 4000, 0.5
    p = {k: v.numpy() for k, v in aug_color._jitter_params(seed(13), n, s).items()}
    for name in ("brightness", "contrast", "saturation"):
        assert p[name].min() >= 1 - 0.8 * s and p[name].max() <= 1 + 0.8 * s
        assert abs(p[name].mean() - 1.0) < 0.02
    assert p["hue"].min() >= -0.2 * s and p["hue"].max() <= 0.2 * s
    assert (np.sort(p["order"], axis=1) == np.arange(4)).all()
    for op, pos in itertools.product(range(4), range(4)):
        assert binomial_ok(int((p["order"][:, pos] == op).sum()), n, 0.25)
    # Strength > 1.25 keeps factors non-negative (brightness' max(0, 1 - 0.8 s) rule).
    big = aug_color._jitter_params(seed(13), 500, 2.0)
    assert float(tf.reduce_min(big["brightness"])) >= 0.0


def test_strength_zero_and_neutral_factors_are_identity():
    x = colour_test_images(8)
    assert np.all(aug.color_jitter(x, seed(14), 0.0).numpy() == x)
    n = len(x)
    neutral = {
        "brightness": tf.ones([n]),
        "contrast": tf.ones([n]),
        "saturation": tf.ones([n]),
        "hue": tf.zeros([n]),
        "order": aug_color._jitter_params(seed(14), n, 1.0)["order"],
    }
    assert np.all(aug_color._apply_jitter(tf.constant(x), neutral).numpy() == x)
    out = aug.color_distortion(x, seed(14), 0.0, grayscale_p=0.0).numpy()
    assert np.all(out == x)


def test_per_view_grayscale_is_numpy_luma_in_three_channels():
    x = rand_images(1, 224, 224, np.random.default_rng(22))[0]
    got = aug_color._gray_one_compiled(tf.constant(x)).numpy()
    luma = x.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])
    np.testing.assert_allclose(got, np.repeat(luma[..., None], 3, -1), atol=1e-6, rtol=0)
    ref = tf.image.rgb_to_grayscale(x).numpy()  # the batched path's rule, tf.image's kernel
    np.testing.assert_allclose(got[..., :1], ref, atol=1e-6, rtol=0)


def test_color_distortion_rates():
    n = 1500
    x = rand_images(n, 3, 3)
    out = aug.color_distortion(x, seed(15), 1.0).numpy()
    gray = np.all(np.ptp(out, axis=-1) == 0, axis=(1, 2))
    unchanged = np.all(out == x, axis=(1, 2, 3))
    assert binomial_ok(int(gray.sum()), n, 0.2)
    # Unchanged = jitter not applied (0.2) and not gray (0.8).
    assert binomial_ok(int(unchanged.sum()), n, 0.2 * 0.8)
    assert out.min() >= 0.0 and out.max() <= 1.0


# ------------------------------------------------------------------------------------------
# Gaussian blur
# ------------------------------------------------------------------------------------------


def test_blur_kernel_is_numpy_gaussian():
    impulse = np.zeros((1, 15, 15, 3), np.float32)
    impulse[0, 7, 7] = 1.0
    for sigma, kernel_size in [(0.7, 5), (1.5, 7), (2.0, 8)]:  # 8 -> radius 4, 9 taps
        out = aug.gaussian_blur(impulse, sigma, kernel_size).numpy()[0, ..., 1]
        r = kernel_size // 2
        k = np_gauss(sigma, r)
        ref = np.zeros((15, 15))
        ref[7 - r : 8 + r, 7 - r : 8 + r] = np.outer(k, k)
        np.testing.assert_allclose(out, ref, atol=1e-6)


def test_blur_matches_numpy_reflect_reference_per_example_sigma():
    x = rand_images(3, 12, 10)
    sigmas = np.array([0.3, 1.0, 2.0], np.float32)
    got = aug.gaussian_blur(x, sigmas, 7).numpy()
    for i in range(3):
        np.testing.assert_allclose(got[i], np_blur(x[i], sigmas[i], 3), atol=1e-5)
    single = aug.gaussian_blur(x[1], 1.0, 7).numpy()
    np.testing.assert_allclose(single, np_blur(x[1], 1.0, 3), atol=1e-5)


def test_per_view_blur_drops_only_taps_below_float32_resolution():
    """The host's per-view blur leaves out taps beyond 6.1 sigma: its values are the full
    2r+1-tap kernel's (NumPy, float64, REFLECT) to float32 rounding, at every sigma of the
    recipe's range, including those where the kernel is cut hardest (0.1) or not at all."""
    side, radius = 224, 224 // 20
    x = rand_images(1, side, side, np.random.default_rng(21))[0]
    x = tf.image.resize(x[None], [side, side], "bicubic")[0].numpy().clip(0, 1)  # smooth
    blur_one = tf.function(lambda v, s: aug_blur._blur_one(v, s, radius))
    for sigma in (0.1, 0.35, 0.9, 1.4, 1.8, 2.0):
        got = blur_one(tf.constant(x), tf.constant(sigma, tf.float32)).numpy()
        np.testing.assert_allclose(got, np_blur(x, sigma, radius), atol=1e-6, rtol=0)
    # A sharp edge at a reflected border: the dropped tail is what would differ most.
    edge = np.zeros((side, side, 3), np.float32)
    edge[:, :3] = 1.0
    got = blur_one(tf.constant(edge), tf.constant(0.5)).numpy()
    np.testing.assert_allclose(got, np_blur(edge, 0.5, radius), atol=1e-6, rtol=0)


def test_blur_keeps_mean_and_lowers_high_frequencies():
    # Constant image: unchanged everywhere, borders included (REFLECT, not zero padding).
    const = np.full((1, 16, 16, 3), 0.6, np.float32)
    np.testing.assert_allclose(aug.gaussian_blur(const, 1.5, 7).numpy(), const, atol=1e-6)
    # Linear ramp: a symmetric kernel leaves it unchanged in the interior.
    ramp = np.tile(np.linspace(0.1, 0.9, 16, dtype=np.float32)[None, :, None], (16, 1, 3))
    out = aug.gaussian_blur(ramp, 1.2, 7).numpy()
    np.testing.assert_allclose(out[3:-3, 3:-3], ramp[3:-3, 3:-3], atol=1e-6)
    # Checkerboard: interior amplitude scales by (sum_j k_j (-1)^j)^2 (closed form).
    idx = np.add.outer(np.arange(16), np.arange(16))
    board = np.repeat((0.5 + 0.5 * (-1.0) ** idx)[..., None], 3, -1).astype(np.float32)
    sigma, r = 1.0, 3
    gain = np.sum(np_gauss(sigma, r) * (-1.0) ** np.arange(-r, r + 1)) ** 2
    out = aug.gaussian_blur(board, sigma, 7).numpy()
    ref = 0.5 + 0.5 * gain * (-1.0) ** idx
    np.testing.assert_allclose(out[r:-r, r:-r, 0], ref[r:-r, r:-r], atol=1e-6)
    # Random image: mean nearly kept, high-pass energy reduced.
    x = rand_images(1, 32, 32)
    y = aug.gaussian_blur(x, 1.5, 7).numpy()
    assert abs(y.mean() - x.mean()) < 2e-3

    def hp_energy(a):
        return np.sum(np.diff(a, axis=1) ** 2) + np.sum(np.diff(a, axis=2) ** 2)

    assert hp_energy(y) < 0.25 * hp_energy(x)


def test_random_blur_rate_sigma_and_kernel_size():
    n, side = 400, 40  # radius 40 // 20 = 2 -> 5 taps
    x = rand_images(n, side, side)
    out = aug.random_blur(x, seed(16)).numpy()
    apply, sigma = (t.numpy() for t in aug_blur._blur_params(seed(16), n, 0.5, (0.1, 2.0)))
    assert binomial_ok(int(apply.sum()), n, 0.5)
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0
    assert np.all(out[~apply] == x[~apply])
    for i in np.flatnonzero(apply)[:5]:
        np.testing.assert_allclose(out[i], np_blur(x[i], sigma[i], 2), atol=1e-5)
    # CIFAR-sized: 32 // 20 -> radius 1 (3 taps).
    small = rand_images(4, 32, 32)
    out_small = aug.random_blur(small, seed(17), p=1.0).numpy()
    _, sig = aug_blur._blur_params(seed(17), 4, 1.0, (0.1, 2.0))
    np.testing.assert_allclose(out_small[0], np_blur(small[0], sig.numpy()[0], 1), atol=1e-5)


# ------------------------------------------------------------------------------------------
# Eval views
# ------------------------------------------------------------------------------------------


def test_center_crop_resize_and_eval_view():
    x = rand_images(2, 40, 50)
    side = int(np.rint(0.875 * 40))  # 35
    y0, x0 = (40 - side + 1) // 2, (50 - side + 1) // 2
    ref = tf.image.resize(x[:, y0 : y0 + side, x0 : x0 + side], [64, 64], "bicubic").numpy()
    ref = np.clip(ref, 0, 1)
    np.testing.assert_allclose(aug.center_crop_resize(x, 64).numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(aug.eval_view(x, 64).numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(aug.eval_view(x[0], 64).numpy(), ref[0], atol=1e-6)
    # Small images: resize only; same size is the identity.
    c = rand_images(2, 32, 32)
    np.testing.assert_allclose(aug.eval_view(c, 32).numpy(), c, atol=1e-6)
    ref_small = np.clip(tf.image.resize(x, [24, 24], "bicubic").numpy(), 0, 1)
    np.testing.assert_allclose(aug.eval_view(x, 24).numpy(), ref_small, atol=1e-6)


def test_defaults():
    assert aug.default_color_strength(32) == 0.5 and aug.default_color_strength(224) == 1.0
    assert aug.default_use_blur(32) is False and aug.default_use_blur(224) is True


# ------------------------------------------------------------------------------------------
# Views: determinism, independence, graph modes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batched", [True, False])
def test_two_views_seeded_independent_and_in_range(batched):
    x = rand_images(4, 36, 36)
    if not batched:
        x = x[0]
    a1, b1 = aug.two_views(x, seed(20), 32, 1.0, True)
    a2, b2 = aug.two_views(x, seed(20), 32, 1.0, True)
    a3, _ = aug.two_views(x, seed(21), 32, 1.0, True)
    assert a1.dtype == tf.float32 and a1.shape == (x.shape[:-3] + (32, 32, 3))
    np.testing.assert_array_equal(a1.numpy(), a2.numpy())
    np.testing.assert_array_equal(b1.numpy(), b2.numpy())
    assert np.abs(a1.numpy() - a3.numpy()).max() > 0.05
    assert np.abs(a1.numpy() - b1.numpy()).max() > 0.05
    if batched:  # every pair of views differs, and examples differ from each other
        assert (np.abs(a1.numpy() - b1.numpy()).max(axis=(1, 2, 3)) > 0.01).all()
    for v in (a1, b1, a3):
        assert float(tf.reduce_min(v)) >= 0.0 and float(tf.reduce_max(v)) <= 1.0
    p = aug.pretrain_view(x, seed(22), 32, 0.5, False)
    np.testing.assert_array_equal(p.numpy(), aug.pretrain_view(x, seed(22), 32, 0.5, False))


def test_tf_function_unknown_batch_and_tf_data_variable_sizes():
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 32, 32, 3], tf.uint8),
            tf.TensorSpec([2], tf.int64),
        ]
    )
    def batched(x, s):
        return aug.two_views(x, s, 32, 0.5, False)

    x = RNG.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    s = tf.constant([5, 6], tf.int64)
    a, b = batched(x, s)
    eager_a, eager_b = aug.two_views(x, s, 32, 0.5, False)
    np.testing.assert_allclose(a.numpy(), eager_a.numpy(), atol=1e-6)
    np.testing.assert_allclose(b.numpy(), eager_b.numpy(), atol=1e-6)

    sizes = [(20, 30), (41, 17), (64, 64)]
    images = [RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec([None, None, 3], tf.uint8)
    ).enumerate()

    def per_image(i, img):
        view1, view2 = aug.two_views(img, tf.stack([i, tf.constant(3, tf.int64)]), 24, 1.0, True)
        return view1, view2, aug.eval_view(img, 40), aug.finetune_view(img, [i, i], 24)

    ds = ds.map(per_image, num_parallel_calls=tf.data.AUTOTUNE)
    for k, (v1, v2, ev, ft) in enumerate(ds):
        assert v1.shape == (24, 24, 3) and ev.shape == (40, 40, 3) and ft.shape == (24, 24, 3)
        ref1, _ = aug.two_views(images[k], tf.constant([k, 3], tf.int64), 24, 1.0, True)
        np.testing.assert_allclose(v1.numpy(), ref1.numpy(), atol=1e-6)
        assert np.abs(v1.numpy() - v2.numpy()).max() > 0.05


def test_clear_errors():
    with pytest.raises(ValueError, match="batch axis"):
        aug.random_flip(np.zeros((4, 4), np.float32), seed(0))
    with pytest.raises(ValueError, match="shape \\[2\\]"):
        aug.random_flip(np.zeros((2, 4, 4, 3), np.float32), tf.constant([1, 2, 3]))
    with pytest.raises(ValueError, match="area_range"):
        aug.sample_crop_boxes(seed(0), 8, 8, 2, area_range=(0.5, 0.2))
    with pytest.raises(ValueError, match="3 channels"):
        aug.color_jitter(np.zeros((1, 4, 4, 1), np.float32), seed(0), 0.5)
    with pytest.raises(ValueError, match="strength"):
        aug.color_jitter(np.zeros((1, 4, 4, 3), np.float32), seed(0), -1.0)


def test_xla_compiled_views_equal_eager():
    # Random draws are built from raw Philox bits, so a jit-compiled train step sees the same
    # views as eager / tf.data code for the same seed.
    x = rand_images(2, 36, 36)
    s = tf.constant([3, 4])
    compiled = tf.function(lambda x, s: aug.two_views(x, s, 32, 1.0, True), jit_compile=True)
    for got, ref in zip(compiled(x, s), aug.two_views(x, s, 32, 1.0, True), strict=True):
        np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-5)


def test_pretrain_view_is_crop_flip_colour_blur_in_that_order():
    """pretrain_view equals the public ops composed in the paper's order (crop, flip, colour
    distortion, blur, clip) with the sub-seeds it splits from its seed; blur is part of it."""
    images = tf.constant(np.random.default_rng(5).uniform(0, 1, (8, 30, 26, 3)), tf.float32)
    view_seed = tf.constant([11, 12], tf.int64)
    size, strength = 24, 1.0  # 24 px: blur radius 1
    s_crop, s_flip, s_color, s_blur = tf.unstack(
        tf.random.experimental.stateless_split(view_seed, 4, alg="philox")
    )
    x = aug.random_resized_crop(images, s_crop, size)
    x = aug.random_flip(x, s_flip)
    x = aug.color_distortion(x, s_color, strength)
    x = tf.clip_by_value(aug.random_blur(x, s_blur), 0.0, 1.0)
    got = aug.pretrain_view(images, view_seed, size, strength, use_blur=True)
    np.testing.assert_allclose(got.numpy(), x.numpy(), atol=2e-5)
    # Blur decides per image: without it some views are unchanged and the others differ.
    unblurred = aug.pretrain_view(images, view_seed, size, strength, use_blur=False).numpy()
    same = [np.allclose(a, b, atol=2e-5) for a, b in zip(got.numpy(), unblurred, strict=True)]
    assert any(same) and not all(same)
