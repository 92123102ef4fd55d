"""simclr_tf.data.pipeline: structure, value ranges, label alignment, determinism, coverage.

Reference values come from constructions with known answers: constant-colour images stay
constant under crops, flips and resizes, so a view's pixel value identifies its source image
and must agree with the label the pipeline paired it with.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.data import augment
from simclr_tf.data.pipeline import (
    distribute,
    eval_dataset,
    finetune_dataset,
    per_replica_batch_size,
    pretrain_dataset,
)
from simclr_tf.data.sources import DataError, load_split

N, K = 12, 3  # examples, classes


def _ids(n: int = N) -> np.ndarray:
    return (np.arange(n) * 20 + 10).astype(np.uint8)  # distinct constant pixel values


def _label(pixel_value: float) -> int:
    """The label _constant_ds gives to the image of this (0-255) constant value."""
    return int(round((pixel_value - 10) / 20)) % K


def _constant_ds(n: int = N, variable: bool = False) -> tf.data.Dataset:
    """Constant images (value = id) with label id % K; variable=True gives per-image sizes."""
    ids = _ids(n)
    if not variable:
        x = np.broadcast_to(ids[:, None, None, None], (n, 6, 6, 3)).copy()
        labels = (np.arange(n) % K).astype(np.int32)
        return tf.data.Dataset.from_tensor_slices((x, labels))

    def gen():
        for i, v in enumerate(ids):
            h, w = 5 + i % 4, 6 + (i * 3) % 5
            yield np.full((h, w, 3), v, np.uint8), np.int32(i % K)

    spec = (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32))
    return tf.data.Dataset.from_generator(gen, output_signature=spec)


def _take(ds: tf.data.Dataset, k: int) -> list:
    return list(ds.take(k).as_numpy_iterator())


def _check_aligned(images: np.ndarray, labels: np.ndarray, tol: float = 1.5) -> list[int]:
    """Every image is one constant colour whose id maps to its label; returns the ids."""
    found = []
    for img, y in zip(images, labels, strict=True):
        levels = img.astype(np.float64) * (255.0 if img.dtype != np.uint8 else 1.0)
        v = float(levels.mean())
        assert np.abs(levels - v).max() <= tol
        assert _label(v) == int(y)
        found.append(int(round((v - 10) / 20)))
    return found


# ------------------------------------------------------------------------------- pretraining


@pytest.mark.parametrize("variable", [False, True])
def test_pretrain_structure_ranges_epoch(variable):
    ds = pretrain_dataset(
        _constant_ds(variable=variable),
        batch_size=4,
        image_size=8,
        color_jitter_strength=0.5,
        use_blur=False,
        seed=1,
        cache=True,
    )
    spec = ds.element_spec
    assert spec[0][0].shape.as_list() == [4, 8, 8, 3] and spec[0][0].dtype == tf.float32
    assert spec[1].shape.as_list() == [4] and spec[1].dtype == tf.int32
    batches = _take(ds, N // 4 + 1)  # one epoch and one batch of the next
    for (v1, v2), _ in batches:
        for v in (v1, v2):
            assert v.min() >= 0.0 and v.max() <= 1.0
        assert not np.allclose(v1, v2)  # independently augmented
    labels = np.concatenate([y for _, y in batches[: N // 4]])
    # The first N examples are exactly one epoch: every label as often as in the source.
    assert collections.Counter(labels.tolist()) == collections.Counter((np.arange(N) % K).tolist())


@pytest.mark.parametrize("variable", [False, True])
def test_pretrain_deterministic(variable):
    """One noise image repeated: batches can only differ through the augmentation seeds."""
    noise = np.random.default_rng(0).integers(0, 256, (10, 10, 3), np.uint8)
    shape = [None, None, 3] if variable else list(noise.shape)
    src = tf.data.Dataset.from_generator(
        lambda: ((noise, np.int32(1)) for _ in range(N)),
        output_signature=(tf.TensorSpec(shape, tf.uint8), tf.TensorSpec([], tf.int32)),
    )
    assert src.element_spec[0].shape.is_fully_defined() is not variable

    def first(seed):
        ds = pretrain_dataset(
            src, batch_size=4, image_size=8, color_jitter_strength=1.0, use_blur=True, seed=seed
        )
        return _take(ds, 2)

    a, b, c = first(7), first(7), first(8)
    for (va, ya), (vb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(va[0], vb[0])
        np.testing.assert_array_equal(va[1], vb[1])
    assert not np.array_equal(a[0][0][0], c[0][0][0])  # another seed, other views
    assert not np.array_equal(a[1][0][0], a[0][0][0])  # each batch has its own seed
    views = a[0][0][0]
    assert not np.array_equal(views[0], views[1])  # and each example within a batch


def test_pretrain_on_device_fixed_size_keeps_pixels():
    ds = pretrain_dataset(
        _constant_ds(),
        batch_size=4,
        image_size=8,
        color_jitter_strength=0.5,
        use_blur=False,
        seed=0,
        augment_on="device",
    )
    assert ds.element_spec[0].shape.as_list() == [4, 6, 6, 3]
    assert ds.element_spec[0].dtype == tf.uint8
    batches = _take(ds, N // 4)
    ids = sum((_check_aligned(x, y, tol=0) for x, y in batches), [])
    assert sorted(ids) == list(range(N))  # one epoch: each image exactly once


def test_pretrain_on_device_variable_size_sends_crops():
    # Variable-size images: the host draws both crop boxes from each image's true size (no
    # square resize that would change aspect ratios) and sends the resized crops as uint8.
    ds = pretrain_dataset(
        _constant_ds(variable=True),
        batch_size=3,
        image_size=14,
        color_jitter_strength=0.5,
        use_blur=False,
        seed=0,
        augment_on="device",
    )
    assert ds.element_spec[0].shape.as_list() == [3, 2, 14, 14, 3]
    for x, y in _take(ds, N // 3):
        assert x.dtype == np.uint8
        for view in (0, 1):
            _check_aligned(x[:, view], y, tol=1)  # a resized constant crop is the same constant


# ------------------------------------------------------------------------------- fine-tuning


@pytest.mark.parametrize("variable", [False, True])
def test_finetune_aligned_and_deterministic(variable):
    def make(seed):
        return finetune_dataset(
            _constant_ds(variable=variable), batch_size=4, image_size=5, seed=seed, cache=True
        )

    ds = make(3)
    assert ds.element_spec[0].shape.as_list() == [4, 5, 5, 3]
    batches = _take(ds, N // 4)
    ids = sum((_check_aligned(x, y) for x, y in batches), [])
    assert sorted(ids) == list(range(N))
    again = _take(make(3), N // 4)
    for (xa, ya), (xb, yb) in zip(batches, again, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    other = _take(make(4), N // 4)
    assert any(not np.array_equal(ya, yb) for (_, ya), (_, yb) in zip(batches, other, strict=True))


def test_finetune_crops_and_flips():
    """A left/right gradient: crops change the values, flips reverse the gradient direction."""
    ramp = np.tile(np.linspace(0, 255, 16).astype(np.uint8)[None, :, None], (16, 1, 3))
    src = tf.data.Dataset.from_tensors((ramp, np.int32(0))).repeat(64)
    ((x, _),) = _take(finetune_dataset(src, batch_size=64, image_size=16, seed=0), 1)
    slope = x[:, :, -1, 0].mean(axis=1) - x[:, :, 0, 0].mean(axis=1)
    assert (slope > 0).any() and (slope < 0).any()  # some flipped, some not
    assert len({round(float(v), 3) for v in np.abs(slope)}) > 5  # different crop widths


# ------------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("variable", [False, True])
def test_eval_every_example_once_with_partial_batch(variable):
    n = 11
    ds = eval_dataset(_constant_ds(n, variable=variable), batch_size=4, image_size=6, cache=True)
    for _ in range(2):  # no repeat: a second pass gives the same single epoch
        batches = list(ds.as_numpy_iterator())
        assert [len(y) for _, y in batches] == [4, 4, 3]
        ids = sum((_check_aligned(x, y) for x, y in batches), [])
        assert ids == list(range(n))  # in order, once each
        assert all(x.dtype == np.float32 and x.shape[1:] == (6, 6, 3) for x, _ in batches)


def test_eval_matches_per_image_eval_view():
    """Batched eval (fixed-size path) equals eval_view applied image by image."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 40, 40, 3), np.uint8)
    ds = eval_dataset(
        tf.data.Dataset.from_tensor_slices((x, np.arange(5, dtype=np.int32))),
        batch_size=2,
        image_size=36,
    )
    got = np.concatenate([b for b, _ in ds.as_numpy_iterator()])
    ref = np.stack([augment.eval_view(tf.constant(img), 36).numpy() for img in x])
    np.testing.assert_allclose(got, ref, atol=1e-5)


# ------------------------------------------------------------------------------- distribution


def test_per_replica_batch_size():
    assert per_replica_batch_size(256, 2) == 128
    assert per_replica_batch_size(7, 1) == 7
    with pytest.raises(DataError, match=r"not divisible by the 4 replicas.*=8 or 12"):
        per_replica_batch_size(10, 4)
    with pytest.raises(DataError, match=">= 1"):
        per_replica_batch_size(0, 2)


@pytest.fixture(scope="module")
def strategy():
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs the 2 logical CPUs configured in conftest.py")
    return tf.distribute.MirroredStrategy([d.name for d in devices[:2]])


def test_distribute_eval_covers_epoch_once(strategy):
    n, global_batch = 11, 4
    seen = []

    def fn(ctx):
        b = ctx.get_per_replica_batch_size(global_batch)
        seen.append((ctx.num_replicas_in_sync, b))
        return eval_dataset(_constant_ds(n), batch_size=b, image_size=6)

    ids = []
    for x, y in distribute(strategy, fn):
        xs = strategy.experimental_local_results(x)
        ys = strategy.experimental_local_results(y)
        for xr, yr in zip(xs, ys, strict=True):
            ids += _check_aligned(xr.numpy(), yr.numpy())
    assert seen == [(2, 2)]
    assert sorted(ids) == list(range(n))


def test_distribute_pretrain_per_replica_batches(strategy):
    def fn(ctx):
        return pretrain_dataset(
            _constant_ds(),
            batch_size=ctx.get_per_replica_batch_size(8),
            image_size=8,
            color_jitter_strength=0.5,
            use_blur=False,
            seed=0,
        )

    (v1, _), y = next(iter(distribute(strategy, fn)))
    shapes = [t.shape.as_list() for t in strategy.experimental_local_results(v1)]
    assert shapes == [[4, 8, 8, 3], [4, 8, 8, 3]]
    assert sum(len(t) for t in strategy.experimental_local_results(y)) == 8
    with pytest.raises(DataError, match="must return a tf.data.Dataset"):
        distribute(strategy, lambda ctx: [1, 2])


# ------------------------------------------------------------------------------- errors, data


def test_argument_errors():
    ds = _constant_ds()
    kw = dict(batch_size=4, image_size=8, color_jitter_strength=0.5, use_blur=False, seed=0)
    with pytest.raises(DataError, match="augment_on must be one of"):
        pretrain_dataset(ds, augment_on="tpu", **kw)
    with pytest.raises(DataError, match="batch_size must be a positive int"):
        pretrain_dataset(ds, **{**kw, "batch_size": 0})
    with pytest.raises(DataError, match=r"unbatched \(image \[H, W, 3\], label\)"):
        eval_dataset(ds.batch(2), batch_size=2, image_size=8)
    with pytest.raises(DataError, match="shuffle_buffer must be >= 1"):
        finetune_dataset(ds, batch_size=2, image_size=8, seed=0, shuffle_buffer=0)


def test_cifar10_folder_pipelines(cifar10_dir):
    src, info = load_split(
        "image_folder", "train", str(cifar10_dir), train_data_fraction=0.0016, fraction_seed=0
    )
    assert info.split_sizes["train"] == 80
    ds = pretrain_dataset(
        src,
        batch_size=16,
        image_size=32,
        color_jitter_strength=0.5,
        use_blur=False,
        seed=0,
        cache=True,
    )
    batches = _take(ds, 5)  # exactly one epoch of the 80-image subset
    labels = np.concatenate([y for _, y in batches])
    assert collections.Counter(labels.tolist()) == {k: 8 for k in range(10)}
    (v1, v2), _ = batches[0]
    assert v1.shape == (16, 32, 32, 3) and v1.min() >= 0.0 and v2.max() <= 1.0


@pytest.mark.parametrize("variable", [False, True])
def test_pretrain_row_i_views_and_label_come_from_one_image(variable):
    """Grey constant images with colour strength 0: crops, flips, grayscale and blur keep each
    image's value, so view 1, view 2 and the label of every row must name the same image."""
    ds = pretrain_dataset(
        _constant_ds(variable=variable),
        batch_size=4,
        image_size=8,
        color_jitter_strength=0.0,
        use_blur=True,
        seed=3,
    )
    seen = []
    for (v1, v2), y in _take(ds, 2 * N // 4):  # two epochs
        ids1, ids2 = _check_aligned(v1, y), _check_aligned(v2, y)
        assert ids1 == ids2
        seen += ids1
    assert sorted(seen) == sorted(2 * list(range(N)))  # every image, each once per epoch
