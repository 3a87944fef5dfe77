"""Pooling: MaxPool, AveragePool (2-D, NCHW), GlobalAveragePool, GlobalMaxPool.

Output size per spatial axis is ``_shapes.output_size`` (the same formula as Conv):
``out = floor_or_ceil((in + pad_begin + pad_end - (dilation * (k - 1) + 1)) / stride) + 1``;
with ``ceil_mode`` one more window may be added, which may reach beyond the padded input (that
overhang never counts), but a window that would start in the end padding is dropped, as the ONNX
spec text, its ReferenceEvaluator, onnxruntime and PyTorch do (onnx's C++ shape inference keeps
it: 4 instead of 3 for in=5, k=2, s=2, pads 1+1).

Pools report 0 MACs in the summary: they have no learned weights (the summary's MACs measure
multiply-accumulates against parameters).
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from ._parallel import for_slices
from .base import Op, RunContext, register
from ._conv_numpy import tap_slices
from .conv import _Spatial2D, scatter_windows, windows


class _Pool2D(_Spatial2D):
    """Shared geometry: explicit pads plus the ceil_mode overhang past the padded end."""

    def check_attrs(self, attrs):
        attrs = self.check_common(attrs)
        if attrs.get("kernel_shape") is None:
            self.fail(f"{self.op_type} needs attribute 'kernel_shape'", kernel_shape=None)
        attrs["ceil_mode"] = int(attrs["ceil_mode"])
        if attrs["ceil_mode"] not in (0, 1):
            self.fail("ceil_mode must be 0 or 1", ceil_mode=attrs["ceil_mode"])
        return attrs

    def infer_shapes(self, in_shapes):
        x = in_shapes[0]
        self.check_input_4d(x)
        if any(isinstance(d, str) for d in x[2:]):
            self.fail("spatial dimensions must be known integers", input_shape=tuple(x))
        kernel, strides, dilations, pads, out = self.geometry(x)
        self.check_fits(x, kernel, dilations, pads, out)
        if any(pads[i] >= kernel[i] or pads[i + 2] >= kernel[i] for i in range(2)):
            # a window could lie wholly in the padding (no value to take); onnxruntime refuses these too
            self.fail("pads must be smaller than the kernel on each axis", kernel_shape=list(kernel),
                      pads=list(pads), auto_pad=self.attrs.get("auto_pad", "NOTSET"))
        for i in range(2):
            # Dilated taps can still all miss an input narrower than the dilation: only a window that
            # starts in the begin padding can (one starting on the input has its first tap there); its
            # first tap at or past the input's start is (start - pad) mod dilation past it.
            p, s, d, size = pads[i], strides[i], dilations[i], x[2 + i]
            if size < d:
                empty = next((o for o in range(min(out[i], -(-p // s))) if (o * s - p) % d >= size), None)
                if empty is not None:
                    self.fail(f"every window must have a tap on the input; window {empty} of axis {2 + i} reads "
                              "only padding", input_shape=tuple(x), kernel_shape=list(kernel),
                              strides=list(strides), dilations=list(dilations), pads=list(pads))
        return [(x[0], x[1], out[0], out[1])]

    def padded_geometry(self, x_shape):
        """(kernel, strides, dilations, pads, out_hw, numpy pad_width incl. the ceil_mode overhang)."""
        kernel, strides, dilations, pads, out = self.geometry(x_shape)
        width = [(0, 0), (0, 0)]
        for i in range(2):
            reach = (out[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1
            padded = x_shape[2 + i] + pads[i] + pads[i + 2]
            width.append((pads[i], pads[i + 2] + max(0, reach - padded)))
        return kernel, strides, dilations, pads, out, width

    def onnx_attributes(self, opset):
        attrs = {k: v for k, v in self.attrs.items() if v is not None}
        if attrs.get("auto_pad") == "NOTSET":
            attrs.pop("auto_pad")
        if opset < 10:  # ceil_mode (and MaxPool's dilations) arrived in opset 10
            if attrs.pop("ceil_mode", 0):
                self.fail("ceil_mode needs ONNX opset 10 or newer", ceil_mode=1, opset=opset)
        return attrs


def _crop(dxp: np.ndarray, width, x_shape) -> np.ndarray:
    h, w = x_shape[2], x_shape[3]
    return np.ascontiguousarray(dxp[:, :, width[2][0]:width[2][0] + h, width[3][0]:width[3][0] + w])


@register
class MaxPool(_Pool2D):
    """Max over each window; padding never wins (it is -inf). One output (no Indices).

    Gradient routing (documented rule): in each window the whole gradient goes to the FIRST
    maximum in row-major kernel scan order (kh outer, kw inner). Overlapping windows add up.
    """

    attr_defaults = {"auto_pad": "NOTSET", "ceil_mode": 0, "dilations": None, "kernel_shape": None,
                     "pads": None, "storage_order": 0, "strides": None}
    onnx_opsets = (1, 99)

    def forward(self, inputs, ctx: RunContext):
        x = inputs[0]
        kernel, strides, dilations, pads, out, width = self.padded_geometry(x.shape)
        xp = np.pad(x, width, mode="constant", constant_values=-np.inf) if any(map(sum, width)) else x
        win = windows(xp, kernel, strides, dilations, out)
        taps = kernel[0] * kernel[1]
        y = np.empty(x.shape[:2] + tuple(out), dtype=x.dtype)
        # For the backward, each window's winner: the index of its FIRST maximum in scan order (a
        # later tap wins only when strictly greater), or no_winner where the max is NaN (as no tap
        # equals it). One byte per output instead of keeping the padded input.
        winner = np.zeros(y.shape, dtype=np.uint8 if taps < 255 else np.uint16) if ctx.need_grad else None
        no_winner = np.iinfo(winner.dtype).max if winner is not None else 0

        def body(first, stop):
            best = y[first:stop]
            best[...] = win[first:stop, :, :, :, 0, 0]
            better = np.empty(best.shape, dtype=bool) if winner is not None else None
            for t in range(1, taps):
                tap = win[first:stop, :, :, :, t // kernel[1], t % kernel[1]]
                if winner is not None:
                    np.greater(tap, best, out=better)
                    np.copyto(winner[first:stop], t, where=better)
                np.maximum(best, tap, out=best)
            if winner is not None:
                np.copyto(winner[first:stop], no_winner, where=np.isnan(best))
        for_slices(body, x.shape[0], y.size * taps)
        cache = (winner, xp.shape, width, x.shape, kernel, strides, dilations) if ctx.need_grad else None
        return [y], cache

    def backward(self, cache, grad_outputs):
        winner, padded_shape, width, x_shape, kernel, strides, dilations = cache
        dy = grad_outputs[0]
        out_hw = dy.shape[2:]
        dxp = np.zeros(padded_shape, dtype=dy.dtype)
        # Windows that do not overlap touch each input once: their share is written, not added.
        disjoint = all(strides[i] >= dilations[i] * (kernel[i] - 1) + 1 for i in range(2))

        def body(first, stop):
            hit = np.empty(dy[first:stop].shape, dtype=bool)
            share = np.empty(dy[first:stop].shape, dtype=dy.dtype)
            for t in range(kernel[0] * kernel[1]):
                rows, columns = tap_slices(t // kernel[1], t % kernel[1], strides, dilations, out_hw)
                np.equal(winner[first:stop], t, out=hit)
                if disjoint:
                    np.multiply(dy[first:stop], hit, out=dxp[first:stop, :, rows, columns])
                else:
                    np.multiply(dy[first:stop], hit, out=share)
                    dxp[first:stop, :, rows, columns] += share
        for_slices(body, dy.shape[0], dy.size * kernel[0] * kernel[1])
        return [dxp if not any(map(sum, width)) else _crop(dxp, width, x_shape)]

    def onnx_attributes(self, opset):
        attrs = super().onnx_attributes(opset)
        attrs.pop("storage_order", None)
        dilations = attrs.pop("dilations", None)
        if dilations is not None and (opset >= 10 or any(d != 1 for d in dilations)):
            if opset < 10:
                self.fail("MaxPool with dilations needs ONNX opset 10 or newer", dilations=dilations, opset=opset)
            attrs["dilations"] = dilations
        return attrs

    @classmethod
    def from_onnx(cls, node, opset, ctx):
        if len(node.output) > 1 and node.output[1]:
            raise UnsupportedOpError(f"Node '{node.name}' (MaxPool): the Indices output is not supported. "
                                     f"Received: outputs={list(node.output)}")
        attrs, inputs, outputs = super().from_onnx(node, opset, ctx)
        return attrs, inputs, outputs[:1]


@register
class AveragePool(_Pool2D):
    """Mean over each window.

    Divisor: with ``count_include_pad`` the taps inside the explicitly padded input (the
    ceil_mode overhang past it never counts); without it only taps on real input pixels.
    Dilations exist in ONNX from opset 19; exporting a dilated AveragePool to an older opset fails.
    """

    attr_defaults = {"auto_pad": "NOTSET", "ceil_mode": 0, "count_include_pad": 0, "dilations": None,
                     "kernel_shape": None, "pads": None, "strides": None}
    onnx_opsets = (1, 99)

    def check_attrs(self, attrs):
        attrs = super().check_attrs(attrs)
        attrs["count_include_pad"] = int(attrs["count_include_pad"])
        return attrs

    def _divisor(self, x_shape, width, kernel, strides, dilations, out, dtype):
        padded = (x_shape[2] + width[2][0] + width[2][1], x_shape[3] + width[3][0] + width[3][1])
        counted = np.zeros((1, 1) + padded, dtype=dtype)
        if self.attrs["count_include_pad"]:
            _, _, _, pads, _ = self.geometry(x_shape)
            counted[:, :, :x_shape[2] + pads[0] + pads[2], :x_shape[3] + pads[1] + pads[3]] = 1
        else:
            counted[:, :, width[2][0]:width[2][0] + x_shape[2], width[3][0]:width[3][0] + x_shape[3]] = 1
        return windows(counted, kernel, strides, dilations, out).sum(axis=(4, 5))  # (1, 1, OH, OW)

    def forward(self, inputs, ctx: RunContext):
        x = inputs[0]
        kernel, strides, dilations, pads, out, width = self.padded_geometry(x.shape)
        xp = np.pad(x, width) if any(sum(w) for w in width) else x
        win = windows(xp, kernel, strides, dilations, out)
        total = win[:, :, :, :, 0, 0].copy()
        for i in range(kernel[0]):
            for j in range(kernel[1]):
                if i or j:
                    total += win[:, :, :, :, i, j]
        divisor = self._divisor(x.shape, width, kernel, strides, dilations, out, x.dtype)
        y = (total / divisor).astype(x.dtype, copy=False)
        cache = (divisor, xp.shape, width, x.shape, kernel, strides, dilations) if ctx.need_grad else None
        return [y], cache

    def backward(self, cache, grad_outputs):
        divisor, padded_shape, width, x_shape, kernel, strides, dilations = cache
        dy = grad_outputs[0]
        share = (dy / divisor).astype(dy.dtype, copy=False)
        dwin = np.broadcast_to(share[..., None, None], share.shape + tuple(kernel))
        dxp = scatter_windows(dwin, padded_shape, strides, dilations)
        return [_crop(dxp, width, x_shape)]

    def onnx_attributes(self, opset):
        attrs = super().onnx_attributes(opset)
        dilations = attrs.pop("dilations", None)
        if dilations is not None and any(d != 1 for d in dilations):
            if opset < 19:
                self.fail("AveragePool with dilations needs ONNX opset 19 or newer", dilations=dilations,
                          opset=opset)
            attrs["dilations"] = dilations
        if opset < 7 and attrs.pop("count_include_pad", 0):
            self.fail("count_include_pad needs ONNX opset 7 or newer", count_include_pad=1, opset=opset)
        return attrs


class _GlobalPool(Op):
    """Reduce every axis after the channels; output ``(N, C, 1, ..., 1)``."""

    onnx_opsets = (1, 99)

    def infer_shapes(self, in_shapes):
        x = tuple(in_shapes[0])
        if len(x) < 3:
            self.fail("expects an input with at least one spatial axis (N, C, ...)", input_shape=x)
        return [x[:2] + (1,) * (len(x) - 2)]

    def onnx_attributes(self, opset):
        return {}


@register
class GlobalAveragePool(_GlobalPool):
    """``y[n, c] = mean over all spatial positions of x[n, c]``."""

    def forward(self, inputs, ctx):
        x = inputs[0]
        axes = tuple(range(2, x.ndim))
        y = x.mean(axis=axes, keepdims=True).astype(x.dtype, copy=False)
        return [y], (x.shape if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        x_shape = cache
        dy = grad_outputs[0]
        count = int(np.prod(x_shape[2:]))
        return [np.broadcast_to(dy / count, x_shape).astype(dy.dtype)]


@register
class GlobalMaxPool(_GlobalPool):
    """``y[n, c] = max over all spatial positions``; the gradient goes to the first maximum
    in row-major order (the same rule as MaxPool)."""

    def forward(self, inputs, ctx):
        x = inputs[0]
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        first_max = flat.argmax(axis=2)  # argmax returns the first occurrence
        y = np.take_along_axis(flat, first_max[..., None], axis=2).reshape(x.shape[:2] + (1,) * (x.ndim - 2))
        return [y.astype(x.dtype, copy=False)], ((first_max, x.shape) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        first_max, x_shape = cache
        dy = grad_outputs[0]
        dx = np.zeros((x_shape[0], x_shape[1], int(np.prod(x_shape[2:]))), dtype=dy.dtype)
        np.put_along_axis(dx, first_max[..., None], dy.reshape(x_shape[0], x_shape[1], 1), axis=2)
        return [dx.reshape(x_shape)]

