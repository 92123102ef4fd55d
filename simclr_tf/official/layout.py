"""Where each simclr_tf layer's variables live in the reference layouts, and inferring the
architecture of a checkpoint from its variables alone.

One generator (:func:`slots`) walks the network in the reference's creation order and yields,
per layer, our attribute path and its name in both reference layouts: the TF2 object path
(``resnet_model/block_groups/g/layers/b/...``) and the TF1 name (``base_model/conv2d_<n>``,
numbered by creation order, so the order of the walk *is* the mapping). Inference tries the few
discrete layouts (depth, stem, selective kernels, squeeze-excitation, projection placement) with
the width read from the stem, and keeps the one whose expected variables match the checkpoint's
exactly; the near miss is reported when none does.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

from simclr_tf.models.conv import scaled_width
from simclr_tf.models.resnet import BLOCKS
from simclr_tf.official.reader import TF1_CHECKPOINT, OfficialCheckpointError, Source

# Variables of each kind of layer (reference names; ours use the same ones).
VARIABLES = {
    "conv": ("kernel",),
    "conv_bias": ("kernel", "bias"),
    "bn": ("gamma", "beta", "moving_mean", "moving_variance"),
    "bn_scale_only": ("gamma", "moving_mean", "moving_variance"),  # center=False
    "dense": ("kernel",),
    "dense_bias": ("kernel", "bias"),
}
ANY = -1  # a dimension inference reads from the checkpoint (selective-kernel / SE widths)
SK_MIN_DIM = 32  # reference selective-kernel bottleneck floor
SIMCLRV2_SK_RATIO = 0.0625


@dataclasses.dataclass(frozen=True)
class Arch:
    """The encoder layout; ratios are 0 when the feature is off."""

    depth: int
    width_multiplier: float
    cifar_stem: bool
    sk_ratio: float
    se_ratio: float
    first_block_projection: bool


@dataclasses.dataclass(frozen=True)
class Head:
    """Heads found in the checkpoint: projection layers (0 = none) and supervised classes."""

    proj_mode: str  # "none" | "linear" | "nonlinear"
    proj_layers: int
    proj_out_dim: int
    num_classes: int  # 0 = no supervised head


@dataclasses.dataclass(frozen=True)
class Slot:
    """One layer: our attribute path from the SimCLR model, its kind, reference key, shape.

    ``shape`` is the reference kernel shape (conv: [k, k, in, out]; dense: [in, out]) or the
    channel count of a BN as a 1-tuple; ``ANY`` marks dimensions read from the checkpoint.
    """

    ours: tuple[str, ...]
    kind: str
    key: str
    shape: tuple[int, ...]

    def variables(self) -> dict[str, tuple[int, ...]]:
        """Reference key of every variable of the layer -> expected shape."""
        out = {}
        for name in VARIABLES[self.kind]:
            shape = (
                self.shape if name == "kernel" or self.kind.startswith("bn") else (self.shape[-1],)
            )
            out[f"{self.key}/{name}"] = shape
        return out


def _encoder_layers(arch: Arch) -> Iterator[tuple[tuple[str, ...], str, str, tuple[int, ...]]]:
    """(our path, kind, TF2 path below resnet_model, shape) in reference creation order."""
    c = scaled_width(64, arch.width_multiplier)
    stem = "initial_conv_relu_max_pool"
    if arch.cifar_stem:
        yield ("stem", "conv", "conv"), "conv", f"{stem}/0/conv2d", (3, 3, 3, c)
        yield ("stem", "bn", "bn"), "bn", f"{stem}/2/bn", (c,)
    elif arch.sk_ratio > 0:
        half = max(1, c // 2)
        yield ("stem", "conv1", "conv"), "conv", f"{stem}/0/conv2d", (3, 3, 3, half)
        yield ("stem", "bn1", "bn"), "bn", f"{stem}/1/bn", (half,)
        yield ("stem", "conv2", "conv"), "conv", f"{stem}/2/conv2d", (3, 3, half, half)
        yield ("stem", "bn2", "bn"), "bn", f"{stem}/3/bn", (half,)
        yield ("stem", "conv3", "conv"), "conv", f"{stem}/4/conv2d", (3, 3, half, c)
        yield ("stem", "bn3", "bn"), "bn", f"{stem}/6/bn", (c,)
    else:
        yield ("stem", "conv", "conv"), "conv", f"{stem}/0/conv2d", (7, 7, 3, c)
        yield ("stem", "bn", "bn"), "bn", f"{stem}/2/bn", (c,)
    block_type, counts = BLOCKS[arch.depth]
    bottleneck = block_type == "bottleneck"
    sk = arch.sk_ratio > 0 and bottleneck  # the reference basic block has no SK conv
    cin = c
    for g, count in enumerate(counts):
        f = scaled_width(64 * 2**g, arch.width_multiplier)
        out = 4 * f if bottleneck else f
        for b in range(count):
            stride = (1 if g == 0 else 2) if b == 0 else 1
            ours = (f"block_group{g + 1}", f"block{b + 1}")
            blk = f"block_groups/{g}/layers/{b}"
            if (b == 0 and arch.first_block_projection) or stride != 1 or cin != out:
                lst = f"{blk}/{'projection_layers' if bottleneck else 'shortcut_layers'}"
                i = (2 if stride > 1 else 1) if arch.sk_ratio > 0 else 0  # ResNet-D: pad, pool
                yield (
                    (*ours, "projection", "conv", "conv"),
                    "conv",
                    f"{lst}/{i}/conv2d",
                    (1, 1, cin, out),
                )
                yield (*ours, "projection", "bn", "bn"), "bn", f"{lst}/{i + 1}/bn", (out,)
            if bottleneck:
                lay = f"{blk}/conv_relu_dropblock_layers"
                yield (*ours, "conv1", "conv"), "conv", f"{lay}/0/conv2d", (1, 1, cin, f)
                yield (*ours, "bn1", "bn"), "bn", f"{lay}/1/bn", (f,)
                if sk:
                    s = f"{lay}/3"
                    yield (
                        (*ours, "sk", "conv", "conv"),
                        "conv",
                        f"{s}/conv2d_fixed_padding/conv2d",
                        (3, 3, f, 2 * f),
                    )
                    yield (*ours, "sk", "conv_bn", "bn"), "bn", f"{s}/batch_norm_relu/bn", (2 * f,)
                    yield (*ours, "sk", "fc_reduce"), "conv", f"{s}/conv2d_0", (1, 1, f, ANY)
                    yield (
                        (*ours, "sk", "fc_reduce_bn", "bn"),
                        "bn",
                        f"{s}/batch_norm_relu_1/bn",
                        (ANY,),
                    )
                    yield (*ours, "sk", "fc_expand"), "conv", f"{s}/conv2d_1", (1, 1, ANY, 2 * f)
                    last, se = 5, 8
                else:
                    yield (*ours, "conv2", "conv"), "conv", f"{lay}/3/conv2d", (3, 3, f, f)
                    yield (*ours, "bn2", "bn"), "bn", f"{lay}/4/bn", (f,)
                    last, se = 6, 9
                yield (*ours, "conv3", "conv"), "conv", f"{lay}/{last}/conv2d", (1, 1, f, out)
                yield (*ours, "bn3", "bn"), "bn", f"{lay}/{last + 1}/bn", (out,)
                se_key = f"{lay}/{se}"
            else:
                lay = f"{blk}/conv2d_bn_layers"
                yield (*ours, "conv1", "conv"), "conv", f"{lay}/0/conv2d", (3, 3, cin, f)
                yield (*ours, "bn1", "bn"), "bn", f"{lay}/1/bn", (f,)
                yield (*ours, "conv2", "conv"), "conv", f"{lay}/2/conv2d", (3, 3, f, f)
                yield (*ours, "bn2", "bn"), "bn", f"{lay}/3/bn", (f,)
                se_key = f"{blk}/se_layer"
            if arch.se_ratio > 0:
                yield (*ours, "se", "reduce"), "conv_bias", f"{se_key}/se_reduce", (1, 1, out, ANY)
                yield (*ours, "se", "expand"), "conv_bias", f"{se_key}/se_expand", (1, 1, ANY, out)
            cin = out


def output_dim(arch: Arch) -> int:
    block_type, _ = BLOCKS[arch.depth]
    f = scaled_width(512, arch.width_multiplier)
    return 4 * f if block_type == "bottleneck" else f


def slots(arch: Arch, head: Head, fmt: str, tf1_scope: str = "base_model/") -> list[Slot]:
    """Every layer of the model in reference creation order, keyed for format ``fmt``."""
    out: list[Slot] = []
    counters = {"conv": itertools.count(), "bn": itertools.count()}
    for ours, kind, tf2_path, shape in _encoder_layers(arch):
        if fmt == TF1_CHECKPOINT:
            family = "bn" if kind.startswith("bn") else "conv"
            n = next(counters[family])
            base = "batch_normalization" if family == "bn" else "conv2d"
            key = f"{tf1_scope}{base}" + (f"_{n}" if n else "")
        else:
            key = f"resnet_model/{tf2_path}"
        out.append(Slot(("encoder", *ours), kind, key, shape))
    dim = output_dim(arch)
    for j in range(head.proj_layers):
        last = j == head.proj_layers - 1
        units = head.proj_out_dim if last else dim
        if fmt == TF1_CHECKPOINT:
            layer = f"head_contrastive/{'l' if head.proj_mode == 'linear' else 'nl'}_{j}"
            dense, bn = f"{layer}/dense", f"{layer}/batch_normalization"
        else:
            layer = f"_projection_head/linear_layers/{j}"
            dense, bn = f"{layer}/dense", f"{layer}/bn_relu/bn"
        out.append(Slot(("projection_head", f"dense_{j}"), "dense", dense, (dim, units)))
        out.append(
            Slot(("projection_head", f"bn_{j}"), "bn_scale_only" if last else "bn", bn, (units,))
        )
    if head.num_classes:
        key = (
            "head_supervised" if fmt == TF1_CHECKPOINT else "supervised_head"
        ) + "/linear_layer/dense"
        out.append(Slot(("supervised_head", "dense"), "dense_bias", key, (dim, head.num_classes)))
    return out


def expected_variables(layer_slots: list[Slot]) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for slot in layer_slots:
        out.update(slot.variables())
    return out


def _shape_matches(expected: tuple[int, ...], found: tuple[int, ...]) -> bool:
    if len(expected) != len(found):
        return False
    return all(e in (ANY, f) for e, f in zip(expected, found, strict=True))


def compare(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, mis-shaped) keys, sorted."""
    missing = sorted(k for k in expected if k not in found)
    extra = sorted(k for k in found if k not in expected)
    bad = sorted(
        f"{k} {list(found[k])} (expected {list(expected[k])})"
        for k in expected
        if k in found and not _shape_matches(expected[k], found[k])
    )
    return missing, extra, bad


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------


def _tf1_scope(source: Source) -> str | None:
    scopes = sorted(
        k[: -len("conv2d/kernel")]
        for k in source.shapes
        if k.endswith("conv2d/kernel") and not k.startswith(("head_", "ema_model/"))
    )
    if "base_model/" in scopes:
        return "base_model/"
    return scopes[0] if scopes else None


def _stem_key(source: Source, scope: str | None) -> str:
    if source.format == TF1_CHECKPOINT:
        return f"{scope}conv2d/kernel"
    return "resnet_model/initial_conv_relu_max_pool/0/conv2d/kernel"


def _infer_head(source: Source, dim_hint: int | None) -> Head:
    keys = source.shapes
    tf1 = source.format == TF1_CHECKPOINT
    mode, layers, out_dim = "none", 0, 0
    if tf1:
        if "head_contrastive/l_0/dense/kernel" in keys:
            mode, layers = "linear", 1
        else:
            while f"head_contrastive/nl_{layers}/dense/kernel" in keys:
                layers += 1
            mode = "nonlinear" if layers else "none"
        name = f"head_contrastive/{'l' if mode == 'linear' else 'nl'}_{layers - 1}/dense/kernel"
    else:
        while f"_projection_head/linear_layers/{layers}/dense/kernel" in keys:
            layers += 1
        mode = "nonlinear" if layers > 1 else ("linear" if layers else "none")
        name = f"_projection_head/linear_layers/{layers - 1}/dense/kernel"
    if layers:
        out_dim = int(keys[name][-1])
    sup = ("head_supervised" if tf1 else "supervised_head") + "/linear_layer/dense/kernel"
    classes = int(keys[sup][-1]) if sup in keys and len(keys[sup]) == 2 else 0
    return Head(mode, layers, out_dim, classes)


def _ratio(pairs: list[tuple[int, int]], floor: int, preferred: float) -> float:
    """A ratio r with ``max(int(filters * r), floor) == width`` for every (filters, width)."""
    candidates = (
        [preferred] + [w / f for f, w in pairs if w > floor] + [floor / max(f for f, _ in pairs)]
    )
    for r in candidates:
        if all(max(int(f * r + 1e-9), floor) == w for f, w in pairs):
            return r
    raise OfficialCheckpointError(
        f"Cannot find one ratio giving these (filters, width) pairs: {pairs[:6]}; the "
        "checkpoint's selective-kernel / squeeze-excitation widths are not the reference's."
    )


def _ratios(arch: Arch, source: Source, fmt_slots: list[Slot]) -> Arch:
    """Fills the SK / SE ratios from the widths found (their layers' shapes use ANY)."""
    sk_pairs, se_pairs = [], []
    for slot in fmt_slots:
        if slot.ours[-1] == "fc_reduce":
            shape = source.shapes[f"{slot.key}/kernel"]
            sk_pairs.append((int(shape[2]), int(shape[3])))
        if slot.ours[-2:] == ("se", "reduce"):
            shape = source.shapes[f"{slot.key}/kernel"]
            # The reference reduces to int(filters * se_ratio), filters = the block's width.
            out = int(shape[2])
            filters = out // 4 if BLOCKS[arch.depth][0] == "bottleneck" else out
            se_pairs.append((filters, int(shape[3])))
    sk = _ratio(sk_pairs, SK_MIN_DIM, SIMCLRV2_SK_RATIO) if sk_pairs else arch.sk_ratio
    se = _ratio(se_pairs, 1, 0.25) if se_pairs else arch.se_ratio
    return dataclasses.replace(arch, sk_ratio=sk, se_ratio=se)


def _summary(source: Source, scope: str | None) -> str:
    keys = sorted(source.shapes)
    stem = source.shapes.get(_stem_key(source, scope))
    if source.format == TF1_CHECKPOINT:
        convs = sum(k.endswith("/kernel") and "/conv2d" in k for k in keys)
        bns = sum(k.endswith("/gamma") for k in keys)
        what = f"{convs} conv kernels, {bns} batch norms"
    else:
        blocks = sorted({"/".join(k.split("/")[:5]) for k in keys if "/block_groups/" in k})
        what = f"{len(blocks)} residual blocks"
    return (
        f"found {source.format} with {len(keys)} model variables ({what}), stem kernel "
        f"{list(stem) if stem else None}, e.g. {keys[:3]}"
    )


TF1_HEAD_SCOPES = ("head_contrastive/", "head_supervised/")


def _set_aside_outside_model(source: Source, scope: str) -> None:
    """TF1: variables outside the encoder scope and the two head scopes are not the model's
    (published checkpoints hold e.g. a ``memory`` buffer); they are listed as ignored."""
    outside = sorted(k for k in source.shapes if not k.startswith((scope, *TF1_HEAD_SCOPES)))
    if not outside:
        return
    for key in outside:
        del source.shapes[key]
    shown = ", ".join(outside[:3]) + (", ..." if len(outside) > 3 else "")
    source.ignored[f"variables outside the model scopes ({shown})"] = len(outside)


def infer(source: Source) -> tuple[Arch, Head, list[Slot], str]:
    """The architecture whose variables are exactly the checkpoint's, its slots, TF1 scope."""
    scope = _tf1_scope(source) if source.format == TF1_CHECKPOINT else None
    if scope:
        _set_aside_outside_model(source, scope)
    stem = source.shapes.get(_stem_key(source, scope))
    if stem is None or len(stem) != 4 or stem[2] != 3:
        raise OfficialCheckpointError(
            f"{source.path} is not a SimCLR checkpoint: no stem convolution "
            f"({_stem_key(source, scope or 'base_model/')} with 3 input channels); "
            f"{_summary(source, scope)}."
        )
    head = _infer_head(source, None)
    k, c = int(stem[0]), int(stem[3])
    layouts = []  # (cifar_stem, sk, stem channels)
    if k == 7:
        layouts.append((False, False, c))
    elif k == 3:
        layouts += [(True, False, c), (True, True, c), (False, True, 2 * c)]
    candidates = []
    for (cifar, sk, channels), depth, se, first in itertools.product(
        layouts, sorted(BLOCKS), (False, True), (False, True)
    ):
        if sk and BLOCKS[depth][0] == "basic" and source.format == TF1_CHECKPOINT:
            continue  # the reference TF1 basic block with SK cannot be built (stride-2 groups)
        arch = Arch(
            depth,
            channels / 64,
            cifar,
            SIMCLRV2_SK_RATIO if sk else 0.0,
            0.25 if se else 0.0,
            first,
        )
        layer_slots = slots(arch, head, source.format, scope or "base_model/")
        missing, extra, bad = compare(expected_variables(layer_slots), source.shapes)
        candidates.append(
            (len(missing) + len(extra) + len(bad), arch, layer_slots, (missing, extra, bad))
        )
    exact = [c for c in candidates if c[0] == 0]
    if exact:
        # Layouts that name the same variables are the same network (e.g. first-block
        # projections in a bottleneck ResNet, which has them anyway): prefer our default.
        exact.sort(key=lambda c: (c[1].sk_ratio > 0, c[1].first_block_projection))
        _, arch, layer_slots, _ = exact[0]
        return _ratios(arch, source, layer_slots), head, layer_slots, scope or ""
    best = min(candidates, key=lambda c: c[0])
    _, arch, _, (missing, extra, bad) = best
    parts = []
    for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", bad)):
        if items:
            more = f" and {len(items) - 4} more" if len(items) > 4 else ""
            parts.append(f"{label}: {items[:4]}{more}")
    raise OfficialCheckpointError(
        f"{source.path} matches no supported SimCLR layout; closest is ResNet-{arch.depth} "
        f"width {arch.width_multiplier:g} (cifar_stem={arch.cifar_stem}, "
        f"sk={arch.sk_ratio > 0}, se={arch.se_ratio > 0}) with "
        + "; ".join(parts)
        + f". {_summary(source, scope)}."
    )
