"""curves.png: the plotted data is metrics.csv's, panels follow what a run logged."""

import csv
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from simclr_tf import plots

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_csv(path, rows):
    fields = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


PRETRAIN_ROWS = [
    {"epoch": 1, "step": 10, "loss": 7.0, "contrast_loss": 5.0, "contrast_acc": 0.1,
     "learning_rate": 0.5, "supervised_acc": 0.15, "knn_top1": "nan"},
    {"epoch": 2, "step": 20, "loss": 6.0, "contrast_loss": 4.5, "contrast_acc": 0.3,
     "learning_rate": 1.0, "supervised_acc": 0.2, "knn_top1": 0.25},
    {"epoch": 3, "step": 30, "loss": 5.5, "contrast_loss": 4.0, "contrast_acc": 0.4,
     "learning_rate": 0.2, "supervised_acc": 0.3, "knn_top1": "nan"},
    {"epoch": 4, "step": 40, "loss": 5.0, "contrast_loss": 3.8, "contrast_acc": 0.5,
     "learning_rate": 0.0, "supervised_acc": 0.35, "knn_top1": 0.31},
]  # fmt: skip


def test_curve_series_is_metrics_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    # A resumed run repeats epoch 3 (its first attempt died): the later row must win.
    rows = [*PRETRAIN_ROWS[:3], {**PRETRAIN_ROWS[2], "contrast_loss": 3.9}, PRETRAIN_ROWS[3]]
    _write_csv(path, rows)
    panels = dict(plots.curve_series(plots.read_metrics(str(path))))
    assert "supervised loss" not in panels  # not logged by this run
    (loss,) = panels["contrastive loss"]
    assert loss[0] == "contrast_loss"
    assert loss[1] == [1, 2, 3, 4] and loss[2] == [5.0, 4.5, 3.9, 3.8]
    acc = dict((c, (x, y)) for c, x, y in panels["supervised (train) / kNN accuracy"])
    assert acc["knn_top1"] == ([2, 4], [0.25, 0.31])  # NaN epochs dropped
    assert acc["supervised_acc"][1] == [0.15, 0.2, 0.3, 0.35]
    assert dict((c, y) for c, _, y in panels["learning rate"])["learning_rate"][1] == 1.0


def test_figure_lines_hold_the_csv_values(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "metrics.csv"
    _write_csv(path, PRETRAIN_ROWS)
    fig = plots.curves_figure({"run": plots.read_metrics(str(path))})
    drawn = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            drawn[line.get_label()] = (list(line.get_xdata()), list(line.get_ydata()))
    for column in ("contrast_loss", "contrast_acc", "learning_rate", "supervised_acc", "loss"):
        want = [float(r[column]) for r in PRETRAIN_ROWS]
        np.testing.assert_allclose(drawn[column][1], want)
        assert drawn[column][0] == [1, 2, 3, 4]
    assert drawn["knn_top1"] == ([2, 4], [0.25, 0.31])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert "supervised loss" not in titles and "contrastive loss" in titles


def test_plot_run_overlays_two_runs_and_names_missing_runs(tmp_path):
    pytest.importorskip("matplotlib")
    for name, scale in (("a", 1.0), ("b", 2.0)):
        os.makedirs(tmp_path / name)
        rows = [{**r, "contrast_loss": r["contrast_loss"] * scale} for r in PRETRAIN_ROWS]
        _write_csv(tmp_path / name / "metrics.csv", rows)
    out = tmp_path / "overlay.png"
    env = {**os.environ, "PYTHONPATH": REPO}
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "plot_run.py"),
        f"--model_dir={tmp_path / 'a'}",
        f"--model_dir={tmp_path / 'b'}",
        f"--out={out}",
    ]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    assert out.stat().st_size > 5000
    runs = {k: plots.read_metrics(str(tmp_path / k / "metrics.csv")) for k in "ab"}
    fig = plots.curves_figure(runs)
    labels = {ln.get_label(): ln.get_ydata() for ax in fig.axes for ln in ax.get_lines()}
    np.testing.assert_allclose(labels["b: contrast_loss"], 2 * labels["a: contrast_loss"])
    missing = subprocess.run(
        [*cmd[:2], f"--model_dir={tmp_path / 'nothing'}"], env=env, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "No metrics.csv" in missing.stderr


def test_write_curves_safely_skips_without_matplotlib(tmp_path, monkeypatch):
    _write_csv(tmp_path / "metrics.csv", PRETRAIN_ROWS)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert plots.write_curves_safely(str(tmp_path)) is None
    assert not (tmp_path / "curves.png").exists()


def test_read_metrics_tolerates_empty_cells(tmp_path):
    _write_csv(tmp_path / "m.csv", [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "knn_top1": 0.5}])
    m = plots.read_metrics(str(tmp_path / "m.csv"))
    assert m["epoch"] == [1.0, 2.0] and math.isnan(m["loss"][1]) and math.isnan(m["knn_top1"][0])
