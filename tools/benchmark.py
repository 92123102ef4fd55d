#!/usr/bin/env python
"""Speed and memory of the real SimCLR pretraining step, one JSON line per case.

    python tools/benchmark.py                                   # ResNet-18, CIFAR, batch 256
    python tools/benchmark.py --candidate=mixed_precision=bfloat16 \\
        --candidate=mixed_precision=bfloat16,jit_compile=true --repeats=2
    python tools/benchmark.py --set=train_batch_size=1024 --what=step --steps=1 \\
        --warmup_steps=0 --candidate=micro_batch_size=128

Every case runs in its own subprocess (so peak RSS, XLA caches and the global mixed-precision
policy never mix) and builds everything the way ``run.py`` does: ``config.resolve`` /
``validate``, ``train.build_for_run`` (precision policy, model, optimizer, ``compile`` with
``jit_compile``), ``train.train_dataset`` (the real tf.data input, host or device
augmentation) and ``model.fit`` with the real ``train_step``; a callback only reads the clock.

Measured per case:

* ``pipeline_images_per_sec``: two-view input batches per second x batch, the input alone
  (first batch, which fills the shuffle buffer, excluded);
* ``step_images_per_sec``: global batch / median step time after ``--warmup_steps`` (tracing
  and XLA compilation happen there); images are counted once (each yields two views);
  ``step_images_per_sec_best`` uses the fastest timed step (least disturbed by other load);
* ``peak_rss_gb``: the process's peak resident memory (``getrusage``), and the device's peak
  memory where TensorFlow reports one (GPU).

A *baseline* (the tool's flags plus ``--set``) and any ``--candidate`` overrides run in the
same command, interleaved ``--repeats`` times (A B A B ...), and each candidate's ratio to the
baseline is printed: absolute numbers move from run to run on shared machines, ratios much less.
Override keys are :class:`simclr_tf.config.Config` field names (``resnet_depth``,
``width_multiplier``, ``image_size``, ``train_batch_size``, ``mixed_precision``, ``jit_compile``,
``augment_on``, ``micro_batch_size``, ``strategy``, ``num_cpu_devices``, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "cifar10")
# What the reference run of the task used: ResNet-18 with the CIFAR stem at 32 px, batch 256.
BASE_CASE: dict[str, Any] = {
    "dataset": "image_folder",
    "data_dir": DEFAULT_DATA,
    "resnet_depth": 18,
    "width_multiplier": 1.0,
    "train_batch_size": 256,
    "temperature": 0.5,
    "learning_rate": 1.0,
    "optimizer": "lars",
    "mixed_precision": "none",
    "jit_compile": False,
    "augment_on": "host",
    "micro_batch_size": 0,
}
# Per-case results that a ratio is printed for (higher is better for the first two).
RATIO_KEYS = (
    "step_images_per_sec", "step_images_per_sec_best", "pipeline_images_per_sec", "peak_rss_gb"
)


# --------------------------------------------------------------------------------------------
# Case descriptions
# --------------------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    """'true'/'false' -> bool, then int, float, 'none'/'null' -> None, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null",):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_overrides(spec: str) -> dict[str, Any]:
    """``"k=v,k2=v2"`` -> dict, checked against the Config fields (typos fail loudly)."""
    from simclr_tf.config import Config

    fields = {f.name for f in dataclasses.fields(Config)}
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if "=" not in item:
            raise SystemExit(
                f"benchmark: override {item!r} is not KEY=VALUE (e.g. jit_compile=true)."
            )
        key, value = item.split("=", 1)
        key = key.strip()
        if key not in fields:
            raise SystemExit(
                f"benchmark: unknown key {key!r}; use a Config field name such as "
                "mixed_precision, jit_compile, augment_on, micro_batch_size, train_batch_size."
            )
        out[key] = _parse_value(value)
    return out


def case_name(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "baseline"


# --------------------------------------------------------------------------------------------
# Child: one case, measured in this process
# --------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    features = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_features": features,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }


def _peak_rss_gb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def _device_peak_bytes(tf) -> int | None:
    for dev in tf.config.list_logical_devices():
        if dev.device_type in ("GPU", "TPU"):
            try:
                return int(tf.config.experimental.get_memory_info(dev.name)["peak"])
            except (ValueError, KeyError, RuntimeError):
                return None
    return None


def _step_timer(keras):
    """A callback recording the wall time of each train step."""

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self.last_loss: float | None = None
            self._t0 = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            # Reading the loss waits for the step's work to finish.
            if logs and "loss" in logs:
                self.last_loss = float(logs["loss"])
            self.seconds.append(time.perf_counter() - self._t0)

    return StepTimer()


def run_case(case: dict[str, Any], what: str, steps: int, warmup: int, pipeline_batches: int
             ) -> dict[str, Any]:
    """Builds the run exactly as ``run.py`` does and measures it (call in a fresh process)."""
    from simclr_tf import config as config_lib
    from simclr_tf import distribute

    model_dir = tempfile.mkdtemp(prefix="simclr_bench_")
    cfg = config_lib.Config(
        **{**case, "mode": "train", "model_dir": model_dir, "train_steps": warmup + steps,
           "verbose": 0, "export_saved_model": False}
    )
    strategy = distribute.make_strategy(
        cfg.strategy, tpu_name=cfg.tpu_name, tpu_zone=cfg.tpu_zone,
        gcp_project=cfg.gcp_project, num_cpu_devices=cfg.num_cpu_devices,
    )
    import keras
    import tensorflow as tf

    from simclr_tf import train
    from simclr_tf.data import sources

    info = sources.dataset_info(cfg.dataset, cfg.data_dir)
    side = info.image_shape[0] if info.image_shape and info.image_shape[0] else None
    cfg = config_lib.resolve(cfg, side, tuple(info.split_sizes)).validate()
    result: dict[str, Any] = {
        "case": case_name(case.get("_overrides", {})),
        "machine": machine_info(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "flags": {k: v for k, v in dataclasses.asdict(cfg).items()
                  if k in BASE_CASE or k in ("image_size", "strategy", "num_cpu_devices")},
        "replicas": strategy.num_replicas_in_sync,
    }

    if what in ("pipeline", "all"):
        dataset = train.train_dataset(cfg, strategy, 0)
        it = iter(dataset)
        next(it)  # fills the shuffle buffer
        times = []
        for _ in range(pipeline_batches):
            t0 = time.perf_counter()
            next(it)
            times.append(time.perf_counter() - t0)
        del it, dataset
        result["pipeline_batch_seconds_median"] = statistics.median(times)
        result["pipeline_images_per_sec"] = cfg.train_batch_size / statistics.median(times)

    if what in ("step", "all"):
        schedule = train.make_schedule_for(cfg, info.split_sizes[cfg.train_split])
        t_build = time.perf_counter()
        model = train.build_for_run(cfg, strategy, info, schedule)
        result["build_seconds"] = time.perf_counter() - t_build
        dataset = train.train_dataset(cfg, strategy, 0)
        timer = _step_timer(keras)
        model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer],
                  verbose=0, shuffle=False)
        measured = timer.seconds[warmup:] or timer.seconds[-1:]
        median = statistics.median(measured)
        result["first_step_seconds"] = timer.seconds[0]
        result["step_seconds"] = [round(s, 3) for s in timer.seconds]
        result["step_seconds_median"] = median
        result["step_images_per_sec"] = cfg.train_batch_size / median
        # The fastest timed step: the least disturbed by other processes on a shared machine.
        result["step_images_per_sec_best"] = cfg.train_batch_size / min(measured)
        result["final_loss"] = timer.last_loss

    result["peak_rss_gb"] = _peak_rss_gb()
    result["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    result["device_peak_bytes"] = _device_peak_bytes(tf)
    shutil.rmtree(model_dir, ignore_errors=True)
    return result


# --------------------------------------------------------------------------------------------
# Parent: runs the cases in subprocesses, prints JSON lines and ratios
# --------------------------------------------------------------------------------------------


def _run_child(case: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable, os.path.abspath(__file__), "--child_case", json.dumps(case),
        "--what", args.what, "--steps", str(args.steps), "--warmup_steps", str(args.warmup_steps),
        "--pipeline_batches", str(args.pipeline_batches),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = "\n".join(proc.stderr.splitlines()[-15:])
    return {"case": case_name(case.get("_overrides", {})), "error": f"exit {proc.returncode}",
            "stderr_tail": tail}


def _ratios(base: list[dict], cand: list[dict]) -> dict[str, float]:
    """Median over repeats of candidate / baseline, paired run by run."""
    out = {}
    for key in RATIO_KEYS:
        pairs = [c[key] / b[key] for b, c in zip(base, cand, strict=False)
                 if b.get(key) and c.get(key)]
        if pairs:
            out[key] = round(statistics.median(pairs), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", action="append", default=[], metavar="K=V,...",
                   help="Overrides of the baseline case (Config field names).")
    p.add_argument("--candidate", action="append", default=[], metavar="K=V,...",
                   help="A case = baseline + these overrides; its ratio to the baseline is "
                        "printed. Repeat for several candidates.")
    p.add_argument("--no_baseline", action="store_true",
                   help="Run only the candidates (no ratios).")
    p.add_argument("--what", choices=("all", "step", "pipeline"), default="all")
    p.add_argument("--steps", type=int, default=4, help="Timed train steps per case.")
    p.add_argument("--warmup_steps", type=int, default=2,
                   help="Untimed first steps (tracing, XLA compilation, autotuning).")
    p.add_argument("--pipeline_batches", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1,
                   help="Run baseline and candidates interleaved this many times.")
    p.add_argument("--timeout", type=float, default=3600.0, help="Seconds per case.")
    p.add_argument("--child_case", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child_case is not None:
        case = json.loads(args.child_case)
        overrides = case.pop("_overrides", {})
        result = run_case({**case}, args.what, args.steps, args.warmup_steps,
                          args.pipeline_batches)
        result["case"] = case_name(overrides)
        print(json.dumps(result), flush=True)
        return 0

    base_overrides: dict[str, Any] = {}
    for spec in args.set:
        base_overrides.update(parse_overrides(spec))
    cases: list[tuple[str, dict[str, Any]]] = []
    if not args.no_baseline:
        cases.append(("baseline", {**BASE_CASE, **base_overrides, "_overrides": {}}))
    for spec in args.candidate:
        over = parse_overrides(spec)
        cases.append((case_name(over), {**BASE_CASE, **base_overrides, **over,
                                        "_overrides": over}))
    if not cases:
        raise SystemExit("benchmark: nothing to run (pass --candidate or drop --no_baseline).")

    results: dict[str, list[dict]] = {name: [] for name, _ in cases}
    for rep in range(args.repeats):
        for name, case in cases:
            res = _run_child(case, args)
            res["repeat"] = rep
            if name == "baseline" and base_overrides:
                res["baseline_overrides"] = base_overrides
            results[name].append(res)
            print(json.dumps(res), flush=True)
    if "baseline" in results:
        for name, _ in cases[1:]:
            print(json.dumps({"ratio": name, "vs": "baseline", "repeats": args.repeats,
                              **_ratios(results["baseline"], results[name])}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
