"""Pretraining input augmented by tf.data service workers, and the command that starts them.

With ``--data_service=grpc://HOST:PORT`` the pretraining pipeline (decode, crops, colour, blur,
batching) runs on tf.data service workers (``tf.data.experimental.service``: one dispatcher and
any number of CPU workers, on any machines) instead of on the training host, so input scales
with machines rather than with the accelerator host's cores. Start them with::

    python -m simclr_tf.data_service dispatcher --port=5050
    python -m simclr_tf.data_service worker --dispatcher=DISPATCHER_HOST:5050 --port=5051 \\
        --worker_address=THIS_HOST:5051     # one per input machine; the trainer connects here

Every worker must see the image folder (``--data_dir``) at the same path (shared filesystem).

**Sharding** (``processing_mode="distributed_epoch"``): the source is an endless range of batch
numbers; the dispatcher hands each number to exactly one worker, which builds batch ``b`` from
the global example indices ``b * batch .. (b + 1) * batch - 1``. Example index ``i`` is image
``index_shuffle(i mod n, stateless_fold_in([seed, 3], i div n))`` of the ``n`` selected files:
pass ``i div n`` over the data is a fresh permutation, so every image is used exactly once per
epoch whatever the number of workers (a batch may straddle two epochs, as with
``repeat().batch()``). The ``parallel_epochs`` mode would let every worker run its own copy of
the data (each image once *per worker* per epoch), and static sharding needs a fixed worker
list; neither is used.

**Seeds**: the views of batch ``b`` (fixed-size images) or example ``i`` (variable-size) use the
seed ``stateless_fold_in([seed, 1], b or i)``, the host pipeline's rule
(:func:`simclr_tf.data.pipeline.augment_indexed`). Seeds are a function of the *global* index,
not of the worker: no two workers ever produce the same views, and which worker builds a batch
does not change it. Batches arrive in the order the workers finish them, not in index order.

**Resume**: a restarted run opens a new (anonymous) job starting at batch number
``start_step * batches per step``, so the epoch position is kept; only the batches that were in
flight when the run died (prefetched, not yet trained on) are skipped or seen twice. A dispatcher
started with ``--work_dir`` also survives its own restart (tf.data's fault-tolerant mode).

A dispatcher that does not answer is reported in one line within :data:`PROBE_TIMEOUT_S`
(a TCP connect) instead of the service client's endless retries.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys

import tensorflow as tf

from simclr_tf.data import image_list, pipeline
from simclr_tf.data.image_folder import FolderSelection
from simclr_tf.errors import UserError

PROCESSING_MODE = "distributed_epoch"
PROBE_TIMEOUT_S = 10.0
_ADDRESS = re.compile(
    r"^(?:(?P<protocol>[a-z+]+)://)?(?P<host>[^:/\s]+|\[[0-9a-fA-F:]+\]):(?P<port>\d+)$"
)


class DataServiceError(UserError, ConnectionError):
    """A tf.data service address that is malformed or has no dispatcher; names the fix."""


def parse_address(address: str) -> tuple[str, str, int]:
    """``grpc://HOST:PORT`` or ``HOST:PORT`` -> (protocol, host, port)."""
    match = _ADDRESS.match(address.strip())
    if not match or not 0 < int(match["port"]) < 65536:
        raise DataServiceError(
            f"--data_service={address!r} is not an address; pass grpc://HOST:PORT of the "
            "dispatcher (python -m simclr_tf.data_service dispatcher --port=PORT)."
        )
    return match["protocol"] or "grpc", match["host"].strip("[]"), int(match["port"])


def service_target(address: str) -> str:
    """The address in the form tf.data service takes (``grpc://HOST:PORT``)."""
    protocol, host, port = parse_address(address)
    host = f"[{host}]" if ":" in host else host
    return f"{protocol}://{host}:{port}"


def check_dispatcher(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fails in one line, within ``timeout`` seconds, when nothing listens at ``address``.

    The tf.data service client itself retries an absent dispatcher forever (a silent hang).
    """
    protocol, host, port = parse_address(address)
    if protocol != "grpc":
        raise DataServiceError(
            f"--data_service={address!r}: only the grpc protocol is supported; pass "
            f"grpc://{host}:{port}."
        )
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise DataServiceError(
            f"No tf.data service dispatcher at {address} ({reason}, waited up to {timeout:g} "
            f"s). Start one (python -m simclr_tf.data_service dispatcher --port={port}) and "
            "its workers, or fix --data_service."
        ) from None


def indexed_folder_stream(
    selection: FolderSelection, *, batch_size: int, seed: int, start_batch: int
) -> tf.data.Dataset:
    """Endless ``(index, (image uint8, label int32))`` of the selected files, splittable.

    Fixed-size images: whole batches indexed by batch number; else single images indexed by
    example number. Batch numbers start at ``start_batch`` (resume). See the module docstring
    for the permutation.
    """
    n = len(selection.rel_paths)
    prefix = selection.split_dir.rstrip("/") + "/"
    paths = tf.constant([prefix + p for p in selection.rel_paths])
    labels = tf.constant(selection.labels, tf.int32)
    shape = selection.shape

    def example(index: tf.Tensor):
        chosen = image_list.file_of_example(index, n, seed)
        raw = tf.io.read_file(tf.gather(paths, chosen))
        image = tf.io.decode_image(raw, channels=3, expand_animations=False)
        if shape is not None:
            image = tf.ensure_shape(image, shape)
        return index, (image, tf.gather(labels, chosen))

    batches = tf.data.Dataset.range(start_batch, tf.int64.max // batch_size)
    ds = batches.map(lambda b: b * batch_size + tf.range(batch_size, dtype=tf.int64)).unbatch()
    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shape is None:
        return ds
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.map(lambda index, example: (index[0] // batch_size, example))


def pretrain_dataset(
    address: str, selection: FolderSelection, *, batch_size: int, start_batch: int, **augment
) -> tf.data.Dataset:
    """Two-view pretraining batches built by the workers behind ``address``.

    ``augment`` are the arguments of :func:`simclr_tf.data.pipeline.augment_indexed` (image
    size, colour strength, blur, seed, placement, ...). Probes the dispatcher first.
    """
    check_dispatcher(address)
    indexed = indexed_folder_stream(
        selection, batch_size=batch_size, seed=augment["seed"], start_batch=start_batch
    )
    ds = pipeline.augment_indexed(
        indexed, fixed=selection.shape is not None, batch_size=batch_size, **augment
    )
    distributed = ds.apply(
        tf.data.experimental.service.distribute(
            processing_mode=PROCESSING_MODE, service=service_target(address)
        )
    )
    return distributed.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------------------------
# python -m simclr_tf.data_service dispatcher|worker
# --------------------------------------------------------------------------------------------


def start_dispatcher(
    port: int, work_dir: str | None = None
) -> tf.data.experimental.service.DispatchServer:
    """A running dispatcher on ``port`` (0: a free one; read ``server.target``)."""
    config = tf.data.experimental.service.DispatcherConfig(
        port=port, work_dir=work_dir, fault_tolerant_mode=bool(work_dir)
    )
    return tf.data.experimental.service.DispatchServer(config)


def start_worker(
    dispatcher: str, port: int, worker_address: str | None = None
) -> tf.data.experimental.service.WorkerServer:
    """A running worker registered with ``dispatcher`` (HOST:PORT), serving on ``port``.

    ``worker_address`` is what the dispatcher tells trainers to connect to (``%port%`` is
    replaced by the port); default: this machine's host name.
    """
    _, host, dport = parse_address(dispatcher)
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=f"{host}:{dport}",
        port=port,
        worker_address=worker_address or f"{socket.gethostname()}:%port%",
    )
    return tf.data.experimental.service.WorkerServer(config)


def main(argv: list[str] | None = None) -> int:
    """Starts a dispatcher or a worker and serves until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m simclr_tf.data_service",
        description="Start a tf.data service dispatcher or worker for run.py --data_service.",
    )
    roles = parser.add_subparsers(dest="role", required=True)
    disp = roles.add_parser("dispatcher", help="the one coordinator; trainers connect here")
    disp.add_argument("--port", type=int, required=True)
    disp.add_argument(
        "--work_dir",
        default=None,
        help="folder for the dispatcher's journal: it then survives its own restart",
    )
    work = roles.add_parser("worker", help="one input machine (decode + augmentation)")
    work.add_argument("--dispatcher", required=True, help="HOST:PORT of the dispatcher")
    work.add_argument("--port", type=int, required=True)
    work.add_argument(
        "--worker_address",
        default=None,
        help="HOST:PORT trainers reach this worker at (default: this host name and --port)",
    )
    args = parser.parse_args(argv)
    try:
        if args.role == "dispatcher":
            server = start_dispatcher(args.port, args.work_dir)
            print(f"tf.data service dispatcher at grpc://{socket.gethostname()}:{args.port}")
        else:
            check_dispatcher(args.dispatcher)
            server = start_worker(args.dispatcher, args.port, args.worker_address)
            print(f"tf.data service worker on port {args.port}, dispatcher {args.dispatcher}")
        sys.stdout.flush()
        server.join()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (tf.errors.OpError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(
            f"error: could not start the {args.role} on port {args.port}: {first}", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
