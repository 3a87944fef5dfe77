"""Layout ops that move or select elements without arithmetic: Transpose, Slice, Split, Squeeze,
Unsqueeze.

The IR keeps one form of each op whatever ONNX encoding it came from: the index lists (Slice's
starts/ends/axes/steps, Split's sizes, Squeeze/Unsqueeze's axes) are attributes, lists of Python
ints. ONNX moved them from attributes to constant inputs (Slice at opset 10, Split, Squeeze and
Unsqueeze at 13) and Split gained ``num_outputs`` at 18; ``from_onnx`` reads every encoding and
``to_onnx`` writes the one of the opset asked for. Negative axes are kept as given and resolved
against the rank in the shape rule, except where an opset older than 11 cannot express them.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelDefinitionError
from .base import REQUIRED, Op, register
from .tensor import _export_axis, _normalize_axis, constant_input

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# Exporters write INT_MAX / INT_MIN (int32 or int64) for "to the end": a bound at least this far out
# reaches past any dimension a model can have, so it leaves a dimension of unknown size whole.
UNBOUNDED = (1 << 31) - 1


def _int_list(op: Op, key: str, value) -> list[int]:
    array = np.asarray(value)
    if array.ndim > 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        op.fail(f"attribute '{key}' must be a list of integers", **{key: value})
    # Bounds beyond int64 mean the same as the int64 extremes (clamping) and keep the export writable.
    return [min(max(int(v), INT64_MIN), INT64_MAX) for v in array.reshape(-1)]


def _normalized_axes(op: Op, axes, rank: int, key: str = "axes") -> list[int]:
    out = [_normalize_axis(op, a, rank) for a in axes]
    if len(set(out)) != len(out):
        op.fail(f"{key} must not name an axis twice", **{key: list(axes)}, rank=rank)
    return out


def _rank(op: Op, ctx, tensor: str, axes: list[int], opset: int) -> int:
    """The input rank an export needs to make axes non-negative for an opset older than 11."""
    shape_of = getattr(ctx, "shape", None)
    if not callable(shape_of):
        op.fail("negative axes need ONNX opset 11 or newer", axes=axes, opset=opset)
    return len(shape_of(tensor))


def _onnx_ints(node, position: int, ctx, what: str, required: bool = True):
    value = constant_input(node, position, ctx, what, required=required)
    return None if value is None else [int(v) for v in value.reshape(-1)]


def _attribute(node, key: str):
    import onnx.helper

    for a in node.attribute:
        if a.name == key:
            return onnx.helper.get_attribute_value(a)
    return None


@register
class Transpose(Op):
    """Permute the axes: output axis ``i`` is input axis ``perm[i]`` (default: reversed axes).

    A symbolic batch dimension moves with its axis. Backward: the inverse permutation.
    """

    attr_defaults = {"perm": None}
    onnx_opsets = (1, 99)

    def check_attrs(self, attrs):
        if attrs["perm"] is not None:
            perm = _int_list(self, "perm", attrs["perm"])
            if sorted(perm) != list(range(len(perm))):
                self.fail("perm must be a permutation of the axes 0..rank-1", perm=perm)
            attrs["perm"] = perm
        return attrs

    def _perm(self, shape) -> list[int]:
        perm = self.attrs["perm"]
        if perm is None:
            return list(range(len(shape)))[::-1]
        if len(perm) != len(shape):
            self.fail("perm must name every axis of the input once", perm=perm, input_shape=tuple(shape))
        return perm

    def infer_shapes(self, in_shapes):
        shape = tuple(in_shapes[0])
        return [tuple(shape[p] for p in self._perm(shape))]

    def forward(self, inputs, ctx):
        x = inputs[0]
        perm = self._perm(x.shape)
        return [np.ascontiguousarray(np.transpose(x, perm))], (perm if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        return [np.ascontiguousarray(np.transpose(grad_outputs[0], np.argsort(cache)))]


@register
class Slice(Op):
    """``x[starts:ends:steps]`` along ``axes`` (default: the first ``len(starts)`` axes), under the
    spec's clamping, which differs from Python's for negative steps.

    Per axis of size d: negative starts/ends get d added; then for a positive step start and end are
    clamped to [0, d], for a negative step start to [0, d-1] and end to [-1, d-1]. A symbolic
    dimension may only be kept whole (0 to INT_MAX, or INT_MAX down to INT_MIN with step -1): its
    size is unknown, so any other bounds give an unknown size. Backward: the gradient scattered
    into zeros.
    """

    attr_defaults = {"starts": REQUIRED, "ends": REQUIRED, "axes": None, "steps": None}
    onnx_opsets = (1, 99)

    def check_attrs(self, attrs):
        starts, ends = _int_list(self, "starts", attrs["starts"]), _int_list(self, "ends", attrs["ends"])
        n = len(starts)
        axes = list(range(n)) if attrs["axes"] is None else _int_list(self, "axes", attrs["axes"])
        steps = [1] * n if attrs["steps"] is None else _int_list(self, "steps", attrs["steps"])
        if not n or not len(ends) == len(axes) == len(steps) == n:
            self.fail("starts, ends, axes and steps must be non-empty and of one length",
                      starts=starts, ends=ends, axes=axes, steps=steps)
        if 0 in steps:
            self.fail("steps must not be 0", steps=steps)
        return {"starts": starts, "ends": ends, "axes": axes, "steps": steps}

    @staticmethod
    def _bounds(start: int, end: int, step: int, d: int) -> tuple[int, int]:
        start = start + d if start < 0 else start
        end = end + d if end < 0 else end
        if step > 0:
            return min(max(start, 0), d), min(max(end, 0), d)
        return min(max(start, 0), d - 1), min(max(end, -1), d - 1)

    @staticmethod
    def _whole(start: int, end: int, step: int) -> bool:
        if step == 1:
            return (start == 0 or start <= -UNBOUNDED) and end >= UNBOUNDED
        return step == -1 and (start == -1 or start >= UNBOUNDED) and end <= -UNBOUNDED

    def _axes(self, rank: int) -> list[int]:
        return _normalized_axes(self, self.attrs["axes"], rank)

    def _index(self, shape) -> tuple:
        index = [slice(None)] * len(shape)
        a = self.attrs
        for axis, start, end, step in zip(self._axes(len(shape)), a["starts"], a["ends"], a["steps"]):
            lo, hi = self._bounds(start, end, step, shape[axis])
            # an end of -1 after clamping means "before index 0", which Python spells None
            index[axis] = slice(lo, hi if hi >= 0 else None, step)
        return tuple(index)

    def infer_shapes(self, in_shapes):
        shape = tuple(in_shapes[0])
        out = list(shape)
        a = self.attrs
        for axis, start, end, step in zip(self._axes(len(shape)), a["starts"], a["ends"], a["steps"]):
            d = shape[axis]
            if isinstance(d, str):
                if not self._whole(start, end, step):
                    self.fail("a slice of a symbolic dimension must keep it whole (starts 0, ends INT_MAX, or "
                              "the reverse with step -1): other bounds leave its size unknown",
                              axis=axis, start=start, end=end, step=step, input_shape=shape)
                continue
            lo, hi = self._bounds(start, end, step, d)
            out[axis] = len(range(lo, hi, step))
            if out[axis] == 0:
                self.fail("the slice is empty along an axis (edgecnn has no empty tensors)",
                          axis=axis, start=start, end=end, step=step, input_shape=shape)
        return [tuple(out)]

    def forward(self, inputs, ctx):
        x = inputs[0]
        index = self._index(x.shape)
        return [np.ascontiguousarray(x[index])], ((x.shape, index) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        shape, index = cache
        g = grad_outputs[0]
        dx = np.zeros(shape, g.dtype)
        dx[index] = g
        return [dx]

    def to_onnx(self, inputs, outputs, opset, ctx):
        import onnx.helper

        a = self.attrs
        axes = a["axes"]
        if opset < 11 and any(v < 0 for v in axes):
            rank = _rank(self, ctx, inputs[0], axes, opset)
            axes = [v + rank if v < 0 else v for v in axes]
        if opset < 10:  # opset 1..9: attributes, and no steps
            if any(s != 1 for s in a["steps"]):
                self.fail("steps other than 1 need ONNX opset 10 or newer", steps=a["steps"], opset=opset)
            return [onnx.helper.make_node("Slice", inputs[:1], outputs, name=self.name,
                                          starts=a["starts"], ends=a["ends"], axes=axes)]
        names = []
        for key, values in (("starts", a["starts"]), ("ends", a["ends"]), ("axes", axes), ("steps", a["steps"])):
            names.append(ctx.add_initializer(ctx.unique_name(f"{self.name}_{key}"), np.array(values, np.int64)))
        return [onnx.helper.make_node("Slice", [inputs[0], *names], outputs, name=self.name)]

    @classmethod
    def from_onnx(cls, node, opset, ctx):
        if opset < 10:
            attrs = {"starts": _attribute(node, "starts"), "ends": _attribute(node, "ends"),
                     "axes": _attribute(node, "axes")}
            if attrs["axes"] is not None and not len(attrs["axes"]):
                attrs["axes"] = None
        else:
            attrs = {"starts": _onnx_ints(node, 1, ctx, "starts"), "ends": _onnx_ints(node, 2, ctx, "ends"),
                     "axes": _onnx_ints(node, 3, ctx, "axes", required=False),
                     "steps": _onnx_ints(node, 4, ctx, "steps", required=False)}
        # a missing starts/ends is left out, for the attribute schema to name it
        return {k: list(v) for k, v in attrs.items() if v is not None}, list(node.input[:1]), list(node.output)


@register
class Split(Op):
    """Split along ``axis`` into parts of sizes ``split``, or into ``num_outputs`` parts: equal
    ones, or under ONNX's rule (opset 18) for an uneven length d, parts of ceil(d / n) and a
    smaller last one. Outputs vary in number; backward concatenates the output gradients (an
    output nobody uses contributes zeros).
    """

    attr_defaults = {"axis": 0, "split": None, "num_outputs": None}
    onnx_opsets = (1, 99)

    def check_attrs(self, attrs):
        attrs["axis"] = int(attrs["axis"])
        split, n = attrs["split"], attrs["num_outputs"]
        if (split is None) == (n is None):
            self.fail("Split needs exactly one of 'split' (the part sizes) and 'num_outputs'", split=split,
                      num_outputs=n)
        if split is not None:
            split = _int_list(self, "split", split)
            if not split or min(split) < 1:
                self.fail("split sizes must be positive (edgecnn has no empty tensors)", split=split)
            attrs["split"] = split
            self.num_outputs = len(split)
        else:
            if not isinstance(n, (int, np.integer)) or n < 1:
                self.fail("num_outputs must be a positive integer", num_outputs=n)
            attrs["num_outputs"] = self.num_outputs = int(n)
        return attrs

    def _sizes(self, shape) -> list[int]:
        shape = tuple(shape)
        axis = _normalize_axis(self, self.attrs["axis"], len(shape))
        d = shape[axis]
        if isinstance(d, str):
            self.fail("cannot split a symbolic dimension", axis=self.attrs["axis"], input_shape=shape)
        split = self.attrs["split"]
        if split is not None:
            if sum(split) != d:
                self.fail("split sizes must sum to the length of the split axis", split=split,
                          axis=self.attrs["axis"], input_shape=shape)
            return list(split)
        n = self.num_outputs
        if d % n == 0:
            return [d // n] * n
        part = d // n + 1
        last = d - part * (n - 1)
        if last < 1:
            self.fail("num_outputs parts of ceil(length / num_outputs) leave the last part empty",
                      num_outputs=n, axis=self.attrs["axis"], input_shape=shape)
        return [part] * (n - 1) + [last]

    def infer_shapes(self, in_shapes):
        shape = tuple(in_shapes[0])
        axis = _normalize_axis(self, self.attrs["axis"], len(shape))
        return [shape[:axis] + (size,) + shape[axis + 1:] for size in self._sizes(shape)]

    def forward(self, inputs, ctx):
        x = inputs[0]
        axis = self.attrs["axis"]
        sizes = self._sizes(x.shape)
        parts = [np.ascontiguousarray(p) for p in np.split(x, np.cumsum(sizes)[:-1], axis=axis)]
        return parts, ((x.shape, sizes) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        shape, sizes = cache
        axis = _normalize_axis(self, self.attrs["axis"], len(shape))
        dtype = next((g.dtype for g in grad_outputs if g is not None), np.float64)
        grads = list(grad_outputs) + [None] * (len(sizes) - len(grad_outputs))
        parts = [g if g is not None else np.zeros(shape[:axis] + (size,) + shape[axis + 1:], dtype)
                 for g, size in zip(grads, sizes)]
        return [np.concatenate(parts, axis=axis)]

    def to_onnx(self, inputs, outputs, opset, ctx):
        import onnx.helper

        if len(outputs) != self.num_outputs:
            self.fail("the node must have one output per part", outputs=list(outputs), parts=self.num_outputs)
        axis = _export_axis(self, self.attrs["axis"], ctx, inputs[0], opset)
        split = self.attrs["split"]
        extra: dict = {}
        if split is None:
            if opset >= 18:
                extra["num_outputs"] = self.num_outputs
            else:
                shape_of = getattr(ctx, "shape", None)
                sizes = self._sizes(shape_of(inputs[0])) if callable(shape_of) else None
                # Before 18 a missing split means equal parts: uneven ones must be spelled out.
                if sizes is not None and len(set(sizes)) > 1:
                    split = sizes
        ins = inputs[:1]
        if split is not None:
            if opset < 13:
                extra["split"] = list(split)
            else:
                ins = [inputs[0], ctx.add_initializer(ctx.unique_name(f"{self.name}_split"), np.array(split, np.int64))]
        return [onnx.helper.make_node("Split", ins, outputs, name=self.name, axis=axis, **extra)]

    @classmethod
    def from_onnx(cls, node, opset, ctx):
        split = None
        if opset < 13:
            split = _attribute(node, "split")
            if split is None and opset < 2 and len(node.input) > 1 and node.input[1]:
                split = _onnx_ints(node, 1, ctx, "split")
        else:
            split = _onnx_ints(node, 1, ctx, "split", required=False)
        n = _attribute(node, "num_outputs") if opset >= 18 else None
        outputs = list(node.output)
        if split is not None:
            split = [int(v) for v in split]
            if len(split) != len(outputs):
                raise ModelDefinitionError(node.name, "Split: the node must have one output per split size",
                                           split=split, outputs=outputs)
        elif n is not None and int(n) != len(outputs):
            raise ModelDefinitionError(node.name, "Split: the node must have num_outputs outputs",
                                       num_outputs=int(n), outputs=outputs)
        attrs = {"axis": int(_attribute(node, "axis") or 0), "split": split,
                 "num_outputs": None if split is not None else int(n if n is not None else len(outputs))}
        return attrs, list(node.input[:1]), outputs


class _Axes(Op):
    """Squeeze and Unsqueeze: ``axes`` an attribute before opset 13, a constant input from 13."""

    onnx_opsets = (1, 99)

    def check_attrs(self, attrs):
        if attrs["axes"] is not None:
            attrs["axes"] = _int_list(self, "axes", attrs["axes"])
        return attrs

    def forward(self, inputs, ctx):
        x = inputs[0]
        y = x.reshape(self.infer_shapes([x.shape])[0])
        return [y], (x.shape if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        return [grad_outputs[0].reshape(cache)]

    def _export_axes(self, inputs, ctx, opset):
        """The axes to write, None to leave them out."""
        return self.attrs["axes"]

    def to_onnx(self, inputs, outputs, opset, ctx):
        import onnx.helper

        axes = self._export_axes(inputs, ctx, opset)
        if axes is None:
            return [onnx.helper.make_node(self.op_type, inputs[:1], outputs, name=self.name)]
        if opset < 13:
            return [onnx.helper.make_node(self.op_type, inputs[:1], outputs, name=self.name, axes=list(axes))]
        name = ctx.add_initializer(ctx.unique_name(f"{self.name}_axes"), np.array(axes, np.int64))
        return [onnx.helper.make_node(self.op_type, [inputs[0], name], outputs, name=self.name)]

    @classmethod
    def from_onnx(cls, node, opset, ctx):
        required = cls.attr_defaults["axes"] is REQUIRED
        if opset < 13:
            axes = _attribute(node, "axes")
            axes = None if axes is None else list(axes)
        else:
            axes = _onnx_ints(node, 1, ctx, "axes", required=required)
        if not axes and not required:  # Squeeze: an empty axes list reads as absent (every size-1 axis)
            axes = None
        return ({} if axes is None else {"axes": axes}), list(node.input[:1]), list(node.output)


@register
class Squeeze(_Axes):
    """Remove the size-1 axes ``axes``; without axes every size-1 axis except symbolic ones (a
    symbolic batch is not known to be 1). Naming a symbolic axis is refused for the same reason."""

    attr_defaults = {"axes": None}
    _inferred: list[int] | None = None  # the axes the shape rule resolved, which export writes

    def infer_shapes(self, in_shapes):
        shape = tuple(in_shapes[0])
        if self.attrs["axes"] is None:
            axes = [i for i, d in enumerate(shape) if d == 1]
        else:
            axes = _normalized_axes(self, self.attrs["axes"], len(shape))
            for axis in axes:
                if isinstance(shape[axis], str):
                    self.fail("cannot squeeze a symbolic dimension (its size is not known to be 1)",
                              axes=self.attrs["axes"], input_shape=shape)
                if shape[axis] != 1:
                    self.fail("only axes of size 1 can be squeezed", axes=self.attrs["axes"], input_shape=shape)
        if any(isinstance(d, str) for d in shape):
            self._inferred = axes
        return [tuple(d for i, d in enumerate(shape) if i not in axes)]

    def forward(self, inputs, ctx):
        x = inputs[0]
        if self.attrs["axes"] is None and self._inferred is not None:
            # A symbolic batch that is 1 in this run stays: the shape rule kept it.
            y = np.squeeze(x, axis=tuple(self._inferred))
            return [y], (x.shape if ctx.need_grad else None)
        return super().forward(inputs, ctx)

    def _export_axes(self, inputs, ctx, opset):
        axes = self.attrs["axes"]
        if axes is None:
            # Written out, so that onnxruntime does not drop a batch of 1 the shape rule kept.
            return self._inferred
        if opset < 11 and any(a < 0 for a in axes):
            rank = _rank(self, ctx, inputs[0], axes, opset)
            axes = [a + rank if a < 0 else a for a in axes]
        return axes


@register
class Unsqueeze(_Axes):
    """Insert size-1 axes at ``axes``, which index the output (rank = input rank + len(axes))."""

    attr_defaults = {"axes": REQUIRED}

    def check_attrs(self, attrs):
        attrs = super().check_attrs(attrs)
        if not attrs["axes"]:
            self.fail("axes must name at least one axis", axes=attrs["axes"])
        return attrs

    def infer_shapes(self, in_shapes):
        shape = tuple(in_shapes[0])
        rank = len(shape) + len(self.attrs["axes"])
        axes = set(_normalized_axes(self, self.attrs["axes"], rank))
        rest = iter(shape)
        return [tuple(1 if i in axes else next(rest) for i in range(rank))]

    def _export_axes(self, inputs, ctx, opset):
        axes = self.attrs["axes"]
        if opset < 11 and any(a < 0 for a in axes):
            rank = _rank(self, ctx, inputs[0], axes, opset) + len(axes)
            axes = [a + rank if a < 0 else a for a in axes]
        return axes
