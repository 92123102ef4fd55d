"""Who is the chief of a multi-worker run, read from ``TF_CONFIG`` without TensorFlow.

The run lock (:mod:`simclr_tf.run_lock`) is taken on the chief before TensorFlow is even
imported (a second run on a folder must stop at once, and importing TensorFlow alone can take
half a minute on a busy machine); :func:`simclr_tf.distribute.is_chief` applies the same rule
to the strategy once it exists.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping


def chief_of(task_type: str | None, task_id: int | None, cluster: Mapping) -> bool:
    """The chief: the ``chief`` task, else worker 0 of a cluster without one (TF's rule)."""
    if task_type in (None, "chief"):
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def is_chief_task(strategy_name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process will be the chief of ``--strategy=strategy_name``.

    Every process of another strategy is its own chief. A missing or malformed TF_CONFIG counts
    as the chief: building the strategy then stops with the message naming the fix.
    """
    if strategy_name != "multi_worker":
        return True
    environ = os.environ if environ is None else environ
    try:
        tf_config = json.loads(environ.get("TF_CONFIG") or "{}")
        task = tf_config["task"]
        return chief_of(task["type"], int(task["index"]), tf_config.get("cluster") or {})
    except (ValueError, KeyError, TypeError):
        return True
