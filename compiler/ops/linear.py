"""Fully connected layers: Gemm.

``Y = alpha * A' @ B' + beta * C`` with ``A' = A^T if transA else A`` (M, K), ``B' = B^T if
transB else B`` (K, N) and C broadcast (unidirectionally) to (M, N). The Dense layer emits
``Gemm(x, W, b, transB=1)`` with W of shape (units, features), as PyTorch's Linear.
"""
from __future__ import annotations

import numpy as np

from .base import Op, register
from .tensor import unbroadcast


@register
class Gemm(Op):
    """General matrix product. Output shape (M, N); MACs per sample (per row of A') = K * N."""

    attr_defaults = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}
    arity = (2, 3)
    param_inputs = (1, 2)
    onnx_opsets = (7, 99)

    def check_attrs(self, attrs):
        for key in ("alpha", "beta"):
            try:
                attrs[key] = float(attrs[key])
            except (TypeError, ValueError):
                self.fail(f"attribute '{key}' must be a number", **{key: attrs[key]})
        for key in ("transA", "transB"):
            if int(attrs[key]) not in (0, 1):
                self.fail(f"attribute '{key}' must be 0 or 1", **{key: attrs[key]})
            attrs[key] = int(attrs[key])
        return attrs

    def _mkn(self, a_shape, b_shape):
        if len(a_shape) != 2 or len(b_shape) != 2:
            self.fail("A and B must be 2-D (add Flatten before a Dense layer)", a_shape=tuple(a_shape),
                      b_shape=tuple(b_shape))
        m, k = (a_shape[1], a_shape[0]) if self.attrs["transA"] else (a_shape[0], a_shape[1])
        kb, n = (b_shape[1], b_shape[0]) if self.attrs["transB"] else (b_shape[0], b_shape[1])
        if k != kb:
            self.fail("inner dimensions of A' and B' must agree", a_shape=tuple(a_shape), b_shape=tuple(b_shape),
                      transA=self.attrs["transA"], transB=self.attrs["transB"])
        return m, k, n

    def infer_shapes(self, in_shapes):
        m, _, n = self._mkn(in_shapes[0], in_shapes[1])
        if len(in_shapes) > 2 and in_shapes[2] is not None:
            c = tuple(in_shapes[2])
            padded = (1,) * (2 - len(c)) + c
            if len(c) > 2 or any(dc not in (1, do) for dc, do in zip(padded, (m, n))):
                self.fail("C must broadcast to the output shape (M, N)", c_shape=c, output_shape=(m, n))
        return [(m, n)]

    def macs(self, in_shapes, out_shapes):
        _, k, n = self._mkn(in_shapes[0], in_shapes[1])
        return int(k) * int(n)

    def to_onnx(self, inputs, outputs, opset, ctx):
        import onnx.helper

        inputs = list(inputs)
        if opset < 11 and (len(inputs) < 3 or not inputs[2]):  # C is optional only from opset 11
            inputs = inputs[:2] + [ctx.add_initializer(ctx.unique_name(f"{self.name}_zero_c"),
                                                       np.zeros(1, np.float32))]
        return [onnx.helper.make_node("Gemm", inputs, outputs, name=self.name, **self.onnx_attributes(opset))]

    def forward(self, inputs, ctx):
        a, b = inputs[0], inputs[1]
        c = inputs[2] if len(inputs) > 2 else None
        a_op = a.T if self.attrs["transA"] else a
        b_op = b.T if self.attrs["transB"] else b
        y = a_op @ b_op
        if self.attrs["alpha"] != 1.0:
            y *= self.attrs["alpha"]
        if c is not None:
            y += self.attrs["beta"] * c
        cache = (a_op, b_op, None if c is None else c.shape) if ctx.need_grad else None
        return [y.astype(a.dtype, copy=False)], cache

    def backward(self, cache, grad_outputs):
        a_op, b_op, c_shape = cache
        dy = grad_outputs[0]
        alpha = self.attrs["alpha"]
        da = alpha * (dy @ b_op.T)  # d/dA' of the product
        db = alpha * (a_op.T @ dy)
        grads = [np.ascontiguousarray(da.T if self.attrs["transA"] else da),
                 np.ascontiguousarray(db.T if self.attrs["transB"] else db)]
        if c_shape is not None:
            grads.append(unbroadcast(self.attrs["beta"] * dy, c_shape))
        return grads
