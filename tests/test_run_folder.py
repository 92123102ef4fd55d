"""A run folder that protects itself: the lock, damaged checkpoints, flags history, leftovers,
settings refused before any work. (The stale lock of a run killed with -9 is taken over in
tests/test_fault_tolerance.py, whose kill -9 run provides it.)

Unit tests call the pieces directly (cheap); the run.py tests share one tiny training run (the
fault-tolerance tests' 16 px folder and ResNet-18 of width 1/16) whose folder the later tests
copy and damage.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import subprocess_env, tiny_run_flags

from simclr_tf import checkpoints, config, run_lock, tf_config
from simclr_tf import model_dir as model_dir_lib
from simclr_tf.errors import UserError
from simclr_tf.official import reader

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASSES, PER_CLASS, SIDE, BATCH = 4, 8, 16, 8
STEPS_PER_EPOCH = CLASSES * PER_CLASS // BATCH  # 4
EPOCHS = 2
RUN_TIMEOUT_S = 400  # generous: a loaded 2-core machine


# --------------------------------------------------------------------------------------------
# The lock
# --------------------------------------------------------------------------------------------


def _write_lock(folder: pathlib.Path, **fields) -> None:
    now = time.time()
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": now,
        "heartbeat": now,
        "token": "someone-else",
        **fields,
    }
    folder.mkdir(parents=True, exist_ok=True)
    # A new file renamed into place, as a real run's lock is (never rewritten in place).
    tmp = folder / "run.lock.test-tmp"
    tmp.write_text(json.dumps(holder))
    os.replace(tmp, folder / "run.lock")


def _gone_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_refuses_a_second_run_naming_the_holder_and_releases(tmp_path):
    folder = tmp_path / "run"
    first = run_lock.RunLock(str(folder))
    first.acquire()
    holder = json.loads((folder / "run.lock").read_text())
    assert (holder["pid"], holder["host"]) == (os.getpid(), socket.gethostname())
    with pytest.raises(run_lock.RunLockError) as refused:
        run_lock.RunLock(str(folder)).acquire()
    message = str(refused.value)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
    assert f"--model_dir={folder}" in message and "\n" not in message
    assert isinstance(refused.value, UserError)
    first.release()
    assert not (folder / "run.lock").exists()
    second = run_lock.RunLock(str(folder))
    second.acquire()  # free again
    second.release()
    assert not folder.exists(), "a folder the lock created and nothing wrote is removed"


def test_lock_of_a_gone_process_or_without_heartbeat_is_taken_over(tmp_path, caplog):
    folder = tmp_path / "run"
    _write_lock(folder, pid=_gone_pid())
    with caplog.at_level("WARNING"), run_lock.RunLock(str(folder)):
        assert json.loads((folder / "run.lock").read_text())["token"] != "someone-else"
    assert "Took over the lock" in caplog.text and "is gone" in caplog.text

    # Another host (its pid cannot be checked): alive while the heartbeat is fresh...
    _write_lock(folder, host="elsewhere", pid=1)
    with pytest.raises(run_lock.RunLockError, match="elsewhere"):
        run_lock.RunLock(str(folder), expiry_seconds=60).acquire()
    # ... stale once the heartbeat is older than the expiry.
    _write_lock(folder, host="elsewhere", pid=1, heartbeat=time.time() - 120)
    with run_lock.RunLock(str(folder), expiry_seconds=60):
        pass
    assert not (folder / "run.lock").exists()


def test_lock_heartbeat_is_refreshed_and_release_keeps_a_successors_lock(tmp_path):
    folder = tmp_path / "run"
    lock = run_lock.RunLock(str(folder), heartbeat_seconds=0.05)
    lock.acquire()
    first = json.loads((folder / "run.lock").read_text())["heartbeat"]
    deadline = time.monotonic() + 10
    while json.loads((folder / "run.lock").read_text())["heartbeat"] == first:
        assert time.monotonic() < deadline, "the heartbeat was never refreshed"
        time.sleep(0.05)
    _write_lock(folder, token="successor")  # e.g. taken over after an expiry
    lock.release()
    assert json.loads((folder / "run.lock").read_text())["token"] == "successor"


def test_heartbeat_stalled_between_its_check_and_its_write_keeps_a_successors_lock(
    tmp_path, monkeypatch
):
    """The race a flaky run of the test above caught: the heartbeat had checked the token, a
    successor took the lock over, and the heartbeat's write then replaced the successor's lock
    with this run's (which release then deleted). The refresh now writes into the file it
    checked, so a successor's new file is never touched."""
    folder = tmp_path / "run"
    lock = run_lock.RunLock(str(folder), heartbeat_seconds=3600)
    lock.acquire()
    parse = run_lock.Holder.from_json

    def successor_takes_over_right_after_the_check(text):
        holder = parse(text)
        _write_lock(folder, token="successor")
        return holder

    monkeypatch.setattr(
        run_lock.Holder, "from_json", staticmethod(successor_takes_over_right_after_the_check)
    )
    lock._refresh_local()
    monkeypatch.setattr(run_lock.Holder, "from_json", staticmethod(parse))
    assert json.loads((folder / "run.lock").read_text())["token"] == "successor"
    assert lock._refresh_local() is False  # the next beat sees it lost the lock
    lock.release()
    assert json.loads((folder / "run.lock").read_text())["token"] == "successor"


def test_heartbeat_refresh_pads_the_file_to_stay_one_write(tmp_path):
    """A refresh never leaves the old tail behind: shorter payloads are padded with spaces and
    the file still parses as this run's lock with a newer heartbeat."""
    folder = tmp_path / "run"
    lock = run_lock.RunLock(str(folder), heartbeat_seconds=3600)
    lock.acquire()
    path = folder / "run.lock"
    path.write_text(path.read_text() + " " * 40)  # the old file longer than any new payload
    old_length = len(path.read_text())
    before = json.loads(path.read_text())
    time.sleep(0.01)
    assert lock._refresh_local() is True
    text = path.read_text()
    after = json.loads(text)
    assert len(text) == old_length and text.rstrip(" ") == json.dumps(after, sort_keys=True)
    assert after["token"] == before["token"] and after["heartbeat"] > before["heartbeat"]
    lock.release()
    assert not path.exists()


def test_chief_task_is_read_from_tf_config():
    def env(task_type, index, chief=False):
        cluster = {"worker": ["a:1", "b:2"], **({"chief": ["c:3"]} if chief else {})}
        return {
            "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": task_type, "index": index}}
            )
        }

    assert tf_config.is_chief_task("auto", {})
    assert tf_config.is_chief_task("multi_worker", env("worker", 0))
    assert not tf_config.is_chief_task("multi_worker", env("worker", 1))
    assert not tf_config.is_chief_task("multi_worker", env("worker", 0, chief=True))
    assert tf_config.is_chief_task("multi_worker", env("chief", 0, chief=True))


# --------------------------------------------------------------------------------------------
# Damaged checkpoints
# --------------------------------------------------------------------------------------------


def _tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _saved_steps(folder: pathlib.Path, steps) -> dict[int, list[np.ndarray]]:
    """Saves one checkpoint per step (distinct weights); returns the weights of each."""
    model = _tiny_model()
    saver = checkpoints.Checkpointer(model, str(folder), max_to_keep=10)
    weights = {}
    for step in steps:
        model.set_weights([np.full(w.shape, float(step), np.float32) for w in model.get_weights()])
        model.optimizer.iterations.assign(step)
        saver.save(step)
        weights[step] = model.get_weights()
    return weights


def _truncate(path: pathlib.Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1 if keep is None else keep])


def _data(folder: pathlib.Path, step: int) -> pathlib.Path:
    return folder / f"ckpt-{step}.data-00000-of-00001"


@pytest.mark.parametrize(
    "harm, names",
    [
        (lambda f: _truncate(_data(f, 2)), ".data-00000-of-00001"),  # one byte short
        (lambda f: _truncate(_data(f, 2), keep=0), ".data-00000-of-00001"),
        (lambda f: _truncate(f / "ckpt-2.index", keep=40), ".index"),
        (lambda f: _data(f, 2).unlink(), ".data-00000-of-00001 missing"),
        (lambda f: (f / "ckpt-2.index").write_bytes(os.urandom(300)), ".index"),
    ],
    ids=["data-1-byte", "data-empty", "index-truncated", "shard-missing", "not-a-checkpoint"],
)
def test_damage_names_the_file_and_every_reader_says_so(tmp_path, harm, names):
    _saved_steps(tmp_path, [1, 2])
    assert checkpoints.damage(str(tmp_path / "ckpt-2")) is None
    harm(tmp_path)
    file, reason = checkpoints.damage(str(tmp_path / "ckpt-2"))
    assert f"{file} {reason}".startswith(str(tmp_path / "ckpt-2")) and names in f"{file} {reason}"
    # Format detection (is_official, read_source) and --checkpoint raise only our own error.
    for call in (
        lambda: reader.is_official(str(tmp_path / "ckpt-2")),
        lambda: reader.read_source(str(tmp_path / "ckpt-2")),
    ):
        with pytest.raises(checkpoints.DamagedCheckpointError, match="ckpt-2"):
            call()
    with pytest.raises(checkpoints.DamagedCheckpointError) as refused:
        reader.check_readable(str(tmp_path / "ckpt-2"), "--checkpoint")
    assert f"An intact one in that folder: --checkpoint={tmp_path / 'ckpt-1'}." in str(
        refused.value
    )


def test_damage_of_a_checkpoint_without_object_graph_is_found_by_size(tmp_path):
    """Name-based (TF1-style) checkpoints have no object graph written last: sizes tell."""
    prefix = str(tmp_path / "model.ckpt-3")
    tensors = [tf.constant(np.arange(64, dtype=np.float32)), tf.constant(np.ones(8, np.int64))]
    tf.raw_ops.SaveV2(
        prefix=prefix, tensor_names=["a/kernel", "b"], shape_and_slices=["", ""], tensors=tensors
    )
    assert checkpoints.damage(prefix) is None
    _truncate(pathlib.Path(prefix + ".data-00000-of-00001"), keep=64 * 4)
    file, reason = checkpoints.damage(prefix)
    assert (
        file.endswith(".data-00000-of-00001") and f"its variables need {64 * 4 + 8 * 8}" in reason
    )
    with pytest.raises(checkpoints.DamagedCheckpointError):
        reader.is_official(prefix)


def test_resume_uses_the_newest_intact_checkpoint_and_never_starts_over(tmp_path, caplog):
    weights = _saved_steps(tmp_path, [1, 2, 3])
    _truncate(_data(tmp_path, 3))
    (tmp_path / "checkpoint").write_bytes(b"\x00garbage{{")  # the state file is damaged too
    model = _tiny_model()
    with caplog.at_level("WARNING"):
        assert checkpoints.Checkpointer(model, str(tmp_path)).restore_latest() == 2
    for got, want in zip(model.get_weights(), weights[2], strict=True):
        np.testing.assert_array_equal(got, want)
    assert f"Resuming from {tmp_path / 'ckpt-2'} at step 2: the newer {tmp_path / 'ckpt-3'}" in (
        caplog.text
    )
    assert _data(tmp_path, 3).exists(), "a damaged checkpoint is kept"
    assert checkpoints.resolve_checkpoint_path(str(tmp_path)) == str(tmp_path / "ckpt-2")

    for step in (1, 2):
        _truncate(_data(tmp_path, step))
    with pytest.raises(checkpoints.DamagedCheckpointError) as refused:
        checkpoints.Checkpointer(_tiny_model(), str(tmp_path)).restore_latest()
    assert all(f"ckpt-{s}.data-00000-of-00001" in str(refused.value) for s in (1, 2, 3))


# --------------------------------------------------------------------------------------------
# Records: flags.json, flags_history.jsonl, leftovers, a flags.json without checkpoint
# --------------------------------------------------------------------------------------------


def test_record_flags_keeps_the_history_of_changed_values(tmp_path):
    cfg = config.Config(model_dir=str(tmp_path), train_steps=4, checkpoint="/pre/ckpt-9")
    assert model_dir_lib.record_flags(cfg, str(tmp_path), 0, num_classes=3) == {}
    assert model_dir_lib.read_flags_history(str(tmp_path)) == []
    more = cfg.replace(train_steps=6, checkpoint=str(tmp_path), learning_rate=0.2)
    changed = model_dir_lib.record_flags(more, str(tmp_path), 4, num_classes=3)
    assert changed == {"learning_rate": [0.3, 0.2], "train_steps": [4, 6]}
    (line,) = model_dir_lib.read_flags_history(str(tmp_path))
    assert (line["step"], line["changed"]) == (4, changed) and line["time"].endswith("+00:00")
    recorded = model_dir_lib.read_flags(str(tmp_path))
    assert (recorded["train_steps"], recorded["num_classes"]) == (6, 3)
    assert recorded["checkpoint"] == "/pre/ckpt-9", "a resumed run does not use --checkpoint"
    model_dir_lib.record_flags(more.replace(train_steps=8), str(tmp_path), 6, num_classes=3)
    assert [h["step"] for h in model_dir_lib.read_flags_history(str(tmp_path))] == [4, 6]


def test_flags_without_checkpoint_do_not_bind_a_corrected_rerun(tmp_path):
    cfg = config.Config(model_dir=str(tmp_path), resnet_depth=18)
    model_dir_lib.record_flags(cfg, str(tmp_path), 0)
    corrected = cfg.replace(resnet_depth=34)
    model_dir_lib.check_compatible(corrected, str(tmp_path))  # no checkpoint: not binding
    _saved_steps(tmp_path, [1])
    with pytest.raises(model_dir_lib.ModelDirError, match="--resnet_depth: model_dir has 18"):
        model_dir_lib.check_compatible(corrected, str(tmp_path))


def _make_leftovers(folder: pathlib.Path) -> list[pathlib.Path]:
    paths = [
        folder / "ckpt-15_temp" / "part-00000-of-00001.data-00000-of-00001",
        folder / "saved_model" / "5.partial-1a2b3c4d" / "saved_model.pb",
        folder / "checkpoint.tmp3c1f0a",
        folder / "result.json.tmp-1-ab",
    ]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    return paths


def test_remove_leftovers_removes_only_temporaries(tmp_path):
    _saved_steps(tmp_path, [1])
    (tmp_path / "saved_model" / "1").mkdir(parents=True)
    (tmp_path / "run.lock").write_text("{}")
    kept = sorted(p.name for p in tmp_path.iterdir())
    _make_leftovers(tmp_path)
    removed = model_dir_lib.remove_leftovers(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == sorted(
        [
            "ckpt-15_temp",
            "5.partial-1a2b3c4d",
            "checkpoint.tmp3c1f0a",
            "result.json.tmp-1-ab",
        ]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == kept
    assert os.listdir(tmp_path / "saved_model") == ["1"]


# --------------------------------------------------------------------------------------------
# Settings refused before anything is resolved or written
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, flag",
    [
        ({"learning_rate": -1.0}, "--learning_rate=-1.0"),
        ({"learning_rate": 0.0}, "--learning_rate=0.0"),
        ({"learning_rate": float("nan")}, "--learning_rate=nan"),
        ({"warmup_epochs": -1.0}, "--warmup_epochs=-1.0"),
        ({"momentum": 1.0}, "--momentum=1.0"),
        ({"momentum": -0.1}, "--momentum=-0.1"),
        ({"weight_decay": -1e-6}, "--weight_decay=-1e-06"),
        ({"batch_norm_decay": 1.0}, "--batch_norm_decay=1.0"),
        ({"mixed_precision": "float16", "strategy": "tpu"}, "--mixed_precision=float16"),
        ({"mixed_precision": "float16", "use_tpu": True}, "--mixed_precision=float16"),
        ({"train_steps": -5}, "--train_steps"),
        ({"eval_batch_size": 0}, "--eval_batch_size"),
        ({"eval_steps": -1}, "--eval_steps"),
        ({"knn_every_epochs": -1}, "--knn_every_epochs"),
        ({"knn_every_epochs": 1, "knn_k": 0}, "--knn_k"),
        ({"proj_out_dim": 0}, "--proj_out_dim"),
        ({"sk_ratio": -0.1}, "--sk_ratio"),
        ({"color_jitter_strength": -0.5}, "--color_jitter_strength"),
        ({"verbose": 3}, "--verbose=3"),
    ],
)
def test_validate_refuses_each_bad_value_in_one_line_naming_the_flag(changes, flag):
    good = config.Config(model_dir="/tmp/unused")
    good.validate()
    with pytest.raises(config.ConfigError) as refused:
        good.replace(**changes).validate()
    lines = str(refused.value).splitlines()
    assert lines[0] == "Invalid flags:" and len(lines) == 2, lines
    assert flag in lines[1]


def test_validate_keeps_good_edge_values():
    config.Config(
        model_dir="/x", warmup_epochs=0, momentum=0.0, weight_decay=0.0, mixed_precision="float16"
    ).validate()
    config.Config(model_dir="/x", mixed_precision="bfloat16", strategy="tpu").validate()


# --------------------------------------------------------------------------------------------
# run.py in subprocesses, sharing one tiny training run
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, write_png_folder) -> pathlib.Path:
    root = tmp_path_factory.mktemp("folder")
    return write_png_folder(root, CLASSES, {"train": PER_CLASS, "test": 2}, SIDE)


def _command(data_dir: pathlib.Path, model_dir: pathlib.Path, *extra: str) -> list[str]:
    run_py = [sys.executable, str(REPO / "run.py")]
    return run_py + tiny_run_flags(data_dir, model_dir, BATCH, "--warmup_epochs=0", *extra)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("simclr_tf: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def _fingerprint(folder: pathlib.Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _steps(folder: pathlib.Path) -> list[int]:
    return sorted(s for s, _ in model_dir_lib.checkpoint_prefixes(str(folder)))


@pytest.fixture(scope="module")
def concurrent_runs(data_dir, tmp_path_factory):
    """Two identical commands on one folder: the second starts while the first holds it."""
    folder = tmp_path_factory.mktemp("shared") / "run"
    cmd = _command(data_dir, folder, f"--train_epochs={EPOCHS}", "--checkpoint_epochs=1")
    log = folder.parent / "first.log"  # a file, not a pipe nobody reads while the second runs
    with open(log, "w") as stderr:
        first = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stderr=stderr, text=True)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (folder / "run.lock").exists():
            assert first.poll() is None, "the first run ended before taking the lock"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        start = time.monotonic()
        second = _run(cmd)
        second_seconds = time.monotonic() - start
        first_alive_after_second = first.poll() is None
        first.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    first_err = log.read_text()
    return folder, first, first_err, second, second_seconds, first_alive_after_second


def test_second_run_on_a_folder_refuses_at_once_and_the_first_is_intact(concurrent_runs):
    folder, first, first_err, second, seconds, first_alive = concurrent_runs
    line = _one_error_line(second)
    assert first_alive, "the first run ended before the second was refused: not concurrent"
    assert seconds < 30, seconds
    assert f"--model_dir={folder} is in use by another run (pid {first.pid} on host" in line
    assert first.returncode == 0, first_err[-3000:]
    assert _steps(folder) == [STEPS_PER_EPOCH * e for e in range(1, EPOCHS + 1)]
    with open(folder / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [STEPS_PER_EPOCH * e for e in range(1, EPOCHS + 1)]
    assert len(list((folder / "train").glob("events.out.tfevents.*"))) == 1
    assert not (folder / "run.lock").exists(), "the lock is released at exit"
    assert not (folder / "flags_history.jsonl").exists()


def _copy_run(concurrent_runs, tmp_path) -> pathlib.Path:
    folder = concurrent_runs[0]
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    return copy


def test_truncated_newest_checkpoint_resumes_from_the_older_one(
    concurrent_runs, data_dir, tmp_path
):
    run = _copy_run(concurrent_runs, tmp_path)
    last = STEPS_PER_EPOCH * EPOCHS
    _truncate(_data(run, last), keep=1000)
    damaged_bytes = _data(run, last).read_bytes()
    leftovers = _make_leftovers(run)
    total = last + 2
    done = _run(
        # --checkpoint=the run itself (as a user might): the run resumes and says it is unused.
        _command(
            data_dir, run, f"--train_steps={total}", "--checkpoint_epochs=1", f"--checkpoint={run}"
        )
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"--checkpoint={run} is not used" in done.stderr
    older = last - STEPS_PER_EPOCH
    assert f"Resuming from {run / f'ckpt-{older}'} at step {older}: the newer" in done.stderr
    assert f"ckpt-{last}.data-00000-of-00001" in done.stderr
    assert _steps(run)[-1] == total
    assert _data(run, last).read_bytes() != damaged_bytes, "the re-save of that step replaced it"
    for path in leftovers:
        assert not path.exists()
        assert f"Removed {run / path.relative_to(run).parts[0]}" in done.stderr
    (line,) = model_dir_lib.read_flags_history(str(run))
    assert line["step"] == older
    assert line["changed"]["train_steps"] == [0, total]
    recorded = json.loads((run / "flags.json").read_text())
    assert (recorded["train_steps"], recorded["checkpoint"]) == (total, None)
    assert "checkpoint" not in line["changed"]


def test_failed_resume_changes_nothing(concurrent_runs, data_dir, tmp_path):
    run = _copy_run(concurrent_runs, tmp_path)
    for step in _steps(run):
        _truncate(_data(run, step))
    before = _fingerprint(run)
    failed = _run(_command(data_dir, run, "--train_steps=20", "--learning_rate=0.5"))
    line = _one_error_line(failed)
    assert f"Every checkpoint in {run} is damaged" in line
    assert all(f"ckpt-{s}.data-00000-of-00001" in line for s in _steps(run))
    assert _fingerprint(run) == before, "flags.json and every file stay as they were"
    assert "Training" not in failed.stderr, "refused before a model was built"


def test_truncated_checkpoint_flag_is_one_line_before_any_work(concurrent_runs, data_dir, tmp_path):
    run = _copy_run(concurrent_runs, tmp_path)
    last = STEPS_PER_EPOCH * EPOCHS
    _truncate(_data(run, last))
    new_dir = tmp_path / "finetune"
    refused = _run(
        _command(data_dir, new_dir, "--train_mode=finetune", f"--checkpoint={run / f'ckpt-{last}'}")
    )
    line = _one_error_line(refused)
    assert f"the checkpoint {run / f'ckpt-{last}'} is damaged" in line
    assert f"--checkpoint={run / f'ckpt-{last - STEPS_PER_EPOCH}'}" in line
    assert not new_dir.exists(), "nothing was created"
    assert "Training" not in refused.stderr and "image_folder" not in refused.stderr


def test_bad_settings_are_refused_before_any_work(data_dir, tmp_path):
    new_dir = tmp_path / "run"
    refused = subprocess.run(
        _command(
            data_dir,
            new_dir,
            "--learning_rate=-1",
            "--mixed_precision=float16",
            "--strategy=tpu",
        ),
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--learning_rate=-1.0 must be > 0" in refused.stderr
    assert "--mixed_precision=float16 is for GPUs" in refused.stderr
    assert "TPU could be resolved" not in refused.stderr
    assert not new_dir.exists()
