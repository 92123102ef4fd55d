"""Reading the three native formats of the reference SimCLR code into one key -> tensor view.

Keys are what the reference layout calls a variable in that format:

* TF2 object-graph checkpoints and SavedModels: the object path below the reference ``Model``,
  e.g. ``resnet_model/block_groups/0/layers/0/projection_layers/0/conv2d/kernel``. Both formats
  carry a ``TrackableObjectGraph``; walking its *named* edges gives these paths even in a
  SavedModel, whose checkpoint keys are positional (``trainable_variables_list/<i>``). Optimizer
  slots hang off the graph as slot variables, never as named children, so they cannot be picked
  up as weights.
* TF1 name-based checkpoints: the variable name, e.g. ``base_model/conv2d_12/kernel``. Optimizer
  slots (``.../Momentum``), ``global_step``, the ``memory`` buffer and the ``ema_model/`` copies
  are set aside (``use_ema=True`` reads the ``ema_model/`` copy of each weight instead).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import trackable_object_graph_pb2

from simclr_tf.checkpoints import (
    OBJECT_GRAPH_KEY,
    CheckpointError,
    DamagedCheckpointError,
    check_intact,
    damage,
    newest_intact,
)
from simclr_tf.model_dir import checkpoint_prefixes

TF2_CHECKPOINT = "tf2_checkpoint"
TF2_SAVED_MODEL = "tf2_saved_model"
TF1_CHECKPOINT = "tf1_checkpoint"
SIMCLR_TF = "simclr_tf"  # a checkpoint written by this package (not an official one)
OTHER_SAVED_MODEL = "other_saved_model"  # e.g. a simclr_tf export: not a reference model
EMA_SCOPE = "ema_model/"

# Object-graph edges that are Keras bookkeeping (aggregate variable lists, traced functions),
# not the layer hierarchy.
_SKIP_EDGES = frozenset(
    {
        "variables",
        "trainable_variables",
        "non_trainable_variables",
        "regularization_losses",
        "keras_api",
        "__call__",
        "call_and_return_all_conditional_losses",
        "call_and_return_conditional_losses",
        "metrics",
        "layer_regularization_losses",
        "layer_metrics",
        "signatures",
        "trainable_variables_list",
        "_jit_compiled_convolution_op",
    }
)
# TF1 optimizer slots and bookkeeping that are never weights.
_TF1_SLOT = re.compile(
    r"/(Momentum|Momentum_\d+|Adam|Adam_\d+|RMSProp|RMSProp_\d+|"
    r"ExponentialMovingAverage)$"
)
_TF1_BOOKKEEPING = ("global_step", "memory", "beta1_power", "beta2_power")
# Everything reading checkpoint files can raise; turned into this package's errors.
_READ_ERRORS = (tf.errors.OpError, IndexError, ValueError, DecodeError)


class OfficialCheckpointError(CheckpointError):
    """An official checkpoint that cannot be loaded as asked; the message says what was found."""


@dataclasses.dataclass
class Source:
    """The model variables of one checkpoint, keyed as the reference layout names them."""

    format: str
    path: str  # as given by the user
    prefix: str  # the checkpoint prefix actually read
    global_step: int | None
    shapes: dict[str, tuple[int, ...]]
    read: Callable[[str], np.ndarray]
    ignored: dict[str, int]  # what was deliberately not read, e.g. {"optimizer slots": 239}
    use_ema: bool = False
    # Keys (as in ``shapes``) of the weights that have an optimizer slot, i.e. that the saving
    # run trained; None when the checkpoint holds no optimizer slots at all.
    trained: frozenset[str] | None = None


def find_prefix(path: str) -> tuple[str, str | None]:
    """(kind, prefix): "saved_model" with the SavedModel folder, "checkpoint" with a prefix.

    Accepts a checkpoint prefix, a folder with a ``checkpoint`` index, a SavedModel folder, or a
    folder holding ``saved_model/`` (optionally ``saved_model/<step>/``, newest step).
    """
    path = path.rstrip("/") or path
    if tf.io.gfile.isdir(path):
        for candidate in (path, os.path.join(path, "saved_model")):
            if tf.io.gfile.exists(os.path.join(candidate, "saved_model.pb")):
                return "saved_model", candidate
        # simclr_tf's and the TF2 reference's ckpt-<step>: the newest intact one (a damaged newer
        # one is reported); other names (TF1 model.ckpt-<step>): the state file, else the files.
        latest = newest_intact(path) or tf.train.latest_checkpoint(path) or _newest_prefix(path)
        if latest is not None:
            return "checkpoint", latest
        nested = os.path.join(path, "saved_model")
        if tf.io.gfile.isdir(nested):
            steps = sorted(
                (int(n.rstrip("/")), n.rstrip("/"))
                for n in tf.io.gfile.listdir(nested)
                if n.rstrip("/").isdigit()
                and tf.io.gfile.exists(os.path.join(nested, n.rstrip("/"), "saved_model.pb"))
            )
            if steps:
                return "saved_model", os.path.join(nested, steps[-1][1])
        return "none", None
    if tf.io.gfile.exists(path + ".index"):
        return "checkpoint", path
    return "none", None


def _newest_prefix(folder: str) -> str | None:
    """The highest-step ``*.index`` prefix in ``folder``.

    For folders whose ``checkpoint`` file names paths of the machine that trained them (absolute
    ``gs://`` paths), which tf.train.latest_checkpoint cannot resolve.
    """
    prefixes = [p[: -len(".index")] for p in tf.io.gfile.glob(os.path.join(folder, "*.index"))]

    def step(prefix: str) -> int:
        tail = prefix.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    return max(prefixes, key=step) if prefixes else None


def _object_graph(reader) -> trackable_object_graph_pb2.TrackableObjectGraph:
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
    return graph


def _child(graph, node_id: int, name: str) -> int | None:
    for ref in graph.nodes[node_id].children:
        if ref.local_name == name:
            return ref.node_id
    return None


def detect_format(path: str) -> tuple[str | None, str | None]:
    """(format, prefix) of ``path``; format None when there is no checkpoint there at all.

    An object-graph checkpoint is official when its ``model`` holds ``resnet_model`` (the
    reference Keras model); simclr_tf's own checkpoints hold ``model/encoder`` instead.
    """
    kind, location = _locate(path)
    if kind == "none":
        return None, None
    check_intact(location)
    try:
        reader = tf.train.load_checkpoint(location)
        if not reader.has_tensor(OBJECT_GRAPH_KEY):
            # Name-based variables: a TF1 checkpoint, or a TF1 Hub module (the hub/ folders
            # published beside some TF1 checkpoints), whose variables keep their graph names.
            return TF1_CHECKPOINT, location
        graph = _object_graph(reader)
    except _READ_ERRORS as e:
        raise DamagedCheckpointError(f"Checkpoint {location} cannot be read: {e}") from e
    model = _child(graph, 0, "model")
    if model is not None and _child(graph, model, "resnet_model") is not None:
        return (TF2_SAVED_MODEL if kind == "saved_model" else TF2_CHECKPOINT), location
    return (OTHER_SAVED_MODEL if kind == "saved_model" else SIMCLR_TF), location


def _locate(path: str) -> tuple[str, str | None]:
    """(kind, checkpoint prefix) of ``path``: a SavedModel's is its ``variables/variables``."""
    try:
        kind, location = find_prefix(path)
    except _READ_ERRORS as e:
        raise OfficialCheckpointError(f"Cannot read {path}: {e}") from e
    if kind == "saved_model":
        location = os.path.join(location, "variables", "variables")
    return kind, location


def is_official(path: str | None) -> bool:
    """Whether ``path`` is a checkpoint in a reference format (TF2 ckpt, SavedModel, TF1).

    A damaged checkpoint raises DamagedCheckpointError naming the file (it is no format).
    """
    if not path or path == "none":
        return False
    fmt, _ = detect_format(path)
    return fmt in (TF2_CHECKPOINT, TF2_SAVED_MODEL, TF1_CHECKPOINT)


def check_readable(path: str | None, flag: str) -> None:
    """Refuses a damaged checkpoint given as ``flag`` in one line, before any other work.

    ``path`` as the flag takes it (prefix, run folder, SavedModel, TF1 folder); a path with no
    checkpoint at all is left to the loader's own message. Names an intact checkpoint of the
    same folder when there is one.
    """
    if not path or path == "none":
        return
    kind, location = _locate(path)
    if kind == "none":
        return
    found = damage(location)
    if found is None:
        return
    intact = next(
        (
            p
            for _, p in checkpoint_prefixes(os.path.dirname(location))
            if p != location and damage(p) is None
        ),
        None,
    )
    hint = f" An intact one in that folder: {flag}={intact}." if intact else ""
    raise DamagedCheckpointError(
        f"{flag}={path}: the checkpoint {location} is damaged ({found[0]} {found[1]}).{hint} "
        "Nothing was done."
    )


def _model_paths(graph) -> dict[str, str]:
    """Object path below ``model`` -> checkpoint key, for every variable reachable by name."""
    model = _child(graph, 0, "model")
    if model is None:
        return {}
    out: dict[str, str] = {}
    seen: set[int] = set()
    stack = [(model, "")]
    while stack:
        node_id, path = stack.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        node = graph.nodes[node_id]
        for attr in node.attributes:
            if attr.name == "VARIABLE_VALUE":
                out[path] = attr.checkpoint_key
        for ref in node.children:
            name = ref.local_name
            if name in _SKIP_EDGES or name.startswith("trace_"):
                continue
            stack.append((ref.node_id, f"{path}/{name}" if path else name))
    return out


def _guarded(prefix: str, read: Callable[[str], np.ndarray]) -> Callable[[str], np.ndarray]:
    """``read`` with read errors of damaged data (checksum, truncation) named as such."""

    def guarded(key: str) -> np.ndarray:
        try:
            return read(key)
        except _READ_ERRORS as e:
            raise DamagedCheckpointError(
                f"Checkpoint {prefix} is damaged: reading {key} failed ({e})."
            ) from e

    return guarded


def _read_object_graph(path: str, fmt: str, prefix: str) -> Source:
    reader = tf.train.load_checkpoint(prefix)
    graph = _object_graph(reader)
    paths = _model_paths(graph)
    shapes_by_key = reader.get_variable_to_shape_map()
    shapes = {p: tuple(shapes_by_key[k]) for p, k in paths.items() if k in shapes_by_key}
    step = None
    root_step = _child(graph, 0, "global_step")
    if root_step is not None:
        keys = [a.checkpoint_key for a in graph.nodes[root_step].attributes]
        if keys:
            step = int(reader.get_tensor(keys[0]))
    slots = sum(len(n.slot_variables) for n in graph.nodes)
    ignored = {"optimizer slots": slots} if slots else {}
    path_of_key = {k: p for p, k in paths.items()}
    trained = set()
    for node in graph.nodes:
        for slot in node.slot_variables:
            original = graph.nodes[slot.original_variable_node_id]
            for attr in original.attributes:
                if attr.name == "VARIABLE_VALUE" and attr.checkpoint_key in path_of_key:
                    trained.add(path_of_key[attr.checkpoint_key])
    return Source(
        fmt,
        path,
        prefix,
        step,
        shapes,
        _guarded(prefix, lambda p: reader.get_tensor(paths[p])),
        ignored,
        trained=frozenset(trained) if slots else None,
    )


def _read_tf1(path: str, prefix: str, use_ema: bool) -> Source:
    reader = tf.train.load_checkpoint(prefix)
    all_shapes = {k: tuple(v) for k, v in reader.get_variable_to_shape_map().items()}
    shapes: dict[str, tuple[int, ...]] = {}
    ignored = {"optimizer slots": 0, "ema_model/ copies": 0, "bookkeeping": 0}
    trained = set()
    for key, shape in all_shapes.items():
        slot = _TF1_SLOT.search(key)
        if slot:
            ignored["optimizer slots"] += 1
            if slot.group(1) != "ExponentialMovingAverage":
                trained.add(key[: slot.start()])
        elif key.startswith(EMA_SCOPE):
            ignored["ema_model/ copies"] += 1
        elif key in _TF1_BOOKKEEPING or key.split("/")[-1] in _TF1_BOOKKEEPING:
            ignored["bookkeeping"] += 1
        else:
            shapes[key] = shape
    step = int(reader.get_tensor("global_step")) if "global_step" in all_shapes else None
    read = reader.get_tensor
    if use_ema:
        if not ignored["ema_model/ copies"]:
            raise OfficialCheckpointError(
                f"{path} has no {EMA_SCOPE} variables (only published SimCLRv2 TF1 checkpoints "
                "do): load it without use_ema / --checkpoint_ema."
            )
        ema = {k for k in all_shapes if k.startswith(EMA_SCOPE)}

        def read(key: str) -> np.ndarray:  # noqa: F811 - the EMA variant of the reader
            ema_key = EMA_SCOPE + key
            return reader.get_tensor(ema_key if ema_key in ema else key)

        if not any(EMA_SCOPE + k in ema for k in shapes):
            raise OfficialCheckpointError(
                f"{path}: none of its {len(ema)} {EMA_SCOPE} variables (e.g. "
                f"{sorted(ema)[:2]}) is named {EMA_SCOPE}<weight name>; cannot pick EMA weights."
            )
        ignored["ema_model/ copies"] = 0
        ignored["weights without an EMA copy (regular values used)"] = sum(
            EMA_SCOPE + k not in ema for k in shapes
        )
        ignored["regular weights (EMA used instead)"] = sum(EMA_SCOPE + k in ema for k in shapes)
    ignored = {k: v for k, v in ignored.items() if v}
    trained_keys = frozenset(trained) if trained else None
    return Source(
        TF1_CHECKPOINT,
        path,
        prefix,
        step,
        shapes,
        _guarded(prefix, read),
        ignored,
        use_ema,
        trained_keys,
    )


def read_source(path: str, use_ema: bool = False) -> Source:
    """The model variables of the official checkpoint at ``path`` (any of the three formats)."""
    fmt, prefix = detect_format(path)
    if fmt is None:
        raise OfficialCheckpointError(
            f"No checkpoint at {path}: pass a checkpoint prefix (.../ckpt-1000, "
            ".../model.ckpt-2000), a folder with a `checkpoint` file, or a SavedModel folder."
        )
    if fmt in (SIMCLR_TF, OTHER_SAVED_MODEL):
        raise OfficialCheckpointError(
            f"{prefix} is not a reference SimCLR checkpoint (its object graph has no "
            "model/resnet_model): pass a simclr_tf checkpoint or run folder as a simclr_tf one, "
            "and a SavedModel only if the reference code exported it."
        )
    if use_ema and fmt != TF1_CHECKPOINT:
        raise OfficialCheckpointError(
            f"use_ema applies to TF1 checkpoints (ema_model/ copies); {path} is a {fmt}."
        )
    if fmt == TF1_CHECKPOINT:
        return _read_tf1(path, prefix, use_ema)
    return _read_object_graph(path, fmt, prefix)
