"""Depthwise convolutions in NCHW{b}c: one input block per output block, so the padding can be
made row by row inside the conv's loop (``direct.BlockedConv`` schedules the compute)."""
from __future__ import annotations

from tvm import te

from .common import NCHWC_DEPTHWISE_BLOCK
from .direct import padded_input


def blocked_depthwise_te(data, kernel, strides, padding, dilation, out_dtype=None):
    """Depthwise convolution in NCHW{b}c x (C/b, 1, KH, KW, 1, b) -> NCHW{b}c.

    out[n, c, y, x, cb] = sum over (ky, kx) of
        pad(data)[n, c, y*sy + ky*dy, x*sx + kx*dx, cb] * kernel[c, 0, ky, kx, 0, cb]

    ``out_dtype`` (int32 for int8 x int8) widens both operands before the product: exact sums.
    """
    batch, chunks, _, _, block = (int(v) for v in data.shape)
    k_chunks, k_one, kernel_h, kernel_w, k_one_b, k_block = (int(v) for v in kernel.shape)
    if (k_chunks, k_one, k_one_b, k_block) != (chunks, 1, 1, block):
        raise ValueError(
            "blocked depthwise conv: kernel must be (C/b, 1, KH, KW, 1, b) for data "
            f"(N, C/b, H, W, b). Received: data={tuple(data.shape)}, kernel={tuple(kernel.shape)}")
    padded, out_h, out_w = padded_input(data, (kernel_h, kernel_w), strides, padding, dilation)
    stride_h, stride_w = (int(s) for s in strides)
    dil_h, dil_w = (int(d) for d in dilation)
    r_y = te.reduce_axis((0, kernel_h), "ky")
    r_x = te.reduce_axis((0, kernel_w), "kx")

    def widen(value):
        return value if out_dtype is None else value.astype(out_dtype)

    return te.compute(
        (batch, chunks, out_h, out_w, block),
        lambda n, c, y, x, cb: te.sum(
            widen(padded[n, c, y * stride_h + r_y * dil_h, x * stride_w + r_x * dil_w, cb])
            * widen(kernel[c, 0, r_y, r_x, 0, cb]),
            axis=[r_y, r_x]),
        name=NCHWC_DEPTHWISE_BLOCK)
