"""Reductions over axes: ReduceMean, ReduceSum, ReduceMax, ReduceMin.

In the IR ``axes`` is an attribute (a list of ints, ``None`` when not given). ONNX moved it from
an attribute to a constant second input (ReduceSum at opset 13, the others at 18) and added
``noop_with_empty_axes`` at the same versions; the exporter writes the encoding of the opset it
targets and the importer reads either. Without ``axes`` every axis is reduced, unless
``noop_with_empty_axes`` is 1, which makes the op the identity.

Reducing over a symbolic dimension (the batch ``"N"``) is refused at definition time: it would
mix the samples of a batch, which nothing in an edgecnn model (trained and run per sample) may
do. A model that pins its batch (an imported PyTorch export) can reduce over it.

ReduceMax and ReduceMin send each output's gradient to the first extreme element in row-major
order of the reduced axes (``argmax``'s rule; the same tie rule as MaxPool and GlobalMaxPool),
so a tie passes the gradient exactly once.
"""
from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np

from .base import Op, register
from .tensor import _export_axis, _normalize_axis, constant_input


class _Reduce(Op, metaclass=abc.ABCMeta):
    attr_defaults = {"axes": None, "keepdims": 1, "noop_with_empty_axes": 0}
    onnx_opsets = (1, 99)
    #: the first opset where ``axes`` is an input (and ``noop_with_empty_axes`` exists)
    axes_input_since: ClassVar[int] = 18

    def check_attrs(self, attrs):
        axes = attrs["axes"]
        if axes is not None:
            try:
                axes = [int(a) for a in np.asarray(axes).reshape(-1)]
            except (TypeError, ValueError):
                self.fail("axes must be a list of integers", axes=attrs["axes"])
        attrs["axes"] = axes or None  # an empty list means "not given", as in ONNX
        for key in ("keepdims", "noop_with_empty_axes"):
            if attrs[key] not in (0, 1, True, False):
                self.fail(f"{key} must be 0 or 1", **{key: attrs[key]})
            attrs[key] = int(attrs[key])
        if attrs["axes"] is not None:
            attrs["noop_with_empty_axes"] = 0  # it only decides what an empty axes list means
        return attrs

    def reduced_axes(self, rank: int) -> tuple[int, ...]:
        """The non-negative axes reduced for an input of ``rank``; () for the identity."""
        if self.attrs["axes"] is None:
            return () if self.attrs["noop_with_empty_axes"] else tuple(range(rank))
        axes = [_normalize_axis(self, a, rank) for a in self.attrs["axes"]]
        if len(set(axes)) != len(axes):
            self.fail("axes must not name an axis twice", axes=self.attrs["axes"], rank=rank)
        return tuple(sorted(axes))

    def infer_shapes(self, in_shapes):
        x = tuple(in_shapes[0])
        axes = self.reduced_axes(len(x))
        symbolic = [a for a in axes if isinstance(x[a], str)]
        if symbolic:
            self.fail("cannot reduce over a symbolic (batch) dimension: that would mix the samples of a batch",
                      axes=self.attrs["axes"], input_shape=x)
        if self.attrs["keepdims"]:
            return [tuple(1 if i in axes else d for i, d in enumerate(x))]
        return [tuple(d for i, d in enumerate(x) if i not in axes)]

    def macs(self, in_shapes, out_shapes):
        # One accumulation per input element of a sample.
        return int(np.prod([d for d in in_shapes[0][1:] if not isinstance(d, str)]))

    # -- execution ------------------------------------------------------------------------
    def forward(self, inputs, ctx):
        x = inputs[0]
        axes = self.reduced_axes(x.ndim)
        if not axes:
            return [x], None
        y = self.reduce(x, axes).astype(x.dtype, copy=False)
        if not self.attrs["keepdims"]:
            y = y.reshape([d for i, d in enumerate(x.shape) if i not in axes])
        return [y], (self.keep(x, axes) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        dy = grad_outputs[0]
        if cache is None:  # the identity
            return [dy]
        x_shape, axes, extra = cache
        kept = tuple(1 if i in axes else d for i, d in enumerate(x_shape))
        return [self.spread(dy.reshape(kept), x_shape, axes, extra).astype(dy.dtype, copy=False)]

    @abc.abstractmethod
    def reduce(self, x, axes):
        """The reduction of ``x`` over ``axes``, keeping them as size 1."""

    def keep(self, x, axes):
        """What the backward needs: (input shape, axes, op-specific extra)."""
        return (x.shape, axes, None)

    @abc.abstractmethod
    def spread(self, dy_kept, x_shape, axes, extra):
        """The input gradient from the output gradient with the reduced axes kept as size 1."""

    # -- ONNX -----------------------------------------------------------------------------
    def to_onnx(self, inputs, outputs, opset, ctx):
        import onnx.helper

        axes, since = self.attrs["axes"], self.axes_input_since
        attrs = {"keepdims": self.attrs["keepdims"]}
        if opset >= since:
            extra = []
            if axes is not None:
                name = ctx.unique_name(f"{self.name}_axes")
                ctx.add_initializer(name, np.array(axes, np.int64))
                extra.append(name)
            if self.attrs["noop_with_empty_axes"]:
                attrs["noop_with_empty_axes"] = 1
            return [onnx.helper.make_node(self.op_type, [inputs[0], *extra], outputs, name=self.name, **attrs)]
        if self.attrs["noop_with_empty_axes"]:
            self.fail(f"noop_with_empty_axes=1 (the identity) needs ONNX opset {since} or newer",
                      noop_with_empty_axes=1, opset=opset)
        if axes is not None:
            attrs["axes"] = [_export_axis(self, a, ctx, inputs[0], opset) for a in axes]
        return [onnx.helper.make_node(self.op_type, inputs[:1], outputs, name=self.name, **attrs)]

    @classmethod
    def from_onnx(cls, node, opset, ctx):
        attrs, inputs, outputs = super().from_onnx(node, opset, ctx)
        if opset >= cls.axes_input_since:
            axes = constant_input(node, 1, ctx, "axes", required=False)
            noop = int(attrs.get("noop_with_empty_axes", 0))
        else:
            axes, noop = attrs.get("axes"), 0
        axes = None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
        return ({"axes": axes or None, "keepdims": int(attrs.get("keepdims", 1)), "noop_with_empty_axes": noop},
                inputs[:1], outputs)


def _broadcast(dy_kept, x_shape):
    return np.ascontiguousarray(np.broadcast_to(dy_kept, x_shape))


@register
class ReduceSum(_Reduce):
    """``y = sum of x over axes``. Gradient: the output gradient copied over the reduced axes.
    ``axes`` is an input from opset 13."""

    axes_input_since = 13

    def reduce(self, x, axes):
        return x.sum(axis=axes, keepdims=True)

    def spread(self, dy_kept, x_shape, axes, extra):
        return _broadcast(dy_kept, x_shape)


@register
class ReduceMean(_Reduce):
    """``y = mean of x over axes``; ``x.mean([2, 3])`` of MNASNet and ShuffleNetV2 is
    ``ReduceMean(axes=[2, 3], keepdims=0)``. Gradient: the output gradient / count, copied."""

    def reduce(self, x, axes):
        return x.mean(axis=axes, keepdims=True)

    def spread(self, dy_kept, x_shape, axes, extra):
        count = int(np.prod([x_shape[a] for a in axes]))
        return _broadcast(dy_kept / count, x_shape)


def _first_extreme(x, axes, pick):
    """A boolean mask of x marking, per output element, the first extreme in row-major order of
    the reduced axes (``pick`` is np.argmax or np.argmin, which return the first occurrence)."""
    rest = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, rest + list(axes))
    flat = moved.reshape(moved.shape[:len(rest)] + (-1,))
    mask = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(mask, pick(flat, axis=-1)[..., None], True, axis=-1)
    return np.transpose(mask.reshape(moved.shape), np.argsort(rest + list(axes)))


class _ReduceExtreme(_Reduce):
    pick: ClassVar = staticmethod(np.argmax)

    def keep(self, x, axes):
        return (x.shape, axes, _first_extreme(x, axes, self.pick))

    def spread(self, dy_kept, x_shape, axes, extra):
        return np.where(extra, dy_kept, 0)


@register
class ReduceMax(_ReduceExtreme):
    """``y = max of x over axes``. The gradient goes to the first maximum (row-major over the
    reduced axes), so tied maxima share nothing: one of them gets it all, as in MaxPool."""

    def reduce(self, x, axes):
        return x.max(axis=axes, keepdims=True)


@register
class ReduceMin(_ReduceExtreme):
    """``y = min of x over axes``. The gradient goes to the first minimum (row-major over the
    reduced axes), as ReduceMax's goes to the first maximum."""

    pick = staticmethod(np.argmin)

    def reduce(self, x, axes):
        return x.min(axis=axes, keepdims=True)
