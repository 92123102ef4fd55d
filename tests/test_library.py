"""The Python API (``import simclr_tf``) and any Keras backbone as the encoder.

Numbers are checked against second code paths: NumPy kNN, a hand-written gradient step, the
augmentation functions the layer wraps, the loss functions the Loss classes wrap.
"""

import inspect
import json
import pydoc
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import simclr_tf
from simclr_tf import losses
from simclr_tf.config import Config, ConfigError
from simclr_tf.data import augment
from simclr_tf.models.backbone import BackboneError, KerasBackbone
from simclr_tf.neighbours import HIT, MISS, nearest_neighbours, neighbours_figure, pick_queries

SIZE = 8


def conv_backbone(batch_norm: bool = True) -> keras.Model:
    """A plain functional model returning a feature map (the adapter pools it)."""
    x = keras.Input((SIZE, SIZE, 3))
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    if batch_norm:
        y = keras.layers.BatchNormalization()(y)
    return keras.Model(x, y)


def images_and_labels(n: int = 12, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    # Class c is brighter in channel c: separable, so the classifier has something to learn.
    images = rng.random((n, SIZE, SIZE, 3)).astype("float32") * 0.5
    images[np.arange(n), :, :, labels] += 0.5
    return images, labels.astype("int32")


# ------------------------------------------------------------------------------------ the API


def test_every_public_name_is_documented_with_args_and_an_example():
    assert sorted(simclr_tf.__all__) == simclr_tf.__all__ and len(simclr_tf.__all__) >= 25
    for name in simclr_tf.__all__:
        doc = inspect.getdoc(getattr(simclr_tf, name)) or ""
        assert "Args:" in doc and "Example" in doc, name
    text = pydoc.render_doc(simclr_tf, renderer=pydoc.plaintext)
    for name in ("SimCLR", "linear_evaluation", "knn_evaluate", "LARS", "NTXent"):
        assert name in text


def test_import_does_not_load_tensorflow():
    code = "import sys, simclr_tf; print('tensorflow' in sys.modules, simclr_tf.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "False"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        simclr_tf.nope  # noqa: B018


def test_loss_classes_equal_the_loss_functions():
    z = tf.random.stateless_normal([10, 6], seed=[1, 2])
    z1, z2 = z[:5], z[5:]
    pairs = [
        (simclr_tf.NTXent(0.5), losses.nt_xent(z1, z2, temperature=0.5).loss),
        (simclr_tf.NTLogistic(0.2), losses.nt_logistic(z1, z2, temperature=0.2).loss),
        (simclr_tf.MarginTriplet(0.4), losses.margin_triplet(z1, z2, margin=0.4).loss),
    ]
    for loss, expected in pairs:
        assert isinstance(loss, keras.losses.Loss)
        np.testing.assert_allclose(loss(None, z), expected, rtol=1e-6)
    # Closed form for one pair of identical rows: the positive is the only other candidate.
    one = tf.constant([[1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(simclr_tf.NTXent(1.0)(None, one), 0.0, atol=1e-6)


def test_augmentation_layer_draws_new_seeded_views_per_call():
    images = (np.random.default_rng(0).random((3, 12, 12, 3)) * 255).astype("uint8")
    layer = simclr_tf.SimCLRAugmentation(SIZE, seed=7)
    first, second = layer(images, training=True), layer(images, training=True)
    for call, views in enumerate((first, second), start=1):
        expected = augment.two_views(images, tf.constant([7, call], tf.int64), SIZE, 0.5, False)
        for got, want in zip(views, expected, strict=True):
            np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert not np.array_equal(first[0].numpy(), second[0].numpy())
    np.testing.assert_array_equal(layer(images).numpy(), augment.eval_view(images, SIZE).numpy())


# --------------------------------------------------------------------------- the backbone


def test_keras_backbone_pools_feature_maps_and_freezes_whole():
    base = conv_backbone()
    encoder = KerasBackbone(base)
    x = images_and_labels(4)[0]
    np.testing.assert_allclose(encoder(x), base(x).numpy().mean(axis=(1, 2)), rtol=1e-5)
    with tf.GradientTape() as tape:
        h = encoder.call_endpoints(x, training=True, frozen_stages=5)["final_avg_pool"]
    assert all(g is None for g in tape.gradient(h, base.trainable_variables))
    with pytest.raises(BackboneError, match="needs this package's ResNet"):
        encoder.freeze_stages(2)
    with pytest.raises(BackboneError, match="micro_batch_size=0"):
        simclr_tf.SimCLR(conv_backbone(), micro_batch_size=2)


def test_simclr_step_is_the_hand_computed_nt_xent_gradient_step():
    """One fit step of SimCLR (views given, no probe) == w - lr * grad(2 x NT-Xent) by hand."""
    keras.utils.set_random_seed(0)
    model = simclr_tf.SimCLR(
        conv_backbone(batch_norm=False),
        augment=False,
        image_size=SIZE,
        temperature=0.5,
        projection_layers=2,
        projection_dim=4,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    model.build_all(SIZE)
    x = images_and_labels(8)[0]
    view1, view2 = x[:4], x[4:]
    before = [v.numpy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        h = model.encoder(tf.concat([view1, view2], 0), training=True)
        z = model.projection_head(h, training=True)[-1]
        loss = losses.nt_xent(z[:4], z[4:], temperature=0.5).loss
        # The step optimises the reference's objective: the sum of the two directions' means.
        objective = 2.0 * loss
    grads = tape.gradient(objective, model.trainable_variables)
    ds = tf.data.Dataset.from_tensors(((view1, view2), tf.zeros([4], tf.int32)))
    history = model.fit(ds, epochs=1, verbose=0)
    np.testing.assert_allclose(history.history["contrast_loss"][0], loss.numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        history.history["contrast_objective"][0], objective.numpy(), rtol=1e-5
    )
    for b, g, v in zip(before, grads, model.trainable_variables, strict=True):
        np.testing.assert_allclose(v.numpy(), b - 0.5 * g.numpy(), rtol=1e-4, atol=1e-6)


def test_pretrain_images_only_then_knn_linear_eval_and_export(tmp_path):
    x, y = images_and_labels(12)
    base = conv_backbone()
    model = simclr_tf.SimCLR(base, temperature=0.5, projection_layers=2, projection_dim=4)
    model.compile(optimizer=simclr_tf.LARS(simclr_tf.WarmupCosineDecay(0.5, 1, 3)))
    images_only = tf.data.Dataset.from_tensor_slices((x * 255).astype("uint8")).batch(4)
    model.fit(images_only, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 3

    # kNN against NumPy: cosine similarity, top-k, exp(s / T) votes.
    labelled = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    h = model.encoder(x, training=False).numpy()
    unit = h / np.linalg.norm(h, axis=1, keepdims=True)
    sims = unit @ unit.T
    top = np.argsort(-sims, axis=1)[:, :4]
    votes = np.zeros((12, 3))
    for q in range(12):
        np.add.at(votes[q], y[top[q]], np.exp(sims[q, top[q]] / 0.1))
    expected = np.mean(votes.argmax(1) == y)
    assert simclr_tf.knn_evaluate(model, labelled, labelled, k=4) == pytest.approx(expected)

    # Linear evaluation: the backbone (weights and BN statistics) does not move.
    frozen = [w.numpy() for w in base.weights]
    result = simclr_tf.linear_evaluation(
        model, labelled, labelled, num_classes=3, epochs=3, learning_rate=2.0, verbose=0
    )
    for before, after in zip(frozen, base.weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())
    clf = result["classifier"]
    logits = clf(x, training=False)["logits_sup"].numpy()
    assert np.abs(logits).sum() > 0  # the zero-initialised classifier learned
    assert result["top1"] == pytest.approx(np.mean(logits.argmax(1) == y))

    # Export: the serving signature and the hub call give the encoder's h and the logits.
    path = simclr_tf.export_saved_model(clf, str(tmp_path / "export"))
    loaded = tf.saved_model.load(path)
    served = loaded.signatures["serving_images"](images=tf.constant(x))
    np.testing.assert_allclose(served["final_avg_pool"], h, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(served["logits"], logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loaded(tf.constant(x))["default"], h, rtol=1e-4, atol=1e-5)


def test_distiller_minimises_the_cross_entropy_to_the_frozen_teacher():
    x, y = images_and_labels(6)
    teacher = simclr_tf.classifier(conv_backbone(), 3, frozen_stages=0, zero_init=False)
    teacher_logits = teacher(x, training=False)["logits_sup"].numpy()
    teacher_weights = [w.numpy() for w in teacher.weights]
    student = simclr_tf.distiller(
        teacher, conv_backbone(batch_norm=False), 3, temperature=2.0, image_size=SIZE
    )
    student_logits = student(x, training=False)["logits_sup"].numpy()
    student.compile(optimizer=keras.optimizers.SGD(0.1))
    labels = np.full(6, -1, np.int32)  # unlabelled: distillation only
    history = student.fit(tf.data.Dataset.from_tensors((x, labels)), epochs=1, verbose=0)

    def log_softmax(v):
        v = v - v.max(1, keepdims=True)
        return v - np.log(np.exp(v).sum(1, keepdims=True))

    targets = np.exp(log_softmax(teacher_logits / 2.0))
    expected = -(targets * log_softmax(student_logits / 2.0)).sum(1).mean()
    assert history.history["distill_loss"][0] == pytest.approx(expected, rel=1e-5)
    for before, after in zip(teacher_weights, teacher.weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())


# ------------------------------------------------------------------- unsupported settings


@pytest.mark.parametrize(
    "changes, needle",
    [
        (dict(train_mode="finetune", fine_tune_after_block=2), "frozen whole (4) or not at all"),
        (dict(sk_ratio=0.0625), "--sk_ratio / --se_ratio are ResNet blocks"),
        (dict(encoder="MobileNetV3Small"), "is not understood: use 'resnet'"),
    ],
)
def test_resnet_only_settings_are_one_line_errors(changes, needle):
    cfg = Config(
        model_dir="/tmp/x", checkpoint="none", encoder="keras_applications:MobileNetV3Small"
    )
    with pytest.raises(ConfigError, match=re.escape(needle)) as info:
        cfg.replace(**changes).validate()
    assert len([line for line in str(info.value).splitlines() if line.startswith("  - ")]) == 1


def test_unknown_keras_application_names_the_choices():
    from simclr_tf.models.backbone import backbone_from_spec

    with pytest.raises(BackboneError, match="MobileNetV3Small"):
        backbone_from_spec("keras_applications:NoSuchNet", 32)


# ------------------------------------------------------------------ the neighbour picture


def test_nearest_neighbours_and_picture_frames():
    rng = np.random.default_rng(1)
    query, bank = rng.normal(size=(4, 5)), rng.normal(size=(9, 5))
    idx, sim = nearest_neighbours(query, bank, k=3)
    cos = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ (
        bank / np.linalg.norm(bank, axis=1, keepdims=True)
    ).T
    np.testing.assert_array_equal(idx, np.argsort(-cos, axis=1)[:, :3])
    np.testing.assert_allclose(sim, np.sort(cos, axis=1)[:, ::-1][:, :3], rtol=1e-5)
    assert list(pick_queries(np.array([2, 2, 0, 1, 0, 1]), 4)) == [2, 3, 0, 4]

    labels = np.array([[0, 1], [1, 1]])
    fig = neighbours_figure(
        np.zeros((2, 4, 4, 3)), np.array([0, 1]), np.zeros((2, 2, 4, 4, 3)), labels, ["a", "b"]
    )
    axes = np.array(fig.axes).reshape(2, 3)
    colours = [[tuple(ax.spines["top"].get_edgecolor()[:3]) for ax in row[1:]] for row in axes]
    assert colours == [[HIT, MISS], [HIT, HIT]]
    assert axes[0, 0].get_title() == "query: a" and axes[1, 2].get_title() == "b"


# ------------------------------------------------------------------------- through run.py

APP = "--encoder=keras_applications:MobileNetV3Small"
CLI_COMMON = [
    "--dataset=image_folder",
    "--image_size=32",
    "--train_batch_size=12",  # 12 training images: one step per epoch
    "--eval_batch_size=6",
    "--proj_out_dim=8",
    "--num_proj_layers=2",
    APP,
]


@pytest.fixture(scope="module")
def app_folder(tmp_path_factory, write_png_folder):
    root = tmp_path_factory.mktemp("app_images")
    return write_png_folder(root, 3, {"train": 4, "test": 2}, 32, ext="jpg")


@pytest.fixture(scope="module")
def app_pretrained(app_folder, tmp_path_factory, run_cli):
    model_dir = tmp_path_factory.mktemp("app_pretrain")
    proc = run_cli(
        "--mode=train",
        f"--data_dir={app_folder}",
        f"--model_dir={model_dir}",
        "--train_epochs=2",
        "--knn_every_epochs=2",  # epoch 1 has no kNN pass, epoch 2 has one
        "--knn_k=3",
        "--temperature=0.5",
        "--verbose=2",
        *CLI_COMMON,
        timeout=900,
    )
    return model_dir, proc


@pytest.mark.slow
def test_run_py_pretrains_a_keras_application_with_knn_and_pictures(app_pretrained):
    model_dir, proc = app_pretrained
    progress = [line for line in proc.stdout.splitlines() if "contrast_loss" in line]
    assert len(progress) == 2, proc.stdout
    assert "knn_top1" not in progress[0] and "nan" not in proc.stdout
    knn = float(re.search(r"knn_top1: ([0-9.]+)", progress[1]).group(1))
    assert knn * 6 == pytest.approx(round(knn * 6), abs=2e-3)  # 6 test images, 4 decimals
    flags = (model_dir / "flags.json").read_text()
    assert '"encoder": "keras_applications:MobileNetV3Small"' in flags
    for picture in ("curves.png", "neighbours.png"):
        assert (model_dir / picture).stat().st_size > 5000


@pytest.mark.slow
def test_run_py_linear_eval_and_export_of_a_keras_application(
    app_pretrained, app_folder, tmp_path, run_cli
):
    pretrained, _ = app_pretrained
    linear = tmp_path / "linear"
    run_cli(
        "--mode=train_then_eval",
        "--train_mode=finetune",
        "--fine_tune_after_block=4",
        "--zero_init_logits_layer=true",
        "--optimizer=momentum",
        "--learning_rate=0.1",
        "--train_steps=1",
        f"--checkpoint={pretrained}",
        f"--data_dir={app_folder}",
        f"--model_dir={linear}",
        "--verbose=0",
        *CLI_COMMON,
        timeout=900,
    )

    # The encoder is frozen: its checkpointed weights are the pretrained ones.
    from simclr_tf import restore

    pre, post = (restore.rebuild(restore.read_run(str(d))).encoder for d in (pretrained, linear))
    assert len(pre.weights) == len(post.weights) > 50
    for a, b in zip(pre.weights, post.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The export serves h of the frozen encoder and the classifier's logits.
    exports = list((linear / "saved_model").iterdir())
    loaded = tf.saved_model.load(str(exports[0]))
    out = loaded.signatures["serving_images"](images=tf.zeros([2, 32, 32, 3]))
    assert out["final_avg_pool"].shape == (2, 576) and out["logits"].shape == (2, 3)
    result = json.loads((linear / "result.json").read_text())
    assert result["global_step"] == 1 and result["num_examples"] == 6
