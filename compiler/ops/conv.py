"""Convolution: Conv (2-D, NCHW / OIHW, groups, dilation, strides, explicit or auto pads) and its
transposed form ConvTranspose (the gradient of a Conv with respect to its input)."""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..errors import UnsupportedOpError
from . import _conv_numpy, _shapes
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

    def geometry(self, x_shape, kernel=None):
        """(kernel, strides, dilations, pads[ONNX order], (OH, OW)) for an NCHW input shape."""
        kernel = kernel or _pair(self.attrs["kernel_shape"], 1)
        strides = _pair(self.attrs.get("strides"), 1)
        dilations = _pair(self.attrs.get("dilations"), 1)
        spatial = tuple(x_shape[2:4])
        if any(isinstance(d, str) for d in spatial):
            self.fail("spatial dimensions must be known integers", input_shape=tuple(x_shape))
        pads = _shapes.resolve_pads(self.attrs.get("auto_pad", "NOTSET"), self.attrs.get("pads"), spatial,
                                    kernel, strides, dilations)
        ceil_mode = bool(self.attrs.get("ceil_mode", 0))
        out = tuple(_shapes.output_size(spatial[i], kernel[i], strides[i], dilations[i], pads[i], pads[i + 2],
                                        ceil_mode) for i in range(2))
        return kernel, strides, dilations, pads, out

    def check_grouped(self, attrs: dict) -> dict:
        """``check_common`` plus the ``group`` of a convolution (Conv, ConvTranspose)."""
        attrs = self.check_common(attrs)
        attrs["group"] = int(attrs["group"])
        if attrs["group"] < 1:
            self.fail("group must be a positive integer", group=attrs["group"])
        return attrs

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
        for key in ("kernel_shape", "strides", "dilations", "pads", "output_padding", "output_shape"):
            if key in attrs and not isinstance(attrs[key], (list, tuple)):
                raise UnsupportedOpError(f"Node '{node.name}' ({node.op_type}): attribute '{key}' must be a list of "
                                         f"integers. Received: {key}={attrs[key]!r}")
        spatial = {k: len(attrs[k]) for k in ("kernel_shape", "strides", "dilations") if k in attrs}
        if "pads" in attrs:
            spatial["pads"] = len(attrs["pads"]) // 2
        if "output_padding" in attrs:
            spatial["output_padding"] = len(attrs["output_padding"])
        if "output_shape" in attrs and len(attrs["output_shape"]) != 4:  # 4: (N, C, H, W), read as (H, W)
            spatial["output_shape"] = len(attrs["output_shape"])
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and ctx.constant(node.input[1]) is not None:
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

    Computed as matrix products per group, ``Y[g] = W[g] (M/g, C/g*KH*KW) @ patches[g]``, by one of
    the kernels in :mod:`._conv_numpy` chosen from the geometry (1x1 convs straight on the input,
    stride-1 convs on a padded channels-first grid with no scatter-add in the backward, the rest
    through im2col/col2im).
    """

    attr_defaults = {"auto_pad": "NOTSET", "dilations": None, "group": 1, "kernel_shape": None,
                     "pads": None, "strides": None}
    arity = (2, 3)
    param_inputs = (1, 2)
    onnx_opsets = (1, 99)


    def quantized_weight_axis(self) -> int:
        return 0  # OIHW: output channels first

    def integer_node(self, name, head, bias, requantize, output, has_bias):
        from ..ir import Node  # the IR imports the ops: a module-level import would be a cycle

        if requantize is None:
            return "its output is not quantized again"
        return Node("QLinearConv", name, head + list(requantize) + ([bias] if bias else []), [output],
                    dict(self.attrs))
    def check_attrs(self, attrs):
        attrs = self.check_grouped(attrs)
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
        kernel, strides, dilations, pads, out = self.geometry(x.shape, tuple(w.shape[2:]))
        geo = _conv_numpy.Geometry(*x.shape, w.shape[0], kernel, strides, dilations, tuple(pads), out,
                                   self.attrs["group"])
        y = _conv_numpy.forward(x, w, b, geo).astype(x.dtype, copy=False)
        # The first layer's input gradient is rarely wanted (it costs ~30% of a LeNet step).
        need_dx = ctx.requires_grad[0] if ctx.requires_grad else True
        # The input, not its patch matrix: the backward rebuilds that (see _conv_numpy).
        cache = (x, w, geo, b is not None, need_dx) if ctx.need_grad else None
        return [y], cache

    def backward(self, cache, grad_outputs):
        x, w, geo, has_bias, need_dx = cache
        dy = grad_outputs[0]
        dx, dw = _conv_numpy.backward(x, w, dy, geo, need_dx)
        grads = [dx, dw]
        if has_bias:
            grads.append(dy.reshape(dy.shape[0], dy.shape[1], -1).sum(axis=2).sum(axis=0))
        return grads

    def onnx_attributes(self, opset):
        attrs = {k: v for k, v in self.attrs.items() if v is not None}
        if attrs.get("auto_pad") == "NOTSET":
            attrs.pop("auto_pad")
        return attrs


@register
class ConvTranspose(_Spatial2D):
    """2-D transposed convolution, NCHW input, weight ``(C, M / group, KH, KW)`` (input channels
    first, the layout of the Conv it transposes), optional bias of M values.

    Each input pixel ``x[n, c, h, w]`` adds ``x * W[c, m]`` into the output window that starts at
    ``(h * stride - pad_begin, w * stride - pad_begin)`` with taps ``dilation`` apart: the gradient
    of ``Conv(stride, dilation, pads)`` with respect to its input. Output size per axis (ONNX)::

        out = stride * (in - 1) + output_padding + dilation * (k - 1) + 1 - pad_begin - pad_end

    ``output_padding`` adds rows/columns at the end that no input reaches (bias only). Given
    ``output_shape`` (or ``auto_pad`` SAME_*: ``output_shape = in * stride``), the pads come from
    ``total = stride * (in - 1) + output_padding + dilation * (k - 1) + 1 - output_shape``:
    SAME_UPPER puts ``total // 2`` at the beginning, anything else ``total - total // 2``
    (ONNX opset 11's rule; explicit pads are then ignored). A total below 0 (an output larger
    than every input reaches) is refused.

    Computed as one matrix product per group, ``cols[g] = W[g]^T (M/g*KH*KW, C/g) @ x[g]
    (C/g, N*H*W)``, and col2im of the columns into the uncropped output (one strided add per
    kernel position), then the pads cropped. The backward is the adjoint: the output gradient,
    zero-padded back, is read by im2col (a Conv's columns), and ``dx = W[g] @ dcols``,
    ``dW = x[g] @ dcols^T``.
    """

    attr_defaults = {"auto_pad": "NOTSET", "dilations": None, "group": 1, "kernel_shape": None,
                     "output_padding": None, "output_shape": None, "pads": None, "strides": None}
    arity = (2, 3)
    param_inputs = (1, 2)
    onnx_opsets = (1, 99)

    def check_attrs(self, attrs):
        attrs = self.check_grouped(attrs)
        strides = _pair(attrs["strides"], 1)
        dilations = _pair(attrs["dilations"], 1)
        if attrs["output_padding"] is not None:
            extra = [int(v) for v in attrs["output_padding"]]
            if len(extra) != 2 or min(extra) < 0:
                self.fail("output_padding must be two non-negative integers (2-D only)",
                          output_padding=attrs["output_padding"])
            if any(extra[i] >= max(strides[i], dilations[i]) for i in range(2)):
                self.fail("each output_padding value must be smaller than its stride or its dilation",
                          output_padding=extra, strides=list(strides), dilations=list(dilations))
            attrs["output_padding"] = extra
        if attrs["output_shape"] is not None:
            shape = [int(v) for v in attrs["output_shape"]]
            if len(shape) == 4:  # some writers include (N, C); the spatial part is what counts
                shape = shape[2:]
            if len(shape) != 2 or min(shape) < 1:
                self.fail("output_shape must be two positive integers (the output's H and W)",
                          output_shape=attrs["output_shape"])
            attrs["output_shape"] = shape
        return attrs

    def transpose_geometry(self, x_shape, kernel):
        """(kernel, strides, dilations, pads[ONNX order], (OH, OW), uncropped (rows, cols))."""
        strides = _pair(self.attrs["strides"], 1)
        dilations = _pair(self.attrs["dilations"], 1)
        extra = _pair(self.attrs["output_padding"], 0)
        spatial = tuple(x_shape[2:4])
        if any(isinstance(d, str) for d in spatial):
            self.fail("the input's spatial dimensions must be known", input_shape=tuple(x_shape))
        reach = tuple(strides[i] * (spatial[i] - 1) + dilations[i] * (kernel[i] - 1) + 1 for i in range(2))
        full = tuple(reach[i] + extra[i] for i in range(2))  # the output size without pads
        auto_pad = self.attrs["auto_pad"]
        target = self.attrs["output_shape"]
        if target is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = [spatial[i] * strides[i] for i in range(2)]
        if target is not None:
            total = [full[i] - target[i] for i in range(2)]
            if min(total) < 0:
                self.fail("the output asked for (output_shape, or input x stride for SAME auto_pad) is larger "
                          "than the transposed convolution reaches: it would need negative pads",
                          input_shape=tuple(x_shape), output_hw=tuple(target), reachable_hw=full)
            if auto_pad == "SAME_UPPER":
                begin = [t // 2 for t in total]
            else:
                begin = [t - t // 2 for t in total]
            pads = begin + [total[i] - begin[i] for i in range(2)]
        elif auto_pad == "VALID":
            pads = [0, 0, 0, 0]
        else:
            pads = list(self.attrs["pads"] or [0, 0, 0, 0])
        out = tuple(full[i] - pads[i] - pads[i + 2] for i in range(2))
        # rows/columns col2im writes: every input's reach, and the output_padding rows the crop keeps
        canvas = tuple(max(reach[i], pads[i] + out[i]) for i in range(2))
        return kernel, strides, dilations, pads, out, canvas

    def infer_shapes(self, in_shapes):
        x, w = in_shapes[0], in_shapes[1]
        self.check_input_4d(x)
        if w is None or len(w) != 4:
            self.fail("weight must be 4-D (C, M/group, KH, KW)", weight_shape=w)
        g = self.attrs["group"]
        if isinstance(x[1], str) or x[1] != w[0]:
            self.fail("input channels must equal the weight's first dimension", input_shape=tuple(x),
                      weight_shape=tuple(w))
        if w[0] % g:
            self.fail("input channels must be divisible by group", weight_shape=tuple(w), group=g)
        if self.attrs["kernel_shape"] is not None and tuple(self.attrs["kernel_shape"]) != tuple(w[2:]):
            self.fail("kernel_shape disagrees with the weight", kernel_shape=self.attrs["kernel_shape"],
                      weight_shape=tuple(w))
        m = w[1] * g
        if len(in_shapes) > 2 and in_shapes[2] is not None and tuple(in_shapes[2]) != (m,):
            self.fail("bias must have one value per output channel (weight's second dimension x group)",
                      bias_shape=in_shapes[2], out_channels=m)
        _, _, _, pads, out, _ = self.transpose_geometry(x, tuple(w[2:]))
        if min(out) < 1:
            self.fail("pads crop away the whole output", input_shape=tuple(x), weight_shape=tuple(w), pads=pads,
                      output_hw=out)
        self._weight_kernel = tuple(int(k) for k in w[2:])
        return [(x[0], m, out[0], out[1])]

    def receptive_field(self):
        """An output pixel sees at most ``ceil(dilated kernel / stride)`` input pixels per axis; the
        jump (an upsampling op's would be 1 / stride) is kept at the input's, since the summary's
        are whole pixels."""
        kernel = _pair(self.attrs.get("kernel_shape") or getattr(self, "_weight_kernel", None), 1)
        dil = _pair(self.attrs.get("dilations"), 1)
        strides = _pair(self.attrs.get("strides"), 1)
        return tuple(math.ceil((dil[i] * (kernel[i] - 1) + 1) / strides[i]) for i in range(2)), (1, 1)

    def macs(self, in_shapes, out_shapes):
        x, w = in_shapes[0], in_shapes[1]
        return int(x[1] * x[2] * x[3] * w[1] * w[2] * w[3])

    def forward(self, inputs, ctx: RunContext):
        x, w = inputs[0], inputs[1]
        b = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
        kernel, strides, dilations, pads, (oh, ow), canvas = self.transpose_geometry(x.shape, tuple(w.shape[2:]))
        n, c, h, wd = x.shape
        g = self.attrs["group"]
        m = w.shape[1] * g
        xmat = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).reshape(g, c // g, n * h * wd)
        wmat = w.reshape(g, c // g, -1)  # (g, C/g, M/g*KH*KW)
        if c // g == 1:  # depthwise-like: an outer product per group, faster as a broadcast multiply
            cols = wmat.transpose(0, 2, 1) * xmat
        else:
            cols = np.matmul(wmat.transpose(0, 2, 1), xmat)  # (g, M/g*KH*KW, N*H*W)
        full = _conv_numpy.col2im_channel_first(cols, (n, m) + canvas, kernel, strides, dilations, (h, wd))
        y = full[:, :, pads[0]:pads[0] + oh, pads[1]:pads[1] + ow]
        if b is not None:
            y = y + b.reshape(1, m, 1, 1)
        y = np.ascontiguousarray(y, dtype=x.dtype)
        need_dx = ctx.requires_grad[0] if ctx.requires_grad else True
        cache = ((xmat, w, x.shape, pads, kernel, strides, dilations, canvas, b is not None, need_dx)
                 if ctx.need_grad else None)
        return [y], cache

    def backward(self, cache, grad_outputs):
        xmat, w, x_shape, pads, kernel, strides, dilations, canvas, has_bias, need_dx = cache
        dy = grad_outputs[0]
        n, m, oh, ow = dy.shape
        c, h, wd = x_shape[1:]
        g = self.attrs["group"]
        # the output gradient back on the uncropped output, channels first, then a Conv's columns
        dfull = np.zeros((m, n) + canvas, dtype=dy.dtype)
        dfull[:, :, pads[0]:pads[0] + oh, pads[1]:pads[1] + ow] = dy.transpose(1, 0, 2, 3)
        dcols = _conv_numpy.im2col_channel_first(dfull.transpose(1, 0, 2, 3), kernel, strides, dilations, (h, wd))
        dcols = dcols.reshape(g, m // g * kernel[0] * kernel[1], n * h * wd)
        dw = np.matmul(xmat, dcols.transpose(0, 2, 1)).reshape(w.shape)  # (g, C/g, M/g*KH*KW)
        grads = [None, dw.astype(w.dtype, copy=False)]
        if has_bias:
            grads.append(dy.sum(axis=(0, 2, 3)))
        if need_dx:
            dx = np.matmul(w.reshape(g, c // g, -1), dcols)  # (g, C/g, N*H*W)
            grads[0] = np.ascontiguousarray(dx.reshape(c, n, h, wd).transpose(1, 0, 2, 3))
        return grads

    def onnx_attributes(self, opset):
        attrs = {k: v for k, v in self.attrs.items() if v is not None}
        if attrs.get("auto_pad") == "NOTSET":
            attrs.pop("auto_pad")
        return attrs

    def to_onnx(self, inputs, outputs, opset, ctx):
        """Opsets 1..10 read SAME auto_pad as ``output = input`` and split an odd output_shape pad
        the other way, and onnx's shape inference adds output_padding to SAME's ``input x stride``
        (the spec, onnxruntime and edgecnn do not): there the pads are written out instead, which
        every reader takes alike (the exporter knows the shapes)."""
        import onnx.helper

        attrs = self.onnx_attributes(opset)
        same = attrs.get("auto_pad") in ("SAME_UPPER", "SAME_LOWER")
        shape_of = getattr(ctx, "shape", None)
        old_meaning = opset < 11 and (same or "output_shape" in attrs)
        if old_meaning and not callable(shape_of):
            self.fail("SAME auto_pad or output_shape changed meaning at ONNX opset 11; writing it for an "
                      "older opset needs the input shape", opset=opset)
        misread = same and "output_shape" not in attrs and any(attrs.get("output_padding") or ())
        if old_meaning or (misread and callable(shape_of)):
            _, _, _, pads, _, _ = self.transpose_geometry(shape_of(inputs[0]), tuple(shape_of(inputs[1])[2:]))
            attrs.pop("auto_pad", None)
            attrs.pop("output_shape", None)
            attrs["pads"] = list(pads)
        return [onnx.helper.make_node("ConvTranspose", inputs, outputs, name=self.name, **attrs)]

    @classmethod
    def from_onnx(cls, node, opset, ctx):
        """Before opset 11 SAME auto_pad meant ``output = input`` and an odd output_shape pad went
        the other way round; only the forms whose meaning did not change are read there."""
        attrs, inputs, outputs = super().from_onnx(node, opset, ctx)
        if opset < 11:
            strides = _pair(attrs.get("strides"), 1)
            if attrs.get("output_shape") is not None:
                shape_of = getattr(ctx, "shape", None)
                x = shape_of(node.input[0]) if callable(shape_of) else None
                w = shape_of(node.input[1]) if callable(shape_of) and len(node.input) > 1 else None
                total = None
                if x is not None and w is not None and len(x) == 4 and len(w) == 4:
                    dil = _pair(attrs.get("dilations"), 1)
                    extra = _pair(attrs.get("output_padding"), 0)
                    target = list(attrs["output_shape"])[-2:]
                    total = [strides[i] * (x[2 + i] - 1) + extra[i] + dil[i] * (w[2 + i] - 1) + 1 - target[i]
                             for i in range(2) if not isinstance(x[2 + i], str)]
                if total is None or len(total) != 2 or any(t % 2 for t in total):
                    raise UnsupportedOpError(
                        f"Node '{node.name}' (ConvTranspose, opset {opset}): before opset 11 an odd pad that "
                        f"output_shape implies goes to the other side than from opset 11 on, and runtimes follow "
                        f"the newer rule; edgecnn reads output_shape there only when the pads are even. "
                        f"Received: output_shape={list(attrs['output_shape'])}, total pads={total}")
            elif attrs.get("auto_pad") in ("SAME_UPPER", "SAME_LOWER") and strides != (1, 1):
                raise UnsupportedOpError(
                    f"Node '{node.name}' (ConvTranspose, opset {opset}): before opset 11 SAME auto_pad sized the "
                    f"output like the input, from opset 11 on as input x stride (what runtimes do); edgecnn reads "
                    f"SAME there only with stride 1, where both agree. "
                    f"Received: auto_pad={attrs['auto_pad']!r}, strides={list(strides)}")
        return attrs, inputs, outputs
