#!/usr/bin/env python
"""The reference code's own training steps from a reference checkpoint: makes the fixtures of
``tests/test_reference_steps.py`` and checks how far they are from this machine's float32.

Runs the reference SimCLR code (google-research/simclr ``tf2/``, not shipped with simclr_tf:
extract it with ``git archive`` into a temp folder) with ``TF_USE_LEGACY_KERAS=1``; the steps
are composed from the reference's own functions as its ``run.py`` composes them (see
``tests/fixtures/reference_steps/README.md``). Prints one JSON line: the reference's losses, and
with ``--compare`` its distance from an ``.npz`` of outputs (the test's figure)::

    python tools/reference_train_steps.py --reference_dir=/tmp/ref/tf2 \\
        --checkpoint=../shared/official_checkpoints/tf2_ckpt_r50_sk1 --case=finetune_two_steps \\
        --set=steps=1 --shift_inputs=-0.5 --out=/tmp/r50_one_step.npz \\
        --compare=tests/fixtures/reference_steps/r50_sk1_finetune_one_step_centred.npz
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ENDPOINTS = ("final_avg_pool", "proj_head_output", "logits_sup")


def _value(text: str):
    """A --set value as JSON (numbers, booleans), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def reference_steps(ref_dir: str, checkpoint: str, settings: dict, arrays: dict):
    """The reference model's outputs on ``probe_images`` before and after the case's steps,
    and the losses of the last step."""
    sys.modules.setdefault("tensorflow_datasets", types.ModuleType("tensorflow_datasets"))
    sys.path.insert(0, ref_dir)
    import numpy as np
    import tensorflow as tf
    from absl import flags

    import run as ref_run  # noqa: F401  (defines the reference's flags)

    with open(os.path.join(checkpoint, "meta.json")) as f:
        meta = json.load(f)
    fv = flags.FLAGS
    fv(
        [
            "reference",
            f"--resnet_depth={meta['resnet_depth']}",
            f"--sk_ratio={meta['sk_ratio']}",
            f"--se_ratio={meta['se_ratio']}",
            f"--image_size={meta['image_size']}",
            f"--num_proj_layers={meta['num_proj_layers']}",
            f"--proj_out_dim={meta['proj_out_dim']}",
            f"--train_mode={settings['train_mode']}",
            f"--fine_tune_after_block={settings.get('fine_tune_after_block', -1)}",
            f"--ft_proj_selector={settings.get('ft_proj_selector', 0)}",
            f"--weight_decay={settings['weight_decay']}",
            f"--temperature={settings.get('temperature', 0.1)}",
            f"--momentum={settings['momentum']}",
            f"--batch_norm_decay={settings['batch_norm_decay']}",
            f"--optimizer={settings['optimizer']}",
            "--global_bn" if settings["global_bn"] else "--noglobal_bn",
            "--hidden_norm" if settings.get("hidden_norm", True) else "--nohidden_norm",
            "--lineareval_while_pretraining"
            if settings.get("lineareval_while_pretraining", True)
            else "--nolineareval_while_pretraining",
            "--nouse_blur",
        ]
    )
    fv.width_multiplier = meta["width_multiplier"]  # the reference's flag is an integer
    import model as model_lib
    import objective as obj_lib

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    pretrain = settings["train_mode"] == "pretrain"
    classes = int(meta["num_classes"])
    prefix = os.path.join(checkpoint, meta["checkpoint_prefix"])
    with strategy.scope():
        model = model_lib.Model(classes)
        side = int(meta["image_size"])
        model(tf.zeros([1, side, side, 6 if pretrain else 3]), training=False)
        tf.train.Checkpoint(model=model).restore(prefix).assert_existing_objects_matched()
        optimizer = model_lib.build_optimizer(float(settings["learning_rate"]))

    if pretrain:
        features = np.concatenate([arrays["view1"], arrays["view2"]], -1)
        one_hot = np.concatenate([np.eye(classes)[arrays["labels"]]] * 2, 0)
    else:
        features, one_hot = arrays["images"], np.eye(classes)[arrays["labels"]]
    features = tf.constant(features, tf.float32)
    before = _outputs(model, tf.constant(arrays["probe_images"]))
    one_hot = tf.constant(one_hot, tf.float32)

    @tf.function
    def step():
        def replica_step():
            with tf.GradientTape() as tape:
                projection, logits = model(features, training=True)
                loss = 0.0
                contrast = tf.constant(0.0)
                if projection is not None:
                    contrast, _, _ = obj_lib.add_contrastive_loss(
                        projection,
                        hidden_norm=fv.hidden_norm,
                        temperature=fv.temperature,
                        strategy=strategy,
                    )
                    loss += contrast
                supervised = obj_lib.add_supervised_loss(one_hot, logits)
                loss += supervised + model_lib.add_weight_decay(model, True)
                loss /= strategy.num_replicas_in_sync
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return contrast, supervised

        return strategy.run(replica_step)

    for _ in range(int(settings["steps"])):
        contrast, supervised = step()
    losses = {"contrast_loss": float(contrast), "supervised_loss": float(supervised)}
    after = _outputs(model, tf.constant(arrays["probe_images"]))
    return before, after, losses


def _outputs(model, probe) -> dict:
    """The compared endpoints of the reference model on the probe images (inference mode)."""
    import numpy as np

    projection, logits = model(probe, training=False)
    pooled = model.resnet_model(probe, training=False)
    if projection is None:  # fine-tuning: the model returns no projection
        projection = model._projection_head(pooled, False)[0]
    outputs = {"final_avg_pool": pooled, "proj_head_output": projection, "logits_sup": logits}
    return {k: np.asarray(v) for k, v in outputs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference_dir", required=True, help="the reference's tf2/ folder")
    parser.add_argument("--checkpoint", required=True, help="a shared checkpoint folder")
    parser.add_argument("--case", required=True, help="a train_steps/<case> of the checkpoint")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE over the case")
    parser.add_argument(
        "--shift_inputs",
        type=float,
        default=0.0,
        help="add this to every input and probe image (-0.5 centres them: a better-conditioned "
        "case: the first layers' batch-norm channels get small means against their spread)",
    )
    parser.add_argument("--out", help="write the after_* outputs here (.npz)")
    parser.add_argument("--compare", help="an .npz of after_* outputs to measure against")
    args = parser.parse_args(argv)
    import numpy as np

    base = os.path.join(args.checkpoint, "train_steps", args.case)
    with open(base + ".json") as f:
        settings = json.load(f)
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = _value(value)
    with np.load(base + ".npz") as data:
        arrays = {k: data[k] for k in data.files}
    if settings["train_mode"] == "pretrain" and "view1" not in arrays:
        # A fine-tuning case pretrained on: the images and their mirror images as the views.
        arrays["view1"], arrays["view2"] = arrays["images"], arrays["images"][:, :, ::-1]
    for key in ("images", "view1", "view2", "probe_images"):
        if key in arrays:
            arrays[key] = (arrays[key] + args.shift_inputs).astype(np.float32)
    before, outputs, losses = reference_steps(args.reference_dir, args.checkpoint, settings, arrays)
    report: dict = {"case": args.case, "set": args.set, "losses": losses}
    if args.out:
        np.savez(
            args.out,
            **{f"after_{k}": v for k, v in outputs.items()},
            **{f"before_{k}": v for k, v in before.items()},
        )
    if args.compare:
        with np.load(args.compare) as other:
            report["distance"] = {
                k: float(
                    np.abs(outputs[k] - other[f"after_{k}"]).max()
                    / np.abs(other[f"after_{k}"] - before[k]).max()
                )
                for k in ENDPOINTS
            }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
