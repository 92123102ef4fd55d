"""Raw-op timings behind ``conv_grad``'s rule: the native bfloat16 filter gradient vs the taps'.

Why a tool: ``conv_grad.wants_matmul`` picks the matmul gradient only for output maps of at most
14x14 from >= 128 input channels. This times both gradients alone (no train step around them)
at the 3x3 convolutions of ResNet-18 on CIFAR (batch 512: two views of 256) and ResNet-50 on
ImageNet (batch 32), stride 1 and 2, interleaved, and marks each row where the rule picks the
slower one. Each gradient is checked against the other before it is timed. Last, the
machine's matmul peak in float32 and bfloat16: the ceiling of any bfloat16 step speed-up.

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
SHAPES = [
    (512, 34, 64, 64, 1),  # ResNet-18 CIFAR stage 1
    (512, 34, 64, 128, 2),
    (512, 18, 128, 128, 1),
    (512, 18, 128, 256, 2),
    (512, 10, 256, 256, 1),
    (512, 10, 256, 512, 2),
    (512, 6, 512, 512, 1),
    (32, 58, 64, 64, 1),  # ResNet-50 ImageNet bottleneck 3x3 convs
    (32, 58, 128, 128, 2),
    (32, 30, 128, 128, 1),
    (32, 30, 256, 256, 2),
    (32, 16, 256, 256, 1),
    (32, 16, 512, 512, 2),
    (32, 9, 512, 512, 1),
]


def out_size(size: int, stride: int) -> int:
    """Output rows of a VALID 3x3 convolution over ``size`` padded rows."""
    return (size - 3) // stride + 1


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
    native = tf.function(
        lambda a, g: tf.raw_ops.Conv2DBackpropFilter(
            input=a,
            filter_sizes=kernel.as_list(),
            out_backprop=g,
            strides=[1, stride, stride, 1],
            padding="VALID",
        )
    )
    matmul = tf.function(lambda a, g: conv_grad.matmul_filter_gradient(a, g, kernel, stride))
    want = tf.cast(native(x, dy), tf.float32).numpy()
    got = tf.cast(matmul(x, dy), tf.float32).numpy()
    error = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    if error > 1e-2:
        raise AssertionError(f"matmul gradient differs from native by {error:.2e} at {shape}")
    times: dict[str, list[float]] = {"native": [], "matmul": []}
    for _ in range(repeats):
        for name, fn in (("native", native), ("matmul", matmul)):
            start = time.perf_counter()
            fn(x, dy).numpy()
            times[name].append(1000 * (time.perf_counter() - start))
    before = conv_grad.filter_gradient()
    conv_grad.set_filter_gradient("matmul")
    try:
        picks = conv_grad.wants_matmul(c, out * out, 3, "bfloat16", True)
    finally:
        conv_grad.set_filter_gradient(before)
    return {
        "shape": shape,
        "native_ms": statistics.median(times["native"]),
        "matmul_ms": statistics.median(times["matmul"]),
        "rule_picks_matmul": picks,
        "relative_error": error,
    }


def matmul_peak(size: int, repeats: int) -> dict[str, float]:
    """Best GFLOP/s of one ``size``-cube matmul in float32 and bfloat16, repeats interleaved.

    Why: the machine's own ceiling for any bfloat16-over-float32 step ratio (item 4 of issue 20
    asks for 2.0x); each product is checked against NumPy before it is timed.
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
        got = tf.cast(product(*inputs[dtype]), tf.float64).numpy()
        error = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        if error > 2e-2:
            raise AssertionError(f"{dtype} matmul differs from NumPy by {error:.2e}")
    best = {dtype: float("inf") for dtype in inputs}
    for _ in range(repeats):
        for dtype, (x, y) in inputs.items():
            start = time.perf_counter()
            product(x, y).numpy()
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return {dtype: 2 * size**3 / seconds / 1e9 for dtype, seconds in best.items()}


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
    peak = matmul_peak(4096, 3 * args.repeats)
    print(
        f"\n4096^3 matmul, best of {3 * args.repeats}: float32 {peak['float32']:.0f} GFLOP/s, "
        f"bfloat16 {peak['bfloat16']:.0f} GFLOP/s ({peak['bfloat16'] / peak['float32']:.2f}x)"
    )


if __name__ == "__main__":
    main()
