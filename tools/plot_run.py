"""Redraws a run's curves.png from its metrics.csv, or overlays several runs in one picture.

    python tools/plot_run.py --model_dir=runs/cpu_pretrain   # -> runs/cpu_pretrain/curves.png
    python tools/plot_run.py --model_dir=runs/a --model_dir=runs/b --out=compare.png

Panels (each drawn when the run logged it, per epoch): contrastive loss and accuracy, learning
rate, probe (supervised_acc) and kNN accuracy, supervised loss (fine-tuning), total loss.
Needs matplotlib (part of the default install).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_multi_string("model_dir", None, "A run's model_dir (repeat to overlay runs).")
flags.DEFINE_multi_string("label", None, "Legend label per --model_dir (default: folder name).")
flags.DEFINE_string(
    "out",
    None,
    "Output PNG (default: MODEL_DIR/curves.png for one run, curves_overlay.png for several).",
)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    dirs = FLAGS.model_dir or []
    if not dirs:
        raise app.UsageError("Pass --model_dir=RUN (repeat it to overlay several runs).")
    if FLAGS.label and len(FLAGS.label) != len(dirs):
        raise app.UsageError("Give one --label per --model_dir, or none.")
    from simclr_tf import model_dir as model_dir_lib
    from simclr_tf import plots

    out = FLAGS.out or (
        model_dir_lib.curves_path(dirs[0]) if len(dirs) == 1 else "curves_overlay.png"
    )
    try:
        plots.write_curves(dirs, out, FLAGS.label)
    except ImportError:
        print("plot_run: matplotlib is not installed: pip install matplotlib", file=sys.stderr)
        sys.exit(2)
    except FileNotFoundError as e:
        print(f"plot_run: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"Wrote {out}")


if __name__ == "__main__":
    app.run(main)
