"""Activations: elementwise functions of one tensor, plus Softmax/LogSoftmax over an axis."""
from __future__ import annotations

import numpy as np

from .base import Op, register


@register
class Relu(Op):
    """``y = max(x, 0)``. Output shape = input shape."""

    def forward(self, inputs, ctx):
        x = inputs[0]
        y = np.maximum(x, 0).astype(x.dtype, copy=False)
        return [y], (x > 0 if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        return [grad_outputs[0] * cache]
