"""--data_service: pretraining input built by tf.data service workers on loopback.

A dispatcher and two workers run in this process on free 127.0.0.1 ports. The batches the
service returns are compared with the same batch numbers computed locally without the service
(a second code path through the same functions): views are a function of the global batch
number, never of the worker, every batch number is served once, and each epoch uses every image
once. run.py then pretrains against the same workers, and a missing dispatcher fails in one line.
"""

import socket
import time

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf import config, data_service, train
from simclr_tf.data import image_folder, pipeline

SIDE, CLASSES, BATCH = 8, 8, 4  # one image per class: a label names its image
LOCAL_BATCHES = 200  # batch numbers a served batch is looked up among


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, write_png_folder):
    return write_png_folder(tmp_path_factory.mktemp("svc"), CLASSES, {"train": 1}, SIDE)


_KEEP_ALIVE: list = []


@pytest.fixture(scope="module")
def service():
    """(address, [worker, worker]) of an in-process dispatcher and two workers on loopback."""
    port = _free_port()
    dispatcher = data_service.start_dispatcher(port)
    workers = [
        data_service.start_worker(f"127.0.0.1:{port}", 0, "127.0.0.1:%port%") for _ in range(2)
    ]
    # Never stopped (nor garbage-collected, which stops them): a stop waits up to a minute for
    # the tasks of jobs whose trainer has gone. The servers end with the test process.
    _KEEP_ALIVE.extend([dispatcher, *workers])
    return f"grpc://127.0.0.1:{port}", workers


def _cfg(folder, address, **kw):
    base = dict(
        model_dir="/unused",
        dataset="image_folder",
        data_dir=str(folder),
        image_size=SIDE,
        color_jitter_strength=0.5,
        use_blur=False,
        train_batch_size=BATCH,
        data_service=address,
    )
    return config.Config(**{**base, **kw}).validate()


def _local_batches(cfg, count: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches 0..count-1 built in this process by the service's own source, no service."""
    selection = image_folder.select_folder_split(
        cfg.data_dir, "train", 1.0, cfg.seed, shuffle_files=True, input_context=None
    )
    indexed = data_service.indexed_folder_stream(
        selection, batch_size=BATCH, seed=cfg.seed, start_batch=0
    )
    ds = pipeline.augment_indexed(
        indexed,
        fixed=True,
        batch_size=BATCH,
        image_size=SIDE,
        color_jitter_strength=0.5,
        use_blur=False,
        seed=cfg.seed,
    )
    return [(v1.numpy(), v2.numpy(), y.numpy()) for (v1, v2), y in ds.take(count)]


def iterator_take(iterator, count: int) -> list:
    return [next(iterator) for _ in range(count)]


def _batch_number(batch, local) -> int:
    (v1, v2), y = batch
    hits = [
        b
        for b, (l1, l2, ly) in enumerate(local)
        if np.array_equal(y, ly)
        and np.allclose(v1, l1, atol=1e-6)
        and np.allclose(v2, l2, atol=1e-6)
    ]
    assert len(hits) == 1, f"a served batch matches local batches {hits}"
    return hits[0]


def test_batches_through_two_workers_are_the_seeded_batches(folder, service):
    address, workers = service
    cfg = _cfg(folder, address)
    served = 8
    dataset = train.train_dataset(cfg, tf.distribute.get_strategy(), start_step=0)
    iterator = iter(dataset)
    first = next(iterator)
    time.sleep(2)  # both workers fill their buffers: a doubled batch number would now show
    batches = [
        (tuple(t.numpy() for t in v), y.numpy())
        for v, y in [first, *iterator_take(iterator, served - 1)]
    ]
    assert all(w._num_tasks() >= 1 for w in workers), "both workers must take part"
    # Workers run ahead of the trainer by what their buffers hold (more on a fast machine, where
    # CI once served batches past the 14 computed here before), so compare with many.
    local = _local_batches(cfg, LOCAL_BATCHES)

    for (v1, v2), y in batches:
        assert v1.shape == v2.shape == (BATCH, SIDE, SIDE, 3) and v1.dtype == np.float32
        assert y.shape == (BATCH,) and y.dtype == np.int32
        assert v1.min() >= 0.0 and v1.max() <= 1.0 and v2.min() >= 0.0 and v2.max() <= 1.0
        assert np.abs(v1 - v2).mean() > 0.01, "the two views of an image must differ"
    numbers = [_batch_number(b, local) for b in batches]
    assert len(set(numbers)) == served, f"a batch number was served twice: {numbers}"
    assert max(numbers) < LOCAL_BATCHES, numbers  # only the in-flight batches run ahead
    # Every epoch (CLASSES / BATCH batches) uses each image (= label) exactly once.
    per_epoch = CLASSES // BATCH
    for e in range(len(local) // per_epoch):
        labels = np.concatenate([local[b][2] for b in range(e * per_epoch, (e + 1) * per_epoch)])
        assert sorted(labels) == list(range(CLASSES)), (e, labels)
    # Views depend on the batch number only: epochs 0 and 1 crop the same image differently.
    assert not any(np.allclose(local[0][0], local[b][0]) for b in range(1, len(local)))


def test_resumed_input_continues_at_the_checkpoint_step(folder, service):
    address, _ = service
    cfg = _cfg(folder, address)
    dataset = train.train_dataset(cfg, tf.distribute.get_strategy(), start_step=3)
    local = _local_batches(cfg, LOCAL_BATCHES)
    numbers = [
        _batch_number((tuple(t.numpy() for t in v), y.numpy()), local) for v, y in dataset.take(3)
    ]
    assert min(numbers) >= 3 and len(set(numbers)) == 3, numbers


def test_run_py_pretrains_through_the_workers(folder, service, tmp_path, run_cli):
    address, workers = service
    before = sum(w._num_tasks() for w in workers)
    model_dir = tmp_path / "run"
    run_cli(
        f"--data_service={address}",
        "--dataset=image_folder",
        f"--data_dir={folder}",
        f"--model_dir={model_dir}",
        f"--image_size={SIDE}",
        f"--train_batch_size={BATCH}",
        "--train_steps=1",
        "--resnet_depth=18",
        "--width_multiplier=0.0625",
        "--proj_out_dim=8",
        "--num_proj_layers=2",
        "--knn_every_epochs=0",
        "--verbose=0",
        "--mode=train",
    )
    assert tf.train.latest_checkpoint(str(model_dir)) or list(model_dir.rglob("*.index"))
    assert sum(w._num_tasks() for w in workers) > before, "run.py did not use the workers"


def test_missing_dispatcher_fails_fast_in_one_line(folder, tmp_path, run_cli):
    address = f"grpc://127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(data_service.DataServiceError, match="127.0.0.1"):
        data_service.check_dispatcher(address, timeout=2.0)
    assert time.monotonic() - start < 5
    proc = run_cli(
        f"--data_service={address}",
        "--dataset=image_folder",
        f"--data_dir={folder}",
        f"--model_dir={tmp_path / 'run'}",
        f"--image_size={SIDE}",
        f"--train_batch_size={BATCH}",
        "--train_steps=1",
        "--resnet_depth=18",
        "--width_multiplier=0.0625",
        "--mode=train",
        expect=2,
        timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if address in line]
    assert len(lines) == 1 and "dispatcher" in lines[0], proc.stderr[-2000:]


@pytest.mark.parametrize("address", ["nohost", "grpc://host:0", "grpc://host:port"])
def test_malformed_address_names_the_form(address):
    with pytest.raises(data_service.DataServiceError, match="grpc://HOST:PORT"):
        data_service.check_dispatcher(address)


def test_each_batch_number_goes_to_exactly_one_worker(service):
    """The source's sharding in the chosen mode: a finite range of batch numbers through both
    workers comes back once each (``parallel_epochs`` would return every number per worker)."""
    address, _ = service
    numbers = tf.data.Dataset.range(40).apply(
        tf.data.experimental.service.distribute(
            processing_mode=data_service.PROCESSING_MODE,
            service=data_service.service_target(address),
        )
    )
    assert sorted(int(x) for x in numbers) == list(range(40))
