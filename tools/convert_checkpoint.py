#!/usr/bin/env python
"""Convert an official SimCLR checkpoint (google-research/simclr) into a simclr_tf run folder.

    python tools/convert_checkpoint.py --checkpoint=PATH --model_dir=DIR \
        [--image_size=224] [--use_ema] [--ft_proj_selector=0] [--overwrite] [--noexport]

PATH: a TF2 checkpoint (``.../ckpt-<step>`` or its folder), a TF2 SavedModel folder
(``.../saved_model/``) or a TF1 checkpoint (``.../model.ckpt-<step>`` or its folder). The
architecture is read from the checkpoint. DIR gets what ``run.py --mode=train_then_eval`` writes:
flags.json, ``ckpt-<step>``, ``saved_model/<step>/`` (serving + TF Hub) and ``official.json``
(what was converted and what the checkpoint did not hold). An existing DIR is replaced only with
--overwrite.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("checkpoint", None, "Official checkpoint: TF2 ckpt, SavedModel or TF1.")
flags.DEFINE_string("model_dir", None, "The simclr_tf run folder to write.")
flags.DEFINE_integer(
    "image_size",
    None,
    "Image side recorded in flags.json and used by the "
    "serving signatures (default: 32 for a CIFAR-stem model, else 224).",
)
flags.DEFINE_bool("use_ema", False, "TF1 SimCLRv2 checkpoints: take the ema_model/ weights.")
flags.DEFINE_integer(
    "ft_proj_selector",
    None,
    "Projection-head layer feeding the supervised head (default: measured on a SavedModel, "
    "read off a TF1/TF2 checkpoint's optimizer slots, refused when neither tells).",
)
flags.DEFINE_bool("overwrite", False, "Replace an existing --model_dir.")
flags.DEFINE_bool("export", True, "Also write the serving + TF Hub export.")
flags.mark_flags_as_required(["checkpoint", "model_dir"])
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from simclr_tf.errors import UserError
    from simclr_tf.official import convert

    start = time.time()
    try:
        info = convert.convert(
            FLAGS.checkpoint,
            FLAGS.model_dir,
            image_size=FLAGS.image_size,
            use_ema=FLAGS.use_ema,
            ft_proj_selector=FLAGS.ft_proj_selector,
            overwrite=FLAGS.overwrite,
            export=FLAGS.export,
        )
    except UserError as e:
        print(f"convert_checkpoint: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(info.describe())
    print(f"Wrote {FLAGS.model_dir} in {time.time() - start:.1f}s")


if __name__ == "__main__":
    app.run(main)
