"""Optimisation pieces of SimCLR: LARS, learning-rate scaling, warmup + cosine, weight decay.

Weight decay here is always the *coupled* (L2) kind of the reference implementation: the
optimizer adds `wd * w` to the gradient of each non-exempt variable before its own update. Keras's
built-in `weight_decay=` argument is decoupled (`w -= lr * wd * w` outside the update), which
would change the recipe (and, if combined with an L2 loss term, apply decay twice), so every
optimizer built here disables Keras's decoupled path and applies the decay itself, exactly once.

Which variables are exempt is decided by *role*, not by name: variables of rank <= 1 (biases,
batch-norm gamma/beta) are exempt from weight decay and from LARS layer adaptation. Name regexes
such as "batch_normalization" silently stopped matching when Keras 3 renamed variables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import keras
import tensorflow as tf

from simclr_tf.config import LR_SCALINGS, OPTIMIZERS

__all__ = [
    "LARS",
    "AdamWithL2",
    "SGDWithL2",
    "WarmupCosineDecay",
    "build_optimizer",
    "is_weight_decay_exempt",
    "scaled_learning_rate",
    "weight_decay_penalty",
]


def is_weight_decay_exempt(variable) -> bool:
    """True for variables of rank <= 1 (biases, batch-norm gamma/beta), which get no decay.

    A role rule rather than a name rule: it holds whatever Keras calls the variable.
    """
    return len(variable.shape) <= 1


def scaled_learning_rate(learning_rate: float, batch_size: int, scaling: str) -> float:
    """The reference's batch-size scaling: "linear" lr * B / 256, or "sqrt" lr * sqrt(B)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if scaling == "linear":
        return learning_rate * batch_size / 256.0
    if scaling == "sqrt":
        return learning_rate * math.sqrt(batch_size)
    raise ValueError(
        f"Unknown learning rate scaling {scaling!r}; use one of {', '.join(LR_SCALINGS)} "
        "('linear': lr * batch_size / 256, 'sqrt': lr * sqrt(batch_size))."
    )


def weight_decay_penalty(variables: Iterable, weight_decay: float) -> tf.Tensor:
    """`wd * sum(0.5 * ||w||^2)` over non-exempt variables, as a float32 scalar.

    Only for reporting: the optimizers in this module already apply the decay to the gradients,
    so adding this to the loss would decay twice.
    """
    terms = [
        tf.reduce_sum(tf.square(tf.cast(tf.convert_to_tensor(v), tf.float32)))
        for v in variables
        if not is_weight_decay_exempt(v)
    ]
    if not terms:
        return tf.constant(0.0, tf.float32)
    return tf.constant(0.5 * weight_decay, tf.float32) * tf.add_n(terms)


@keras.saving.register_keras_serializable(package="simclr_tf")
class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Linear warmup from 0 to `peak_learning_rate`, then cosine decay to 0 at `total_steps`.

    step < warmup:  peak * step / warmup            (the reference warms up linearly from 0)
    otherwise:      peak * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))
    step >= total:  0

    Keras's ``CosineDecay(warmup_target=..., warmup_steps=...)`` computes this curve; this class
    only adds the argument check and the 0 from ``total_steps`` on (when the warmup covers the
    whole run, Keras would return the peak at ``total_steps``).

    Args:
      peak_learning_rate: the rate at the end of the warmup (e.g. 0.3 x batch / 256).
      warmup_steps: steps of the linear warmup (the paper: 10 epochs).
      total_steps: steps of the whole run; 0 from there on.

    Example::

        schedule = simclr_tf.WarmupCosineDecay(1.0, warmup_steps=100, total_steps=1000)
        float(schedule(100))  # 1.0
    """

    def __init__(self, peak_learning_rate: float, warmup_steps: int, total_steps: int):
        warmup_steps, total_steps = int(warmup_steps), int(total_steps)
        if warmup_steps < 0 or total_steps < 1 or warmup_steps > total_steps:
            raise ValueError(
                "WarmupCosineDecay needs 0 <= warmup_steps <= total_steps and total_steps >= 1, "
                f"got warmup_steps={warmup_steps}, total_steps={total_steps}; check the "
                "warmup_epochs / train_epochs (or train_steps) settings."
            )
        super().__init__(
            initial_learning_rate=0.0,
            decay_steps=max(total_steps - warmup_steps, 1),
            warmup_target=float(peak_learning_rate),
            warmup_steps=warmup_steps,
            name="WarmupCosineDecay",
        )
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = total_steps

    def __call__(self, step):
        lr = super().__call__(step)
        done = tf.cast(step, tf.float32) >= float(self.total_steps)
        return tf.where(done, tf.zeros_like(lr), lr)

    def get_config(self) -> dict:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


def _as_learning_rate(learning_rate):
    """Keras rejects int learning rates (e.g. `--learning_rate=1`); accept any real number."""
    if isinstance(learning_rate, (int, float)) and not isinstance(learning_rate, bool):
        return float(learning_rate)
    if hasattr(learning_rate, "dtype") and getattr(learning_rate, "shape", None) == ():
        try:
            return float(learning_rate)
        except (TypeError, ValueError):
            return learning_rate
    return learning_rate


def _check_weight_decay(weight_decay) -> float:
    weight_decay = float(weight_decay or 0.0)
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
    return weight_decay


class _CoupledWeightDecay:
    """Mixin: L2 weight decay added to the gradient inside `update_step`.

    Subclasses pass `weight_decay=None` to the Keras base class and set `self.weight_decay`
    afterwards, so `get_config` still reports it; `_apply_weight_decay` (Keras's decoupled
    decay) is a no-op so that the decay is never applied twice.
    """

    def _apply_weight_decay(self, variables):
        """Disabled: decay is coupled into the gradient in `update_step`."""
        return

    def _decays(self, variable) -> bool:
        """Whether `variable` gets weight decay: non-zero wd, not rank <= 1, not excluded."""
        return (
            bool(self.weight_decay)
            and not is_weight_decay_exempt(variable)
            and self._use_weight_decay(variable)
        )

    def _with_weight_decay(self, gradient, variable):
        """`gradient + wd * w` in the variable's dtype (dense), or the gradient unchanged."""
        if not self._decays(variable):
            return gradient
        gradient = tf.cast(tf.convert_to_tensor(gradient), variable.dtype)
        return gradient + tf.cast(self.weight_decay, variable.dtype) * variable


@keras.saving.register_keras_serializable(package="simclr_tf")
class LARS(_CoupledWeightDecay, keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) as used by the SimCLR reference.

    Per variable w with gradient g:
      g' = g + wd * w                              (unless exempt from weight decay)
      trust = eeta * ||w|| / ||g'||  if both norms > 0, else 1
              (1 for variables excluded from layer adaptation)
      v = momentum * v + lr * trust * g'
      w = w - v                                     (nesterov: w - (momentum * v + lr*trust*g'))

    Rank <= 1 variables (biases, BN gamma/beta) are exempt from both weight decay and layer
    adaptation. Extra exclusions: `exclude_from_weight_decay(var_list=...)` (Keras's own API)
    and `exclude_from_layer_adaptation(var_list)`; the two lists are independent (the reference
    excludes its supervised head from adaptation but still decays its kernel).

    Under `tf.distribute`, Keras sums the replicas' gradients before `update_step`, so every
    replica computes the same norms and trust ratios from the summed gradient.

    Args:
      learning_rate: a float or a schedule (e.g. :class:`WarmupCosineDecay`).
      momentum: momentum of the velocity.
      weight_decay: coupled L2 weight decay (added to the gradient before the trust ratio).
      eeta: trust coefficient.
      nesterov: Nesterov momentum.
      name: the optimizer's name.

    Example::

        optimizer = simclr_tf.LARS(simclr_tf.WarmupCosineDecay(4.8, 500, 5000),
                                   weight_decay=1e-6)
        model.compile(optimizer=optimizer)
    """

    def __init__(
        self,
        learning_rate,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eeta: float = 0.001,
        nesterov: bool = False,
        name: str = "LARS",
        **kw,
    ):
        super().__init__(
            learning_rate=_as_learning_rate(learning_rate), weight_decay=None, name=name, **kw
        )
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"LARS momentum must be in [0, 1], got {momentum}.")
        if not float(eeta) > 0.0:
            raise ValueError(f"LARS eeta (trust coefficient) must be > 0, got {eeta}.")
        # Set after the base constructor so Keras's decoupled decay never sees it.
        self.weight_decay = _check_weight_decay(weight_decay)
        self.momentum = float(momentum)
        self.eeta = float(eeta)
        self.nesterov = bool(nesterov)
        self._layer_adaptation_excluded: set = set()

    def exclude_from_layer_adaptation(self, var_list) -> None:
        """Use trust ratio 1 for these variables (matched by identity; adds to earlier calls)."""
        for variable in var_list:
            self._layer_adaptation_excluded.add(self._var_key(variable))

    def _adapts(self, variable) -> bool:
        return (
            not is_weight_decay_exempt(variable)
            and self._var_key(variable) not in self._layer_adaptation_excluded
        )

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._velocities = self.add_optimizer_variables(variables, "velocity")

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        gradient = tf.cast(tf.convert_to_tensor(gradient), dtype)
        gradient = self._with_weight_decay(gradient, variable)

        if self._adapts(variable):
            w_norm = tf.norm(variable)
            g_norm = tf.norm(gradient)
            ratio = tf.math.divide_no_nan(tf.cast(self.eeta, dtype) * w_norm, g_norm)
            trust = tf.where((w_norm > 0) & (g_norm > 0), ratio, tf.ones_like(ratio))
            scaled_lr = lr * trust
        else:
            scaled_lr = lr

        momentum = tf.cast(self.momentum, dtype)
        velocity = self._velocities[self._get_variable_index(variable)]
        step = scaled_lr * gradient
        new_velocity = momentum * velocity + step
        self.assign(velocity, new_velocity)
        update = momentum * new_velocity + step if self.nesterov else new_velocity
        self.assign_sub(variable, update)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"momentum": self.momentum, "eeta": self.eeta, "nesterov": self.nesterov})
        return config


@keras.saving.register_keras_serializable(package="simclr_tf")
class SGDWithL2(_CoupledWeightDecay, keras.optimizers.SGD):
    """Keras SGD with the reference's L2 decay in the gradient; defaults (momentum 0.9, Nesterov)
    are the reference's "momentum" optimizer."""

    def __init__(self, learning_rate=0.01, momentum=0.9, nesterov=True, weight_decay=0.0, **kw):
        super().__init__(
            learning_rate=_as_learning_rate(learning_rate),
            momentum=float(momentum),
            nesterov=bool(nesterov),
            weight_decay=None,
            **kw,
        )
        self.weight_decay = _check_weight_decay(weight_decay)

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(self._with_weight_decay(gradient, variable), variable, learning_rate)


@keras.saving.register_keras_serializable(package="simclr_tf")
class AdamWithL2(_CoupledWeightDecay, keras.optimizers.Adam):
    """Keras Adam with the reference's L2 decay added to the gradient (not AdamW)."""

    def __init__(self, learning_rate=0.001, weight_decay=0.0, **kw):
        super().__init__(learning_rate=_as_learning_rate(learning_rate), weight_decay=None, **kw)
        self.weight_decay = _check_weight_decay(weight_decay)

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(self._with_weight_decay(gradient, variable), variable, learning_rate)


def build_optimizer(
    name: str,
    learning_rate,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    *,
    nesterov: bool | None = None,
) -> keras.optimizers.Optimizer:
    """The optimizer for `--optimizer`: "lars", "momentum" or "adam", all with L2 weight decay.

    `nesterov=None` keeps the reference's choices: Nesterov momentum for "momentum", classic
    momentum for "lars". "adam" uses Keras's default betas and ignores `momentum` (as the
    reference does). Rank <= 1 variables get no decay; use `exclude_from_weight_decay(var_list=...)`
    on the result for more.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key == "lars":
        return LARS(
            learning_rate,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=bool(nesterov) if nesterov is not None else False,
        )
    if key == "momentum":
        return SGDWithL2(
            learning_rate,
            momentum=momentum,
            nesterov=True if nesterov is None else bool(nesterov),
            weight_decay=weight_decay,
        )
    if key == "adam":
        return AdamWithL2(learning_rate, weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}.")
