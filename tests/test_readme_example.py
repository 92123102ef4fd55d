"""The README's Python example, extracted from README.md and run at tiny sizes.

Only the constants the example defines at its top change (a tiny image folder, 16 px, one
epoch, a small backbone with the keras.applications call signature); every other line runs as
written, so the example cannot rot.
"""

import pathlib
import re

import keras
import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
CLASSES = 3


def python_example() -> str:
    """The first ```python block of the README's "## Python API" section."""
    text = README.read_text()
    section = text[text.index("\n## Python API") :]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "README.md: no python block under ## Python API"
    return match.group(1)


def tiny_backbone(input_shape, include_top, weights, pooling):
    """keras.applications' call signature, a network small enough for the test."""
    assert (include_top, weights, pooling) == (False, None, "avg")
    x = keras.Input(input_shape)
    y = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    y = keras.layers.BatchNormalization()(y)
    return keras.Model(x, keras.layers.GlobalAveragePooling2D()(y))


def substitute(code: str, name: str, value: str) -> str:
    """Replaces the example's top-level assignment of ``name`` (which must exist once)."""
    pattern = rf"^{re.escape(name)} = .*$"
    assert len(re.findall(pattern, code, flags=re.M)) == 1, f"README example lost {name} = ..."
    return re.sub(pattern, f"{name} = {value}", code, flags=re.M)


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch, write_png_folder, capsys):
    data = write_png_folder(tmp_path / "data", CLASSES, {"train": 8, "test": 4}, 20, ext="jpg")
    code = python_example()
    code = substitute(code, "DATA", repr(str(data)))
    code = substitute(code, "SIZE, BATCH, EPOCHS, CLASSES", f"16, 8, 1, {CLASSES}")
    code = substitute(code, "BACKBONE", "tiny_backbone")
    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    namespace = {"tiny_backbone": tiny_backbone, "__name__": "readme_example"}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own code

    printed = capsys.readouterr().out
    knn = float(re.search(r"kNN top-1: ([0-9.]+)", printed).group(1))
    linear = float(re.search(r"linear evaluation top-1: ([0-9.]+)", printed).group(1))
    # 12 test images of 3 classes: accuracies are multiples of 1/12 in [0, 1].
    for value in (knn, linear):
        assert 0.0 <= value <= 1.0 and abs(value * 12 - round(value * 12)) < 1e-6
    # The saved encoder is the pretrained backbone: same outputs as the model's encoder.
    saved = keras.models.load_model(tmp_path / "encoder.keras")
    batch = np.random.default_rng(0).random((4, 16, 16, 3)).astype("float32")
    model = namespace["model"]
    np.testing.assert_allclose(
        saved(batch, training=False), model.encoder(batch, training=False), rtol=1e-5, atol=1e-6
    )
    # Pretraining ran its epoch: 24 images in batches of 8.
    assert int(model.optimizer.iterations) == 3
