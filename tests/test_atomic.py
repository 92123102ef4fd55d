"""simclr_tf.atomic: files and folders appear whole or not at all, locally and through gfile."""

from __future__ import annotations

import os
import pathlib
import threading

import pytest
import tensorflow as tf

from simclr_tf import atomic


def test_atomic_write_keeps_the_old_file_until_the_new_one_is_whole(tmp_path, monkeypatch):
    path = str(tmp_path / "result.json")
    atomic.write_text_atomic(path, "old")
    monkeypatch.setattr(atomic, "_rename", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        atomic.write_text_atomic(path, "new")
    assert os.listdir(tmp_path) == ["result.json"]
    assert pathlib.Path(path).read_text() == "old"


def test_concurrent_writers_of_one_list_never_show_half_a_file(tmp_path):
    # Two processes (or threads) may write one file at once, e.g. workers on a shared disk.
    path = str(tmp_path / "list.txt")
    text = "0\tclass/name.png\n" * 20_000
    problems: list = []
    done = threading.Event()

    def write() -> None:
        for _ in range(15):
            try:
                atomic.write_text_atomic(path, text)
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                problems.append(repr(e))

    def read() -> None:
        while not done.is_set():
            try:
                with open(path, encoding="utf-8") as f:
                    if f.read() != text:
                        problems.append("half a file")
            except FileNotFoundError:
                pass

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=write) for _ in range(3)]
    for t in [reader, *writers]:
        t.start()
    for t in writers:
        t.join()
    done.set()
    reader.join()
    assert problems == []
    assert os.listdir(tmp_path) == ["list.txt"]


@pytest.mark.parametrize("root", ["local", "ram"])
def test_text_and_json_round_trip_locally_and_through_gfile(tmp_path, root):
    base = str(tmp_path) if root == "local" else f"ram://atomic-{os.getpid()}"
    tf.io.gfile.makedirs(base)
    path = f"{base}/flags.json"
    atomic.write_json_atomic(path, {"b": 1, "a": [1.5, "x"]})
    atomic.write_json_atomic(path, {"b": 2})  # replaces the old file
    with tf.io.gfile.GFile(path) as f:
        assert f.read() == '{\n  "b": 2\n}\n'
    assert tf.io.gfile.listdir(base) == ["flags.json"]  # no temporary file left


def _folder_with(path: pathlib.Path, text: str) -> str:
    path.mkdir()
    (path / "file.txt").write_text(text)
    return str(path)


def test_replace_folder_swaps_whole_folders(tmp_path):
    dest = tmp_path / "export"
    atomic.replace_folder(_folder_with(tmp_path / "new1", "one"), str(dest))
    assert (dest / "file.txt").read_text() == "one"
    atomic.replace_folder(_folder_with(tmp_path / "new2", "two"), str(dest))
    assert (dest / "file.txt").read_text() == "two"
    assert sorted(os.listdir(tmp_path)) == ["export"]  # the old folder and the temps are gone


def test_replace_folder_puts_the_old_folder_back_when_the_rename_fails(tmp_path, monkeypatch):
    dest = _folder_with(tmp_path / "export", "old")
    new = _folder_with(tmp_path / "new", "new")
    real = atomic._rename
    calls = []

    def second_rename_fails(src: str, dst: str, overwrite: bool = False) -> None:
        calls.append((src, dst))
        if len(calls) == 2:  # moving the new folder into place
            raise OSError("disk full")
        real(src, dst, overwrite)

    monkeypatch.setattr(atomic, "_rename", second_rename_fails)
    with pytest.raises(OSError, match="disk full"):
        atomic.replace_folder(new, dest)
    assert (tmp_path / "export" / "file.txt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["export", "new"]
