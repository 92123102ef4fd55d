"""The contrastive losses of :mod:`simclr_tf.losses` as ``keras.losses.Loss`` objects.

For Keras code that wants a loss object (``compile(loss=...)``, custom loops): each class calls
the function of the same loss on the two halves of stacked projections ``[z1; z2]``.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from simclr_tf.losses import make_contrastive_loss

__all__ = ["ContrastiveLoss", "MarginTriplet", "NTLogistic", "NTXent"]


class ContrastiveLoss(keras.losses.Loss):
    """A loss of :mod:`simclr_tf.losses` as a ``keras.losses.Loss`` on stacked projections.

    ``y_pred`` is ``[2n, d]``: the projections of view 1 of ``n`` images, then those of view 2
    (row i and row n + i are a positive pair); ``y_true`` is ignored (pass None or zeros).
    Returns the scalar loss of :func:`nt_xent` / :func:`nt_logistic` / :func:`margin_triplet`.

    Args:
      loss: ``"nt_xent"``, ``"nt_logistic"`` or ``"margin_triplet"``.
      temperature, hidden_norm, margin, semi_hard_negatives: the loss's settings.
      name: the Keras name of the loss.

    Example::

        loss = simclr_tf.NTXent(temperature=0.5)
        value = loss(None, tf.concat([z1, z2], axis=0))
    """

    def __init__(
        self,
        loss: str = "nt_xent",
        temperature: float = 0.1,
        hidden_norm: bool = True,
        margin: float = 0.4,
        semi_hard_negatives: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or loss, reduction="sum")
        self.settings = dict(
            loss=loss,
            temperature=temperature,
            hidden_norm=hidden_norm,
            margin=margin,
            semi_hard_negatives=semi_hard_negatives,
        )
        self.fn = make_contrastive_loss(**self.settings)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if y_true is None:  # Keras converts y_true to a tensor; the loss never reads it
            y_true = tf.zeros(tf.shape(y_pred)[:1])
        return super().__call__(y_true, y_pred, sample_weight)

    def call(self, y_true, y_pred):
        del y_true  # the positives are given by the row order
        z1, z2 = tf.split(y_pred, 2, axis=0)
        return self.fn(z1, z2).loss

    def get_config(self) -> dict:
        return {"name": self.name, **self.settings}


class NTXent(ContrastiveLoss):
    """NT-Xent (:func:`nt_xent`) as a ``keras.losses.Loss`` on ``[z1; z2]``.

    Args:
      temperature: tau > 0.
      hidden_norm: L2-normalise the projections first.

    Example::

        simclr_tf.NTXent(0.5)(None, tf.concat([z1, z2], 0))
    """

    def __init__(self, temperature: float = 0.1, hidden_norm: bool = True, **kwargs) -> None:
        super().__init__("nt_xent", temperature, hidden_norm, **kwargs)


class NTLogistic(ContrastiveLoss):
    """NT-Logistic (:func:`nt_logistic`) as a ``keras.losses.Loss`` on ``[z1; z2]``.

    Args:
      temperature: tau > 0.
      hidden_norm: L2-normalise the projections first.
      semi_hard_negatives: only the closest negative farther than the positive.

    Example::

        simclr_tf.NTLogistic(0.2)(None, tf.concat([z1, z2], 0))
    """

    def __init__(
        self,
        temperature: float = 0.1,
        hidden_norm: bool = True,
        semi_hard_negatives: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(
            "nt_logistic",
            temperature,
            hidden_norm,
            semi_hard_negatives=semi_hard_negatives,
            **kwargs,
        )


class MarginTriplet(ContrastiveLoss):
    """The margin triplet loss (:func:`margin_triplet`) as a ``keras.losses.Loss``.

    Args:
      margin: m >= 0.
      hidden_norm: L2-normalise the projections first.
      semi_hard_negatives: only the closest negative within the margin.

    Example::

        simclr_tf.MarginTriplet(0.4)(None, tf.concat([z1, z2], 0))
    """

    def __init__(
        self,
        margin: float = 0.4,
        hidden_norm: bool = True,
        semi_hard_negatives: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(
            "margin_triplet",
            hidden_norm=hidden_norm,
            margin=margin,
            semi_hard_negatives=semi_hard_negatives,
            **kwargs,
        )
