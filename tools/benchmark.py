#!/usr/bin/env python
"""Speed and memory of the real SimCLR pretraining step, one JSON line per case.

    python tools/benchmark.py                                   # ResNet-18, CIFAR, batch 256
    python tools/benchmark.py --candidate=mixed_precision=bfloat16 \\
        --candidate=mixed_precision=bfloat16,jit_compile=true --repeats=2
    python tools/benchmark.py --set=train_batch_size=1024 --what=step --steps=1 \\
        --warmup_steps=0 --candidate=micro_batch_size=128

Every case runs in its own subprocess (so peak RSS, XLA caches and the global mixed-precision
policy never mix) and builds everything the way ``run.py`` does: ``config_defaults.resolve`` /
``validate``, ``train.build_for_run`` (precision policy, model, optimizer, ``compile`` with
``jit_compile``), ``train.train_dataset`` (the real tf.data input, host or device
augmentation) and ``model.fit`` with the real ``train_step``; a callback only reads the clock.

Measured per case:

* ``pipeline_images_per_sec``: two-view input batches per second x batch, the input alone
  (first batch, which fills the shuffle buffer, excluded);
* ``step_images_per_sec``: global batch / median step time after ``--warmup_steps`` (tracing
  and XLA compilation happen there); images are counted once (each yields two views);
  ``step_images_per_sec_best`` uses the fastest timed step (least disturbed by other load);
* ``peak_rss_gb``: the process's peak resident memory (``getrusage``), and the device's peak
  memory where TensorFlow reports one (GPU).

A *baseline* (the tool's flags plus ``--set``) and any ``--candidate`` overrides run in the
same command, interleaved ``--repeats`` times (A B A B ...), and each candidate's ratio to the
baseline is printed: absolute numbers move from run to run on shared machines, ratios much less.
Override keys are :class:`simclr_tf.config.Config` field names (``resnet_depth``,
``width_multiplier``, ``image_size``, ``train_batch_size``, ``mixed_precision``, ``jit_compile``,
``augment_on``, ``micro_batch_size``, ``strategy``, ``num_cpu_devices``, ...).

The reference input pipeline, paired (``--what=pipeline``): ``--reference_data_util=PATH`` adds
a case that runs the SimCLR reference code's per-image ``preprocess_for_train`` (two views,
``tf.data`` AUTOTUNE map, then its ``batch_random_blur`` on the batch when blur is on) over the
same files, batch and shuffle buffer, interleaved with the other cases; every case's ratio to
it is printed. The reference is NOT shipped with simclr_tf: fetch ``tf2/data_util.py`` of
google-research/simclr yourself and pass its path.

Per-op profile (``--what=ops``): milliseconds per image (two views) of each step of the per-image
host path, old and new variants side by side, on one thread, repeats interleaved::

    python tools/make_benchmark_folder.py --out=/tmp/bench_folder
    python tools/benchmark.py --what=ops --set=data_dir=/tmp/bench_folder --set=image_size=224

Per-op profile of the train step (``--what=profile``): ``tf.profiler`` traces each case's timed
steps and a table gives each op type's (and each op's) self-time per step, baseline and
candidates side by side, with the speed-up of the last case over the first::

    python tools/benchmark.py --what=profile --steps=2 --candidate=mixed_precision=bfloat16

This file is the command line and the parent that runs cases and prints ratios;
``benchmark_case.py`` describes and measures one case (in the child process), and
``benchmark_ops.py`` is the per-op profile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmark_case import (  # noqa: E402
    BASE_CASE,
    case_name,
    load_reference,
    parse_overrides,
    run_case,
)
from benchmark_ops import profile_ops  # noqa: E402

# Per-case results that a ratio is printed for (higher is better for the first two).
RATIO_KEYS = (
    "step_images_per_sec",
    "step_images_per_sec_best",
    "pipeline_images_per_sec",
    "peak_rss_gb",
)


# --------------------------------------------------------------------------------------------
# Parent: runs the cases in subprocesses, prints JSON lines and ratios
# --------------------------------------------------------------------------------------------


def _run_child(case: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    if "_reference_step" in case:
        return _run_reference_step(case, args)
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child_case",
        json.dumps(case),
        "--what",
        args.what,
        "--steps",
        str(args.steps),
        "--warmup_steps",
        str(args.warmup_steps),
        "--pipeline_batches",
        str(args.pipeline_batches),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = "\n".join(proc.stderr.splitlines()[-15:])
    return {
        "case": case_name(case.get("_overrides", {})),
        "error": f"exit {proc.returncode}",
        "stderr_tail": tail,
    }


def _run_reference_step(case: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The reference code's own step (``benchmark_reference_step.py``, tf.keras 2) as a case."""
    fields = {k: v for k, v in case.items() if not k.startswith("_")}
    spec = {
        "ref_dir": case["_reference_step"],
        "case": fields,
        "steps": args.steps,
        "warmup": args.warmup_steps,
    }
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmark_reference_step.py")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    proc = subprocess.run(
        [sys.executable, script, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=args.timeout,
        env=env,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = "\n".join(proc.stderr.splitlines()[-15:])
    return {"case": "reference_step", "error": f"exit {proc.returncode}", "stderr_tail": tail}


def _ratios(base: list[dict], cand: list[dict]) -> dict[str, float]:
    """Median over repeats of candidate / baseline, paired run by run."""
    out = {}
    for key in RATIO_KEYS:
        pairs = [
            c[key] / b[key] for b, c in zip(base, cand, strict=False) if b.get(key) and c.get(key)
        ]
        if pairs:
            out[key] = round(statistics.median(pairs), 3)
    return out


def _print_profiles(results: dict[str, list[dict]], top: int) -> None:
    """Markdown tables: ms of self-time per step by op type and by op, median over repeats."""
    names = [n for n, runs in results.items() if any("op_profile_ms_per_step" in r for r in runs)]
    if not names:
        print("benchmark: no case produced a profile (see the JSON lines above).", file=sys.stderr)
        return
    for key in ("by_type", "by_name"):
        med: dict[str, dict[str, float]] = {}
        for name in names:
            runs = [
                r["op_profile_ms_per_step"][key]
                for r in results[name]
                if "op_profile_ms_per_step" in r
            ]
            ops = set().union(*runs)
            med[name] = {op: statistics.median(run.get(op, 0.0) for run in runs) for op in ops}
        first = med[names[0]]
        order = sorted(set().union(*med.values()), key=lambda op: -first.get(op, 0.0))
        cols = " | ".join(names)
        print(f"\nself-time per step, ms, {key.replace('_', ' ')} (median over repeats)")
        print(f"| op | {cols} |" + " vs first |" * (len(names) > 1))
        print("|---|" + "---:|" * len(names) + "---:|" * (len(names) > 1))
        rows = order[:top] + ["(all ops)"]
        for name in names:
            med[name]["(all ops)"] = sum(med[name].values())
        for op in rows:
            vals = [med[n].get(op, 0.0) for n in names]
            ratio = ""
            if len(names) > 1:
                ratio = f" {vals[0] / vals[-1]:.2f}x |" if vals[-1] else " - |"
            print(f"| {op} | " + " | ".join(f"{v:.1f}" for v in vals) + " |" + ratio)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="K=V,...",
        help="Overrides of the baseline case (Config field names).",
    )
    p.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="K=V,...",
        help="A case = baseline + these overrides; its ratio to the baseline is "
        "printed. Repeat for several candidates.",
    )
    p.add_argument(
        "--no_baseline", action="store_true", help="Run only the candidates (no ratios)."
    )
    p.add_argument(
        "--what",
        choices=("all", "step", "pipeline", "ops", "profile"),
        default="all",
        help="ops: the per-op profile of the per-image host path (no cases). profile: "
        "tf.profiler per-op self-time of the timed train steps of each case, side by side.",
    )
    p.add_argument("--profile_top", type=int, default=25, help="Rows of each --what=profile table.")
    p.add_argument(
        "--reference_data_util",
        default=None,
        metavar="PATH",
        help="Path of the SimCLR reference code's tf2/data_util.py (not shipped): "
        "adds its input pipeline as a case (--what=pipeline); ratios to it are "
        "printed.",
    )
    p.add_argument(
        "--reference_host_only",
        action="store_true",
        help="The reference case runs only its host pipeline (preprocess_for_train, no "
        "batch_random_blur, which the reference runs inside its train step on the device): the "
        "issue-20 comparison of our host path with blur against the reference's host input.",
    )
    p.add_argument(
        "--reference_step",
        default=None,
        metavar="DIR",
        help="The SimCLR reference code's tf2/ folder (not shipped): adds its own float32 "
        "pretraining step (ResNet, LARS, its input pipeline) as a case (--what=step); ratios "
        "to it are printed.",
    )
    p.add_argument("--ops_images", type=int, default=32, help="Images per op (--what=ops).")
    p.add_argument("--steps", type=int, default=4, help="Timed train steps per case.")
    p.add_argument(
        "--warmup_steps",
        type=int,
        default=2,
        help="Untimed first steps (tracing, XLA compilation, autotuning).",
    )
    p.add_argument("--pipeline_batches", type=int, default=10)
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="Run baseline and candidates interleaved this many times.",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="Seconds per case.")
    p.add_argument("--child_case", default=None, help=argparse.SUPPRESS)
    return p


def _cases(args: argparse.Namespace, base_overrides: dict[str, Any]) -> list[tuple[str, dict]]:
    """(name, case) of the baseline, the reference pipeline and each candidate, in run order."""
    cases: list[tuple[str, dict[str, Any]]] = []
    if not args.no_baseline:
        cases.append(("baseline", {**BASE_CASE, **base_overrides, "_overrides": {}}))
    if args.reference_data_util:
        if args.what != "pipeline":
            raise SystemExit("benchmark: --reference_data_util needs --what=pipeline.")
        load_reference(args.reference_data_util)  # fails early on a wrong path
        cases.append(
            (
                "reference",
                {
                    **BASE_CASE,
                    **base_overrides,
                    "_overrides": {},
                    "_reference": os.path.abspath(args.reference_data_util),
                    "_reference_blur": not args.reference_host_only,
                },
            )
        )
    if args.reference_step:
        if args.what != "step":
            raise SystemExit("benchmark: --reference_step needs --what=step.")
        if not os.path.isfile(os.path.join(args.reference_step, "model.py")):
            raise SystemExit(
                f"benchmark: {args.reference_step} is not the reference's tf2/ folder (no "
                "model.py); extract google-research/simclr and pass its tf2/ path."
            )
        step_case = {**BASE_CASE, **base_overrides, "_overrides": {}}
        cases.append(("reference_step", {**step_case, "_reference_step": args.reference_step}))
    for spec in args.candidate:
        over = parse_overrides(spec)
        cases.append((case_name(over), {**BASE_CASE, **base_overrides, **over, "_overrides": over}))
    if not cases:
        raise SystemExit("benchmark: nothing to run (pass --candidate or drop --no_baseline).")
    return cases


def _run_cases(cases: list[tuple[str, dict]], args, base_overrides: dict[str, Any]) -> None:
    """Runs the cases interleaved ``--repeats`` times, then prints each candidate's ratios."""
    results: dict[str, list[dict]] = {name: [] for name, _ in cases}
    for rep in range(args.repeats):
        for name, case in cases:
            res = _run_child(case, args)
            res["repeat"] = rep
            if name == "baseline" and base_overrides:
                res["baseline_overrides"] = base_overrides
            results[name].append(res)
            print(json.dumps(res), flush=True)
    if args.what == "profile":
        _print_profiles(results, args.profile_top)
        return
    bases = ("baseline", "reference", "reference_step")
    for base in bases:
        if base not in results:
            continue
        for name, _ in cases:
            if name != base and name not in bases[1:]:
                print(
                    json.dumps(
                        {
                            "ratio": name,
                            "vs": base,
                            "repeats": args.repeats,
                            **_ratios(results[base], results[name]),
                        }
                    ),
                    flush=True,
                )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.child_case is not None:
        case = json.loads(args.child_case)
        overrides = case.pop("_overrides", {})
        is_reference = "_reference" in case
        result = run_case({**case}, args.what, args.steps, args.warmup_steps, args.pipeline_batches)
        result["case"] = "reference" if is_reference else case_name(overrides)
        print(json.dumps(result), flush=True)
        return 0

    base_overrides: dict[str, Any] = {}
    for spec in args.set:
        base_overrides.update(parse_overrides(spec))
    if args.what == "ops":
        return profile_ops(
            {**BASE_CASE, **base_overrides}, args.ops_images, args.repeats, args.reference_data_util
        )
    _run_cases(_cases(args, base_overrides), args, base_overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
