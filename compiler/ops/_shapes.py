"""The one place for convolution/pooling output sizes and pad handling.

Pads are kept in ONNX order everywhere inside edgecnn: ``[x1_begin, x2_begin, ..., x1_end, x2_end]``.
Conversion to NumPy's ``((before, after), ...)`` pairs happens only in :func:`numpy_pad_width`.
"""
from __future__ import annotations

import math


def output_size(size: int, kernel: int, stride: int, dilation: int, pad_begin: int, pad_end: int,
                ceil_mode: bool = False) -> int:
    """Output length along one spatial axis.

    ``effective_kernel = dilation * (kernel - 1) + 1``
    ``out = floor_or_ceil((size + pad_begin + pad_end - effective_kernel) / stride) + 1``

    With ``ceil_mode`` the last window may reach past the padded end, but a window that would
    start in the end padding (at or beyond ``size + pad_begin``) is dropped (the rule of the ONNX
    spec text, onnxruntime and PyTorch).
    Returns a value < 1 when the kernel does not fit; callers turn that into an error.
    """
    effective = dilation * (kernel - 1) + 1
    span = size + pad_begin + pad_end - effective
    if span < 0:
        return 0
    if ceil_mode:
        out = math.ceil(span / stride) + 1
        if (out - 1) * stride >= size + pad_begin:
            out -= 1
    else:
        out = span // stride + 1
    return out


def same_pads(size: int, kernel: int, stride: int, dilation: int, upper: bool = True) -> tuple[int, int]:
    """(begin, end) pads for ONNX auto_pad SAME_UPPER / SAME_LOWER: output = ceil(size / stride).

    The odd pad goes at the end for SAME_UPPER (TensorFlow's "same") and at the beginning for
    SAME_LOWER.
    """
    effective = dilation * (kernel - 1) + 1
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + effective - size)
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)


def resolve_pads(auto_pad: str, pads, spatial: tuple[int, ...], kernel: tuple[int, ...],
                 strides: tuple[int, ...], dilations: tuple[int, ...]) -> list[int]:
    """Explicit ONNX-order pads from ``auto_pad`` (NOTSET, VALID, SAME_UPPER, SAME_LOWER) and ``pads``."""
    n = len(spatial)
    if auto_pad in ("NOTSET", "", None):
        return list(pads) if pads is not None else [0] * (2 * n)
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pairs = [same_pads(spatial[i], kernel[i], strides[i], dilations[i], auto_pad == "SAME_UPPER")
                 for i in range(n)]
        return [p[0] for p in pairs] + [p[1] for p in pairs]
    raise ValueError(f"auto_pad must be NOTSET, VALID, SAME_UPPER or SAME_LOWER, got {auto_pad!r}")


def numpy_pad_width(pads, leading_axes: int = 2) -> list[tuple[int, int]]:
    """ONNX-order spatial pads -> NumPy ``pad_width`` for an array with ``leading_axes`` unpadded axes."""
    n = len(pads) // 2
    return [(0, 0)] * leading_axes + [(int(pads[i]), int(pads[i + n])) for i in range(n)]
