"""Two real worker processes on 127.0.0.1 with --strategy=multi_worker, through run.py.

Pins what works with MultiWorkerMirroredStrategy and Keras 3.15 fit (see simclr_tf/distribute.py):
both workers run the same steps and finish, only the chief writes into model_dir, the other
worker's temporary folder is removed, both end with identical weights, and the evaluation
counts every test example exactly once across the two workers.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS, SIDE = 4, 4, 3, 16
STEPS = 3
TIMEOUT_S = 240

# The non-chief worker runs the CLI exactly as run.py does, but copies its (temporary) write
# folder aside before the CLI removes it, so the test can compare its weights with the chief's.
_WORKER = """
import os, shutil, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
from simclr_tf import cli, distribute
dump = os.environ["SIMCLR_TEST_DUMP"]
original = distribute.WriteLocation.cleanup
def cleanup(self):
    if not self.chief:
        shutil.copytree(self.path, dump)
        with open(dump + ".path", "w") as f:
            f.write(self.path)
    original(self)
distribute.WriteLocation.cleanup = cleanup
sys.argv[0] = "run.py"
cli.run()
"""


def _free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _image_folder(root: pathlib.Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for c in range(CLASSES):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                base = rng.integers(0, 256, 3)
                pixels = np.clip(base + rng.integers(-40, 40, (SIDE, SIDE, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")


def _variables(prefix: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(prefix)
    return {
        k: reader.get_tensor(k)
        for k in reader.get_variable_to_shape_map()
        if k.endswith("VARIABLE_VALUE")
    }


@pytest.mark.slow
def test_two_workers_train_identically_and_only_the_chief_writes(tmp_path):
    data = tmp_path / "data"
    _image_folder(data)
    model_dir = tmp_path / "model"
    dump = tmp_path / "worker_dump"
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    flags = [
        "--mode=train_then_eval",
        "--strategy=multi_worker",
        "--dataset=image_folder",
        f"--data_dir={data}",
        f"--model_dir={model_dir}",
        "--resnet_depth=18",
        "--width_multiplier=0.0625",
        "--proj_out_dim=16",
        "--train_batch_size=8",
        f"--train_steps={STEPS}",
        "--checkpoint_steps=2",
        "--warmup_epochs=0",
        "--learning_rate=0.1",
        "--eval_batch_size=4",
        "--export_saved_model=false",
        "--verbose=0",
    ]
    procs, logs = [], []
    try:
        for index in range(2):
            tmpdir = tmp_path / f"tmp{index}"
            tmpdir.mkdir()
            env = {
                **os.environ,
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}
                ),
                "TMPDIR": str(tmpdir),
                "SIMCLR_TEST_DUMP": str(dump),
                "CUDA_VISIBLE_DEVICES": "",
            }
            cmd = [sys.executable, "run.py"] if index == 0 else [sys.executable, "-c", _WORKER]
            log = open(tmp_path / f"worker{index}.log", "w")  # noqa: SIM115 (closed below)
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    cmd + flags, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
                )
            )
        deadline = time.monotonic() + TIMEOUT_S
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()

    outputs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"worker {i} failed:\n{outputs[i][-4000:]}"
    assert "chief" in outputs[0] and "task worker:0" in outputs[0]
    assert "task worker:1, non-chief" in outputs[1]
    assert "2 replica(s) in sync" in outputs[0]

    # The chief wrote the run into model_dir; the other worker wrote only to its temp folder.
    chief_ckpt = tf.train.latest_checkpoint(str(model_dir))
    assert chief_ckpt is not None and chief_ckpt.endswith(f"ckpt-{STEPS}")
    assert (model_dir / "flags.json").exists() and (model_dir / "metrics.csv").exists()
    worker_path = pathlib.Path((tmp_path / "worker_dump.path").read_text())
    assert worker_path != model_dir and not worker_path.exists(), "worker folder not removed"
    assert not any((tmp_path / "tmp1").iterdir()), "the worker left files behind"
    worker_ckpt = tf.train.latest_checkpoint(str(dump))
    assert worker_ckpt is not None and worker_ckpt.endswith(f"ckpt-{STEPS}")

    # Same steps, identical weights (model, BN statistics, optimizer slots) on both workers.
    chief_vars, worker_vars = _variables(chief_ckpt), _variables(worker_ckpt)
    assert chief_vars.keys() == worker_vars.keys()
    assert int(chief_vars["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == STEPS
    initial_like = 0
    for key, value in chief_vars.items():
        np.testing.assert_allclose(worker_vars[key], value, rtol=0, atol=1e-6, err_msg=key)
        initial_like += key.endswith("moving_mean/.ATTRIBUTES/VARIABLE_VALUE") and not np.any(value)
    assert initial_like == 0, "BN moving means never moved: no training happened"

    # Evaluation counts each of the CLASSES * TEST_PER_CLASS examples once, over both workers.
    chief_result = json.loads((model_dir / "result.json").read_text())
    worker_result = json.loads((dump / "result.json").read_text())
    assert chief_result["num_examples"] == worker_result["num_examples"] == CLASSES * TEST_PER_CLASS
    assert chief_result["label_top_1_accuracy"] == worker_result["label_top_1_accuracy"]
    assert chief_result["global_step"] == STEPS

    # In-process reference: the chief's checkpoint restored here on one device, every test image
    # classified by a NumPy argmax over its logits.
    from simclr_tf import checkpoints, evaluate, train
    from simclr_tf import model_dir as model_dir_lib
    from simclr_tf.data import sources

    cfg = model_dir_lib.config_from_flags(json.loads((model_dir / "flags.json").read_text()))
    info = sources.dataset_info(cfg.dataset, cfg.data_dir)
    schedule = train.make_schedule_for(cfg, info.split_sizes[cfg.train_split])
    model = train.build_for_run(cfg, tf.distribute.get_strategy(), info, schedule)
    checkpoints.restore_model_weights(model, chief_ckpt)
    hits = []
    for images, labels in evaluate.eval_input(cfg):
        logits = model(images, training=False)["logits_sup"].numpy()
        hits += list(logits.argmax(1) == labels.numpy())
    assert len(hits) == CLASSES * TEST_PER_CLASS
    assert chief_result["label_top_1_accuracy"] == pytest.approx(np.mean(hits), abs=1e-6)


# Each worker checks the resume step it got (argv[1]) with the others: the same step passes,
# different steps raise StrategyError on every worker (exit code 3 with the message).
_STEP_CHECK = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf
from simclr_tf import distribute
strategy = tf.distribute.MultiWorkerMirroredStrategy()
distribute.check_same_step(strategy, 7)
print("same steps accepted", flush=True)
try:
    distribute.check_same_step(strategy, int(sys.argv[1]))
except distribute.StrategyError as e:
    print(f"refused: {e}", flush=True)
    sys.exit(3)
print("different steps accepted", flush=True)
"""


@pytest.mark.slow
def test_workers_resuming_from_different_steps_stop_with_an_error(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    try:
        for index, step in enumerate((4, 9)):
            env = {
                **os.environ,
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}
                ),
                "CUDA_VISIBLE_DEVICES": "",
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _STEP_CHECK, str(step)],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 3, out[-3000:]
        assert "same steps accepted" in out
        assert "refused: The workers resumed from different steps [4, 9]" in out
        assert "--model_dir must be a folder every worker can read" in out
