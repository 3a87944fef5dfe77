"""Convolution: Conv (2-D, NCHW / OIHW, groups, dilation, strides, explicit or auto pads)."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..errors import UnsupportedOpError
from . import _shapes
from .base import Op, RunContext, register


def _pair(value, default: int) -> tuple[int, int]:
    if value is None:
        return (default, default)
    value = tuple(int(v) for v in value)
    return value if len(value) == 2 else (value[0], value[0])


def windows(xp: np.ndarray, kernel, strides, dilations, out_hw) -> np.ndarray:
    """A read-only strided view (N, C, OH, OW, KH, KW) of the padded input: no copy.

    Shared by Conv and the pools so the window arithmetic exists once.
    """
    n, c, _, _ = xp.shape
    sn, sc, sh, sw = xp.strides
    return as_strided(
        xp,
        shape=(n, c, out_hw[0], out_hw[1], kernel[0], kernel[1]),
        strides=(sn, sc, sh * strides[0], sw * strides[1], sh * dilations[0], sw * dilations[1]),
        writeable=False,
    )


def scatter_windows(grad_windows: np.ndarray, padded_shape, strides, dilations) -> np.ndarray:
    """Adjoint of :func:`windows`: sum (N, C, OH, OW, KH, KW) window gradients into the padded input.

    Loops over kernel positions only (9 for a 3x3 kernel), never over pixels or samples.
    """
    n, c, oh, ow, kh, kw = grad_windows.shape
    out = np.zeros(padded_shape, dtype=grad_windows.dtype)
    for i in range(kh):
        hi = i * dilations[0]
        for j in range(kw):
            wj = j * dilations[1]
            out[:, :, hi:hi + strides[0] * (oh - 1) + 1:strides[0], wj:wj + strides[1] * (ow - 1) + 1:strides[1]] += \
                grad_windows[:, :, :, :, i, j]
    return out


def _tap_slices(i: int, j: int, strides, dilations, out_hw) -> tuple[slice, slice]:
    """Rows and columns of the padded input that kernel position (i, j) reads, one per output."""
    hi, wj = i * dilations[0], j * dilations[1]
    return (slice(hi, hi + strides[0] * (out_hw[0] - 1) + 1, strides[0]),
            slice(wj, wj + strides[1] * (out_hw[1] - 1) + 1, strides[1]))


def _im2col_channel_first(xp: np.ndarray, kernel, strides, dilations, out_hw) -> np.ndarray:
    """Columns (C, KH, KW, N, OH, OW) of the padded input: one strided copy per kernel position."""
    n, c = xp.shape[:2]
    cols = np.empty((c, kernel[0], kernel[1], n, out_hw[0], out_hw[1]), dtype=xp.dtype)
    channels_first = xp.transpose(1, 0, 2, 3)  # a view (C, N, H, W)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            rows, columns = _tap_slices(i, j, strides, dilations, out_hw)
            cols[:, i, j] = channels_first[:, :, rows, columns]
    return cols


def _col2im_channel_first(dcols: np.ndarray, padded_shape, kernel, strides, dilations, out_hw) -> np.ndarray:
    """Adjoint of :func:`_im2col_channel_first`: add column gradients back into the padded input."""
    n, c = padded_shape[:2]
    blocks = dcols.reshape(c, kernel[0], kernel[1], n, out_hw[0], out_hw[1])
    out = np.zeros((c, n) + tuple(padded_shape[2:]), dtype=dcols.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            rows, columns = _tap_slices(i, j, strides, dilations, out_hw)
            out[:, :, rows, columns] += blocks[:, i, j]
    return out.transpose(1, 0, 2, 3)


class _Spatial2D(Op):
    """Shared attribute handling for ops with kernel/strides/pads/dilations over 2-D NCHW input."""

    def geometry(self, x_shape, kernel=None):
        """(kernel, strides, dilations, pads[ONNX order], (OH, OW)) for an NCHW input shape."""
        kernel = kernel or _pair(self.attrs["kernel_shape"], 1)
        strides = _pair(self.attrs.get("strides"), 1)
        dilations = _pair(self.attrs.get("dilations"), 1)
        spatial = tuple(x_shape[2:4])
        pads = _shapes.resolve_pads(self.attrs.get("auto_pad", "NOTSET"), self.attrs.get("pads"), spatial,
                                    kernel, strides, dilations)
        ceil_mode = bool(self.attrs.get("ceil_mode", 0))
        out = tuple(_shapes.output_size(spatial[i], kernel[i], strides[i], dilations[i], pads[i], pads[i + 2],
                                        ceil_mode) for i in range(2))
        return kernel, strides, dilations, pads, out

    def check_common(self, attrs: dict) -> dict:
        for key in ("strides", "dilations", "kernel_shape"):
            if attrs.get(key) is not None:
                vals = [int(v) for v in attrs[key]]
                if len(vals) != 2 or min(vals) < 1:
                    self.fail(f"{key} must be two positive integers (2-D only)", **{key: attrs[key]})
                attrs[key] = vals
        if attrs.get("pads") is not None:
            pads = [int(v) for v in attrs["pads"]]
            if len(pads) != 4 or min(pads) < 0:
                self.fail("pads must be four non-negative integers [top, left, bottom, right]", pads=attrs["pads"])
            attrs["pads"] = pads
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            self.fail("auto_pad must be NOTSET, VALID, SAME_UPPER or SAME_LOWER", auto_pad=attrs["auto_pad"])
        if attrs.get("auto_pad", "NOTSET") != "NOTSET" and attrs.get("pads") is not None and any(attrs["pads"]):
            self.fail("pads cannot be given together with auto_pad", auto_pad=attrs["auto_pad"], pads=attrs["pads"])
        return attrs

    def check_input_4d(self, x_shape):
        if x_shape is None or len(x_shape) != 4:
            self.fail("expects a 4-D NCHW input", input_shape=x_shape)

    def check_fits(self, x_shape, kernel, dilations, pads, out):
        if min(out) < 1:
            padded = (x_shape[2] + pads[0] + pads[2], x_shape[3] + pads[1] + pads[3])
            effective = tuple(dilations[i] * (kernel[i] - 1) + 1 for i in range(2))
            self.fail("kernel (with dilation) is larger than the padded input", input_shape=tuple(x_shape),
                      padded_hw=padded, effective_kernel=effective)

    @classmethod
    def from_onnx(cls, node, opset, ctx):
        attrs, inputs, outputs = super().from_onnx(node, opset, ctx)
        spatial = {k: len(attrs[k]) for k in ("kernel_shape", "strides", "dilations") if k in attrs}
        if "pads" in attrs:
            spatial["pads"] = len(attrs["pads"]) // 2
        if node.op_type == "Conv" and len(node.input) > 1 and ctx.constant(node.input[1]) is not None:
            spatial["weight"] = np.asarray(ctx.constant(node.input[1])).ndim - 2
        if any(n != 2 for n in spatial.values()):
            raise UnsupportedOpError(f"Node '{node.name}' ({node.op_type}): only 2-D (NCHW) is supported. "
                                     f"Received: spatial dimensions {spatial}")
        return attrs, inputs, outputs

    def receptive_field(self):
        kernel = _pair(self.attrs.get("kernel_shape"), 1)
        dil = _pair(self.attrs.get("dilations"), 1)
        extent = tuple(dil[i] * (kernel[i] - 1) + 1 for i in range(2))
        return extent, _pair(self.attrs.get("strides"), 1)

    def to_onnx(self, inputs, outputs, opset, ctx):
        """One node; where onnxruntime or onnx's shape inference read an attribute set otherwise than
        the spec (and edgecnn), the same computation is written in a form they agree on."""
        import onnx.helper

        attrs = self.onnx_attributes(opset)
        shape_of = getattr(ctx, "shape", None)  # the exporter knows every shape; a bare context may not
        same = attrs.get("auto_pad") in ("SAME_UPPER", "SAME_LOWER")
        if not callable(shape_of) or not (same or attrs.get("ceil_mode")):
            return [onnx.helper.make_node(self.op_type, inputs, outputs, name=self.name, **attrs)]
        x = shape_of(inputs[0])
        kernel, strides, dilations, pads, out = self.geometry(
            x, tuple(shape_of(inputs[1])[2:]) if self.op_type == "Conv" else None)
        if same:
            # SAME's total pad is (out - 1) * stride + dilated kernel - size, at least 0
            clamped = any((out[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 < x[2 + i] for i in range(2))
            if clamped or any(d != 1 for d in dilations):
                # onnxruntime refuses SAME on dilated convs, sizes dilated pools' SAME pads without the
                # dilation and lets them go negative in pools: write the pads out (sizes are known here)
                attrs.pop("auto_pad")
                attrs["pads"] = list(pads)
        if attrs.get("ceil_mode"):
            # A window ceil_mode adds that would start in the end padding is dropped (the spec's rule,
            # onnxruntime's and edgecnn's), but onnx's shape inference counts it: write the same pool
            # in floor mode, or else with the end pad cut where the last window ends.
            spans = [x[2 + i] + pads[i] + pads[i + 2] - dilations[i] * (kernel[i] - 1) - 1 for i in range(2)]
            counted = [-(-spans[i] // strides[i]) + 1 for i in range(2)]  # no window dropped
            if tuple(counted) != out:
                if tuple(spans[i] // strides[i] + 1 for i in range(2)) == out:
                    attrs["ceil_mode"] = 0
                else:
                    pads = list(pads)
                    for i in range(2):
                        cut = spans[i] - (out[i] - 1) * strides[i]
                        if counted[i] != out[i] and cut <= pads[i + 2]:
                            pads[i + 2] -= cut
                    attrs.pop("auto_pad", None)
                    attrs["pads"] = pads
        return [onnx.helper.make_node(self.op_type, inputs, outputs, name=self.name, **attrs)]


@register
class Conv(_Spatial2D):
    """2-D convolution, NCHW input, OIHW weight (``O = M``, ``I = C / group``), optional bias.

    Output size per spatial axis (see ``_shapes.output_size``):
    ``out = floor((in + pad_begin + pad_end - (dilation * (k - 1) + 1)) / stride) + 1``.

    Computed as im2col + one matrix product per group, with the columns laid out channel-first,
    ``cols[g] (C/g*KH*KW, N*OH*OW)`` and ``Y[g] = W[g] (M/g, C/g*KH*KW) @ cols[g]``. In that layout
    every kernel position is one contiguous block of the columns, so both im2col and its adjoint
    (col2im, in the backward) are one strided copy / add per kernel position.
    """

    attr_defaults = {"auto_pad": "NOTSET", "dilations": None, "group": 1, "kernel_shape": None,
                     "pads": None, "strides": None}
    arity = (2, 3)
    param_inputs = (1, 2)
    onnx_opsets = (1, 99)

    def check_attrs(self, attrs):
        attrs = self.check_common(attrs)
        attrs["group"] = int(attrs["group"])
        if attrs["group"] < 1:
            self.fail("group must be a positive integer", group=attrs["group"])
        return attrs

    def infer_shapes(self, in_shapes):
        x, w = in_shapes[0], in_shapes[1]
        self.check_input_4d(x)
        if w is None or len(w) != 4:
            self.fail("weight must be 4-D (M, C/group, KH, KW)", weight_shape=w)
        g = self.attrs["group"]
        if isinstance(x[1], str) or x[1] != w[1] * g:
            self.fail("input channels must equal weight in-channels x group", input_shape=tuple(x),
                      weight_shape=tuple(w), group=g)
        if w[0] % g:
            self.fail("output channels must be divisible by group", weight_shape=tuple(w), group=g)
        if self.attrs["kernel_shape"] is not None and tuple(self.attrs["kernel_shape"]) != tuple(w[2:]):
            self.fail("kernel_shape disagrees with the weight", kernel_shape=self.attrs["kernel_shape"],
                      weight_shape=tuple(w))
        if len(in_shapes) > 2 and in_shapes[2] is not None and tuple(in_shapes[2]) != (w[0],):
            self.fail("bias must have one value per output channel", bias_shape=in_shapes[2], out_channels=w[0])
        kernel, strides, dilations, pads, out = self.geometry(x, tuple(w[2:]))
        self.check_fits(x, kernel, dilations, pads, out)
        self._weight_kernel = tuple(int(k) for k in w[2:])
        return [(x[0], w[0], out[0], out[1])]

    def receptive_field(self):
        # kernel_shape may be implicit (imported ONNX often omits it): then the weight's, seen at
        # shape inference, gives the kernel.
        kernel = self.attrs.get("kernel_shape") or getattr(self, "_weight_kernel", None)
        dil = _pair(self.attrs.get("dilations"), 1)
        k = _pair(kernel, 1)
        return tuple(dil[i] * (k[i] - 1) + 1 for i in range(2)), _pair(self.attrs.get("strides"), 1)

    def macs(self, in_shapes, out_shapes):
        w = in_shapes[1]
        o = out_shapes[0]
        return int(o[1] * o[2] * o[3] * w[1] * w[2] * w[3])

    def forward(self, inputs, ctx: RunContext):
        x, w = inputs[0], inputs[1]
        b = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
        kernel, strides, dilations, pads, (oh, ow) = self.geometry(x.shape, tuple(w.shape[2:]))
        n = x.shape[0]
        m = w.shape[0]
        g = self.attrs["group"]
        xp = np.pad(x, _shapes.numpy_pad_width(pads)) if any(pads) else x
        # im2col, kept for the backward pass (weight gradient): (g, C/g*KH*KW, N*OH*OW)
        cols = _im2col_channel_first(xp, kernel, strides, dilations, (oh, ow)).reshape(g, -1, n * oh * ow)
        y = np.matmul(w.reshape(g, m // g, -1), cols)  # (g, M/g, N*OH*OW)
        y = y.reshape(m, n, oh, ow).transpose(1, 0, 2, 3)
        if b is not None:
            y = y + b.reshape(1, m, 1, 1)
        y = np.ascontiguousarray(y, dtype=x.dtype)
        # The first layer's input gradient is rarely wanted (it costs ~30% of a LeNet step).
        need_dx = ctx.requires_grad[0] if ctx.requires_grad else True
        cache = ((cols, w, xp.shape, x.shape, pads, kernel, strides, dilations, b is not None, need_dx)
                 if ctx.need_grad else None)
        return [y], cache

    def backward(self, cache, grad_outputs):
        cols, w, padded_shape, x_shape, pads, kernel, strides, dilations, has_bias, need_dx = cache
        dy = grad_outputs[0]
        n, m, oh, ow = dy.shape
        g = self.attrs["group"]
        dy_mat = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(g, m // g, n * oh * ow)
        dw = np.matmul(dy_mat, cols.transpose(0, 2, 1)).reshape(w.shape)  # (g, M/g, K)
        grads = [None, dw.astype(w.dtype, copy=False)]
        if has_bias:
            grads.append(dy.sum(axis=(0, 2, 3)))
        if not need_dx:
            return grads
        wmat = w.reshape(g, m // g, -1)
        if m // g == 1:
            # Depthwise: each column gradient is an outer product with one weight row; a broadcast
            # multiply does it ~6x faster than matmul's stack of (K, 1) @ (1, N*OH*OW) products.
            dcols = wmat.transpose(0, 2, 1) * dy_mat  # (g, K, N*OH*OW)
        else:
            dcols = np.matmul(wmat.transpose(0, 2, 1), dy_mat)
        dxp = _col2im_channel_first(dcols, padded_shape, kernel, strides, dilations, (oh, ow))
        h, wd = x_shape[2], x_shape[3]
        dx = dxp[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + wd]
        grads[0] = np.ascontiguousarray(dx)
        return grads

    def onnx_attributes(self, opset):
        attrs = {k: v for k, v in self.attrs.items() if v is not None}
        if attrs.get("auto_pad") == "NOTSET":
            attrs.pop("auto_pad")
        return attrs
