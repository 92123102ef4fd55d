"""One writer per run folder: the lock file ``<model_dir>/run.lock``.

A run takes the lock before it writes anything into ``--model_dir`` and gives it back when it
ends; a second run on the same folder stops at once, naming the holder. The lock file holds who
took it (host, pid, start time) and a heartbeat that a daemon thread refreshes while the run
lives, so a lock left behind by a killed run is recognised and taken over (with a log line):

* on the same host, when the holder's process is gone, or its pid now belongs to another
  process (the recorded process start time differs: e.g. a restarted container, whose new run
  often gets the pid of the killed one);
* on any host, when the heartbeat is older than ``expiry_seconds`` (a crashed machine of a
  shared file system).

Local paths (and NFS) are exclusive: the lock is created with ``link(2)`` of a finished file,
which fails when the lock exists, so two runs can never both create it. The heartbeat is rewritten
inside the file it checked (one write, padded to the old length), so it can never overwrite a
successor's lock; a reader catching that write half done sees an unreadable lock, which counts
as held for a grace period. ``gs://`` and other remote paths have no create-if-absent through
``tf.io.gfile``: there the lock is best effort (check, write, read back), which refuses a run
started while another one is alive but not two runs started within the same second.

No TensorFlow here (but for remote paths): the lock is taken before TensorFlow is imported, so
a second run stops within a second or two.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from absl import logging

from simclr_tf.errors import UserError

LOCK_FILE = "run.lock"
HEARTBEAT_SECONDS = 60.0
EXPIRY_SECONDS = 15 * 60.0  # no heartbeat for this long: the holder is gone (any host)
_UNREADABLE_GRACE_SECONDS = 10.0  # a remote lock being written may be briefly unreadable


class RunLockError(UserError, RuntimeError):
    """The run folder is in use by another run; the message names the holder and the fix."""


def _remote(path: str) -> bool:
    return "://" in path


def _gfile():
    """``tf.io.gfile``, for remote paths only (local ones use the standard library)."""
    import tensorflow as tf

    return tf.io.gfile


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` as the kernel counts it (Linux), None elsewhere/gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may hold spaces, so split after its ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


@dataclasses.dataclass(frozen=True)
class Holder:
    """What the lock file says about the run holding it."""

    host: str
    pid: int
    started: float  # time.time() when the lock was taken
    heartbeat: float  # time.time() of the last refresh
    token: str  # unique per acquisition: tells our lock from a successor's
    process_start: str | None = None  # /proc/<pid>/stat starttime, to detect a reused pid

    def describe(self, now: float) -> str:
        started = datetime.datetime.fromtimestamp(self.started, datetime.timezone.utc)
        return (
            f"pid {self.pid} on host {self.host}, started {started:%Y-%m-%d %H:%M:%S} UTC, "
            f"last heartbeat {max(0.0, now - self.heartbeat):.0f} s ago"
        )

    @classmethod
    def from_json(cls, text: str) -> Holder | None:
        try:
            data: dict[str, Any] = json.loads(text)
            return cls(
                host=str(data["host"]),
                pid=int(data["pid"]),
                started=float(data["started"]),
                heartbeat=float(data["heartbeat"]),
                token=str(data["token"]),
                process_start=data.get("process_start"),
            )
        except (ValueError, KeyError, TypeError):
            return None


class RunLock:
    """The lock of one run folder; :meth:`acquire` once, :meth:`release` at the end (idempotent).

    Also a context manager. ``release`` is registered with :mod:`atexit` too, so a run that
    leaves through ``sys.exit`` or an exception still frees its folder; only ``kill -9`` or a
    crashed machine leaves the lock behind, and the next run takes it over.
    """

    def __init__(
        self,
        model_dir: str,
        *,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        expiry_seconds: float = EXPIRY_SECONDS,
    ):
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, LOCK_FILE)
        self.heartbeat_seconds = heartbeat_seconds
        self.expiry_seconds = expiry_seconds
        self._token = uuid.uuid4().hex
        self._started = 0.0
        self._held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created_folder = False

    # ---------------------------------------------------------------- file access
    def _read(self) -> Holder | None:
        """The holder in the lock file; None when there is none or it cannot be parsed."""
        try:
            if _remote(self.path):
                with _gfile().GFile(self.path) as f:
                    text = f.read()
            else:
                with open(self.path, encoding="utf-8") as f:
                    text = f.read()
        except Exception:  # noqa: BLE001 - gone or unreadable: the caller decides
            return None
        return Holder.from_json(text)

    def _exists(self) -> bool:
        return _gfile().exists(self.path) if _remote(self.path) else os.path.lexists(self.path)

    def _age(self) -> float:
        """Seconds since the lock file was last modified (0 when unknown)."""
        try:
            if _remote(self.path):
                mtime = _gfile().stat(self.path).mtime_nsec / 1e9
            else:
                mtime = os.stat(self.path).st_mtime
        except Exception:  # noqa: BLE001
            return 0.0
        return time.time() - mtime

    def _payload(self) -> str:
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": self._started,
                "heartbeat": time.time(),
                "token": self._token,
                "process_start": _process_start(os.getpid()),
            },
            sort_keys=True,
        )

    def _write_temp(self) -> str:
        tmp = f"{self.path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if _remote(tmp):
            with _gfile().GFile(tmp, "w") as f:
                f.write(self._payload())
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(self._payload())
                f.flush()
                os.fsync(f.fileno())
        return tmp

    def _create(self) -> bool:
        """Creates the lock if there is none; False when another run's lock exists."""
        if _remote(self.path):
            if self._exists():
                return False
            tmp = self._write_temp()
            _gfile().rename(tmp, self.path, overwrite=True)
            time.sleep(1.0)  # let a concurrent writer's rename land, then check who won
            holder = self._read()
            return holder is not None and holder.token == self._token
        tmp = self._write_temp()
        try:
            os.link(tmp, self.path)  # atomic create-if-absent, also on NFS
            return True
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)

    def _remove_if(self, token: str | None) -> bool:
        """Removes the lock when it still holds ``token`` (None: an unreadable lock).

        Local: the lock is first renamed aside, so of two runs taking over the same stale lock
        only one removes it, and a lock created meanwhile by a third is put back.
        """
        if _remote(self.path):
            holder = self._read()
            if (holder.token if holder else None) != token:
                return False
            _gfile().remove(self.path)
            return True
        aside = f"{self.path}.stale-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        with open(aside, encoding="utf-8", errors="replace") as f:
            moved = Holder.from_json(f.read())
        if (moved.token if moved else None) == token:
            os.remove(aside)
            return True
        with contextlib.suppress(FileExistsError):  # not the lock we judged: give it back
            os.link(aside, self.path)
        os.remove(aside)
        return False

    # ---------------------------------------------------------------- staleness
    def stale_reason(self, holder: Holder, now: float | None = None) -> str | None:
        """Why ``holder`` no longer holds the folder, or None while it does."""
        now = time.time() if now is None else now
        if holder.host == socket.gethostname():
            if not _pid_alive(holder.pid):
                return f"process {holder.pid} is gone"
            current = _process_start(holder.pid)
            if holder.process_start and current and current != holder.process_start:
                return f"pid {holder.pid} now belongs to another process (started later)"
        if now - holder.heartbeat > self.expiry_seconds:
            return f"no heartbeat for {now - holder.heartbeat:.0f} s (> {self.expiry_seconds:.0f})"
        return None

    # ---------------------------------------------------------------- public
    def acquire(self) -> None:
        """Takes the lock (creating the folder); RunLockError naming the holder otherwise."""
        if _remote(self.model_dir):
            _gfile().makedirs(self.model_dir)
        elif os.path.lexists(self.model_dir) and not os.path.isdir(self.model_dir):
            return  # a file: refused by model_dir.check_is_folder before anything is written
        elif not os.path.isdir(self.model_dir):
            os.makedirs(self.model_dir, exist_ok=True)
            self._created_folder = True
        self._started = time.time()
        for _ in range(5):
            if self._create():
                self._held = True
                atexit.register(self.release)
                self._start_heartbeat()
                return
            holder = self._read()
            if holder is None:
                if self._exists() and self._age() < _UNREADABLE_GRACE_SECONDS:
                    time.sleep(0.5)  # a remote lock being written
                    continue
                reason, token = "the lock file is unreadable", None
            else:
                reason, token = self.stale_reason(holder), holder.token
                if reason is None:
                    raise RunLockError(
                        f"--model_dir={self.model_dir} is in use by another run "
                        f"({holder.describe(time.time())}): wait for it to end, stop it, or use "
                        f"another --model_dir. If that run is gone (its machine crashed), "
                        f"delete {self.path}."
                    )
            if self._remove_if(token):
                if holder is not None:
                    reason = f"{reason}; it was {holder.describe(time.time())}"
                logging.warning(
                    "Took over the lock %s of a run that ended without releasing it (%s).",
                    self.path,
                    reason,
                )
        raise RunLockError(
            f"Could not take the lock {self.path}: other runs keep taking it. Make sure only one "
            "run uses this --model_dir."
        )

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                ours = self._refresh_remote() if _remote(self.path) else self._refresh_local()
            except Exception as e:  # noqa: BLE001 - a missed heartbeat is retried next time
                logging.warning("Could not refresh the lock %s: %s", self.path, e)
                continue
            if not ours:
                logging.error(
                    "The lock %s is no longer this run's (taken over after %.0f s without a "
                    "heartbeat?): another run may be writing into the same folder.",
                    self.path,
                    self.expiry_seconds,
                )
                return

    def _refresh_local(self) -> bool:
        """Rewrites the heartbeat inside the lock file it read; False when that file is not ours.

        Why in place: the token is checked and the heartbeat written through one open file, so
        a successor's lock (always a new file, linked or renamed into place) is never
        overwritten, however long this thread stalls between the two. Padded to the old length
        with spaces (JSON ignores them), the refresh is one write and needs no truncation.
        """
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            old = os.read(fd, 1 << 16)
            holder = Holder.from_json(old.decode("utf-8", errors="replace"))
            if holder is None or holder.token != self._token:
                return False
            os.pwrite(fd, self._payload().encode("utf-8").ljust(len(old)), 0)
            os.fsync(fd)
            return True
        finally:
            os.close(fd)

    def _refresh_remote(self) -> bool:
        """Best effort, as remote creation is: the new file is written before the token check,
        so only the rename lies between the check and the write."""
        tmp = self._write_temp()
        holder = self._read()
        if holder is None or holder.token != self._token:
            _gfile().remove(tmp)
            return False
        _gfile().rename(tmp, self.path, overwrite=True)
        return True

    def release(self) -> None:
        """Gives the lock back (only if it is still ours); removes a folder left empty."""
        if not self._held:
            return
        self._held = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._remove_if(self._token)
        except Exception as e:  # noqa: BLE001 - never hide the run's own outcome
            logging.warning("Could not remove the lock %s: %s", self.path, e)
        if self._created_folder:
            with contextlib.suppress(OSError):  # only when empty: it failed before writing
                os.rmdir(self.model_dir)
        atexit.unregister(self.release)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
