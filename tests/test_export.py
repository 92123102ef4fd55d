"""Export: serving signatures, TF Hub reusable module, overwrite safety, pruning, model card.

References are independent of the export code: the in-memory Keras model on the same images,
NumPy softmax/argsort, PIL-encoded PNGs decoded back by PIL.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config
from export_loader import load_export
from PIL import Image

from simclr_tf import checkpoints, export, train
from simclr_tf import model_dir as model_dir_lib
from simclr_tf.config import Config
from simclr_tf.data import augment

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 16
CLASSES = ("cat", "dog", "frog")  # 3 < 5: top_5 must clamp k to 3
STEP = 7
RESULT = {
    "label_top_1_accuracy": 0.8125,
    "label_top_5_accuracy": 0.96875,
    "eval_loss": 0.4321,
    "num_examples": 32,
    "global_step": STEP,
    "dataset": "image_folder",
    "eval_split": "test",
    "train_mode": "pretrain",
    "checkpoint": None,
}
ATOL = 1e-5


# This file's settings over conftest.TINY_CONFIG (plus model_dir=the test's run folder).
CASE = dict(
    dataset="image_folder",
    data_dir=None,
    eval_split="test",
    train_mode="pretrain",
    image_size=SIZE,
    proj_out_dim=8,
)


def perturbed_model(cfg: Config, seed: int = 0):
    """A built model whose every weight is random (no zero-init gamma, non-trivial BN stats).

    Seeded, so its weights do not depend on which tests ran before in the same process.
    """
    keras.utils.set_random_seed(seed)
    model = train.build_model(cfg, len(CLASSES))
    model(tf.zeros([1, SIZE, SIZE, 3]), training=False)
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(v.shape)
        name = v.path.rsplit("/", 1)[-1]
        if name in ("moving_variance", "gamma"):
            v.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif name in ("moving_mean", "beta"):
            v.assign(rng.normal(0.0, 0.1, shape).astype(np.float32))
        else:  # kernels keep their random init, shifted so no two seeds agree
            v.assign(v.numpy() + rng.normal(0.0, 0.01, shape).astype(np.float32))
    return model


def random_images(n: int, size: int = SIZE, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, size, size, 3)).astype(np.float32)


def close(actual, desired, err_msg: str = "") -> None:
    """Equal to 1e-5 (absolute for small values, relative for large ones)."""
    np.testing.assert_allclose(actual, desired, rtol=ATOL, atol=ATOL, err_msg=err_msg)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("run"))
    cfg = tiny_config(CASE, model_dir=run_dir)
    model = perturbed_model(cfg)
    path = export.export_run(model, cfg, run_dir, STEP, RESULT, CLASSES)
    return model, cfg, run_dir, path


def test_export_layout_and_signatures(exported):
    model, _, run_dir, path = exported
    assert path == os.path.join(run_dir, "saved_model", str(STEP))
    assert sorted(os.listdir(os.path.join(run_dir, "saved_model"))) == [str(STEP)]
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "serving_images"}

    bytes_sig = loaded.signatures["serving_default"]
    (spec,) = bytes_sig.structured_input_signature[1].values()
    assert spec.dtype == tf.string and spec.shape.as_list() == [None]
    img_sig = loaded.signatures["serving_images"]
    spec = img_sig.structured_input_signature[1]["images"]
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, SIZE, SIZE, 3]

    # ResNet-18 at width 1/16: 512 / 16 = 32 features; k = min(5, 3 classes) = 3.
    expected = {
        "final_avg_pool": (tf.float32, [None, 32]),
        "proj_head_output": (tf.float32, [None, 8]),
        "logits": (tf.float32, [None, 3]),
        "probabilities": (tf.float32, [None, 3]),
        "top_5_classes": (tf.int32, [None, 3]),
        "top_5_probabilities": (tf.float32, [None, 3]),
    }
    for sig in (bytes_sig, img_sig):
        got = {k: (v.dtype, v.shape.as_list()) for k, v in sig.structured_outputs.items()}
        assert got == expected

    # The Reusable SavedModel attributes.
    assert len(loaded.variables) == len(model.weights)
    assert len(loaded.trainable_variables) == len(model.trainable_weights) > 0
    assert {id(v) for v in loaded.trainable_variables} <= {id(v) for v in loaded.variables}
    assert list(loaded.regularization_losses) == []
    with open(os.path.join(path, "labels.txt")) as f:
        assert f.read().split() == list(CLASSES)


def test_float_paths_match_in_memory_model(exported):
    import tensorflow_hub as hub

    model, _, _, path = exported
    images = random_images(4)
    ref = {k: v.numpy() for k, v in model(images, training=False).items()}
    loaded = hub.load(path)

    out = loaded.signatures["serving_images"](images=tf.constant(images))
    close(out["final_avg_pool"], ref["final_avg_pool"])
    close(out["proj_head_output"], ref["proj_head_output"])
    close(out["logits"], ref["logits_sup"])
    probs = softmax(ref["logits_sup"].astype(np.float64))
    close(out["probabilities"], probs)
    order = np.argsort(-probs, axis=-1)
    np.testing.assert_array_equal(out["top_5_classes"], order)
    close(out["top_5_probabilities"], np.take_along_axis(probs, order, -1))
    # The weights are not trivial: different images give different representations.
    assert np.abs(ref["final_avg_pool"][0] - ref["final_avg_pool"][1]).max() > 1e-3

    for training_arg in ({}, {"training": False}):
        hub_out = loaded(tf.constant(images), **training_arg)
        assert set(hub_out) == set(ref) | {"default"}
        for key, value in ref.items():
            close(hub_out[key], value, err_msg=key)
        close(hub_out["default"], ref["final_avg_pool"])

    # __call__ takes any image size (the network is fully convolutional up to the pooling).
    big = random_images(2, size=24, seed=3)
    close(
        loaded(tf.constant(big))["default"],
        model(big, training=False)["final_avg_pool"],
    )


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_bytes_path_matches_eval_view_on_decoded_png(exported):
    model, _, _, path = exported
    rng = np.random.default_rng(5)
    arrays = [
        rng.integers(0, 256, (20, 24, 3), dtype=np.uint8),  # resized down, non-square
        rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),  # already the right size
        rng.integers(0, 256, (9, 13, 3), dtype=np.uint8),  # resized up
    ]
    encoded = [_png(a) for a in arrays]
    # PNG is lossless: PIL decodes back the very arrays; the reference is eval_view + model.
    decoded = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in encoded]
    for a, d in zip(arrays, decoded, strict=True):
        np.testing.assert_array_equal(a, d)
    views = tf.stack([augment.eval_view(d, SIZE) for d in decoded])
    ref = model(views, training=False)

    loaded = tf.saved_model.load(path)
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
    close(out["final_avg_pool"], ref["final_avg_pool"])
    close(out["proj_head_output"], ref["proj_head_output"])
    close(out["logits"], ref["logits_sup"])

    # JPEG in the same batch as PNG: equal to an explicit decode_jpeg + eval_view path.
    jpeg = tf.io.encode_jpeg(arrays[0], quality=90).numpy()
    mixed = loaded.signatures["serving_default"](image_bytes=tf.constant([jpeg, encoded[1]]))
    jpeg_view = augment.eval_view(tf.io.decode_jpeg(jpeg, channels=3), SIZE)
    close(
        mixed["final_avg_pool"][0],
        model(jpeg_view[None], training=False)["final_avg_pool"][0],
    )
    close(mixed["final_avg_pool"][1], ref["final_avg_pool"][1])


def test_hub_keras_layer_fine_tunes_every_variable(exported):
    import tensorflow_hub as hub
    import tf_keras

    model, _, _, path = exported
    layer = hub.KerasLayer(path, trainable=True, output_key="default")
    inputs = tf_keras.Input([SIZE, SIZE, 3])
    head = tf_keras.layers.Dense(2, kernel_initializer="glorot_uniform")
    clf = tf_keras.Model(inputs, head(layer(inputs)))

    images = random_images(6, seed=11)
    # Inference through the Keras layer equals the in-memory model's representation.
    close(
        layer(tf.constant(images), training=False),
        model(images, training=False)["final_avg_pool"],
    )
    # Every trainable weight of the original network is trainable through the hub layer.
    assert len(layer.trainable_weights) == len(model.trainable_weights) > 0
    assert len(layer.non_trainable_weights) == len(model.non_trainable_weights)

    labels = tf.constant([0, 1, 0, 1, 1, 0])
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    opt = tf_keras.optimizers.SGD(0.5)

    def loss_now() -> float:
        return float(loss_fn(labels, clf(images, training=False)))

    before = loss_now()
    with tf.GradientTape() as tape:
        loss = loss_fn(labels, clf(images, training=True))
    grads = tape.gradient(loss, clf.trainable_variables)
    missing = [v.name for v, g in zip(clf.trainable_variables, grads, strict=True) if g is None]
    assert not missing, missing
    assert len(grads) == len(model.trainable_weights) + 2
    opt.apply_gradients(zip(grads, clf.trainable_variables, strict=True))
    after = loss_now()
    assert abs(after - before) > 1e-4


def test_model_card_has_result_flags_and_outputs(exported):
    _, cfg, _, path = exported
    with open(os.path.join(path, "README.md")) as f:
        card = f.read()
    top1 = f"{100 * RESULT['label_top_1_accuracy']:.2f}%"  # 81.25%
    top5 = f"{100 * RESULT['label_top_5_accuracy']:.2f}%"  # 96.88%
    assert top1 == "81.25%" and top1 in card and top5 in card
    for needle in (
        "## Overview",
        "## Inputs",
        "## Outputs",
        "## Training",
        "## Evaluation",
        "<!-- format: saved_model_2 -->",
        "<!-- fine-tunable: true -->",
        "`--resnet_depth` | `18`",
        "`--width_multiplier` | `0.0625`",
        "| `final_avg_pool` | [N, 32] | float32",
        "`top_5_classes` | [N, 3] | int32",
        "0 `cat`, 1 `dog`, 2 `frog`",
    ):
        assert needle in card, needle


def test_overwrite_refused_then_replaced_and_old_exports_pruned(tmp_path, exported):
    model, cfg, run_dir, _ = exported
    root = tmp_path / "saved_model"
    shutil.copytree(os.path.join(run_dir, "saved_model"), root)
    (root / "3").mkdir()  # an older export
    marker = root / str(STEP) / "marker"
    marker.write_text("old export")

    with pytest.raises(export.ExportError, match="--overwrite"):
        export.export_run(model, cfg, str(tmp_path), STEP, RESULT, CLASSES)
    assert marker.exists()  # untouched
    assert sorted(os.listdir(root)) == ["3", str(STEP)]

    cfg = cfg.replace(overwrite=True, keep_hub_module_max=1)
    path = export.export_run(model, cfg, str(tmp_path), STEP, RESULT, CLASSES)
    assert path == str(root / str(STEP))
    assert not marker.exists()  # replaced by a complete new export
    assert (root / str(STEP) / "saved_model.pb").exists()
    assert sorted(os.listdir(root)) == [str(STEP)]  # step 3 pruned, no temp folders left


def test_failed_export_leaves_no_folder(tmp_path, exported, monkeypatch):
    model, _, _, _ = exported

    def broken_save(*args, **kwargs):
        os.makedirs(os.path.join(args[1], "variables"))  # half-written, then a crash
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    target = tmp_path / "exports" / "3"
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_saved_model(model, str(target), image_size=SIZE)
    assert os.listdir(tmp_path / "exports") == []


def test_prune_exports_numeric_order_and_keep(tmp_path):
    root = tmp_path / "saved_model"
    for name in ("2", "10", "3", "1", "notes", "5.partial-abc"):
        (root / name).mkdir(parents=True)
    deleted = export.prune_exports(str(root), 2)
    assert sorted(os.path.basename(p) for p in deleted) == ["1", "2"]  # 10 is newest, not "1x"
    assert sorted(os.listdir(root)) == ["10", "3", "5.partial-abc", "notes"]
    # The export just written is never deleted, even when it is the oldest.
    (root / "1").mkdir()
    deleted = export.prune_exports(str(root), 1, keep=str(root / "1"))
    assert sorted(os.path.basename(p) for p in deleted) == ["10", "3"]
    assert export.prune_exports(str(root), 0) == []  # < 1 keeps everything


def test_load_export_input_errors_name_the_fix(exported):
    model, _, _, path = exported
    loaded = load_export(path)
    assert loaded.image_size == SIZE and loaded.class_names == CLASSES
    images = random_images(2)
    close(
        loaded.serve_images(images)["final_avg_pool"],
        model(images, training=False)["final_avg_pool"],
    )
    with pytest.raises(export.ExportError, match="convert_image_dtype"):
        loaded.serve_images((images * 255).astype(np.uint8))
    with pytest.raises(export.ExportError, match="16x16"):
        loaded.serve_images(random_images(1, size=8))
    with pytest.raises(export.ExportError, match=r"images\[None\]"):
        loaded(images[0])
    with pytest.raises(export.ExportError, match=r"\[image_bytes\]"):
        loaded.serve_bytes(b"\x89PNG")
    with pytest.raises(export.ExportError, match="tf.string"):
        loaded.serve_bytes(images)
    with pytest.raises(export.ExportError, match="saved_model.pb"):
        load_export(os.path.dirname(path))
    # The raw signature itself refuses 0-255 floats (TF Serving clients get the same message).
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"in \[0, 1\]"):
        loaded.module.signatures["serving_images"](images=tf.constant(images * 255))


def test_export_from_model_dir_rebuilds_from_flags(tmp_path, run_cli):
    # An image folder with the three classes, so the class names come from the dataset.
    data = tmp_path / "data"
    for split in ("train", "test"):
        for c in CLASSES:
            (data / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(data / split / c / "0.png")
    run_dir = tmp_path / "run"
    cfg = tiny_config(CASE, model_dir=str(run_dir), data_dir=str(data), seed=3)
    model = perturbed_model(cfg, seed=4)
    model_dir_lib.prepare(cfg, str(run_dir), write_flags=True)
    # Checkpoint as training does: model + optimizer, step read from the optimizer.
    train.compile_model(cfg, model, keras.optimizers.SGD(0.1))
    model.optimizer.iterations.assign(5)
    checkpoints.Checkpointer(model, str(run_dir), max_to_keep=1).save(5)
    model_dir_lib.write_result(str(run_dir), {**RESULT, "global_step": 5})

    path = export.export_from_model_dir(str(run_dir))
    assert path == str(run_dir / "saved_model" / "5")
    loaded = load_export(path)
    assert loaded.class_names == CLASSES
    images = random_images(3, seed=8)
    ref = model(images, training=False)
    out = loaded.serve_images(images)
    close(out["final_avg_pool"], ref["final_avg_pool"])
    close(out["logits"], ref["logits_sup"])
    with open(os.path.join(path, "README.md")) as f:
        assert "81.25%" in f.read()
    with pytest.raises(export.ExportError, match="--overwrite"):
        export.export_from_model_dir(str(run_dir))
    with pytest.raises(export.ExportError, match="flags.json"):
        export.export_from_model_dir(str(tmp_path / "data"))

    # The command-line tool writes the same export elsewhere.
    other = tmp_path / "other"
    done = run_cli(
        f"--model_dir={run_dir}",
        f"--export_dir={other}",
        script="tools/export.py",
        expect=None,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(other)
    out = load_export(str(other)).serve_images(images)
    close(out["final_avg_pool"], ref["final_avg_pool"])


def test_export_from_model_dir_reads_num_classes_from_flags_json(tmp_path):
    # The dataset is gone: the supervised head's size comes from flags.json alone.
    run_dir = tmp_path / "run"
    cfg = tiny_config(CASE, model_dir=str(run_dir), data_dir=str(tmp_path / "deleted_data"))
    model = perturbed_model(cfg, seed=5)
    model_dir_lib.prepare(cfg, str(run_dir), write_flags=True, num_classes=len(CLASSES))
    assert json.loads((run_dir / "flags.json").read_text())["num_classes"] == len(CLASSES)
    train.compile_model(cfg, model, keras.optimizers.SGD(0.1))
    model.optimizer.iterations.assign(2)
    checkpoints.Checkpointer(model, str(run_dir), max_to_keep=1).save(2)

    loaded = load_export(export.export_from_model_dir(str(run_dir)))
    assert loaded.class_names is None  # names need the dataset; the head does not
    images = random_images(2, seed=11)
    close(loaded.serve_images(images)["logits"], model(images, training=False)["logits_sup"])


def test_distributed_mixed_precision_linear_eval_model_exports_float32_trainable(tmp_path):
    cfg = tiny_config(
        CASE,
        model_dir=str(tmp_path),
        train_mode="finetune",
        fine_tune_after_block=4,  # linear evaluation: only the head trains in the run
        checkpoint="none",
        mixed_precision="bfloat16",
    )
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    try:
        train.set_precision(cfg)
        with strategy.scope():
            model = perturbed_model(cfg, seed=6)
        path = export.export_run(model, cfg, str(tmp_path), 1, None, CLASSES)
        assert keras.mixed_precision.dtype_policy().name == "mixed_bfloat16"  # restored
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert not model.encoder.trainable_weights  # frozen in the run

    # Reference: the same weights in a float32 model built outside the strategy.
    reference = train.build_model(cfg.replace(mixed_precision="none"), len(CLASSES))
    reference(tf.zeros([1, SIZE, SIZE, 3]))
    reference.set_weights(model.get_weights())
    images = random_images(3, seed=9)
    ref = reference(images, training=False)

    loaded = tf.saved_model.load(path)
    out = loaded(tf.constant(images))
    for key in ("final_avg_pool", "proj_head_output", "logits_sup"):
        assert out[key].dtype == tf.float32
        close(out[key], ref[key], err_msg=key)
    # The module is fully trainable: consumers decide what to freeze.
    assert len(loaded.trainable_variables) == len(reference.weights) - len(
        [w for w in reference.weights if "moving_" in w.path]
    )


def test_hub_call_with_training_true_uses_batch_statistics(exported):
    """The Reusable SavedModel's ``training=True`` path is the model's training forward pass
    (batch statistics in every BN), not the inference one."""
    model, _, _, path = exported
    weights = model.get_weights()  # the training pass moves BN averages: put them back after
    images = random_images(6, seed=12)
    images[:3] *= 0.5  # batch statistics differ from the stored averages
    try:
        want = model(images, training=True)
    finally:
        model.set_weights(weights)
    loaded = tf.saved_model.load(path)
    got = loaded(tf.constant(images), training=True)
    inference = loaded(tf.constant(images), training=False)
    for key in ("final_avg_pool", "proj_head_output", "logits_sup"):
        close(got[key], want[key], err_msg=key)
        assert np.abs(got[key].numpy() - inference[key].numpy()).max() > 1e-3, key
    close(got["default"], want["final_avg_pool"])
