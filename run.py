#!/usr/bin/env python
"""Entry point: ``python run.py --mode=train_then_eval --train_batch_size=4096 ...``.

Thin on purpose: the flags live in simclr_tf/config.py, the modes in simclr_tf/cli.py.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from simclr_tf import cli  # noqa: E402

if __name__ == "__main__":
    cli.run()
