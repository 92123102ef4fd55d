"""The augmentation-study operations and their composition, against NumPy written here."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from simclr_tf import config, config_defaults
from simclr_tf.data import augment, recipe
from simclr_tf.data.augment import study_ops as so
from simclr_tf.data.augment.seeds import _split


def _images(batch=6, side=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(batch, side, side, 3)).astype(np.float32)


def _seed(k):
    return tf.constant([k, 99], tf.int64)


def test_rotate_matches_numpy_rot90_per_image():
    x = _images(batch=24)
    k = so.rotation_quarters(_seed(1), 24).numpy()
    assert set(k) == {1, 2, 3}  # 90, 180, 270 all drawn; never the identity
    out = so.random_rotate(x, _seed(1)).numpy()
    for i in range(24):
        np.testing.assert_array_equal(out[i], np.rot90(x[i], k[i]))
    single = so.random_rotate(x[0], _seed(2)).numpy()  # one image: tf.image.rot90
    k0 = so.rotation_quarters(_seed(2), 1).numpy()[0]
    np.testing.assert_array_equal(single, np.rot90(x[0], k0))
    with pytest.raises(ValueError, match="square"):
        so.random_rotate(np.zeros((2, 8, 6, 3), np.float32), _seed(1))


def test_cutout_blacks_out_one_half_side_square():
    x = _images(batch=32, side=16) + 0.01  # no exact zeros outside the hole
    out = so.random_cutout(x, _seed(3)).numpy()
    boxes = so.cutout_boxes(_seed(3), 16, 16, 32).numpy()
    inside = 0
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        want = x[i].copy()
        want[y0:y1, x0:x1] = 0.0
        np.testing.assert_array_equal(out[i], want)
        assert 0 <= y0 <= y1 <= 16 and 0 <= x0 <= x1 <= 16
        assert y1 - y0 <= 8 and x1 - x0 <= 8
        inside += (y1 - y0 == 8) and (x1 - x0 == 8)
        # Zero pixels are exactly the box.
        assert (out[i].max(axis=-1) == 0).sum() == (y1 - y0) * (x1 - x0)
    assert 0 < inside < 32  # some squares whole, some clipped at a border
    assert len({tuple(b) for b in boxes}) > 20  # per-image positions


def _np_sobel(image):
    luma = image @ np.array([0.2989, 0.5870, 0.1140])
    p = np.pad(luma, 1, mode="symmetric")
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
    h, w = luma.shape
    gx = np.zeros((h, w))
    gy = np.zeros((h, w))
    for r in range(h):
        for c in range(w):
            win = p[r : r + 3, c : c + 3]
            gx[r, c] = (win * kx).sum()
            gy[r, c] = (win * kx.T).sum()
    mag = np.sqrt(gx**2 + gy**2)
    return np.repeat((mag / mag.max())[..., None], 3, axis=-1)


def test_sobel_matches_numpy_and_flat_images_have_no_edges():
    x = _images(batch=2, side=12)
    out = so.sobel_edges(x).numpy()
    for i in range(2):
        np.testing.assert_allclose(out[i], _np_sobel(x[i].astype(np.float64)), atol=2e-5)
    flat = so.sobel_edges(np.full((1, 8, 8, 3), 0.3, np.float32)).numpy()
    np.testing.assert_array_equal(flat, 0.0)


def test_noise_sigma_per_image_and_seeded():
    grey = np.full((8, 64, 64, 3), 0.5, np.float32)
    out = so.random_noise(grey, _seed(4)).numpy()
    std = (out - 0.5).reshape(8, -1).std(axis=1)
    assert np.all(std > 0.045) and np.all(std < 0.16)  # sigma ~ U(0.05, 0.15)
    assert std.max() - std.min() > 0.01  # each image its own sigma
    np.testing.assert_array_equal(out, so.random_noise(grey, _seed(4)).numpy())
    assert not np.array_equal(out, so.random_noise(grey, _seed(5)).numpy())


def test_parse_augmentations():
    assert recipe.parse_augmentations(None, use_blur=True) == recipe.RECIPE
    assert "blur" not in recipe.parse_augmentations(None, use_blur=False)
    assert recipe.parse_augmentations(" Rotate, crop ") == ("rotate", "crop")
    with pytest.raises(ValueError, match="Unknown augmentation"):
        recipe.parse_augmentations("crop,jitter")
    with pytest.raises(ValueError, match="twice"):
        recipe.parse_augmentations("crop,crop")
    with pytest.raises(ValueError, match="empty"):
        recipe.parse_augmentations(",")


def test_composition_order_views_and_recipe_path():
    x = tf.constant(_images(batch=4, side=16))
    # Order is the list order: rotate-then-cutout differs from cutout-then-rotate only in where
    # the hole lands; both keep the shape and per-image randomness.
    a, _ = so.composed_two_views(x, _seed(6), 16, ["rotate", "cutout"])
    b, _ = so.composed_two_views(x, _seed(6), 16, ["cutout", "rotate"])
    assert a.shape == b.shape == (4, 16, 16, 3)
    assert not np.array_equal(a.numpy(), b.numpy())
    # Both views of a rotate-only composition are quarter turns of the image.
    v1, v2 = so.composed_two_views(x, _seed(7), 16, ["rotate"])
    for v in (v1.numpy(), v2.numpy()):
        assert all(
            any(np.array_equal(v[i], np.rot90(x.numpy()[i], k)) for k in (1, 2, 3))
            for i in range(4)
        )
    # augment_views=one_resize: the second view is the image itself (already 16 px).
    w1, w2 = so.composed_two_views(x, _seed(8), 16, ["crop", "color"], augment_views="one_resize")
    np.testing.assert_array_equal(w2.numpy(), x.numpy())
    assert not np.allclose(w1.numpy(), x.numpy())
    # The default recipe is augment.two_views itself (today's runs unchanged).
    fn = so.two_views_fn(16, 0.5, False)
    r1, r2 = fn(x, _seed(9))
    t1, t2 = augment.two_views(x, _seed(9), 16, 0.5, False)
    np.testing.assert_array_equal(r1.numpy(), t1.numpy())
    np.testing.assert_array_equal(r2.numpy(), t2.numpy())
    # Variable-size single image (host path) with and without crop.
    img = tf.constant((_images(batch=1, side=20)[0, :, :18] * 255).astype(np.uint8))
    for ops in (["crop", "rotate"], ["noise", "sobel"]):
        p, q = so.two_views_fn(12, 0.5, False, ",".join(ops))(img, _seed(10))
        assert p.shape == q.shape == (12, 12, 3)


def test_new_ops_compile_with_xla_and_match_eager():
    """The device path (jit-compiled train step); augment's ops have their own XLA test."""
    x = tf.constant(_images(batch=3, side=16))
    ops = ["rotate", "cutout", "noise", "sobel"]
    eager = so.composed_two_views(x, _seed(11), 16, ops)
    compiled = tf.function(lambda im, s: so.composed_two_views(im, s, 16, ops), jit_compile=True)(
        x, _seed(11)
    )
    for got, want in zip(compiled, eager, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def _smooth_image(rng, side=32):
    """A natural-ish image: a few smooth colour blobs over a coloured background."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    img = np.ones((side, side, 3)) * rng.uniform(0.2, 0.8, size=3)
    for _ in range(3):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - blob) + blob * rng.uniform(0, 1, size=3)
    return img.astype(np.float32)


def test_crops_share_colour_histograms_until_colour_is_distorted():
    """The paper's explanation of why crop alone fails (its Figure 6)."""
    rng = np.random.default_rng(0)
    x = tf.constant(np.stack([_smooth_image(rng) for _ in range(32)]))
    crop_a, crop_b = so.composed_two_views(x, _seed(12), 32, ["crop"])
    col_a, col_b = so.composed_two_views(x, _seed(12), 32, ["crop", "color", "grayscale"])
    crops = so.colour_histogram_intersection(crop_a, crop_b).numpy().mean()
    coloured = so.colour_histogram_intersection(col_a, col_b).numpy().mean()
    # Two different images' crops: the baseline of "unrelated".
    other = so.colour_histogram_intersection(crop_a, tf.roll(crop_b, 1, axis=0)).numpy().mean()
    assert crops > 0.6
    assert coloured < crops - 0.25
    assert other < crops - 0.25
    ident = so.colour_histogram_intersection(crop_a, crop_a).numpy()
    np.testing.assert_allclose(ident, 1.0, rtol=1e-6)


def test_config_flags_for_studies():
    cfg = config.Config(model_dir="/tmp/m").validate()
    resolved = config_defaults.resolve(cfg, 32, ("train", "test"))
    assert resolved.augmentations == "crop,flip,color,grayscale" and not resolved.use_blur
    big = config_defaults.resolve(cfg, None, ("train", "validation"))
    assert big.augmentations == "crop,flip,color,grayscale,blur" and big.use_blur
    listed = config_defaults.resolve(cfg.replace(augmentations="crop,blur"), 32, ("train", "test"))
    assert listed.use_blur and listed.augmentations == "crop,blur"
    off = config_defaults.resolve(
        cfg.replace(augmentations="crop", use_blur=True), None, ("train",)
    )
    assert not off.use_blur  # the list decides
    with pytest.raises(config.ConfigError, match="Unknown augmentation"):
        cfg.replace(augmentations="crop,zoom").validate()
    with pytest.raises(config.ConfigError, match="semi_hard_negatives"):
        cfg.replace(semi_hard_negatives=True).validate()
    with pytest.raises(config.ConfigError, match="margin"):
        cfg.replace(loss="margin_triplet", margin=-1.0).validate()
    cfg.replace(loss="margin_triplet", semi_hard_negatives=True).validate()


def _is_quarter_turn(view, image):
    return any(np.allclose(view, np.rot90(image, k), atol=1e-6) for k in (1, 2, 3))


def test_augmentations_reach_host_pipeline_and_device_step():
    from simclr_tf import train
    from simclr_tf.data import pipeline

    images = (np.random.default_rng(15).uniform(size=(4, 16, 16, 3)) * 255).astype(np.uint8)
    as_float = images.astype(np.float32) / 255.0
    ds = tf.data.Dataset.from_tensor_slices((images, np.arange(4, dtype=np.int32)))
    host = pipeline.pretrain_dataset(
        ds, batch_size=4, image_size=16, color_jitter_strength=0.5, use_blur=False, seed=1,
        augmentations="rotate", shuffle_buffer=1,
    )  # fmt: skip
    (view1, view2), labels = next(iter(host))
    for i, label in enumerate(labels.numpy()):
        assert _is_quarter_turn(view1.numpy()[i], as_float[label])
        assert _is_quarter_turn(view2.numpy()[i], as_float[label])
    cfg = tiny_config(
        width_multiplier=0.125,
        augment_on="device",
        augmentations="rotate",
        augment_views="one_resize",
        proj_out_dim=8,
    )
    model = train.build_model(cfg, 4)
    d1, d2 = model.augment_fn(tf.constant(images), _seed(16))
    np.testing.assert_allclose(d2.numpy(), as_float, atol=1e-6)  # one view: un-augmented
    assert all(_is_quarter_turn(d1.numpy()[i], as_float[i]) for i in range(4))


@pytest.mark.parametrize("sampler", ["reference", "uniform_area"])
def test_composed_crop_uses_the_runs_crop_sampler(sampler):
    """--crop_sampler reaches the composed (--augmentations) path, not only the recipe path."""
    x = tf.constant(_images(batch=4, side=24))
    seed = _seed(11)
    fn = so.two_views_fn(16, 0.5, False, "crop,rotate", crop_sampler=sampler)
    view1, _ = fn(x, seed)
    # The second code path: view 1 is the first half of the doubled batch, crop seed first.
    doubled = tf.concat([x, x], 0)
    crop_seed = so._split(so._split(seed, 2)[0], 2)[0]
    want = augment.random_resized_crop(doubled, crop_seed, 16, sampler=sampler)[:4]
    other = "uniform_area" if sampler == "reference" else "reference"
    unwanted = augment.random_resized_crop(doubled, crop_seed, 16, sampler=other)[:4]
    rot = so.random_rotate(want, so._split(so._split(seed, 2)[0], 2)[1])
    np.testing.assert_allclose(view1.numpy(), np.clip(rot.numpy(), 0, 1), atol=1e-6)
    assert not np.allclose(view1.numpy(), np.clip(unwanted.numpy(), 0, 1), atol=1e-3)


def test_asymmetric_ops_leave_only_the_studied_ops_out_of_the_second_view():
    assert so.asymmetric_ops(["color"]) == (("crop", "color"), ("crop",))
    assert so.asymmetric_ops(["crop", "flip", "color", "grayscale"]) == (
        ("crop", "flip", "color", "grayscale"),
        ("crop", "flip"),
    )
    first, second = so.asymmetric_ops(["flip", "crop", "sobel"])
    assert (first, second) == (("flip", "crop", "sobel"), ("flip", "crop"))
    assert so.asymmetric_ops(["crop"]) == (("crop",), ("crop",))


def test_augment_views_one_crops_both_views_and_rotates_only_the_first():
    """The paper's Figure 5 asymmetric setting: the second view is an independent random crop
    (not the centre resize of one_resize), without the studied op (rotate)."""
    x = tf.constant(_images(batch=4, side=24))
    seed = _seed(21)
    v1, v2 = so.composed_two_views(x, seed, 16, ["rotate"], augment_views="one")
    s1, s2 = _split(seed, 2)
    crop2 = augment.random_resized_crop(x, _split(s2, 1)[0], 16)
    np.testing.assert_allclose(v2.numpy(), crop2.numpy(), atol=1e-6)
    assert not np.allclose(v2.numpy(), so.centre_view(x, 16).numpy(), atol=1e-2)
    c1, r1 = _split(s1, 2)
    crop1 = augment.random_resized_crop(x, c1, 16).numpy()
    assert not np.allclose(crop1, crop2.numpy(), atol=1e-2)  # independent crops
    for i in range(4):  # the first view is its own crop, quarter-turned
        assert any(np.allclose(v1.numpy()[i], np.rot90(crop1[i], k), atol=1e-6) for k in (1, 2, 3))
    # The paper recipe under "one": the second view is crop + flip only, the first the recipe.
    p1, p2 = so.two_views_fn(16, 1.0, False, None, "one")(x, _seed(22))
    t1, t2 = _split(_seed(22), 2)
    base = so.composed_view(x, t2, 16, ["crop", "flip"])
    np.testing.assert_allclose(p2.numpy(), base.numpy(), atol=1e-6)
    recipe_view = so.composed_view(x, t1, 16, ["crop", "flip", "color", "grayscale"], 1.0)
    np.testing.assert_allclose(p1.numpy(), recipe_view.numpy(), atol=1e-6)
