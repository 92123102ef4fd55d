"""Pictures of runs and studies: ``curves.png`` of a model_dir, ablation heatmaps and bar charts.

matplotlib is a dependency of the default install (so the README's first command draws
``curves.png``); it is imported only when a picture is drawn, and training calls
:func:`write_curves_safely`, which logs one line and skips when matplotlib is missing, so an
install without it still trains. Everything here reads files a run already writes
(``metrics.csv``), so a picture can be redrawn at any time (``tools/plot_run.py``).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from typing import Any

from absl import logging

from simclr_tf.atomic import atomic_path
from simclr_tf.model_dir import curves_path, metrics_path

# (panel title, metric columns of metrics.csv drawn in it). A panel without any of its columns
# in a run is left out, so pretraining and fine-tuning runs get the panels they have.
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("contrastive loss", ("contrast_loss",)),
    ("contrastive accuracy", ("contrast_acc",)),
    ("learning rate", ("learning_rate",)),
    ("supervised (train) / kNN accuracy", ("supervised_acc", "knn_top1")),
    ("supervised loss", ("supervised_loss",)),
    ("total loss", ("loss",)),
)


def read_metrics(path: str) -> dict[str, list[float]]:
    """``metrics.csv`` as columns of floats (empty cells and ``nan`` become NaN).

    Rows of a resumed run that repeat an epoch keep the last one, so a curve never goes back.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    by_epoch: dict[float, dict[str, str]] = {}
    for row in rows:
        by_epoch[_number(row.get("epoch", ""))] = row
    ordered = [by_epoch[e] for e in sorted(k for k in by_epoch if not math.isnan(k))]
    names: list[str] = []
    for row in ordered:
        names += [k for k in row if k not in names]
    return {name: [_number(row.get(name, "")) for row in ordered] for name in names}


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def curve_series(
    metrics: dict[str, list[float]],
) -> list[tuple[str, list[tuple[str, list[float], list[float]]]]]:
    """The data of each drawn panel: (title, [(column, epochs, values), ...]).

    Points with NaN values are dropped (kNN runs every few epochs); columns without a single
    finite value and panels without any column are left out.
    """
    epochs = metrics.get("epoch", [])
    panels = []
    for title, columns in PANELS:
        lines = []
        for column in columns:
            if column not in metrics:
                continue
            points = [
                (e, v)
                for e, v in zip(epochs, metrics[column], strict=True)
                if not math.isnan(v) and not math.isnan(e)
            ]
            if points:
                lines.append((column, [p[0] for p in points], [p[1] for p in points]))
        if lines:
            panels.append((title, lines))
    return panels


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_figure(runs: dict[str, dict[str, list[float]]]) -> Any:
    """One figure, one panel per metric group, one line per (run, column); returns the figure."""
    plt = pyplot()
    titles: list[str] = []
    per_run = {label: dict(curve_series(m)) for label, m in runs.items()}
    for title, _ in PANELS:
        if any(title in panels for panels in per_run.values()):
            titles.append(title)
    cols = min(3, max(1, len(titles)))
    rows = max(1, math.ceil(len(titles) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, title in zip(axes.flat, titles, strict=False):
        for label, panels in per_run.items():
            for column, xs, ys in panels.get(title, []):
                name = column if len(runs) == 1 else f"{label}: {column}"
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(titles) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def write_curves(model_dirs: Sequence[str], out: str, labels: Sequence[str] | None = None) -> str:
    """Draws the curves of one or several model_dirs into ``out`` (PNG); returns ``out``."""
    labels = list(labels) if labels else [os.path.basename(os.path.normpath(d)) for d in model_dirs]
    runs = {}
    for label, model_dir in zip(labels, model_dirs, strict=True):
        path = metrics_path(model_dir)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"No metrics.csv in {model_dir}: pass the --model_dir of a training run."
            )
        runs[label] = read_metrics(path)
    fig = curves_figure(runs)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        pyplot().close(fig)
    return out


def write_curves_safely(model_dir: str) -> str | None:
    """``model_dir/curves.png`` at the end of training; one log line and None when it cannot."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logging.info("curves.png skipped: matplotlib is not installed (pip install matplotlib).")
        return None
    if not os.path.exists(metrics_path(model_dir)):
        return None
    try:
        return write_curves([model_dir], curves_path(model_dir))
    except Exception as e:  # noqa: BLE001 - a picture must never fail a finished training run
        logging.warning("curves.png not written: %s", e)
        return None


# --------------------------------------------------------------------------------------------
# Studies
# --------------------------------------------------------------------------------------------


def heatmap(
    ops: Sequence[str],
    values: dict[tuple[str, str], float],
    out: str,
    title: str,
    label: str = "top-1 (%)",
) -> Any:
    """Figure 5-style grid: row = first op, column = second op, diagonal = the op alone.

    ``values[(first, second)]``; cells not run are left blank. Returns the figure (saved).
    """
    import numpy as np

    plt = pyplot()
    grid = np.full((len(ops), len(ops)), np.nan)
    for (a, b), v in values.items():
        if a in ops and b in ops:
            grid[ops.index(a), ops.index(b)] = v
    fig, ax = plt.subplots(figsize=(1.1 * len(ops) + 2.2, 1.0 * len(ops) + 1.4))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis")
    ax.set_xticks(range(len(ops)), ops, rotation=30)
    ax.set_yticks(range(len(ops)), ops)
    ax.set_xlabel("2nd transformation")
    ax.set_ylabel("1st transformation")
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (r, c), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(
                c,
                r,
                f"{v:.1f}",
                ha="center",
                va="center",
                color="black" if v > middle else "white",
                fontsize=9,
            )
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return fig


def bar_chart(
    names: Sequence[str], values: Sequence[float], out: str, title: str, label: str = "top-1 (%)"
) -> Any:
    """A 1-D sweep (loss, temperature, head, batch size) as labelled bars. Returns the figure."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 * len(names) + 1.5), 3.4))
    bars = ax.bar(range(len(names)), values, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(label)
    ax.set_title(title, fontsize=10)
    for bar, v in zip(bars, values, strict=True):
        if not math.isnan(v):
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                v,
                f"{v:.1f}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return fig
