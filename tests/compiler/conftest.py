"""Shared fixtures of the compiler tests."""
import numpy as np
import pytest


# -- torch_mirror: the same graph as a PyTorch module (an independent reference) -------------------
# Each IR op maps to PyTorch's functional API here, written from the ONNX spec, not from edgecnn's
# code. Used for gradient comparisons in training tests and to export the zoo with torch.onnx.export.
def _torch_pads_same(size, kernel, stride, dilation, upper):
    effective = dilation * (kernel - 1) + 1
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + effective - size)
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)


def _torch_spatial_pads(attrs, x, kernel):
    """ONNX pads [top, left, bottom, right] for an NCHW tensor, auto_pad resolved."""
    auto_pad = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    strides = list(attrs.get("strides") or [1, 1])
    dilations = list(attrs.get("dilations") or [1, 1])
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        h = _torch_pads_same(x.shape[2], kernel[0], strides[0], dilations[0], auto_pad == "SAME_UPPER")
        w = _torch_pads_same(x.shape[3], kernel[1], strides[1], dilations[1], auto_pad == "SAME_UPPER")
        return [h[0], w[0], h[1], w[1]]
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    return list(attrs.get("pads") or [0, 0, 0, 0])


def _torch_ops():
    import torch
    import torch.nn.functional as F

    def conv(node, ins, training):
        x, w = ins[0], ins[1]
        b = ins[2] if len(ins) > 2 else None
        a = node.attrs
        pads = _torch_spatial_pads(a, x, list(w.shape[2:]))
        if pads[0] != pads[2] or pads[1] != pads[3]:
            x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
            padding = (0, 0)
        else:
            padding = (pads[0], pads[1])
        return [F.conv2d(x, w, b, stride=tuple(a.get("strides") or [1, 1]), padding=padding,
                         dilation=tuple(a.get("dilations") or [1, 1]), groups=int(a.get("group", 1)))]

    def pool(kind):
        def run(node, ins, training):
            x = ins[0]
            a = node.attrs
            kernel = list(a["kernel_shape"])
            pads = _torch_spatial_pads(a, x, kernel)
            ceil = bool(a.get("ceil_mode", 0))
            strides = tuple(a.get("strides") or [1, 1])
            if pads[0] != pads[2] or pads[1] != pads[3]:
                x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]),
                          value=float("-inf") if kind == "max" else 0.0)
                padding = (0, 0)
            else:
                padding = (pads[0], pads[1])
            if kind == "max":
                return [F.max_pool2d(x, kernel, strides, padding, tuple(a.get("dilations") or [1, 1]), ceil)]
            return [F.avg_pool2d(x, kernel, strides, padding, ceil,
                                 count_include_pad=bool(a.get("count_include_pad", 0)))]
        return run

    def gemm(node, ins, training):
        a = node.attrs
        x, w = ins[0], ins[1]
        x = x.t() if a.get("transA", 0) else x
        w = w.t() if a.get("transB", 0) else w
        y = float(a.get("alpha", 1.0)) * (x @ w)
        if len(ins) > 2 and ins[2] is not None:
            y = y + float(a.get("beta", 1.0)) * ins[2]
        return [y]

    def batchnorm(node, ins, training):
        x, scale, bias, mean, var = ins
        eps = float(node.attrs.get("epsilon", 1e-5))
        if not training:
            return [F.batch_norm(x, mean, var, scale, bias, training=False, eps=eps)]
        # ONNX's training rule: running = momentum * running + (1 - momentum) * batch statistic,
        # with the biased batch variance (PyTorch's own BatchNorm would use the unbiased one).
        momentum = float(node.attrs.get("momentum", 0.9))
        with torch.no_grad():
            mean.mul_(momentum).add_((1 - momentum) * x.mean(dim=(0, 2, 3)))
            var.mul_(momentum).add_((1 - momentum) * x.var(dim=(0, 2, 3), unbiased=False))
        return [F.batch_norm(x, None, None, scale, bias, training=True, eps=eps)]

    def clip(node, ins, training):
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
        return [torch.clamp(ins[0], min=lo, max=hi)]

    def flatten(node, ins, training):
        axis = int(node.attrs.get("axis", 1))
        x = ins[0]
        axis = axis % x.dim() if axis < 0 else axis
        lead = int(np.prod(x.shape[:axis])) if axis else 1
        return [x.reshape(lead, -1)]

    def reshape(node, ins, training):
        x = ins[0]
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(node.attrs["shape"])]
        return [x.reshape(shape)]

    def hardsigmoid(node, ins, training):
        alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
        return [torch.clamp(alpha * ins[0] + beta, 0.0, 1.0)]

    def pad(node, ins, training):
        a = node.attrs
        p = list(a["pads"])
        mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[a.get("mode", "constant")]
        widths = (p[3], p[7], p[2], p[6])
        if mode == "constant":
            return [F.pad(ins[0], widths, value=float(a.get("value", 0.0)))]
        return [F.pad(ins[0], widths, mode=mode)]

    def dropout(node, ins, training):
        # Mirrors inference (identity): a dropout mask cannot be shared with NumPy's generator.
        return [ins[0]]

    return {
        "Conv": conv,
        "Relu": lambda node, ins, training: [F.relu(ins[0])],
        "Add": lambda node, ins, training: [ins[0] + ins[1]],
        "Mul": lambda node, ins, training: [ins[0] * ins[1]],
        "MaxPool": pool("max"),
        "AveragePool": pool("avg"),
        "GlobalAveragePool": lambda node, ins, training: [ins[0].mean(dim=(2, 3), keepdim=True)],
        "GlobalMaxPool": lambda node, ins, training: [ins[0].amax(dim=(2, 3), keepdim=True)],
        "Flatten": flatten,
        "Reshape": reshape,
        "Gemm": gemm,
        "BatchNormalization": batchnorm,
        "Clip": clip,
        "Concat": lambda node, ins, training: [torch.cat(ins, dim=int(node.attrs.get("axis", 1)))],
        "Softmax": lambda node, ins, training: [F.softmax(ins[0], dim=int(node.attrs.get("axis", -1)))],
        "LogSoftmax": lambda node, ins, training: [F.log_softmax(ins[0], dim=int(node.attrs.get("axis", -1)))],
        "Sigmoid": lambda node, ins, training: [torch.sigmoid(ins[0])],
        "Tanh": lambda node, ins, training: [torch.tanh(ins[0])],
        "LeakyRelu": lambda node, ins, training: [F.leaky_relu(ins[0], float(node.attrs.get("alpha", 0.01)))],
        "Elu": lambda node, ins, training: [F.elu(ins[0], float(node.attrs.get("alpha", 1.0)))],
        "Selu": lambda node, ins, training: [F.selu(ins[0])],
        "PRelu": lambda node, ins, training: [torch.where(ins[0] > 0, ins[0], ins[0] * ins[1])],
        "HardSigmoid": hardsigmoid,
        "HardSwish": lambda node, ins, training: [F.hardswish(ins[0])],
        "Pad": pad,
        "Dropout": dropout,
    }


def graph_to_torch(graph, dtype=None):
    """A ``torch.nn.Module`` computing ``graph`` with the same weights.

    Trainable parameters become ``nn.Parameter``s and the rest (BatchNorm running statistics)
    buffers; ``module.tensors`` maps every graph parameter name to its tensor, so tests can read
    ``module.tensors[name].grad``. ``module.train()`` switches BatchNorm to batch statistics.
    """
    import torch

    dtype = dtype or torch.float32
    ops = _torch_ops()
    unknown = sorted({n.op_type for n in graph.nodes} - set(ops))
    if unknown:
        pytest.fail(f"torch_mirror has no mapping for {unknown}; add them to tests/compiler/conftest.py")
    trainable = set(graph.trainable_params())

    class Mirror(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tensors = {}
            self.weights = torch.nn.ParameterList()
            for i, (name, value) in enumerate(graph.params.items()):
                t = torch.tensor(np.array(value), dtype=dtype if np.issubdtype(value.dtype, np.floating) else None)
                if name in trainable and t.is_floating_point():
                    p = torch.nn.Parameter(t)
                    self.weights.append(p)
                    self.tensors[name] = p
                else:
                    self.register_buffer(f"state_{i}", t)
                    self.tensors[name] = getattr(self, f"state_{i}")

        def forward(self, x):
            values = {graph.inputs[0].name: x}
            for node in graph.nodes:
                ins = [None if not i else (values[i] if i in values else self.tensors[i]) for i in node.inputs]
                while ins and ins[-1] is None:
                    ins.pop()
                outs = ops[node.op_type](node, ins, self.training)
                values.update(zip(node.outputs, outs))
            outputs = [values[o] for o in graph.outputs]
            return outputs[0] if len(outputs) == 1 else tuple(outputs)

    return Mirror()


@pytest.fixture
def torch_mirror():
    """``graph_to_torch(graph, dtype=None) -> torch.nn.Module``; skips when PyTorch is absent."""
    pytest.importorskip("torch", reason="PyTorch is an optional test peer (pip install torch==2.13.0)")
    return graph_to_torch
