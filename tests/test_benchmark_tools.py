"""The benchmark tools run end to end on tiny inputs, and their printed ratios are their cases'.

These tools are run by hand (benchmarks/README.md), so nothing else notices when a refactor
breaks them: ``tools/benchmark_case.py`` still called ``config.resolve`` after it moved to
``config_defaults``, and that was found only when a benchmark failed.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run_tool(script: str, *args: str) -> subprocess.CompletedProcess:
    """``python tools/<script> args...`` in a child process; fails the test on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / script), *args],
        env={**subprocess_env(), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=os.fspath(REPO),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_benchmark_pipeline_cases_and_their_ratio(tmp_path, write_png_folder):
    data = write_png_folder(tmp_path / "data", 2, {"train": 8, "test": 2}, 8)
    proc = _run_tool(
        "benchmark.py",
        "--what=pipeline",
        "--pipeline_batches=2",
        f"--set=data_dir={data},train_batch_size=4,width_multiplier=0.0625",
        "--candidate=augment_on=device",
    )
    lines = _json_lines(proc.stdout)
    cases = {d["case"]: d for d in lines if "case" in d}
    assert set(cases) == {"baseline", "augment_on=device"}, [d.get("error") for d in lines]
    for case in cases.values():
        assert case["pipeline_images_per_sec"] == pytest.approx(
            4 / case["pipeline_batch_seconds_median"]
        )
        assert case["flags"]["data_dir"] == str(data)
    (ratio,) = [d for d in lines if d.get("ratio") == "augment_on=device"]
    want = (
        cases["augment_on=device"]["pipeline_images_per_sec"]
        / cases["baseline"]["pipeline_images_per_sec"]
    )
    assert ratio["pipeline_images_per_sec"] == pytest.approx(want, rel=2e-3, abs=2e-3)


def test_benchmark_host_views_reports_each_case_and_its_ratio():
    proc = _run_tool(
        "benchmark_host_views.py",
        "--cases=ours_crops,ours",
        "--repeats=1",
        "--batches=1",
        "--batch=4",
        "--images=4",
        "--image_size=32",
    )
    rates = {d["case"]: d["images_per_sec"] for d in _json_lines(proc.stdout)}
    assert set(rates) == {"ours_crops", "ours"} and min(rates.values()) > 0
    table = [line.split() for line in proc.stdout.splitlines() if not line.startswith("{")]
    ratio = {row[0]: float(row[-1].rstrip("x")) for row in table if row}
    assert ratio["ours_crops"] == 1.0  # the first case is the base without a reference
    assert ratio["ours"] == pytest.approx(rates["ours"] / rates["ours_crops"], abs=0.006)


def test_benchmark_profile_traces_every_conv_of_the_step(tmp_path, write_png_folder):
    """--what=profile: the trace holds each of ResNet-18's 20 convolutions (1 stem, 16 in blocks,
    3 projections) forward and filter-gradient once, and the printed table sums the JSON."""
    data = write_png_folder(tmp_path / "data", 2, {"train": 8, "test": 2}, 8)
    proc = _run_tool(
        "benchmark.py",
        "--what=profile",
        "--steps=1",
        "--warmup_steps=1",
        "--profile_top=3",
        f"--set=data_dir={data},train_batch_size=4,width_multiplier=0.0625",
    )
    (case,) = [d for d in _json_lines(proc.stdout) if d.get("case") == "baseline"]
    profile = case["op_profile_ms_per_step"]
    ops = [name.split(" ", 1) for name in profile["by_name"]]
    forward = {op for kind, op in ops if kind.endswith("Conv2D")}
    filter_grads = {op for kind, op in ops if kind.endswith("Conv2DBackpropFilter")}
    assert len(forward) == 20 and len(filter_grads) == 20, sorted(forward | filter_grads)
    total = sum(profile["by_type"].values())
    assert total == pytest.approx(sum(profile["by_name"].values()), rel=1e-9)
    assert total > 0
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| (all ops)")]
    assert len(rows) == 2  # by type, by name
    for row in rows:
        assert float(row.split("|")[2]) == pytest.approx(total, abs=0.051)


# A stand-in for the reference's tf2/data_util.py: its preprocess_image takes the colour strength
# as an argument defaulting to 0 (no colour distortion); the reference's data.py passes
# FLAGS.color_jitter_strength. The stand-in fails at trace time unless the strength arrives, and
# writes it into every pixel so the batch shows what was passed.
_FAKE_DATA_UTIL = """
import os

import tensorflow as tf


def preprocess_image(image, height, width, is_training=False, color_jitter_strength=0.0,
                     test_crop=True):
    want = float(os.environ["FAKE_REFERENCE_STRENGTH"])
    assert is_training and color_jitter_strength == want, color_jitter_strength
    return tf.fill([height, width, 3], tf.constant(color_jitter_strength, tf.float32))


def batch_random_blur(images_list, height, width, blur_probability=0.5):
    return images_list
"""


def test_reference_cases_run_the_reference_colour_distortion(
    tmp_path, monkeypatch, write_png_folder
):
    """The reference baseline of every host-pipeline benchmark gets the colour strength: called
    without it, the reference does crop and flip only and looks ~3x faster than it is."""
    (tmp_path / "data_util.py").write_text(_FAKE_DATA_UTIL)
    monkeypatch.setenv("FAKE_REFERENCE_STRENGTH", "0.7")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "benchmark_host_views.py"),
            f"--reference_dir={tmp_path}",
            "--cases=reference",
            "--strength=0.7",
            "--repeats=1",
            "--batches=1",
            "--batch=2",
            "--images=2",
            "--image_size=8",
        ],
        env={**subprocess_env(), "PYTHONPATH": str(REPO), "FAKE_REFERENCE_STRENGTH": "0.7"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [d["case"] for d in _json_lines(proc.stdout)] == ["reference"]

    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import types

    import benchmark_case

    monkeypatch.setenv("FAKE_REFERENCE_STRENGTH", "0.5")
    cfg = types.SimpleNamespace(
        dataset="image_folder",
        train_split="train",
        data_dir=str(write_png_folder(tmp_path / "data", 2, {"train": 4, "test": 2}, 8)),
        image_size=8,
        color_jitter_strength=0.5,
        train_batch_size=2,
        use_blur=True,
    )
    images, _ = next(iter(benchmark_case.reference_dataset(cfg, str(tmp_path / "data_util.py"))))
    assert images.shape == (2, 8, 8, 6)
    assert float(images.numpy().min()) == float(images.numpy().max()) == 0.5


def test_benchmark_conv_grad_checks_the_gradient_and_marks_the_rules_slower_pick(monkeypatch):
    """The raw-op tool times only gradients that agree, and its table flags a row where the
    rule's pick was the slower gradient (from the timings, not from the rule)."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import benchmark_conv_grad
    import tensorflow as tf

    from simclr_tf.models import conv_grad

    small = (2, 6, 128, 4, 1)  # 4x4 output from 128 channels: the rule picks matmul
    row = benchmark_conv_grad.time_gradients(small, repeats=1)
    assert row["rule_picks_matmul"] and row["relative_error"] < 1e-2
    assert conv_grad.filter_gradient() == "native"  # the tool leaves the global as it was
    rows = [
        {**row, "native_ms": 2.0, "matmul_ms": 1.0},
        {**row, "native_ms": 1.0, "matmul_ms": 2.0},
        {**row, "shape": (2, 20, 128, 4, 1), "rule_picks_matmul": False, "native_ms": 3.0},
    ]
    marks = [
        line.rsplit("|", 2)[-2].strip() for line in benchmark_conv_grad.table(rows).split("\n")
    ]
    assert marks[2:] == ["no", "**yes**", "**yes**"]

    wrong = lambda x, dy, kernel, strides: tf.zeros(kernel, x.dtype)  # noqa: E731
    monkeypatch.setattr(conv_grad, "matmul_filter_gradient", wrong)
    with pytest.raises(AssertionError, match="differs from native"):
        benchmark_conv_grad.time_gradients(small, repeats=1)


def test_benchmark_conv_grad_peak_checks_its_products(monkeypatch):
    """The peak figure is timed on products that equal NumPy's; a wrong product stops it."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import benchmark_conv_grad
    import tensorflow as tf

    peak = benchmark_conv_grad.matmul_peak(64, repeats=1)
    assert set(peak) == {"float32", "bfloat16"} and min(peak.values()) > 0
    monkeypatch.setattr(tf, "matmul", lambda a, b: tf.zeros_like(a))
    with pytest.raises(AssertionError, match="float32 matmul differs from NumPy"):
        benchmark_conv_grad.matmul_peak(64, repeats=1)


def test_benchmark_conv_grad_passes_check_bfloat16_against_float32_and_weight_by_layers(
    monkeypatch,
):
    """Each pass is timed only when bfloat16 agrees with the float32 kernel (the rule's filter
    gradient included), and the summary weights each shape's passes by its layer count."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import benchmark_conv_grad
    import tensorflow as tf

    from simclr_tf.models import conv_grad

    small = (2, 6, 128, 4, 1)  # 4x4 output from 128 channels: bfloat16 takes the matmul gradient
    row = benchmark_conv_grad.time_passes(small, repeats=1)
    assert row["bfloat16_filter_grad"] == "matmul"
    assert conv_grad.filter_gradient() == "native"  # the tool leaves the global as it was
    fake = [
        {"shape": (1, 6, 8, 8, 1), "bfloat16_filter_grad": "native"}
        | {f"float32_{p}_ms": 4.0 for p in benchmark_conv_grad.PASSES}
        | {f"bfloat16_{p}_ms": 2.0 for p in benchmark_conv_grad.PASSES},
        {"shape": (1, 6, 8, 8, 2), "bfloat16_filter_grad": "matmul"}
        | {f"float32_{p}_ms": 1.0 for p in benchmark_conv_grad.PASSES}
        | {f"bfloat16_{p}_ms": 1.0 for p in benchmark_conv_grad.PASSES},
    ]
    text = benchmark_conv_grad.passes_table(fake, {(1, 6, 8, 8, 1): 3, (1, 6, 8, 8, 2): 2})
    # float32: 3 * 12 + 2 * 3 = 42 ms; bfloat16: 3 * 6 + 2 * 3 = 24 ms.
    assert "float32 42 ms, bfloat16 24 ms, **1.75x**" in text
    assert "| 2.00x / 2.00x / 2.00x |" in text and "(matmul)" in text

    wrong = lambda x, dy, kernel, strides: tf.zeros(kernel, x.dtype)  # noqa: E731
    monkeypatch.setattr(conv_grad, "matmul_filter_gradient", wrong)
    with pytest.raises(AssertionError, match="bfloat16 filter_grad differs from float32"):
        benchmark_conv_grad.time_passes(small, repeats=1)


def test_benchmark_conv_grad_roofline_counts_flops_as_tensorflow_does(monkeypatch):
    """The roofline's FLOPs equal TensorFlow's own count for Conv2D (its profiler), its GEMM rate
    is timed only on a product equal to NumPy's, and the summary weights by layer counts."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import benchmark_conv_grad
    import tensorflow as tf

    for shape in [(3, 10, 16, 8, 2), (2, 6, 4, 5, 1)]:
        batch, size, c, d, stride = shape
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(tf.float32, [batch, size, size, c])
            k = tf.compat.v1.placeholder(tf.float32, [3, 3, c, d])
            tf.nn.conv2d(x, k, [1, stride, stride, 1], "VALID")
            options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
            counted = tf.compat.v1.profiler.profile(graph, options={**options, "output": "none"})
        assert benchmark_conv_grad.conv_flops(shape) == counted.total_float_ops

    small = (2, 6, 128, 4, 1)
    assert benchmark_conv_grad.gemm_rate(small, repeats=1) > 0
    shape_a, shape_b = (1, 6, 8, 8, 1), (1, 6, 8, 8, 2)  # 2 * 16 * 72 * 8 and 2 * 4 * 72 * 8 FLOPs
    fake = [
        {"shape": shape_a} | {f"bfloat16_{p}_ms": 1e-3 for p in benchmark_conv_grad.PASSES},
        {"shape": shape_b} | {f"bfloat16_{p}_ms": 1e-3 for p in benchmark_conv_grad.PASSES},
    ]
    # At 1e-3 GFLOP/s: a 3 layers x 3 passes x 18432 FLOPs = 165.9 ms, b 1 x 3 x 4608 = 13.8 ms,
    # 179.7 ms against 3 * 3e-3 + 3e-3 = 0.012 ms measured.
    text = benchmark_conv_grad.roofline_table(
        fake, {shape_a: 3, shape_b: 1}, {shape_a: 1e-3, shape_b: 1e-3}
    )
    assert "| 6x6 | 8->8 | 1 | 3 | 0.0 | 0 | 18 / 18 / 18 |" in text
    assert "layer-weighted: 0 ms; at each layer's GEMM rate 180 ms" in text

    monkeypatch.setattr(tf, "matmul", lambda a, b: tf.zeros([a.shape[0], b.shape[1]], a.dtype))
    with pytest.raises(AssertionError, match="bfloat16 matmul differs from NumPy"):
        benchmark_conv_grad.gemm_rate(small, repeats=1)
