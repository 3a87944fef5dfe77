"""Normalization and regularization: BatchNormalization, Dropout.

Both behave differently in training (``ctx.training``) and inference, and both are exported in
their inference form.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from .base import Op, RunContext, register


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
        if ctx.training:
            axes = (0,) + tuple(range(2, x.ndim))
            batch_mean = x.mean(axis=axes)
            xhat = x - batch_mean.reshape(channel)
            batch_var = np.mean(np.square(xhat), axis=axes)  # biased, as ONNX's training mode
            ctx.pending_state[3] = (mean * momentum + batch_mean * (1 - momentum)).astype(mean.dtype)
            ctx.pending_state[4] = (var * momentum + batch_var * (1 - momentum)).astype(var.dtype)
            var = batch_var
        else:
            xhat = x - mean.reshape(channel)
        inv_std = (1 / np.sqrt(var + eps)).astype(x.dtype, copy=False)
        xhat *= inv_std.reshape(channel)
        y = xhat * scale.reshape(channel)
        y += bias.reshape(channel)
        cache = (xhat, inv_std, scale, ctx.training) if ctx.need_grad else None
        return [y.astype(x.dtype, copy=False)], cache

    def backward(self, cache, grad_outputs):
        xhat, inv_std, scale, training = cache
        dy = grad_outputs[0]
        channel = (1, dy.shape[1]) + (1,) * (dy.ndim - 2)
        axes = (0,) + tuple(range(2, dy.ndim))
        dscale = (dy * xhat).sum(axis=axes)
        dbias = dy.sum(axis=axes)
        if training:
            # The batch mean and variance depend on x too: project out their directions.
            # dx = scale * inv_std / count * (count * dy - dbias - xhat * dscale)
            count = dy.size // dy.shape[1]
            dx = dy * count
            dx -= xhat * dscale.reshape(channel)
            dx -= dbias.reshape(channel)
            dx *= (scale * inv_std / count).astype(dy.dtype, copy=False).reshape(channel)
        else:
            dx = dy * (scale * inv_std).astype(dy.dtype, copy=False).reshape(channel)
        return [dx.astype(dy.dtype, copy=False), dscale, dbias, None, None]

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
