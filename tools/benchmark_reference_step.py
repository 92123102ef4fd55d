#!/usr/bin/env python
"""The SimCLR reference code's own pretraining step, timed like ``tools/benchmark.py`` cases.

Run by ``tools/benchmark.py --reference_step=DIR`` in a child process with
``TF_USE_LEGACY_KERAS=1`` (the reference is tf.keras 2 code); prints one JSON line. ``DIR`` is
the reference's ``tf2/`` folder (google-research/simclr, not shipped with simclr_tf; extract it
with ``git archive``). The step is composed here from the reference's own functions, as its
``run.py`` composes it: ``model_lib.Model`` under a ``MirroredStrategy`` (synchronized batch
norm, float32), ``obj_lib.add_contrastive_loss``, the linear head's
``obj_lib.add_supervised_loss``, ``model_lib.add_weight_decay`` and its ``LARSOptimizer`` with
``WarmUpAndCosineDecay``, in one ``tf.function``; its input is the reference's
``preprocess_image`` over the same files (``benchmark_case.reference_dataset``). Summaries and
metrics are left out (they are cheap scalars).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import types

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS))
sys.path.insert(0, TOOLS)


def run_reference_step(ref_dir: str, case: dict, steps: int, warmup: int) -> dict:
    sys.path.insert(0, ref_dir)
    from absl import flags

    import run as ref_run  # noqa: F401  (defines the reference's flags)

    ref_flags = flags.FLAGS
    size = int(case.get("image_size") or 32)
    batch = int(case["train_batch_size"])
    ref_flags(
        [
            "reference",
            f"--resnet_depth={case['resnet_depth']}",
            f"--width_multiplier={int(case['width_multiplier'])}",
            f"--train_batch_size={batch}",
            f"--image_size={size}",
            f"--temperature={case['temperature']}",
            f"--learning_rate={case['learning_rate']}",
            f"--optimizer={case['optimizer']}",
            "--train_mode=pretrain",
            "--color_jitter_strength=0.5",
            "--nouse_blur",
        ]
    )
    import model as model_lib
    import objective as obj_lib
    import tensorflow as tf
    from benchmark_case import machine_info, reference_dataset

    cfg = types.SimpleNamespace(
        dataset=case["dataset"],
        train_split="train",
        data_dir=case["data_dir"],
        image_size=size,
        color_jitter_strength=0.5,
        train_batch_size=batch,
        use_blur=False,
    )
    dataset = reference_dataset(cfg, os.path.join(ref_dir, "data_util.py"))
    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        model = model_lib.Model(10)
        schedule = model_lib.WarmUpAndCosineDecay(ref_flags.learning_rate, 50_000)
        optimizer = model_lib.build_optimizer(schedule)

    def step(features, labels):
        with tf.GradientTape() as tape:
            projection, supervised = model(features, training=True)
            loss, _, _ = obj_lib.add_contrastive_loss(
                projection, hidden_norm=True, temperature=ref_flags.temperature, strategy=strategy
            )
            one_hot = tf.one_hot(tf.concat([labels, labels], 0), 10)
            loss += obj_lib.add_supervised_loss(labels=one_hot, logits=supervised)
            loss += model_lib.add_weight_decay(model, adjust_per_optimizer=True)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function
    def train_step(iterator):
        features, labels = next(iterator)
        return strategy.run(step, (features, labels))

    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    seconds = []
    loss = None
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        loss = float(strategy.reduce("mean", train_step(iterator), axis=None))
        seconds.append(time.perf_counter() - t0)
    measured = seconds[warmup:] or seconds[-1:]
    return {
        "case": "reference_step",
        "machine": machine_info(),
        "tensorflow": tf.__version__,
        "flags": {"reference_dir": ref_dir, "image_size": size, **case},
        "step_seconds": [round(s, 3) for s in seconds],
        "step_seconds_median": statistics.median(measured),
        "step_images_per_sec": batch / statistics.median(measured),
        "step_images_per_sec_best": batch / min(measured),
        "final_loss": loss,
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    print(
        json.dumps(run_reference_step(args["ref_dir"], args["case"], args["steps"], args["warmup"]))
    )
