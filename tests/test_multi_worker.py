"""Two real worker processes on 127.0.0.1 with --strategy=multi_worker, through run.py.

Pins what works with MultiWorkerMirroredStrategy and Keras 3.15 fit (see simclr_tf/distribute.py):
both workers run the same steps and finish, only the chief writes into model_dir, the other
worker's temporary folder is removed, both end with identical weights, and the evaluation
counts every test example exactly once across the two workers.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import re
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

# The chief, when it needs a preamble: the CLI exactly as run.py runs it.
_CHIEF = """
import sys
from simclr_tf import cli
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


def _image_folder(root: pathlib.Path, per_class: dict[str, list[int]] | None = None) -> None:
    """ROOT/<split>/c<class>/<i>.png; ``per_class`` maps a split to its images per class."""
    per_class = per_class or {
        "train": [TRAIN_PER_CLASS] * CLASSES,
        "test": [TEST_PER_CLASS] * CLASSES,
    }
    rng = np.random.default_rng(0)
    for split, counts in per_class.items():
        for c, count in enumerate(counts):
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


def _run_two_workers(
    tmp_path: pathlib.Path,
    flags: list[str],
    dump: pathlib.Path,
    timeout_s: float = TIMEOUT_S,
    preamble: str = "",
) -> list[str]:
    """Runs run.py as worker 0 (chief) and 1 on 127.0.0.1; returns both logs.

    ``preamble`` is Python code both workers run first (e.g. registering a TFDS builder).

    Fails when a worker exits non-zero, or when the two have not both finished after
    ``timeout_s`` (a worker waiting in a collective the other never joins hangs forever).
    """
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
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
            if index == 0:
                cmd = (
                    [sys.executable, "-c", preamble + _CHIEF]
                    if preamble
                    else [sys.executable, "run.py"]
                )
            else:
                cmd = [sys.executable, "-c", preamble + _WORKER]
            log = open(tmp_path / f"worker{index}.log", "w")  # noqa: SIM115 (closed below)
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    cmd + flags, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
                )
            )
        deadline = time.monotonic() + timeout_s
        for p in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"the workers did not finish within {timeout_s:.0f} s (a hang)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()

    outputs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]  # every failing worker's log
    assert not failed, "\n".join(f"worker {i} failed:\n{outputs[i][-4000:]}" for i in failed)
    return outputs


@pytest.mark.slow
def test_two_workers_train_identically_and_only_the_chief_writes(tmp_path):
    data = tmp_path / "data"
    _image_folder(data)
    model_dir = tmp_path / "model"
    dump = tmp_path / "worker_dump"
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
    outputs = _run_two_workers(tmp_path, flags, dump)
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
    from simclr_tf import evaluate, restore, train
    from simclr_tf import model_dir as model_dir_lib
    from simclr_tf.data import sources

    cfg = model_dir_lib.config_from_flags(json.loads((model_dir / "flags.json").read_text()))
    info = sources.dataset_info(cfg.dataset, cfg.data_dir)
    schedule = train.make_schedule_for(cfg, info.split_sizes[cfg.train_split])
    model = train.build_for_run(cfg, tf.distribute.get_strategy(), info, schedule)
    restore.restore_model_weights(model, chief_ckpt)
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


# Uneven on purpose: 15 bank (train) and 11 query (test) examples, each split in 3 TFRecord
# files, over 2 workers and eval batches of 4. Neither split divides by the workers or the batch,
# one class of each split is smaller, and tf.data's AUTO (file) sharding would give the workers
# different numbers of batches (checked below).
KNN_SPLITS = {"train": [4, 4, 4, 3], "test": [3, 3, 3, 2]}
KNN_FILES, KNN_WORKERS, KNN_EVAL_BATCH, KNN_K, KNN_TEMPERATURE = 3, 2, 4, 5, 0.1

# A tiny TFDS image dataset, registered in the test process and (as a preamble) in both workers,
# since TFDS finds a builder by its class name.
_TFDS_BUILDER = f"""
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import numpy as np
import tensorflow_datasets as tfds

class SimclrTfUnevenShards(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({{
                "image": tfds.features.Image(shape=({SIDE}, {SIDE}, 3)),
                "label": tfds.features.ClassLabel(num_classes={len(KNN_SPLITS["test"])}),
            }}),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {{s: self._generate_examples(s, c) for s, c in {KNN_SPLITS!r}.items()}}

    def _generate_examples(self, split, per_class):
        # One colour per class in every split (so kNN finds the class), noise per split.
        noise_rng = np.random.default_rng(len(split))
        for label, count in enumerate(per_class):
            base = np.random.default_rng(label).integers(0, 256, 3)
            for i in range(count):
                noise = noise_rng.integers(-30, 30, ({SIDE}, {SIDE}, 3))
                pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
                yield f"{{label}}-{{i}}", {{"image": pixels, "label": label}}
"""


def _numpy_knn_top1(query, query_labels, bank, bank_labels, k: int, temperature: float) -> float:
    """Wu et al. 2018 weighted kNN in NumPy: cosine top-k, each adds exp(sim / T) to its class."""
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    sim = query @ bank.T
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    scores = np.zeros((len(query), int(bank_labels.max()) + 1))
    for row, neighbours in enumerate(top):
        for j in neighbours:
            scores[row, bank_labels[j]] += np.exp(sim[row, j] / temperature)
    return float(np.mean(scores.argmax(1) == query_labels))


@pytest.mark.slow
def test_two_workers_knn_monitor_and_eval_count_uneven_file_shards_once(tmp_path):
    import tensorflow_datasets as tfds

    namespace: dict = {}
    exec(_TFDS_BUILDER, namespace)  # noqa: S102 - the builder the workers register too
    data = tmp_path / "tfds"
    namespace["SimclrTfUnevenShards"](data_dir=str(data)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False, num_shards=KNN_FILES)
    )
    splits = namespace["SimclrTfUnevenShards"](data_dir=str(data)).info.splits
    for split in KNN_SPLITS:
        # The hazard the test is about: file sharding (file i to worker i % 2) would give the
        # workers different batch counts.
        lengths = splits[split].shard_lengths
        assert len(lengths) == KNN_FILES
        per_worker = [sum(lengths[w::KNN_WORKERS]) for w in range(KNN_WORKERS)]
        assert len({-(-n // KNN_EVAL_BATCH) for n in per_worker}) > 1, (split, lengths)
    model_dir = tmp_path / "model"
    dump = tmp_path / "worker_dump"
    steps = 2  # 15 train examples, batch 8: two steps, one epoch, one kNN pass
    flags = [
        "--mode=train_then_eval",
        "--strategy=multi_worker",
        "--dataset=simclr_tf_uneven_shards",
        f"--data_dir={data}",
        "--train_split=train",
        "--eval_split=test",
        f"--image_size={SIDE}",
        f"--model_dir={model_dir}",
        "--resnet_depth=18",
        "--width_multiplier=0.0625",
        "--proj_out_dim=16",
        "--train_batch_size=8",
        f"--train_steps={steps}",
        "--warmup_epochs=0",
        "--learning_rate=0.1",
        f"--eval_batch_size={KNN_EVAL_BATCH}",
        "--knn_every_epochs=1",
        f"--knn_k={KNN_K}",
        "--export_saved_model=false",
        "--verbose=0",
    ]
    # No hang: both workers must finish (a worker with a batch fewer would wait forever).
    outputs = _run_two_workers(tmp_path, flags, dump, preamble=_TFDS_BUILDER)

    # Both workers logged every kNN pass over the whole bank and every query, once each.
    num_bank, num_queries = sum(KNN_SPLITS["train"]), sum(KNN_SPLITS["test"])
    for i, output in enumerate(outputs):
        passes = re.findall(r"kNN \(k=\d+, T=[\d.]+\) on (\d+) queries, bank of (\d+):", output)
        assert passes == [(str(num_queries), str(num_bank))], (i, output[-3000:])

    # The chief's last kNN top-1 (metrics.csv; the other worker's agrees) against a NumPy kNN
    # over encoder features of the saved weights, computed here in one process on one device.
    with open(model_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    with open(dump / "metrics.csv") as f:
        worker_rows = list(csv.DictReader(f))
    assert [r["knn_top1"] for r in rows] == [r["knn_top1"] for r in worker_rows]
    assert len(rows) == 1 and int(rows[-1]["step"]) == steps

    from simclr_tf import evaluate, restore, train
    from simclr_tf import model_dir as model_dir_lib
    from simclr_tf.data import pipeline, sources

    cfg = model_dir_lib.config_from_flags(json.loads((model_dir / "flags.json").read_text()))
    info = sources.dataset_info(cfg.dataset, cfg.data_dir)
    schedule = train.make_schedule_for(cfg, info.split_sizes[cfg.train_split])
    model = train.build_for_run(cfg, tf.distribute.get_strategy(), info, schedule)
    chief_ckpt = tf.train.latest_checkpoint(str(model_dir))
    assert chief_ckpt is not None and chief_ckpt.endswith(f"ckpt-{steps}")
    restore.restore_model_weights(model, chief_ckpt)

    def encode(dataset):
        pairs = [(model.encoder(x, training=False).numpy(), y.numpy()) for x, y in dataset]
        return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])

    train_examples, _ = sources.load_split(cfg.dataset, cfg.train_split, data_dir=cfg.data_dir)
    bank, bank_labels = encode(
        pipeline.eval_dataset(train_examples, batch_size=16, image_size=cfg.image_size)
    )
    query, query_labels = encode(evaluate.eval_input(cfg))
    assert len(bank) == num_bank and len(query) == num_queries
    expected = _numpy_knn_top1(query, query_labels, bank, bank_labels, KNN_K, KNN_TEMPERATURE)
    assert expected > 0.5, "chance is 0.25: the classes' colours should make kNN informative"
    assert float(rows[-1]["knn_top1"]) == pytest.approx(expected, abs=1e-6)

    # Evaluation after training: each of the 11 test examples once; top-1 and the mean
    # cross-entropy equal the NumPy ones (a repeated or missing example would move both).
    chief_result = json.loads((model_dir / "result.json").read_text())
    worker_result = json.loads((dump / "result.json").read_text())
    assert chief_result["num_examples"] == worker_result["num_examples"] == num_queries
    images = evaluate.eval_input(cfg).map(lambda x, y: x)
    logits = np.concatenate([model(x, training=False)["logits_sup"].numpy() for x in images])
    assert chief_result["label_top_1_accuracy"] == pytest.approx(
        np.mean(logits.argmax(1) == query_labels), abs=1e-6
    )
    top = logits.max(1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(1))
    cross_entropy = log_norm - logits[np.arange(num_queries), query_labels]
    assert chief_result["eval_loss"] == pytest.approx(cross_entropy.mean(), rel=1e-4)
