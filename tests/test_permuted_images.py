"""Pretraining on variable-size image folders reads files by index, a fresh permutation per pass.

No shuffle buffer of decoded images (at ImageNet size the old 10,000-image buffer held ~5 GB):
each pass uses every file once, passes differ, a resumed run continues its pass, the local
stream is the tf.data service source's, and a corrupt file is named with its path.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from simclr_tf import data_service, train
from simclr_tf.data import image_folder, image_list, pipeline

# Every file has its own size, so the decoded image tells which file it is.
SIZES = [(20 + 3 * k, 41 - 2 * k) for k in range(9)]
CLASSES = ("a", "b", "c")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("variable")
    rng = np.random.default_rng(3)
    for k, (h, w) in enumerate(SIZES):
        cls = root / "train" / CLASSES[k % 3]
        cls.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        (cls / f"img{k}.png").write_bytes(tf.io.encode_png(image).numpy())
    return root


def _selection(root, seed=0):
    return image_folder.select_folder_split(
        str(root), "train", 1.0, seed, shuffle_files=True, input_context=None
    )


def _stream(selection, count, seed=4, start_index=0):
    ds = image_list.permuted_images(
        selection.split_dir,
        selection.rel_paths,
        selection.labels,
        seed=seed,
        start_index=start_index,
    )
    return [(int(i), tuple(x.shape[:2]), int(y)) for i, (x, y) in ds.take(count)]


def test_each_pass_uses_every_file_once_in_a_new_order(folder):
    selection = _selection(folder)
    assert selection.shape is None  # variable-size: the permuted path
    n = len(SIZES)
    got = _stream(selection, 3 * n)
    assert [i for i, _, _ in got] == list(range(3 * n))
    label_of = {size: SIZES.index(size) % 3 for size in SIZES}
    passes = [[size for _, size, _ in got[p * n : (p + 1) * n]] for p in range(3)]
    for files in passes:
        assert sorted(files) == sorted(SIZES)  # each file exactly once per pass
    assert passes[0] != passes[1] != passes[2]  # a fresh permutation each pass
    assert all(y == label_of[size] for _, size, y in got)
    # The permutation is the seed's: another seed, another order; the same seed, the same.
    assert _stream(selection, n, seed=5) != got[:n]
    assert _stream(selection, n) == got[:n]


def test_a_stream_started_at_k_continues_the_pass(folder):
    selection = _selection(folder)
    whole = _stream(selection, 20)
    assert _stream(selection, 13, start_index=7) == whole[7:]


def test_local_stream_is_the_tf_data_service_source(folder):
    """Two code paths, one rule: the service's source holds the paths as a graph constant,
    the local stream reads them from the list file through a lookup table."""
    selection = _selection(folder)
    served = data_service.indexed_folder_stream(selection, batch_size=3, seed=4, start_batch=0)
    want = [(int(i), tuple(x.shape[:2]), int(y)) for i, (x, y) in served.take(20)]
    assert _stream(selection, 20) == want


def test_a_corrupt_file_is_named_with_its_path(folder, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    victim = data / "train" / "b" / "img4.png"
    victim.write_bytes(victim.read_bytes()[:40])  # truncated
    selection = _selection(data)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        _stream(selection, len(SIZES))
    assert str(victim) in str(info.value) and "replace or delete it" in str(info.value)


def test_pretraining_resumes_its_pass_over_the_files(folder):
    """train.train_dataset takes the permuted path for a variable-size folder: step k of a
    resumed run is step k of an uninterrupted one (same images, same views)."""
    cfg = tiny_config(
        dataset="image_folder",
        data_dir=str(folder),
        train_split="train",
        train_batch_size=4,
        image_size=16,
        augment_on="host",
        use_blur=True,
    )
    strategy = tf.distribute.get_strategy()
    whole = list(itertools.islice(train.train_dataset(cfg, strategy, start_step=0), 4))
    resumed = list(itertools.islice(train.train_dataset(cfg, strategy, start_step=2), 2))
    for ((a1, a2), ya), ((b1, b2), yb) in zip(whole[2:], resumed, strict=True):
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
        np.testing.assert_allclose(a1.numpy(), b1.numpy(), atol=1e-6)
        np.testing.assert_allclose(a2.numpy(), b2.numpy(), atol=1e-6)
    # Those batches are the permuted stream augmented as the host pipeline does.
    selection = _selection(folder, seed=cfg.seed)
    indexed = image_list.permuted_images(
        selection.split_dir, selection.rel_paths, selection.labels, seed=cfg.seed
    )
    direct = pipeline.augment_indexed(
        indexed,
        fixed=False,
        batch_size=4,
        image_size=16,
        color_jitter_strength=cfg.color_jitter_strength,
        use_blur=True,
        seed=cfg.seed,
        crop_sampler=cfg.crop_sampler,
        color_jitter_impl=cfg.color_jitter_impl,
    )
    for ((a1, _), ya), ((d1, _), yd) in zip(whole, direct.take(4), strict=True):
        np.testing.assert_array_equal(ya.numpy(), yd.numpy())
        np.testing.assert_allclose(a1.numpy(), d1.numpy(), atol=1e-6)
