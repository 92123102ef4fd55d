"""One benchmark case: what a case is (the baseline and ``K=V`` overrides) and how one is measured.

``run_case`` runs in a fresh subprocess started by ``tools/benchmark.py`` (see its docstring for
what is measured); ``machine_info`` and ``load_reference`` also serve the per-op profile.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def _step_timer(keras, profile_dir: str | None = None, profile_from: int = 0):
    """A callback recording the wall time of each train step.

    With ``profile_dir``, ``tf.profiler`` traces every step from ``profile_from`` on (the
    warm-up steps, which trace and autotune, stay out of the trace).
    """
    import tensorflow as tf

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self.last_loss: float | None = None
            self._t0 = 0.0
            self._tracing = False

        def on_train_batch_begin(self, batch, logs=None):
            if profile_dir and batch == profile_from and not self._tracing:
                tf.profiler.experimental.start(profile_dir)
                self._tracing = True
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            # Reading the loss waits for the step's work to finish.
            if logs and "loss" in logs:
                self.last_loss = float(logs["loss"])
            self.seconds.append(time.perf_counter() - self._t0)

        def on_train_end(self, logs=None):
            if self._tracing:
                tf.profiler.experimental.stop()
                self._tracing = False

    return StepTimer()


def op_profile(profile_dir: str, steps: int) -> dict[str, dict[str, float]]:
    """Self-time per step (ms) of each op type and of each op of a ``tf.profiler`` trace.

    Reads the trace with TensorFlow's own converter (the one TensorBoard's profile plugin
    calls), so no plugin needs installing. On a CPU, ops run on several threads at once, so
    the sum over ops exceeds the step's wall time; ``IDLE`` is left out.
    """
    import glob

    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    paths = glob.glob(os.path.join(profile_dir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise RuntimeError(f"no tf.profiler trace under {profile_dir}")
    data, ok = plugin.xspace_to_tools_data(paths, "framework_op_stats", {})
    if not ok:
        raise RuntimeError(f"could not convert the trace under {profile_dir}")
    table = json.loads(data)[0]
    cols = [c["id"] for c in table["cols"]]
    by_type: dict[str, float] = {}
    by_name: dict[str, float] = {}
    for row in table["rows"]:
        rec = dict(zip(cols, (c.get("v") for c in row["c"]), strict=False))
        if rec["type"] == "IDLE":
            continue
        ms = float(rec["total_self_time"]) / 1e3 / steps
        by_type[rec["type"]] = by_type.get(rec["type"], 0.0) + ms
        name = f"{rec['type']} {rec['operation']}"
        by_name[name] = by_name.get(name, 0.0) + ms
    return {"by_type": by_type, "by_name": by_name}


def _time_batches(dataset, batches: int) -> list[float]:
    it = iter(dataset)
    next(it)  # fills the shuffle buffer
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t0)
    return times


def load_reference(path: str):
    """Imports the reference code's data_util.py from ``path`` (not shipped with simclr_tf)."""
    import importlib.util

    if not os.path.isfile(path):
        raise SystemExit(
            f"benchmark: no reference file '{path}'. Fetch google-research/simclr and pass "
            "its tf2/data_util.py (--reference_data_util) or tf2/ folder (--reference_dir)."
        )
    spec = importlib.util.spec_from_file_location("reference_data_util", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_two_views(ref, image, size: int, strength: float) -> list:
    """The reference's two pretraining views of one decoded image, as its tf2/data.py makes
    them: ``preprocess_image`` takes the colour strength as an argument whose default, 0,
    would leave out the colour distortion (its data_util reads no flag)."""
    return [
        ref.preprocess_image(image, size, size, is_training=True, color_jitter_strength=strength)
        for _ in range(2)
    ]


def reference_dataset(cfg, path: str, blur: bool = True):
    """The reference code's training input over the same files (its tf2/data.py layout);
    ``blur=False`` leaves out its batch blur (its train step's part, on the device)."""
    import tensorflow as tf

    from simclr_tf.data import sources

    ref = load_reference(path)
    images, _ = sources.load_split(
        cfg.dataset, cfg.train_split, data_dir=cfg.data_dir, shuffle_files=True
    )  # decoded as for our pipeline
    size = cfg.image_size

    def two_views(image, label):
        views = reference_two_views(ref, image, size, cfg.color_jitter_strength)
        return tf.concat(views, -1), label

    def blur(images, labels):
        views = tf.split(images, 2, axis=-1)
        return tf.concat(ref.batch_random_blur(views, size, size), -1), labels

    ds = images.shuffle(min(10_000, max(10 * cfg.train_batch_size, 1)), seed=0).repeat()
    ds = ds.map(two_views, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(cfg.train_batch_size, drop_remainder=True)
    if cfg.use_blur and blur:  # the reference blurs the batch inside its train step
        ds = ds.map(blur, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _measure_steps(
    cfg, strategy, info, warmup: int, steps: int, profile: bool = False
) -> dict[str, Any]:
    """Build time, per-step times and speed of ``warmup + steps`` real train steps in ``fit``.

    ``profile`` also traces the timed steps and adds their per-op self-times (``op_profile``);
    the trace slows the steps a little, so profiled step times are not for ratios.
    """
    import keras

    from simclr_tf import train

    out: dict[str, Any] = {}
    schedule = train.make_schedule_for(cfg, info.split_sizes[cfg.train_split])
    t_build = time.perf_counter()
    model = train.build_for_run(cfg, strategy, info, schedule)
    out["build_seconds"] = time.perf_counter() - t_build
    dataset = train.train_dataset(cfg, strategy, 0)
    profile_dir = tempfile.mkdtemp(prefix="simclr_profile_") if profile else None
    timer = _step_timer(keras, profile_dir, warmup)
    model.fit(
        dataset,
        epochs=1,
        steps_per_epoch=warmup + steps,
        callbacks=[timer],
        verbose=0,
        shuffle=False,
    )
    measured = timer.seconds[warmup:] or timer.seconds[-1:]
    median = statistics.median(measured)
    out["first_step_seconds"] = timer.seconds[0]
    out["step_seconds"] = [round(s, 3) for s in timer.seconds]
    out["step_seconds_median"] = median
    out["step_images_per_sec"] = cfg.train_batch_size / median
    # The fastest timed step: the least disturbed by other processes on a shared machine.
    out["step_images_per_sec_best"] = cfg.train_batch_size / min(measured)
    out["final_loss"] = timer.last_loss
    if profile_dir:
        out["op_profile_ms_per_step"] = op_profile(profile_dir, steps)
        shutil.rmtree(profile_dir, ignore_errors=True)
    return out


def run_case(
    case: dict[str, Any], what: str, steps: int, warmup: int, pipeline_batches: int
) -> dict[str, Any]:
    """Builds the run exactly as ``run.py`` does and measures it (call in a fresh process)."""
    from simclr_tf import config as config_lib
    from simclr_tf import config_defaults, distribute

    case = dict(case)
    reference = case.pop("_reference", None)
    reference_blur = case.pop("_reference_blur", True)
    model_dir = tempfile.mkdtemp(prefix="simclr_bench_")
    cfg = config_lib.Config(
        **{
            **case,
            "mode": "train",
            "model_dir": model_dir,
            "train_steps": warmup + steps,
            "verbose": 0,
            "export_saved_model": False,
        }
    )
    strategy = distribute.strategy_for(cfg)  # as run.py builds it
    import keras
    import tensorflow as tf

    from simclr_tf import train
    from simclr_tf.data import sources

    info = sources.dataset_info(cfg.dataset, cfg.data_dir)
    side = info.image_shape[0] if info.image_shape and info.image_shape[0] else None
    cfg = config_defaults.resolve(cfg, side, tuple(info.split_sizes)).validate()
    cfg = train.place_augmentation(cfg, strategy, info)  # --augment_on=auto, as run.py
    result: dict[str, Any] = {
        "case": case_name(case.get("_overrides", {})),
        "machine": machine_info(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "flags": {
            k: v
            for k, v in dataclasses.asdict(cfg).items()
            if k in BASE_CASE or k in ("image_size", "strategy", "num_cpu_devices")
        },
        "replicas": strategy.num_replicas_in_sync,
    }

    if what in ("pipeline", "all"):
        if reference:
            dataset = reference_dataset(cfg, reference, reference_blur)
            result["flags"]["pipeline"] = f"reference data_util ({reference})"
            result["flags"]["reference_batch_blur"] = bool(cfg.use_blur and reference_blur)
        else:
            dataset = train.train_dataset(cfg, strategy, 0)
        times = _time_batches(dataset, pipeline_batches)
        del dataset
        result["pipeline_batch_seconds_median"] = statistics.median(times)
        result["pipeline_images_per_sec"] = cfg.train_batch_size / statistics.median(times)

    if what in ("step", "all", "profile"):
        result.update(_measure_steps(cfg, strategy, info, warmup, steps, what == "profile"))

    result["peak_rss_gb"] = _peak_rss_gb()
    result["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    result["device_peak_bytes"] = _device_peak_bytes(tf)
    shutil.rmtree(model_dir, ignore_errors=True)
    return result
