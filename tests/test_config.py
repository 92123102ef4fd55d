"""Flags -> Config: validation messages, dataset-dependent defaults, the step schedule."""

import dataclasses
import functools
import math

import pytest
from absl import flags

from simclr_tf import config, config_checks, config_defaults, schedule
from simclr_tf.data import recipe

# The defaults of the settings table itself (not conftest.tiny_config): only a model_dir.
_cfg = functools.partial(config.Config, model_dir="/tmp/x")


def test_flags_and_config_fields_agree():
    config.define_flags()
    config.define_flags()  # idempotent
    names = {f for f in config.Config.__dataclass_fields__}
    for name in names:
        assert name in flags.FLAGS, name
    fv = flags.FlagValues()
    # Parsing a fresh FlagValues with the real definitions gives the dataclass defaults.
    for name in names:
        fv[name] = flags.FLAGS[name]  # share definitions
    fv(["prog", "--model_dir=/tmp/m", "--train_batch_size=4096"])
    cfg = config.Config.from_flags(fv)
    assert cfg.train_batch_size == 4096
    assert cfg.optimizer == "lars" and cfg.temperature == 0.1
    assert cfg.replace(model_dir=None).model_dir is None


@pytest.mark.parametrize(
    "changes, needle",
    [
        (dict(model_dir=None), "--model_dir is required"),
        (dict(train_steps=0, train_epochs=0), "set one of them > 0"),
        (dict(image_size=4), "at least 8"),
        (dict(resnet_depth=20), "--resnet_depth=20"),
        (dict(train_mode="finetune"), "--checkpoint=PATH"),
        (dict(train_data_fraction=0.0), "(0, 1]"),
        (dict(fine_tune_after_block=5), "[-1, 4]"),
        (dict(proj_head_mode="none", ft_proj_selector=1), "[0, 0]"),
        (dict(micro_batch_size=3, train_batch_size=8), "not a multiple"),
        (dict(use_tpu=True, strategy="mirrored"), "--use_tpu contradicts"),
        (dict(temperature=0.0), "--temperature"),
    ],
)
def test_validate_names_the_fix(changes, needle):
    with pytest.raises(config.ConfigError) as e:
        _cfg(**changes).validate()
    assert needle in str(e.value)


def test_valid_config_passes():
    assert _cfg().validate().model_dir == "/tmp/x"
    _cfg(train_mode="finetune", checkpoint="none").validate()
    _cfg(mode="eval", train_epochs=0).validate()


def test_resolve_small_and_large_images():
    small = config_defaults.resolve(_cfg(), 32, ("train", "test"))
    assert (small.image_size, small.cifar_stem, small.use_blur) == (32, True, False)
    assert small.color_jitter_strength == 0.5 and small.eval_split == "test"
    large = config_defaults.resolve(_cfg(), None, ("train", "validation", "test"))
    assert (large.image_size, large.cifar_stem, large.use_blur) == (224, False, True)
    assert large.color_jitter_strength == 1.0 and large.eval_split == "validation"
    explicit = config_defaults.resolve(
        _cfg(image_size=64, use_blur=False, cifar_stem=True), 32, ("train",)
    )
    assert (explicit.image_size, explicit.use_blur, explicit.cifar_stem) == (64, False, True)
    assert config_defaults.resolve(_cfg(use_tpu=True), 32, ("train", "test")).strategy == "tpu"
    with pytest.raises(config.ConfigError, match="--eval_split"):
        config_defaults.resolve(_cfg(mode="eval"), 32, ("train",))


def test_schedule_from_epochs_and_steps():
    cfg = _cfg(train_batch_size=256, train_epochs=3, warmup_epochs=0.5, checkpoint_epochs=1)
    s = schedule.make_schedule(cfg, 1000, 0.3)
    spe = math.ceil(1000 / 256)
    assert (s.steps_per_epoch, s.total_steps) == (spe, 3 * spe)
    assert s.warmup_steps == round(0.5 * spe) and s.checkpoint_steps == spe
    s2 = schedule.make_schedule(cfg.replace(train_steps=7, checkpoint_steps=5), 1000, 0.3)
    assert (s2.total_steps, s2.checkpoint_steps) == (7, 5)
    s3 = schedule.make_schedule(cfg.replace(train_steps=2), 1000, 0.3)
    assert s3.checkpoint_steps == 2  # never beyond the end
    with pytest.raises(config.ConfigError, match="empty"):
        schedule.make_schedule(cfg, 0, 0.3)


def test_frozen_stages_follow_fine_tune_after_block():
    assert _cfg().frozen_stages == 0
    ft = _cfg(train_mode="finetune", checkpoint="x")
    assert [ft.replace(fine_tune_after_block=b).frozen_stages for b in (-1, 0, 4)] == [0, 1, 5]
    assert ft.replace(fine_tune_after_block=4).is_linear_eval


def test_every_flag_is_generated_from_its_config_field():
    config.define_flags()
    for field in dataclasses.fields(config.Config):
        flag = flags.FLAGS[field.name]
        assert flag.default == field.default, field.name
        assert field.metadata["help"] in flag.help, field.name
        choices = field.metadata["choices"]
        if choices is not None:
            assert list(flag.parser.enum_values) == list(choices), field.name
    assert flags.FLAGS["mode"].parser.enum_values == list(config.MODES)
    assert flags.FLAGS["resnet_depth"].parser.flag_type() == "int"
    assert flags.FLAGS["use_blur"].parser.flag_type() == "bool"
    assert flags.FLAGS["warmup_epochs"].parser.flag_type() == "float"


def test_derived_rules_are_written_once():
    assert [config_checks.head_depth(m, 3) for m in config.PROJ_HEAD_MODES] == [0, 1, 3]
    assert _cfg(use_tpu=True).strategy_name == "tpu"
    assert _cfg(strategy="mirrored").strategy_name == "mirrored"
    assert (recipe.default_color_strength(32), recipe.default_color_strength(33)) == (0.5, 1.0)
    assert (recipe.default_use_blur(32), recipe.default_use_blur(33)) == (False, True)
    config_checks.check_micro_batch(12, 4, "x")
    with pytest.raises(
        config.ConfigError, match="x \\(12 images\\) is not a multiple of --micro_batch_size=5"
    ):
        config_checks.check_micro_batch(12, 5, "x")


def test_user_errors_share_one_base():
    from simclr_tf import callbacks, checkpoints, distribute, export, model_dir
    from simclr_tf.data import sources
    from simclr_tf.errors import UserError

    for error in (
        config.ConfigError,
        sources.DataError,
        checkpoints.CheckpointError,
        model_dir.ModelDirError,
        distribute.StrategyError,
        callbacks.NonFiniteLossError,
        export.ExportError,
    ):
        assert issubclass(error, UserError), error
