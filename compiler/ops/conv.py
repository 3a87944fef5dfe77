"""Convolution: Conv (2-D, NCHW / OIHW, groups, dilation, strides, explicit or auto pads)."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

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


class _Spatial2D(Op):
    """Shared attribute handling for ops with kernel/strides/pads/dilations over 2-D NCHW input."""

    def _kernel(self, in_shapes) -> tuple[int, int]:
        return _pair(self.attrs["kernel_shape"], 1)

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

    def receptive_field(self):
        kernel = _pair(self.attrs.get("kernel_shape"), 1)
        dil = _pair(self.attrs.get("dilations"), 1)
        extent = tuple(dil[i] * (kernel[i] - 1) + 1 for i in range(2))
        return extent, _pair(self.attrs.get("strides"), 1)


@register
class Conv(_Spatial2D):
    """2-D convolution, NCHW input, OIHW weight (``O = M``, ``I = C / group``), optional bias.

    Output size per spatial axis (see ``_shapes.output_size``):
    ``out = floor((in + pad_begin + pad_end - (dilation * (k - 1) + 1)) / stride) + 1``.

    Computed as im2col + one batched matrix product per group set:
    ``Y[g] = cols[g] (N*OH*OW, C/g*KH*KW) @ W[g]^T (C/g*KH*KW, M/g)``.
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
        return [(x[0], w[0], out[0], out[1])]

    def receptive_field(self):
        # kernel_shape may be implicit (taken from the weight); the builder always records it.
        return super().receptive_field()

    def macs(self, in_shapes, out_shapes):
        w = in_shapes[1]
        o = out_shapes[0]
        return int(o[1] * o[2] * o[3] * w[1] * w[2] * w[3])

    def forward(self, inputs, ctx: RunContext):
        x, w = inputs[0], inputs[1]
        b = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
        kernel, strides, dilations, pads, (oh, ow) = self.geometry(x.shape, tuple(w.shape[2:]))
        n, c = x.shape[:2]
        m, cg = w.shape[:2]
        g = self.attrs["group"]
        mg = m // g
        xp = np.pad(x, _shapes.numpy_pad_width(pads)) if any(pads) else x
        win = windows(xp, kernel, strides, dilations, (oh, ow))  # (N, C, OH, OW, KH, KW)
        k = cg * kernel[0] * kernel[1]
        # im2col: (g, N*OH*OW, C/g*KH*KW); kept for the backward pass (weight gradient).
        cols = (win.reshape(n, g, cg, oh, ow, kernel[0], kernel[1])
                .transpose(1, 0, 3, 4, 2, 5, 6).reshape(g, n * oh * ow, k))
        wmat = w.reshape(g, mg, k).transpose(0, 2, 1)  # (g, K, M/g)
        y = np.matmul(cols, wmat)  # (g, N*OH*OW, M/g)
        y = y.reshape(g, n, oh, ow, mg).transpose(1, 0, 4, 2, 3).reshape(n, m, oh, ow)
        if b is not None:
            y = y + b.reshape(1, m, 1, 1)
        y = np.ascontiguousarray(y, dtype=x.dtype)
        cache = (cols, w, xp.shape, x.shape, pads, kernel, strides, dilations, b is not None) if ctx.need_grad else None
        return [y], cache

    def backward(self, cache, grad_outputs):
        cols, w, padded_shape, x_shape, pads, kernel, strides, dilations, has_bias = cache
        dy = grad_outputs[0]
        n, m, oh, ow = dy.shape
        g = self.attrs["group"]
        mg, cg = m // g, w.shape[1]
        dy_mat = dy.reshape(n, g, mg, oh, ow).transpose(1, 0, 3, 4, 2).reshape(g, n * oh * ow, mg)
        dw = np.matmul(cols.transpose(0, 2, 1), dy_mat)  # (g, K, M/g)
        dw = dw.transpose(0, 2, 1).reshape(w.shape)
        dcols = np.matmul(dy_mat, w.reshape(g, mg, -1))  # (g, N*OH*OW, K)
        dwin = (dcols.reshape(g, n, oh, ow, cg, kernel[0], kernel[1])
                .transpose(1, 0, 4, 2, 3, 5, 6).reshape(n, g * cg, oh, ow, kernel[0], kernel[1]))
        dxp = scatter_windows(dwin, padded_shape, strides, dilations)
        h, wd = x_shape[2], x_shape[3]
        dx = dxp[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + wd]
        grads = [np.ascontiguousarray(dx), dw.astype(w.dtype, copy=False)]
        if has_bias:
            grads.append(dy.sum(axis=(0, 2, 3)))
        return grads

    def onnx_attributes(self, opset):
        attrs = {k: v for k, v in self.attrs.items() if v is not None}
        if attrs.get("auto_pad") == "NOTSET":
            attrs.pop("auto_pad")
        return attrs
