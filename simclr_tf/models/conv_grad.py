"""Convolution filter gradients as one matrix product per kernel tap (bfloat16 on CPUs).

Why: on a CPU, oneDNN's bfloat16 filter-gradient kernel is slow where the feature map is small
and the channels many (ResNet's last stages: 4x4x512 on CIFAR, 7x7 on ImageNet). Profiled in
the real step (``tools/benchmark.py --what=profile``), the filter gradients are the largest op
and barely gain from bfloat16 (1.14x over float32, against 1.66x for the forward convolution).
The same gradient written as ``kh * kw`` matrix products ``patch_tap^T @ dy`` over the batch
and the positions runs on oneDNN's bfloat16 matmul, which is fast at those shapes: output maps
of at most 14x14 from >= 128 input channels (:func:`wants_matmul`; the raw-op timings behind
the rule come from ``tools/benchmark_conv_grad.py``).

The forward pass and the input gradient are TensorFlow's own ops; only the filter gradient is
replaced, and it is the same sum (equal to autodiff's to float rounding; tested against
``tf.GradientTape`` in float32 and bfloat16). ``set_filter_gradient`` chooses the gradient for
layers traced afterwards; ``train.set_kernels`` sets it from ``--conv_filter_grad``.
"""

from __future__ import annotations

import tensorflow as tf

FILTER_GRADIENTS = ("native", "matmul")
# Where the matmul gradient runs: output maps of at most 14x14 positions from >= 128 input
# channels. The native bfloat16 kernel is as fast or faster at 16x16 and larger output maps and
# with fewer channels (raw-op timings at CIFAR and ImageNet shapes, stride 1 and 2:
# tools/benchmark_conv_grad.py, its table in benchmarks/README.md).
MIN_CHANNELS = 128
MAX_POSITIONS = 14 * 14

_filter_gradient = "native"


def set_filter_gradient(mode: str) -> None:
    """Filter gradient of bfloat16 training convolutions traced from now on: native or matmul."""
    global _filter_gradient
    if mode not in FILTER_GRADIENTS:
        raise ValueError(f"filter gradient must be one of {FILTER_GRADIENTS}, got {mode!r}.")
    _filter_gradient = mode


def filter_gradient() -> str:
    return _filter_gradient


def wants_matmul(
    in_channels: int | None,
    out_positions: int | None,
    kernel_size: int,
    dtype: str,
    training: bool | None,
) -> bool:
    """Whether a convolution of this shape takes the matmul filter gradient when traced now.

    ``out_positions`` is the output map's height x width (None when not static: native).
    """
    return (
        _filter_gradient == "matmul"
        and bool(training)
        and dtype == "bfloat16"
        and kernel_size > 1
        and (in_channels or 0) >= MIN_CHANNELS
        and out_positions is not None
        and out_positions <= MAX_POSITIONS
    )


def _phases(inputs: tf.Tensor, strides: int) -> tf.Tensor:
    """``[s, s, N, ceil(H/s), ceil(W/s), C]``: phase ``(a, b)`` holds rows ``a::s``, cols ``b::s``.

    Why: a strided tap ``inputs[:, i::s, j::s]`` is a gather TensorFlow copies element by element
    (measured 3x slower than the native gradient it replaces at 10x10x256, stride 2); after this
    one transpose every tap is a unit-stride window of one phase.
    """
    dynamic = tf.shape(inputs)
    n, h, w, c = (dynamic[i] if d is None else d for i, d in enumerate(inputs.shape))
    hq, wq = -(-h // strides), -(-w // strides)
    padded = tf.pad(inputs, [[0, 0], [0, hq * strides - h], [0, wq * strides - w], [0, 0]])
    split = tf.reshape(padded, [n, hq, strides, wq, strides, c])
    return tf.transpose(split, [2, 4, 0, 1, 3, 5])


def matmul_filter_gradient(
    inputs: tf.Tensor, grad_out: tf.Tensor, kernel_shape: tf.TensorShape, strides: int
) -> tf.Tensor:
    """d loss / d kernel of a VALID convolution: one ``[C, N*H*W] @ [N*H*W, D]`` per tap."""
    kh, kw, c, d = (int(s) for s in kernel_shape)
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    if out_h is None or out_w is None:
        out_h, out_w = tf.shape(grad_out)[1], tf.shape(grad_out)[2]
    flat_grad = tf.reshape(grad_out, [-1, d])
    phases = _phases(inputs, strides) if strides > 1 else None
    taps = []
    for i in range(kh):
        for j in range(kw):
            if phases is None:
                patch = inputs[:, i : i + out_h, j : j + out_w, :]
            else:
                r, q = divmod(i, strides), divmod(j, strides)
                patch = phases[r[1], q[1], :, r[0] : r[0] + out_h, q[0] : q[0] + out_w, :]
            taps.append(tf.matmul(tf.reshape(patch, [-1, c]), flat_grad, transpose_a=True))
    return tf.reshape(tf.stack(taps), [kh, kw, c, d])


def conv2d(inputs: tf.Tensor, kernel: tf.Tensor, strides: int, padding: str) -> tf.Tensor:
    """``tf.nn.conv2d`` (NHWC) whose filter gradient is :func:`matmul_filter_gradient`.

    ``padding`` "SAME" is supported for stride 1 and odd kernels (the ResNet's only SAME case);
    strided convolutions are padded by the caller and run "VALID", as in the reference ResNet.
    """
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    if padding == "SAME" and (strides != 1 or kh % 2 == 0 or kw % 2 == 0):
        raise ValueError("conv_grad.conv2d: SAME padding needs stride 1 and an odd kernel.")
    step = [1, strides, strides, 1]

    @tf.custom_gradient
    def conv(x: tf.Tensor, k: tf.Tensor):
        y = tf.nn.conv2d(x, k, step, padding)

        def grad(dy: tf.Tensor):
            dx = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=k, out_backprop=dy, strides=step, padding=padding
            )
            valid_x = x
            if padding == "SAME":
                ph, pw = (kh - 1) // 2, (kw - 1) // 2
                valid_x = tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
            return dx, matmul_filter_gradient(valid_x, dy, k.shape, strides)

        return y, grad

    return conv(inputs, kernel)
