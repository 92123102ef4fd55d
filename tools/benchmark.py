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

The reference input pipeline, paired (``--what=pipeline``): ``--reference_data_util=PATH`` adds
a case that runs the SimCLR reference code's per-image ``preprocess_for_train`` (two views,
``tf.data`` AUTOTUNE map, then its ``batch_random_blur`` on the batch when blur is on) over the
same files, batch and shuffle buffer, interleaved with the other cases; every case's ratio to
it is printed. The reference is NOT shipped with simclr_tf: fetch ``tf2/data_util.py`` of
google-research/simclr yourself and pass its path.

Per-op profile (``--what=ops``): milliseconds per image (two views) of each step of the per-image
host path, old and new variants side by side, on one thread, repeats interleaved::

    python tools/make_benchmark_folder.py --out=/tmp/bench_folder
    python tools/benchmark.py --what=ops --set=data_dir=/tmp/bench_folder --set=image_size=224
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
    "step_images_per_sec",
    "step_images_per_sec_best",
    "pipeline_images_per_sec",
    "peak_rss_gb",
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


def _time_batches(dataset, batches: int) -> list[float]:
    it = iter(dataset)
    next(it)  # fills the shuffle buffer
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t0)
    return times


def _load_reference(path: str):
    """Imports the reference code's data_util.py from ``path`` (not shipped with simclr_tf)."""
    import importlib.util

    from absl import flags

    if not os.path.isfile(path):
        raise SystemExit(
            f"benchmark: no reference file '{path}'. Fetch tf2/data_util.py of "
            "google-research/simclr and pass its path to --reference_data_util."
        )
    spec = importlib.util.spec_from_file_location("reference_data_util", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if "color_jitter_strength" not in flags.FLAGS:
        flags.DEFINE_float("color_jitter_strength", 1.0, "Read by the reference data_util.")
    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["benchmark"])
    return module


def reference_dataset(cfg, path: str):
    """The reference code's training input over the same files (its tf2/data.py layout)."""
    import tensorflow as tf
    from absl import flags

    from simclr_tf.data import sources

    ref = _load_reference(path)
    flags.FLAGS.color_jitter_strength = cfg.color_jitter_strength
    images, _ = sources.load_split(
        cfg.dataset, cfg.train_split, data_dir=cfg.data_dir, shuffle_files=True
    )  # decoded as for our pipeline
    size = cfg.image_size

    def two_views(image, label):
        views = [ref.preprocess_image(image, size, size, is_training=True) for _ in range(2)]
        return tf.concat(views, -1), label

    def blur(images, labels):
        views = tf.split(images, 2, axis=-1)
        return tf.concat(ref.batch_random_blur(views, size, size), -1), labels

    ds = images.shuffle(min(10_000, max(10 * cfg.train_batch_size, 1)), seed=0).repeat()
    ds = ds.map(two_views, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(cfg.train_batch_size, drop_remainder=True)
    if cfg.use_blur:  # the reference blurs the batch inside its train step
        ds = ds.map(blur, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def run_case(
    case: dict[str, Any], what: str, steps: int, warmup: int, pipeline_batches: int
) -> dict[str, Any]:
    """Builds the run exactly as ``run.py`` does and measures it (call in a fresh process)."""
    from simclr_tf import config as config_lib
    from simclr_tf import distribute

    case = dict(case)
    reference = case.pop("_reference", None)
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
    strategy = distribute.make_strategy(
        cfg.strategy,
        tpu_name=cfg.tpu_name,
        tpu_zone=cfg.tpu_zone,
        gcp_project=cfg.gcp_project,
        num_cpu_devices=cfg.num_cpu_devices,
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
        "flags": {
            k: v
            for k, v in dataclasses.asdict(cfg).items()
            if k in BASE_CASE or k in ("image_size", "strategy", "num_cpu_devices")
        },
        "replicas": strategy.num_replicas_in_sync,
    }

    if what in ("pipeline", "all"):
        if reference:
            dataset = reference_dataset(cfg, reference)
            result["flags"]["pipeline"] = f"reference data_util ({reference})"
        else:
            dataset = train.train_dataset(cfg, strategy, 0)
        times = _time_batches(dataset, pipeline_batches)
        del dataset
        result["pipeline_batch_seconds_median"] = statistics.median(times)
        result["pipeline_images_per_sec"] = cfg.train_batch_size / statistics.median(times)

    if what in ("step", "all"):
        schedule = train.make_schedule_for(cfg, info.split_sizes[cfg.train_split])
        t_build = time.perf_counter()
        model = train.build_for_run(cfg, strategy, info, schedule)
        result["build_seconds"] = time.perf_counter() - t_build
        dataset = train.train_dataset(cfg, strategy, 0)
        timer = _step_timer(keras)
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
# Per-op profile of the per-image host path
# --------------------------------------------------------------------------------------------


def _profile_ops_table(tf, aug, size: int, strength: float, ref) -> list[tuple[str, str, Any]]:
    """(name, input kind, fn) of each profiled step; kinds: path, file, image, views.

    "before" rows are the per-image host path before the 224 px work (batched ops on the two
    crops of an image), "after" rows what ``two_views`` runs now; "not used" rows are ideas
    measured and dropped.
    """

    def boxes(image, seed):
        shape = tf.shape(image)
        return aug.sample_crop_boxes(seed, shape[0], shape[1], 2)

    def slices(image, seed):
        b = boxes(image, seed)
        return [tf.slice(image, [b[i, 0], b[i, 1], 0], [b[i, 2], b[i, 3], -1]) for i in range(2)]

    def old_resize(image, seed):  # before: float copy of each crop, then resize
        return [
            tf.clip_by_value(
                tf.image.resize(
                    tf.image.convert_image_dtype(c, tf.float32), [size, size], "bicubic"
                ),
                0.0,
                1.0,
            )
            for c in slices(image, seed)
        ]

    def decode_crops(raw, seed):  # decodes only each box, but twice the rows of one decode
        shape = tf.io.extract_jpeg_shape(raw)
        b = aug.sample_crop_boxes(seed, shape[0], shape[1], 2)
        return [
            tf.image.resize(
                tf.io.decode_and_crop_jpeg(raw, b[i], channels=3), [size, size], "bicubic"
            )
            for i in range(2)
        ]

    def seeds(seed, n):
        return tf.unstack(tf.random.experimental.stateless_split(seed, n))

    def old_jitter(views, seed):
        s_jitter, s_apply = seeds(seed, 2)
        params = aug._jitter_params(s_jitter, 2, strength)
        return aug._jitter_step(views, params, aug._bernoulli(s_apply, 2, 0.8), False)

    def new_jitter(views, seed):
        s_jitter, s_apply = seeds(seed, 2)
        params = aug._jitter_params(s_jitter, 2, strength)
        return aug._jitter_step(tf.unstack(views), params, aug._bernoulli(s_apply, 2, 0.8), True)

    def new_jitter_no_xla(views, seed):
        compiled = aug._jitter_one_compiled
        aug._jitter_one_compiled = aug._jitter_one
        try:
            return new_jitter(views, seed)
        finally:
            aug._jitter_one_compiled = compiled

    def blur(per_view):
        def fn(views, seed):
            apply, sigma = aug._blur_params(seed, 2, 0.5, (0.1, 2.0))
            x = tf.unstack(views) if per_view else views
            return aug._blur_step(x, apply, sigma, per_view)

        return fn

    def gray(per_view):
        def fn(views, seed):
            mask = aug._bernoulli(seed, 2, 0.2)
            return aug._gray_step(tf.unstack(views) if per_view else views, mask, per_view)

        return fn

    def flip(per_view):
        def fn(views, seed):
            mask = aug._bernoulli(seed, 2, 0.5)
            return aug._flip_step(tf.unstack(views) if per_view else views, mask, per_view)

        return fn

    def old_whole(image, seed):  # before: per-image crops, then the batched ops on the pair
        def crop(s_crop, flip_mask):
            return tf.stack(aug._image_crop(image, 2, size, "reference")(s_crop, None)[0]), False

        return aug._compose_views(crop, seed, 2, strength, True, False)

    table = [
        ("read file", "path", lambda path, seed: tf.io.read_file(path)),
        (
            "decode whole JPEG",
            "file",
            lambda raw, seed: tf.io.decode_image(raw, channels=3, expand_animations=False),
        ),
        (
            "float conversion of the whole image",
            "image",
            lambda image, seed: tf.image.convert_image_dtype(image, tf.float32),
        ),
        ("2 crop boxes (reference sampler)", "image", boxes),
        ("2 crops: slice", "image", slices),
        ("2 crops: slice, float, bicubic resize (before and after)", "image", old_resize),
        (
            "2 crops: slice, bicubic resize from uint8 (not used)",
            "image",
            lambda image, seed: [
                tf.image.resize(c, [size, size], "bicubic") for c in slices(image, seed)
            ],
        ),
        ("2 crops: decode_and_crop_jpeg each, resize (not used)", "file", decode_crops),
        ("flip, batched gather (before)", "views", flip(False)),
        ("flip, per view (after)", "views", flip(True)),
        ("colour jitter p=0.8, 15-slot schedule (before)", "views", old_jitter),
        ("colour jitter p=0.8, each op once, XLA-compiled (after)", "views", new_jitter),
        ("colour jitter p=0.8, each op once, plain TF ops (not used)", "views", new_jitter_no_xla),
        (
            "hue only, HSV round trip batched (before)",
            "views",
            lambda views, seed: aug._hue(views, tf.fill([2], 0.1)),
        ),
        (
            "hue only, tf.image.adjust_hue per view (now inside the XLA jitter)",
            "views",
            lambda views, seed: [tf.image.adjust_hue(v, 0.1) for v in tf.unstack(views)],
        ),
        ("grayscale p=0.2, batched (before)", "views", gray(False)),
        ("grayscale p=0.2, per view (after)", "views", gray(True)),
        ("blur p=0.5, batched (before)", "views", blur(False)),
        ("blur p=0.5, per view (after)", "views", blur(True)),
        ("whole two views, before (decoded image)", "image", old_whole),
        (
            "whole two views, after (decoded image)",
            "image",
            lambda image, seed: aug.two_views(image, seed, size, strength, True),
        ),
        (
            "whole two views, after, no blur (decoded image)",
            "image",
            lambda image, seed: aug.two_views(image, seed, size, strength, False),
        ),
    ]
    if ref is not None:

        def ref_views(image, seed):
            views = [ref.preprocess_image(image, size, size, is_training=True) for _ in range(2)]
            return ref.batch_random_blur([tf.stack(views)], size, size)

        table.append(("whole two views, reference (decoded image, batch blur)", "image", ref_views))
    return table


def profile_ops(
    case: dict[str, Any], num_images: int, repeats: int, reference: str | None = None
) -> int:
    """Prints ms per image (two views) of every step, one thread, interleaved repeats."""
    import glob

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from simclr_tf.data import augment as aug

    size = int(case.get("image_size") or 224)
    strength = float(case.get("color_jitter_strength") or 1.0)
    ref = None
    if reference:
        from absl import flags

        ref = _load_reference(reference)
        flags.FLAGS.color_jitter_strength = strength
    paths = sorted(glob.glob(os.path.join(case["data_dir"], "train", "*", "*.*")))[:num_images]
    if not paths:
        raise SystemExit(f"benchmark: no images under {case['data_dir']}/train/<class>/.")
    files = [tf.io.read_file(p) for p in paths]
    images = [tf.io.decode_image(f, channels=3, expand_animations=False) for f in files]
    rng = tf.random.Generator.from_seed(0)
    views = [rng.uniform([2, size, size, 3]) for _ in range(min(16, len(paths)))]
    inputs = {
        "path": [tf.constant(p) for p in paths],
        "file": files,
        "image": images,
        "views": views,
    }
    specs = {
        "path": tf.TensorSpec([], tf.string),
        "file": tf.TensorSpec([], tf.string),
        "image": tf.TensorSpec([None, None, 3], tf.uint8),
        "views": tf.TensorSpec([2, size, size, 3], tf.float32),
    }
    seed_spec = tf.TensorSpec([2], tf.int64)
    table = _profile_ops_table(tf, aug, size, strength, ref)
    fns = [tf.function(fn, input_signature=[specs[kind], seed_spec]) for _, kind, fn in table]
    seeds = [tf.constant([k, 17], tf.int64) for k in range(len(paths))]
    for fn, (_, kind, _) in zip(fns, table, strict=True):
        for x, sd in zip(inputs[kind][:2], seeds, strict=False):
            fn(x, sd)  # trace and warm up
    times: list[list[float]] = [[] for _ in table]
    for _ in range(max(1, repeats)):
        for k, (fn, (_, kind, _)) in enumerate(zip(fns, table, strict=True)):
            t0 = time.perf_counter()
            for x, sd in zip(inputs[kind], seeds, strict=False):
                out = fn(x, sd)
            tf.nest.map_structure(lambda t: t.numpy(), out)
            times[k].append((time.perf_counter() - t0) / len(inputs[kind]))
    info = {
        "machine": machine_info(),
        "tensorflow": tf.__version__,
        "image_size": size,
        "color_jitter_strength": strength,
        "images": len(paths),
        "repeats": repeats,
        "threads": 1,
    }
    print(json.dumps(info), flush=True)
    for (name, _, _), ts in zip(table, times, strict=True):
        print(
            json.dumps(
                {
                    "op": name,
                    "ms_per_image_median": round(1e3 * statistics.median(ts), 3),
                    "ms_per_image_min": round(1e3 * min(ts), 3),
                }
            ),
            flush=True,
        )
    return 0


# --------------------------------------------------------------------------------------------
# Parent: runs the cases in subprocesses, prints JSON lines and ratios
# --------------------------------------------------------------------------------------------


def _run_child(case: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child_case",
        json.dumps(case),
        "--what",
        args.what,
        "--steps",
        str(args.steps),
        "--warmup_steps",
        str(args.warmup_steps),
        "--pipeline_batches",
        str(args.pipeline_batches),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = "\n".join(proc.stderr.splitlines()[-15:])
    return {
        "case": case_name(case.get("_overrides", {})),
        "error": f"exit {proc.returncode}",
        "stderr_tail": tail,
    }


def _ratios(base: list[dict], cand: list[dict]) -> dict[str, float]:
    """Median over repeats of candidate / baseline, paired run by run."""
    out = {}
    for key in RATIO_KEYS:
        pairs = [
            c[key] / b[key] for b, c in zip(base, cand, strict=False) if b.get(key) and c.get(key)
        ]
        if pairs:
            out[key] = round(statistics.median(pairs), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="K=V,...",
        help="Overrides of the baseline case (Config field names).",
    )
    p.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="K=V,...",
        help="A case = baseline + these overrides; its ratio to the baseline is "
        "printed. Repeat for several candidates.",
    )
    p.add_argument(
        "--no_baseline", action="store_true", help="Run only the candidates (no ratios)."
    )
    p.add_argument(
        "--what",
        choices=("all", "step", "pipeline", "ops"),
        default="all",
        help="ops: the per-op profile of the per-image host path (no cases).",
    )
    p.add_argument(
        "--reference_data_util",
        default=None,
        metavar="PATH",
        help="Path of the SimCLR reference code's tf2/data_util.py (not shipped): "
        "adds its input pipeline as a case (--what=pipeline); ratios to it are "
        "printed.",
    )
    p.add_argument("--ops_images", type=int, default=32, help="Images per op (--what=ops).")
    p.add_argument("--steps", type=int, default=4, help="Timed train steps per case.")
    p.add_argument(
        "--warmup_steps",
        type=int,
        default=2,
        help="Untimed first steps (tracing, XLA compilation, autotuning).",
    )
    p.add_argument("--pipeline_batches", type=int, default=10)
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="Run baseline and candidates interleaved this many times.",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="Seconds per case.")
    p.add_argument("--child_case", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child_case is not None:
        case = json.loads(args.child_case)
        overrides = case.pop("_overrides", {})
        is_reference = "_reference" in case
        result = run_case({**case}, args.what, args.steps, args.warmup_steps, args.pipeline_batches)
        result["case"] = "reference" if is_reference else case_name(overrides)
        print(json.dumps(result), flush=True)
        return 0

    base_overrides: dict[str, Any] = {}
    for spec in args.set:
        base_overrides.update(parse_overrides(spec))
    if args.what == "ops":
        return profile_ops(
            {**BASE_CASE, **base_overrides}, args.ops_images, args.repeats, args.reference_data_util
        )
    cases: list[tuple[str, dict[str, Any]]] = []
    if not args.no_baseline:
        cases.append(("baseline", {**BASE_CASE, **base_overrides, "_overrides": {}}))
    if args.reference_data_util:
        if args.what != "pipeline":
            raise SystemExit("benchmark: --reference_data_util needs --what=pipeline.")
        _load_reference(args.reference_data_util)  # fails early on a wrong path
        cases.append(
            (
                "reference",
                {
                    **BASE_CASE,
                    **base_overrides,
                    "_overrides": {},
                    "_reference": os.path.abspath(args.reference_data_util),
                },
            )
        )
    for spec in args.candidate:
        over = parse_overrides(spec)
        cases.append((case_name(over), {**BASE_CASE, **base_overrides, **over, "_overrides": over}))
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
    for base in ("baseline", "reference"):
        if base not in results:
            continue
        for name, _ in cases:
            if name not in (base, "reference"):
                print(
                    json.dumps(
                        {
                            "ratio": name,
                            "vs": base,
                            "repeats": args.repeats,
                            **_ratios(results[base], results[name]),
                        }
                    ),
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
