"""Build the simclr_tf model an official checkpoint describes and assign every variable."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from simclr_tf.config import Config
from simclr_tf.models.build import build_serving_model
from simclr_tf.official import layout
from simclr_tf.official.reader import (
    TF2_SAVED_MODEL,
    OfficialCheckpointError,
    Source,
    read_source,
)

# Shapes are independent of the image size; a small one keeps the build cheap.
_BUILD_SIZE = 32


@dataclasses.dataclass
class OfficialInfo:
    """What was loaded: format, architecture, heads, and what the checkpoint did not hold."""

    format: str
    path: str
    prefix: str
    global_step: int | None
    arch: layout.Arch
    head: layout.Head
    config: Config  # the architecture as simclr_tf flags
    not_found: list[str]  # parts of a SimCLR model the checkpoint has no weights for
    ignored: dict[str, int]  # what was deliberately not read (optimizer slots, EMA, ...)
    use_ema: bool
    num_variables: int
    selector_measured: bool = False  # ft_proj_selector read off the SavedModel's own logits

    def describe(self) -> str:
        a = self.arch
        parts = [f"ResNet-{a.depth} {a.width_multiplier:g}x"]
        if a.sk_ratio:
            parts.append(f"SK {a.sk_ratio:g}")
        if a.se_ratio:
            parts.append(f"SE {a.se_ratio:g}")
        if a.cifar_stem:
            parts.append("CIFAR stem")
        head = (
            f"{self.head.proj_layers}-layer projection head -> {self.head.proj_out_dim}"
            if self.head.proj_layers
            else "no projection head"
        )
        sup = (
            f"{self.head.num_classes}-class supervised head"
            if self.head.num_classes
            else "no supervised head"
        )
        if self.head.num_classes and self.head.proj_layers:
            # Not recorded in any checkpoint format: say which one is assumed.
            how = (
                "measured on the SavedModel"
                if self.selector_measured
                else "SimCLRv2 fine-tuned models use 1"
            )
            sup += f" on projection layer {self.config.ft_proj_selector} (ft_proj_selector; {how})"
        text = (
            f"{self.format} {self.path}: {', '.join(parts)}; {head}; {sup}; "
            f"{self.num_variables} variables loaded"
            f"{' (EMA weights)' if self.use_ema else ''}"
        )
        if self.ignored:
            text += "; ignored " + ", ".join(f"{v} {k}" for k, v in self.ignored.items())
        if self.not_found:
            text += "; not in the checkpoint: " + ", ".join(self.not_found)
        return text


def arch_config(
    arch: layout.Arch, head: layout.Head, base: Config | None = None, ft_proj_selector: int = 0
) -> Config:
    """``base`` (default: a fresh Config) with the checkpoint's architecture flags."""
    base = base or Config()
    return base.replace(
        resnet_depth=arch.depth,
        width_multiplier=arch.width_multiplier,
        cifar_stem=arch.cifar_stem,
        sk_ratio=arch.sk_ratio,
        se_ratio=arch.se_ratio,
        first_block_projection=arch.first_block_projection,
        proj_head_mode=head.proj_mode,
        num_proj_layers=max(head.proj_layers, 1)
        if head.proj_mode == "nonlinear"
        else base.num_proj_layers,
        proj_out_dim=head.proj_out_dim or base.proj_out_dim,
        ft_proj_selector=ft_proj_selector,
    )


def _layer(model: keras.Model, path: tuple[str, ...]) -> Any:
    obj = model
    for name in path:
        obj = getattr(obj, name)
    return obj


def _variables_of(layer: Any, kind: str) -> dict[str, tf.Variable]:
    if kind.startswith("bn"):
        out = {
            "gamma": layer.gamma,
            "moving_mean": layer.moving_mean,
            "moving_variance": layer.moving_variance,
        }
        if kind == "bn":
            out["beta"] = layer.beta
        return out
    out = {"kernel": layer.kernel}
    if kind.endswith("_bias"):
        out["bias"] = layer.bias
    return out


def assign(
    model: keras.Model,
    source: Source,
    layer_slots: list[layout.Slot],
    parts: tuple[str, ...] = ("encoder", "projection_head", "supervised_head"),
) -> int:
    """Copies every slot's variables from ``source`` into ``model``; returns the count.

    Every variable of the model's ``parts`` must be filled: a model of another architecture
    that merely contains the checkpoint's layers (SE gates, a deeper ResNet) is refused, not
    half-loaded.
    """
    pending = []
    for slot in layer_slots:
        try:
            layer = _layer(model, slot.ours)
        except AttributeError as e:
            raise OfficialCheckpointError(
                f"simclr_tf model has no layer {'.'.join(slot.ours)} for {slot.key}: {e}"
            ) from e
        for name, var in _variables_of(layer, slot.kind).items():
            key = f"{slot.key}/{name}"
            value = np.asarray(source.read(key))
            target = tuple(var.shape)
            if value.shape != target:
                # 1x1 convolutions of the reference are Dense layers here (SK, SE): same matrix.
                squeezable = (
                    value.ndim == 4 and value.shape[:2] == (1, 1) and value.shape[2:] == target
                )
                if not squeezable:
                    raise OfficialCheckpointError(
                        f"{source.path}: {key} has shape {list(value.shape)} but "
                        f"{'.'.join(slot.ours)}/{name} needs {list(target)}; the reference "
                        "widths are not reproduced by this width multiplier."
                    )
                value = value.reshape(target)
            pending.append((var, value))
    filled = {id(var) for var, _ in pending}
    unfilled = [
        v.path
        for part in parts
        if getattr(model, part, None) is not None
        for v in getattr(model, part).weights
        if id(v) not in filled
    ]
    if unfilled:
        raise OfficialCheckpointError(
            f"{source.path} has no values for {len(unfilled)} variables of this model (e.g. "
            f"{unfilled[:3]}): build the model with the checkpoint's architecture "
            "(run.py does so from --checkpoint; in Python use load_official)."
        )
    for var, value in pending:  # only once every variable was found and fits
        var.assign(value)
    return len(pending)


def build_model(cfg: Config, num_classes: int, image_size: int = _BUILD_SIZE) -> keras.Model:
    """The simclr_tf SimCLR model of ``cfg`` (float32, every layer trainable), built."""
    return build_serving_model(cfg.replace(image_size=image_size), num_classes)


def inspect(
    path: str, use_ema: bool = False
) -> tuple[Source, layout.Arch, layout.Head, list[layout.Slot]]:
    """Reads and identifies a checkpoint without building a model."""
    source = read_source(path, use_ema=use_ema)
    arch, head, layer_slots, _ = layout.infer(source)
    return source, arch, head, layer_slots


def _not_found(head: layout.Head) -> list[str]:
    missing = []
    if not head.proj_layers:
        missing.append(
            "projection head (SimCLRv1 checkpoints have none; proj_head_output is then h)"
        )
    if not head.num_classes:
        missing.append("supervised head")
    return missing


def trained_selector(
    source: Source, head: layout.Head, layer_slots: list[layout.Slot]
) -> int | None:
    """``ft_proj_selector`` of a TF1/TF2 checkpoint from which weights have optimizer slots.

    Fine-tuning from projection layer k trains only the k head layers below the supervised head
    (the reference's finetune graph builds the others without a gradient), so their slots
    count k; pretraining trains every head layer, and its probe reads h (0). None when the
    checkpoint cannot tell: no slots, an untrained supervised head, or another pattern.
    """
    if source.trained is None or not head.proj_layers or not head.num_classes:
        return None

    def trained(slot: layout.Slot) -> bool:
        return any(key in source.trained for key in slot.variables())

    if not all(trained(s) for s in layer_slots if s.ours[0] == "supervised_head"):
        return None
    dense = {s.ours[1]: s for s in layer_slots if s.ours[0] == "projection_head"}
    flags = [trained(dense[f"dense_{j}"]) for j in range(head.proj_layers)]
    k = flags.index(False) if False in flags else len(flags)
    if any(flags[k:]):
        return None
    return 0 if k == len(flags) else k


def checkpoint_selector(
    path: str,
    source: Source,
    head: layout.Head,
    layer_slots: list[layout.Slot],
    explicit: int | None,
) -> int:
    """The ``ft_proj_selector`` to load a checkpoint with: ``explicit`` when given, else read
    off a TF1/TF2 checkpoint's slots (:func:`trained_selector`), refused when a checkpoint with
    both heads cannot tell; 0 for a SavedModel (measured when it is restored) or one head."""
    if explicit is not None:
        return int(explicit)
    if source.format == TF2_SAVED_MODEL or not (head.proj_layers and head.num_classes):
        return 0
    inferred = trained_selector(source, head, layer_slots)
    if inferred is None:
        raise OfficialCheckpointError(
            f"{path} does not record which projection layer feeds its supervised head (no "
            "optimizer slots tell it): pass --ft_proj_selector=N (0 = h; the reference README "
            "fine-tunes SimCLRv2 models with 1)."
        )
    return inferred


_MEASURED: dict[str, int | None] = {}  # SavedModel prefix -> measured selector (loads are slow)


def measured_selector(source: Source, model: keras.Model) -> int | None:
    """Which projection layer a reference SavedModel's ``logits_sup`` reads, by running it.

    No checkpoint format records ``ft_proj_selector``, but a SavedModel carries its computation:
    its logits on two images are compared with ours from each layer (``model`` already holds
    the weights). None when it cannot tell (no heads, or the SavedModel does not run here).
    """
    if source.format != TF2_SAVED_MODEL or getattr(model, "supervised_head", None) is None:
        return None
    if source.prefix not in _MEASURED:
        _MEASURED[source.prefix] = _measure(source, model)
    return _MEASURED[source.prefix]


def _measure(source: Source, model: keras.Model) -> int | None:
    folder = os.path.dirname(os.path.dirname(source.prefix))
    size = 32 if model.encoder.cifar_stem else 64
    images = tf.random.stateless_uniform([2, size, size, 3], seed=[0, 1])
    try:
        want = np.asarray(tf.saved_model.load(folder)(images, trainable=False)["logits_sup"])
    except Exception as e:  # noqa: BLE001 - a convenience: fall back to the given selector
        logging.warning("Could not run %s to find ft_proj_selector: %s", folder, e)
        return None
    hiddens = model.projection_head(model.encoder(images, training=False), training=False)
    in_dim = int(model.supervised_head.dense.kernel.shape[0])
    for k, hidden in enumerate(hiddens):
        if int(hidden.shape[-1]) != in_dim:
            continue
        got = model.supervised_head(hidden).numpy()
        if np.abs(got - want).max() <= 1e-3 * max(float(np.abs(want).max()), 1e-12):
            return k
    return None


def load_official(
    path: str,
    use_ema: bool = False,
    ft_proj_selector: int | None = None,
    base: Config | None = None,
) -> tuple[keras.Model, OfficialInfo]:
    """A simclr_tf SimCLR model holding an official checkpoint's weights, and what was loaded.

    ``path``: a TF2 checkpoint (prefix or folder), a TF2 SavedModel folder, or a TF1 checkpoint
    (prefix or folder). The architecture comes from the checkpoint. ``use_ema``: TF1 SimCLRv2
    checkpoints' ``ema_model/`` weights. ``ft_proj_selector``: which projection layer feeds the
    supervised head; None: measured for a SavedModel, read off the optimizer slots of a TF1/TF2
    checkpoint (:func:`trained_selector`), and refused when a checkpoint with both heads cannot
    tell. ``base``: other flags of the returned ``info.config`` (the architecture ones are
    replaced).

    Args:
      path: the published checkpoint or SavedModel.
      use_ema: load the EMA weights of TF1 SimCLRv2 checkpoints.
      ft_proj_selector: projection layer feeding the supervised head (None = measured,
        read off the optimizer slots, or refused).
      base: a Config whose non-architecture settings the returned config keeps.

    Example::

        model, info = simclr_tf.load_official("r50_1x_sk0/saved_model")
        h = model(images)["final_avg_pool"]
    """
    source, arch, head, layer_slots = inspect(path, use_ema)
    selector = checkpoint_selector(path, source, head, layer_slots, ft_proj_selector)
    if not 0 <= selector <= max(head.proj_layers, 0):
        raise OfficialCheckpointError(
            f"ft_proj_selector={selector} but the checkpoint's projection head has "
            f"{head.proj_layers} layers: use 0..{head.proj_layers}."
        )
    cfg = arch_config(arch, head, base, selector)
    cfg = cfg.replace(lineareval_while_pretraining=bool(head.num_classes), train_mode="pretrain")
    model = build_model(cfg, head.num_classes)
    count = assign(model, source, layer_slots)
    measured = None
    if ft_proj_selector is None and head.proj_layers and head.num_classes:
        measured = measured_selector(source, model)
        if measured is not None and measured != selector:
            model.ft_proj_selector = measured
            cfg = cfg.replace(ft_proj_selector=measured)
    return model, _info(path, source, arch, head, cfg, count, measured)


def restore_into(
    model: keras.Model, path: str, parts: tuple[str, ...], use_ema: bool = False
) -> OfficialInfo:
    """Loads the official checkpoint's ``parts`` ("encoder", "projection_head",
    "supervised_head") into an existing simclr_tf model (built with its architecture)."""
    source, arch, head, layer_slots = inspect(path, use_ema)
    chosen = [s for s in layer_slots if s.ours[0] in parts]
    if "supervised_head" in parts:
        ours = getattr(model, "supervised_head", None)
        if ours is not None and not head.num_classes:
            raise OfficialCheckpointError(
                f"{path} has no supervised head to evaluate: fine-tune or linear-evaluate it "
                "first (--train_mode=finetune), then evaluate that run."
            )
        if ours is not None and ours.num_classes != head.num_classes:
            raise OfficialCheckpointError(
                f"{path} has a {head.num_classes}-class supervised head but this dataset has "
                f"{ours.num_classes} classes: evaluate it on its own dataset, or fine-tune / "
                "linear-evaluate it on this one first."
            )
    count = assign(model, source, chosen, parts)
    selector = int(getattr(model, "ft_proj_selector", 0))
    measured = None
    if "supervised_head" in parts and head.proj_layers and head.num_classes:
        inferred = trained_selector(source, head, layer_slots)
        if source.format != TF2_SAVED_MODEL and inferred is not None and inferred != selector:
            raise OfficialCheckpointError(
                f"{path}: its optimizer slots show its supervised head reads projection layer "
                f"{inferred}, this model layer {selector}: pass --ft_proj_selector={inferred}."
            )
        measured = measured_selector(source, model)
        if measured is not None and measured != selector:
            raise OfficialCheckpointError(
                f"{path}: its supervised head reads projection layer {measured}, this model "
                f"layer {selector}: pass --ft_proj_selector={measured}."
            )
    cfg = arch_config(arch, head, ft_proj_selector=selector)
    return _info(path, source, arch, head, cfg, count, measured)


def _info(path, source, arch, head, cfg: Config, count: int, measured) -> OfficialInfo:
    """The record of one load: what the source held, the config, what it did not hold."""
    return OfficialInfo(
        source.format,
        path,
        source.prefix,
        source.global_step,
        arch,
        head,
        cfg,
        _not_found(head),
        source.ignored,
        source.use_ema,
        count,
        selector_measured=measured is not None,
    )


def reference_endpoints(model: keras.Model, images: tf.Tensor) -> dict[str, tf.Tensor]:
    """The model's outputs under the reference's endpoint names and meanings (inference mode).

    Only ``initial_conv`` differs from the model's own outputs: the reference records it
    before the stem's last batch norm and ReLU, simclr_tf after.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    outputs = dict(model(images, training=False))
    stem = model.encoder.stem
    x = images
    for layer in stem.conv_layers[:-1]:
        x = layer(x, training=False) if hasattr(layer, "bn") else layer(x)
    outputs["initial_conv"] = x
    return outputs
