"""Tensor plumbing and elementwise arithmetic: Add, Sub, Mul, Div, Pow, Sqrt, Reciprocal, Exp, Log,
Neg, Abs, Concat, Flatten, Reshape, Pad.

Symbolic (string) dimensions flow through shape inference: a product of dimensions that holds a
symbol is written as a string such as ``"N*16"``, and Reshape's ``-1`` cancels symbols that the
output copies with ``0`` (``Reshape [0, -1]`` on ``('N', 16, 4, 4)`` gives ``('N', 256)``).
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from ..errors import UnsupportedOpError
from . import _shapes
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


# -- symbolic dimension arithmetic ------------------------------------------------------------
def _factor(dim) -> tuple[Counter, int]:
    """A dimension as (symbols, integer factor): ``"N*16"`` -> ({N: 1}, 16), ``8`` -> ({}, 8)."""
    if not isinstance(dim, str):
        return Counter(), int(dim)
    symbols, value = Counter(), 1
    for part in dim.split("*"):
        part = part.strip()
        if part.isdigit():
            value *= int(part)
        else:
            symbols[part] += 1
    return symbols, value


def _unfactor(symbols: Counter, value: int):
    if not +symbols:
        return value
    parts = sorted(symbols.elements())
    return "*".join(parts + ([str(value)] if value != 1 else []))


def product(dims):
    """Product of dimensions; a string when any of them is symbolic."""
    symbols, value = Counter(), 1
    for d in dims:
        s, v = _factor(d)
        symbols += s
        value *= v
    return _unfactor(symbols, value)


def _normalize_axis(op: Op, axis: int, rank: int, allow_end: bool = False) -> int:
    """A non-negative axis; ``allow_end`` also accepts ``rank`` itself (Flatten's range [-r, r])."""
    hi = rank + 1 if allow_end else rank
    if not -rank <= axis < hi:
        op.fail("axis is out of range for the input rank", axis=axis, rank=rank)
    return axis + rank if axis < 0 else axis


def _export_axis(op: Op, axis: int, ctx, tensor: str, opset: int) -> int:
    """An axis attribute for ONNX: negative axes exist only from opset 11; before, the rank
    (``ctx.shape``) turns them non-negative."""
    if axis >= 0 or opset >= 11:
        return axis
    shape_of = getattr(ctx, "shape", None)
    if not callable(shape_of):
        op.fail("a negative axis needs ONNX opset 11 or newer", axis=axis, opset=opset)
    return axis + len(shape_of(tensor))


def constant_input(node, position: int, ctx, what: str, required: bool = True):
    """The value of a constant input of an ONNX node; UnsupportedOpError when it is computed."""
    if len(node.input) <= position or not node.input[position]:
        if required:
            raise UnsupportedOpError(f"Node '{node.name}' ({node.op_type}): input '{what}' is missing")
        return None
    value = ctx.constant(node.input[position])
    if value is None:
        raise UnsupportedOpError(
            f"Node '{node.name}' ({node.op_type}): input '{what}' must be a constant (initializer or Constant); "
            f"edgecnn does not support a computed {what}. Received: {what}={node.input[position]!r}")
    return np.asarray(value)


# -- elementwise arithmetic -------------------------------------------------------------------
class _Broadcasting(Op):
    """Two operands under ONNX multidirectional broadcasting (opset 7 and later)."""

    arity = (2, 2)
    onnx_opsets = (7, 99)

    def infer_shapes(self, in_shapes):
        return [broadcast_shape(self, in_shapes[0], in_shapes[1])]


@register
class Add(_Broadcasting):
    """``y = a + b`` with broadcasting (residual connections). Shape: broadcast(a, b)."""

    def forward(self, inputs, ctx):
        a, b = inputs
        y = (a + b).astype(a.dtype, copy=False)
        return [y], ((a.shape, b.shape) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        a_shape, b_shape = cache
        g = grad_outputs[0]
        return [unbroadcast(g, a_shape), unbroadcast(g, b_shape)]


@register
class Sum(Op):
    """``y = x1 + x2 + ... + xn`` (ONNX Sum, variadic, multidirectional broadcasting from opset 8;
    older converters write ResNets' residual adds with it). Gradient: ``g`` to each input,
    summed back over its broadcast axes."""

    arity = (1, 1 << 16)
    onnx_opsets = (6, 99)

    def infer_shapes(self, in_shapes):
        shape = in_shapes[0]
        for other in in_shapes[1:]:
            shape = broadcast_shape(self, shape, other)
        return [shape]

    def forward(self, inputs, ctx):
        total = inputs[0].copy() if len(inputs) == 1 else inputs[0] + inputs[1]
        for x in inputs[2:]:
            total = total + x
        return [total.astype(inputs[0].dtype, copy=False)], (
            [x.shape for x in inputs] if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        g = grad_outputs[0]
        return [unbroadcast(g, shape) for shape in cache]


@register
class Mul(_Broadcasting):
    """``y = a * b`` with broadcasting. Shape: broadcast(a, b); gradients summed back per operand."""

    def forward(self, inputs, ctx):
        a, b = inputs
        y = (a * b).astype(a.dtype, copy=False)
        return [y], ((a, b) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        a, b = cache
        g = grad_outputs[0]
        return [unbroadcast(g * b, a.shape), unbroadcast(g * a, b.shape)]


@register
class Sub(_Broadcasting):
    """``y = a - b`` with broadcasting. Shape: broadcast(a, b)."""

    def forward(self, inputs, ctx):
        a, b = inputs
        y = (a - b).astype(a.dtype, copy=False)
        return [y], ((a.shape, b.shape) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        a_shape, b_shape = cache
        g = grad_outputs[0]
        return [unbroadcast(g, a_shape), unbroadcast(-g, b_shape)]


@register
class Div(_Broadcasting):
    """``y = a / b`` with broadcasting (IEEE division: b = 0 gives inf or nan, as in ONNX for
    floats). Gradients: ``g / b`` for a and ``-g * y / b`` (= -g a / b^2) for b."""

    def forward(self, inputs, ctx):
        a, b = inputs
        y = (a / b).astype(a.dtype, copy=False)
        return [y], ((a.shape, b, y) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        a_shape, b, y = cache
        g = grad_outputs[0]
        gb = g / b
        return [unbroadcast(gb, a_shape), unbroadcast(-gb * y, b.shape)]


def _shape_preserving_scalar(value: np.ndarray, base_rank: int | None) -> bool:
    """Whether broadcasting ``value`` (one element) against the base leaves the base's shape."""
    return value.size == 1 and (value.ndim <= 1 or (base_rank is not None and value.ndim <= base_rank))


@register
class Pow(Op):
    """``y = x ** exponent``: a constant exponent (the IR attribute ``exponent``, written as a scalar
    initializer in ONNX) or a second input tensor broadcast against x (multidirectional, opset 7+).

    A constant scalar exponent on import becomes the attribute, so decompositions such as
    LayerNorm's ``Pow(x - mean, 2)`` do not turn the 2 into a trained parameter whose gradient
    (``y * log(x)``) is undefined for negative x. Gradients: ``p * x ** (p - 1)`` for x (0 for
    p = 0); for an exponent tensor ``y * log(x)`` where x > 0 and 0 where x <= 0 (``x ** p`` is
    not real-differentiable in p there; PyTorch gives nan for x < 0).
    """

    attr_defaults = {"exponent": None}
    arity = (1, 2)
    onnx_opsets = (7, 99)

    def check_attrs(self, attrs):
        if attrs["exponent"] is not None:
            try:
                attrs["exponent"] = float(np.asarray(attrs["exponent"]).reshape(()))
            except (TypeError, ValueError):
                self.fail("attribute 'exponent' must be one number", exponent=attrs["exponent"])
            if not np.isfinite(attrs["exponent"]):
                self.fail("attribute 'exponent' must be finite", exponent=attrs["exponent"])
        return attrs

    def _tensor_exponent(self, count: int) -> bool:
        constant = self.attrs["exponent"] is not None
        if constant == (count == 2):
            self.fail("takes either the attribute 'exponent' and one input, or no attribute and two inputs "
                      "(base, exponent)", exponent=self.attrs["exponent"], inputs=count)
        return not constant

    def infer_shapes(self, in_shapes):
        present = [s for s in in_shapes if s is not None]
        if self._tensor_exponent(len(present)):
            return [broadcast_shape(self, present[0], present[1])]
        return [tuple(present[0])]

    def forward(self, inputs, ctx):
        x = inputs[0]
        if self._tensor_exponent(len([i for i in inputs if i is not None])):
            p = inputs[1]
            with np.errstate(invalid="ignore", divide="ignore"):
                y = np.power(x, p).astype(x.dtype, copy=False)
            return [y], ((x, p, y) if ctx.need_grad else None)
        p = self.attrs["exponent"]
        with np.errstate(invalid="ignore", divide="ignore"):
            y = np.power(x, p).astype(x.dtype, copy=False)
        return [y], ((x, None, None) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        x, p_tensor, y = cache
        g = grad_outputs[0]
        p = self.attrs["exponent"] if p_tensor is None else p_tensor
        with np.errstate(invalid="ignore", divide="ignore"):
            # p * x^(p-1) is 0 * x^-1 for p = 0, nan at x = 0: the derivative of a constant is 0.
            dx = np.where(np.equal(p, 0), 0, g * p * np.power(x, np.subtract(p, 1))).astype(g.dtype, copy=False)
        if p_tensor is None:
            return [dx]
        positive = x > 0
        dp = g * y * np.log(np.where(positive, x, 1))
        dp = np.where(positive, dp, 0).astype(g.dtype, copy=False)
        return [unbroadcast(dx, x.shape), unbroadcast(dp, p_tensor.shape)]

    def onnx_attributes(self, opset):
        return {}

    def to_onnx(self, inputs, outputs, opset, ctx):
        import onnx.helper

        if self.attrs["exponent"] is None:
            return [onnx.helper.make_node("Pow", inputs, outputs, name=self.name)]
        name = ctx.unique_name(f"{self.name}_exponent")
        ctx.add_initializer(name, np.array(self.attrs["exponent"], np.float32))
        return [onnx.helper.make_node("Pow", [inputs[0], name], outputs, name=self.name)]

    @classmethod
    def from_onnx(cls, node, opset, ctx):
        _, inputs, outputs = super().from_onnx(node, opset, ctx)
        value = ctx.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if value is not None:
            value = np.asarray(value)
            shape_of = getattr(ctx, "shape", None)
            base = shape_of(node.input[0]) if callable(shape_of) else None
            if _shape_preserving_scalar(value, None if base is None else len(base)):
                return {"exponent": float(value.reshape(()))}, inputs[:1], outputs
        return {}, inputs[:2], outputs


@register
class Sqrt(Op):
    """``y = sqrt(x)`` (nan for x < 0, as ONNX). Gradient ``g / (2 y)``."""

    onnx_opsets = (6, 99)

    def forward(self, inputs, ctx):
        x = inputs[0]
        with np.errstate(invalid="ignore"):
            y = np.sqrt(x).astype(x.dtype, copy=False)
        return [y], (y if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        with np.errstate(divide="ignore", invalid="ignore"):
            return [(grad_outputs[0] * 0.5 / cache).astype(grad_outputs[0].dtype, copy=False)]


@register
class Reciprocal(Op):
    """``y = 1 / x``. Gradient ``-g * y ** 2``."""

    onnx_opsets = (6, 99)

    def forward(self, inputs, ctx):
        x = inputs[0]
        with np.errstate(divide="ignore"):
            y = (1 / x).astype(x.dtype, copy=False)
        return [y], (y if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        return [(-grad_outputs[0] * cache * cache).astype(grad_outputs[0].dtype, copy=False)]


@register
class Exp(Op):
    """``y = exp(x)`` (inf where it overflows, as ONNX). Gradient ``g * y``."""

    onnx_opsets = (6, 99)

    def forward(self, inputs, ctx):
        x = inputs[0]
        with np.errstate(over="ignore"):
            y = np.exp(x).astype(x.dtype, copy=False)
        return [y], (y if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        return [(grad_outputs[0] * cache).astype(grad_outputs[0].dtype, copy=False)]


@register
class Log(Op):
    """``y = log(x)`` (-inf at 0 and nan for x < 0, as ONNX). Gradient ``g / x``."""

    onnx_opsets = (6, 99)

    def forward(self, inputs, ctx):
        x = inputs[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.log(x).astype(x.dtype, copy=False)
        return [y], (x if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        with np.errstate(divide="ignore", invalid="ignore"):
            return [(grad_outputs[0] / cache).astype(grad_outputs[0].dtype, copy=False)]


@register
class Neg(Op):
    """``y = -x``. Gradient ``-g``."""

    onnx_opsets = (6, 99)

    def forward(self, inputs, ctx):
        return [np.negative(inputs[0])], None

    def backward(self, cache, grad_outputs):
        return [np.negative(grad_outputs[0])]


@register
class Abs(Op):
    """``y = |x|``. Gradient ``g * sign(x)``: 0 at x = 0, where |x| has its kink (PyTorch's choice)."""

    onnx_opsets = (6, 99)

    def forward(self, inputs, ctx):
        x = inputs[0]
        return [np.abs(x)], (np.sign(x) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        return [(grad_outputs[0] * cache).astype(grad_outputs[0].dtype, copy=False)]


# -- shape plumbing ---------------------------------------------------------------------------
@register
class Concat(Op):
    """Join inputs along ``axis``; all other dimensions must agree. Output axis = sum of inputs'."""

    attr_defaults = {"axis": 1}
    arity = (1, 1 << 16)
    onnx_opsets = (4, 99)

    def check_attrs(self, attrs):
        attrs["axis"] = int(attrs["axis"])
        return attrs

    def infer_shapes(self, in_shapes):
        shapes = [tuple(s) for s in in_shapes]
        rank = len(shapes[0])
        if any(len(s) != rank for s in shapes):
            self.fail("all inputs must have the same rank", input_shapes=shapes)
        axis = _normalize_axis(self, self.attrs["axis"], rank)
        for s in shapes[1:]:
            if any(s[i] != shapes[0][i] for i in range(rank) if i != axis):
                self.fail(f"inputs must agree on every axis except axis {axis}", input_shapes=shapes)
        out = list(shapes[0])
        sizes = [s[axis] for s in shapes]
        if all(not isinstance(d, str) for d in sizes):
            out[axis] = int(sum(sizes))
        elif len(sizes) == 1:
            out[axis] = sizes[0]
        else:
            self.fail("cannot concatenate along a symbolic dimension", input_shapes=shapes, axis=axis)
        return [tuple(out)]

    def forward(self, inputs, ctx):
        axis = self.attrs["axis"]
        y = np.concatenate(inputs, axis=axis)
        sizes = [x.shape[axis] for x in inputs]
        return [y], (sizes if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        cuts = np.cumsum(cache)[:-1]
        return list(np.split(grad_outputs[0], cuts, axis=self.attrs["axis"]))

    def to_onnx(self, inputs, outputs, opset, ctx):
        import onnx.helper

        axis = _export_axis(self, self.attrs["axis"], ctx, inputs[0], opset)
        return [onnx.helper.make_node("Concat", inputs, outputs, name=self.name, axis=axis)]


@register
class Flatten(Op):
    """``(d0, ..., dn) -> (d0 * ... * d(axis-1), d(axis) * ... * dn)``; axis may be negative."""

    attr_defaults = {"axis": 1}
    onnx_opsets = (1, 99)

    def check_attrs(self, attrs):
        attrs["axis"] = int(attrs["axis"])
        return attrs

    def _split(self, shape):
        axis = _normalize_axis(self, self.attrs["axis"], len(shape), allow_end=True)
        return product(shape[:axis]), product(shape[axis:])

    def infer_shapes(self, in_shapes):
        return [self._split(tuple(in_shapes[0]))]

    def forward(self, inputs, ctx):
        x = inputs[0]
        return [x.reshape(self._split(x.shape))], (x.shape if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        return [grad_outputs[0].reshape(cache)]

    def to_onnx(self, inputs, outputs, opset, ctx):
        import onnx.helper

        axis = _export_axis(self, self.attrs["axis"], ctx, inputs[0], opset)
        return [onnx.helper.make_node("Flatten", inputs, outputs, name=self.name, axis=axis)]


@register
class Reshape(Op):
    """Reshape to ``shape`` (an IR attribute; an initializer input in ONNX).

    ``0`` copies the input's dimension at that position (unless ``allowzero``, which makes it a
    literal zero), ``-1`` takes whatever is left. Symbolic dimensions cancel: ``[0, -1]`` on
    ``('N', 16, 4, 4)`` gives ``('N', 256)``.
    """

    attr_defaults = {"shape": None, "allowzero": 0}
    onnx_opsets = (5, 99)

    def check_attrs(self, attrs):
        if attrs["shape"] is None:
            self.fail("Reshape needs attribute 'shape'", shape=None)
        shape = [int(v) for v in np.asarray(attrs["shape"]).reshape(-1)]
        attrs["allowzero"] = int(attrs["allowzero"])
        if sum(v == -1 for v in shape) > 1 or any(v < -1 for v in shape):
            self.fail("shape may hold at most one -1 and no other negative value", shape=shape)
        if attrs["allowzero"] and 0 in shape:
            self.fail("allowzero=1 with a 0 in shape makes an empty tensor, which edgecnn does not support",
                      shape=shape)
        attrs["shape"] = shape
        return attrs

    def target(self, in_shape):
        in_shape = tuple(in_shape)
        out = []
        for i, v in enumerate(self.attrs["shape"]):
            if v == 0:
                if i >= len(in_shape):
                    self.fail("a 0 in shape copies an input dimension that does not exist",
                              shape=self.attrs["shape"], input_shape=in_shape)
                out.append(in_shape[i])
            else:
                out.append(v)
        total_symbols, total = _factor(product(in_shape))
        if -1 in out:
            known_symbols, known = _factor(product([d for d in out if d != -1]))
            left = total_symbols - known_symbols
            if known_symbols - total_symbols or known == 0 or total % known:
                self.fail("cannot infer -1: the other dimensions do not divide the input size",
                          shape=self.attrs["shape"], input_shape=in_shape)
            out[out.index(-1)] = _unfactor(left, total // known)
        if _factor(product(out)) != (total_symbols, total):
            self.fail("the number of elements must stay the same", shape=self.attrs["shape"], input_shape=in_shape)
        return tuple(out)

    def infer_shapes(self, in_shapes):
        return [self.target(in_shapes[0])]

    def forward(self, inputs, ctx):
        x = inputs[0]
        return [x.reshape(self.target(x.shape))], (x.shape if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        return [grad_outputs[0].reshape(cache)]

    def onnx_attributes(self, opset):
        return {"allowzero": 1} if self.attrs["allowzero"] and opset >= 14 else {}

    def to_onnx(self, inputs, outputs, opset, ctx):
        import onnx.helper

        if opset < 5:  # opset 1..4: the shape is an attribute
            return [onnx.helper.make_node("Reshape", inputs[:1], outputs, name=self.name, shape=self.attrs["shape"])]
        name = ctx.unique_name(f"{self.name}_shape")
        ctx.add_initializer(name, np.array(self.attrs["shape"], np.int64))
        return [onnx.helper.make_node("Reshape", [inputs[0], name], outputs, name=self.name,
                                      **self.onnx_attributes(opset))]

    @classmethod
    def from_onnx(cls, node, opset, ctx):
        attrs, inputs, outputs = super().from_onnx(node, opset, ctx)
        if opset < 5:
            shape = attrs.get("shape")
        else:
            shape = constant_input(node, 1, ctx, "shape")
        if shape is None:
            raise UnsupportedOpError(f"Node '{node.name}' (Reshape): no target shape")
        return ({"shape": [int(v) for v in np.asarray(shape).reshape(-1)], "allowzero": int(attrs.get("allowzero", 0))},
                inputs[:1], outputs)


@register
class Pad(Op):
    """Pad every axis by ``pads`` (ONNX order over ALL axes: ``[x1_begin, ..., xn_begin, x1_end, ...,
    xn_end]``, 8 values for NCHW) with ``mode`` constant (``value``), reflect or edge.

    Output per axis: ``in + begin + end``. Reflect needs ``begin, end < in`` (the edge is not
    repeated). The backward sums the gradient of every copy back onto the element it copies.
    """

    attr_defaults = {"pads": None, "mode": "constant", "value": 0.0}
    onnx_opsets = (2, 99)

    def check_attrs(self, attrs):
        if attrs["pads"] is None:
            self.fail("Pad needs attribute 'pads'", pads=None)
        pads = [int(v) for v in np.asarray(attrs["pads"]).reshape(-1)]
        if len(pads) % 2 or min(pads, default=0) < 0:
            self.fail("pads must be an even number of non-negative integers, begins then ends for every axis",
                      pads=pads)
        attrs["pads"] = pads
        if isinstance(attrs["mode"], bytes):
            attrs["mode"] = attrs["mode"].decode()
        if attrs["mode"] not in ("constant", "reflect", "edge"):
            self.fail("mode must be constant, reflect or edge", mode=attrs["mode"])
        attrs["value"] = float(attrs["value"])
        return attrs

    def infer_shapes(self, in_shapes):
        x = tuple(in_shapes[0])
        pads = self.attrs["pads"]
        if len(pads) != 2 * len(x):
            self.fail("pads must hold a begin and an end for every axis of the input", pads=pads, input_shape=x)
        n = len(x)
        out = []
        for i, d in enumerate(x):
            begin, end = pads[i], pads[i + n]
            if isinstance(d, str):
                if begin or end:
                    self.fail("cannot pad a symbolic dimension", pads=pads, input_shape=x)
                out.append(d)
                continue
            if self.attrs["mode"] == "reflect" and (begin >= d or end >= d):
                self.fail("reflect padding must be smaller than the padded dimension", pads=pads, input_shape=x)
            out.append(d + begin + end)
        return [tuple(out)]

    def forward(self, inputs, ctx):
        x = inputs[0]
        width = _shapes.numpy_pad_width(self.attrs["pads"], leading_axes=0)
        mode = self.attrs["mode"]
        if mode == "constant":
            y = np.pad(x, width, mode="constant", constant_values=self.attrs["value"])
        else:
            y = np.pad(x, width, mode=mode)
        return [y.astype(x.dtype, copy=False)], (x.shape if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        x_shape = cache
        pads, mode = self.attrs["pads"], self.attrs["mode"]
        n = len(x_shape)
        g = grad_outputs[0]
        # Padding one axis commutes with padding another, so the adjoint can undo one axis at a time.
        for axis in range(n):
            begin, size = pads[axis], x_shape[axis]
            end = pads[axis + n]
            if not begin and not end:
                continue
            moved = np.moveaxis(g, axis, 0)
            dx = moved[begin:begin + size].copy()
            if mode == "edge":
                dx[0] += moved[:begin].sum(axis=0)
                dx[-1] += moved[begin + size:].sum(axis=0)
            elif mode == "reflect":
                # padded index j < begin copies x[begin - j]; padded index begin + size + k copies x[size - 2 - k]
                dx[begin - np.arange(begin)] += moved[:begin]
                dx[size - 2 - np.arange(end)] += moved[begin + size:]
            g = np.moveaxis(dx, 0, axis)
        return [np.ascontiguousarray(g)]

    def onnx_attributes(self, opset):
        return {"mode": self.attrs["mode"]}

    def to_onnx(self, inputs, outputs, opset, ctx):
        import onnx.helper

        if opset < 11:  # opset 2..10: pads and value are attributes
            return [onnx.helper.make_node("Pad", inputs[:1], outputs, name=self.name, mode=self.attrs["mode"],
                                          pads=self.attrs["pads"], value=self.attrs["value"])]
        pads_name = ctx.unique_name(f"{self.name}_pads")
        ctx.add_initializer(pads_name, np.array(self.attrs["pads"], np.int64))
        extra = [pads_name]
        if self.attrs["mode"] == "constant" and self.attrs["value"] != 0.0:
            value_name = ctx.unique_name(f"{self.name}_value")
            ctx.add_initializer(value_name, np.array(self.attrs["value"], np.float32))
            extra.append(value_name)
        return [onnx.helper.make_node("Pad", [inputs[0], *extra], outputs, name=self.name,
                                      mode=self.attrs["mode"])]

    @classmethod
    def from_onnx(cls, node, opset, ctx):
        attrs, inputs, outputs = super().from_onnx(node, opset, ctx)
        mode = attrs.get("mode", "constant")
        if opset < 11:
            pads, value = attrs.get("pads"), float(attrs.get("value", 0.0))
        else:
            if len(node.input) > 3 and node.input[3]:
                raise UnsupportedOpError(f"Node '{node.name}' (Pad): the 'axes' input is not supported; "
                                         f"give pads for every axis. Received: axes={node.input[3]!r}")
            pads = constant_input(node, 1, ctx, "pads")
            value = constant_input(node, 2, ctx, "constant_value", required=False)
            value = 0.0 if value is None or value.size == 0 else float(value.reshape(-1)[0])
        if pads is None:
            raise UnsupportedOpError(f"Node '{node.name}' (Pad): no pads given")
        pads = [int(v) for v in np.asarray(pads).reshape(-1)]
        if min(pads, default=0) < 0:
            raise UnsupportedOpError(f"Node '{node.name}' (Pad): negative pads (cropping) are not supported. "
                                     f"Received: pads={pads}")
        if mode not in ("constant", "reflect", "edge"):
            raise UnsupportedOpError(f"Node '{node.name}' (Pad): mode must be constant, reflect or edge. "
                                     f"Received: mode={mode!r}")
        return {"pads": pads, "mode": mode, "value": value}, inputs[:1], outputs
