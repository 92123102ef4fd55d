"""``--augment_on=device``: the train step's batched views match the host pipeline's views.

The device path is exercised as a run uses it: ``train.build_model`` wires the augmentation
into the model, the decode-only pipeline (``pretrain_dataset(augment_on="device")``) feeds it,
and ``SimCLRModel._device_views`` draws the step's seed. Its per-example statistics are
compared with the host pipeline's on the same images: mean brightness and grayscale rate
(CIFAR-10 images), horizontal flips (ramps) and crop sizes (stripes, whose number of edges in a
view measures the crop side, also checked against a NumPy simulation of the crop sampler).
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from simclr_tf import train
from simclr_tf.config import Config
from simclr_tf.data import pipeline, sources

REPO = pathlib.Path(__file__).resolve().parents[1]
SIDE = 32
STEPS = 8  # batches per path
N_CIFAR, N_RAMP, N_STRIPE = 128, 64, 32
PERIOD = 4  # stripe period in pixels: a view of a crop of width w shows about w / 2 edges


# This file's settings over conftest.TINY_CONFIG.
CASE = dict(
    width_multiplier=0.125,
    image_size=SIDE,
    augment_on="device",
    train_batch_size=N_CIFAR + N_RAMP + 2 * N_STRIPE,
    seed=3,
    crop_sampler="uniform_area",  # what _expected_crop_side simulates
)


def _device_model(cfg: Config):
    model = train.build_model(cfg, 10)
    schedule = train.make_schedule_for(cfg, 1000)
    train.compile_model(cfg, model, train.build_optimizer_for(cfg, schedule))
    return model


@pytest.fixture(scope="module")
def images(cifar10_dir) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [256, 32, 32, 3] and kinds: 0 CIFAR, 1 ramp, 2 vertical / 3 horizontal stripes."""
    ds, _ = sources.load_split("image_folder", "test", data_dir=str(cifar10_dir))
    cifar = np.stack([x.numpy() for x, _ in ds.shuffle(2000, seed=0).take(N_CIFAR)])
    cols = np.arange(SIDE)
    # Gray (so hue, saturation and grayscale leave them alone) and away from 0 and 1 (so
    # brightness / contrast factors in [0.6, 1.4] never clip them flat).
    ramp = np.broadcast_to(0.25 + 0.3 * cols / (SIDE - 1), (SIDE, SIDE))
    stripes = np.broadcast_to(np.where(cols % PERIOD < PERIOD // 2, 0.3, 0.55), (SIDE, SIDE))

    def gray(img, count):
        return np.repeat(np.round(255 * np.stack([img] * 3, -1))[None], count, 0)

    imgs = np.concatenate(
        [cifar, gray(ramp, N_RAMP), gray(stripes, N_STRIPE), gray(stripes.T, N_STRIPE)]
    ).astype(np.uint8)
    kinds = np.repeat([0, 1, 2, 3], [N_CIFAR, N_RAMP, N_STRIPE, N_STRIPE]).astype(np.int32)
    return imgs, kinds


def _edges(profile: np.ndarray) -> int:
    centred = profile - profile.mean()
    return int(np.sum(np.sign(centred[1:]) * np.sign(centred[:-1]) < 0))


def _stats(views: np.ndarray, kinds: np.ndarray) -> dict[str, np.ndarray]:
    """Per-view statistics, by image kind (views float [n, 32, 32, 3])."""
    spread = views.max(axis=-1) - views.min(axis=-1)
    lum = views.mean(axis=-1)
    ramps = lum[kinds == 1]
    return {
        "brightness": views[kinds == 0].mean(axis=(1, 2, 3)),
        "gray": (spread[kinds == 0].max(axis=(1, 2)) < 1e-3).astype(float),
        "flipped": (ramps[:, :, -4:].mean((1, 2)) < ramps[:, :, :4].mean((1, 2))).astype(float),
        "width_edges": np.array([_edges(v.mean(0)) for v in lum[kinds == 2]], float),
        "height_edges": np.array([_edges(v.mean(1)) for v in lum[kinds == 3]], float),
    }


def _collect(batches) -> dict[str, np.ndarray]:
    out: dict[str, list] = {}
    for v1, v2, kinds in batches:
        for v in (v1, v2):
            for k, s in _stats(np.asarray(v), np.asarray(kinds)).items():
                out.setdefault(k, []).append(s)
    return {k: np.concatenate(v) for k, v in out.items()}


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / a.size
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def _expected_crop_side(rng: np.random.Generator, n: int = 200_000) -> float:
    """Mean crop side (pixels) of the Inception crop sampler on a square image, by NumPy
    Monte Carlo: area U(0.08, 1), log-uniform aspect in [3/4, 4/3], first of 100 draws that
    fits, else the whole image."""
    area = rng.uniform(0.08, 1.0, (n, 100)) * SIDE * SIDE
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), (n, 100)))
    w, h = np.round(np.sqrt(area * ratio)), np.round(np.sqrt(area / ratio))
    fits = (w <= SIDE) & (h <= SIDE) & (w >= 1) & (h >= 1)
    first = np.argmax(fits, axis=1)
    side = np.where(fits.any(1), w[np.arange(n), first], SIDE)
    return float(side.mean())


def test_device_views_have_the_host_pipeline_distributions(images):
    imgs, kinds = images
    cfg = tiny_config(CASE)
    source = tf.data.Dataset.from_tensor_slices((imgs, kinds))
    common = dict(
        batch_size=cfg.train_batch_size,
        image_size=cfg.image_size,
        color_jitter_strength=cfg.color_jitter_strength,
        use_blur=cfg.use_blur,
        seed=cfg.seed,
        crop_sampler=cfg.crop_sampler,
    )
    host = pipeline.pretrain_dataset(source, augment_on="host", **common)
    host_stats = _collect((v1.numpy(), v2.numpy(), y.numpy()) for (v1, v2), y in host.take(STEPS))

    model = _device_model(cfg)
    decoded = pipeline.pretrain_dataset(source, augment_on="device", **common)
    device_batches = []
    for step, (x, y) in enumerate(decoded.take(STEPS)):
        assert x.dtype == tf.uint8 and x.shape == (cfg.train_batch_size, SIDE, SIDE, 3)
        model.optimizer.iterations.assign(step)
        v1, v2 = model._device_views(x)
        device_batches.append((v1.numpy(), v2.numpy(), y.numpy()))
    dev_stats = _collect(device_batches)

    assert dev_stats["brightness"].size == host_stats["brightness"].size == 2 * STEPS * N_CIFAR
    # Brightness: the whole distribution (colour strength 0.5 vs 1.0 would fail this).
    assert _ks(dev_stats["brightness"], host_stats["brightness"]) < 0.08
    for key, p in (("gray", 0.2), ("flipped", 0.5)):
        assert abs(dev_stats[key].mean() - p) < 0.06, key
        assert abs(host_stats[key].mean() - p) < 0.06, key
        assert abs(dev_stats[key].mean() - host_stats[key].mean()) < 0.08, key
    expected_edges = _expected_crop_side(np.random.default_rng(0)) / (PERIOD / 2)
    for key in ("width_edges", "height_edges"):
        assert _ks(dev_stats[key], host_stats[key]) < 0.12, key
        for stats in (dev_stats, host_stats):
            assert abs(stats[key].mean() - expected_edges) < 0.1 * expected_edges, key
    # Views are float32 in [0, 1] at the configured size on both paths.
    v1 = device_batches[0][0]
    assert v1.dtype == np.float32 and v1.shape[1:] == (SIDE, SIDE, 3)
    assert v1.min() >= 0.0 and v1.max() <= 1.0


def _position_images(sizes: list[tuple[int, int]]) -> tf.data.Dataset:
    """Variable-size images whose red channel is the row and green the column fraction;
    the label is the index of the size in ``sizes`` modulo 3."""

    def gen():
        for k, (h, w) in enumerate(sizes):
            rows = np.broadcast_to((np.arange(h)[:, None] + 0.5) / h, (h, w))
            cols = np.broadcast_to((np.arange(w)[None, :] + 0.5) / w, (h, w))
            img = np.stack([rows, cols, np.full((h, w), 0.5)], -1)
            yield np.round(255 * img).astype(np.uint8), np.int32(k % 3)

    spec = (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32))
    return tf.data.Dataset.from_generator(gen, output_signature=spec)


@pytest.mark.parametrize("sampler", ["reference", "uniform_area"])
def test_device_views_of_variable_size_images_keep_the_crop_aspect(sampler):
    # Wide (2:1) and tall images: the crops sent to the device are boxes of the ORIGINAL image
    # (aspect 3/4..4/3 there), not of an image squashed to a square (which would give crops
    # of aspect 1.5..2.7 on the wide images).
    size, batch = 24, 32
    sizes = [(60, 120), (120, 60), (90, 100)] * 32
    ds = pipeline.pretrain_dataset(
        _position_images(sizes),
        batch_size=batch,
        image_size=size,
        color_jitter_strength=1.0,
        use_blur=True,
        seed=5,
        augment_on="device",
        crop_sampler=sampler,
    )
    batches = list(ds.take(3))  # shuffled: the label tells the size
    crops = np.concatenate([x.numpy() for x, _ in batches]).astype(np.float64) / 255.0
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert crops.shape == (3 * batch, 2, size, size, 3)
    # The row / column fractions a crop spans: its box height / H and width / W.
    span_rows = crops[..., -1, :, 0].mean(-1) - crops[..., 0, :, 0].mean(-1)
    span_cols = crops[..., :, -1, 1].mean(-1) - crops[..., :, 0, 1].mean(-1)
    image_hw = np.array(sizes, np.float64)[labels]
    box_h = span_rows * image_hw[:, :1] * size / (size - 1)
    box_w = span_cols * image_hw[:, 1:] * size / (size - 1)
    aspect = box_w / box_h
    assert aspect.min() > 0.75 * 0.9 and aspect.max() < 4 / 3 * 1.1
    # The device turns the crops into views: float [B, S, S, 3] in [0, 1], per-view randomness.
    model = _device_model(tiny_config(CASE, image_size=size, crop_sampler=sampler, use_blur=True))
    model.optimizer.iterations.assign(0)
    v1, v2 = model._device_views(tf.constant(np.round(crops * 255).astype(np.uint8)[:batch]))
    assert v1.shape == (batch, size, size, 3) and v1.dtype == tf.float32
    assert float(tf.reduce_min(v1)) >= 0.0 and float(tf.reduce_max(v1)) <= 1.0
    assert not np.allclose(v1.numpy(), v2.numpy())


def test_device_seeds_differ_per_step_and_repeat_for_the_same_step(images):
    imgs, _ = images
    x = tf.constant(imgs[:16])
    model = _device_model(tiny_config(CASE))
    model.optimizer.iterations.assign(5)
    a1, a2 = model._device_views(x)
    b1, _ = model._device_views(x)
    np.testing.assert_array_equal(a1.numpy(), b1.numpy())  # same seed and step: same views
    assert not np.allclose(a1.numpy(), a2.numpy())  # the two views differ
    model.optimizer.iterations.assign(6)
    c1, _ = model._device_views(x)
    assert not np.allclose(a1.numpy(), c1.numpy())  # a new step: new views
    other = _device_model(tiny_config(CASE, seed=4))
    other.optimizer.iterations.assign(5)
    d1, _ = other._device_views(x)
    assert not np.allclose(a1.numpy(), d1.numpy())  # another --seed: other views


def test_device_seeds_differ_per_replica(images):
    imgs, _ = images
    x = tf.constant(imgs[:8])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = _device_model(tiny_config(CASE))
    out = strategy.run(tf.function(model._device_views), args=(x,))
    first = [t.numpy() for t in strategy.experimental_local_results(out[0])]
    assert len(first) == 2
    assert not np.allclose(first[0], first[1])  # same images on both replicas, other views


def _tiny_folder(cifar10_dir, root, per_class: dict[str, int]):
    for split, count in per_class.items():
        for cls_dir in sorted((cifar10_dir / split).iterdir()):
            dest = root / split / cls_dir.name
            dest.mkdir(parents=True)
            for f in sorted(cls_dir.iterdir())[:count]:
                shutil.copy(f, dest / f.name)


@pytest.mark.slow
def test_run_py_with_device_augmentation_bfloat16_and_gradient_caching(
    cifar10_dir, tmp_path, run_cli
):
    data = tmp_path / "data"
    _tiny_folder(cifar10_dir, data, {"train": 4, "test": 2})
    model_dir = tmp_path / "run"
    cmd = [
        "--mode=train_then_eval",
        "--dataset=image_folder",
        f"--data_dir={data}",
        f"--model_dir={model_dir}",
        "--resnet_depth=18",
        "--width_multiplier=0.125",
        "--train_batch_size=16",
        "--train_steps=2",
        "--eval_batch_size=20",
        "--augment_on=device",
        "--mixed_precision=bfloat16",
        "--micro_batch_size=8",
        "--export_saved_model=false",
        "--verbose=0",
        # The crops this loss bound was set with (the reference sampler's smaller crops give
        # harder positives: 4.66 after 2 steps here, vs 4.02 with these; ln 31 = 3.43).
        "--crop_sampler=uniform_area",
    ]
    proc = run_cli(*cmd, expect=None, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    flags = json.loads((model_dir / "flags.json").read_text())
    assert flags["augment_on"] == "device" and flags["micro_batch_size"] == 8
    result = json.loads((model_dir / "result.json").read_text())
    assert result["global_step"] == 2 and result["num_examples"] == 20
    with open(model_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    loss = float(rows[-1]["contrast_loss"])
    # At (near) random init NT-Xent is about ln(2N - 1) per anchor, N = 16.
    assert math.isfinite(loss) and abs(loss - math.log(31)) < 1.0
