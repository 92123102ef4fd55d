#!/usr/bin/env python
"""Throughput of --data_service input with 1 vs N tf.data service workers, paired.

    python tools/benchmark_data_service.py --data_dir=/path/to/cifar10 --workers=1,2 \\
        --batches=20 --repeats=3

One dispatcher and, per case, fresh worker processes (``python -m simclr_tf.data_service``) on
127.0.0.1; this process reads the pretraining input exactly as ``run.py --data_service`` does
(``train.train_dataset``) and times ``--batches`` batches after ``--warmup`` batches. Cases run
interleaved (1, 2, 1, 2, ...); the median ratio to the first case is printed. One JSON line per
case. Worker processes each get all cores: on a machine with few cores the workers compete
with each other and with this reader, so the figure shows the service's overhead and scaling
only as far as the cores allow; on real input machines each worker has its own.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import tensorflow as tf  # noqa: E402

from simclr_tf import config, config_defaults, data_service, train  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(
        [sys.executable, "-m", "simclr_tf.data_service", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_listening(port: int, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"benchmark: nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def run_case(address: str, dport: int, workers: int, cfg: config.Config, args) -> dict:
    procs = []
    try:
        for _ in range(workers):
            port = _free_port()
            procs.append(
                _spawn(
                    "worker",
                    f"--dispatcher=127.0.0.1:{dport}",
                    f"--port={port}",
                    f"--worker_address=127.0.0.1:{port}",
                )
            )
            _wait_listening(port)
        dataset = train.train_dataset(cfg, tf.distribute.get_strategy(), start_step=0)
        it = iter(dataset)
        for _ in range(args.warmup):
            next(it)
        start = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        seconds = time.perf_counter() - start
        return {
            "workers": workers,
            "images_per_sec": round(args.batches * cfg.train_batch_size / seconds, 1),
            "seconds": round(seconds, 2),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="image folder ROOT/train/<class>/")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--image_size", type=int, default=None)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    dport = _free_port()
    dispatcher = _spawn("dispatcher", f"--port={dport}")
    address = f"grpc://127.0.0.1:{dport}"
    try:
        _wait_listening(dport)
        data_service.check_dispatcher(address)
        fields = dict(
            model_dir="/unused",
            dataset="image_folder",
            data_dir=args.data_dir,
            train_batch_size=args.batch_size,
            data_service=address,
        )
        if args.image_size:
            fields["image_size"] = args.image_size
        cfg = config.Config(**fields)
        info = train.sources.dataset_info(cfg.dataset, cfg.data_dir)
        side = info.image_shape[0] if info.image_shape else None
        cfg = config_defaults.resolve(cfg, side, tuple(info.split_sizes)).validate()
        counts = [int(w) for w in args.workers.split(",")]
        speeds: dict[int, list[float]] = {w: [] for w in counts}
        for _ in range(args.repeats):
            for w in counts:
                result = run_case(address, dport, w, cfg, args)
                result["image_size"] = cfg.image_size
                result["batch_size"] = cfg.train_batch_size
                print(json.dumps(result), flush=True)
                speeds[w].append(result["images_per_sec"])
        base = counts[0]
        for w in counts[1:]:
            ratios = [b / a for a, b in zip(speeds[base], speeds[w], strict=True)]
            print(
                f"{w} workers vs {base}: median ratio {statistics.median(ratios):.2f}x "
                f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})"
            )
    finally:
        dispatcher.terminate()
        dispatcher.wait()


if __name__ == "__main__":
    main()
