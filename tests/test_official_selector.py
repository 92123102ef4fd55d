"""ft_proj_selector of published TF1/TF2 checkpoints, read off their optimizer slots (issue 24,
item 3): fine-tuning from projection layer k trains, below the supervised head, only head layers
0..k-1, so their slots say k; without slots to tell, loading refuses instead of guessing 0."""

import dataclasses
import pathlib

import pytest

from simclr_tf.errors import UserError
from simclr_tf.official import load

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "official_checkpoints"
TF1 = FIXTURES / "tf1_ckpt_r50_sk1"


@pytest.fixture(scope="module")
def tf1():
    from conftest import require_shared

    require_shared(TF1, "TF1 reference checkpoint fixture")
    return load.inspect(str(TF1))


def _head_keys(layer_slots, *layers: int) -> set[str]:
    keys = set()
    for s in layer_slots:
        if s.ours[0] == "projection_head" and int(s.ours[1].split("_")[1]) in layers:
            keys |= set(s.variables())
    return keys


def test_tf1_fixture_with_an_untrained_contrastive_head_has_selector_0(tf1):
    source, _, head, layer_slots = tf1
    assert head.proj_layers == 3 and head.num_classes == 10
    assert not _head_keys(layer_slots, 0, 1, 2) & source.trained  # as its README says
    assert load.trained_selector(source, head, layer_slots) == 0


@pytest.mark.parametrize(
    ("trained_layers", "want"),
    [((0,), 1), ((0, 1), 2), ((0, 1, 2), 0), ((1,), None), ((0, 2), None)],
)
def test_synthetic_slots_give_the_selector_or_none(tf1, trained_layers, want):
    source, _, head, layer_slots = tf1
    trained = source.trained | _head_keys(layer_slots, *trained_layers)
    fake = dataclasses.replace(source, trained=frozenset(trained))
    assert load.trained_selector(fake, head, layer_slots) == want


def test_no_slots_to_tell_refuses_naming_the_flag(tf1, monkeypatch):
    source, arch, head, layer_slots = tf1
    untold = dataclasses.replace(source, trained=None)
    assert load.trained_selector(untold, head, layer_slots) is None
    found = (untold, arch, head, layer_slots)
    monkeypatch.setattr(load, "inspect", lambda path, use_ema=False: found)
    with pytest.raises(UserError, match="--ft_proj_selector") as err:
        load.load_official(str(TF1))
    assert "\n" not in str(err.value)
    no_sup = [s for s in layer_slots if s.ours[0] == "supervised_head"][0]
    sup_untrained = dataclasses.replace(source, trained=source.trained - set(no_sup.variables()))
    assert load.trained_selector(sup_untrained, head, layer_slots) is None


def test_eval_refuses_a_selector_the_slots_contradict(tf1):
    model, info = load.load_official(str(TF1), ft_proj_selector=1)  # explicit: no inference
    assert info.config.ft_proj_selector == 1
    parts = ("encoder", "projection_head", "supervised_head")
    with pytest.raises(UserError, match="--ft_proj_selector=0"):
        load.restore_into(model, str(TF1), parts)


def test_an_untold_teacher_names_the_converter(tf1, monkeypatch):
    from simclr_tf import restore

    source, arch, head, layer_slots = tf1
    found = (dataclasses.replace(source, trained=None), arch, head, layer_slots)
    monkeypatch.setattr(load, "inspect", lambda path, use_ema=False: found)
    with pytest.raises(UserError, match="convert_checkpoint.py --ft_proj_selector"):
        restore._official_teacher(str(TF1), 10)


def test_mode_eval_reads_the_selector_or_asks_for_the_flag(tf1, monkeypatch):
    """--mode=eval of an official checkpoint: the slots' selector, never a silent default."""
    from conftest import tiny_config

    from simclr_tf.official import convert

    source, arch, head, layer_slots = tf1
    cfg = tiny_config(mode="eval", checkpoint=str(TF1), ft_proj_selector=0)
    assert convert.configure(cfg).ft_proj_selector == 0  # the fixture's slots say 0
    with pytest.raises(UserError, match="--ft_proj_selector=0 or leave") as err:
        convert.configure(cfg.replace(ft_proj_selector=2), frozenset({"ft_proj_selector"}))
    assert "\n" not in str(err.value)
    # A fine-tuned checkpoint whose slots say 1, the flag left out: 1, not the default 0.
    trained = source.trained | _head_keys(layer_slots, 0)
    told = (dataclasses.replace(source, trained=frozenset(trained)), arch, head, layer_slots)
    monkeypatch.setattr(convert, "inspect", lambda path, use_ema=False: told)
    assert convert.configure(cfg).ft_proj_selector == 1
    # No slots to tell: the flag is required, and then taken as given.
    untold = (dataclasses.replace(source, trained=None), arch, head, layer_slots)
    monkeypatch.setattr(convert, "inspect", lambda path, use_ema=False: untold)
    with pytest.raises(UserError, match="pass --ft_proj_selector=N"):
        convert.configure(cfg)
    given = frozenset({"ft_proj_selector"})
    assert convert.configure(cfg.replace(ft_proj_selector=2), given).ft_proj_selector == 2
    # Training modes choose their own head input: no refusal.
    assert convert.configure(cfg.replace(mode="train")).ft_proj_selector == 0
