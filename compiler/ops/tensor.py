"""Tensor plumbing and elementwise arithmetic: Add, Mul, Concat, Flatten, Reshape, Pad."""
from __future__ import annotations

import numpy as np

from .base import Op, register


def broadcast_shape(op: Op, a, b):
    """NumPy/ONNX multidirectional broadcasting of two shapes (symbolic dims must match exactly)."""
    a, b = tuple(a), tuple(b)
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + a
    b = (1,) * (n - len(b)) + b
    out = []
    for da, db in zip(a, b):
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            op.fail("operand shapes cannot be broadcast together", a_shape=a, b_shape=b)
    return tuple(out)


def unbroadcast(grad: np.ndarray, shape) -> np.ndarray:
    """Sum a gradient back over the axes that broadcasting expanded, to the operand's ``shape``."""
    shape = tuple(shape)
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    assert grad.shape == shape, (grad.shape, shape)
    return grad


@register
class Add(Op):
    """``y = a + b`` with broadcasting (residual connections). Shape: broadcast(a, b)."""

    arity = (2, 2)

    def infer_shapes(self, in_shapes):
        return [broadcast_shape(self, in_shapes[0], in_shapes[1])]

    def forward(self, inputs, ctx):
        a, b = inputs
        y = (a + b).astype(a.dtype, copy=False)
        return [y], ((a.shape, b.shape) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        a_shape, b_shape = cache
        g = grad_outputs[0]
        return [unbroadcast(g, a_shape), unbroadcast(g, b_shape)]
