"""ResNet: closed-form parameter counts, endpoints, zero-init blocks, freezing, SK and SE."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.models.layers import BatchNorm
from simclr_tf.models.resnet import (
    FixedPaddingConv2D,
    ResNet,
    SelectiveKernel,
    SqueezeExcite,
)

EPS = 1e-5

# -- closed-form parameter counts (standard ResNet v1, no fc) ---------------------------------


def _conv(k, cin, cout):
    return k * k * cin * cout


def _bn(c):
    return 2 * c  # gamma + beta (trainable)


def _expected_trainable(depth, stem="imagenet"):
    layout = {
        18: ("basic", [2, 2, 2, 2]),
        34: ("basic", [3, 4, 6, 3]),
        50: ("bottleneck", [3, 4, 6, 3]),
    }
    kind, counts = layout[depth]
    total = _conv(7 if stem == "imagenet" else 3, 3, 64) + _bn(64)
    cin = 64
    for stage, (width, n) in enumerate(zip([64, 128, 256, 512], counts, strict=True)):
        for b in range(n):
            stride = 2 if (stage > 0 and b == 0) else 1
            if kind == "basic":
                cout = width
                total += _conv(3, cin, width) + _bn(width) + _conv(3, width, width) + _bn(width)
            else:
                cout = 4 * width
                total += (
                    _conv(1, cin, width)
                    + _bn(width)
                    + _conv(3, width, width)
                    + _bn(width)
                    + _conv(1, width, cout)
                    + _bn(cout)
                )
            if stride != 1 or cin != cout:
                total += _conv(1, cin, cout) + _bn(cout)
            cin = cout
    return total


def _count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


@pytest.mark.parametrize("depth,stem", [(18, "imagenet"), (18, "cifar"), (50, "imagenet")])
def test_parameter_counts_match_closed_form(depth, stem):
    model = ResNet(depth, 1.0, cifar_stem=stem == "cifar")
    model.build((None, 224 if stem == "imagenet" else 32, 224 if stem == "imagenet" else 32, 3))
    trainable = _count(model.trainable_weights)
    assert trainable == _expected_trainable(depth, stem)
    # BN moving mean/var: one pair per BN, each BN contributes gamma+beta to the trainables.
    n_bn_params = _count(
        [w for w in model.trainable_weights if "gamma" in w.path or "beta" in w.path]
    )
    assert _count(model.non_trainable_weights) == n_bn_params
    if depth == 50:  # SimCLR / standard ResNet-50 (1x) without fc: 23.5M parameters
        assert 23.45e6 < trainable < 23.55e6
        assert model.output_dim == 2048
    if depth == 18 and stem == "imagenet":  # torchvision resnet18 minus its 512x1000 fc + bias
        assert trainable == 11_689_512 - 513_000
        assert model.output_dim == 512


def test_unknown_depth_lists_valid_depths():
    with pytest.raises(ValueError, match=r"18, 34, 50, 101, 152, 200"):
        ResNet(depth=42)


def test_width_multiplier_scales_every_width():
    model = ResNet(50, 0.25)
    assert model.stages[0].out_channels == 16
    assert [s.out_channels for s in model.stages[1:]] == [64, 128, 256, 512]
    assert model.output_dim == 512
    assert ResNet(18, 0.125).output_dim == 64


# -- endpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cifar_stem,size", [(True, 16), (False, 32)])
def test_endpoint_shapes_and_values(cifar_stem, size):
    keras.utils.set_random_seed(0)
    model = ResNet(18, 0.125, cifar_stem=cifar_stem)
    x = np.random.default_rng(0).uniform(size=(2, size, size, 3)).astype("float32")
    ends = model.call_endpoints(x, training=False)
    groups = [f"block_group{i}" for i in range(1, 5)]
    assert list(ends) == ["initial_conv", "initial_max_pool", *groups, "final_avg_pool"]
    s = size if cifar_stem else size // 2
    expected = {
        "initial_conv": (2, s, s, 8),
        "initial_max_pool": (2, s, s, 8) if cifar_stem else (2, s // 2, s // 2, 8),
    }
    p = s if cifar_stem else s // 2
    for i, ch in enumerate([8, 16, 32, 64]):
        expected[f"block_group{i + 1}"] = (2, p // 2**i, p // 2**i, ch)
    expected["final_avg_pool"] = (2, 64)
    assert {k: tuple(v.shape) for k, v in ends.items()} == expected
    if cifar_stem:
        np.testing.assert_array_equal(ends["initial_conv"], ends["initial_max_pool"])
    else:  # 3x3/2 max pool with "same" padding, recomputed in NumPy
        conv = ends["initial_conv"].numpy()
        padded = np.pad(conv, [(0, 0), (0, 1), (0, 1), (0, 0)], constant_values=-np.inf)
        ref = np.stack(
            [
                np.stack(
                    [
                        padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max((1, 2))
                        for j in range(s // 2)
                    ],
                    1,
                )
                for i in range(s // 2)
            ],
            1,
        )
        np.testing.assert_allclose(ends["initial_max_pool"].numpy(), ref)
    np.testing.assert_allclose(
        ends["final_avg_pool"].numpy(),
        ends["block_group4"].numpy().mean((1, 2)),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        model(x, training=False).numpy(), ends["final_avg_pool"].numpy(), rtol=1e-5, atol=1e-6
    )


def test_fixed_padding_conv_matches_explicit_padding():
    keras.utils.set_random_seed(1)
    x = tf.constant(np.random.default_rng(1).normal(size=(1, 8, 7, 3)).astype("float32"))
    for k, s, pads in [(3, 2, (1, 1)), (7, 2, (3, 3)), (4, 2, (1, 2)), (3, 1, (1, 1))]:
        layer = FixedPaddingConv2D(5, k, s)
        y = layer(x)
        ref = tf.nn.conv2d(x, layer.conv.kernel, s, [[0, 0], pads, pads, [0, 0]])
        np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
        assert tuple(y.shape) == layer.compute_output_shape(tuple(x.shape))


# -- initialisation ----------------------------------------------------------------------------


def _np_bn_train(x):
    axes = (0, 1, 2)
    return (x - x.mean(axes)) / np.sqrt(x.var(axes) + EPS)


@pytest.mark.parametrize("depth", [18, 50])
def test_zero_init_blocks_are_relu_of_shortcut(depth):
    keras.utils.set_random_seed(2)
    model = ResNet(depth, 0.125, cifar_stem=True)
    x = tf.constant(np.random.default_rng(2).uniform(size=(3, 8, 8, 3)).astype("float32"))
    h = model.stages[0](x, training=True)
    n_projection = 0
    for group in model.stages[1:]:
        for block in group.block_layers:
            out = block(h, training=True).numpy()
            hn = h.numpy()
            if block.projection is None:
                ref = np.maximum(hn, 0.0)
            else:  # 1x1 conv with stride s ("valid") + BN (batch stats, gamma 1, beta 0)
                n_projection += 1
                s = block.strides
                kernel = block.projection.conv.conv.kernel.numpy()[0, 0]
                ref = np.maximum(_np_bn_train(hn[:, ::s, ::s, :] @ kernel), 0.0)
            np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
            h = tf.constant(out)
    assert n_projection == (3 if depth == 18 else 4)


def test_bn_settings_and_zero_gammas():
    model = ResNet(50, 0.125, bn_momentum=0.8, global_bn=True)
    model.build((None, 32, 32, 3))
    bns = [layer for layer in model._flatten_layers() if isinstance(layer, BatchNorm)]
    assert bns and all(b.synchronized and b.momentum == 0.8 and b.epsilon == EPS for b in bns)
    zero = [b for b in bns if not np.any(b.gamma.numpy())]
    assert len(zero) == 3 + 4 + 6 + 3  # the last BN of every block
    assert all(b.path.split("/")[-2] == "bn3" for b in zero)
    assert ResNet(18, 0.125, global_bn=False).stages[0].conv_layers[1].bn.synchronized is False


def test_conv_init_is_he_fan_out():
    keras.utils.set_random_seed(3)
    layer = FixedPaddingConv2D(256, 3, 1)
    layer.build((None, 8, 8, 64))
    k = layer.conv.kernel.numpy()
    # truncated normal (at 2 sd) with variance 2 / fan_out = 2 / (3 * 3 * 256)
    assert abs(k.std() - np.sqrt(2.0 / (9 * 256))) < 0.05 * np.sqrt(2.0 / (9 * 256))
    assert layer.conv.bias is None


# -- freezing ----------------------------------------------------------------------------------


def _moving_stats(layers):
    return [w.numpy().copy() for layer in layers for w in layer.non_trainable_weights]


def test_frozen_stages_five_freezes_everything():
    keras.utils.set_random_seed(4)
    model = ResNet(18, 0.125, cifar_stem=True)
    x = tf.constant(np.random.default_rng(4).uniform(size=(4, 8, 8, 3)).astype("float32"))
    model(x, training=True)  # move BN stats away from init
    before = _moving_stats(model.stages)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        h = model(x, training=True, frozen_stages=5)
        loss = tf.reduce_sum(h**2)
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(g is None or not np.any(g.numpy()) for g in grads)
    assert tape.gradient(loss, x) is None
    for a, b in zip(before, _moving_stats(model.stages), strict=True):
        np.testing.assert_array_equal(a, b)
    # Same as the inference-mode encoder.
    np.testing.assert_allclose(h.numpy(), model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)


def test_frozen_stages_two_trains_the_rest():
    keras.utils.set_random_seed(5)
    model = ResNet(18, 0.125, cifar_stem=True)
    x = tf.constant(np.random.default_rng(5).uniform(size=(4, 8, 8, 3)).astype("float32"))
    model(x, training=True)
    frozen_before = _moving_stats(model.stages[:2])
    free_before = _moving_stats(model.stages[2:])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True, frozen_stages=2) ** 2)
    frozen_vars = {id(v) for s in model.stages[:2] for v in s.trainable_weights}
    grads = tape.gradient(loss, model.trainable_weights)
    for v, g in zip(model.trainable_weights, grads, strict=True):
        if id(v) in frozen_vars:
            assert g is None
    assert any(g is not None and np.any(g.numpy()) for g in grads)
    for a, b in zip(frozen_before, _moving_stats(model.stages[:2]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(free_before, _moving_stats(model.stages[2:]), strict=True)
    )


def test_freeze_stages_marks_stages_non_trainable():
    model = ResNet(18, 0.125, cifar_stem=True)
    model.build((None, 8, 8, 3))
    n_all = len(model.trainable_weights)
    model.freeze_stages(3)
    assert [s.trainable for s in model.stages] == [False, False, False, True, True]
    assert len(model.trainable_weights) == sum(len(s.trainable_weights) for s in model.stages[3:])
    assert len(model.trainable_weights) < n_all
    x = tf.constant(np.random.default_rng(6).uniform(size=(2, 8, 8, 3)).astype("float32"))
    before = _moving_stats(model.stages[:3])
    model(x, training=True)  # non-trainable BN runs in inference mode: stats unchanged
    for a, b in zip(before, _moving_stats(model.stages[:3]), strict=True):
        np.testing.assert_array_equal(a, b)
    model.freeze_stages(0)
    assert len(model.trainable_weights) == n_all
    with pytest.raises(ValueError, match="0..5"):
        model.freeze_stages(6)


def test_traces_once_under_tf_function():
    model = ResNet(18, 0.125, cifar_stem=True)
    model.build((None, 8, 8, 3))
    opt = keras.optimizers.SGD(0.1, momentum=0.9)
    opt.build(model.trainable_variables)  # variables created outside: a variable-creating
    # first call would make tf.function trace twice by design.

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(x, training=True) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return loss

    rng = np.random.default_rng(7)
    for _ in range(3):
        step(tf.constant(rng.uniform(size=(2, 8, 8, 3)).astype("float32")))
    assert step.experimental_get_tracing_count() == 1


# -- SimCLRv2 options --------------------------------------------------------------------------


def test_squeeze_excite_matches_numpy():
    keras.utils.set_random_seed(8)
    se = SqueezeExcite(channels=6, reduced=2)
    x = np.random.default_rng(8).normal(size=(3, 4, 5, 6)).astype("float32")
    se.build(x.shape)
    se.expand.bias.assign(np.linspace(-1.0, 1.0, 6).astype("float32"))  # make biases matter
    se.reduce.bias.assign(np.array([0.2, -0.1], "float32"))
    y = se(tf.constant(x)).numpy()
    w1, b1 = se.reduce.kernel.numpy(), se.reduce.bias.numpy()
    w2, b2 = se.expand.kernel.numpy(), se.expand.bias.numpy()
    s = np.maximum(x.mean((1, 2)) @ w1 + b1, 0.0) @ w2 + b2
    ref = x / (1.0 + np.exp(-s))[:, None, None, :]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    assert w1.shape == (6, 2) and w2.shape == (2, 6)


def test_selective_kernel_attention():
    keras.utils.set_random_seed(9)
    sk = SelectiveKernel(filters=4, strides=2, sk_ratio=0.5, min_dim=3)
    assert sk.mid_dim == 3
    x = tf.constant(np.random.default_rng(9).normal(size=(5, 6, 6, 3)).astype("float32"))
    out, att = sk(x, training=True, return_attention=True)
    assert tuple(out.shape) == (5, 3, 3, 4) and tuple(att.shape) == (5, 2, 4)
    att = att.numpy()
    np.testing.assert_allclose(att.sum(axis=1), 1.0, rtol=1e-6)
    assert (att > 0).all() and not np.allclose(att, 0.5)  # input-dependent mixing
    # Recompute: branches from the 2x-wide conv, softmax over 2 logits per channel.
    branches = tf.split(sk.conv_bn(sk.conv(x), training=True), 2, axis=-1)
    a, b = (t.numpy() for t in branches)
    np.testing.assert_allclose(
        out.numpy(), a * att[:, None, None, 0] + b * att[:, None, None, 1], rtol=1e-4, atol=1e-5
    )
    pooled = (a + b).mean((1, 2))
    z = pooled @ sk.fc_reduce.kernel.numpy()
    z = np.maximum((z - z.mean(0)) / np.sqrt(z.var(0) + EPS), 0.0)
    logits = (z @ sk.fc_expand.kernel.numpy()).reshape(5, 2, 4)
    ref = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(att, ref, rtol=1e-4, atol=1e-5)


def test_sk_se_resnet50_shapes_and_resnet_d():
    keras.utils.set_random_seed(10)
    model = ResNet(50, 0.125, sk_ratio=0.0625, se_ratio=0.25)
    x = tf.constant(np.random.default_rng(10).uniform(size=(2, 32, 32, 3)).astype("float32"))
    ends = model.call_endpoints(x, training=True)
    assert tuple(ends["initial_conv"].shape) == (2, 16, 16, 8)
    assert tuple(ends["block_group4"].shape) == (2, 1, 1, 256)
    stem = model.stages[0]
    assert [tuple(c.conv.kernel.shape) for c in stem.conv_layers[::2]] == [
        (3, 3, 3, 4),
        (3, 3, 4, 4),
        (3, 3, 4, 8),
    ]
    block = model.stages[2].block_layers[0]
    assert block.projection.resnet_d and isinstance(block.residual_layers[2], SelectiveKernel)
    assert block.se.reduced == 4 and block.se.channels == 64
    # ResNet-D shortcut (stride 2): pad (0, 1), 2x2 average pool, 1x1 conv, BN.
    h = ends["block_group1"].numpy()
    sc = block.shortcut(tf.constant(h), training=True).numpy()
    hp = np.pad(h, [(0, 0), (0, 1), (0, 1), (0, 0)])
    pooled = 0.25 * (
        hp[:, 0:-1:2, 0:-1:2] + hp[:, 1::2, 0:-1:2] + hp[:, 0:-1:2, 1::2] + hp[:, 1::2, 1::2]
    )
    ref = _np_bn_train(pooled @ block.projection.conv.conv.kernel.numpy()[0, 0])
    np.testing.assert_allclose(sc, ref, rtol=1e-3, atol=1e-4)


def test_mixed_precision_and_config_roundtrip():
    model = ResNet(18, 0.125, cifar_stem=True, dtype="mixed_float16")
    x = np.random.default_rng(11).uniform(size=(2, 8, 8, 3)).astype("float32")
    y = model(x, training=True)
    assert y.dtype == tf.float16 and np.isfinite(y.numpy()).all()
    assert all(w.dtype == "float32" for w in model.weights)
    clone = ResNet.from_config(model.get_config())
    clone.build((None, 8, 8, 3))
    assert clone.dtype_policy.name == "mixed_float16"
    assert _count(clone.weights) == _count(model.weights)
    assert clone.get_config() == {**model.get_config(), "name": clone.name}


def test_global_bn_two_replicas_match_one_device_on_global_batch():
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs 2 logical CPU devices (see conftest.py)")
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
    keras.utils.set_random_seed(12)
    single = ResNet(18, 0.125, cifar_stem=True, global_bn=True)
    single.build((None, 8, 8, 3))
    with strategy.scope():
        dist = ResNet(18, 0.125, cifar_stem=True, global_bn=True)
        dist.build((None, 8, 8, 3))
    dist.set_weights(single.get_weights())
    x = np.random.default_rng(12).uniform(size=(4, 8, 8, 3)).astype("float32")
    x[:2] *= 0.3  # replicas see different statistics

    def loss_fn(model, xb):
        return tf.reduce_sum(model(xb, training=True) * tf.range(64, dtype=tf.float32))

    with tf.GradientTape() as tape:
        loss = loss_fn(single, tf.constant(x))
    ref_grads = tape.gradient(loss, single.trainable_weights)

    @tf.function
    def replica_step(xb):
        with tf.GradientTape() as tape:
            loss = loss_fn(dist, xb)
        return loss, tape.gradient(loss, dist.trainable_weights)

    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(x[2 * ctx.replica_id_in_sync_group :][:2])
    )
    losses, grads = strategy.run(replica_step, args=(values,))
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None).numpy()
    np.testing.assert_allclose(total, loss.numpy(), rtol=1e-4)
    for g, r in zip(grads, ref_grads, strict=True):
        g = strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None).numpy()
        r = r.numpy()  # float32 round-off: tolerance relative to the gradient's scale
        np.testing.assert_allclose(g, r, rtol=2e-3, atol=2e-5 * np.abs(r).max())
    mm = [w for w in dist.non_trainable_weights if "moving_mean" in w.path][-1]
    mm_ref = [w for w in single.non_trainable_weights if "moving_mean" in w.path][-1]
    np.testing.assert_allclose(mm.numpy(), mm_ref.numpy(), rtol=1e-4, atol=1e-5)


def test_tf_train_checkpoint_roundtrip(tmp_path):
    """Every variable (incl. BN statistics) reaches a tf.train.Checkpoint and is restored."""
    kw = {"depth": 50, "width_multiplier": 0.125, "sk_ratio": 0.0625, "se_ratio": 0.25}
    keras.utils.set_random_seed(13)
    src = ResNet(**kw)
    src.build((None, 16, 16, 3))
    src(np.random.default_rng(13).uniform(size=(2, 16, 16, 3)).astype("float32"), training=True)
    path = tf.train.Checkpoint(model=src).save(str(tmp_path / "ckpt"))
    stored = {name for name, _ in tf.train.list_variables(path) if name.startswith("model/")}
    assert len(stored) == len(src.weights)
    dst = ResNet(**kw)
    dst.build((None, 16, 16, 3))
    assert not all(
        np.array_equal(a, b) for a, b in zip(src.get_weights(), dst.get_weights(), strict=True)
    )
    tf.train.Checkpoint(model=dst).restore(path).assert_existing_objects_matched()
    for a, b in zip(src.weights, dst.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_first_block_projection_adds_only_group1_projection():
    """The reference ResNet-18/34 layout: a projection on group 1's first block as well (the
    other groups' first blocks change shape and have one anyway); the default has none there."""
    shape = (None, 32, 32, 3)
    plain = ResNet(18, 0.25, cifar_stem=True)
    plain.build(shape)
    reference = ResNet(18, 0.25, cifar_stem=True, first_block_projection=True)
    reference.build(shape)
    c = 16  # 64 * 0.25
    assert _count(reference.trainable_weights) - _count(plain.trainable_weights) == (
        _conv(1, c, c) + _bn(c)
    )
    assert plain.block_group1.block1.projection is None
    assert reference.block_group1.block1.projection is not None
    assert reference.block_group1.block2.projection is None
    assert ResNet.from_config(reference.get_config()).first_block_projection


# -- residual blocks with non-zero weights against a NumPy forward pass ------------------------


def _np_conv(x: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """NHWC convolution with the reference's padding: k - 1 zeros split (k-1)//2 before."""
    k = kernel.shape[0]
    beg = (k - 1) // 2
    x = np.pad(x, [(0, 0), (beg, k - 1 - beg), (beg, k - 1 - beg), (0, 0)])
    h = (x.shape[1] - k) // stride + 1
    w = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], h, w, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            patch = x[
                :, i : i + stride * (h - 1) + 1 : stride, j : j + stride * (w - 1) + 1 : stride
            ]
            out += patch @ kernel[i, j]
    return out


def _np_bn(x: np.ndarray, bn: BatchNorm) -> np.ndarray:
    """Inference-mode BN with the layer's (randomised) statistics and parameters."""
    gamma = bn.gamma.numpy() if bn.gamma is not None else 1.0
    beta = bn.beta.numpy() if bn.beta is not None else 0.0
    return gamma * (x - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + EPS) + beta


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _randomise(layer: keras.layers.Layer, seed: int) -> None:
    """Every weight non-zero and random: gammas away from 0 (the zero-init of the last BN would
    hide the residual branch), positive variances, biases that matter."""
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        name = v.path.split("/")[-1]
        shape = tuple(v.shape)
        if name == "moving_variance":
            value = rng.uniform(0.5, 2.0, shape)
        elif name == "gamma":
            value = rng.uniform(0.5, 1.5, shape) * rng.choice([-1, 1], shape)
        elif name in ("beta", "moving_mean", "bias"):
            value = rng.normal(0.0, 0.5, shape)
        else:  # kernels: unit-ish gain so activations neither vanish nor explode
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        v.assign(value.astype("float32"))


def _conv_kernel(layer: FixedPaddingConv2D) -> np.ndarray:
    return layer.conv.kernel.numpy()


def _np_shortcut(block, x: np.ndarray) -> np.ndarray:
    if block.projection is None:
        return x
    p = block.projection
    if p.resnet_d:  # pad (0, 1), 2x2 average pool with the stride, then 1x1 conv
        s = p.strides
        xp = np.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
        h, w = (xp.shape[1] - 2) // s + 1, (xp.shape[2] - 2) // s + 1
        x = (
            sum(
                xp[:, i : i + s * (h - 1) + 1 : s, j : j + s * (w - 1) + 1 : s]
                for i in range(2)
                for j in range(2)
            )
            / 4.0
        )
        return _np_bn(_np_conv(x, _conv_kernel(p.conv), 1), p.bn.bn)
    return _np_bn(_np_conv(x, _conv_kernel(p.conv), p.strides), p.bn.bn)


def _np_se(se: SqueezeExcite, x: np.ndarray) -> np.ndarray:
    s = _relu(x.mean((1, 2)) @ se.reduce.kernel.numpy() + se.reduce.bias.numpy())
    s = s @ se.expand.kernel.numpy() + se.expand.bias.numpy()
    return x / (1.0 + np.exp(-s))[:, None, None, :]


def _np_sk(sk: SelectiveKernel, x: np.ndarray) -> np.ndarray:
    y = _relu(_np_bn(_np_conv(x, _conv_kernel(sk.conv), sk.strides), sk.conv_bn.bn))
    a, b = y[..., : sk.filters], y[..., sk.filters :]
    z = _relu(_np_bn((a + b).mean((1, 2)) @ sk.fc_reduce.kernel.numpy(), sk.fc_reduce_bn.bn))
    logits = (z @ sk.fc_expand.kernel.numpy()).reshape(-1, 2, sk.filters)
    att = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return a * att[:, None, None, 0] + b * att[:, None, None, 1]


def _np_block(block, x: np.ndarray) -> np.ndarray:
    """The residual block of the SimCLR reference, written out: ReLU after every BN but the
    last, the stride in the first 3x3 (basic) or the middle 3x3 / SK conv (bottleneck), SE on
    the residual branch after its last BN, ReLU after the addition."""
    layers = {layer.name: layer for layer in block.residual_layers}
    if "conv3" not in layers:  # basic: 3x3 (strided) - BN - ReLU - 3x3 - BN
        r = _relu(
            _np_bn(_np_conv(x, _conv_kernel(layers["conv1"]), block.strides), layers["bn1"].bn)
        )
        r = _np_bn(_np_conv(r, _conv_kernel(layers["conv2"]), 1), layers["bn2"].bn)
    else:  # bottleneck: 1x1 - BN - ReLU - 3x3 (strided) or SK - BN - ReLU - 1x1 - BN
        r = _relu(_np_bn(_np_conv(x, _conv_kernel(layers["conv1"]), 1), layers["bn1"].bn))
        if "sk" in layers:
            r = _np_sk(layers["sk"], r)
        else:
            r = _relu(
                _np_bn(_np_conv(r, _conv_kernel(layers["conv2"]), block.strides), layers["bn2"].bn)
            )
        r = _np_bn(_np_conv(r, _conv_kernel(layers["conv3"]), 1), layers["bn3"].bn)
    if block.se is not None:
        r = _np_se(block.se, r)
    return _relu(r + _np_shortcut(block, x))


@pytest.mark.parametrize(
    "kind, strides, in_channels, sk_ratio, se_ratio",
    [
        ("basic", 2, 4, 0.0, 0.0),  # projection shortcut, strided first conv
        ("basic", 1, 6, 0.0, 0.0),  # identity shortcut
        ("bottleneck", 2, 8, 0.0, 0.0),  # strided middle conv, projection shortcut
        ("bottleneck", 1, 12, 0.0, 0.0),  # identity shortcut (in = 4 x filters)
        ("bottleneck", 2, 8, 0.5, 0.0),  # SK middle conv, ResNet-D shortcut
        ("bottleneck", 2, 8, 0.0, 0.5),  # SE gate on the residual branch
        ("basic", 1, 6, 0.0, 0.5),  # SE with an identity shortcut
    ],
)
def test_residual_block_with_random_weights_matches_numpy(
    kind, strides, in_channels, sk_ratio, se_ratio
):
    from simclr_tf.models.blocks import BasicBlock, BottleneckBlock

    keras.utils.set_random_seed(20)
    cls = BasicBlock if kind == "basic" else BottleneckBlock
    block = cls(
        3 if kind == "bottleneck" else 6,
        strides,
        in_channels=in_channels,
        sk_ratio=sk_ratio,
        se_ratio=se_ratio,
    )
    x = np.random.default_rng(21).normal(size=(2, 7, 6, in_channels)).astype("float32")
    block.build(x.shape)
    _randomise(block, seed=22)
    y = block(tf.constant(x), training=False).numpy()
    ref = _np_block(block, x.astype(np.float64))
    assert y.shape == ref.shape == (2, -(-7 // strides), -(-6 // strides), block.out_channels)
    # The residual branch really contributes (unlike with zero-initialised last BN scales).
    shortcut_only = _relu(_np_shortcut(block, x.astype(np.float64)))
    assert np.abs(ref - shortcut_only).mean() > 0.1
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
