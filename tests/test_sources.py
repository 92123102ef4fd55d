"""simclr_tf.data.sources against files written here with PIL (the reference pixels and labels)."""

from __future__ import annotations

import collections
import pathlib
import socket

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from simclr_tf.data import image_folder
from simclr_tf.data.sources import UNLABELLED, DataError, dataset_info, load_split

# ------------------------------------------------------------------------------- helpers


def _save(path: pathlib.Path, array: np.ndarray, fmt: str | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return array


def _rgb(array: np.ndarray) -> np.ndarray:
    return np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else array


def _items(ds: tf.data.Dataset) -> list[tuple[np.ndarray, int]]:
    return [(x, int(y)) for x, y in ds.as_numpy_iterator()]


def _constant_folder(root: pathlib.Path, counts: dict[str, int], side: int = 4) -> dict[int, str]:
    """PNG files whose constant pixel value is a unique id; returns id -> 'class/file'."""
    ids = {}
    next_id = 1
    for cls, n in counts.items():
        for k in range(n):
            name = f"{k:03d}.png"
            _save(root / "train" / cls / name, np.full((side, side, 3), next_id, np.uint8))
            ids[next_id] = f"{cls}/{name}"
            next_id += 1
    return ids


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[pathlib.Path, dict[str, np.ndarray]]:
    """Mixed sizes, a grayscale PNG, upper-case extensions, a JPEG, junk files to ignore."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    px = {}
    specs = {  # key -> (array, PIL format or None for the extension's)
        "train/cat/0.png": (rng.integers(0, 256, (6, 5, 3), np.uint8), None),
        "train/cat/1.PNG": (rng.integers(0, 256, (4, 7), np.uint8), "PNG"),  # grayscale
        "train/cat/2.jpg": (np.full((8, 8, 3), 90, np.uint8), None),
        "train/ant/b.png": (rng.integers(0, 256, (3, 3, 3), np.uint8), None),
        "train/ant/a.png": (rng.integers(0, 256, (5, 5, 3), np.uint8), None),
        "train/dog/x.JPEG": (np.full((7, 9, 3), 200, np.uint8), "JPEG"),
        "train/dog/y.png": (rng.integers(0, 256, (2, 4, 3), np.uint8), None),
        "test/dog/u.png": (rng.integers(0, 256, (4, 4, 3), np.uint8), None),
    }
    for key, (array, fmt) in specs.items():
        px[key] = _save(root / key, array, fmt)
    (root / "train/cat/notes.txt").write_text("not an image")
    _save(root / "train/.ipynb_checkpoints/z.png", np.zeros((2, 2, 3), np.uint8))
    return root, px


# ------------------------------------------------------------------------------- image folder


def test_folder_labels_order_values(tiny):
    root, px = tiny
    ds, info = load_split("image_folder", "train", str(root))
    assert info.class_names == ("ant", "cat", "dog")
    assert info.num_classes == 3
    assert info.split_sizes == {"train": 7, "test": 1}
    assert info.image_shape is None  # sizes differ
    assert ds.element_spec[0].dtype == tf.uint8 and ds.element_spec[1].dtype == tf.int32
    expected = [
        ("train/ant/a.png", 0),
        ("train/ant/b.png", 0),
        ("train/cat/0.png", 1),
        ("train/cat/1.PNG", 1),
        ("train/cat/2.jpg", 1),
        ("train/dog/x.JPEG", 2),
        ("train/dog/y.png", 2),
    ]
    got = _items(ds)
    assert [y for _, y in got] == [y for _, y in expected]
    for (img, _), (key, _) in zip(got, expected, strict=True):
        ref = _rgb(px[key])
        assert img.shape == ref.shape, key
        if key.lower().endswith(".png"):
            np.testing.assert_array_equal(img, ref, err_msg=key)  # lossless
        else:
            assert np.abs(img.astype(int) - ref).max() <= 2, key  # JPEG of a flat colour
    # The grayscale PNG became 3 identical channels.
    gray = got[3][0]
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    assert int(ds.cardinality()) == 7


def test_folder_test_split_uses_train_classes(tiny):
    root, px = tiny
    ds, info = load_split("image_folder", "test", str(root))
    ((img, label),) = _items(ds)
    assert label == 2  # 'dog' is class 2 of the *train* classes, though test only has dog
    np.testing.assert_array_equal(img, px["test/dog/u.png"])
    assert info.class_names == ("ant", "cat", "dog") and info.split_sizes["test"] == 1


def test_dataset_info_folder(tiny):
    root, _ = tiny
    info = dataset_info("image_folder", str(root))
    assert info.split_sizes == {"train": 7, "test": 1}
    assert info.class_names == ("ant", "cat", "dog")
    assert info.num_examples("train") == 7
    with pytest.raises(DataError, match="Known splits"):
        info.num_examples("validation")


def test_fixed_size_folder_has_static_shape(tmp_path):
    _constant_folder(tmp_path, {"a": 2, "b": 3}, side=5)
    ds, info = load_split("image_folder", "train", str(tmp_path))
    assert info.image_shape == (5, 5, 3)
    assert ds.element_spec[0].shape.as_list() == [5, 5, 3]
    assert [int(x[0, 0, 0]) for x, _ in _items(ds)] == [1, 2, 3, 4, 5]


def test_odd_size_image_named(tmp_path, monkeypatch):
    _constant_folder(tmp_path, {"a": 3}, side=4)
    _save(tmp_path / "train/a/002.png", np.zeros((4, 6, 3), np.uint8))  # differs, not sampled
    monkeypatch.setattr(image_folder, "_SHAPE_SAMPLE", 1)
    ds, info = load_split("image_folder", "train", str(tmp_path))
    assert info.image_shape == (4, 4, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"002\.png.*another size"):
        _items(ds)


@pytest.mark.parametrize("bad_name", ["a/001.jpg", "b/999.png"])  # middle and very last file
def test_corrupt_image_named(tmp_path, bad_name):
    _constant_folder(tmp_path, {"a": 3, "b": 2})
    bad = tmp_path / "train" / bad_name
    if bad.suffix == ".jpg":
        buf = tmp_path / "tmp.jpg"
        _save(buf, np.full((16, 16, 3), 7, np.uint8), "JPEG")
        bad.write_bytes(buf.read_bytes()[:40])  # truncated JPEG
        buf.unlink()
    else:
        bad.write_bytes(b"<html>not found</html>")
    ds, _ = load_split("image_folder", "train", str(tmp_path))
    with pytest.raises(tf.errors.InvalidArgumentError, match=bad.name.replace(".", r"\.")):
        _items(ds)


def test_folder_errors(tmp_path, tiny):
    root, _ = tiny
    with pytest.raises(DataError, match="needs --data_dir"):
        load_split("image_folder", "train", None)
    with pytest.raises(DataError, match="does not exist"):
        load_split("image_folder", "train", str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"Splits found.*\['test', 'train'\]"):
        load_split("image_folder", "validation", str(root))
    with pytest.raises(DataError, match="No images found"):
        load_split("image_folder", "train", str(tmp_path))  # empty root
    with pytest.raises(DataError, match="pass its parent"):
        load_split("image_folder", "train", str(root / "train"))  # a split folder, not ROOT
    with pytest.raises(DataError, match=r"train_data_fraction must be in \(0, 1\]"):
        load_split("image_folder", "train", str(root), train_data_fraction=0.0)


def test_empty_class_and_unknown_class(tmp_path):
    _constant_folder(tmp_path, {"a": 2, "b": 1})
    (tmp_path / "train/c").mkdir()
    (tmp_path / "train/c/readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"train/c'\] hold no images"):
        load_split("image_folder", "train", str(tmp_path))
    (tmp_path / "train/c/readme.txt").unlink()
    (tmp_path / "train/c").rmdir()
    _save(tmp_path / "test/zebra/0.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"\['zebra'\].*train split"):
        load_split("image_folder", "test", str(tmp_path))


def test_fraction_balanced_reproducible(tmp_path):
    counts = {"a": 10, "b": 7, "c": 1, "d": 5}
    ids = _constant_folder(tmp_path, counts)

    def chosen(fraction, seed):
        ds, info = load_split(
            "image_folder",
            "train",
            str(tmp_path),
            train_data_fraction=fraction,
            fraction_seed=seed,
        )
        items = [(int(x[0, 0, 0]), y) for x, y in _items(ds)]
        assert info.split_sizes["train"] == len(items)
        return items

    fraction = 0.3
    got = chosen(fraction, seed=0)
    per_class = collections.Counter(y for _, y in got)
    expected = [max(1, round(fraction * n)) for n in counts.values()]  # 3, 2, 1, 2 (1.5 -> 2)
    assert [per_class[k] for k in range(4)] == expected
    for pid, y in got:  # each chosen file really belongs to its label's class
        assert ids[pid].split("/")[0] == "abcd"[y]
    assert got == chosen(fraction, seed=0)  # same seed, same files, same order
    other = chosen(fraction, seed=1)
    assert {p for p, _ in other} != {p for p, _ in got}
    assert collections.Counter(y for _, y in other) == per_class
    # A smaller fraction is a subset of a larger one with the same seed.
    assert {p for p, _ in chosen(0.15, seed=0)} <= {p for p, _ in got}
    assert {p for p, _ in got} <= {p for p, _ in chosen(0.6, seed=0)}
    assert len(chosen(1.0, seed=5)) == sum(counts.values())


def test_max_examples_caps_by_a_class_balanced_fraction(tmp_path):
    counts = {"a": 10, "b": 10, "c": 10, "d": 10}
    _constant_folder(tmp_path, counts)
    capped, info = load_split("image_folder", "train", str(tmp_path), max_examples=8)
    labels = collections.Counter(int(y) for _, y in _items(capped))
    assert dict(labels) == {0: 2, 1: 2, 2: 2, 3: 2}  # 8/40 of each class, not the first 8 files
    assert info.split_sizes["train"] == 8
    same, _ = load_split("image_folder", "train", str(tmp_path), train_data_fraction=0.2)
    assert [x[0, 0, 0] for x, _ in _items(same)] == [x[0, 0, 0] for x, _ in _items(capped)]
    # A cap above the split size changes nothing; with a fraction the smaller one wins.
    whole, _ = load_split("image_folder", "train", str(tmp_path), max_examples=100)
    assert len(_items(whole)) == 40
    both, _ = load_split(
        "image_folder", "train", str(tmp_path), train_data_fraction=0.1, max_examples=20
    )
    assert len(_items(both)) == 4


def test_shuffle_files_and_sharding(tmp_path):
    ids = _constant_folder(tmp_path, {"a": 6, "b": 5})
    ds, _ = load_split("image_folder", "train", str(tmp_path))
    plain = [int(x[0, 0, 0]) for x, _ in _items(ds)]
    assert plain == sorted(ids)

    def shuffled(seed):
        ds, _ = load_split(
            "image_folder", "train", str(tmp_path), shuffle_files=True, fraction_seed=seed
        )
        return [(int(x[0, 0, 0]), y) for x, y in _items(ds)]

    a = shuffled(3)
    assert a == shuffled(3) and [p for p, _ in a] != plain and sorted(p for p, _ in a) == plain
    assert all(ids[p].startswith("ab"[y]) for p, y in a)  # labels travel with their files

    shards = []
    for k in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=k)
        ds, info = load_split("image_folder", "train", str(tmp_path), input_context=ctx)
        shards.append([int(x[0, 0, 0]) for x, _ in _items(ds)])
        assert info.split_sizes["train"] == 11  # global size, not the shard's
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == plain


def test_header_size_reader(tmp_path):
    """The cheap header parser agrees with PIL on PNG and (progressive) JPEG files."""
    arr = np.zeros((13, 21, 3), np.uint8)
    for name, kwargs in [("a.png", {}), ("b.jpg", {}), ("c.jpg", {"progressive": True})]:
        Image.fromarray(arr).save(tmp_path / name, **kwargs)
        assert image_folder._read_header_size(str(tmp_path / name)) == (13, 21)
    (tmp_path / "d.jpg").write_bytes(b"\xff\xd8\xff")
    assert image_folder._read_header_size(str(tmp_path / "d.jpg")) is None


# ------------------------------------------------------------------------------- TFDS


@pytest.fixture
def no_network(monkeypatch):
    """Any socket use fails the test: TFDS must not reach GCS or download anything."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_tfds_unprepared_and_unknown(tmp_path, no_network):
    with pytest.raises(DataError, match=r"not prepared.*tfds build cifar10 --data_dir="):
        load_split("cifar10", "train", str(tmp_path))
    with pytest.raises(DataError, match="tfds build cifar10"):
        dataset_info("cifar10", str(tmp_path))
    with pytest.raises(DataError, match=r"Unknown dataset 'cifar1O'.*cifar10"):
        load_split("cifar1O", "train", str(tmp_path))
    with pytest.raises(DataError, match="namespaced"):
        load_split("huggingface:mnist", "train", str(tmp_path))
    from tensorflow_datasets.core.utils import gcs_utils

    assert gcs_utils._is_gcs_disabled


_TINY_N = {"train": 30, "test": 7}


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    """A tiny TFDS dataset (grayscale 4x4, 3 classes) prepared offline in a temp data_dir."""
    import tensorflow_datasets as tfds

    class SimclrTfTinyGray(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(4, 4, 1)),
                        "label": tfds.features.ClassLabel(names=["x", "y", "z"]),
                    }
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(s, n) for s, n in _TINY_N.items()}

        def _generate_examples(self, split, n):
            for i in range(n):
                value = i + (100 if split == "test" else 0)
                yield i, {"image": np.full((4, 4, 1), value, np.uint8), "label": i % 3}

    data_dir = tmp_path_factory.mktemp("tfds")
    SimclrTfTinyGray(data_dir=str(data_dir)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return str(data_dir)


def test_tfds_prepared_offline(tiny_tfds, no_network):
    ds, info = load_split("simclr_tf_tiny_gray", "train", tiny_tfds)
    assert info.class_names == ("x", "y", "z") and info.num_classes == 3
    assert info.split_sizes == _TINY_N
    assert info.image_shape == (4, 4, 3)
    items = _items(ds)
    assert sorted(int(x[0, 0, 0]) for x, _ in items) == list(range(30))
    for x, y in items:  # grayscale -> 3 equal channels; label matches the generator
        assert x.shape == (4, 4, 3) and (x == x[0, 0, 0]).all()
        assert y == int(x[0, 0, 0]) % 3
    info2 = dataset_info("simclr_tf_tiny_gray", tiny_tfds)
    assert info2.split_sizes == _TINY_N and info2.class_names == ("x", "y", "z")


def test_tfds_fraction_and_sharding(tiny_tfds, no_network):
    def chosen(fraction, seed, ctx=None, split="train"):
        ds, info = load_split(
            "simclr_tf_tiny_gray",
            split,
            tiny_tfds,
            train_data_fraction=fraction,
            fraction_seed=seed,
            input_context=ctx,
        )
        return sorted(int(x[0, 0, 0]) for x, _ in _items(ds)), info

    got, info = chosen(0.25, 0)
    # 10 per class, round(2.5) = 2 (Python rounds halves to even).
    assert collections.Counter(v % 3 for v in got) == {0: 2, 1: 2, 2: 2}
    assert info.split_sizes["train"] == 6 and info.split_sizes["test"] == 7
    assert got == chosen(0.25, 0)[0]
    assert got != chosen(0.25, 1)[0]
    assert set(chosen(0.1, 0)[0]) <= set(got)
    # Sharding over 2 pipelines (1 shard file -> example sharding), fraction applied globally.
    parts = [
        chosen(0.5, 0, tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=k))[0]
        for k in range(2)
    ]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == chosen(0.5, 0)[0]
    sliced, info = chosen(1.0, 0, split="train[:10]")
    assert len(sliced) == 10 and info.split_sizes["train[:10]"] == 10


def test_tfds_unlabelled_keeps_every_example_and_labels_the_fine_tuning_subset(
    tiny_tfds, no_network
):
    """Distillation's unlabelled split (TFDS branch): every example once; exactly the examples
    the same fraction and seed select for fine-tuning keep their label, the rest get -1."""
    args = dict(train_data_fraction=0.25, fraction_seed=0)
    ds, info = load_split("simclr_tf_tiny_gray", "train", tiny_tfds, unlabelled=True, **args)
    items = _items(ds)
    assert sorted(int(x[0, 0, 0]) for x, _ in items) == list(range(30))
    assert info.split_sizes["train"] == 30
    labelled = {int(x[0, 0, 0]): int(y) for x, y in items if y != UNLABELLED}
    assert all(y == UNLABELLED for x, y in items if int(x[0, 0, 0]) not in labelled)
    subset, _ = load_split("simclr_tf_tiny_gray", "train", tiny_tfds, **args)
    assert labelled == {int(x[0, 0, 0]): int(y) for x, y in _items(subset)}
    assert all(y == v % 3 for v, y in labelled.items()) and len(labelled) == 6


# ------------------------------------------------------------------------------- shared CIFAR-10


def test_cifar10_folder_small_fraction(cifar10_dir):
    ds, info = load_split(
        "image_folder", "train", str(cifar10_dir), train_data_fraction=0.0004, fraction_seed=0
    )
    assert info.num_classes == 10 and info.class_names[0] == "airplane"
    assert info.split_sizes == {"train": 20, "test": 10000}  # round(0.0004 * 5000) = 2 / class
    assert info.image_shape == (32, 32, 3)
    items = _items(ds)
    assert collections.Counter(y for _, y in items) == {k: 2 for k in range(10)}
    # Unsubsampled, the first example is the first file in sorted order; its pixels agree with
    # PIL's decode (JPEG decoders may differ by a level here and there).
    full, _ = load_split("image_folder", "train", str(cifar10_dir))
    ((img, label),) = _items(full.take(1))
    first = sorted((cifar10_dir / "train" / "airplane").iterdir())[0]
    ref = np.asarray(Image.open(first).convert("RGB"), np.int32)
    assert label == 0 and np.abs(img.astype(np.int32) - ref).mean() < 1.0
