"""Normalization and regularization: BatchNormalization, LayerNormalization, Dropout.

BatchNormalization and Dropout behave differently in training (``ctx.training``) and inference,
and both are exported in their inference form; LayerNormalization computes the same in both.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from ._parallel import for_slices
from .base import Op, RunContext, register
from .tensor import _normalize_axis, broadcast_shape, unbroadcast


def _rows(x: np.ndarray) -> np.ndarray:
    """(N, C, everything else) view of a contiguous array: per-channel work on whole rows."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def _per_channel(x: np.ndarray) -> int:
    return x.size // x.shape[1]


def _channel_sums(a: np.ndarray) -> np.ndarray:
    """Per-channel sums over every other axis, float64 (rows summed pairwise in the array's type).

    Row by row: NumPy's reduction over the (0, 2, 3) axes of an NCHW array at once walks it
    with strides and took several times longer.
    """
    a3 = _rows(np.ascontiguousarray(a))
    return sum(for_slices(lambda first, stop: a3[first:stop].sum(axis=2).sum(axis=0, dtype=np.float64),
                          len(a3), a3.size))


def _row_dots(a3: np.ndarray, b3: np.ndarray) -> np.ndarray:
    """Per-channel sums of ``a3 * b3`` over (N, rest) of two (N, C, rest) arrays, float64."""
    return np.einsum("ncr,ncr->nc", a3, b3).sum(axis=0, dtype=np.float64)


def _affine(a3: np.ndarray, gain, offset, b3, along_b, out: np.ndarray) -> np.ndarray:
    """``out = a3 * gain + b3 * along_b + offset`` with per-channel float64 factors (b3 optional)."""
    def per_channel(value):
        return np.asarray(value, dtype=np.float64).astype(out.dtype).reshape(1, -1, 1)
    gain, offset = per_channel(gain), per_channel(offset)
    along_b = None if b3 is None else per_channel(along_b)
    out3 = _rows(out)

    def body(first, stop):
        part = out3[first:stop]
        np.multiply(a3[first:stop], gain, out=part)
        if b3 is not None:
            part += b3[first:stop] * along_b
        part += offset
    for_slices(body, len(a3), a3.size)
    return out


@register
class BatchNormalization(Op):
    """``y = scale * (x - mean) / sqrt(var + epsilon) + B`` per channel (axis 1).

    Inference uses the running ``mean`` and ``var`` inputs. Training normalises with the batch
    statistics (biased variance, over every axis but the channels) and asks for new running
    statistics, as ONNX defines them: ``running = running * momentum + batch * (1 - momentum)``.
    The op knows its inputs by position only, so it writes ``{3: new_mean, 4: new_var}`` into
    ``ctx.pending_state``; the backend files them under the tensor names in ``ctx.state_updates``.
    Output shape = input shape. The running statistics get no gradient.
    """

    attr_defaults = {"epsilon": 1e-5, "momentum": 0.9}
    arity = (5, 5)
    param_inputs = (1, 2, 3, 4)
    state_inputs = (3, 4)
    onnx_opsets = (7, 99)

    def check_attrs(self, attrs):
        attrs["epsilon"], attrs["momentum"] = float(attrs["epsilon"]), float(attrs["momentum"])
        if not attrs["epsilon"] > 0:
            self.fail("epsilon must be positive", epsilon=attrs["epsilon"])
        if not 0 <= attrs["momentum"] <= 1:
            self.fail("momentum must be in [0, 1]", momentum=attrs["momentum"])
        return attrs

    def infer_shapes(self, in_shapes):
        x = tuple(in_shapes[0])
        if len(x) < 2:
            self.fail("expects an input (N, C, ...)", input_shape=x)
        for position, what in zip(range(1, 5), ("scale", "B", "mean", "var")):
            if tuple(in_shapes[position]) != (x[1],):
                self.fail(f"{what} must hold one value per channel", **{f"{what}_shape": tuple(in_shapes[position])},
                          input_shape=x)
        return [x]

    def macs(self, in_shapes, out_shapes):
        # One multiply-add per element (scale and shift); usually folded into the conv before it.
        return int(np.prod([d for d in out_shapes[0][1:]]))

    def forward(self, inputs, ctx: RunContext):
        x, scale, bias, mean, var = inputs
        channel = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        eps, momentum = self.attrs["epsilon"], self.attrs["momentum"]
        if not ctx.training and not ctx.need_grad:
            # inference: one fused scale and shift per channel
            a = (scale / np.sqrt(var + eps)).astype(x.dtype, copy=False)
            y = x * a.reshape(channel)
            y += (bias - mean * a).astype(x.dtype, copy=False).reshape(channel)
            return [y], None
        x = np.ascontiguousarray(x)
        count = _per_channel(x)
        x3 = _rows(x)
        if ctx.training:
            batch_mean = _channel_sums(x) / count
            shift = batch_mean.astype(x.dtype).reshape(1, -1, 1)

            def squares(first, stop):  # two passes (centre, then square) for an accurate variance
                centred = x3[first:stop] - shift
                return _row_dots(centred, centred)
            batch_var = sum(for_slices(squares, len(x3), x.size)) / count  # biased, as ONNX's training mode
            ctx.pending_state[3] = (mean * momentum + batch_mean * (1 - momentum)).astype(mean.dtype)
            ctx.pending_state[4] = (var * momentum + batch_var * (1 - momentum)).astype(var.dtype)
            mean, var = batch_mean, batch_var
        mean = np.asarray(mean, dtype=np.float64)
        inv_std = 1 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
        gain = scale * inv_std
        y = _affine(x3, gain, bias - mean * gain, None, 0.0, np.empty(x.shape, dtype=x.dtype))
        # x itself (alive anyway as the previous layer's output) instead of a normalised copy
        cache = (x, mean, inv_std, scale, ctx.training) if ctx.need_grad else None
        return [y], cache

    def backward(self, cache, grad_outputs):
        x, mean, inv_std, scale, training = cache
        dy = np.ascontiguousarray(grad_outputs[0])
        x3, dy3 = _rows(x), _rows(dy)
        dbias = _channel_sums(dy)
        # sum(dy * xhat) with xhat = (x - mean) * inv_std, from the sums of dy and dy * x
        dx_sums = sum(for_slices(lambda first, stop: _row_dots(dy3[first:stop], x3[first:stop]), len(dy3), dy.size))
        dscale = inv_std * (dx_sums - mean * dbias)
        gain = scale * inv_std
        if training:
            # The batch mean and variance depend on x too: project out their directions.
            # dx = gain / count * (count * dy - dbias - xhat * dscale), written as a*dy + b*x + c
            count = _per_channel(dy)
            along_x = -gain / count * dscale * inv_std
            offset = -gain / count * dbias - along_x * mean
        else:
            along_x, offset = None, 0.0
        dx = _affine(dy3, gain, offset, None if along_x is None else x3, along_x, np.empty(dy.shape, dtype=dy.dtype))
        return [dx, dscale.astype(scale.dtype), dbias.astype(scale.dtype), None, None]

    def onnx_attributes(self, opset):
        # Inference form: no training_mode, one output; momentum is only meaningful in training.
        return {"epsilon": self.attrs["epsilon"], "momentum": self.attrs["momentum"]}

    @classmethod
    def from_onnx(cls, node, opset, ctx):
        attrs, inputs, outputs = super().from_onnx(node, opset, ctx)
        if int(attrs.get("training_mode", 0)) or (len(node.output) > 1 and any(node.output[1:])):
            raise UnsupportedOpError(f"Node '{node.name}' (BatchNormalization): only the inference form "
                                     f"(one output, training_mode=0) is supported. Received: outputs="
                                     f"{list(node.output)}, training_mode={attrs.get('training_mode', 0)}")
        if not int(attrs.get("spatial", 1)):
            raise UnsupportedOpError(f"Node '{node.name}' (BatchNormalization): spatial=0 (per-element "
                                     f"statistics) is not supported. Received: spatial=0")
        return ({k: attrs[k] for k in ("epsilon", "momentum") if k in attrs}, inputs, outputs[:1])


@register
class LayerNormalization(Op):
    """``y = (x - mean) / sqrt(var + epsilon) * Scale + B`` with mean and (biased) variance over the
    axes ``[axis, ..., rank - 1]`` of each sample (ONNX opset 17; ConvNeXt's LayerNorm on NHWC).

    Scale and the optional B broadcast unidirectionally to x (usually the normalized shape, e.g.
    (C,) for ``axis=-1``). The statistics are those of the input, in training and inference
    alike. Only the Y output is implemented: an ONNX node that lists the optional Mean or
    InvStdDev outputs is refused on import. Normalizing over a symbolic (batch) dimension is
    refused, as for the reductions: it would mix the samples of a batch.

    Backward, with ``xhat = (x - mean) * inv_std``, ``g = dy * Scale`` and means over the
    normalized axes: ``dx = inv_std * (g - mean(g) - xhat * mean(g * xhat))``; Scale and B get
    ``dy * xhat`` and ``dy`` summed back over their broadcast axes.
    """

    attr_defaults = {"axis": -1, "epsilon": 1e-5, "stash_type": 1}
    arity = (2, 3)
    param_inputs = (1, 2)
    onnx_opsets = (17, 99)

    def check_attrs(self, attrs):
        attrs["axis"] = int(attrs["axis"])
        attrs["epsilon"] = float(attrs["epsilon"])
        if not (np.isfinite(attrs["epsilon"]) and attrs["epsilon"] >= 0):
            self.fail("epsilon must be a finite number >= 0", epsilon=attrs["epsilon"])
        if int(attrs["stash_type"]) != 1:
            # stash_type names the precision of the statistics; edgecnn computes them in float32
            # (float64 in gradient checks), which is ONNX's 1 (FLOAT).
            self.fail("only stash_type=1 (statistics in float32) is supported", stash_type=attrs["stash_type"])
        attrs["stash_type"] = 1
        return attrs

    def _axes(self, rank: int) -> tuple[int, ...]:
        return tuple(range(_normalize_axis(self, self.attrs["axis"], rank), rank))

    def infer_shapes(self, in_shapes):
        x = tuple(in_shapes[0])
        axes = self._axes(len(x))
        if any(isinstance(x[a], str) for a in axes):
            self.fail("cannot normalize over a symbolic (batch) dimension: that would mix the samples of a batch",
                      axis=self.attrs["axis"], input_shape=x)
        for position, what in ((1, "Scale"), (2, "B")):
            if position < len(in_shapes) and in_shapes[position] is not None:
                shape = tuple(in_shapes[position])
                if len(shape) > len(x) or broadcast_shape(self, x, shape) != x:
                    self.fail(f"{what} must broadcast to the input shape (unidirectional)",
                              **{f"{what}_shape": shape}, input_shape=x)
        return [x]

    def macs(self, in_shapes, out_shapes):
        # Per element: a multiply by inv_std and a multiply-add by Scale and B.
        return 2 * int(np.prod([d for d in out_shapes[0][1:] if not isinstance(d, str)]))

    def forward(self, inputs, ctx):
        x, scale = inputs[0], inputs[1]
        bias = inputs[2] if len(inputs) > 2 else None
        axes = self._axes(x.ndim)
        centered = x - x.mean(axis=axes, keepdims=True)
        var = np.mean(centered * centered, axis=axes, keepdims=True)
        inv_std = (1 / np.sqrt(var + self.attrs["epsilon"])).astype(x.dtype, copy=False)
        xhat = centered * inv_std
        y = xhat * scale
        if bias is not None:
            y += bias
        cache = (xhat, inv_std, scale, None if bias is None else bias.shape, len(inputs)) if ctx.need_grad else None
        return [y.astype(x.dtype, copy=False)], cache

    def backward(self, cache, grad_outputs):
        xhat, inv_std, scale, bias_shape, count = cache
        dy = grad_outputs[0]
        axes = self._axes(dy.ndim)
        g = dy * scale
        dx = g - g.mean(axis=axes, keepdims=True)
        dx -= xhat * (g * xhat).mean(axis=axes, keepdims=True)
        dx *= inv_std
        grads = [dx.astype(dy.dtype, copy=False), unbroadcast(dy * xhat, scale.shape)]
        if count > 2:
            grads.append(None if bias_shape is None else unbroadcast(dy, bias_shape))
        return grads

    def onnx_attributes(self, opset):
        return {"axis": self.attrs["axis"], "epsilon": self.attrs["epsilon"]}

    def to_onnx(self, inputs, outputs, opset, ctx):
        import onnx.helper

        inputs = list(inputs)
        while len(inputs) > 2 and not inputs[-1]:
            inputs.pop()
        return [onnx.helper.make_node("LayerNormalization", inputs, outputs[:1], name=self.name,
                                      **self.onnx_attributes(opset))]

    @classmethod
    def from_onnx(cls, node, opset, ctx):
        attrs, inputs, outputs = super().from_onnx(node, opset, ctx)
        if any(outputs[1:]):
            raise UnsupportedOpError(f"Node '{node.name}' (LayerNormalization): only the Y output is supported; "
                                     f"the optional Mean and InvStdDev outputs are not. Received: outputs={outputs}")
        if int(attrs.get("stash_type", 1)) != 1:
            raise UnsupportedOpError(f"Node '{node.name}' (LayerNormalization): only stash_type=1 (float32 "
                                     f"statistics) is supported. Received: stash_type={attrs['stash_type']}")
        while len(inputs) > 2 and not inputs[-1]:
            inputs.pop()
        return ({k: attrs[k] for k in ("axis", "epsilon") if k in attrs}, inputs, outputs[:1])


@register
class Dropout(Op):
    """Identity in inference. In training: ``y = x * mask / (1 - ratio)`` with a mask drawn from
    ``ctx.rng`` (keep probability ``1 - ratio``). Output shape = input shape.

    ``ratio`` is an IR attribute; from opset 12 ONNX takes it as an input (an initializer on
    export). The optional mask output and a computed ratio are not supported.
    """

    attr_defaults = {"ratio": 0.5}
    onnx_opsets = (7, 99)

    def check_attrs(self, attrs):
        attrs["ratio"] = float(attrs["ratio"])
        if not 0 <= attrs["ratio"] < 1:
            self.fail("ratio must be in [0, 1)", ratio=attrs["ratio"])
        return attrs

    def forward(self, inputs, ctx: RunContext):
        x = inputs[0]
        ratio = self.attrs["ratio"]
        if not ctx.training or ratio == 0:
            return [x], None
        keep = ctx.rng.random(x.shape) >= ratio
        scale = 1 / (1 - ratio)
        y = np.where(keep, x * scale, 0).astype(x.dtype, copy=False)
        return [y], ((keep, scale) if ctx.need_grad else None)

    def backward(self, cache, grad_outputs):
        dy = grad_outputs[0]
        if cache is None:
            return [dy]
        keep, scale = cache
        return [np.where(keep, dy * scale, 0).astype(dy.dtype, copy=False)]

    def onnx_attributes(self, opset):
        return {"ratio": self.attrs["ratio"]} if opset < 12 else {}

    def to_onnx(self, inputs, outputs, opset, ctx):
        import onnx.helper

        extra = []
        if opset >= 12:
            name = ctx.unique_name(f"{self.name}_ratio")
            ctx.add_initializer(name, np.array(self.attrs["ratio"], np.float32))
            extra.append(name)
        return [onnx.helper.make_node("Dropout", [inputs[0], *extra], outputs[:1], name=self.name,
                                      **self.onnx_attributes(opset))]

    @classmethod
    def from_onnx(cls, node, opset, ctx):
        attrs, inputs, outputs = super().from_onnx(node, opset, ctx)
        if len(node.output) > 1 and node.output[1]:
            raise UnsupportedOpError(f"Node '{node.name}' (Dropout): the mask output is not supported. "
                                     f"Received: outputs={list(node.output)}")
        ratio = attrs.get("ratio", 0.5)
        if opset >= 12 and len(node.input) > 1 and node.input[1]:
            value = ctx.constant(node.input[1])
            if value is None:
                raise UnsupportedOpError(f"Node '{node.name}' (Dropout): the ratio input must be a constant. "
                                         f"Received: ratio={node.input[1]!r}")
            ratio = float(np.asarray(value).reshape(-1)[0])
        # training_mode (opset 12+) is decided by the run context in edgecnn, not by the graph.
        return {"ratio": ratio}, inputs[:1], outputs[:1]
