"""tools/ablate.py on a 2x2 grid of tiny real runs, killed after two cells and resumed."""

import csv
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import ablate  # noqa: E402


def test_cells_of_grids_and_sweeps():
    assert [c.name for c in ablate.pair_cells(["crop", "color"], ordered=False)] == [
        "crop",
        "crop+color",
        "color",
    ]
    full = ablate.pair_cells(["a", "b"], ordered=True)
    assert [(c.first, c.second) for c in full] == [("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")]
    assert full[1].flags == ["--augmentations=a,b"]
    sweep = ablate.sweep_cells(["loss=nt_xent,margin_triplet", "temperature=0.1,0.5"])
    assert len(sweep) == 4
    assert sweep[3].flags == ["--loss=margin_triplet", "--temperature=0.5"]


def _ablate(out, data, *extra):
    cmd = [
        sys.executable, os.path.join(REPO, "tools", "ablate.py"), f"--out={out}",
        "--ops=crop,rotate", "--ordered", "--eval=knn", *extra, "--",
        "--dataset=image_folder", f"--data_dir={data}", "--eval_split=test", "--image_size=8",
        "--cifar_stem=true", "--resnet_depth=18", "--width_multiplier=0.0625",
        "--num_proj_layers=2", "--proj_out_dim=8", "--train_batch_size=8", "--train_epochs=1",
        "--warmup_epochs=0", "--optimizer=momentum", "--learning_rate=0.1",
        "--knn_every_epochs=1", "--knn_bank_size=16", "--knn_k=3", "--eval_batch_size=8",
        "--checkpoint_epochs=1", "--verbose=0", "--color_jitter_strength=0.5",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_two_by_two_grid_resumes(tmp_path, write_png_folder):
    data = write_png_folder(tmp_path / "data", 2, {"train": 8, "test": 4}, 8)
    out = tmp_path / "grid"
    first = _ablate(out, data, "--max_cells=2")
    assert "Stopping after 2 cell(s)" in first
    with open(out / "results.csv") as f:
        assert [r["cell"] for r in csv.DictReader(f)] == ["crop", "crop+rotate"]
    done = out / "cells" / "crop" / ablate.DONE_FILE
    stamp = done.stat().st_mtime_ns
    # A cell that was killed mid-run: its folder exists, but no done marker.
    os.makedirs(out / "cells" / "rotate+crop")

    second = _ablate(out, data)
    assert second.count("finished before, skipped") == 2
    assert done.stat().st_mtime_ns == stamp  # finished cells are not rerun
    with open(out / "results.csv") as f:
        rows = {r["cell"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["crop", "crop+rotate", "rotate+crop", "rotate"]
    for name, row in rows.items():
        assert row["status"] == "done", row
        assert row["flags"] == f"--augmentations={name.replace('+', ',')}"
        cell = out / "cells" / name
        with open(cell / "metrics.csv") as f:
            knn = [float(r["knn_top1"]) for r in csv.DictReader(f)]
        assert float(row["knn_top1"]) == pytest.approx(knn[-1])  # the CSV is the runs' metric
        assert (cell / "curves.png").stat().st_size > 1000  # every run leaves its picture
        with open(cell / "flags.json") as f:  # each cell is an ordinary model_dir
            assert f'"augmentations": "{name.replace("+", ",")}"' in f.read()
    assert (out / "heatmap.png").stat().st_size > 1000
    assert "| crop+rotate |" in (out / "results.md").read_text()


FAKE_RUN = """
import os, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
model_dir, augs = args["model_dir"], args["augmentations"]
with open(os.path.join(os.path.dirname(os.path.dirname(model_dir)), "calls.txt"), "a") as f:
    f.write(augs + "\\n")
crash = os.path.join(model_dir, "crash_once")
if augs == "color" and not os.path.exists(crash):
    open(crash, "w").close()
    sys.exit(1)  # a crash: retried on the next call, not recorded as finished
if augs == "color,crop":
    print("simclr_tf: error: a flag error"); sys.exit(2)  # a user error: recorded, not retried
with open(os.path.join(model_dir, "metrics.csv"), "w") as f:
    f.write("epoch,step,loss,contrast_acc,knn_top1\\n1,5,2.0,0.5,nan\\n")
    f.write("2,10,1.5,0.6,%.2f\\n" % (0.1 * len(augs)))
"""


def test_resume_logic_with_a_stand_in_run_py(tmp_path):
    """Finished and flag-error cells are skipped on the next call; crashed cells are retried."""
    fake = tmp_path / "fake_run.py"
    fake.write_text(FAKE_RUN)
    out = tmp_path / "grid"
    cmd = [sys.executable, os.path.join(REPO, "tools", "ablate.py"), f"--out={out}",
           "--ops=crop,color", "--ordered", f"--run_py={fake}", "--", "--seed=3"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": REPO}
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    assert "failed (1)" in first and "error" in first
    calls = (out / "calls.txt").read_text().split()
    assert calls == ["crop", "crop,color", "color,crop", "color"]
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    assert second.count("finished before, skipped") == 3
    assert (out / "calls.txt").read_text().split() == [*calls, "color"]  # only the crash reran
    with open(out / "results.csv") as f:
        rows = {r["cell"]: r for r in csv.DictReader(f)}
    assert rows["crop+color"]["knn_top1"] == "1.0"  # last finite kNN value of its metrics.csv
    assert rows["crop"]["contrast_acc"] == "0.6"
    assert rows["color"]["status"] == "done" and rows["color+crop"]["status"] == "error"
    assert "a flag error" in rows["color+crop"]["message"]


FAKE_EVAL_RUN = """
import json, os, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
model_dir = args["model_dir"]
os.makedirs(model_dir, exist_ok=True)
cell = os.path.basename(args.get("checkpoint", model_dir))
with open(os.path.join(model_dir, "call.json"), "w") as f:
    json.dump(args, f)
with open(os.path.join(model_dir, "metrics.csv"), "w") as f:
    f.write("epoch,step,loss,contrast_acc,knn_top1\\n1,5,2.0,0.5,0.25\\n")
if args["mode"] == "train_then_eval":  # a different top-1 per cell and per kind of run
    top1 = (0.5 if "checkpoint" in args else 0.0) + 0.01 * len(cell)
    with open(os.path.join(model_dir, "result.json"), "w") as f:
        json.dump({"label_top_1_accuracy": top1}, f)
"""


@pytest.mark.parametrize("how", ["probe", "linear"])
def test_probe_and_linear_scores_come_from_their_runs(tmp_path, how):
    """--eval=probe scores a cell by its own run's result.json (run with train_then_eval);
    --eval=linear runs the linear flagfile on the cell's checkpoint into <cell>/linear and
    scores that run's result.json, not the probe's."""
    fake = tmp_path / "fake_run.py"
    fake.write_text(FAKE_EVAL_RUN)
    out = tmp_path / "grid"
    extra = ["--linear_flagfile=flags/cpu_cifar10_linear_eval.cfg"] if how == "linear" else []
    cmd = [sys.executable, os.path.join(REPO, "tools", "ablate.py"), f"--out={out}",
           "--ops=crop,color", f"--eval={how}", *extra, f"--run_py={fake}", "--",
           "--seed=3"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": REPO}
    subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    with open(out / "results.csv") as f:
        rows = {r["cell"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["crop", "crop+color", "color"]
    for name, row in rows.items():
        cell = out / "cells" / name
        pretrain = json.loads((cell / "call.json").read_text())
        assert pretrain["mode"] == "train_then_eval" and pretrain["seed"] == "3"
        if how == "probe":
            assert float(row["probe_top1"]) == pytest.approx(0.01 * len(name))
            assert row["linear_top1"] == "nan" and not (cell / "linear").exists()
        else:
            linear = json.loads((cell / "linear" / "call.json").read_text())
            assert linear["checkpoint"] == str(cell) and linear["mode"] == "train_then_eval"
            assert linear["flagfile"] == "flags/cpu_cifar10_linear_eval.cfg"
            assert float(row["linear_top1"]) == pytest.approx(0.5 + 0.01 * len(name))
            assert row["probe_top1"] == "nan"
    assert (out / "results.md").exists()
