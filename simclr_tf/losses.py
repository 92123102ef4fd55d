"""SimCLR's contrastive losses with cross-replica negatives: NT-Xent, NT-Logistic, margin triplet.

SimCLR's loss needs every view of the *global* batch as a candidate for every anchor: with
per-replica negatives only, a batch of 4096 on 32 cores would see 255 negatives instead of 8190.
`cross_replica_concat` gathers the projections of all replicas (with a gradient that flows back
to the replica that produced each row) and `nt_xent` builds the 2n x 2N logits of this replica's
anchors against all 2N candidates. `nt_logistic` and `margin_triplet` are the alternatives the
paper compares (Tables 2 and 4), on the same candidates, optionally with semi-hard negatives.
(For Table 4 the paper used "only ... the negatives from one augmentation view (instead of both
sides)" (footnote 8, Appendix B.10); these functions use both views, as NT-Xent does.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

from simclr_tf.config import LOSSES

__all__ = [
    "LOSSES",
    "ContrastiveOutput",
    "contrastive_objective",
    "cross_replica_concat",
    "make_contrastive_loss",
    "margin_triplet",
    "nt_logistic",
    "nt_xent",
]

# Added to each anchor's similarity with itself so that softmax gives it (exactly) zero mass in
# float32, while staying finite so that 0 * log(p) stays 0 rather than NaN.
_SELF_LOGIT = -1e9


class ContrastiveOutput(NamedTuple):
    """Everything a train step wants to log from one NT-Xent evaluation."""

    loss: tf.Tensor  # scalar: mean over this replica's 2n anchors (both directions averaged)
    accuracy: tf.Tensor  # scalar: fraction of local anchors whose positive has the largest logit
    entropy: tf.Tensor  # scalar: mean entropy of the softmax over each anchor's 2N-1 candidates
    logits: tf.Tensor  # [2n, 2N] (self-similarity masked with a large negative)
    labels: tf.Tensor  # [2n] int32: index of the positive in the global candidate list


def _replica_context_with_peers() -> tf.distribute.ReplicaContext | None:
    """The current replica context if it has more than one replica, else None."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return None
    return ctx


def cross_replica_concat(x: tf.Tensor) -> tf.Tensor:
    """Concatenate every replica's `x` along axis 0, in replica-id order.

    Inside a replica context with `num_replicas_in_sync > 1` (MirroredStrategy,
    MultiWorkerMirroredStrategy, TPUStrategy: i.e. inside `strategy.run` / a Keras `train_step`)
    the result is `[x_0; x_1; ...; x_{R-1}]`; everywhere else (default strategy, cross-replica
    context) it is `x` itself.

    Implementation: each replica writes `x` into its own slot of an otherwise-zero
    `[R, n, ...]` tensor and the slots are summed with `all_reduce`. This needs only the one
    collective every strategy implements (all_reduce), keeps static shapes (TPU), and gives the
    right gradient for free: the gradient of an all-reduce SUM is the all-reduce SUM of the
    upstream gradients, and the one-hot slot selection then slices out this replica's rows. So
    d(output)/d(x_local) = sum over replicas of their upstream-gradient rows that came from this
    replica, i.e. every replica's loss terms that use this replica's rows as negatives are
    credited back here. All replicas must call this the same number of times, in the same order,
    with equal-shaped `x` (a collective op).
    """
    x = tf.convert_to_tensor(x)
    ctx = _replica_context_with_peers()
    if ctx is None:
        return x
    if x.shape.rank is None or x.shape.rank < 1:
        raise ValueError(
            f"cross_replica_concat needs a tensor of known rank >= 1, got shape {x.shape}; "
            "add a leading batch axis (e.g. tf.expand_dims(x, 0)) first."
        )
    num_replicas = ctx.num_replicas_in_sync
    with tf.name_scope("cross_replica_concat"):
        slot = tf.one_hot(ctx.replica_id_in_sync_group, num_replicas, dtype=x.dtype)
        slot = tf.reshape(slot, [num_replicas] + [1] * x.shape.rank)
        placed = slot * x[tf.newaxis]  # [R, n, ...], zero except at this replica's slot
        summed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, placed)
        inner = x.shape[1:]
        if inner.is_fully_defined():
            new_shape = [-1, *inner.as_list()]
        else:
            new_shape = tf.concat([[-1], tf.shape(x)[1:]], axis=0)
        out = tf.reshape(summed, new_shape)
        if x.shape[0] is not None:
            out.set_shape([num_replicas * x.shape[0], *inner.as_list()])
        return out


def _replica_offset() -> tf.Tensor:
    """Index of this replica (0 outside multi-replica contexts), as an int32 tensor."""
    ctx = _replica_context_with_peers()
    if ctx is None:
        return tf.constant(0, tf.int32)
    return tf.cast(ctx.replica_id_in_sync_group, tf.int32)


def _check_inputs(z1, z2, temperature: float) -> tuple[tf.Tensor, tf.Tensor]:
    """float32 copies of the projections after the checks every loss shares."""
    if not temperature > 0:
        raise ValueError(
            f"temperature must be > 0, got {temperature}; the paper uses 0.1 (large batches) "
            "or 0.5 (CIFAR-10, batch 512)."
        )
    z1 = tf.cast(tf.convert_to_tensor(z1), tf.float32)
    z2 = tf.cast(tf.convert_to_tensor(z2), tf.float32)
    if z1.shape.rank != 2 or z2.shape.rank != 2:
        raise ValueError(
            f"The contrastive loss expects z1 and z2 of shape [n, d], got {z1.shape} and "
            f"{z2.shape} ([n, d] needed); flatten the projection head output first."
        )
    if not z1.shape.is_compatible_with(z2.shape):
        raise ValueError(
            f"z1 and z2 must have the same shape (row i of each is a positive pair), got "
            f"{z1.shape} and {z2.shape}."
        )
    return z1, z2


def _similarities(
    z1: tf.Tensor, z2: tf.Tensor, hidden_norm: bool, cross_replica: bool
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """This replica's 2n anchors against the global 2N candidates.

    Returns (similarities [2n, 2N] float32, unmasked; labels [2n] int32, the positive's index;
    self_mask [2n, 2N] bool, True at each anchor's own column).
    """
    if hidden_norm:
        z1 = tf.math.l2_normalize(z1, axis=1)
        z2 = tf.math.l2_normalize(z2, axis=1)
    n = tf.shape(z1)[0]
    if cross_replica:
        all1 = cross_replica_concat(z1)
        all2 = cross_replica_concat(z2)
        offset = _replica_offset() * n
    else:
        all1, all2 = z1, z2
        offset = tf.constant(0, tf.int32)
    big_n = tf.shape(all1)[0]  # N, the global number of images
    candidates = tf.concat([all1, all2], axis=0)  # [2N, d]
    anchors = tf.concat([z1, z2], axis=0)  # [2n, d]
    sims = tf.matmul(anchors, candidates, transpose_b=True)  # [2n, 2N]
    local = tf.range(n, dtype=tf.int32) + offset  # global image index of each local row
    self_index = tf.concat([local, local + big_n], axis=0)  # [2n]
    labels = tf.concat([local + big_n, local], axis=0)  # [2n]: the other view
    self_mask = tf.one_hot(self_index, 2 * big_n, on_value=True, off_value=False)
    return sims, labels, self_mask


def _diagnostics(
    logits: tf.Tensor, labels: tf.Tensor, self_mask: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """(accuracy, entropy) of the softmax over each anchor's 2N-1 candidates (no gradient)."""
    stopped = tf.stop_gradient(logits)
    predicted = tf.argmax(stopped, axis=1, output_type=tf.int32)
    accuracy = tf.reduce_mean(tf.cast(tf.equal(predicted, labels), tf.float32))
    log_p = tf.nn.log_softmax(stopped, axis=1)
    plogp = tf.where(self_mask, tf.zeros_like(log_p), tf.exp(log_p) * log_p)
    entropy = -tf.reduce_mean(tf.reduce_sum(plogp, axis=1))
    return accuracy, entropy


def nt_xent(
    z1: tf.Tensor,
    z2: tf.Tensor,
    temperature: float = 0.1,
    hidden_norm: bool = True,
    cross_replica: bool = True,
) -> ContrastiveOutput:
    """NT-Xent loss of this replica's anchors against the global batch of 2N views.

    Args:
      z1, z2: `[n, d]` projections of the two views of this replica's `n` images (row i of z1
        and row i of z2 are the positive pair). Any float dtype; computed in float32 so the
        softmax over thousands of candidates stays accurate under mixed precision.
      temperature: tau > 0; logits are cosine similarities / tau.
      hidden_norm: L2-normalise each row first (cosine similarity, as in the paper).
      cross_replica: gather candidates from all replicas (`cross_replica_concat`); with False
        each replica only contrasts against its own 2n views.

    Candidates are ordered `[z1 of replica 0, ..., z1 of replica R-1, z2 of replica 0, ...]`, so
    the local view-1 anchor i of replica r has its positive at `N + r*n + i` and itself
    (masked out) at `r*n + i`. Per anchor, `l = -log softmax(logits)[positive]` over the 2N-1
    candidates other than itself.

    Returns a `ContrastiveOutput` whose `loss` is the mean over the 2n local anchors, i.e.
    (mean over view-1 anchors + mean over view-2 anchors) / 2; at random init it is about
    ln(2N-1). The reference implementation (google-research/simclr) optimises and reports the
    SUM of the two directions (about 2 ln(2N-1)); the train step optimises that too
    (:func:`contrastive_objective`, logged as `contrast_objective`). Its `contrast_acc` also
    only ranks the N cross-view candidates of view-1 anchors, so ours (all 2N-1 candidates,
    both directions) is slightly stricter.

    Gradient contract for distributed training: the caller (the model's `train_step`) must
    divide `loss` by `num_replicas_in_sync` before taking gradients. Keras's optimizer SUMS
    gradients across replicas, and `cross_replica_concat` already routes each replica's
    negative-term gradients back to the replica that owns the rows, so
    sum_r grad(loss_r / R) = grad(global mean loss): the applied gradient equals the
    single-device gradient on the full batch of N images.

    Example::

        out = simclr_tf.nt_xent(z1, z2, temperature=0.5)
        out.loss, out.accuracy
    """
    z1, z2 = _check_inputs(z1, z2, temperature)
    with tf.name_scope("nt_xent"):
        sims, labels, self_mask = _similarities(z1, z2, hidden_norm, cross_replica)
        logits = tf.where(self_mask, tf.constant(_SELF_LOGIT, tf.float32), sims / temperature)
        per_anchor = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        loss = tf.reduce_mean(per_anchor)
        accuracy, entropy = _diagnostics(logits, labels, self_mask)

    return ContrastiveOutput(
        loss=loss, accuracy=accuracy, entropy=entropy, logits=logits, labels=labels
    )


# --------------------------------------------------------------------------------------------
# The paper's other losses (Table 2) and semi-hard negatives (Table 4)
# --------------------------------------------------------------------------------------------


def _negatives(
    sims: tf.Tensor,
    labels: tf.Tensor,
    self_mask: tf.Tensor,
    semi_hard: bool,
    margin: float | None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """(positive similarity [2n], negative mask [2n, 2N] bool) of each anchor.

    Negatives are the 2N-2 candidates that are neither the anchor nor its positive. Semi-hard,
    in the paper's words (Section 5.1): "semi-hard negative terms (i.e., those that are within
    the loss margin and closest in distance, but farther than positive examples)": per anchor,
    the one negative most similar to it among those *less* similar than the positive and, when
    ``margin`` is given, within it (``s+ - margin < s- < s+``); none when no negative qualifies.
    The selection is a constant for the gradient.
    """
    width = tf.shape(sims)[1]
    positive_mask = tf.one_hot(labels, width, on_value=True, off_value=False)
    pos_sim = tf.reduce_sum(tf.where(positive_mask, sims, tf.zeros_like(sims)), axis=1)
    negatives = ~(self_mask | positive_mask)
    if semi_hard:
        s = tf.stop_gradient(sims)
        p = tf.stop_gradient(pos_sim)[:, tf.newaxis]
        window = negatives & (s < p)
        if margin is not None:
            window &= s > p - margin
        closest = tf.argmax(tf.where(window, s, tf.fill(tf.shape(s), float("-inf"))), axis=1)
        has_one = tf.reduce_any(window, axis=1, keepdims=True)
        negatives = tf.one_hot(closest, width, on_value=True, off_value=False) & has_one
    return pos_sim, negatives


def _masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Row means of ``values`` over ``mask`` (0 for a row without any True)."""
    weights = tf.cast(mask, tf.float32)
    total = tf.reduce_sum(tf.where(mask, values, tf.zeros_like(values)), axis=1)
    return total / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)


def nt_logistic(
    z1: tf.Tensor,
    z2: tf.Tensor,
    temperature: float = 0.1,
    hidden_norm: bool = True,
    cross_replica: bool = True,
    semi_hard_negatives: bool = False,
) -> ContrastiveOutput:
    """NT-Logistic (paper, Table 2): a sigmoid of the similarity / tau for every pair.

    Per anchor u with positive v+ and its negatives v-, the loss is
    ``-log sigmoid(s(u, v+) / tau) - mean over v- of log sigmoid(-s(u, v-) / tau)``: the mean
    over the anchor's (u, v+, v-) terms of the paper's objective, so the many negatives get the
    same total weight as the one positive (Table 2 writes a single triple; how the paper weighs
    many negatives is not stated). With ``semi_hard_negatives`` the one closest negative farther
    than the positive (see :func:`_negatives`); anchors without one keep only their positive
    term. The paper tuned tau in {0.1, 0.2, 0.5, 1.0} (Appendix B.10). Negatives, replicas and
    the returned diagnostics are as in :func:`nt_xent` (accuracy and entropy of the softmax of
    similarity / tau).

    Args:
      z1, z2: ``[n, d]`` projections of the two views (row i of each: a positive pair).
      temperature: tau > 0.
      hidden_norm: L2-normalise the rows first.
      cross_replica: negatives from every replica.
      semi_hard_negatives: only the closest negative farther than the positive.

    Example::

        loss = simclr_tf.nt_logistic(z1, z2, temperature=0.2).loss
    """
    z1, z2 = _check_inputs(z1, z2, temperature)
    with tf.name_scope("nt_logistic"):
        sims, labels, self_mask = _similarities(z1, z2, hidden_norm, cross_replica)
        pos_sim, negatives = _negatives(sims, labels, self_mask, semi_hard_negatives, None)
        positive_term = -tf.math.log_sigmoid(pos_sim / temperature)
        negative_term = _masked_mean(-tf.math.log_sigmoid(-sims / temperature), negatives)
        loss = tf.reduce_mean(positive_term + negative_term)
        logits = tf.where(self_mask, tf.constant(_SELF_LOGIT, tf.float32), sims / temperature)
        accuracy, entropy = _diagnostics(logits, labels, self_mask)
    return ContrastiveOutput(
        loss=loss, accuracy=accuracy, entropy=entropy, logits=logits, labels=labels
    )


def margin_triplet(
    z1: tf.Tensor,
    z2: tf.Tensor,
    margin: float = 0.4,
    hidden_norm: bool = True,
    cross_replica: bool = True,
    semi_hard_negatives: bool = False,
    temperature: float = 0.1,
) -> ContrastiveOutput:
    """Margin triplet (paper, Table 2) on similarities: ``max(s(u, v-) - s(u, v+) + m, 0)``.

    Per anchor, the mean over its negatives; with ``semi_hard_negatives`` only the one closest
    negative with ``s+ - m < s- < s+`` (farther than the positive, within the margin; see
    :func:`_negatives`), 0 for an anchor without one. ``temperature`` only scales the logits of
    the reported accuracy / entropy, not the loss.

    Args:
      z1, z2: ``[n, d]`` projections of the two views (row i of each: a positive pair).
      margin: m >= 0.
      hidden_norm: L2-normalise the rows first.
      cross_replica: negatives from every replica.
      semi_hard_negatives: only the closest negative within the margin.
      temperature: scales the reported logits only.

    Example::

        loss = simclr_tf.margin_triplet(z1, z2, margin=0.4).loss
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}; the paper tuned 0, 0.4, 0.8, 1.6.")
    z1, z2 = _check_inputs(z1, z2, temperature)
    with tf.name_scope("margin_triplet"):
        sims, labels, self_mask = _similarities(z1, z2, hidden_norm, cross_replica)
        pos_sim, negatives = _negatives(sims, labels, self_mask, semi_hard_negatives, margin)
        hinge = tf.nn.relu(sims - pos_sim[:, tf.newaxis] + margin)
        loss = tf.reduce_mean(_masked_mean(hinge, negatives))
        logits = tf.where(self_mask, tf.constant(_SELF_LOGIT, tf.float32), sims / temperature)
        accuracy, entropy = _diagnostics(logits, labels, self_mask)
    return ContrastiveOutput(
        loss=loss, accuracy=accuracy, entropy=entropy, logits=logits, labels=labels
    )


ContrastiveLossFn = Callable[[tf.Tensor, tf.Tensor], ContrastiveOutput]

# The reference optimises the SUM of its two directions' mean losses (`loss_a + loss_b` in
# tf2/objective.py, also the TF1 code), i.e. twice the mean over the 2n anchors that the loss
# functions here return. Its learning rates and weight decays were tuned for that scale: LARS's
# trust ratio hides the factor for the kernels it adapts, not for the variables it does not
# (batch-norm gamma/beta, biases) nor for weight decay's balance against the gradient.
DIRECTIONS = 2


def contrastive_objective(output: ContrastiveOutput) -> tf.Tensor:
    """What the train step optimises (logged as ``contrast_objective``): the reference's objective.

    ``DIRECTIONS * output.loss``: the sum over the two views-as-anchors directions of each
    direction's mean over the batch (about 2 ln(2N-1) at random init, as the reference's
    TensorBoard shows). The loss functions keep their per-anchor mean contract.
    """
    return DIRECTIONS * output.loss


def make_contrastive_loss(
    loss: str = "nt_xent",
    temperature: float = 0.1,
    hidden_norm: bool = True,
    margin: float = 0.4,
    semi_hard_negatives: bool = False,
) -> ContrastiveLossFn:
    """``(z1, z2) -> ContrastiveOutput`` of a run's ``--loss`` and its settings."""
    if loss == "nt_xent":
        if semi_hard_negatives:
            raise ValueError("semi_hard_negatives is for nt_logistic or margin_triplet.")
        return functools.partial(nt_xent, temperature=temperature, hidden_norm=hidden_norm)
    if loss == "nt_logistic":
        return functools.partial(
            nt_logistic,
            temperature=temperature,
            hidden_norm=hidden_norm,
            semi_hard_negatives=semi_hard_negatives,
        )
    if loss == "margin_triplet":
        return functools.partial(
            margin_triplet,
            margin=margin,
            hidden_norm=hidden_norm,
            semi_hard_negatives=semi_hard_negatives,
            temperature=temperature,
        )
    raise ValueError(f"Unknown loss {loss!r}: choose one of {', '.join(LOSSES)}.")
