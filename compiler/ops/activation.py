"""Activations: elementwise functions of one tensor, plus Softmax/LogSoftmax over an axis.

Every op here keeps the input's shape and dtype (float32 in training and inference, float64
inside gradient checks). Python float constants are "weak" under NumPy 2's promotion rules, so
``alpha * x`` stays float32.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import UnsupportedOpError
from ._parallel import for_slices
from .base import Op, register
from .tensor import broadcast_shape, constant_input, unbroadcast


def _float_attr(op: Op, attrs: dict, key: str):
    try:
        attrs[key] = float(attrs[key])
    except (TypeError, ValueError):
        op.fail(f"attribute '{key}' must be a number", **{key: attrs[key]})
    if not np.isfinite(attrs[key]):
        op.fail(f"attribute '{key}' must be finite", **{key: attrs[key]})
    return attrs


def _scalar_input(node, position: int, ctx, what: str):
    """The value of a constant scalar input of an ONNX node (None when the input is absent)."""
    value = constant_input(node, position, ctx, what, required=False)
    if value is None:
        return None
    if value.size != 1:
        raise UnsupportedOpError(f"Node '{node.name}' ({node.op_type}): input '{what}' must be a scalar. "
                                 f"Received: shape={value.shape}")
    return float(value.reshape(()))


@register
class Relu(Op):
    """``y = max(x, 0)``. Output shape = input shape."""

    onnx_opsets = (6, 99)

    def forward(self, inputs, ctx):
        x = np.ascontiguousarray(inputs[0])
        y = np.empty_like(x)
        xf, yf = x.reshape(-1), y.reshape(-1)
        for_slices(lambda first, stop: np.maximum(xf[first:stop], 0, out=yf[first:stop]), xf.size, xf.size)
        # y > 0 exactly where x > 0: the output (alive anyway) is the backward's mask
        return [y], (y if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        y, dy = cache, np.ascontiguousarray(grad_outputs[0])
        dx = np.empty_like(dy)
        yf, dyf, dxf = y.reshape(-1), dy.reshape(-1), dx.reshape(-1)

        def body(first, stop):
            np.multiply(dyf[first:stop], yf[first:stop] > 0, out=dxf[first:stop])
        for_slices(body, dyf.size, dyf.size)
        return [dx]


@register
class Clip(Op):
    """``y = min(max(x, min), max)``; ``None`` leaves a side unbounded. ReLU6 is Clip(0, 6).

    In the IR ``min`` and ``max`` are attributes (as in opset 6); from opset 11 ONNX takes them as
    optional inputs, which the exporter writes as scalar initializers. The gradient passes where
    ``min < x < max`` (zero at and beyond the bounds, as PyTorch's hardtanh).
    """

    attr_defaults = {"min": None, "max": None}
    onnx_opsets = (6, 99)

    def check_attrs(self, attrs):
        for key in ("min", "max"):
            if attrs[key] is not None:
                _float_attr(self, attrs, key)
        if attrs["min"] is not None and attrs["max"] is not None and attrs["min"] > attrs["max"]:
            self.fail("min must not exceed max", min=attrs["min"], max=attrs["max"])
        return attrs

    def forward(self, inputs, ctx):
        x = inputs[0]
        lo, hi = self.attrs["min"], self.attrs["max"]
        y = np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi).astype(x.dtype, copy=False)
        if not ctx.need_grad:
            return [y], None
        passes = np.ones(x.shape, dtype=bool)
        if lo is not None:
            passes &= x > lo
        if hi is not None:
            passes &= x < hi
        return [y], passes

    def backward(self, cache, grad_outputs):
        return [grad_outputs[0] * cache]

    def onnx_attributes(self, opset):
        return {}

    def to_onnx(self, inputs, outputs, opset, ctx):
        import onnx.helper

        if opset < 11:  # opset 6..10: bounds are attributes
            bounds = {k: self.attrs[k] for k in ("min", "max") if self.attrs[k] is not None}
            return [onnx.helper.make_node("Clip", inputs[:1], outputs, name=self.name, **bounds)]
        names = []
        for key in ("min", "max"):
            value = self.attrs[key]
            if value is None:
                names.append("")
            else:
                name = ctx.unique_name(f"{self.name}_{key}")
                ctx.add_initializer(name, np.array(value, np.float32))
                names.append(name)
        while names and not names[-1]:
            names.pop()
        return [onnx.helper.make_node("Clip", [inputs[0], *names], outputs, name=self.name)]

    @classmethod
    def from_onnx(cls, node, opset, ctx):
        attrs, inputs, outputs = super().from_onnx(node, opset, ctx)
        if opset < 11:
            return {k: attrs[k] for k in ("min", "max") if k in attrs}, inputs[:1], outputs
        return ({"min": _scalar_input(node, 1, ctx, "min"), "max": _scalar_input(node, 2, ctx, "max")},
                inputs[:1], outputs)


@register
class LeakyRelu(Op):
    """``y = x if x >= 0 else alpha * x``."""

    attr_defaults = {"alpha": 0.01}
    onnx_opsets = (6, 99)

    def check_attrs(self, attrs):
        return _float_attr(self, attrs, "alpha")

    def forward(self, inputs, ctx):
        x = inputs[0]
        positive = x >= 0
        y = np.where(positive, x, self.attrs["alpha"] * x).astype(x.dtype, copy=False)
        return [y], (positive if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        dy = grad_outputs[0]
        return [np.where(cache, dy, self.attrs["alpha"] * dy).astype(dy.dtype, copy=False)]


@register
class PRelu(Op):
    """``y = x if x >= 0 else slope * x`` with ``slope`` broadcast to x (e.g. shape (C, 1, 1)).

    ONNX broadcasts slope unidirectionally: the output has x's shape. The slope gradient is summed
    back over the broadcast axes.
    """

    arity = (2, 2)
    param_inputs = (1,)
    onnx_opsets = (9, 99)

    def infer_shapes(self, in_shapes):
        x, slope = tuple(in_shapes[0]), tuple(in_shapes[1])
        if broadcast_shape(self, x, slope) != x or len(slope) > len(x):
            self.fail("slope must broadcast to the input shape (unidirectional)", input_shape=x, slope_shape=slope)
        return [x]

    def forward(self, inputs, ctx):
        x, slope = inputs
        positive = x >= 0
        y = np.where(positive, x, slope * x).astype(x.dtype, copy=False)
        return [y], ((x, slope, positive) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        x, slope, positive = cache
        dy = grad_outputs[0]
        dx = np.where(positive, dy, slope * dy).astype(dy.dtype, copy=False)
        dslope = unbroadcast(np.where(positive, 0, dy * x).astype(dy.dtype, copy=False), slope.shape)
        return [dx, dslope]

    @classmethod
    def before_opset_upgrade(cls, node, opset, graph, ranks):
        """Before opset 7 a slope of C values was per channel (PyTorch's old exports); from 7 it
        broadcasts from the last axis, and the version converter leaves it as it is: the slope
        becomes (C, 1, ...) so it still lands on the channels."""
        rank = ranks.get(node.input[0])
        if opset >= 7 or len(node.input) < 2 or not rank or rank <= 2:
            return
        slope = node.input[1]
        for init in graph.initializer:
            if init.name == slope and len(init.dims) == 1 and init.dims[0] > 1:
                init.dims[:] = [init.dims[0]] + [1] * (rank - 2)
                # old files also list initializers among the graph inputs, with their shape
                for declared in (i.type.tensor_type.shape for i in graph.input if i.name == slope):
                    del declared.dim[:]
                    for size in init.dims:
                        declared.dim.add().dim_value = size


@register
class Sigmoid(Op):
    """``y = 1 / (1 + exp(-x))``, computed without overflow for large |x|."""

    onnx_opsets = (6, 99)

    def forward(self, inputs, ctx):
        x = inputs[0]
        e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
        y = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
        return [y], (y if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        y = cache
        return [grad_outputs[0] * y * (1 - y)]


@register
class Tanh(Op):
    """``y = tanh(x)``."""

    onnx_opsets = (6, 99)

    def forward(self, inputs, ctx):
        y = np.tanh(inputs[0])
        return [y], (y if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        return [grad_outputs[0] * (1 - cache * cache)]


@register
class Elu(Op):
    """``y = x if x > 0 else alpha * (exp(x) - 1)``."""

    attr_defaults = {"alpha": 1.0}
    onnx_opsets = (6, 99)

    def check_attrs(self, attrs):
        return _float_attr(self, attrs, "alpha")

    def forward(self, inputs, ctx):
        x = inputs[0]
        negative_part = self.attrs["alpha"] * np.expm1(np.minimum(x, 0))
        y = np.where(x > 0, x, negative_part).astype(x.dtype, copy=False)
        return [y], ((x > 0, negative_part) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        positive, negative_part = cache
        dy = grad_outputs[0]
        # d/dx alpha*(exp(x)-1) = alpha*exp(x) = negative_part + alpha
        return [np.where(positive, dy, dy * (negative_part + self.attrs["alpha"])).astype(dy.dtype, copy=False)]


@register
class Selu(Op):
    """``y = gamma * (x if x > 0 else alpha * (exp(x) - 1))`` with ONNX's default constants."""

    attr_defaults = {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875}
    onnx_opsets = (6, 99)

    def check_attrs(self, attrs):
        return _float_attr(self, _float_attr(self, attrs, "alpha"), "gamma")

    def forward(self, inputs, ctx):
        x = inputs[0]
        alpha, gamma = self.attrs["alpha"], self.attrs["gamma"]
        exp_part = alpha * np.exp(np.minimum(x, 0))
        y = (gamma * np.where(x > 0, x, exp_part - alpha)).astype(x.dtype, copy=False)
        return [y], ((x > 0, exp_part) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        positive, exp_part = cache
        dy = grad_outputs[0]
        return [(self.attrs["gamma"] * np.where(positive, dy, dy * exp_part)).astype(dy.dtype, copy=False)]


@register
class HardSigmoid(Op):
    """``y = max(0, min(1, alpha * x + beta))``."""

    attr_defaults = {"alpha": 0.2, "beta": 0.5}
    onnx_opsets = (6, 99)

    def check_attrs(self, attrs):
        return _float_attr(self, _float_attr(self, attrs, "alpha"), "beta")

    def forward(self, inputs, ctx):
        x = inputs[0]
        z = self.attrs["alpha"] * x + self.attrs["beta"]
        y = np.clip(z, 0, 1).astype(x.dtype, copy=False)
        return [y], (((z > 0) & (z < 1)) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        dy = grad_outputs[0]
        return [(dy * cache * self.attrs["alpha"]).astype(dy.dtype, copy=False)]


@register
class HardSwish(Op):
    """``y = x * max(0, min(1, x / 6 + 1 / 2))`` (ONNX's alpha = 1/6, beta = 0.5)."""

    onnx_opsets = (14, 99)

    def forward(self, inputs, ctx):
        x = inputs[0]
        gate = np.clip(x / 6 + 0.5, 0, 1)
        y = (x * gate).astype(x.dtype, copy=False)
        return [y], ((x, gate) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        x, gate = cache
        dy = grad_outputs[0]
        inside = (x > -3) & (x < 3)
        return [(dy * (gate + np.where(inside, x / 6, 0))).astype(dy.dtype, copy=False)]


@register
class Softplus(Op):
    """``y = log(1 + exp(x))``, computed as ``max(x, 0) + log1p(exp(-|x|))`` so that neither a
    large positive x (exp overflows) nor a large negative one (1 + tiny rounds to 1) loses it.
    Gradient ``sigmoid(x)``, also without overflow."""

    onnx_opsets = (1, 99)

    def forward(self, inputs, ctx):
        x = inputs[0]
        e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
        y = (np.maximum(x, 0) + np.log1p(e)).astype(x.dtype, copy=False)
        return [y], ((x >= 0, e) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        positive, e = cache
        sigmoid = np.where(positive, 1 / (1 + e), e / (1 + e))
        return [(grad_outputs[0] * sigmoid).astype(grad_outputs[0].dtype, copy=False)]


@register
class Softsign(Op):
    """``y = x / (1 + |x|)``. Gradient ``1 / (1 + |x|)^2`` (its second derivative jumps at 0)."""

    onnx_opsets = (1, 99)

    def forward(self, inputs, ctx):
        x = inputs[0]
        denominator = 1 + np.abs(x)
        y = (x / denominator).astype(x.dtype, copy=False)
        return [y], (denominator if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        return [(grad_outputs[0] / (cache * cache)).astype(grad_outputs[0].dtype, copy=False)]


def _erf(x: np.ndarray) -> np.ndarray:
    """The error function elementwise, in x's dtype (scipy ships with scikit-learn, a dependency;
    math.erf element by element is the slow fallback)."""
    try:
        from scipy.special import erf
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return np.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)
    return erf(x).astype(x.dtype, copy=False)


# Python floats, not NumPy scalars: they stay weak in NumPy 2's promotion, so float32 stays float32.
_TWO_OVER_SQRT_PI = 2 / math.sqrt(math.pi)


@register
class Erf(Op):
    """``y = erf(x) = 2 / sqrt(pi) * integral_0^x exp(-t^2) dt``; gradient ``2 / sqrt(pi) * exp(-x^2)``.

    PyTorch writes GELU before opset 20 as ``0.5 * x * (1 + Erf(x / sqrt(2)))``.
    """

    onnx_opsets = (9, 99)

    def forward(self, inputs, ctx):
        x = inputs[0]
        return [_erf(x)], (x if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        x, dy = cache, grad_outputs[0]
        return [(dy * (_TWO_OVER_SQRT_PI * np.exp(-x * x))).astype(dy.dtype, copy=False)]


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT_2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


@register
class Gelu(Op):
    """``y = x * Phi(x)`` with ``Phi`` the standard normal CDF (ONNX opset 20).

    ``approximate="none"``: ``Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))``, gradient
    ``Phi(x) + x * exp(-x^2 / 2) / sqrt(2 pi)``. ``approximate="tanh"``: ``Phi`` is replaced by
    ``0.5 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))`` and the gradient is that function's
    own derivative (exact for the approximation, not the erf form).
    """

    attr_defaults = {"approximate": "none"}
    onnx_opsets = (20, 99)

    def check_attrs(self, attrs):
        if isinstance(attrs["approximate"], bytes):
            attrs["approximate"] = attrs["approximate"].decode()
        if attrs["approximate"] not in ("none", "tanh"):
            self.fail("approximate must be 'none' or 'tanh'", approximate=attrs["approximate"])
        return attrs

    def forward(self, inputs, ctx):
        x = inputs[0]
        if self.attrs["approximate"] == "tanh":
            t = np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
            y = (0.5 * x * (1 + t)).astype(x.dtype, copy=False)
            return [y], ((x, t) if ctx.need_grad else None)
        cdf = 0.5 * (1 + _erf(x * _INV_SQRT_2))
        y = (x * cdf).astype(x.dtype, copy=False)
        return [y], ((x, cdf) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        dy = grad_outputs[0]
        if self.attrs["approximate"] == "tanh":
            x, t = cache
            inner = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
            slope = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * inner
        else:
            x, cdf = cache
            slope = cdf + x * _INV_SQRT_2PI * np.exp(-0.5 * x * x)
        return [(dy * slope).astype(dy.dtype, copy=False)]

    def onnx_attributes(self, opset):
        return {"approximate": self.attrs["approximate"]}


def _old_softmax_matches(node, opset: int, ctx, axis: int) -> bool:
    """Before opset 13 Softmax flattened the input into 2-D at ``axis`` (softmax over all trailing
    axes together). That equals opset 13's per-axis softmax only when ``axis`` is the last axis."""
    if axis == -1:
        return True
    rank = None
    shape_of = getattr(ctx, "shape", None)
    if callable(shape_of):
        shape = shape_of(node.input[0])
        rank = None if shape is None else len(shape)
        # Trailing axes of size 1 add nothing to the flattened block (a classifier's (N, K, 1, 1)).
        if rank is not None and -rank <= axis < rank and all(d == 1 for d in shape[axis % rank + 1:]):
            return True
    return rank is not None and axis in (rank - 1, -1)


class _SoftmaxBase(Op):
    """Shared by Softmax and LogSoftmax: opset-13 semantics over one ``axis`` (default -1)."""

    attr_defaults = {"axis": -1}
    onnx_opsets = (1, 99)

    def check_attrs(self, attrs):
        attrs["axis"] = int(attrs["axis"])
        return attrs

    def infer_shapes(self, in_shapes):
        x = tuple(in_shapes[0])
        if not -len(x) <= self.attrs["axis"] < len(x):
            self.fail("axis is out of range for the input rank", axis=self.attrs["axis"], input_shape=x)
        return [x]

    def onnx_attributes(self, opset):
        return {"axis": self.attrs["axis"]}

    def to_onnx(self, inputs, outputs, opset, ctx):
        import onnx.helper

        axis = self.attrs["axis"]
        if opset < 13:
            # Older opsets flatten the axes from `axis` on: the same only for the last axis, and
            # negative axes exist only from opset 11.
            shape_of = getattr(ctx, "shape", None)
            rank = len(shape_of(inputs[0])) if callable(shape_of) else None
            if rank is not None and axis in (-1, rank - 1):
                axis = rank - 1
            elif not (axis == -1 and opset >= 11):
                self.fail(f"{self.op_type} over a non-last axis needs ONNX opset 13 or newer", axis=axis,
                          opset=opset)
        return [onnx.helper.make_node(self.op_type, inputs, outputs, name=self.name, axis=axis)]

    def _shifted(self, x):
        # Subtracting the max keeps exp() from overflowing; the result is unchanged.
        return x - x.max(axis=self.attrs["axis"], keepdims=True)

    @classmethod
    def from_onnx(cls, node, opset, ctx):
        attrs, inputs, outputs = super().from_onnx(node, opset, ctx)
        if opset < 13:
            axis = int(attrs.get("axis", 1))
            if not _old_softmax_matches(node, opset, ctx, axis):
                raise UnsupportedOpError(
                    f"Node '{node.name}' ({node.op_type}, opset {opset}): before opset 13 the op flattens all axes "
                    f"from 'axis' on, which edgecnn implements only when axis is the last axis. "
                    f"Received: axis={axis}")
            attrs = {"axis": axis}
        return attrs, inputs, outputs


@register
class Softmax(_SoftmaxBase):
    """``y = exp(x - max) / sum(exp(x - max))`` along ``axis``. Output shape = input shape."""

    def forward(self, inputs, ctx):
        x = inputs[0]
        e = np.exp(self._shifted(x))
        y = (e / e.sum(axis=self.attrs["axis"], keepdims=True)).astype(x.dtype, copy=False)
        return [y], (y if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        y, dy = cache, grad_outputs[0]
        return [y * (dy - (dy * y).sum(axis=self.attrs["axis"], keepdims=True))]


@register
class LogSoftmax(_SoftmaxBase):
    """``y = (x - max) - log(sum(exp(x - max)))`` along ``axis``. Output shape = input shape."""

    def forward(self, inputs, ctx):
        x = inputs[0]
        s = self._shifted(x)
        y = (s - np.log(np.exp(s).sum(axis=self.attrs["axis"], keepdims=True))).astype(x.dtype, copy=False)
        return [y], (y if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        y, dy = cache, grad_outputs[0]
        return [dy - np.exp(y) * dy.sum(axis=self.attrs["axis"], keepdims=True)]
