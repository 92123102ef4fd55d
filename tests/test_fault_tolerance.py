"""Fault tolerance: kill -9 and resume (taking over the stale lock), torn checkpoint saves,
non-finite losses, wrong model_dir.

The run.py tests use a generated 16 px image folder and a ResNet-18 of width 1/16, so each run
takes seconds; references (learning-rate schedule, expected steps) are computed in the test.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import time
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import subprocess_env, tiny_run_flags

from simclr_tf import callbacks, checkpoints, train
from simclr_tf import model_dir as model_dir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASSES, PER_CLASS, SIDE, BATCH = 4, 8, 16, 8
STEPS_PER_EPOCH = CLASSES * PER_CLASS // BATCH  # 4
RUN_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, write_png_folder) -> pathlib.Path:
    root = tmp_path_factory.mktemp("folder")
    return write_png_folder(root, CLASSES, {"train": PER_CLASS, "test": 2}, SIDE)


def _command(data_dir: pathlib.Path, model_dir: pathlib.Path, *extra: str) -> list[str]:
    """The flags of a tiny run.py training run (for run_cli, or after ``python run.py``)."""
    return tiny_run_flags(data_dir, model_dir, BATCH, "--optimizer=lars", *extra)


def _checkpoint_steps(model_dir: pathlib.Path) -> list[int]:
    state = tf.train.get_checkpoint_state(str(model_dir))
    if state is None:
        return []
    return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths]


def _schedule(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warmup from 0, then cosine decay to 0 (PAPER.md), written independently."""
    if step >= total:
        return 0.0
    if step < warmup:
        return peak * step / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def _rows(model_dir: pathlib.Path) -> list[dict[str, str]]:
    path = model_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def _build_from_run(model_dir: pathlib.Path):
    """The run's model + optimizer, built in this process from its flags.json."""
    cfg = model_dir_lib.config_from_flags(json.loads((model_dir / "flags.json").read_text()))
    schedule = train.make_schedule_for(cfg, CLASSES * PER_CLASS)
    return train.build_for_run(
        cfg, tf.distribute.get_strategy(), types.SimpleNamespace(num_classes=CLASSES), schedule
    )


def test_kill_9_then_same_command_resumes_with_optimizer_and_schedule(data_dir, tmp_path, run_cli):
    total, warmup_epochs, lr = 40, 1, 0.4
    model_dir = tmp_path / "run"
    cmd = _command(
        data_dir,
        model_dir,
        f"--train_steps={total}",
        "--checkpoint_steps=3",  # not a multiple of the 4 steps/epoch: resumes mid-epoch
        "--keep_checkpoint_max=20",
        f"--warmup_epochs={warmup_epochs}",
        f"--learning_rate={lr}",
    )
    proc = subprocess.Popen(
        [sys.executable, "run.py", *cmd],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not _checkpoint_steps(model_dir):
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no handler, no cleanup
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -9, "the run finished before it could be killed"
    # kill -9 runs no exit handler: the lock stays, naming the dead process.
    assert json.loads((model_dir / "run.lock").read_text())["pid"] == proc.pid
    saved = _checkpoint_steps(model_dir)
    resumed_at = saved[-1]
    assert 0 < resumed_at < total
    rows_before = len(_rows(model_dir))

    # The newest checkpoint restores optimizer state: step counter and (non-zero) momentum.
    model = _build_from_run(model_dir)
    prefix = str(model_dir / f"ckpt-{resumed_at}")
    assert (
        checkpoints.Checkpointer(model, str(tmp_path / "unused")).restore_latest(str(model_dir))
        == resumed_at
    )
    reader = tf.train.load_checkpoint(prefix)
    slots = [
        (i, v)
        for i, v in enumerate(model.optimizer.variables)
        if v is not model.optimizer.iterations and len(v.shape) == 4  # conv-kernel momenta
    ]
    assert slots
    for i, v in slots:
        stored = reader.get_tensor(f"optimizer/_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE")
        np.testing.assert_array_equal(v.numpy(), stored)
    assert any(np.any(v.numpy() != 0) for _, v in slots), "momentum slots were never written"

    # The same command again resumes there and stops exactly at `total`.
    done = run_cli(*cmd, expect=None, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"Resumed from {prefix} at step {resumed_at}" in done.stderr
    # The stale lock was recognised (same host, process gone), taken over and released.
    assert f"Took over the lock {model_dir / 'run.lock'}" in done.stderr
    assert f"process {proc.pid} is gone" in done.stderr
    assert not (model_dir / "run.lock").exists()
    assert _checkpoint_steps(model_dir)[-1] == total
    final = tf.train.load_checkpoint(str(model_dir / f"ckpt-{total}"))
    assert int(final.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")) == total
    # Every 3 steps from where it resumed, at the end, and where the interrupted epoch ends
    # (train.py finishes that epoch in a fit call of its own).
    first_end = (resumed_at // STEPS_PER_EPOCH + 1) * STEPS_PER_EPOCH
    expected = {*range(resumed_at + 3 - resumed_at % 3, total, 3), total}
    if resumed_at % STEPS_PER_EPOCH:
        expected.add(first_end)
    assert [s for s in _checkpoint_steps(model_dir) if s > resumed_at] == sorted(expected)

    # Schedule position: the resumed run's first metrics row averages the learning rate over
    # the steps it ran in the interrupted epoch, not over steps 1..4 of a restarted schedule.
    new_rows = _rows(model_dir)[rows_before:]
    assert int(new_rows[0]["step"]) == first_end
    assert int(new_rows[-1]["step"]) == total
    peak = lr * BATCH / 256
    warmup = warmup_epochs * STEPS_PER_EPOCH

    def mean_lr(steps) -> float:
        return float(np.mean([_schedule(k, peak, warmup, total) for k in steps]))

    logged = float(new_rows[0]["learning_rate"])
    # The rate logged after optimizer step k is the schedule at k (or k - 1 before the step).
    candidates = [
        mean_lr(range(resumed_at + 1, first_end + 1)),
        mean_lr(range(resumed_at, first_end)),
    ]
    # What a run whose schedule restarted at 0 would log: must be distinguishable.
    ran = first_end - resumed_at
    restarted = [mean_lr(range(1, ran + 1)), mean_lr(range(ran))]
    assert min(abs(logged - c) for c in candidates) < 1e-6 * peak, (logged, candidates)
    assert min(abs(logged - r) for r in restarted) > 1e-3 * peak


def _tiny_model(lr: float = 0.1) -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_torn_save_leaves_previous_checkpoint_loadable(tmp_path):
    model = _tiny_model()
    saver = checkpoints.Checkpointer(model, str(tmp_path), max_to_keep=3)
    good = [np.full(w.shape, 0.5, np.float32) for w in model.get_weights()]
    model.set_weights(good)
    model.optimizer.iterations.assign(1)
    saver.save(1)

    # A crash while writing ckpt-2: its files exist, partly or as garbage, but the `checkpoint`
    # index was never updated (it is written last, atomically via a temp file + rename).
    index = (tmp_path / "ckpt-1.index").read_bytes()
    (tmp_path / "ckpt-2.index").write_bytes(index[: len(index) // 2])
    (tmp_path / "ckpt-2.data-00000-of-00001").write_bytes(os.urandom(257))
    (tmp_path / "checkpoint.tmp3c1f0a").write_bytes(b'model_checkpoint_path: "ckpt-2')

    fresh = _tiny_model()
    assert checkpoints.Checkpointer(fresh, str(tmp_path)).restore_latest() == 1
    for got, want in zip(fresh.get_weights(), good, strict=True):
        np.testing.assert_array_equal(got, want)

    # Training goes on and the next save of step 2 replaces the torn files.
    later = [w + 1.0 for w in good]
    fresh.set_weights(later)
    fresh.optimizer.iterations.assign(2)
    checkpoints.Checkpointer(fresh, str(tmp_path)).save(2)
    again = _tiny_model()
    assert checkpoints.Checkpointer(again, str(tmp_path)).restore_latest() == 2
    np.testing.assert_array_equal(again.get_weights()[0], later[0])


def test_non_finite_loss_stops_at_its_step_and_keeps_last_checkpoint(tmp_path):
    model = _tiny_model()
    saver = checkpoints.Checkpointer(model, str(tmp_path), max_to_keep=10)
    x = np.ones((5, 4, 3), np.float32)
    x[2, 1, 0] = np.nan  # the third batch (step 3) has a NaN input
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros((5, 4, 2), np.float32)))
    cbs = callbacks.training_callbacks(saver, checkpoint_steps=1, total_steps=5)
    with pytest.raises(callbacks.NonFiniteLossError, match=r"at step 3\b"):
        model.fit(ds, epochs=1, steps_per_epoch=5, callbacks=cbs, verbose=0, shuffle=False)
    assert _checkpoint_steps(tmp_path) == [1, 2]


def test_checkpoint_saver_refuses_non_finite_weights(tmp_path):
    model = _tiny_model()
    saver = callbacks.CheckpointSaver(checkpoints.Checkpointer(model, str(tmp_path)), 1)
    saver.set_model(model)
    model.optimizer.iterations.assign(4)
    kernel = model.layers[0].kernel
    kernel.assign(tf.tensor_scatter_nd_update(kernel, [[0, 0]], [np.inf]))
    with pytest.raises(callbacks.NonFiniteLossError, match="Non-finite weights after step 4"):
        saver.on_train_end()
    assert _checkpoint_steps(tmp_path) == []


def test_cli_non_finite_loss_exits_2_with_one_line_and_no_later_checkpoint(
    data_dir, tmp_path, run_cli
):
    model_dir = tmp_path / "run"
    done = run_cli(
        *_command(
            data_dir,
            model_dir,
            "--train_steps=8",
            "--checkpoint_steps=1",
            "--warmup_epochs=0",
            "--learning_rate=1e30",
        ),
        expect=None,
        timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode == 2, done.stderr[-4000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("simclr_tf: error:")]
    assert len(errors) == 1, done.stderr[-2000:]
    match = re.search(r"Non-finite (loss|weights)[^\n]*(?:at|after) step (\d+)", errors[0])
    assert match, errors[0]
    bad_step = int(match.group(2))
    saved = _checkpoint_steps(model_dir)
    assert saved and max(saved) < bad_step
    reader = tf.train.load_checkpoint(str(model_dir / f"ckpt-{max(saved)}"))
    for key in reader.get_variable_to_shape_map():
        value = reader.get_tensor(key)
        if key.endswith("VARIABLE_VALUE") and value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), key


def _fingerprint(folder: pathlib.Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_model_dir_of_another_architecture_is_refused_untouched(data_dir, tmp_path, run_cli):
    model_dir = tmp_path / "run"
    first = run_cli(
        *_command(data_dir, model_dir, "--train_steps=1", "--warmup_epochs=0"),
        expect=None,
        timeout=RUN_TIMEOUT_S,
    )
    assert first.returncode == 0, first.stderr[-4000:]
    before = _fingerprint(model_dir)
    assert "flags.json" in before and "checkpoint" in before

    other = run_cli(
        *_command(data_dir, model_dir, "--train_steps=2", "--warmup_epochs=0"),
        "--width_multiplier=0.125",
        expect=None,
        timeout=RUN_TIMEOUT_S,
    )
    assert other.returncode == 2
    assert "Traceback" not in other.stderr
    assert "--width_multiplier: model_dir has 0.0625, this run asks for 0.125" in other.stderr
    assert "Use a new --model_dir" in other.stderr
    assert _fingerprint(model_dir) == before, "a refused run must not change the model_dir"
