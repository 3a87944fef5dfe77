"""The op protocol and the registry.

Each op is one class, named exactly like its ONNX op, holding everything about it: the attribute
schema with the spec's defaults, the shape rule, the NumPy forward and backward, the cost used by
the summary, and the ONNX mapping. Everything else (the NumPy backend, the exporter, the
importer, the summary) walks the graph and looks ops up here; nothing else switches on op types.

An op instance is bound to one node's attributes: ``op = make_op(node)`` validates and fills the
attributes once, and ``op.forward`` / ``op.backward`` use ``op.attrs``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import ModelDefinitionError, UnsupportedOpError

Shape = tuple  # entries are int, or str for a symbolic (batch) dimension

REQUIRED = object()  # attribute default meaning "must be given"


@dataclass
class RunContext:
    """What a forward pass may depend on besides its inputs.

    ``training`` switches BatchNormalization to batch statistics and Dropout on; ``need_grad``
    asks ops to keep in their cache what the backward needs; ``rng`` is the seeded generator
    Dropout draws its mask from.
    """

    training: bool = False
    need_grad: bool = False
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    # Parameter updates an op wants to make in training mode (BatchNorm running statistics):
    # tensor name -> new value. The backend applies them after the step.
    state_updates: dict = field(default_factory=dict)
    # Ops know their inputs only by position: a forward writes {input position: new value} here
    # and the backend moves each entry to ``state_updates`` under that input's tensor name.
    pending_state: dict = field(default_factory=dict)
    # Whether gradients with respect to the graph's inputs are wanted. Training does not need
    # them, and skipping them saves the first layer's most expensive backward product.
    input_grads: bool = True
    # Set by the backend before each node's forward: per input, whether its gradient is needed.
    # An op may skip computing (and return None for) an input whose flag is False.
    requires_grad: tuple = ()


class Op:
    """Base class. Subclasses set ``op_type`` (the ONNX name) and override what they need."""

    op_type: ClassVar[str] = ""
    #: attribute name -> default (``REQUIRED`` if it must be given). Names follow ONNX.
    attr_defaults: ClassVar[dict[str, Any]] = {}
    #: (min, max) number of inputs; optional trailing inputs may be absent.
    arity: ClassVar[tuple[int, int]] = (1, 1)
    num_outputs: ClassVar[int] = 1
    #: input positions that hold learned parameters when built by layers (e.g. W and B of Conv)
    param_inputs: ClassVar[tuple[int, ...]] = ()
    #: input positions that are parameters but not trained by gradients (BatchNorm statistics)
    state_inputs: ClassVar[tuple[int, ...]] = ()
    #: ONNX opset versions whose semantics this class implements on import, (first, last).
    onnx_opsets: ClassVar[tuple[int, int]] = (1, 99)
    #: the ONNX domain of the op ("" is ONNX's own; onnxruntime's contrib ops are "com.microsoft")
    domain: ClassVar[str] = ""
    #: False for ops on quantized integers: they run, but have no gradient and are never trained
    differentiable: ClassVar[bool] = True

    def quantized_weight_axis(self) -> int | None:
        """The output-channel axis of the weight (input 1) when ``edgecnn quantize`` runs this op in
        integer arithmetic (per-channel weight scales lie along it); None for ops left in float."""
        return None

    def integer_node(self, name: str, head: list, bias: str | None, requantize, output: str,
                     has_bias: bool):
        """The integer op (``ops/quantization.py``) that runs this op's quantized chain
        ``DequantizeLinear -> op [-> Relu] -> QuantizeLinear`` in the integer reference, or the
        reason it cannot. ``head`` is (x, x scale, x zero point, w, w scale, w zero point);
        ``bias`` the int32 bias or None; ``requantize`` (y scale, y zero point) or None when the
        chain's output stays float; ``output`` the tensor it writes. Only ops with a
        ``quantized_weight_axis`` are asked."""
        return f"{type(self).__name__} has no integer form"

    def __init__(self, attrs: dict | None = None, name: str = ""):
        self.name = name
        given = dict(attrs or {})
        unknown = sorted(set(given) - set(self.attr_defaults))
        if unknown:
            self.fail(
                f"unknown attribute(s) for {self.op_type}; known: {sorted(self.attr_defaults)}",
                unknown=unknown,
            )
        merged = {}
        for key, default in self.attr_defaults.items():
            if key in given:
                merged[key] = given[key]
            elif default is REQUIRED:
                self.fail(f"{self.op_type} needs attribute '{key}'", attrs=given)
            else:
                merged[key] = default
        try:
            self.attrs = self.check_attrs(merged)
        except (TypeError, ValueError) as exc:  # e.g. int() of a string or a list: a mistyped attribute
            self.fail(f"an attribute has the wrong type ({exc})", attrs=given)

    def check_inputs(self, inputs: list[str]):
        """The node's input names against ``arity``: how many, and no required one empty (absent)."""
        lo, hi = self.arity
        if not lo <= len(inputs) <= hi:
            self.fail(f"takes {lo}..{hi} inputs", inputs=inputs)
        missing = [i for i in range(lo) if not inputs[i]]
        if missing:
            self.fail(f"input {missing[0]} is required but empty", inputs=inputs)

    # -- errors -------------------------------------------------------------------------------
    def fail(self, rule: str, **values):
        raise ModelDefinitionError(self.name or None, f"{self.op_type}: {rule}", **values)

    # -- definition time ----------------------------------------------------------------------
    def check_attrs(self, attrs: dict) -> dict:
        """Validate and normalise attribute values; return the attributes to keep."""
        return attrs

    def infer_shapes(self, in_shapes: list[Shape]) -> list[Shape]:
        """Output shapes from input shapes. Default: elementwise, shape of the first input."""
        return [tuple(in_shapes[0])]

    # -- execution ----------------------------------------------------------------------------
    def forward(self, inputs: list[np.ndarray], ctx: RunContext) -> tuple[list[np.ndarray], Any]:
        """Return (outputs, cache). The cache holds what ``backward`` needs (None if not needed)."""
        raise ModelDefinitionError(self.name or None, f"{self.op_type} has no NumPy forward")

    def backward(self, cache: Any, grad_outputs: list[np.ndarray]) -> list[np.ndarray | None]:
        """Gradients with respect to each input (None where the input is not differentiable)."""
        raise ModelDefinitionError(self.name or None, f"{self.op_type} has no backward pass; it cannot be trained")

    # -- summary ------------------------------------------------------------------------------
    def macs(self, in_shapes: list[Shape], out_shapes: list[Shape]) -> int:
        """Multiply-accumulates per sample (batch dimension excluded)."""
        return 0

    def receptive_field(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(kernel extent (h, w), stride (h, w)) as seen by receptive-field arithmetic."""
        return (1, 1), (1, 1)

    # -- ONNX ---------------------------------------------------------------------------------
    def onnx_attributes(self, opset: int) -> dict:
        """Attributes written on export; default: all attributes except those equal to None."""
        return {k: v for k, v in self.attrs.items() if v is not None}

    def to_onnx(self, inputs: list[str], outputs: list[str], opset: int, ctx) -> list:
        """ONNX NodeProtos computing this node. ``ctx.add_initializer(name, array)`` adds constants."""
        import onnx.helper

        return [onnx.helper.make_node(self.op_type, inputs, outputs, name=self.name, **self.onnx_attributes(opset))]

    @classmethod
    def before_opset_upgrade(cls, node, opset: int, graph, ranks: dict) -> None:
        """Rewrite ``node`` of ``graph`` (a GraphProto, in place) where onnx's version converter
        would keep a form whose meaning changed since ``opset``. ``ranks`` maps tensor names to
        their rank where shape inference knows it. Default: nothing changed."""

    @classmethod
    def from_onnx(cls, node, opset: int, ctx) -> tuple[dict, list[str], list[str]]:
        """(attrs, inputs, outputs) of the IR node for an ONNX NodeProto.

        Default: attributes copied by name; inputs and outputs as they are. ``ctx.constant(name)``
        gives the value of a constant input (initializer or Constant node) when an op needs one.
        """
        import onnx.helper

        from edgecnn.runtime.errors import InputError

        attrs = {}
        for a in node.attribute:
            try:
                value = onnx.helper.get_attribute_value(a)
            except ValueError:  # an attribute type onnx does not know
                value = None
            if value is None:
                raise InputError(f"Node '{node.name}' ({node.op_type}): attribute '{a.name}' holds no value of its "
                                 f"declared type (a corrupted file?). Received: type={a.type}")
            if isinstance(value, bytes):
                try:
                    value = value.decode()
                except UnicodeDecodeError:
                    raise InputError(f"Node '{node.name}' ({node.op_type}): attribute '{a.name}' is not UTF-8 "
                                     f"text. Received: {a.name}={value!r}") from None
            attrs[a.name] = value
        return attrs, list(node.input), list(node.output)


# -- registry ---------------------------------------------------------------------------------
REGISTRY: dict[str, type[Op]] = {}


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: add an op to the registry under its ONNX name."""
    if not cls.op_type:
        cls.op_type = cls.__name__
    if cls.op_type in REGISTRY:
        raise RuntimeError(f"op {cls.op_type} registered twice")
    REGISTRY[cls.op_type] = cls
    return cls


def get_op_class(op_type: str, layer: str | None = None) -> type[Op]:
    try:
        return REGISTRY[op_type]
    except KeyError:
        raise UnsupportedOpError(
            (f"Layer '{layer}': " if layer else "")
            + f"unknown op type '{op_type}'; supported: {', '.join(sorted(REGISTRY))}"
        ) from None


def make_op(node) -> Op:
    """Bind an op class to a node's attributes (validated once)."""
    return get_op_class(node.op_type, node.name)(node.attrs, name=node.name)
