"""Fully connected layers: Gemm and MatMul.

``Y = alpha * A' @ B' + beta * C`` with ``A' = A^T if transA else A`` (M, K), ``B' = B^T if
transB else B`` (K, N) and C broadcast (unidirectionally) to (M, N). The Dense layer emits
``Gemm(x, W, b, transB=1)`` with W of shape (units, features), as PyTorch's Linear.

MatMul is NumPy's ``matmul``: what PyTorch exports for a Linear on more than two dimensions
(ConvNeXt's ``MatMul(x, W^T) + Add`` on (N, H, W, C)) and, at its old opsets, for a Linear without
bias (``Transpose(W)`` then MatMul; import folds the Transpose, W being a constant).
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelDefinitionError
from ._parallel import matmul  # split over the backend's threads (BLAS runs on one inside it)
from .base import Op, register
from .tensor import broadcast_shape, unbroadcast


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

    def quantized_weight_axis(self) -> int:
        return 0 if self.attrs["transB"] else 1

    def integer_node(self, name, head, bias, requantize, output, has_bias):
        from ..ir import Node  # the IR imports the ops: a module-level import would be a cycle

        if self.attrs["alpha"] != 1.0 or self.attrs["transA"] or (has_bias and self.attrs["beta"] != 1.0):
            return "Gemm with alpha/beta != 1 or transA"
        tail = [bias or ""] + (list(requantize) if requantize else [])
        return Node("QGemm", name, head + tail, [output], {"transB": self.attrs["transB"]})

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
        y = matmul(a_op, b_op)
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
        da = alpha * matmul(dy, b_op.T)  # d/dA' of the product
        db = alpha * matmul(a_op.T, dy)
        grads = [np.ascontiguousarray(da.T if self.attrs["transA"] else da),
                 np.ascontiguousarray(db.T if self.attrs["transB"] else db)]
        if c_shape is not None:
            grads.append(unbroadcast(self.attrs["beta"] * dy, c_shape))
        return grads


@register
class MatMul(Op):
    """``A @ B`` with NumPy's rules: the last two axes are matrices (M, K) @ (K, N), the axes before
    them broadcast; a 1-D A is a row (K,) and a 1-D B a column, the promoted axis dropped from the
    output. MACs per sample: K per output element, the batch (the symbolic dimension, else the
    first axis of a batched A) excluded.
    """

    arity = (2, 2)
    onnx_opsets = (1, 99)

    def _out(self, a_shape, b_shape):
        a, b = tuple(a_shape), tuple(b_shape)
        if not a or not b:
            self.fail("operands must have at least one dimension", a_shape=a, b_shape=b)
        a2 = (1,) + a if len(a) == 1 else a
        b2 = b + (1,) if len(b) == 1 else b
        if a2[-1] != b2[-2]:
            self.fail("the last dimension of A must equal the second-to-last of B (the inner dimension K)",
                      a_shape=a, b_shape=b)
        try:
            batch = broadcast_shape(self, a2[:-2], b2[:-2])
        except ModelDefinitionError:
            self.fail("the batch dimensions (all but the last two) must broadcast", a_shape=a, b_shape=b)
        out = batch + (a2[-2:-1] if len(a) > 1 else ()) + (b2[-1:] if len(b) > 1 else ())
        return out, a2[-1]

    def infer_shapes(self, in_shapes):
        return [self._out(in_shapes[0], in_shapes[1])[0]]

    def macs(self, in_shapes, out_shapes):
        out, k = self._out(in_shapes[0], in_shapes[1])
        if any(isinstance(d, str) for d in out):
            per_sample = [d for d in out if not isinstance(d, str)]
        else:
            per_sample = list(out[1:]) if len(in_shapes[0]) > 1 else list(out)
        # a symbolic K is a sum over the batch: per sample, one term per output element
        return (k if isinstance(k, int) else 1) * int(np.prod(per_sample, dtype=np.int64))

    def forward(self, inputs, ctx):
        a, b = inputs
        y = (matmul(a, b) if min(a.ndim, b.ndim) >= 2 else np.matmul(a, b)).astype(a.dtype, copy=False)
        wanted = tuple(ctx.requires_grad) or (True, True)
        return [y], ((a, b, wanted) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        a, b, wanted = cache
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        dy = grad_outputs[0].reshape(batch + (a2.shape[-2], b2.shape[-1]))
        da = db = None
        if wanted[0]:
            da = unbroadcast(matmul(dy, np.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
        if wanted[1]:
            db = unbroadcast(matmul(np.swapaxes(a2, -1, -2), dy), b2.shape).reshape(b.shape)
        return [da, db]
