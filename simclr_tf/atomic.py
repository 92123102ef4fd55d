"""Atomic writes: a reader (TensorBoard, a resumed run, another worker) never sees half a file.

Every file or folder a run, an export or a tool writes goes through here: written under a unique
temporary name beside its destination, then renamed into place. Local paths use only the
standard library, so the light tools (``tools/ablate.py``, ``tools/plot_run.py``) do not import
TensorFlow; remote paths (``gs://``, ...) go through ``tf.io.gfile``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

__all__ = ["atomic_path", "replace_folder", "write_json_atomic", "write_text_atomic"]


def _gfile():
    """``tf.io.gfile``, imported only when a remote path needs it."""
    import tensorflow as tf

    return tf.io.gfile


def _remote(path: str) -> bool:
    return "://" in path


def _exists(path: str) -> bool:
    return _gfile().exists(path) if _remote(path) else os.path.exists(path)


def _rename(src: str, dst: str, overwrite: bool = False) -> None:
    """Renames a file or folder; ``overwrite`` replaces an existing file at ``dst``."""
    if _remote(dst):
        _gfile().rename(src, dst, overwrite=overwrite)
    elif overwrite:
        os.replace(src, dst)
    else:
        os.rename(src, dst)


def _remove(path: str) -> None:
    """Removes a file or folder if it exists."""
    if _remote(path):
        gfile = _gfile()
        if gfile.isdir(path):
            gfile.rmtree(path)
        elif gfile.exists(path):
            gfile.remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path beside ``path``, renamed onto it when the block ends without error.

    The name is unique per call, so processes writing the same file at once (workers sharing a
    filesystem) never write into one another's temporary file; the last rename wins. On an
    error the temporary file is removed and ``path`` is left as it was.
    """
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        _rename(tmp, path, overwrite=True)
    except BaseException:
        _remove(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        if _remote(tmp):
            with _gfile().GFile(tmp, "w") as f:
                f.write(text)
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(text)


def write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def replace_folder(tmp: str, dest: str) -> None:
    """Renames the finished folder ``tmp`` to ``dest``, replacing an existing ``dest``.

    The old ``dest`` is moved aside first and deleted only once the new one is in place; if the
    rename fails it is put back, so ``dest`` is always either the old or the new folder. Callers
    decide beforehand whether replacing is allowed.
    """
    if not _exists(dest):
        _rename(tmp, dest)
        return
    old = f"{dest}.replaced-{uuid.uuid4().hex[:8]}"
    _rename(dest, old)
    try:
        _rename(tmp, dest)
    except BaseException:
        _rename(old, dest)
        raise
    _remove(old)
