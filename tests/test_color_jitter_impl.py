"""--color_jitter_impl: SimCLR v1's additive brightness beside v2's multiplicative one, and the
flag reaching the op on every path (batched, per view, composed, host pipeline, device model).

A black image tells the two forms apart without any draw: multiplying 0 keeps 0 (and contrast,
saturation, hue and grayscale keep a black image black), adding delta > 0 does not.
"""

import pathlib

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from conftest import tiny_config

from simclr_tf import config, train
from simclr_tf.data.augment import color, study_ops
from simclr_tf.models.build import build_model

REPO = pathlib.Path(__file__).resolve().parents[1]


def _seed(i: int) -> tf.Tensor:
    return tf.constant([i, 7], tf.int64)


def _images(n: int = 6, side: int = 8) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (n, side, side, 3)).astype(np.float32)


def test_additive_brightness_is_clip_of_x_plus_delta():
    x = _images()
    delta = np.array([-0.7, -0.2, 0.0, 0.1, 0.4, 0.9], np.float32)
    want = np.clip(x + delta[:, None, None, None], 0.0, 1.0)
    got = color.adjust_brightness_additive(x, delta).numpy()
    np.testing.assert_allclose(got, want, atol=1e-7)


@pytest.mark.parametrize("impl", ["v1", "v2"])
def test_jitter_with_only_brightness_is_the_closed_form_on_both_paths(impl):
    """Neutral contrast/saturation/hue: the slot schedule (batched) and the per-view loop must
    give exactly the brightness op of ``impl``, in every op order (neutral slots are exact)."""
    x = _images()
    n = x.shape[0]
    value = np.array([-0.5, -0.1, 0.3, 0.6, 0.2, -0.8], np.float32)
    if impl == "v2":
        value = 1.0 + value  # a factor in [0.2, 1.6]
    params = color._jitter_params(_seed(1), n, 1.0, random_order=True, impl=impl)
    params.update(
        brightness=tf.constant(value),
        contrast=tf.ones([n]),
        saturation=tf.ones([n]),
        hue=tf.zeros([n]),
    )
    b = value[:, None, None, None]
    want = np.clip(x + b, 0, 1) if impl == "v1" else np.clip(x * b, 0, 1)
    batched = color._apply_jitter(tf.constant(x), params, impl=impl).numpy()
    np.testing.assert_allclose(batched, want, atol=1e-6)
    factors = tf.stack([params[k] for k in ("brightness", "contrast", "saturation", "hue")], 1)
    for i in range(n):
        one = color._jitter_one(tf.constant(x[i]), factors[i], params["order"][i], impl).numpy()
        np.testing.assert_allclose(one, want[i], atol=1e-6)


def test_v1_draws_an_additive_delta_of_the_paper_range():
    p = color._jitter_params(_seed(2), 4000, 0.5, impl="v1")["brightness"].numpy()
    assert p.min() >= -0.4 and p.max() <= 0.4 and p.min() < -0.35 and p.max() > 0.35


def _black_is_lit(views) -> bool:
    return bool(np.any(np.concatenate([np.asarray(v) for v in views]) > 0.01))


# The recipe's per-view path (one image) is the host pipeline's, checked below.
@pytest.mark.parametrize(("rank", "ops"), [(4, None), (4, "crop,color"), (3, "crop,color")])
def test_two_views_fn_passes_the_impl_to_the_op(rank, ops):
    black = np.zeros((8, 12, 12, 3), np.float32)
    image = black if rank == 4 else black[0]
    lit = {}
    for impl in ("v1", "v2"):
        fn = study_ops.two_views_fn(8, 1.0, False, ops, color_jitter_impl=impl)
        views = []
        for s in range(4 if rank == 3 else 1):
            views += [v[np.newaxis] if rank == 3 else v for v in fn(image, _seed(10 + s))]
        lit[impl] = _black_is_lit(views)
    assert lit == {"v1": True, "v2": False}


def test_the_flag_reaches_the_host_pipeline_and_the_device_model(monkeypatch):
    black = np.zeros((16, 16, 16, 3), np.uint8)
    source = tf.data.Dataset.from_tensor_slices((black, np.zeros(16, np.int32)))
    monkeypatch.setattr(train, "load_train_split", lambda cfg, **kw: (source, None))
    one_pipeline = lambda strategy, fn: fn(tf.distribute.InputContext())  # noqa: E731
    monkeypatch.setattr(train.pipeline, "distribute", one_pipeline)
    # The host pipeline with v1 only: each form XLA-compiles its per-view jitter (seconds), and
    # v2's per-view op is checked against its closed form above.
    cfg = tiny_config(color_jitter_impl="v1", color_jitter_strength=1.0)
    (v1, v2), _ = next(iter(train.train_dataset(cfg, tf.distribute.get_strategy(), 0)))
    assert _black_is_lit([v1, v2])
    for impl, expect in (("v1", True), ("v2", False)):
        cfg = tiny_config(color_jitter_impl=impl, color_jitter_strength=1.0)
        model = build_model(cfg.replace(augment_on="device"), 10)
        assert _black_is_lit(model.augment_fn(tf.constant(black), _seed(3))) is expect, impl


def _preset(name: str) -> config.Config:
    fv = flags.FlagValues()
    config.define_flags(fv)
    fv(["prog", f"--flagfile={REPO / 'flags' / name}", "--model_dir=/nonexistent"])
    cfg = config.Config.from_flags(fv)
    # The presets leave the run's inputs to the command line: --checkpoint, --teacher_checkpoint.
    teacher = "/teacher" if cfg.train_mode == "distill" else ""
    return cfg.replace(checkpoint="none", teacher_checkpoint=teacher).validate()


def test_presets_parse_and_name_the_recipes_they_claim():
    for path in sorted((REPO / "flags").glob("*.cfg")):
        _preset(path.name)  # every preset's flags exist and validate
    for pct in ("1", "10"):  # the reference README's SimCLRv2 fine-tuning command
        cfg = _preset(f"imagenet_finetune_{pct}pct.cfg")
        assert (cfg.num_proj_layers, cfg.ft_proj_selector) == (3, 1)
    v2 = _preset("imagenet_pretrain_r50_v2.cfg")
    assert (v2.num_proj_layers, v2.color_jitter_impl, v2.weight_decay) == (3, "v2", 1e-4)
    for name in ("imagenet_pretrain_r50.cfg", "cifar10_pretrain_r18.cfg"):
        assert _preset(name).color_jitter_impl == "v1"
    assert config.Config().color_jitter_impl == "v2"  # the reference data_util's default
