"""Raw-op timings behind ``conv_grad``'s rule: the native bfloat16 filter gradient vs the taps'.

Why a tool: ``conv_grad.wants_matmul`` picks the matmul gradient only for output maps of at most
14x14 from >= 128 input channels. This times both gradients alone (no train step around them)
at the 3x3 convolutions of ResNet-18 on CIFAR (batch 512: two views of 256) and ResNet-50 on
ImageNet (batch 32), stride 1 and 2, interleaved, and marks each row where the rule picks the
slower one. Each gradient is checked against the other before it is timed. Then each pass
of ResNet-18's 3x3 convolutions (forward, input gradient, filter gradient) in float32 and in
bfloat16 (with the rule's filter gradient), and their layer-weighted ratio: what bfloat16 buys
the convolutions that are most of a CIFAR step. Then the roofline: each layer's FLOPs against
the bfloat16 rate of the matrix product of its own im2col shape (``[batch * out^2, 9 * C] @
[9 * C, D]``), so the table says how close the convolutions already run to what this CPU's
bfloat16 matmul gives at those shapes. Last, the machine's matmul peak in float32 and bfloat16.

    python tools/benchmark_conv_grad.py --repeats=5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# Runnable from a clone without installing the package, like the other tools.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (batch, padded input size, input channels, output channels, stride); the input is what the
# inner VALID convolution sees (a stride-1 SAME conv is its input padded by 1).
# ResNet-18 on CIFAR (batch 512: two views of 256), with how many 3x3 convolutions of each shape
# it has (blocks [2, 2, 2, 2]; the 3->64 stem and the three 1x1 projections are left out: about
# 3% of the convolution FLOPs).
RESNET18_CIFAR_LAYERS = {
    (512, 34, 64, 64, 1): 4,  # stage 1
    (512, 34, 64, 128, 2): 1,
    (512, 18, 128, 128, 1): 3,
    (512, 18, 128, 256, 2): 1,
    (512, 10, 256, 256, 1): 3,
    (512, 10, 256, 512, 2): 1,
    (512, 6, 512, 512, 1): 3,  # stage 4
}
# ResNet-50 on ImageNet (batch 32): its bottleneck 3x3 convolutions.
RESNET50_IMAGENET_SHAPES = [
    (32, 58, 64, 64, 1),
    (32, 58, 128, 128, 2),
    (32, 30, 128, 128, 1),
    (32, 30, 256, 256, 2),
    (32, 16, 256, 256, 1),
    (32, 16, 512, 512, 2),
    (32, 9, 512, 512, 1),
]
SHAPES = [*RESNET18_CIFAR_LAYERS, *RESNET50_IMAGENET_SHAPES]
PASSES = ("forward", "input_grad", "filter_grad")


def out_size(size: int, stride: int) -> int:
    """Output rows of a VALID 3x3 convolution over ``size`` padded rows."""
    return (size - 3) // stride + 1


def conv_flops(shape: tuple[int, int, int, int, int]) -> float:
    """FLOPs of one pass of a 3x3 convolution: 2 x outputs x (9 x input channels).

    The forward pass, the input gradient and the filter gradient are the same count of
    multiply-adds (each is the layer's product with one operand transposed).
    """
    batch, size, c, d, stride = shape
    out = out_size(size, stride)
    return 2.0 * batch * out * out * 9 * c * d


def native_filter_gradient(x, dy, kernel: list[int], stride: int):
    """TensorFlow's own filter gradient of a VALID convolution (oneDNN's kernel on CPU)."""
    import tensorflow as tf

    return tf.raw_ops.Conv2DBackpropFilter(
        input=x,
        filter_sizes=kernel,
        out_backprop=dy,
        strides=[1, stride, stride, 1],
        padding="VALID",
    )


def relative_error(got, want) -> float:
    import numpy as np

    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def interleaved_ms(calls: dict, repeats: int, pick=statistics.median) -> dict:
    """``pick`` (median, or ``min`` for a peak) of each ``name: (fn, args)``'s ms, one call of
    each per repeat (so drifts in the machine's speed hit every entry alike)."""
    times: dict = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (fn, args) in calls.items():
            start = time.perf_counter()
            fn(*args).numpy()
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: pick(ts) for name, ts in times.items()}


def rule_picks_matmul(in_channels: int, out: int) -> bool:
    """Whether a bfloat16 training step under ``--conv_filter_grad=matmul`` takes the taps here
    (asks ``conv_grad`` itself and leaves its global setting as it was)."""
    from simclr_tf.models import conv_grad

    before = conv_grad.filter_gradient()
    conv_grad.set_filter_gradient("matmul")
    try:
        return conv_grad.wants_matmul(in_channels, out * out, 3, "bfloat16", True)
    finally:
        conv_grad.set_filter_gradient(before)


def time_gradients(shape: tuple[int, int, int, int, int], repeats: int) -> dict:
    """Median ms of the native and the matmul filter gradient of one shape, repeats interleaved."""
    import numpy as np
    import tensorflow as tf

    from simclr_tf.models import conv_grad

    batch, size, c, d, stride = shape
    out = out_size(size, stride)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((batch, size, size, c)), tf.bfloat16)
    dy = tf.constant(rng.standard_normal((batch, out, out, d)), tf.bfloat16)
    kernel = tf.TensorShape([3, 3, c, d])
    native = tf.function(lambda a, g: native_filter_gradient(a, g, kernel.as_list(), stride))
    matmul = tf.function(lambda a, g: conv_grad.matmul_filter_gradient(a, g, kernel, stride))
    want = tf.cast(native(x, dy), tf.float32).numpy()
    error = relative_error(tf.cast(matmul(x, dy), tf.float32).numpy(), want)
    if error > 1e-2:
        raise AssertionError(f"matmul gradient differs from native by {error:.2e} at {shape}")
    ms = interleaved_ms({"native": (native, (x, dy)), "matmul": (matmul, (x, dy))}, repeats)
    return {
        "shape": shape,
        "native_ms": ms["native"],
        "matmul_ms": ms["matmul"],
        "rule_picks_matmul": rule_picks_matmul(c, out),
        "relative_error": error,
    }


def time_passes(shape: tuple[int, int, int, int, int], repeats: int) -> dict:
    """Median ms of each pass of one 3x3 convolution in float32 and bfloat16, interleaved.

    bfloat16 takes the filter gradient the rule picks (as a bfloat16 training step does); every
    bfloat16 result is checked against the float32 kernel's before anything is timed.
    """
    import numpy as np
    import tensorflow as tf

    from simclr_tf.models import conv_grad

    batch, size, c, d, stride = shape
    out = out_size(size, stride)
    rng = np.random.default_rng(0)
    arrays = (
        rng.standard_normal((batch, size, size, c)),
        rng.standard_normal((3, 3, c, d)) / np.sqrt(9 * c),
        rng.standard_normal((batch, out, out, d)),
    )
    steps = [1, stride, stride, 1]
    matmul = rule_picks_matmul(c, out)
    kernel = [3, 3, c, d]

    def passes(dtype: str) -> dict:
        taps = dtype == "bfloat16" and matmul  # the gradient a bfloat16 step takes here
        return {
            "forward": lambda x, k, dy: tf.nn.conv2d(x, k, steps, "VALID"),
            "input_grad": lambda x, k, dy: tf.raw_ops.Conv2DBackpropInput(
                input_sizes=[batch, size, size, c],
                filter=k,
                out_backprop=dy,
                strides=steps,
                padding="VALID",
            ),
            "filter_grad": (
                (lambda x, k, dy: conv_grad.matmul_filter_gradient(x, dy, k.shape, stride))
                if taps
                else (lambda x, k, dy: native_filter_gradient(x, dy, kernel, stride))
            ),
        }

    calls = {}
    for dtype in ("float32", "bfloat16"):
        tensors = tuple(tf.constant(a, dtype) for a in arrays)
        for name, fn in passes(dtype).items():
            calls[dtype, name] = (tf.function(fn), tensors)
    results = {key: tf.cast(fn(*args), tf.float32).numpy() for key, (fn, args) in calls.items()}
    for name in PASSES:
        error = relative_error(results["bfloat16", name], results["float32", name])
        if error > 2e-2:
            raise AssertionError(f"bfloat16 {name} differs from float32 by {error:.2e} at {shape}")
    ms = interleaved_ms(calls, repeats)
    return {
        "shape": shape,
        "bfloat16_filter_grad": "matmul" if matmul else "native",
        **{f"{dtype}_{name}_ms": v for (dtype, name), v in ms.items()},
    }


def passes_table(rows: list[dict], layers: dict[tuple, int]) -> str:
    """Per-shape float32/bfloat16 ms of each pass, then the layer-weighted sum and its ratio."""
    lines = [
        "| input (padded) | channels | stride | layers | float32 fwd / in / filter ms | "
        "bfloat16 fwd / in / filter ms | bfloat16 speed-up fwd / in / filter |",
        "|---|---|---:|---:|---|---|---|",
    ]
    totals = {"float32": 0.0, "bfloat16": 0.0}
    for row in rows:
        batch, size, c, d, stride = row["shape"]
        count = layers.get(row["shape"], 0)
        ms = {dt: [row[f"{dt}_{p}_ms"] for p in PASSES] for dt in totals}
        for dt in totals:
            totals[dt] += count * sum(ms[dt])
        lines.append(
            f"| {size}x{size} | {c}->{d} | {stride} | {count} | "
            + " / ".join(f"{v:.1f}" for v in ms["float32"])
            + " | "
            + " / ".join(f"{v:.1f}" for v in ms["bfloat16"])
            + f" ({row['bfloat16_filter_grad']}) | "
            + " / ".join(
                f"{a / b:.2f}x" for a, b in zip(ms["float32"], ms["bfloat16"], strict=True)
            )
            + " |"
        )
    if totals["bfloat16"] > 0:
        lines.append(
            f"\nAll passes, layer-weighted: float32 {totals['float32']:.0f} ms, bfloat16 "
            f"{totals['bfloat16']:.0f} ms, **{totals['float32'] / totals['bfloat16']:.2f}x**"
        )
    return "\n".join(lines)


def matmul_peak(size: int, repeats: int) -> dict[str, float]:
    """Best GFLOP/s of one ``size``-cube matmul in float32 and bfloat16, repeats interleaved.

    Why: a first yardstick for bfloat16-over-float32 on this machine (item 4 of issue 20 asks
    for 2.0x; :func:`time_passes` gives the convolutions' own ratio, the one that bounds a
    step); each product is checked against NumPy before it is timed.
    """
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(2))
    want = a.astype(np.float64) @ b
    product = tf.function(tf.matmul)
    inputs = {}
    for dtype in ("float32", "bfloat16"):
        inputs[dtype] = (tf.constant(a, dtype), tf.constant(b, dtype))
        error = relative_error(tf.cast(product(*inputs[dtype]), tf.float64).numpy(), want)
        if error > 2e-2:
            raise AssertionError(f"{dtype} matmul differs from NumPy by {error:.2e}")
    best = interleaved_ms({dtype: (product, args) for dtype, args in inputs.items()}, repeats, min)
    return {dtype: 2 * size**3 / ms / 1e6 for dtype, ms in best.items()}


def gemm_rate(shape: tuple[int, int, int, int, int], repeats: int) -> float:
    """Best bfloat16 GFLOP/s of the layer's im2col product ``[batch * out^2, 9C] @ [9C, D]``.

    Why: a convolution pass is that product (forward; the gradients are it with one operand
    transposed), so oneDNN's bfloat16 matmul at that shape is the practical ceiling of the pass
    on this CPU, a sharper yardstick than one square matmul. The product's first rows are
    checked against NumPy before it is timed.
    """
    import numpy as np
    import tensorflow as tf

    batch, size, c, d, stride = shape
    out = out_size(size, stride)
    rows, depth = batch * out * out, 9 * c
    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, depth), dtype=np.float32)
    b = rng.standard_normal((depth, d), dtype=np.float32) / np.sqrt(depth)
    x, y = tf.constant(a, tf.bfloat16), tf.constant(b, tf.bfloat16)
    product = tf.function(tf.matmul)
    head = min(rows, 256)
    got = tf.cast(product(x, y)[:head], tf.float64).numpy()
    error = relative_error(got, a[:head].astype(np.float64) @ b)
    if error > 2e-2:
        raise AssertionError(f"bfloat16 matmul differs from NumPy by {error:.2e} at {shape}")
    best = interleaved_ms({"gemm": (product, (x, y))}, repeats, min)["gemm"]
    return conv_flops(shape) / best / 1e6


def roofline_table(rows: list[dict], layers: dict[tuple, int], rates: dict[tuple, float]) -> str:
    """Each shape's bfloat16 passes in GFLOP/s beside its GEMM rate, then the layer-weighted
    time the passes would take at that rate against the time they took."""
    lines = [
        "| input (padded) | channels | stride | layers | GFLOP per pass | GEMM GFLOP/s | "
        "bfloat16 fwd / in / filter GFLOP/s |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    at_rate = measured = 0.0
    for row in rows:
        shape = row["shape"]
        batch, size, c, d, stride = shape
        count, flops, rate = layers.get(shape, 0), conv_flops(shape) / 1e9, rates[shape]
        ms = [row[f"bfloat16_{p}_ms"] for p in PASSES]
        at_rate += count * len(PASSES) * flops / rate * 1e3
        measured += count * sum(ms)
        lines.append(
            f"| {size}x{size} | {c}->{d} | {stride} | {count} | {flops:.1f} | {rate:.0f} | "
            + " / ".join(f"{flops / v * 1e3:.0f}" for v in ms)
            + " |"
        )
    if measured > 0:
        lines.append(
            f"\nAll bfloat16 passes, layer-weighted: {measured:.0f} ms; at each layer's GEMM "
            f"rate {at_rate:.0f} ms (**{at_rate / measured:.0%}** of the measured time)"
        )
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = [
        "| batch | input (padded) | channels | stride | output | native ms | matmul ms | "
        "rule | rule's pick slower |",
        "|---:|---|---|---:|---|---:|---:|---|---|",
    ]
    for row in rows:
        batch, size, c, d, stride = row["shape"]
        out = out_size(size, stride)
        native, matmul = row["native_ms"], row["matmul_ms"]
        pick = "matmul" if row["rule_picks_matmul"] else "native"
        slower = (pick == "matmul") == (matmul > native)
        lines.append(
            f"| {batch} | {size}x{size} | {c}->{d} | {stride} | {out}x{out} | {native:.1f} | "
            f"{matmul:.1f} | {pick} | {'**yes**' if slower else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="Interleaved timings per gradient.")
    args = p.parse_args()
    print(table([time_gradients(shape, args.repeats) for shape in SHAPES]))
    rows = [time_passes(shape, args.repeats) for shape in RESNET18_CIFAR_LAYERS]
    print("\nResNet-18 CIFAR 3x3 convolutions, each pass, float32 vs bfloat16:\n")
    print(passes_table(rows, RESNET18_CIFAR_LAYERS))
    rates = {shape: gemm_rate(shape, 3 * args.repeats) for shape in RESNET18_CIFAR_LAYERS}
    print("\nThe same passes against the bfloat16 GEMM of each layer's own shape:\n")
    print(roofline_table(rows, RESNET18_CIFAR_LAYERS, rates))
    peak = matmul_peak(4096, 3 * args.repeats)
    print(
        f"\n4096^3 matmul, best of {3 * args.repeats}: float32 {peak['float32']:.0f} GFLOP/s, "
        f"bfloat16 {peak['bfloat16']:.0f} GFLOP/s ({peak['bfloat16'] / peak['float32']:.2f}x)"
    )


if __name__ == "__main__":
    main()
