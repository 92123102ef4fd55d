"""SimCLRModel: train_step wiring against NumPy, learning on a tiny set, freezing, checkpoints."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from simclr_tf import checkpoints, config, optim, restore, train
from simclr_tf.data import augment
from simclr_tf.schedule import make_schedule

# This file's settings over conftest.TINY_CONFIG.
CASE = dict(
    width_multiplier=0.125,
    temperature=0.5,
    optimizer="lars",
    learning_rate=0.5,
    weight_decay=1e-4,
)


def _model(cfg: config.Config, num_classes: int = 4, total_steps: int = 50):
    schedule = make_schedule(cfg.replace(train_steps=total_steps), 64, cfg.learning_rate)
    tf.keras.utils.set_random_seed(cfg.seed)
    model = train.build_model(cfg, num_classes)
    train.compile_model(cfg, model, train.build_optimizer_for(cfg, schedule))
    return model


def _np_nt_xent(z1: np.ndarray, z2: np.ndarray, t: float) -> tuple[float, float]:
    """Reference NT-Xent (mean over 2N anchors) and top-1 accuracy, written from the paper."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    sim = z @ z.T / t
    losses, hits = [], []
    for i in range(n2):
        j = (i + n) % n2
        others = [k for k in range(n2) if k != i]
        logits = sim[i, others]
        losses.append(-(sim[i, j] - np.log(np.exp(logits).sum())))
        hits.append(others[int(np.argmax(logits))] == j)
    return float(np.mean(losses)), float(np.mean(hits))


def _views(n: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (n, size + 4, size + 4, 3)).astype(np.float32)
    v1, v2 = augment.two_views(tf.constant(images), tf.constant([seed, 1]), size, 0.5, False)
    return v1, v2


def test_train_step_reports_the_paper_loss_of_its_projections():
    cfg = tiny_config(CASE, lineareval_while_pretraining=False)
    model = _model(cfg)
    v1, v2 = _views(8, 16)
    # Projections with the weights *before* the step, batch statistics over both views as in
    # the step itself (one encoder pass over the concatenated views).
    out = model(tf.concat([v1, v2], 0), training=True)
    z = out["proj_head_output"].numpy()
    want_loss, want_acc = _np_nt_xent(z[:8], z[8:], cfg.temperature)
    logs = model.train_step(((v1, v2), tf.zeros([8], tf.int32)))
    assert float(logs["contrast_loss"]) == pytest.approx(want_loss, rel=1e-4)
    assert float(logs["contrast_acc"]) == pytest.approx(want_acc)
    # No supervised head: the total loss is the contrastive loss alone.
    assert float(logs["loss"]) == pytest.approx(want_loss, rel=1e-4)
    wd = sum(
        0.5 * float(np.sum(np.square(v.numpy())))
        for v in model.trainable_variables
        if len(v.shape) > 1
    )
    assert float(logs["weight_decay"]) == pytest.approx(cfg.weight_decay * wd, rel=1e-3)


def _np_penalty(model, weight_decay: float) -> float:
    """0.5 * wd * sum ||w||^2 over the kernels (rank > 1), in float64 NumPy."""
    return weight_decay * sum(
        0.5 * float(np.sum(np.square(v.numpy().astype(np.float64))))
        for v in model.trainable_variables
        if len(v.shape) > 1
    )


@pytest.mark.parametrize("mirrored", [False, True], ids=["one_device", "mirrored"])
def test_weight_decay_is_measured_only_on_every_nth_step(mirrored, request):
    """With ``weight_decay_every=2`` the penalty is measured after steps 2 and 4 only; in
    between the log repeats the last measurement although the weights moved (also on 2
    replicas, where the measurement sits in a ``tf.cond`` inside the replica step)."""
    strategy = request.getfixturevalue("strategy") if mirrored else tf.distribute.get_strategy()
    cfg = tiny_config(CASE, lineareval_while_pretraining=False)
    with strategy.scope():
        model = _model(cfg)
    model.weight_decay_every = 2

    @tf.function
    def step(data):
        logs = strategy.run(model.train_step, args=(data,))
        return strategy.experimental_local_results(logs)[0]

    v1, v2 = _views(8, 16)
    data = ((v1, v2), tf.zeros([8], tf.int32))
    logged, actual = [], []
    for _ in range(4):
        logged.append(float(step(data)["weight_decay"]))
        actual.append(_np_penalty(model, cfg.weight_decay))
    assert logged[0] == 0.0  # nothing measured yet
    assert logged[1] == pytest.approx(actual[1], rel=1e-4)
    assert logged[2] == logged[1] and actual[2] != pytest.approx(actual[1], rel=1e-6)
    assert logged[3] == pytest.approx(actual[3], rel=1e-4)
    # Keras resets metrics at every epoch start; the measurement of the weights must survive it.
    model.reset_metrics()
    assert float(model.weight_decay_tracker.result()) == logged[3]


def test_pretraining_learns_on_a_tiny_set():
    """Contrastive accuracy rises and the loss falls well below ln(2N-1) on 16 images.

    The images are seen through a small pool of augmented view pairs (a tiny dataset of views),
    so 60 compiled steps of the real train step are enough to show learning.
    """
    cfg = tiny_config(CASE, learning_rate=1.0, train_batch_size=16)
    model = _model(cfg, total_steps=60)
    rng = np.random.default_rng(1)
    images = tf.constant(rng.uniform(0, 1, (16, 20, 20, 3)).astype(np.float32))
    views = [augment.two_views(images, tf.constant([7, k]), 16, 0.5, False) for k in range(4)]
    labels = tf.range(16) % 4
    step = tf.function(model.train_step)
    history = []
    for i in range(60):
        model.reset_metrics()
        logs = step((views[i % 4], labels))
        history.append((float(logs["contrast_loss"]), float(logs["contrast_acc"])))
    chance = np.log(2 * 16 - 1)
    assert history[0][0] > 0.8 * chance
    assert history[-1][0] < 0.6 * chance
    assert history[-1][1] > history[0][1] + 0.5


def test_linear_eval_trains_only_the_linear_head_and_keeps_encoder_fixed():
    cfg = tiny_config(
        CASE,
        train_mode="finetune",
        checkpoint="none",
        fine_tune_after_block=4,
        optimizer="momentum",
        zero_init_logits_layer=True,
    )
    model = _model(cfg)
    assert [v.path.split("/")[1] for v in model.trainable_variables] == ["head_supervised"] * 2
    before = [v.numpy().copy() for v in model.encoder.variables + model.projection_head.variables]
    images = tf.random.uniform([8, 16, 16, 3], seed=1)
    labels = tf.constant([0, 1, 2, 3, 0, 1, 2, 3])
    logs = model.train_step((images, labels))
    after = [v.numpy() for v in model.encoder.variables + model.projection_head.variables]
    for b, a in zip(before, after, strict=True):  # weights and BN statistics untouched
        np.testing.assert_array_equal(a, b)
    # Zero-initialised head: uniform softmax, so the first loss is exactly ln(num_classes).
    assert float(logs["supervised_loss"]) == pytest.approx(np.log(4), rel=1e-6)
    assert np.abs(model.supervised_head.variables[0].numpy()).sum() > 0  # it did learn


def test_finetune_from_block_trains_later_stages_only():
    cfg = tiny_config(
        CASE,
        train_mode="finetune",
        checkpoint="none",
        fine_tune_after_block=2,
        optimizer="momentum",
    )
    model = _model(cfg)
    groups = {v.path.split("/")[2] for v in model.trainable_variables if "/encoder/" in v.path}
    assert groups == {"block_group3", "block_group4"}


def test_representation_is_taken_before_the_head():
    model = _model(tiny_config(CASE))
    images = tf.random.uniform([3, 16, 16, 3], seed=2)
    out = model(images, training=False)
    h = model.encoder(images, training=False)
    np.testing.assert_allclose(out["final_avg_pool"], h, atol=1e-6)
    np.testing.assert_allclose(out["proj_head_input"], h, atol=1e-6)
    hidden = model.projection_head(h, training=False)
    np.testing.assert_allclose(out["proj_head_output"], hidden[-1], atol=1e-6)
    # The live probe reads h (ft_proj_selector=0).
    np.testing.assert_allclose(out["logits_sup"], model.supervised_head(h), atol=1e-5)


def test_lars_skips_layer_adaptation_for_the_supervised_head():
    model = _model(tiny_config(CASE))
    opt = model.optimizer
    assert isinstance(opt, optim.LARS)
    sup_kernel = model.supervised_head.trainable_variables[0]
    assert len(sup_kernel.shape) == 2  # rank 2: only the explicit exclusion keeps it out
    assert not opt._adapts(sup_kernel)
    kernels = [v for v in model.trainable_variables if len(v.shape) >= 2]
    adapted = [v for v in kernels if opt._adapts(v)]
    assert len(adapted) == len(kernels) - 1


def test_every_variable_reaches_the_checkpoint(tmp_path):
    model = _model(tiny_config(CASE))
    assert checkpoints.untracked_variables(model) == []
    ckpt = checkpoints.Checkpointer(model, str(tmp_path), max_to_keep=2)
    path = ckpt.save(3)
    names = {n for n, _ in tf.train.list_variables(path) if n.endswith("VARIABLE_VALUE")}
    # Model variables plus optimizer slots/iterations: at least one entry per model variable.
    assert len(names) >= len(model.variables)


def test_restoring_another_architecture_names_the_mismatch(tmp_path):
    small = _model(tiny_config(CASE))
    path = checkpoints.Checkpointer(small, str(tmp_path / "a")).save(1)
    wider = _model(tiny_config(CASE, width_multiplier=0.25))
    with pytest.raises(checkpoints.CheckpointError) as e:
        restore.restore_pretrained(wider, path)
    msg = str(e.value)
    assert "shape differs" in msg and "--width_multiplier" in msg


def _encoder_and_head_values(model) -> list[np.ndarray]:
    return [v.numpy().copy() for v in model.encoder.variables + model.projection_head.variables]


def test_live_linear_probe_leaves_the_representation_alone():
    """Encoder and projection head end one pretraining step identically with the probe on and
    off: the probe's loss must not reach them (stop_gradient on its input)."""
    on = _model(tiny_config(CASE, weight_decay=0.0))
    off = _model(tiny_config(CASE, weight_decay=0.0, lineareval_while_pretraining=False))
    assert on.supervised_head is not None and off.supervised_head is None
    for a, b in zip(
        off.encoder.variables + off.projection_head.variables,
        on.encoder.variables + on.projection_head.variables,
        strict=True,
    ):
        a.assign(b)
    v1, v2 = _views(8, 16, seed=3)
    labels = tf.constant([0, 1, 2, 3, 0, 1, 2, 3])
    start_values = _encoder_and_head_values(on)
    logs = on.train_step(((v1, v2), labels))
    off.train_step(((v1, v2), labels))
    assert float(logs["supervised_loss"]) > 0.5  # the probe's loss is there, and large
    moved = 0.0
    for got, want, start in zip(
        _encoder_and_head_values(on), _encoder_and_head_values(off), start_values, strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        moved = max(moved, float(np.abs(got - start).max()))
    assert moved > 1e-4  # the step did train the encoder


def test_checkpoint_restores_every_model_and_optimizer_variable(tmp_path):
    """Save after a step (non-zero momentum, moved BN statistics), overwrite every variable,
    restore: each model and optimizer variable holds its saved value again."""
    model = _model(tiny_config(CASE))
    v1, v2 = _views(8, 16, seed=4)
    model.train_step(((v1, v2), tf.constant([0, 1, 2, 3, 0, 1, 2, 3])))
    variables = list(model.variables) + [
        v for v in model.optimizer.variables if all(v is not m for m in model.variables)
    ]
    saved = [v.numpy().copy() for v in variables]
    assert int(model.optimizer.iterations.numpy()) == 1
    moving = [v for v in model.variables if "moving_" in v.path]
    assert moving and all(
        np.any(v.numpy() != (1.0 if "variance" in v.path else 0.0)) for v in moving
    )  # BN statistics moved by the step
    ckpt = checkpoints.Checkpointer(model, str(tmp_path))
    ckpt.save(1)
    for v, value in zip(variables, saved, strict=True):
        v.assign(np.full_like(value, 7 if np.issubdtype(value.dtype, np.integer) else 0.25))
    assert ckpt.restore_latest() == 1
    for v, value in zip(variables, saved, strict=True):
        np.testing.assert_array_equal(v.numpy(), value, err_msg=v.path)


def test_checkpointer_refuses_a_layer_held_only_in_a_list(tmp_path):
    import keras

    class Listed(keras.Model):
        def __init__(self):
            super().__init__()
            self.first = keras.layers.Dense(3, name="first")
            self.in_list = [keras.layers.Dense(2, name="listed")]

        def call(self, x):
            return self.in_list[0](self.first(x))

    model = Listed()
    model(tf.zeros([1, 4]))
    model.compile(optimizer="sgd")
    with pytest.raises(checkpoints.CheckpointError, match="listed/kernel") as e:
        checkpoints.Checkpointer(model, str(tmp_path))
    assert "Assign every sub-layer to an attribute" in str(e.value)
    assert "first/" not in str(e.value)
    assert not list(tmp_path.iterdir())  # nothing written


def _pretrained_checkpoint(tmp_path, **kw) -> tuple[str, object]:
    """A pretraining model after one step (BN statistics moved), saved."""
    src = _model(tiny_config(CASE, num_proj_layers=2, **kw))
    v1, v2 = _views(8, 16, seed=5)
    src.train_step(((v1, v2), tf.constant([0, 1, 2, 3, 0, 1, 2, 3])))
    return checkpoints.Checkpointer(src, str(tmp_path / "pre")).save(1), src


def test_finetune_restore_brings_back_encoder_and_projection_head_values(tmp_path):
    path, src = _pretrained_checkpoint(tmp_path)
    tuned = _model(
        tiny_config(
            CASE,
            train_mode="finetune",
            checkpoint=path,
            fine_tune_after_block=-1,
            optimizer="momentum",
            num_proj_layers=2,
            seed=9,
        )
    )
    head_before = [v.numpy().copy() for v in tuned.supervised_head.variables]
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(_encoder_and_head_values(tuned), _encoder_and_head_values(src), strict=True)
    )
    restore.restore_pretrained(tuned, path)
    pairs = list(zip(tuned.projection_head.variables, src.projection_head.variables, strict=True))
    assert len(pairs) == 9  # 2 dense kernels, BN gamma + beta and gamma, 2 x 2 statistics
    for got, want in pairs + list(zip(tuned.encoder.variables, src.encoder.variables, strict=True)):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=got.path)
    for got, want in zip(tuned.supervised_head.variables, head_before, strict=True):
        np.testing.assert_array_equal(got.numpy(), want)  # not in a pretraining checkpoint
    assert int(tuned.optimizer.iterations.numpy()) == 0  # the step is not restored


def test_ft_proj_selector_feeds_that_projection_layer_and_freezes_below_it():
    images = tf.random.uniform([8, 16, 16, 3], seed=6)
    labels = tf.constant([0, 1, 2, 3, 0, 1, 2, 3])

    # Linear evaluation on projection layer 1: the head reads it; nothing below it trains.
    linear = _model(
        tiny_config(
            CASE,
            train_mode="finetune",
            checkpoint="none",
            fine_tune_after_block=4,
            ft_proj_selector=1,
            optimizer="momentum",
            num_proj_layers=2,
        )
    )
    out = linear(images, training=False)
    hiddens = linear.projection_head(linear.encoder(images, training=False), training=False)
    np.testing.assert_allclose(out["logits_sup"], linear.supervised_head(hiddens[1]), atol=1e-5)
    assert not np.allclose(out["logits_sup"], linear.supervised_head(hiddens[0]), atol=1e-3)
    assert [v.path.split("/")[1] for v in linear.trainable_variables] == ["head_supervised"] * 2
    before = _encoder_and_head_values(linear)
    linear.train_step((images, labels))
    for a, b in zip(_encoder_and_head_values(linear), before, strict=True):
        np.testing.assert_array_equal(a, b)  # weights and BN statistics below the selector

    # Full fine-tuning on layer 1: the encoder and projection layer 0 train, layer 1 (above the
    # selector, unused) keeps its weights.
    full = _model(
        tiny_config(
            CASE,
            train_mode="finetune",
            checkpoint="none",
            fine_tune_after_block=-1,
            ft_proj_selector=1,
            optimizer="momentum",
            num_proj_layers=2,
        )
    )
    head = full.projection_head
    trainable_before = {v.path: v.numpy().copy() for v in full.trainable_variables}
    full.train_step((images, labels))
    changed = {
        v.path
        for v in full.trainable_variables
        if not np.array_equal(v.numpy(), trainable_before[v.path])
    }
    below = {
        v.path
        for v in head.dense_layers[0].trainable_variables + head.bn_layers[0].trainable_variables
    }
    above = {
        v.path
        for v in head.dense_layers[1].trainable_variables + head.bn_layers[1].trainable_variables
    }
    assert below <= changed
    assert not above & changed
    assert any("/encoder/" in p for p in changed)
