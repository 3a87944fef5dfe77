"""The builder API: thin layers that create parameters and emit one node each.

Two styles, as in Keras:

    # Sequential
    model = Sequential([Conv2d(16, 3, padding="same"), ReLU(), MaxPool2d(2), Flatten(), Dense(10)],
                       input_shape=(1, 8, 8), name="tiny").build()

    # functional, for DAGs (residual Adds, Concat)
    x = Input((3, 32, 32))
    y = Conv2d(16, 3, padding="same")(x)
    y = Add()([x_skip, y])
    model = Model(x, y)

Shapes are inferred as each layer is called, so a bad model fails on the line that builds it,
naming the layer. Layer names become node names and output tensor names (and so ONNX names).
Initialisation is seeded: He-normal (fan in) by default, Glorot-uniform on request.
"""
from __future__ import annotations

import abc
import math

import numpy as np

from .errors import ModelDefinitionError
from .ir import Graph, Node, TensorSpec
from .ops import make_op


class Builder:
    """Collects nodes and parameters; infers shapes node by node."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.inputs: list[TensorSpec] = []
        self.nodes: list[Node] = []
        self.params: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple] = {}
        self._counts: dict[str, int] = {}

    def unique_name(self, base: str) -> str:
        n = self._counts.get(base, 0)
        self._counts[base] = n + 1
        name = base if n == 0 else f"{base}_{n}"
        while name in self.shapes or any(node.name == name for node in self.nodes):
            n += 1
            self._counts[base] = n + 1
            name = f"{base}_{n}"
        return name

    def claim(self, name: str):
        if name in self.shapes or any(node.name == name for node in self.nodes):
            raise ModelDefinitionError(name, "duplicate layer name", name=name)

    def add_param(self, name: str, value: np.ndarray) -> str:
        self.params[name] = np.ascontiguousarray(value, dtype=np.float32)
        self.shapes[name] = tuple(value.shape)
        return name

    def emit(self, op_type: str, name: str, inputs: list[str], attrs: dict | None = None,
             num_outputs: int = 1) -> list["Symbol"]:
        outputs = [name] if num_outputs == 1 else [f"{name}:{i}" for i in range(num_outputs)]
        node = Node(op_type, name, list(inputs), outputs, dict(attrs or {}))
        op = make_op(node)
        in_shapes = [self.shapes[i] if i else None for i in inputs]
        out_shapes = op.infer_shapes(in_shapes)
        for shape in out_shapes:
            if any(not isinstance(d, str) and d <= 0 for d in shape):
                op.fail("output would have a non-positive size", input_shapes=in_shapes, output_shape=tuple(shape))
        self.nodes.append(node)
        symbols = []
        for out, shape in zip(outputs, out_shapes):
            self.shapes[out] = tuple(shape)
            symbols.append(Symbol(self, out, tuple(shape)))
        return symbols

    # Seeded initialisers --------------------------------------------------------------------
    def he_normal(self, shape, fan_in: int) -> np.ndarray:
        return self.rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape).astype(np.float32)

    def glorot_uniform(self, shape, fan_in: int, fan_out: int) -> np.ndarray:
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return self.rng.uniform(-limit, limit, size=shape).astype(np.float32)


class Symbol:
    """A symbolic tensor while a model is being built."""

    def __init__(self, builder: Builder, name: str, shape: tuple):
        self.builder, self.name, self.shape = builder, name, shape

    def __repr__(self):
        return f"Symbol({self.name!r}, shape={self.shape})"


def Input(shape, name: str = "input", batch: int | str = "N", seed: int = 0) -> Symbol:
    """A graph input of per-sample ``shape`` (C, H, W); the batch dimension is symbolic by default."""
    builder = Builder(seed)
    spec = TensorSpec(name, (batch, *shape))
    builder.inputs.append(spec)
    builder.shapes[name] = spec.shape
    return Symbol(builder, name, spec.shape)


def Model(inputs, outputs, name: str = "model", metadata: dict | None = None) -> Graph:
    """Finish a functional model: a validated Graph."""
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    builder = outputs[0].builder
    if any(s.builder is not builder for s in [*inputs, *outputs]):
        raise ModelDefinitionError(None, "inputs and outputs must come from the same Input()")
    return Graph(builder.inputs, [o.name for o in outputs], builder.nodes, builder.params, name=name,
                 metadata=metadata)


class Layer(abc.ABC):
    """Base layer: ``layer(symbol)`` emits the layer's node(s) and returns the output symbol."""

    def __init__(self, name: str | None = None):
        self.name = name

    def __call__(self, x):
        symbols = x if isinstance(x, (list, tuple)) else [x]
        builder = symbols[0].builder
        if any(s.builder is not builder for s in symbols):
            raise ModelDefinitionError(self.name, "all inputs of a layer must come from the same model")
        if self.name:
            builder.claim(self.name)
            name = self.name
        else:
            name = builder.unique_name(type(self).__name__.lower())
        return self.emit(builder, name, x)

    @abc.abstractmethod
    def emit(self, b: Builder, name: str, x):
        """Create parameters in ``b`` and emit the layer's node(s); return the output Symbol."""


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def _padding(padding, layer: str) -> dict:
    """Layer padding -> Conv/Pool attributes: int, (ph, pw), (top, left, bottom, right), 'same', 'valid'."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "same":
            return {"auto_pad": "SAME_UPPER"}
        if mode == "valid":
            return {"pads": [0, 0, 0, 0]}
        raise ModelDefinitionError(layer, "padding must be 'same', 'valid', an int or a tuple", padding=padding)
    if isinstance(padding, (int, np.integer)):
        return {"pads": [int(padding)] * 4}
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        return {"pads": [padding[0], padding[1], padding[0], padding[1]]}
    if len(padding) == 4:
        return {"pads": padding}
    raise ModelDefinitionError(layer, "padding tuple must have 2 or 4 entries", padding=tuple(padding))


class Conv2d(Layer):
    """Conv with He-normal weights (M, C/groups, KH, KW) and zero bias."""

    def __init__(self, out_channels: int, kernel_size, stride=1, padding=0, dilation=1, groups: int = 1,
                 bias: bool = True, init: str = "he", name: str | None = None):
        super().__init__(name)
        self.out_channels, self.kernel = int(out_channels), _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), padding, _pair(dilation)
        self.groups, self.bias, self.init = groups, bias, init

    def emit(self, b, name, x):
        if self.out_channels <= 0 or min(self.kernel) <= 0:
            raise ModelDefinitionError(name, "Conv2d sizes must be positive", out_channels=self.out_channels,
                                       kernel_size=self.kernel)
        in_ch = x.shape[1]
        groups = in_ch if self.groups == "depthwise" else int(self.groups)
        if groups <= 0 or in_ch % groups:
            raise ModelDefinitionError(name, "input channels must be divisible by groups", in_channels=in_ch,
                                       groups=groups)
        wshape = (self.out_channels, in_ch // groups, *self.kernel)
        fan_in = wshape[1] * self.kernel[0] * self.kernel[1]
        fan_out = self.out_channels // groups * self.kernel[0] * self.kernel[1]
        w = b.glorot_uniform(wshape, fan_in, fan_out) if self.init == "glorot" else b.he_normal(wshape, fan_in)
        inputs = [x.name, b.add_param(f"{name}.weight", w)]
        if self.bias:
            inputs.append(b.add_param(f"{name}.bias", np.zeros(self.out_channels, np.float32)))
        attrs = {"kernel_shape": list(self.kernel), "strides": list(self.stride), "dilations": list(self.dilation),
                 "group": groups, **_padding(self.padding, name)}
        return b.emit("Conv", name, inputs, attrs)[0]


class DepthwiseConv2d(Conv2d):
    """Conv with ``groups = in_channels`` and ``multiplier`` outputs per input channel."""

    def __init__(self, kernel_size, stride=1, padding=0, dilation=1, multiplier: int = 1, bias: bool = True,
                 name: str | None = None):
        super().__init__(1, kernel_size, stride, padding, dilation, "depthwise", bias, name=name)
        self.multiplier = multiplier

    def emit(self, b, name, x):
        self.out_channels = x.shape[1] * self.multiplier
        return super().emit(b, name, x)


class Dense(Layer):
    """Gemm ``y = x W^T + b`` with W of shape (units, in_features), as PyTorch's Linear."""

    def __init__(self, units: int, bias: bool = True, init: str = "he", name: str | None = None):
        super().__init__(name)
        self.units, self.bias, self.init = int(units), bias, init

    def emit(self, b, name, x):
        if len(x.shape) != 2:
            raise ModelDefinitionError(name, "Dense expects a 2-D (N, features) input; add Flatten() first",
                                       input_shape=x.shape)
        if self.units <= 0:
            raise ModelDefinitionError(name, "Dense units must be positive", units=self.units)
        fan_in = x.shape[1]
        shape = (self.units, fan_in)
        w = b.glorot_uniform(shape, fan_in, self.units) if self.init == "glorot" else b.he_normal(shape, fan_in)
        inputs = [x.name, b.add_param(f"{name}.weight", w)]
        if self.bias:
            inputs.append(b.add_param(f"{name}.bias", np.zeros(self.units, np.float32)))
        return b.emit("Gemm", name, inputs, {"transB": 1})[0]


class BatchNorm2d(Layer):
    """BatchNormalization with scale 1, bias 0, running mean 0, running variance 1."""

    def __init__(self, epsilon: float = 1e-5, momentum: float = 0.9, name: str | None = None):
        super().__init__(name)
        self.epsilon, self.momentum = epsilon, momentum

    def emit(self, b, name, x):
        c = x.shape[1]
        inputs = [x.name,
                  b.add_param(f"{name}.scale", np.ones(c, np.float32)),
                  b.add_param(f"{name}.bias", np.zeros(c, np.float32)),
                  b.add_param(f"{name}.running_mean", np.zeros(c, np.float32)),
                  b.add_param(f"{name}.running_var", np.ones(c, np.float32))]
        return b.emit("BatchNormalization", name, inputs, {"epsilon": self.epsilon, "momentum": self.momentum})[0]


class PReLU(Layer):
    """PRelu with one learned slope per channel, shape (C, 1, 1), initialised to ``init``."""

    def __init__(self, init: float = 0.25, name: str | None = None):
        super().__init__(name)
        self.init = init

    def emit(self, b, name, x):
        shape = (x.shape[1],) + (1,) * (len(x.shape) - 2)
        slope = b.add_param(f"{name}.slope", np.full(shape, self.init, np.float32))
        return b.emit("PRelu", name, [x.name, slope])[0]


class _Simple(Layer):
    """A layer that emits one parameter-free op with fixed attributes."""

    op_type = ""

    def __init__(self, name: str | None = None, **attrs):
        super().__init__(name)
        self.attrs = attrs

    def emit(self, b, name, x):
        inputs = [s.name for s in x] if isinstance(x, (list, tuple)) else [x.name]
        return b.emit(self.op_type, name, inputs, self.attrs)[0]


def _simple(cls_name: str, op_type: str, doc: str, **defaults):
    def __init__(self, name: str | None = None, **attrs):
        _Simple.__init__(self, name, **{**defaults, **attrs})

    return type(cls_name, (_Simple,), {"op_type": op_type, "__init__": __init__, "__doc__": doc})


ReLU = _simple("ReLU", "Relu", "max(x, 0)")
LeakyReLU = _simple("LeakyReLU", "LeakyRelu", "x if x > 0 else alpha * x (alpha=0.01)")
Sigmoid = _simple("Sigmoid", "Sigmoid", "1 / (1 + exp(-x))")
Tanh = _simple("Tanh", "Tanh", "tanh(x)")
ELU = _simple("ELU", "Elu", "x if x > 0 else alpha * (exp(x) - 1)")
SELU = _simple("SELU", "Selu", "gamma * (x if x > 0 else alpha * (exp(x) - 1))")
HardSigmoid = _simple("HardSigmoid", "HardSigmoid", "max(0, min(1, alpha * x + beta))")
HardSwish = _simple("HardSwish", "HardSwish", "x * HardSigmoid(x; alpha=1/6, beta=0.5)")
Softmax = _simple("Softmax", "Softmax", "softmax over axis (default -1)", axis=-1)
LogSoftmax = _simple("LogSoftmax", "LogSoftmax", "log of softmax over axis (default -1)", axis=-1)
GlobalAvgPool2d = _simple("GlobalAvgPool2d", "GlobalAveragePool", "mean over H and W, keeps (N, C, 1, 1)")
GlobalMaxPool2d = _simple("GlobalMaxPool2d", "GlobalMaxPool", "max over H and W, keeps (N, C, 1, 1)")
Flatten = _simple("Flatten", "Flatten", "(N, C, H, W) -> (N, C*H*W)", axis=1)
Add = _simple("Add", "Add", "elementwise sum of two tensors (residual connections)")
Mul = _simple("Mul", "Mul", "elementwise product of two tensors")
Sum = _simple("Sum", "Sum", "elementwise sum of any number of tensors (ONNX Sum)")


def ReLU6(name: str | None = None) -> Layer:
    """Clip to [0, 6], as MobileNets use it."""
    return Clip(0.0, 6.0, name=name)


class Clip(_Simple):
    op_type = "Clip"

    def __init__(self, min: float | None = None, max: float | None = None, name: str | None = None):
        super().__init__(name, min=min, max=max)


class Concat(_Simple):
    """Concatenate along ``axis`` (channels by default)."""

    op_type = "Concat"

    def __init__(self, axis: int = 1, name: str | None = None):
        super().__init__(name, axis=axis)


class Dropout(_Simple):
    """Zero a fraction ``rate`` of activations in training (scaled by 1/(1-rate)); identity in inference."""

    op_type = "Dropout"

    def __init__(self, rate: float = 0.5, name: str | None = None):
        super().__init__(name, ratio=float(rate))


class Reshape(_Simple):
    """Reshape to ``shape`` (0 copies a dimension, -1 is inferred), as ONNX Reshape."""

    op_type = "Reshape"

    def __init__(self, shape, name: str | None = None):
        super().__init__(name, shape=[int(s) for s in shape])


class Pad(_Simple):
    """Pad H and W by (top, left, bottom, right) with mode constant, reflect or edge."""

    op_type = "Pad"

    def __init__(self, padding, mode: str = "constant", value: float = 0.0, name: str | None = None):
        t, l, bt, r = _padding(padding, name or "pad")["pads"]
        super().__init__(name, pads=[0, 0, t, l, 0, 0, bt, r], mode=mode, value=float(value))


class _Pool(_Simple):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, name: str | None = None,
                 **extra):
        kernel = _pair(kernel_size)
        stride = kernel if stride is None else _pair(stride)
        super().__init__(name, kernel_shape=list(kernel), strides=list(stride), ceil_mode=int(ceil_mode),
                         **_padding(padding, name or "pool"), **extra)


class MaxPool2d(_Pool):
    """MaxPool; stride defaults to the kernel size. Padding never wins the max."""

    op_type = "MaxPool"

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, name=None):
        super().__init__(kernel_size, stride, padding, ceil_mode, name, dilations=list(_pair(dilation)))


class AvgPool2d(_Pool):
    """AveragePool; ``count_include_pad`` chooses whether padding counts in the divisor."""

    op_type = "AveragePool"

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=False, name=None):
        super().__init__(kernel_size, stride, padding, ceil_mode, name, count_include_pad=int(count_include_pad))


class Sequential:
    """A plain stack of layers on one input."""

    def __init__(self, layers: list[Layer], input_shape, name: str = "model", input_name: str = "input",
                 seed: int = 0, metadata: dict | None = None):
        self.layers, self.input_shape, self.name = list(layers), tuple(input_shape), name
        self.input_name, self.seed, self.metadata = input_name, seed, metadata

    def build(self) -> Graph:
        x = Input(self.input_shape, name=self.input_name, seed=self.seed)
        y = x
        for layer in self.layers:
            y = layer(y)
        return Model(x, y, name=self.name, metadata=self.metadata)
