"""The image folder's file list is data (a cached text file read by TextLineDataset), not a
graph constant: graph size, reuse and repair of the list file, names with odd characters."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow.core.framework import graph_pb2

from simclr_tf import atomic
from simclr_tf.data import image_list
from simclr_tf.data.sources import DataError, load_split

_PROCESS_LIST_DIR = image_list._list_dir  # before the fixture below replaces it


@pytest.fixture(autouse=True)
def list_dir(tmp_path, monkeypatch) -> pathlib.Path:
    """Each test gets its own list folder."""
    folder = tmp_path / "lists"
    monkeypatch.setattr(image_list, "_list_dir", lambda: str(folder))
    return folder


def _folder(root: pathlib.Path, names: dict[str, list[str]]) -> dict[str, int]:
    """4x4 PNGs whose constant pixel value is a unique id; returns 'class/name' -> id."""
    ids = {}
    for cls, files in names.items():
        for name in files:
            ids[f"{cls}/{name}"] = len(ids) + 1
            (root / "train" / cls).mkdir(parents=True, exist_ok=True)
            pixels = np.full((4, 4, 3), ids[f"{cls}/{name}"], np.uint8)
            Image.fromarray(pixels).save(root / "train" / cls / name, format="PNG")
    return ids


def _values(ds: tf.data.Dataset) -> list[tuple[int, int]]:
    return [(int(x[0, 0, 0]), int(y)) for x, y in ds.as_numpy_iterator()]


def _list_files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(folder.glob("*.txt"))


def _string_consts(graph: graph_pb2.GraphDef) -> list[int]:
    """Byte sizes of every string Const in the graph and its function library."""
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    sizes = []
    for node in nodes:
        if node.op == "Const" and node.attr["value"].tensor.dtype == tf.string.as_datatype_enum:
            sizes.append(sum(len(s) for s in node.attr["value"].tensor.string_val))
    return sizes


def test_large_list_is_data_not_a_graph_constant(tmp_path, list_dir):
    # 100k names of an ImageNet-like folder; no files are needed, the graph is built lazily.
    n = 100_000
    rel = [f"n{c:08d}/n{c:08d}_{k:06d}.JPEG" for c in range(100) for k in range(n // 100)]
    labels = [(i * 7) % 100 for i in range(n)]
    ds = image_list.decode_files(str(tmp_path), rel, labels, (8, 8, 3))

    list_bytes = sum(len(p.encode()) for p in rel)
    serialized = ds._as_serialized_graph().numpy()
    assert len(serialized) < list_bytes / 20, (len(serialized), list_bytes)
    graph = graph_pb2.GraphDef.FromString(serialized)
    assert max(_string_consts(graph)) < 1000  # paths, messages: nothing list-sized
    assert int(ds.cardinality()) == n
    # The list is in the cache file, in order (reference written here).
    (listed,) = _list_files(list_dir)
    expected = "".join(f"{y}\t{p}\n" for y, p in zip(labels, rel, strict=True))
    assert listed.read_text(encoding="utf-8") == expected


def test_list_file_reused_and_one_per_selection(tmp_path, list_dir, monkeypatch):
    ids = _folder(tmp_path, {"a": [f"{k}.png" for k in range(6)], "b": ["x.png", "y.png"]})
    writes = []
    real_write = image_list.write_text_atomic
    monkeypatch.setattr(
        image_list, "write_text_atomic", lambda p, t: (writes.append(p), real_write(p, t))
    )
    sorted_order = [(ids[k], 0 if k[0] == "a" else 1) for k in sorted(ids)]

    ds, _ = load_split("image_folder", "train", str(tmp_path))
    assert _values(ds) == sorted_order
    (first,) = _list_files(list_dir)
    inode = first.stat().st_ino
    ds, _ = load_split("image_folder", "train", str(tmp_path))  # same selection and order
    assert _values(ds) == sorted_order
    assert _list_files(list_dir) == [first] and first.stat().st_ino == inode
    assert len(writes) == 1

    root = str(tmp_path)
    shuffled, _ = load_split("image_folder", "train", root, fraction_seed=3, shuffle_files=True)
    got = _values(shuffled)
    assert sorted(got) == sorted(sorted_order) and got != sorted_order
    assert len(_list_files(list_dir)) == 2 and len(writes) == 2
    half = _values(load_split("image_folder", "train", root, train_data_fraction=0.5)[0])
    assert len(half) == 4 and set(half) < set(sorted_order)
    assert len(_list_files(list_dir)) == 3 and len(writes) == 3
    # Unlabelled: every image, the ones outside the fraction labelled -1 (read back from text).
    ds, _ = load_split("image_folder", "train", root, train_data_fraction=0.5, unlabelled=True)
    assert _values(ds) == [(i, y if (i, y) in half else -1) for i, y in sorted_order]
    assert len(_list_files(list_dir)) == 4 and len(writes) == 4
    assert not list(list_dir.glob("*.tmp*"))


def test_the_list_folder_is_private_to_the_process():
    make = _PROCESS_LIST_DIR.__wrapped__  # without the per-process functools.cache
    folders = [make(), make()]
    try:
        for folder in folders:
            assert os.path.dirname(folder) == tempfile.gettempdir()
            assert os.path.basename(folder).startswith(image_list.LIST_DIR_PREFIX)
            assert os.stat(folder).st_mode & 0o777 == 0o700
        assert folders[0] != folders[1]  # each process gets its own
    finally:
        for folder in folders:
            shutil.rmtree(folder)


def test_damaged_list_file_is_rewritten(tmp_path, list_dir):
    ids = _folder(tmp_path, {"a": [f"{k}.png" for k in range(5)]})
    expected = [(ids[k], 0) for k in sorted(ids)]
    ds, _ = load_split("image_folder", "train", str(tmp_path))
    (listed,) = _list_files(list_dir)
    good = listed.read_bytes()
    listed.write_bytes(good[: len(good) // 2])  # as a non-atomic writer killed halfway leaves it
    ds, _ = load_split("image_folder", "train", str(tmp_path))
    assert listed.read_bytes() == good
    assert _values(ds) == expected


def test_writer_killed_before_rename_leaves_no_file(tmp_path, list_dir, monkeypatch):
    ids = _folder(tmp_path, {"a": ["0.png", "1.png"]})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the writer stops between writing the temp file and renaming

    monkeypatch.setattr(atomic, "_rename", killed)
    with pytest.raises(KeyboardInterrupt):
        load_split("image_folder", "train", str(tmp_path))
    assert os.listdir(list_dir) == []  # neither a half list under its name nor a stray temp
    monkeypatch.undo()
    monkeypatch.setattr(image_list, "_list_dir", lambda: str(list_dir))
    ds, _ = load_split("image_folder", "train", str(tmp_path))
    assert _values(ds) == [(ids["a/0.png"], 0), (ids["a/1.png"], 0)]


def test_tab_in_a_file_name_is_read_and_named(tmp_path):
    ids = _folder(tmp_path, {"a": ["p\tq.png", "z.png"], "b": ["\t.png"]})
    ds, _ = load_split("image_folder", "train", str(tmp_path))
    assert _values(ds) == [(ids["a/p\tq.png"], 0), (ids["a/z.png"], 0), (ids["b/\t.png"], 1)]
    bad = tmp_path / "train" / "a" / "p\tq.png"
    bad.write_bytes(b"not a png")
    ds, _ = load_split("image_folder", "train", str(tmp_path))
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        _values(ds)
    printed = str(bad).replace("\t", "\\t")  # tf.debugging.Assert prints C escapes
    assert f"[Could not read or decode image file] [{printed}] [(corrupt" in caught.value.message


def test_line_break_in_a_file_name_is_refused_in_one_line(tmp_path, list_dir):
    for name in ("bad\nname.png", "bad\rname.png"):
        with pytest.raises(DataError) as caught:
            image_list.decode_files(str(tmp_path), ["a/ok.png", f"a/{name}"], [0, 0], None)
        message = str(caught.value)
        assert "\n" not in message and repr(str(tmp_path / "a" / name)) in message
        assert "rename the file" in message
    assert not list_dir.exists() or _list_files(list_dir) == []
