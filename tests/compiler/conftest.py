"""Shared fixtures of the compiler tests."""
import sys
from pathlib import Path

import numpy as np
import pytest

# bench/ is not a package; its torchvision zoo (architectures, exports) is shared with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import torchvision_zoo  # noqa: E402


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
        "Sum": lambda node, ins, training: [sum(ins[1:], ins[0])],
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


@pytest.fixture(scope="session")
def torchvision_models():
    """``torchvision.models`` (pure-Python definitions, bench/torchvision_zoo.py); skips, saying
    what to install, without PyTorch or torchvision (CI installs both)."""
    pytest.importorskip("torch", reason="PyTorch is an optional test peer (pip install torch==2.13.0)")
    models = torchvision_zoo.torchvision_models()
    if models is None:
        pytest.skip("torchvision is not installed (pip install --no-deps torchvision==0.28.0)")
    return models


# -- op test tables ----------------------------------------------------------------------------
# Op test tables: the configurations every op is checked in.
# 
# One table of :class:`OpCase`; ``FORWARD_CASES`` are compared with onnx's ReferenceEvaluator
# (tests/compiler/test_ops_forward.py), ``GRADIENT_CASES`` with central differences
# (tests/compiler/test_ops_gradients.py). ``test_op_registry.py`` asserts that every registered op
# appears in both, so a new op without tests fails the suite. The tables reach the tests through
# ``pytest_generate_tests`` (parametrization) and the ``forward_table`` / ``gradient_table`` fixtures.
from dataclasses import dataclass  # noqa: E402

# Input roles: "x" an activation (batch first, normal * scale), "w" a parameter (normal * 0.5),
# "pos" positive values in [0.5, 2] (variances, divisors), "distinct" no two values equal (so a
# max has one winner and a finite difference is defined), "ties" small integers (many equal values).
ROLES = ("x", "w", "pos", "distinct", "ties")


@dataclass(frozen=True)
class OpCase:
    op: str
    attrs: dict
    inputs: tuple  # ((shape, role), ...)
    id: str
    opsets: tuple = (13, 17, 21)  # ONNX opsets the forward test exports and evaluates at
    forward: bool = True  # in the ReferenceEvaluator table
    gradient: bool = True  # in the finite-difference table
    training: bool = False  # run with RunContext(training=True)
    scale: float = 1.0  # std of "x" inputs
    kinks: tuple = ()  # input values where the op is not differentiable: kept 0.02 away
    symbolic_batch: bool = True  # output dim 0 follows a symbolic input batch dim
    wrt: tuple | None = None  # input positions with gradients (default: every non-state input)
    rtol: float = 1e-5
    atol: float = 1e-5
    # The forward reference: onnx's ReferenceEvaluator, or onnxruntime where the evaluator is
    # wrong (measured with onnx 1.23: LogSoftmax is log(softmax), -inf for large logit gaps;
    # MaxPool SAME_LOWER drops the first row/column; BatchNormalization-9 (opsets 9..14) ignores
    # epsilon's place in the formula). onnxruntime and PyTorch agree with edgecnn on all three.
    reference: str = "onnx"
    # onnx's C++ shape inference counts a ceil_mode window that starts in the end padding, which
    # the spec text ("sliding windows that would start in the right padded region are ignored"),
    # the ReferenceEvaluator, onnxruntime and PyTorch all drop. Those cases skip strict inference.
    onnx_shape_inference: bool = True

    def __str__(self):
        return f"{self.op}-{self.id}"


def make_inputs(case: OpCase, dtype, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for shape, role in case.inputs:
        if role == "x":
            a = rng.standard_normal(shape) * case.scale
        elif role == "w":
            a = rng.standard_normal(shape) * 0.5
        elif role == "pos":
            a = rng.uniform(0.5, 2.0, shape)
        elif role == "distinct":
            a = (rng.permutation(int(np.prod(shape))).reshape(shape) - np.prod(shape) / 2) * 0.1
        elif role == "ties":
            a = rng.integers(0, 3, shape).astype(np.float64)
        else:
            raise ValueError(role)
        arrays.append(a)
    if case.kinks:
        x = arrays[0]
        for k in case.kinks:
            near = np.abs(x - k) < 0.02
            x[near] = k + 0.03 * np.sign(x[near] - k + 1e-12)
    return [a.astype(dtype) for a in arrays]


def _c(op, attrs, inputs, id, **kw):
    return OpCase(op, dict(attrs), tuple((tuple(s), r) for s, r in inputs), id, **kw)


ENCODING_OPSETS = (13, 17, 21)  # Clip, Pad, Reshape, Dropout: constants move between attributes and inputs
# Reductions: axes is an attribute up to 12 (ReduceSum) or 17 (the others), an input from 13 or 18.
REDUCE_OPSETS = (12, 13, 17, 18, 21)

CASES = [
    # -- Conv -----------------------------------------------------------------------------
    _c("Conv", {"pads": [1, 1, 1, 1]}, [((2, 3, 5, 5), "x"), ((4, 3, 3, 3), "w"), ((4,), "w")], "3x3-pad1"),
    _c("Conv", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 2, 1]},
       [((1, 2, 7, 6), "x"), ((3, 2, 3, 3), "w"), ((3,), "w")], "odd-stride2-asympads"),
    _c("Conv", {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, [((1, 2, 7, 7), "x"), ((2, 2, 3, 3), "w")],
       "dilation2-nobias"),
    _c("Conv", {"group": 2, "pads": [1, 1, 1, 1]}, [((1, 4, 5, 5), "x"), ((6, 2, 3, 3), "w"), ((6,), "w")],
       "groups2"),
    _c("Conv", {"group": 3, "strides": [2, 2], "auto_pad": "SAME_UPPER"},
       [((2, 3, 6, 7), "x"), ((3, 1, 3, 3), "w"), ((3,), "w")], "depthwise-same-upper-stride2"),
    _c("Conv", {"group": 3, "strides": [2, 2], "auto_pad": "SAME_LOWER"},
       [((1, 3, 7, 6), "x"), ((6, 1, 2, 2), "w"), ((6,), "w")], "depthwise-mult2-same-lower"),
    _c("Conv", {"auto_pad": "VALID", "strides": [1, 2]}, [((1, 2, 5, 6), "x"), ((2, 2, 2, 3), "w"), ((2,), "w")],
       "valid-rect-kernel"),
    # -- Pad ------------------------------------------------------------------------------
    _c("Pad", {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "mode": "constant", "value": 1.5}, [((1, 2, 3, 4), "x")],
       "constant-value", opsets=ENCODING_OPSETS),
    _c("Pad", {"pads": [0, 1, 1, 0, 0, 0, 0, 2]}, [((1, 2, 3, 3), "x")], "constant-zero-channels",
       opsets=ENCODING_OPSETS),
    _c("Pad", {"pads": [0, 0, 2, 1, 0, 0, 1, 3], "mode": "reflect"}, [((2, 2, 4, 5), "x")], "reflect",
       opsets=ENCODING_OPSETS),
    _c("Pad", {"pads": [0, 0, 3, 1, 0, 0, 1, 2], "mode": "edge"}, [((1, 2, 3, 4), "x")], "edge",
       opsets=ENCODING_OPSETS),
    # -- elementwise activations ------------------------------------------------------------
    _c("Relu", {}, [((2, 3, 4), "x")], "plain", kinks=(0.0,)),
    _c("Clip", {"min": 0.0, "max": 6.0}, [((2, 3, 4, 4), "x")], "relu6", scale=4.0, kinks=(0.0, 6.0),
       opsets=ENCODING_OPSETS),
    _c("Clip", {"min": -0.5}, [((2, 3, 4), "x")], "min-only", kinks=(-0.5,), opsets=ENCODING_OPSETS),
    _c("Clip", {"max": 0.3}, [((2, 3, 4), "x")], "max-only", kinks=(0.3,), opsets=ENCODING_OPSETS),
    _c("Clip", {}, [((2, 5), "x")], "unbounded", opsets=ENCODING_OPSETS),
    _c("LeakyRelu", {}, [((2, 3, 4), "x")], "default", kinks=(0.0,)),
    _c("LeakyRelu", {"alpha": 0.3}, [((2, 3, 2, 2), "x")], "alpha0.3", kinks=(0.0,)),
    _c("PRelu", {}, [((2, 3, 4, 4), "x"), ((3, 1, 1), "w")], "per-channel", kinks=(0.0,)),
    _c("PRelu", {}, [((2, 3, 4), "x"), ((1,), "w")], "shared-slope", kinks=(0.0,)),
    _c("PRelu", {}, [((2, 3, 2, 2), "x"), ((3, 2, 2), "w")], "full-slope", kinks=(0.0,)),
    _c("Sigmoid", {}, [((2, 3, 4), "x")], "plain", scale=3.0),
    _c("Sigmoid", {}, [((2, 6), "x")], "large-inputs", scale=60.0, gradient=False),
    _c("Tanh", {}, [((2, 3, 4), "x")], "plain", scale=2.0),
    _c("Elu", {}, [((2, 3, 4), "x")], "default", kinks=(0.0,)),
    _c("Elu", {"alpha": 0.7}, [((2, 3, 4), "x")], "alpha0.7", kinks=(0.0,)),
    _c("Selu", {}, [((2, 3, 4), "x")], "default", kinks=(0.0,)),
    _c("Selu", {"alpha": 1.2, "gamma": 0.8}, [((2, 3, 4), "x")], "custom", kinks=(0.0,)),
    _c("HardSigmoid", {}, [((2, 3, 4), "x")], "default", scale=4.0, kinks=(-2.5, 2.5)),
    _c("HardSigmoid", {"alpha": 0.5, "beta": 0.3}, [((2, 3, 4), "x")], "custom", scale=2.0, kinks=(-0.6, 1.4)),
    _c("HardSwish", {}, [((2, 3, 4, 2), "x")], "plain", scale=4.0, kinks=(-3.0, 3.0), opsets=(14, 17, 21)),
    # -- Softmax / LogSoftmax -----------------------------------------------------------------
    _c("Softmax", {}, [((3, 7), "x")], "axis-last", opsets=ENCODING_OPSETS),
    _c("Softmax", {"axis": 1}, [((2, 4, 3, 2), "x")], "axis1-4d", opsets=ENCODING_OPSETS),
    _c("Softmax", {"axis": -1}, [((2, 5), "x")], "large-logits", scale=500.0, gradient=False),
    _c("LogSoftmax", {}, [((3, 7), "x")], "axis-last", opsets=ENCODING_OPSETS),
    _c("LogSoftmax", {"axis": 1}, [((2, 4, 3), "x")], "axis1", opsets=ENCODING_OPSETS),
    _c("LogSoftmax", {}, [((2, 5), "x")], "large-logits", scale=500.0, gradient=False, reference="onnxruntime"),
    # -- MaxPool --------------------------------------------------------------------------
    _c("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, [((2, 2, 5, 5), "distinct")], "2x2-s2-odd"),
    _c("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
       [((1, 2, 6, 7), "distinct")], "3x3-s2-pad1"),
    _c("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, [((1, 2, 6, 6), "distinct")],
       "ceil-overhang"),
    _c("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
       [((1, 1, 5, 5), "distinct")], "ceil-drops-window-starting-in-pad", onnx_shape_inference=False),
    _c("MaxPool", {"kernel_shape": [2, 3], "strides": [1, 2], "pads": [0, 1, 1, 2]},
       [((1, 2, 5, 6), "distinct")], "asymmetric-pads"),
    _c("MaxPool", {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1]},
       [((1, 2, 6, 5), "distinct")], "dilation2"),
    _c("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
       [((1, 2, 7, 6), "distinct")], "same-upper"),
    _c("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"},
       [((1, 2, 5, 5), "distinct")], "same-lower", reference="onnxruntime"),
    _c("MaxPool", {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "VALID"}, [((1, 2, 7, 5), "distinct")],
       "valid"),
    _c("MaxPool", {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}, [((1, 2, 4, 4), "ties")],
       "ties-forward", gradient=False),
    # -- AveragePool ----------------------------------------------------------------------
    _c("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}, [((2, 2, 5, 5), "x")], "2x2-s2-odd"),
    _c("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
       [((1, 2, 6, 7), "x")], "pad1-exclude"),
    _c("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
       [((1, 2, 6, 7), "x")], "pad1-include"),
    _c("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 2, 1], "count_include_pad": 1},
       [((1, 2, 5, 6), "x")], "asym-pads-include"),
    _c("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, [((1, 2, 6, 6), "x")],
       "ceil-overhang-exclude"),
    _c("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1,
                       "count_include_pad": 1}, [((1, 2, 6, 6), "x")], "ceil-overhang-include"),
    _c("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1,
                       "count_include_pad": 1}, [((1, 1, 5, 5), "x")], "ceil-drops-window-starting-in-pad",
       onnx_shape_inference=False),
    _c("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
       [((1, 2, 7, 6), "x")], "same-upper"),
    _c("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER", "count_include_pad": 1},
       [((1, 2, 6, 5), "x")], "same-upper-include"),
    _c("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"},
       [((1, 2, 5, 5), "x")], "same-lower"),
    _c("AveragePool", {"kernel_shape": [2, 3], "auto_pad": "VALID"}, [((1, 2, 4, 5), "x")], "valid"),
    _c("AveragePool", {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1]},
       [((1, 2, 6, 5), "x")], "dilation2-exclude", opsets=(19, 21)),
    _c("AveragePool", {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
       [((1, 2, 6, 5), "x")], "dilation2-include", opsets=(19, 21)),
    # -- global pools ---------------------------------------------------------------------
    _c("GlobalAveragePool", {}, [((2, 3, 4, 5), "x")], "4d"),
    _c("GlobalAveragePool", {}, [((2, 3, 5), "x")], "3d"),
    _c("GlobalMaxPool", {}, [((2, 3, 4, 5), "distinct")], "4d"),
    # -- Gemm -----------------------------------------------------------------------------
    _c("Gemm", {"transB": 1}, [((3, 5), "x"), ((4, 5), "w"), ((4,), "w")], "dense"),
    _c("Gemm", {}, [((3, 5), "x"), ((5, 4), "w")], "no-bias"),
    _c("Gemm", {"transA": 1, "alpha": 0.5, "beta": 2.0}, [((5, 3), "x"), ((5, 4), "w"), ((3, 1), "w")],
       "transA-alpha-beta-column-C", symbolic_batch=False),
    _c("Gemm", {"transA": 1, "transB": 1}, [((5, 3), "x"), ((4, 5), "w"), ((3, 4), "w")], "transA-transB-full-C",
       symbolic_batch=False),
    _c("Gemm", {"beta": -1.5}, [((3, 5), "x"), ((5, 4), "w"), ((1,), "w")], "scalar-C"),
    # -- BatchNormalization ---------------------------------------------------------------
    _c("BatchNormalization", {"epsilon": 1e-3},
       [((2, 3, 4, 4), "x"), ((3,), "w"), ((3,), "w"), ((3,), "w"), ((3,), "pos")], "inference",
       opsets=(15, 17, 21)),
    _c("BatchNormalization", {"epsilon": 1e-3},
       [((2, 3, 4, 4), "x"), ((3,), "w"), ((3,), "w"), ((3,), "w"), ((3,), "pos")], "inference-opset13",
       opsets=(13,), reference="onnxruntime", gradient=False),
    _c("BatchNormalization", {"epsilon": 1e-5, "momentum": 0.8},
       [((4, 3, 3, 2), "x"), ((3,), "w"), ((3,), "w"), ((3,), "w"), ((3,), "pos")], "training",
       training=True, forward=False),
    _c("BatchNormalization", {}, [((5, 4), "x"), ((4,), "w"), ((4,), "w"), ((4,), "w"), ((4,), "pos")],
       "training-2d", training=True, forward=False),
    # -- Dropout --------------------------------------------------------------------------
    _c("Dropout", {"ratio": 0.3}, [((2, 3, 4), "x")], "inference", opsets=ENCODING_OPSETS),
    _c("Dropout", {"ratio": 0.4}, [((2, 3, 4, 3), "x")], "training-seeded", training=True, forward=False),
    # -- arithmetic and plumbing ----------------------------------------------------------
    _c("Add", {}, [((2, 3, 4, 4), "x"), ((2, 3, 4, 4), "x")], "same-shape"),
    _c("Add", {}, [((2, 3, 4, 4), "x"), ((3, 1, 1), "w")], "broadcast-channel"),
    _c("Sum", {}, [((2, 3, 4, 4), "x"), ((2, 3, 4, 4), "x"), ((2, 3, 4, 4), "x")], "three-same-shape"),
    _c("Sum", {}, [((2, 3, 4, 4), "x"), ((3, 1, 1), "w")], "broadcast-channel"),
    _c("Sum", {}, [((2, 3, 4), "x")], "one-input"),
    _c("Mul", {}, [((2, 3, 4), "x"), ((2, 3, 4), "x")], "same-shape"),
    _c("Mul", {}, [((2, 3, 4, 4), "x"), ((1, 3, 1, 1), "w")], "broadcast-channel"),
    _c("Concat", {"axis": 1}, [((2, 3, 2, 2), "x"), ((2, 1, 2, 2), "x"), ((2, 2, 2, 2), "x")], "channels"),
    _c("Concat", {"axis": -1}, [((2, 3, 2), "x"), ((2, 3, 4), "x")], "last-axis"),
    _c("Flatten", {}, [((2, 3, 4, 2), "x")], "axis1"),
    _c("Flatten", {"axis": 2}, [((2, 3, 4, 2), "x")], "axis2", symbolic_batch=False),
    _c("Flatten", {"axis": -1}, [((2, 3, 4), "x")], "axis-minus1", symbolic_batch=False),
    _c("Reshape", {"shape": [0, -1]}, [((2, 4, 3, 3), "x")], "copy-infer", opsets=ENCODING_OPSETS),
    _c("Reshape", {"shape": [0, 6, -1, 2]}, [((2, 4, 3, 3), "x")], "split-channels", opsets=ENCODING_OPSETS),
    _c("Reshape", {"shape": [-1, 12]}, [((2, 4, 3), "x")], "infer-first", symbolic_batch=False),
    # -- layout ops and MatMul --------------------------------------------------------------
    _c("MatMul", {}, [((3, 5), "x"), ((5, 4), "w")], "2d"),
    _c("MatMul", {}, [((2, 3, 5), "x"), ((5, 4), "w")], "3d-shared-weight"),
    _c("MatMul", {}, [((2, 1, 3, 5), "x"), ((4, 5, 2), "w")], "4d-broadcast-batch"),
    _c("MatMul", {}, [((2, 3, 4), "x"), ((2, 4, 5), "x")], "batched-both"),
    _c("MatMul", {}, [((3, 5), "x"), ((5,), "w")], "vector-B"),
    _c("MatMul", {}, [((5,), "w"), ((2, 5, 3), "x")], "vector-A"),
    _c("Transpose", {}, [((2, 3, 4), "x")], "default-reversed", symbolic_batch=False),
    _c("Transpose", {"perm": [0, 2, 3, 1]}, [((2, 3, 4, 5), "x")], "nchw-to-nhwc"),
    _c("Transpose", {"perm": [1, 0, 2]}, [((2, 3, 4), "x")], "moves-batch", symbolic_batch=False),
    _c("Slice", {"starts": [-3, 1], "ends": [-1, 1000], "axes": [2, -1]}, [((2, 3, 5, 6), "x")],
       "negative-indices", opsets=ENCODING_OPSETS),
    _c("Slice", {"starts": [0], "ends": [2**63 - 1], "axes": [1], "steps": [2]}, [((2, 5, 4), "x")], "step2",
       opsets=ENCODING_OPSETS),
    _c("Slice", {"starts": [-1], "ends": [-2**63], "axes": [2], "steps": [-1]}, [((2, 3, 4), "x")], "reverse",
       opsets=ENCODING_OPSETS),
    _c("Slice", {"starts": [4], "ends": [0], "axes": [1], "steps": [-2]}, [((2, 6, 3), "x")], "step-minus2",
       opsets=ENCODING_OPSETS),
    _c("Slice", {"starts": [1, -100], "ends": [100, 2], "axes": [1, 2]}, [((2, 3, 4), "x")], "clamped",
       opsets=ENCODING_OPSETS),
    _c("Slice", {"starts": [0, 1, 0], "ends": [2**63 - 1, 3, -1]}, [((2, 4, 3), "x")], "axes-omitted",
       opsets=ENCODING_OPSETS),
    # The spec clamps a negative-step start to [0, d-1]; the ReferenceEvaluator slices as Python
    # does (empty here), onnxruntime and ONNX shape inference follow the spec.
    _c("Slice", {"starts": [-10], "ends": [-2**63], "axes": [1], "steps": [-1]}, [((2, 4), "x")],
       "reverse-start-clamped", opsets=ENCODING_OPSETS, reference="onnxruntime"),
    _c("Split", {"axis": 1, "split": [2, 2]}, [((2, 4, 3), "x")], "equal-sizes", opsets=ENCODING_OPSETS),
    _c("Split", {"axis": -1, "split": [1, 3, 2]}, [((2, 3, 6), "x")], "uneven-sizes", opsets=ENCODING_OPSETS),
    _c("Split", {"axis": 1, "num_outputs": 3}, [((2, 6, 2), "x")], "num-outputs-even", opsets=(13, 17, 18, 21)),
    _c("Split", {"axis": 1, "num_outputs": 3}, [((2, 7, 2), "x")], "num-outputs-uneven", opsets=(18, 21)),
    _c("Squeeze", {"axes": [-1, 2]}, [((2, 3, 1, 1), "x")], "negative-axes", opsets=ENCODING_OPSETS),
    _c("Squeeze", {}, [((2, 1, 3, 1), "x")], "all-ones", opsets=ENCODING_OPSETS),
    _c("Unsqueeze", {"axes": [-1, 1]}, [((2, 3, 4), "x")], "negative-axes", opsets=ENCODING_OPSETS),
    _c("Unsqueeze", {"axes": [2]}, [((2, 3), "x")], "last", opsets=ENCODING_OPSETS),
    # -- arithmetic, reductions and normalization -------------------------------------------
    _c("Sub", {}, [((2, 3, 4), "x"), ((2, 3, 4), "x")], "same-shape"),
    _c("Sub", {}, [((2, 3, 4, 4), "x"), ((3, 1, 1), "w")], "broadcast-subtrahend"),
    _c("Sub", {}, [((3, 1, 1), "w"), ((2, 3, 4, 4), "x")], "broadcast-minuend"),
    _c("Sub", {}, [((2, 1, 4), "x"), ((3, 1), "w")], "broadcast-both-ways"),
    _c("Div", {}, [((2, 3, 4), "x"), ((2, 3, 4), "pos")], "same-shape", symbolic_batch=False),
    _c("Div", {}, [((2, 3, 4, 4), "x"), ((3, 1, 1), "pos")], "broadcast-divisor"),
    _c("Div", {}, [((3, 1, 1), "w"), ((2, 3, 2, 2), "pos")], "broadcast-dividend", symbolic_batch=False),
    _c("Div", {}, [((2, 1, 4), "x"), ((3, 1), "pos")], "broadcast-both-ways"),
    _c("Pow", {"exponent": 2.0}, [((2, 3, 4), "x")], "square"),
    _c("Pow", {"exponent": 0.5}, [((2, 3, 4), "pos")], "sqrt", symbolic_batch=False),
    _c("Pow", {"exponent": 3.0}, [((2, 3, 4), "x")], "cube"),
    _c("Pow", {"exponent": 0.0}, [((2, 3), "x")], "zero"),
    _c("Pow", {}, [((2, 3, 4), "pos"), ((3, 4), "w")], "tensor-exponent", symbolic_batch=False),
    _c("Pow", {}, [((3, 1), "pos"), ((2, 3, 4), "x")], "tensor-exponent-broadcast-base"),
    _c("Sqrt", {}, [((2, 3, 4), "pos")], "plain", symbolic_batch=False),
    _c("Reciprocal", {}, [((2, 3, 4), "pos")], "plain", symbolic_batch=False),
    _c("Erf", {}, [((2, 3, 4), "x")], "plain", scale=2.0),
    _c("Gelu", {}, [((2, 3, 4), "x")], "exact", scale=3.0, opsets=(20, 21)),
    _c("Gelu", {"approximate": "tanh"}, [((2, 3, 4), "x")], "tanh", scale=3.0, opsets=(20, 21)),
    _c("ReduceMean", {"axes": [2, 3], "keepdims": 0}, [((2, 3, 4, 5), "x")], "spatial-head",
       opsets=REDUCE_OPSETS),
    _c("ReduceMean", {"axes": [-1]}, [((2, 3, 4), "x")], "last-keepdims", opsets=REDUCE_OPSETS),
    _c("ReduceMean", {}, [((2, 3), "x")], "all-axes", opsets=REDUCE_OPSETS, symbolic_batch=False),
    _c("ReduceMean", {"axes": [0]}, [((3, 2, 2), "x")], "fixed-batch-axis", opsets=REDUCE_OPSETS,
       symbolic_batch=False),
    _c("ReduceSum", {"axes": [1], "keepdims": 0}, [((2, 3, 4), "x")], "one-axis", opsets=REDUCE_OPSETS),
    _c("ReduceSum", {"axes": [-2, 1]}, [((2, 3, 4, 5), "x")], "negative-and-positive", opsets=REDUCE_OPSETS),
    _c("ReduceSum", {"noop_with_empty_axes": 1}, [((2, 3), "x")], "noop-empty-axes", opsets=(13, 18, 21)),
    _c("ReduceMax", {"axes": [1], "keepdims": 0}, [((2, 3, 4, 2), "distinct")], "one-axis", opsets=REDUCE_OPSETS),
    _c("ReduceMax", {"axes": [2, 3]}, [((2, 3, 3, 4), "distinct")], "spatial-keepdims", opsets=REDUCE_OPSETS),
    _c("ReduceMax", {"axes": [-1]}, [((2, 3, 4), "ties")], "ties-forward", opsets=REDUCE_OPSETS, gradient=False),
    _c("ReduceMin", {"axes": [-1], "keepdims": 0}, [((2, 3, 5), "distinct")], "last-axis", opsets=REDUCE_OPSETS),
    _c("ReduceMin", {"axes": [1, 2]}, [((2, 3, 4), "distinct")], "two-axes", opsets=REDUCE_OPSETS),
    _c("LayerNormalization", {}, [((2, 3, 5), "x"), ((5,), "w"), ((5,), "w")], "last-axis-bias",
       opsets=(17, 18, 21)),
    _c("LayerNormalization", {"axis": -2, "epsilon": 1e-3}, [((2, 3, 4, 5), "x"), ((4, 5), "w")],
       "last-two-axes-no-bias", opsets=(17, 18, 21)),
    _c("LayerNormalization", {"axis": -2}, [((2, 3, 4, 5), "x"), ((4, 5), "w"), ((4, 5), "w")],
       "last-two-axes-bias", opsets=(17, 21)),
    _c("LayerNormalization", {}, [((2, 4, 4, 6), "x"), ((6,), "w")], "nhwc-channels-no-bias", opsets=(17, 21)),
    _c("LayerNormalization", {"axis": 1}, [((2, 3, 2, 2), "x"), ((3, 1, 1), "w"), ((3, 1, 1), "w")],
       "axis1-per-channel-scale", opsets=(17, 21)),
    # -- transposed convolution and more elementwise ops ------------------------------------
    # The ReferenceEvaluator's ConvTranspose (onnx 1.23) slices grouped weights by output channel
    # and ignores output_shape unless auto_pad is SAME: those cases use onnxruntime.
    _c("ConvTranspose", {}, [((2, 3, 4, 5), "x"), ((3, 2, 3, 3), "w"), ((2,), "w")], "stride1"),
    _c("ConvTranspose", {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
       [((2, 3, 4, 4), "x"), ((3, 4, 3, 3), "w"), ((4,), "w")], "stride2-pads-output-padding"),
    _c("ConvTranspose", {"strides": [3, 2], "pads": [1, 0, 2, 1], "output_padding": [2, 1]},
       [((1, 2, 3, 4), "x"), ((2, 3, 3, 3), "w"), ((3,), "w")], "stride3-asym-pads-output-padding"),
    _c("ConvTranspose", {"dilations": [2, 2], "pads": [1, 2, 0, 1]}, [((1, 2, 4, 4), "x"), ((2, 3, 3, 3), "w")],
       "dilation2-no-bias"),
    _c("ConvTranspose", {"group": 2, "strides": [2, 2], "pads": [0, 1, 1, 0]},
       [((1, 4, 3, 3), "x"), ((4, 3, 3, 3), "w"), ((6,), "w")], "groups2", reference="onnxruntime"),
    _c("ConvTranspose", {"group": 3, "strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
       [((2, 3, 3, 4), "x"), ((3, 1, 3, 3), "w"), ((3,), "w")], "depthwise-group-C", reference="onnxruntime"),
    _c("ConvTranspose", {"group": 3}, [((1, 3, 3, 4), "x"), ((3, 2, 2, 3), "w")], "depthwise-mult2-no-bias",
       reference="onnxruntime"),
    _c("ConvTranspose", {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
       [((1, 2, 3, 4), "x"), ((2, 3, 3, 3), "w"), ((3,), "w")], "same-upper-stride2"),
    _c("ConvTranspose", {"auto_pad": "SAME_LOWER", "strides": [2, 3]},
       [((1, 2, 3, 4), "x"), ((2, 3, 2, 4), "w"), ((3,), "w")], "same-lower-odd-pad"),
    # onnx's shape inference adds output_padding to SAME's input x stride; the spec, onnxruntime
    # and the ReferenceEvaluator do not.
    _c("ConvTranspose", {"auto_pad": "SAME_UPPER", "strides": [2, 2], "output_padding": [1, 1]},
       [((1, 2, 3, 4), "x"), ((2, 3, 3, 3), "w"), ((3,), "w")], "same-upper-output-padding",
       onnx_shape_inference=False),
    _c("ConvTranspose", {"auto_pad": "VALID", "strides": [1, 2]}, [((1, 2, 3, 4), "x"), ((2, 2, 2, 3), "w")],
       "valid-rect-kernel"),
    _c("ConvTranspose", {"strides": [2, 2], "output_shape": [8, 9]},
       [((1, 2, 4, 4), "x"), ((2, 3, 3, 3), "w"), ((3,), "w")], "output-shape-odd-pad", reference="onnxruntime"),
    _c("ConvTranspose", {"strides": [2, 2], "output_shape": [8, 9], "output_padding": [1, 1],
                         "auto_pad": "SAME_UPPER"},
       [((1, 2, 4, 4), "x"), ((2, 3, 3, 3), "w"), ((3,), "w")], "output-shape-same-upper-output-padding"),
    _c("Exp", {}, [((2, 3, 4), "x")], "plain", scale=2.0),
    _c("Log", {}, [((2, 3, 4), "pos")], "plain", symbolic_batch=False),
    _c("Neg", {}, [((2, 3, 4), "x")], "plain"),
    _c("Abs", {}, [((2, 3, 4), "x")], "plain", kinks=(0.0,)),
    _c("Softplus", {}, [((2, 3, 4), "x")], "plain", scale=3.0),
    _c("Softplus", {}, [((2, 6), "x")], "large-inputs", scale=60.0, gradient=False),
    _c("Softsign", {}, [((2, 3, 4), "x")], "plain", scale=3.0, kinks=(0.0,)),
]


def _case_ids(cases):
    return [str(c) for c in cases]


FORWARD_CASES = [c for c in CASES if c.forward]
GRADIENT_CASES = [c for c in CASES if c.gradient]
assert len(set(map(str, CASES))) == len(CASES), "case ids must be unique"


def forward_params():
    """(case, opset) pairs: every forward case at each opset whose encoding it exercises."""
    return [(c, o) for c in FORWARD_CASES for o in c.opsets]


def pytest_generate_tests(metafunc):
    if "forward_case" in metafunc.fixturenames:
        params = forward_params()
        metafunc.parametrize("forward_case", params, ids=[f"{c}-opset{o}" for c, o in params])
    if "op_case" in metafunc.fixturenames:  # every forward configuration once, opset aside
        metafunc.parametrize("op_case", FORWARD_CASES, ids=_case_ids(FORWARD_CASES))
    if "batch_first_case" in metafunc.fixturenames:
        cases = [c for c in FORWARD_CASES if c.symbolic_batch]
        metafunc.parametrize("batch_first_case", cases, ids=_case_ids(cases))
    if "gradient_case" in metafunc.fixturenames:
        metafunc.parametrize("gradient_case", GRADIENT_CASES, ids=_case_ids(GRADIENT_CASES))


@pytest.fixture
def forward_table():
    return list(FORWARD_CASES)


@pytest.fixture
def gradient_table():
    return list(GRADIENT_CASES)


@pytest.fixture
def case_inputs():
    return make_inputs


class FakeExportContext:
    """The export context an op's ``to_onnx`` sees, for single-node models built in tests."""

    def __init__(self, taken=(), shapes=None):
        self.initializers: dict[str, np.ndarray] = {}
        self.taken = set(taken)
        if shapes is not None:  # the real exporter knows every tensor's shape; tests opt in
            self.shape = lambda name: shapes[name]

    def unique_name(self, base):
        from edgecnn.compiler.onnx_io import fresh_name

        return fresh_name(base, self.taken)

    def add_initializer(self, name, array):
        self.initializers[name] = np.asarray(array)
        self.taken.add(name)
        return name


class FakeImportContext:
    def __init__(self, constants):
        self.constants = dict(constants)

    def constant(self, name):
        return self.constants.get(name)


@pytest.fixture
def export_context():
    return FakeExportContext


@pytest.fixture
def import_context():
    return FakeImportContext


# -- helpers several test modules share (as fixtures: test modules do not import each other) ----
def central_differences(f, x: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """The gradient of the scalar ``f(x)`` by central differences, element by element; ``x``
    (float64) is perturbed in place and restored."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        keep = x[i]
        x[i] = keep + step
        up = f(x)
        x[i] = keep - step
        down = f(x)
        x[i] = keep
        grad[i] = (up - down) / (2 * step)
    return grad


@pytest.fixture(scope="session")
def numeric_gradient():
    """``central_differences(f, x, step=1e-6)``: the independent reference for backward passes."""
    return central_differences


def randomized_constants(graph, seed=0):
    """The graph with its constant-initialised parameters (biases, BatchNorm scale, shift and
    statistics) perturbed, so that each of them matters; random weights keep their fan-in scale."""
    rng = np.random.default_rng(seed)
    g = graph.copy()
    for name, value in g.params.items():
        if value.size and np.all(value == value.flat[0]):
            g.params[name] = (value + 0.1 * rng.standard_normal(value.shape)).astype(np.float32)
    return g


@pytest.fixture(scope="session")
def randomized():
    """``randomized_constants(graph, seed=0)``: a copy of the graph whose constant parameters vary."""
    return randomized_constants


@pytest.fixture(scope="session")
def ort_session():
    """``ort_session(model) -> onnxruntime.InferenceSession`` on the CPU, one thread, no spinning:
    many tiny sessions on a shared machine otherwise spend their time starting thread pools and
    busy-waiting."""
    import onnxruntime as ort

    def make(model):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    return make
