"""Test setup: quiet TF, no network, TF's own CPU kernels, two logical CPUs for distribution.

Logical devices must be configured before TensorFlow initialises its runtime, so this runs at
import time, before any test module touches TF.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-dir-for-tests")
# TensorFlow's own float32 kernels, not oneDNN's: oneDNN picks its blocking (and so the order of
# a convolution's sums) by CPU instruction set and batch size, and the training steps amplify
# that rounding. Measured on an AVX-512 AMD EPYC: a 2-replica global-BN step 4.7e-4 from the
# one-device step with oneDNN, < 1e-5 without; the equality tests would pass on one CPU family
# and fail on another. Subprocesses (run.py in end-to-end tests) inherit it. Set
# TF_ENABLE_ONEDNN_OPTS=1 to run the suite with oneDNN.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from simclr_tf.config import Config  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


def _fresh_collective_keys(cls: type) -> None:
    """Gives every new strategy of ``cls`` its own collective-key range.

    Strategies built over the same devices in one process otherwise reuse collective keys, and
    TF then aborts collectives for the whole process ("Shape mismatch in the collective
    instance"). TF's own tests do the same through this attribute.
    """
    original = cls.__init__

    def init(self, *args, **kwargs):
        cls._collective_key_base += 20_000
        original(self, *args, **kwargs)

    cls.__init__ = init


_fresh_collective_keys(tf.distribute.MirroredStrategy)

REPO = pathlib.Path(__file__).resolve().parents[1]

# The network and data of most unit tests: ResNet-18 at 1/16 width on 16 px CIFAR-style images
# (so the dataset-dependent defaults are already resolved), a projection head of 2 x 16.
TINY_CONFIG = dict(
    model_dir="/nonexistent",
    resnet_depth=18,
    width_multiplier=0.0625,
    image_size=16,
    cifar_stem=True,
    color_jitter_strength=0.5,
    use_blur=False,
    num_proj_layers=2,
    proj_out_dim=16,
    train_batch_size=8,
    warmup_epochs=0,
)


def tiny_config(*bases: dict, **overrides) -> Config:
    """:data:`TINY_CONFIG` updated by each of ``bases`` (a test file's own settings, in order)
    and then ``overrides``: ``tiny_config(CASE, seed=2)``."""
    values = dict(TINY_CONFIG)
    for base in bases:
        values.update(base)
    values.update(overrides)
    return Config(**values)


CIFAR10_DIR = REPO.parent / "shared" / "data" / "cifar10"


# CI sets this (.ci/run): a missing data folder then fails the tests that need it instead of
# skipping them, so a green CI run never hides skipped checks.
REQUIRE_DATA_ENV = "SIMCLR_REQUIRE_DATA"


def tiny_run_flags(data_dir, model_dir, batch: int, *extra: str) -> list[str]:
    """The flags of a tiny ``run.py`` pretraining run on an image folder (ResNet-18 at width
    1/16): for ``run_cli`` or after ``python run.py``."""
    return [
        "--mode=train",
        "--dataset=image_folder",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        "--resnet_depth=18",
        "--width_multiplier=0.0625",
        "--proj_out_dim=16",
        f"--train_batch_size={batch}",
        "--verbose=0",
        *extra,
    ]


def subprocess_env() -> dict[str, str]:
    """The environment of a ``run.py`` child process: CPU only, quiet TensorFlow."""
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}


def require_shared(path: pathlib.Path, what: str) -> pathlib.Path:
    """``path`` from ../shared; skips when absent, fails under CI (``SIMCLR_REQUIRE_DATA``)."""
    if not path.is_dir():
        message = f"{what} not found at {path}"
        if os.environ.get(REQUIRE_DATA_ENV, "") not in ("", "0"):
            pytest.fail(f"{message} ({REQUIRE_DATA_ENV} is set: data must be present)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def cifar10_dir() -> pathlib.Path:
    """The shared CIFAR-10 image folder (read-only); skips when absent, fails under CI."""
    require_shared(CIFAR10_DIR / "train", "CIFAR-10 image folder")
    return CIFAR10_DIR


def _run_cli(
    *args: str,
    expect: int | None = 0,
    script: str = "run.py",
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``python <script> *args`` from the repository root, as a user runs it.

    CPU only and quiet TF; ``expect`` (None: anything) is the exit code, and a mismatch shows
    the end of stderr.
    """
    full_env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
        **(env or {}),
    }
    proc = subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if expect is not None:
        assert proc.returncode == expect, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(*args, expect=0, script="run.py", timeout=300, env=None)`` -> CompletedProcess."""
    return _run_cli


@pytest.fixture(scope="module")
def strategy() -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over the two logical CPU devices (fresh collective keys each time)."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def _write_png_folder(
    root: pathlib.Path, classes: int, counts: dict[str, int], side: int, ext: str = "png"
):
    """An image folder ``root/<split>/classNN/i.<ext>`` of random, seeded RGB images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in counts.items():
        for c in range(classes):
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{ext}")
    return root


@pytest.fixture(scope="session")
def write_png_folder():
    """``write_png_folder(root, classes, {"train": n, "test": m}, side, ext="png")`` -> root."""
    return _write_png_folder
