"""Draws the nearest-neighbour picture of a trained run's encoder (query, then its top-k).

    python tools/show_neighbours.py --model_dir=runs/cpu_pretrain --out=docs/neighbours.png

Each row: an image of the evaluation split (``--eval_split`` of the run), then its ``--k`` most
cosine-similar images of the kNN bank (``--knn_bank_size`` class-balanced training images, as
the kNN monitor uses), framed green when of the query's class and red otherwise. The encoder
is the run's newest checkpoint (or ``--checkpoint``), rebuilt from its ``flags.json``.
Pretraining with the kNN monitor on writes the same picture to ``MODEL_DIR/neighbours.png``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("model_dir", None, "The run folder (its flags.json and checkpoints).")
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: the newest in model_dir).")
flags.DEFINE_string("data_dir", None, "Override the run's --data_dir (e.g. run elsewhere).")
flags.DEFINE_string("out", None, "Output PNG (default: MODEL_DIR/neighbours.png).")
flags.DEFINE_integer("num_queries", 8, "Rows: query images (one class after another).")
flags.DEFINE_integer("k", 8, "Neighbours per query.")
flags.DEFINE_integer("bank_size", None, "Bank images (default: the run's --knn_bank_size).")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    if not FLAGS.model_dir:
        raise app.UsageError("Pass --model_dir=RUN (a run folder written by run.py).")
    from simclr_tf import knn, neighbours, restore, train
    from simclr_tf.data import sources
    from simclr_tf.errors import UserError

    try:
        run = restore.read_run(FLAGS.model_dir, FLAGS.checkpoint)
        cfg = run.cfg.replace(data_dir=FLAGS.data_dir or run.cfg.data_dir)
        if FLAGS.bank_size:
            cfg = cfg.replace(knn_bank_size=FLAGS.bank_size)
        model = restore.rebuild(restore.RunRecord(cfg, run.checkpoint, run.step, run.num_classes))
        info = sources.dataset_info(cfg.dataset, cfg.data_dir)
        monitor = train.knn_monitor(cfg, info)  # the bank and queries the kNN monitor reads

        def features(dataset, max_examples):
            return knn.extract_features(
                lambda x: model.encoder(x, training=False), dataset, max_examples
            )

        out = FLAGS.out or os.path.join(FLAGS.model_dir, neighbours.NEIGHBOURS_FILE)
        result = neighbours.write_neighbours(
            features,
            monitor.bank_dataset_fn,
            monitor.eval_dataset_fn,
            out,
            num_queries=FLAGS.num_queries,
            k=FLAGS.k,
            bank_size=cfg.knn_bank_size,
            class_names=info.class_names,
        )
    except UserError as e:
        print(f"show_neighbours: {e}", file=sys.stderr)
        sys.exit(2)
    print(
        f"Wrote {out} (checkpoint {run.checkpoint}, step {run.step}; neighbours of the query's "
        f"class: {result['neighbour_precision']:.2f})"
    )


if __name__ == "__main__":
    app.run(main)
