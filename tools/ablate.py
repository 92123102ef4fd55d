"""Runs a grid of short SimCLR runs and writes a CSV, a Markdown table and a picture.

Pairwise augmentation grid (the paper's Figure 5: diagonal = one op, off-diagonal = first op
then second op), evaluated by the kNN monitor at the end of pretraining:

    python tools/ablate.py --out=runs/aug_grid --ops=crop,color,blur,rotate,cutout \
        --eval=knn -- --flagfile=flags/cpu_cifar10_pretrain.cfg --train_epochs=3 \
        --knn_every_epochs=3

1-D (or product) sweeps of any run.py flag, drawn as bars:

    python tools/ablate.py --out=runs/loss_sweep \
        --sweep=loss=nt_xent,nt_logistic,margin_triplet -- --flagfile=...

Everything after ``--`` is passed to every cell's ``run.py`` (the cell's own flags come after
it and win). Each cell is an ordinary model_dir ``OUT/cells/<name>``; a finished cell holds
``ablate_cell.json`` and is skipped, so running the same command again after a kill finishes
the grid (an interrupted cell resumes from its last checkpoint, as any run.py run does).
``--eval``: ``knn`` (last kNN top-1 in metrics.csv; give ``--knn_every_epochs``), ``probe``
(the live linear probe evaluated by ``--mode=train_then_eval``), or ``linear`` (a separate
linear-evaluation run with ``--linear_flagfile``, ``--checkpoint=<cell>``).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from simclr_tf import model_dir as model_dir_lib  # noqa: E402
from simclr_tf import plots  # noqa: E402
from simclr_tf.atomic import atomic_path, write_json_atomic  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DONE_FILE = "ablate_cell.json"
EVALS = ("knn", "probe", "linear")
COLUMNS = (
    "cell", "first", "second", "flags", "status", "knn_top1", "probe_top1", "linear_top1",
    "contrast_acc", "contrast_loss", "epochs", "seconds", "model_dir", "message",
)  # fmt: skip

flags.DEFINE_string("out", None, "Study folder: cells/, results.csv, results.md, the picture.")
flags.DEFINE_list("ops", None, "Pairwise augmentation grid over these operations (Figure 5).")
flags.DEFINE_bool(
    "ordered",
    False,
    "Pairwise grid: run both orders of each pair (a full "
    "matrix) instead of first-listed op first (diagonal + upper triangle).",
)
flags.DEFINE_multi_string(
    "sweep",
    None,
    "FLAG=v1,v2,... of run.py; several --sweep give their "
    "product. Values are passed as --FLAG=value.",
)
flags.DEFINE_enum("eval", "knn", EVALS, "How a cell is scored.")
flags.DEFINE_string(
    "linear_flagfile",
    None,
    "--eval=linear: flagfile of the linear evaluation (e.g. flags/cpu_cifar10_linear_eval.cfg).",
)
flags.DEFINE_string("run_py", os.path.join(REPO, "run.py"), "The run.py to call.")
flags.DEFINE_string("title", None, "Title of the picture (default: describes the grid).")
flags.DEFINE_integer(
    "max_cells",
    0,
    "Run at most this many unfinished cells, then stop (0 = all); the rest run on the next call.",
)
flags.DEFINE_bool("dry_run", False, "Print the cells' commands and exit.")
FLAGS = flags.FLAGS


@dataclass
class Cell:
    """One run of the grid: its folder name, its own run.py flags, its place in the picture."""

    name: str
    flags: list[str]
    first: str = ""
    second: str = ""
    result: dict = field(default_factory=dict)


def pair_cells(ops: list[str], ordered: bool) -> list[Cell]:
    """Diagonal (one op) and off-diagonal (op a then op b) cells of the Figure 5 grid."""
    cells = []
    for i, a in enumerate(ops):
        for j, b in enumerate(ops):
            if i == j:
                cells.append(Cell(a, [f"--augmentations={a}"], a, a))
            elif ordered or i < j:
                cells.append(Cell(f"{a}+{b}", [f"--augmentations={a},{b}"], a, b))
    return cells


def sweep_cells(sweeps: list[str]) -> list[Cell]:
    """The product of ``FLAG=v1,v2`` sweeps; cell names are ``flag=value`` joined by ``_``."""
    axes = []
    for spec in sweeps:
        name, sep, values = spec.partition("=")
        if not sep or not name or not values:
            raise app.UsageError(f"--sweep={spec!r}: write FLAG=v1,v2,... (e.g. loss=nt_xent).")
        axes.append([(name.strip().lstrip("-"), v.strip()) for v in values.split(",")])
    cells = []
    for combo in itertools.product(*axes):
        name = "_".join(f"{k}={v}" for k, v in combo)
        cells.append(Cell(name, [f"--{k}={v}" for k, v in combo], first=name))
    return cells


def _last_finite(path: str, column: str) -> tuple[float, int]:
    """(last finite value of ``column`` in metrics.csv, its epoch) or (nan, 0)."""
    if not os.path.exists(path):
        return math.nan, 0
    metrics = plots.read_metrics(path)
    pairs = [
        (v, e)
        for v, e in zip(metrics.get(column, []), metrics.get("epoch", []), strict=False)
        if not math.isnan(v)
    ]
    return (pairs[-1][0], int(pairs[-1][1])) if pairs else (math.nan, 0)


def _read_result(model_dir: str) -> float:
    path = model_dir_lib.result_path(model_dir)
    if not os.path.exists(path):
        return math.nan
    with open(path) as f:
        return float(json.load(f)["label_top_1_accuracy"])


def _run(cmd: list[str], log_path: str) -> tuple[int, str]:
    """Runs one run.py command, appending its output to ``log_path``; (exit code, last line)."""
    with open(log_path, "a") as log:
        log.write("\n$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, check=False)
    with open(log_path) as log:
        lines = [ln.strip() for ln in log.read().splitlines() if ln.strip()]
    return proc.returncode, (lines[-1] if lines else "")


def run_cell(cell: Cell, out: str, base: list[str], how: str) -> dict:
    """Runs (or resumes) one cell; returns its row. Writes the done marker only when the cell
    finished or failed for good (a flag error, exit code 2): a crash or kill is retried."""
    model_dir = os.path.join(out, "cells", cell.name)
    os.makedirs(model_dir, exist_ok=True)
    mode = "train" if how == "knn" else "train_then_eval"
    cmd = [sys.executable, FLAGS.run_py, *base, *cell.flags, f"--model_dir={model_dir}",
           f"--mode={mode}", "--export_saved_model=false"]  # fmt: skip
    log_path = os.path.join(model_dir, "ablate_log.txt")
    start = time.time()
    code, last = _run(cmd, log_path)
    linear_dir = os.path.join(model_dir, "linear")
    if code == 0 and how == "linear":
        linear_cmd = [sys.executable, FLAGS.run_py, f"--flagfile={FLAGS.linear_flagfile}",
                      f"--checkpoint={model_dir}", f"--model_dir={linear_dir}",
                      "--mode=train_then_eval", "--export_saved_model=false"]  # fmt: skip
        code, last = _run(linear_cmd, log_path)
    metrics_path = model_dir_lib.metrics_path(model_dir)
    knn, epochs = _last_finite(metrics_path, "knn_top1")
    row = {
        "cell": cell.name,
        "first": cell.first,
        "second": cell.second,
        "flags": " ".join(cell.flags),
        "status": "done" if code == 0 else ("error" if code == 2 else f"failed ({code})"),
        "knn_top1": knn,
        "probe_top1": _read_result(model_dir) if how == "probe" else math.nan,
        "linear_top1": _read_result(linear_dir) if how == "linear" else math.nan,
        "contrast_acc": _last_finite(metrics_path, "contrast_acc")[0],
        "contrast_loss": _last_finite(metrics_path, "contrast_loss")[0],
        "epochs": _last_finite(metrics_path, "loss")[1],
        "seconds": round(time.time() - start, 1),
        "model_dir": model_dir,
        "message": "" if code == 0 else last[:300],
    }
    if code == 0 and how == "knn" and math.isnan(knn):
        row["status"] = "error"
        row["message"] = "no kNN value in metrics.csv: add --knn_every_epochs=<train_epochs>."
    if code in (0, 2):
        write_json_atomic(os.path.join(model_dir, DONE_FILE), row)
    return row


def score_column(how: str) -> str:
    return {"knn": "knn_top1", "probe": "probe_top1", "linear": "linear_top1"}[how]


def write_outputs(cells: list[Cell], out: str, how: str, pairwise: bool, title: str) -> None:
    """results.csv, results.md and the picture from every cell finished so far."""
    rows = [c.result for c in cells if c.result]
    with atomic_path(os.path.join(out, "results.csv")) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    column = score_column(how)

    def pct(v) -> str:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"

    lines = [
        f"| cell | {column} (%) | contrast acc (%) | minutes | status |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {pct(r[column])} | {pct(r['contrast_acc'])} | "
            f"{r['seconds'] / 60:.1f} | {r['status']} |"
        )
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    scored = [r for r in rows if not math.isnan(float(r[column]))]
    if not scored:
        return
    try:
        if pairwise:
            ops = list(dict.fromkeys([c.first for c in cells]))
            values = {(r["first"], r["second"]): 100 * float(r[column]) for r in scored}
            plots.heatmap(ops, values, os.path.join(out, "heatmap.png"), title,
                          f"{column} (%)")  # fmt: skip
        else:
            plots.bar_chart([r["cell"] for r in scored],
                            [100 * float(r[column]) for r in scored],
                            os.path.join(out, "sweep.png"), title, f"{column} (%)")  # fmt: skip
    except ImportError:
        print("ablate: picture skipped, matplotlib is not installed (pip install matplotlib).")


def main(argv: list[str]) -> None:
    base = argv[1:]
    if not FLAGS.out:
        raise app.UsageError("--out is required: the study folder.")
    if bool(FLAGS.ops) == bool(FLAGS.sweep):
        raise app.UsageError("Give either --ops=a,b,... (pairwise grid) or --sweep=FLAG=v1,v2.")
    if FLAGS.eval == "linear" and not FLAGS.linear_flagfile:
        raise app.UsageError("--eval=linear needs --linear_flagfile=flags/..._linear_eval.cfg.")
    for forbidden in ("--model_dir", "--mode"):
        if any(a.split("=")[0] == forbidden for a in base):
            raise app.UsageError(f"{forbidden} is set per cell by ablate.py: drop it after --.")
    pairwise = bool(FLAGS.ops)
    cells = pair_cells(FLAGS.ops, FLAGS.ordered) if pairwise else sweep_cells(FLAGS.sweep)
    title = FLAGS.title or (
        f"{FLAGS.eval} top-1, augmentation pairs" if pairwise else f"{FLAGS.eval} top-1 sweep"
    )
    if FLAGS.dry_run:
        for cell in cells:
            print(cell.name, " ".join([*base, *cell.flags]))
        return
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "command.txt"), "w") as f:
        f.write(" ".join(["python tools/ablate.py", *sys.argv[1:]]) + "\n")
    ran = 0
    for i, cell in enumerate(cells):
        done = os.path.join(FLAGS.out, "cells", cell.name, DONE_FILE)
        if os.path.exists(done):
            with open(done) as f:
                cell.result = json.load(f)
            print(f"[{i + 1}/{len(cells)}] {cell.name}: finished before, skipped.")
            continue
        if FLAGS.max_cells and ran >= FLAGS.max_cells:
            print(f"Stopping after {ran} cell(s) (--max_cells); run again to continue.")
            break
        print(f"[{i + 1}/{len(cells)}] {cell.name}: running {' '.join(cell.flags)}", flush=True)
        cell.result = run_cell(cell, FLAGS.out, base, FLAGS.eval)
        ran += 1
        score = cell.result[score_column(FLAGS.eval)]
        print(
            f"    {cell.result['status']}, {score_column(FLAGS.eval)}={score:.4f}, "
            f"{cell.result['seconds']:.0f}s {cell.result['message']}",
            flush=True,
        )
        write_outputs(cells, FLAGS.out, FLAGS.eval, pairwise, title)
    write_outputs(cells, FLAGS.out, FLAGS.eval, pairwise, title)
    print(f"Wrote {FLAGS.out}/results.csv, results.md and the picture.")


if __name__ == "__main__":
    app.run(main)
