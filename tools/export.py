#!/usr/bin/env python
"""Export a run's checkpoint as a serving + TF Hub SavedModel, on demand.

    python tools/export.py --model_dir=RUN [--checkpoint=RUN/ckpt-1000] \
        [--export_dir=OUT] [--overwrite]

Rebuilds the network from ``RUN/flags.json``, restores the checkpoint (the newest in RUN by
default) and writes ``OUT`` (default ``RUN/saved_model/<step>``) with the model card. See
``simclr_tf/export.py`` for what the SavedModel holds. Old exports are never deleted here.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("model_dir", None, "Folder of the run (holds flags.json and checkpoints).")
flags.DEFINE_string(
    "checkpoint",
    None,
    "Checkpoint prefix or folder (default: newest in "
    "--model_dir); may be an official SimCLR checkpoint (TF2, SavedModel, TF1).",
)
flags.DEFINE_string(
    "export_dir", None, "Where to write the SavedModel (default: MODEL_DIR/saved_model/<step>)."
)
flags.DEFINE_bool("overwrite", False, "Replace an existing export at --export_dir.")
flags.mark_flag_as_required("model_dir")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from simclr_tf import export, official
    from simclr_tf.errors import UserError
    from simclr_tf.official import convert

    try:
        if official.is_official(FLAGS.checkpoint):
            # An official checkpoint carries its own architecture: no flags.json needed.
            target = FLAGS.export_dir or convert.export_dir_for(FLAGS.checkpoint, FLAGS.model_dir)
            path = convert.export_official(FLAGS.checkpoint, target, overwrite=FLAGS.overwrite)
        else:
            path = export.export_from_model_dir(
                FLAGS.model_dir, FLAGS.checkpoint, FLAGS.export_dir, FLAGS.overwrite
            )
    except UserError as e:
        logging.error("%s", e)
        print(f"export: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(path)


if __name__ == "__main__":
    app.run(main)
