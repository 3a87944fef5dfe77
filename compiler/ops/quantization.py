"""Quantization: QuantizeLinear and DequantizeLinear (the QDQ form that files carry), and the
integer kernels the NumPy backend runs them as: QLinearConv (ONNX) and QGemm (onnxruntime's
com.microsoft op), both int8 x int8 with exact integer accumulation.

A QDQ file says *where* values are integers; ``compiler/quant/integer.py`` rewrites each
``DequantizeLinear -> Conv/Gemm [-> Relu] -> QuantizeLinear`` chain into one of the integer ops,
which is the reference the compiled int8 code is verified against. Requantization is one formula
everywhere (the one onnxruntime's QLinearConv uses), so the reference and the compiled code can
agree bit for bit::

    acc = sum((xq - zx) * (wq - zw)) + bq                      exact (int64 here)
    M   = float32(sx) * float32(sw) / float32(sy)              float32, per output channel
    y   = clip(round_half_even(float32(acc) * M) + zy, qmin, qmax)

Quantized tensors are never trained: these ops have no backward.
"""
from __future__ import annotations

import numpy as np

from .base import Op, RunContext, register
from .conv import Conv

#: Integer types a quantized tensor may have, with their ranges.
INTEGER_RANGES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255),
                  np.dtype(np.int16): (-32768, 32767), np.dtype(np.uint16): (0, 65535),
                  np.dtype(np.int32): (-2**31, 2**31 - 1)}


def _per_axis(op: Op, value: np.ndarray, shape, axis: int, what: str) -> np.ndarray:
    """``value`` (a scalar or a 1-D array along ``axis``) shaped to broadcast against ``shape``."""
    value = np.asarray(value)
    if value.ndim == 0 or value.size == 1 and value.ndim == 1 and (len(shape) == 0 or shape[axis] != 1):
        return value.reshape(())
    if value.ndim != 1 or value.shape[0] != shape[axis]:
        op.fail(f"{what} must be a scalar or 1-D with one entry per index of axis {axis}",
                **{f"{what}_shape": tuple(value.shape)}, input_shape=tuple(shape), axis=axis)
    view = [1] * len(shape)
    view[axis] = value.shape[0]
    return value.reshape(view)


class _Linear(Op):
    """Shared attribute handling of QuantizeLinear and DequantizeLinear (axis, no blocks)."""

    arity = (2, 3)
    onnx_opsets = (10, 99)
    differentiable = False

    def check_attrs(self, attrs):
        attrs["axis"] = int(attrs["axis"])
        if int(attrs.get("block_size", 0)):
            self.fail("blocked quantization (block_size) is not supported", block_size=attrs["block_size"])
        return attrs

    def _axis(self, rank: int) -> int:
        axis = self.attrs["axis"]
        if not -rank <= axis < max(rank, 1):
            self.fail("axis is out of range for the input", axis=axis, rank=rank)
        return axis % rank if rank else 0

    def infer_shapes(self, in_shapes):
        x = tuple(in_shapes[0])
        for position, what in ((1, "scale"), (2, "zero_point")):
            if len(in_shapes) > position and in_shapes[position] is not None:
                s = tuple(in_shapes[position])
                if len(s) > 1 or (len(s) == 1 and s[0] != 1 and x and s[0] != x[self._axis(len(x))]):
                    self.fail(f"{what} must be a scalar or 1-D with one entry per index of the axis",
                              **{f"{what}_shape": s}, input_shape=x, axis=self.attrs["axis"])
        return [x]

    def _scale_and_zero(self, inputs, x_shape, default_dtype):
        scale = inputs[1]
        # the axis means something only to a per-axis scale (per-tensor files may carry any)
        axis = self._axis(len(x_shape)) if np.ndim(scale) == 1 and np.size(scale) > 1 else 0
        if not np.issubdtype(scale.dtype, np.floating) or np.any(~np.isfinite(scale)) or np.any(scale <= 0):
            self.fail("scale must be finite positive floats", scale=np.asarray(scale).ravel()[:8].tolist())
        zero = inputs[2] if len(inputs) > 2 and inputs[2] is not None else np.zeros((), default_dtype)
        if np.dtype(zero.dtype) not in INTEGER_RANGES:
            self.fail("zero_point must be an integer type (int8, uint8, int16, uint16, int32)", dtype=str(zero.dtype))
        return (_per_axis(self, scale.astype(np.float32), x_shape, axis, "scale"),
                _per_axis(self, zero, x_shape, axis, "zero_point"), np.dtype(zero.dtype))


@register
class QuantizeLinear(_Linear):
    """``y = saturate(round_half_even(x / scale) + zero_point)``, per tensor or per ``axis``."""

    attr_defaults = {"axis": 1, "saturate": 1, "block_size": 0, "output_dtype": 0, "precision": 0}

    def forward(self, inputs, ctx: RunContext):
        x = inputs[0].astype(np.float32, copy=False)
        scale, zero, dtype = self._scale_and_zero(inputs, x.shape, np.uint8)
        lo, hi = INTEGER_RANGES[dtype]
        # float32 division then rint (ties to even): the spec's and onnxruntime's arithmetic
        y = np.rint(x / scale).astype(np.float64) + zero.astype(np.float64)
        return [np.clip(y, lo, hi).astype(dtype)], None

    def onnx_attributes(self, opset):
        attrs = {"axis": self.attrs["axis"]} if self.attrs["axis"] != 1 else {}
        return attrs


@register
class DequantizeLinear(_Linear):
    """``y = (x - zero_point) * scale`` in float32, per tensor or per ``axis``."""

    attr_defaults = {"axis": 1, "block_size": 0, "output_dtype": 0}

    def forward(self, inputs, ctx: RunContext):
        x = inputs[0]
        if np.dtype(x.dtype) not in INTEGER_RANGES:
            self.fail("input must be an integer tensor (a quantized value)", dtype=str(x.dtype))
        scale, zero, _ = self._scale_and_zero(inputs, x.shape, x.dtype)
        return [((x.astype(np.int64) - zero.astype(np.int64)).astype(np.float32) * scale).astype(np.float32)], None

    def onnx_attributes(self, opset):
        return {"axis": self.attrs["axis"]} if self.attrs["axis"] != 1 else {}


def requantize(acc: np.ndarray, multiplier: np.ndarray, zero: np.ndarray, dtype, lower: int | None = None):
    """int64 accumulators -> the output integer type (module docstring's formula)."""
    lo, hi = INTEGER_RANGES[np.dtype(dtype)]
    scaled = np.rint(acc.astype(np.float32) * multiplier.astype(np.float32)).astype(np.float64)
    return np.clip(scaled + zero.astype(np.float64), lo if lower is None else max(lo, lower), hi).astype(dtype)


def multiplier(x_scale, w_scale, y_scale) -> np.ndarray:
    """The float32 requantization multiplier, one per output channel (the formula's M)."""
    return (np.float32(x_scale) * np.asarray(w_scale, np.float32).ravel()) / np.float32(y_scale)


def _exact_int_product(op: Op, values) -> None:
    for v in values:
        if v is not None and np.dtype(v.dtype) not in INTEGER_RANGES:
            op.fail("quantized inputs must be integer tensors", dtype=str(v.dtype))


@register
class QLinearConv(Op):
    """ONNX QLinearConv: x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale,
    y_zero_point[, B int32]; attributes as Conv. The products are summed exactly (float64 holds
    every int8 x int8 sum a CNN layer makes, up to 2**53)."""

    attr_defaults = dict(Conv.attr_defaults)
    arity = (8, 9)
    onnx_opsets = (10, 99)
    differentiable = False

    def check_attrs(self, attrs):
        self._conv = Conv(attrs, name=self.name)
        return self._conv.attrs

    def infer_shapes(self, in_shapes):
        return self._conv.infer_shapes([in_shapes[0], in_shapes[3]] + ([in_shapes[8]] if len(in_shapes) > 8 else []))

    def macs(self, in_shapes, out_shapes):
        return self._conv.macs([in_shapes[0], in_shapes[3]], out_shapes)

    def receptive_field(self):
        return self._conv.receptive_field()

    def forward(self, inputs, ctx: RunContext):
        x, sx, zx, w, sw, zw, sy, zy = inputs[:8]
        bias = inputs[8] if len(inputs) > 8 else None
        _exact_int_product(self, (x, w, bias))
        m = w.shape[0]
        xs = x.astype(np.float64) - np.float64(zx)
        ws = w.astype(np.float64) - np.asarray(zw, np.float64).reshape(-1, 1, 1, 1)
        (acc,), _ = self._conv.forward([xs, ws, None], RunContext())
        acc = np.rint(acc).astype(np.int64)
        if bias is not None:
            acc += bias.astype(np.int64).reshape(1, m, 1, 1)
        scale = multiplier(sx, np.broadcast_to(np.asarray(sw, np.float32).ravel(), (m,)) if np.size(sw) == 1 else sw, sy)
        return [requantize(acc, scale.reshape(1, -1, 1, 1), np.asarray(zy), zy.dtype)], None


@register
class QGemm(Op):
    """onnxruntime's QGemm (com.microsoft) for dense layers: A, a_scale, a_zero_point, B,
    b_scale, b_zero_point[, C int32][, y_scale, y_zero_point]. Without ``y_scale`` the output is
    float32: ``float32(acc) * (a_scale * b_scale)``. Only ``transA = 0`` and ``alpha = 1``, the
    form a quantized dense layer takes."""

    attr_defaults = {"alpha": 1.0, "transA": 0, "transB": 0}
    arity = (6, 9)
    domain = "com.microsoft"
    differentiable = False

    def to_onnx(self, inputs, outputs, opset, ctx):
        self.fail("is the integer reference of a quantized dense layer, not written to files; "
                  "export the QDQ graph it was made from")

    def check_attrs(self, attrs):
        if float(attrs["alpha"]) != 1.0 or int(attrs["transA"]) != 0:
            self.fail("only alpha = 1 and transA = 0 are supported", alpha=attrs["alpha"], transA=attrs["transA"])
        attrs["transB"] = int(attrs["transB"])
        return attrs

    def _n(self, b_shape):
        return b_shape[0] if self.attrs["transB"] else b_shape[1]

    def infer_shapes(self, in_shapes):
        a, b = tuple(in_shapes[0]), tuple(in_shapes[3])
        k = b[1] if self.attrs["transB"] else b[0]
        if len(a) != 2 or len(b) != 2 or a[1] != k:
            self.fail("A (M, K) and B (K, N) (or (N, K) with transB) must agree", a_shape=a, b_shape=b,
                      transB=self.attrs["transB"])
        return [(a[0], self._n(b))]

    def macs(self, in_shapes, out_shapes):
        return int(in_shapes[0][1]) * int(self._n(in_shapes[3]))

    def forward(self, inputs, ctx: RunContext):
        a, sa, za, b, sb, zb = inputs[:6]
        bias = inputs[6] if len(inputs) > 6 else None
        sy = inputs[7] if len(inputs) > 7 else None
        zy = inputs[8] if len(inputs) > 8 else None
        _exact_int_product(self, (a, b, bias))
        bt = b.T if self.attrs["transB"] else b
        n = bt.shape[1]
        a64 = a.astype(np.float64) - np.float64(za)
        b64 = bt.astype(np.float64) - np.asarray(zb, np.float64).reshape(1, -1)
        acc = np.rint(a64 @ b64).astype(np.int64)
        if bias is not None:
            acc += bias.astype(np.int64).reshape(1, n)
        sb_n = np.broadcast_to(np.asarray(sb, np.float32).ravel(), (n,)) if np.size(sb) == 1 else np.asarray(sb)
        if sy is None:
            return [(acc.astype(np.float32) * (np.float32(sa) * sb_n.astype(np.float32))).astype(np.float32)], None
        return [requantize(acc, multiplier(sa, sb_n, sy).reshape(1, -1), np.asarray(zy), zy.dtype)], None
