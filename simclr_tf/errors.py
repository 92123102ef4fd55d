"""The one base of every user-facing error: a mistake the user can fix, told in one line.

The command line (``simclr_tf.cli``, ``tools/export.py``) prints the message of a
:class:`UserError` as one line naming the fix (exit code 2) instead of a stack trace. Each module
defines its own subclass (``ConfigError``, ``DataError``, ``CheckpointError``, ...) next to the
code that raises it; subclasses also keep a standard base (``ValueError``, ``RuntimeError``) so
callers catching those still do.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure caused by the user's input; the message names the fix and nothing was lost.

    Args:
      message: one line saying what is wrong and how to fix it.

    Example::

        try:
            model = simclr_tf.SimCLR(backbone_without_fixed_size)
        except simclr_tf.UserError as e:
            print(e)  # "SimCLR(augment=True) needs the view size: pass image_size=..."
    """


class ExportError(UserError, RuntimeError):
    """An export that cannot be written, or a run that cannot be rebuilt for one; names the fix.

    Here rather than in export.py because rebuilding a run's model (``simclr_tf.restore``)
    raises it too.
    """


class StrategyError(UserError, RuntimeError):
    """A tf.distribute setup that cannot work (TPU, cluster, batch split); names the fix.

    Here because both :mod:`simclr_tf.tpu` and :mod:`simclr_tf.distribute` raise it.
    """
