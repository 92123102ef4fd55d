"""Official SimCLR checkpoints (google-research/simclr): loaded, converted, fine-tuned, exported.

The fixtures in ../shared/official_checkpoints were written by the reference code (random
weights) together with the reference model's outputs on fixed images (expected.npz). Every
endpoint must agree within 1e-4 x max|expected| (float32 noise is ~1e-6; a wrong BN epsilon
gives ~4e-3, a wrong mapping ~1). The architecture is inferred from the checkpoints: meta.json
is never read here.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import require_shared

from simclr_tf import checkpoints, official, restore, train
from simclr_tf.config import Config
from simclr_tf.official import OfficialCheckpointError, convert, load_official

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "official_checkpoints"
TOLERANCE = 1e-4
# folder -> path given to the loader (a folder, a prefix or a SavedModel folder).
PATHS = {
    "tf2_ckpt_r50_sk1": "tf2_ckpt_r50_sk1",
    "tf2_savedmodel_r50_sk0": "tf2_savedmodel_r50_sk0/saved_model",
    "tf2_ckpt_r18_cifar": "tf2_ckpt_r18_cifar/ckpt-500",
    "tf1_ckpt_r50_sk1": "tf1_ckpt_r50_sk1/model.ckpt-2000",
}
TF1 = FIXTURES / "tf1_ckpt_r50_sk1" / "model.ckpt-2000"
CIFAR = FIXTURES / "tf2_ckpt_r18_cifar"


@pytest.fixture(autouse=True)
def _fixtures_present():
    """Skips when the fixtures are absent; fails instead under CI (SIMCLR_REQUIRE_DATA)."""
    require_shared(FIXTURES, "official checkpoint fixtures")


def expected(folder: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / folder / "expected.npz") as data:
        return {k: data[k] for k in data.files}


def relative_differences(outputs, reference: dict[str, np.ndarray]) -> dict[str, float]:
    """max|ours - reference| / max|reference| for every reference endpoint but the images."""
    out = {}
    for key, want in reference.items():
        if key == "images":
            continue
        got = np.asarray(outputs[key])
        assert got.shape == want.shape, (key, got.shape, want.shape)
        out[key] = float(np.abs(got - want).max() / np.abs(want).max())
    return out


@pytest.mark.parametrize("folder", sorted(PATHS))
def test_fixture_endpoints_match_reference(folder):
    model, info = load_official(str(FIXTURES / PATHS[folder]))
    ref = expected(folder)
    diffs = relative_differences(official.reference_endpoints(model, ref["images"]), ref)
    assert len(diffs) >= 9  # every endpoint of the fixture, initial_conv .. logits_sup
    assert max(diffs.values()) < TOLERANCE, diffs
    # What the checkpoint says about itself, read from its variables alone.
    widths = {"tf2_ckpt_r50_sk1": 0.125, "tf1_ckpt_r50_sk1": 0.125}
    assert info.arch.width_multiplier == widths.get(folder, 0.25)
    assert info.arch.depth == (18 if "r18" in folder else 50)
    assert (info.arch.sk_ratio > 0) == ("sk1" in folder)
    assert info.arch.cifar_stem == ("cifar" in folder)
    assert info.arch.first_block_projection == ("r18" in folder)
    assert info.head.num_classes == 10 and info.head.proj_out_dim == 128
    assert info.head.proj_layers == (2 if "r18" in folder else 3)
    assert info.global_step == {
        "tf2_ckpt_r50_sk1": 1000,
        "tf2_ckpt_r18_cifar": 500,
        "tf1_ckpt_r50_sk1": 2000,
    }.get(folder)
    # Only a SavedModel can say which projection layer its supervised head reads (by running).
    assert info.selector_measured == ("savedmodel" in folder)
    assert info.config.ft_proj_selector == 0


def test_saved_model_selector_mismatch_is_refused():
    path = str(FIXTURES / PATHS["tf2_savedmodel_r50_sk0"])
    model, info = load_official(path, ft_proj_selector=2)  # given: taken as is
    assert not info.selector_measured and model.ft_proj_selector == 2
    with pytest.raises(OfficialCheckpointError, match="pass --ft_proj_selector=0"):
        restore.restore_model_weights(model, path)


# --------------------------------------------------------------------------------------------
# Hand-made TF1 checkpoints: published extras, and what must fail
# --------------------------------------------------------------------------------------------


def write_tf1(prefix: pathlib.Path, tensors: dict[str, np.ndarray]) -> str:
    """A name-based (TF1-style) checkpoint: no object graph, just names."""
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[n]) for n in names],
    )
    return str(prefix)


@pytest.fixture(scope="module")
def tf1_tensors() -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(str(TF1))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def test_tf1_v1_style_ema_and_memory(tmp_path, tf1_tensors):
    """No head_contrastive (SimCLRv1), plus ema_model/ copies and memory (SimCLRv2)."""
    tensors = {k: v for k, v in tf1_tensors.items() if not k.startswith("head_contrastive/")}
    weights = [
        k
        for k in tensors
        if k.startswith(("base_model/", "head_supervised/")) and not k.endswith("/Momentum")
    ]
    tensors.update({f"ema_model/{k}": tensors[k] * 0.5 for k in weights})
    tensors["memory"] = np.ones([16, 128], np.float32)
    tensors["queue/state"] = np.zeros([4], np.float32)  # not under a model scope: set aside
    write_tf1(tmp_path / "model.ckpt-7", tensors)
    path = str(tmp_path)  # a folder without a usable `checkpoint` file: newest *.index

    model, info = load_official(path)
    assert info.global_step == 2000 and info.prefix.endswith("model.ckpt-7")
    assert info.head.proj_layers == 0 and "projection head" in " ".join(info.not_found)
    assert any("queue/state" in k for k in info.ignored), info.ignored
    ref = expected("tf1_ckpt_r50_sk1")
    out = official.reference_endpoints(model, ref["images"])
    diffs = relative_differences(out, {k: ref[k] for k in ("final_avg_pool", "logits_sup")})
    assert max(diffs.values()) < TOLERANCE, diffs
    np.testing.assert_array_equal(out["proj_head_output"], out["final_avg_pool"])  # no head

    parts = ("encoder", "supervised_head")
    ema_info = official.restore_into(model, path, parts, use_ema=True)
    ema_model = model
    kernel = ema_model.encoder.block_group2.block1.conv1.conv.kernel.numpy()
    # 3 stem convs + 6 + 5 + 5 in block_group1 (SK blocks): conv2d_19 is block_group2/block1's
    # projection, conv2d_20 its conv1.
    np.testing.assert_array_equal(kernel, tensors["ema_model/base_model/conv2d_20/kernel"])
    bias = ema_model.supervised_head.dense.bias.numpy()
    np.testing.assert_array_equal(bias, 0.5 * tensors["head_supervised/linear_layer/dense/bias"])
    assert ema_info.use_ema


@pytest.mark.parametrize(
    "change,message",
    [
        ("missing", r"missing: \['base_model/conv2d_40/kernel'\]"),
        ("extra", r"unexpected: \['base_model/conv2d_99/kernel'\]"),
        ("shape", r"wrong shape: \['base_model/batch_normalization_7/gamma \[5\]"),
    ],
)
def test_tf1_mismatch_names_the_variable(tmp_path, tf1_tensors, change, message):
    tensors = dict(tf1_tensors)
    if change == "missing":
        del tensors["base_model/conv2d_40/kernel"]
    elif change == "extra":
        tensors["base_model/conv2d_99/kernel"] = np.zeros([1, 1, 8, 8], np.float32)
    else:
        tensors["base_model/batch_normalization_7/gamma"] = np.ones([5], np.float32)
    path = write_tf1(tmp_path / "model.ckpt-1", tensors)
    with pytest.raises(OfficialCheckpointError, match=message) as err:
        load_official(path)
    assert "closest is ResNet-50 width 0.125" in str(err.value)


def test_non_simclr_checkpoints_fail_clearly(tmp_path):
    path = write_tf1(tmp_path / "other", {"dense/kernel": np.zeros([3, 2], np.float32)})
    with pytest.raises(OfficialCheckpointError, match=r"not a SimCLR checkpoint.*dense/kernel"):
        load_official(path)
    layer = tf.keras.layers.Dense(2)
    layer.build((None, 3))
    prefix = tf.train.Checkpoint(model=layer).write(str(tmp_path / "keras" / "ckpt"))
    assert not official.is_official(prefix)
    with pytest.raises(OfficialCheckpointError, match="not a reference SimCLR checkpoint"):
        load_official(prefix)
    with pytest.raises(OfficialCheckpointError, match="No checkpoint at"):
        load_official(str(tmp_path / "nothing-here"))


def test_restore_refuses_a_model_of_another_architecture():
    """A ResNet with SE gates holds every layer of the checkpoint: it must not be half-loaded
    (16 blocks x 2 SE layers x kernel + bias unfilled)."""
    model = train.build_model(
        Config(width_multiplier=0.125, sk_ratio=0.0625, se_ratio=0.25, cifar_stem=False),
        num_classes=10,
    )
    model(tf.zeros([1, 32, 32, 3]), training=False)
    with pytest.raises(OfficialCheckpointError, match=r"no values for 64 variables.*se_reduce"):
        restore.restore_pretrained(model, str(TF1))


def test_run_py_hooks_take_architecture_and_weights_from_official_checkpoint():
    """configure() + restore_pretrained(): what run.py --train_mode=finetune does."""
    cfg = convert.configure(
        Config(
            checkpoint=str(TF1.parent),
            resnet_depth=152,
            width_multiplier=4.0,
            image_size=64,
            cifar_stem=True,
        )
    )
    assert (cfg.resnet_depth, cfg.width_multiplier, cfg.cifar_stem) == (50, 0.125, False)
    assert cfg.sk_ratio == 0.0625 and cfg.num_proj_layers == 3
    model = train.build_model(cfg.replace(train_mode="finetune"), num_classes=3)
    model(tf.zeros([1, 32, 32, 3]), training=False)
    prefix = restore.restore_pretrained(model, cfg.checkpoint)
    assert prefix.endswith("model.ckpt-2000") and checkpoints.checkpoint_step(prefix) == 2000
    ref = expected("tf1_ckpt_r50_sk1")
    out = model(ref["images"], training=False)
    diffs = relative_differences(out, {k: ref[k] for k in ("final_avg_pool", "proj_head_output")})
    assert max(diffs.values()) < TOLERANCE, diffs


# --------------------------------------------------------------------------------------------
# The command: run folder, its TF Hub export, fine-tuning under run.py
# --------------------------------------------------------------------------------------------


def _subprocess(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> pathlib.Path:
    """The run folder tools/convert_checkpoint.py writes for the CIFAR fixture."""
    run_dir = tmp_path_factory.mktemp("converted") / "run"
    proc = _subprocess(
        "tools/convert_checkpoint.py", f"--checkpoint={CIFAR}", f"--model_dir={run_dir}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ResNet-18 0.25x, CIFAR stem" in proc.stdout
    return run_dir


@pytest.mark.slow  # shares the converted folder (conversion + export)
def test_convert_writes_a_run_folder(converted):
    flags = json.loads((converted / "flags.json").read_text())
    assert (flags["resnet_depth"], flags["width_multiplier"], flags["cifar_stem"]) == (
        18,
        0.25,
        True,
    )
    assert flags["first_block_projection"] and flags["image_size"] == 32
    record = json.loads((converted / "official.json").read_text())
    assert record["format"] == "tf2_checkpoint" and record["global_step"] == 500
    # The folder's checkpoint, restored the way every simclr_tf tool does (flags.json).
    cfg = Config(**{k: v for k, v in flags.items() if k in Config.__dataclass_fields__})
    model = train.build_model(cfg, num_classes=10)  # as run.py --mode=eval builds it
    schedule = train.make_schedule_for(cfg, num_train_examples=100)
    train.compile_model(cfg, model, train.build_optimizer_for(cfg, schedule))
    prefix = restore.restore_model_weights(model, str(converted))
    assert checkpoints.checkpoint_step(prefix) == 500
    ref = expected("tf2_ckpt_r18_cifar")
    diffs = relative_differences(official.reference_endpoints(model, ref["images"]), ref)
    assert max(diffs.values()) < TOLERANCE, diffs


@pytest.mark.slow  # shares the converted folder (conversion + export)
def test_convert_refuses_to_overwrite(converted):
    before = {p: p.stat().st_mtime_ns for p in converted.rglob("*")}
    with pytest.raises(OfficialCheckpointError, match="pass --overwrite"):
        convert.convert(str(CIFAR), str(converted), export=False)
    assert {p: p.stat().st_mtime_ns for p in converted.rglob("*")} == before


@pytest.mark.slow  # shares the converted folder (conversion + export)
def test_converted_model_card_names_the_source_not_a_simclr_tf_run(converted):
    """The checkpoint records neither dataset nor training flags: the card must say where the
    weights come from and must not present this package's defaults as their training."""
    card = (converted / "saved_model" / "500" / "README.md").read_text()
    assert "converted from the reference SimCLR code" in card
    assert f"`tf2_checkpoint` `{CIFAR}`" in card and "weights unchanged" in card
    assert "ResNet-18 0.25x, CIFAR stem" in card  # what was read from the checkpoint
    assert "<!-- dataset: unknown -->" in card
    for wrong in ("using simclr_tf", "Main flags", "Trained on `"):
        assert wrong not in card, wrong


@pytest.mark.slow  # shares the converted folder (conversion + export)
def test_converted_tf_hub_export_matches_reference(converted):
    import tensorflow_hub as hub

    export_dir = converted / "saved_model" / "500"
    assert not official.is_official(str(export_dir))  # simclr_tf's own SavedModel
    with pytest.raises(OfficialCheckpointError, match="not a reference SimCLR checkpoint"):
        load_official(str(export_dir))
    module = hub.load(str(export_dir))
    ref = expected("tf2_ckpt_r18_cifar")
    out = module(tf.constant(ref["images"]), training=False)
    # simclr_tf's initial_conv is after the stem's BN + ReLU: the reference's initial_max_pool
    # for a CIFAR stem (no pooling).
    ref["initial_conv"] = ref["initial_max_pool"]
    diffs = relative_differences(out, ref)
    assert max(diffs.values()) < TOLERANCE, diffs


@pytest.mark.slow
def test_converted_fine_tunes_under_run_py_and_exports(converted, tmp_path, write_png_folder):
    """Fine-tune block_group4 + a new head for 2 steps; frozen stages keep the reference's
    values, visible through the new run's export."""
    data = write_png_folder(tmp_path / "pngs", 3, {"train": 4, "test": 2}, 32)
    run_dir = tmp_path / "finetune"
    proc = _subprocess(
        "run.py",
        "--mode=train_then_eval",
        "--train_mode=finetune",
        f"--checkpoint={converted}",
        f"--model_dir={run_dir}",
        "--dataset=image_folder",
        f"--data_dir={data}",
        "--train_steps=2",
        "--train_batch_size=6",
        "--eval_batch_size=6",
        "--verbose=0",
        "--fine_tune_after_block=3",
        "--optimizer=momentum",
        "--learning_rate=0.1",
        "--resnet_depth=50",  # ignored: the checkpoint decides the architecture
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["global_step"] == 2 and result["num_examples"] == 6
    flags = json.loads((run_dir / "flags.json").read_text())
    assert flags["resnet_depth"] == 18 and flags["first_block_projection"]
    module = tf.saved_model.load(str(run_dir / "saved_model" / "2"))
    ref = expected("tf2_ckpt_r18_cifar")
    out = module(tf.constant(ref["images"]), training=False)
    frozen = {k: ref[k] for k in ("initial_max_pool", "block_group1", "block_group3")}
    assert max(relative_differences(out, frozen).values()) < TOLERANCE
    changed = relative_differences(out, {"block_group4": ref["block_group4"]})
    assert changed["block_group4"] > 1e-3  # block_group4 was trained
    assert out["logits_sup"].shape == (4, 3)
    # This run trained with simclr_tf (from converted weights): its card says so.
    card = (run_dir / "saved_model" / "2" / "README.md").read_text()
    assert "using simclr_tf (training mode `finetune`)" in card and "Main flags" in card
    assert "converted from the reference" not in card
