"""Finding and connecting a TPU: is this machine a TPU VM, which TPU to resolve, connecting it.

Used by :func:`simclr_tf.distribute.make_strategy` for ``--strategy=tpu`` and for ``auto``
(which never trains on a TPU VM's host CPU). Errors name the flag that fixes them.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Mapping

import tensorflow as tf

from simclr_tf.errors import StrategyError

# Device files of a TPU VM: /dev/accel* (TPU v2-v4), /dev/vfio/<n> (v5e, v5p, v6e; only with
# the TPU runtime's environment variables, since vfio also serves other PCI pass-through).
_TPU_DEVICE_FILES = "/dev/accel*"
_VFIO_DEVICE_FILES = "/dev/vfio/[0-9]*"
_TPU_ENV_VARS = (
    "TPU_ACCELERATOR_TYPE",
    "TPU_WORKER_ID",
    "TPU_WORKER_HOSTNAMES",
    "TPU_CHIPS_PER_HOST_BOUNDS",
)


def tpu_vm_evidence(
    environ: Mapping[str, str] | None = None,
    list_files: Callable[[str], list[str]] | None = None,
) -> str | None:
    """What shows that this machine is a TPU VM (for the log and errors), or None."""
    environ = os.environ if environ is None else environ
    list_files = list_files or glob.glob
    accel = sorted(list_files(_TPU_DEVICE_FILES))
    if accel:
        return f"TPU device files {', '.join(accel[:2])}"
    tpu_env = [k for k in _TPU_ENV_VARS if environ.get(k)]
    vfio = sorted(list_files(_VFIO_DEVICE_FILES))
    if vfio and tpu_env:
        return f"{vfio[0]} and ${tpu_env[0]}"
    if environ.get("TPU_ACCELERATOR_TYPE"):
        return f"$TPU_ACCELERATOR_TYPE={environ['TPU_ACCELERATOR_TYPE']}"
    return None


def tpu_target(tpu_name: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The TPU to resolve: ``--tpu_name``, else ``$TPU_NAME``, else ``local`` on a TPU VM."""
    environ = os.environ if environ is None else environ
    if tpu_name:
        return tpu_name
    if environ.get("TPU_NAME"):
        return environ["TPU_NAME"]
    return "local" if tpu_vm_evidence(environ) else None


def _resolve_tpu(tpu_name: str | None, tpu_zone: str | None, project: str | None):
    """The cluster resolver of ``tpu_name``; ``local`` is the TPU of this VM (no cloud API).

    The name is always passed explicitly: with an empty name TF reads ``$TPU_NAME`` itself but
    sends ``local`` to the cloud API, which fails on a TPU VM.
    """
    if tpu_name == "local":
        return tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
    return tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu_name or "", zone=tpu_zone, project=project
    )


def connect_tpu(tpu_name: str | None, tpu_zone: str | None, project: str | None):
    """Resolves, connects and initialises the TPU; StrategyError naming the fix otherwise."""
    evidence = tpu_vm_evidence()
    where = (
        f" This machine looks like a TPU VM ({evidence}): pass --tpu_name=local."
        if (evidence and tpu_name != "local")
        else ""
    )
    try:
        resolver = _resolve_tpu(tpu_name, tpu_zone, project)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError) as e:
        raise StrategyError(
            f"No TPU could be resolved from --tpu_name={tpu_name or ''} ({e}).{where} Otherwise "
            "pass --tpu_name (and --tpu_zone, --gcp_project) of a Cloud TPU, or use "
            "--strategy=mirrored/default on GPUs and CPUs."
        ) from e
    if not tf.config.list_logical_devices("TPU"):
        raise StrategyError(
            f"The TPU {tpu_name!r} resolved but TensorFlow sees no TPU device: install the TPU "
            "build of TensorFlow (tensorflow[and-cuda] has no TPU support) or check that no "
            "other process holds the TPU."
        )
    return resolver
