"""run.py end to end on a tiny CIFAR-10 subset: pretrain -> linear eval -> fine-tune -> eval.

Each stage runs ``run.py`` in a subprocess, as users do, and checks the files of the
``--model_dir`` contract and the numbers they hold against independent readings (checkpoint
values, image counts of the folder).
"""

import csv
import json
import math
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN_PER_CLASS, TEST_PER_CLASS = 8, 3

COMMON = [
    "--dataset=image_folder",
    "--resnet_depth=18",
    "--width_multiplier=0.0625",
    "--image_size=16",
    "--train_batch_size=16",
    "--eval_batch_size=7",  # 30 test images: the last partial batch must count once
    "--verbose=0",
    "--proj_out_dim=16",
    "--num_proj_layers=2",
]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, cifar10_dir) -> pathlib.Path:
    root = tmp_path_factory.mktemp("cifar_tiny")
    for split, n in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for cls in sorted(os.listdir(cifar10_dir / split)):
            (root / split / cls).mkdir(parents=True)
            for name in sorted(os.listdir(cifar10_dir / split / cls))[:n]:
                shutil.copy(cifar10_dir / split / cls / name, root / split / cls / name)
    return root


@pytest.fixture(scope="module")
def generated_folder(tmp_path_factory, write_png_folder) -> pathlib.Path:
    """Same layout as ``tiny_folder`` (10 classes, 8 + 3 images) from generated JPEGs: for the
    tests that need image files but not CIFAR-10 itself."""
    root = tmp_path_factory.mktemp("generated")
    return write_png_folder(
        root, 10, {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS}, 32, ext="jpg"
    )


@pytest.fixture(scope="module")
def pretrained(tiny_folder, tmp_path_factory, run_cli) -> pathlib.Path:
    model_dir = tmp_path_factory.mktemp("pretrain")
    run_cli(
        "--mode=train_then_eval",
        f"--data_dir={tiny_folder}",
        f"--model_dir={model_dir}",
        "--train_steps=4",
        "--checkpoint_steps=2",
        "--knn_every_epochs=1",
        "--knn_k=5",
        "--temperature=0.5",
        "--learning_rate=0.5",
        *COMMON,
    )
    return model_dir


def _csv_rows(path: pathlib.Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _read_ckpt(model_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """Encoder variables of the newest checkpoint, restored by object graph into a new ResNet.

    (Checkpoint keys cannot be compared directly: TF stores a trainable variable under the
    optimizer's path, a frozen one under the model's.)
    """
    from simclr_tf.models.resnet import ResNet

    encoder = ResNet(depth=18, width_multiplier=0.0625, cifar_stem=True)
    encoder(tf.zeros([1, 16, 16, 3]))
    root = tf.train.Checkpoint(model=tf.train.Checkpoint(encoder=encoder))
    root.restore(tf.train.latest_checkpoint(str(model_dir))).expect_partial()
    return {v.path.split("/", 1)[1]: v.numpy() for v in encoder.variables}


def test_pretraining_writes_the_model_dir_contract(pretrained):
    names = set(os.listdir(pretrained))
    assert {"flags.json", "checkpoint", "metrics.csv", "result.json", "result_4.json"} <= names
    assert {"ckpt-2.index", "ckpt-4.index"} <= names
    assert os.listdir(pretrained / "train") and os.listdir(pretrained / "eval")
    assert os.path.isfile(pretrained / "saved_model" / "4" / "saved_model.pb")
    flags = json.loads((pretrained / "flags.json").read_text())
    # Dataset-dependent defaults were resolved and recorded.
    assert (flags["eval_split"], flags["cifar_stem"], flags["use_blur"]) == ("test", True, False)
    assert flags["color_jitter_strength"] == 0.5
    rows = _csv_rows(pretrained / "metrics.csv")
    # 80 images / batch 16 = 5 steps per epoch; 4 steps stop inside epoch 1.
    assert [int(r["step"]) for r in rows] == [4]
    row = rows[0]
    for key in (
        "contrast_loss",
        "contrast_acc",
        "contrast_entropy",
        "supervised_loss",
        "learning_rate",
        "weight_decay",
        "knn_top1",
    ):
        assert math.isfinite(float(row[key])), key
    assert 0.0 <= float(row["knn_top1"]) <= 1.0
    result = json.loads((pretrained / "result.json").read_text())
    assert result == json.loads((pretrained / "result_4.json").read_text())
    assert result["global_step"] == 4
    assert result["num_examples"] == 10 * TEST_PER_CLASS
    assert 0.0 <= result["label_top_1_accuracy"] <= result["label_top_5_accuracy"] <= 1.0


def _model_of_run(model_dir: pathlib.Path):
    """The run's config and model, built in this process from flags.json and its checkpoint."""
    from simclr_tf import model_dir as model_dir_lib
    from simclr_tf import restore, train
    from simclr_tf.data import sources

    cfg = model_dir_lib.config_from_flags(json.loads((model_dir / "flags.json").read_text()))
    info = sources.dataset_info(cfg.dataset, cfg.data_dir)
    schedule = train.make_schedule_for(cfg, info.split_sizes[cfg.train_split])
    model = train.build_for_run(cfg, tf.distribute.get_strategy(), info, schedule)
    restore.restore_model_weights(model, str(model_dir))
    return cfg, model


def test_run_numbers_match_in_process_references(pretrained):
    """The subprocess run against references computed here: the learning rate it logged against
    the schedule in closed form, and result.json against a NumPy argmax over the logits of the
    restored model on the evaluated images."""
    from simclr_tf import evaluate

    # --learning_rate=0.5 at batch 16 (linear scaling), default 10 warmup epochs of 5 steps,
    # clipped to the 4 steps of the run; the logged value is the mean over the steps run.
    peak, total, warmup = 0.5 * 16 / 256, 4, 4

    def lr(k: int) -> float:
        return 0.0 if k >= total else peak * k / warmup

    logged = float(_csv_rows(pretrained / "metrics.csv")[0]["learning_rate"])
    expected = [
        np.mean([lr(k) for k in range(1, total + 1)]),
        np.mean([lr(k) for k in range(total)]),
    ]
    assert min(abs(logged - e) for e in expected) < 1e-7, (logged, expected)

    cfg, model = _model_of_run(pretrained)
    logits, labels = [], []
    for images, y in evaluate.eval_input(cfg):
        logits.append(model(images, training=False)["logits_sup"].numpy().astype(np.float64))
        labels.append(y.numpy())
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    result = json.loads((pretrained / "result.json").read_text())
    assert result["num_examples"] == len(labels) == 10 * TEST_PER_CLASS
    assert result["label_top_1_accuracy"] == pytest.approx(
        np.mean(logits.argmax(1) == labels), abs=1e-6
    )
    assert result["label_top_5_accuracy"] == pytest.approx(
        np.mean((top5 == labels[:, None]).any(1)), abs=1e-6
    )
    assert result["eval_loss"] == pytest.approx(
        np.mean(log_z - logits[np.arange(len(labels)), labels]), rel=1e-4
    )


def test_logged_weight_decay_is_the_penalty_of_the_saved_weights(pretrained):
    """metrics.csv's ``weight_decay`` (measured only at the epoch end) against NumPy over the
    kernels of the checkpoint the run ended with."""
    cfg, model = _model_of_run(pretrained)
    kernels = [v.numpy().astype(np.float64) for v in model.trainable_variables if len(v.shape) > 1]
    expected = cfg.weight_decay * sum(0.5 * np.sum(np.square(k)) for k in kernels)
    logged = float(_csv_rows(pretrained / "metrics.csv")[-1]["weight_decay"])
    assert expected > 0 and logged == pytest.approx(expected, rel=1e-4)


def test_rerun_resumes_and_eval_is_repeatable(pretrained, run_cli):
    before = json.loads((pretrained / "result.json").read_text())
    # Same command again: already at the last step, nothing trained; eval gives the same numbers.
    run_cli(
        "--mode=eval",
        f"--data_dir={pretrained.parent}",
        f"--model_dir={pretrained}",
        *COMMON,
        expect=2,
    )  # wrong data_dir: a one-line error, not a trace
    flags = json.loads((pretrained / "flags.json").read_text())
    run_cli("--mode=eval", f"--data_dir={flags['data_dir']}", f"--model_dir={pretrained}", *COMMON)
    after = json.loads((pretrained / "result.json").read_text())
    assert after == before


def test_linear_eval_then_finetune(pretrained, tiny_folder, tmp_path, run_cli):
    linear = tmp_path / "linear"
    run_cli(
        "--mode=train_then_eval",
        "--train_mode=finetune",
        "--fine_tune_after_block=4",
        "--zero_init_logits_layer",
        "--optimizer=momentum",
        "--learning_rate=0.1",
        "--warmup_epochs=0",
        "--weight_decay=0",
        "--train_steps=3",
        f"--checkpoint={pretrained}",
        f"--data_dir={tiny_folder}",
        f"--model_dir={linear}",
        "--export_saved_model=false",
        *COMMON,
    )
    # The frozen encoder is exactly the pretrained one (weights and BN statistics).
    pre, lin = _read_ckpt(pretrained), _read_ckpt(linear)
    assert pre.keys() == lin.keys() and len(pre) > 20
    for key in pre:
        np.testing.assert_array_equal(pre[key], lin[key], err_msg=key)
    result = json.loads((linear / "result.json").read_text())
    assert result["train_mode"] == "finetune" and result["num_examples"] == 30

    finetune = tmp_path / "finetune"
    run_cli(
        "--mode=train_then_eval",
        "--train_mode=finetune",
        "--fine_tune_after_block=-1",
        "--train_data_fraction=0.5",  # 4 of 8 images per class
        "--optimizer=lars",
        "--learning_rate=0.05",
        "--learning_rate_scaling=sqrt",
        "--warmup_epochs=0",
        "--train_steps=2",
        f"--checkpoint={pretrained}",
        f"--data_dir={tiny_folder}",
        f"--model_dir={finetune}",
        "--export_saved_model=false",
        *COMMON,
    )
    tuned = _read_ckpt(finetune)
    changed = [k for k in pre if not np.array_equal(pre[k], tuned[k])]
    assert len(changed) > len(pre) // 2  # the whole network trains
    rows = _csv_rows(finetune / "metrics.csv")
    assert int(rows[-1]["step"]) == 2
    assert json.loads((finetune / "result.json").read_text())["global_step"] == 2


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--train_mode=finetune"], "--checkpoint=PATH"),
        (["--dataset=no_such_dataset_xyz"], "no_such_dataset_xyz"),
        (["--train_steps=0", "--train_epochs=0"], "set one of them > 0"),
        (["--strategy=mirrored", "--num_cpu_devices=2", "--train_batch_size=15"], "divisible"),
        (["--image_size=4"], "at least 8"),
    ],
)
def test_user_errors_are_one_line_with_the_fix(generated_folder, tmp_path, args, needle, run_cli):
    base = [
        f"--data_dir={generated_folder}",
        f"--model_dir={tmp_path / 'm'}",
        "--train_steps=1",
        *COMMON,
    ]
    proc = run_cli(*base, *args, expect=2)
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_model_dir_naming_a_file_is_one_line_and_keeps_the_file(
    generated_folder, tmp_path, run_cli
):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    proc = run_cli(
        f"--data_dir={generated_folder}",
        f"--model_dir={notes}",
        "--train_steps=1",
        *COMMON,
        expect=2,
    )
    assert "is a file, not a folder" in proc.stderr and str(notes) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert notes.read_text() == "my notes"


def test_finetune_from_another_architecture_names_the_variables(
    pretrained, tiny_folder, tmp_path, run_cli
):
    proc = run_cli(
        "--mode=train",
        "--train_mode=finetune",
        f"--checkpoint={pretrained}",
        f"--data_dir={tiny_folder}",
        f"--model_dir={tmp_path / 'm'}",
        "--train_steps=1",
        *COMMON,
        "--width_multiplier=0.125",
        expect=2,
    )
    assert "shape differs" in proc.stderr and "encoder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupt_image_is_named_without_a_trace(generated_folder, tmp_path, run_cli):
    data = tmp_path / "data"
    shutil.copytree(generated_folder, data)
    victim = sorted((data / "train" / "class03").iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:300])  # truncated JPEG
    proc = run_cli(
        f"--data_dir={data}", f"--model_dir={tmp_path / 'm'}", "--train_steps=8", *COMMON, expect=2
    )
    assert str(victim) in proc.stderr and "replace or delete it" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_eval_steps_take_a_class_balanced_part_of_a_sorted_split(generated_folder):
    from simclr_tf import evaluate

    cfg = tiny_config(
        dataset="image_folder",
        data_dir=str(generated_folder),
        eval_split="test",
        eval_batch_size=5,
        eval_steps=2,
    )
    labels = np.concatenate([y.numpy() for _, y in evaluate.eval_input(cfg)])
    # 10 images of a 30-image split sorted by class: one per class, not the first 10 files.
    assert len(labels) == 10
    assert sorted(labels.tolist()) == list(range(10))
