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
