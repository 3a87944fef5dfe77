"""The graph IR: tensor specs, nodes, parameters, a DAG with shape inference at build time.

Tensors are named. A node's input names a graph input, a parameter, or another node's output.
A graph is validated when it is constructed: names are unique, every input is defined, the
nodes form a DAG (they are kept in topological order) and every shape is inferred, so a bad
model fails at definition, naming the layer, the rule broken and the values received.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecnn.runtime.jsonable import jsonable

from .errors import ModelDefinitionError
from .ops import make_op
from .ops.base import Op

FORMAT_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    """A graph input: float32 NCHW with an optional symbolic (string) batch dimension."""

    name: str
    shape: tuple
    dtype: str = "float32"

    def __post_init__(self):
        shape = tuple(d if isinstance(d, str) else int(d) for d in self.shape)
        object.__setattr__(self, "shape", shape)
        for d in shape:
            if not isinstance(d, str) and d <= 0:
                raise ModelDefinitionError(self.name, "tensor dimensions must be positive", shape=shape)
        if self.dtype != "float32":
            raise ModelDefinitionError(self.name, "inputs must be float32", dtype=self.dtype)

    def concrete(self, batch: int = 1) -> tuple[int, ...]:
        """The shape with symbolic dimensions replaced by ``batch``."""
        return tuple(batch if isinstance(d, str) else d for d in self.shape)


@dataclass
class Node:
    op_type: str
    name: str  # the user's layer name
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"op_type": self.op_type, "name": self.name, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "attrs": jsonable(self.attrs)}

    @staticmethod
    def from_dict(d: dict) -> "Node":
        return Node(d["op_type"], d["name"], list(d["inputs"]), list(d["outputs"]), dict(d.get("attrs", {})))


class Graph:
    """A validated DAG of nodes with inferred shapes.

    ``params`` maps tensor names to float32 arrays (weights, biases, BatchNorm statistics);
    ``metadata`` carries what travels with the model: class ``labels`` and the input
    ``preprocessing`` (mean/std) used in training.
    """

    def __init__(self, inputs: list[TensorSpec], outputs: list[str], nodes: list[Node],
                 params: dict[str, np.ndarray] | None = None, name: str = "model",
                 metadata: dict | None = None):
        self.name = name
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.params = {k: np.asarray(v) for k, v in (params or {}).items()}
        self.metadata = dict(metadata or {})
        self.nodes = self._topological(list(nodes))
        self.ops: dict[str, Op] = {}
        self.shapes: dict[str, tuple] = {}
        self._infer()

    # -- validation ---------------------------------------------------------------------------
    def _topological(self, nodes: list[Node]) -> list[Node]:
        seen_layers: set[str] = set()
        producer: dict[str, Node] = {}
        defined = {spec.name for spec in self.inputs}
        if len(defined) != len(self.inputs):
            raise ModelDefinitionError(None, "graph input names must be unique",
                                       inputs=[s.name for s in self.inputs])
        for pname in self.params:
            if pname in defined:
                raise ModelDefinitionError(None, "a parameter has the same name as a graph input", name=pname)
        defined |= set(self.params)
        for node in nodes:
            if not node.name:
                raise ModelDefinitionError(None, "every node needs a layer name", op_type=node.op_type)
            if node.name in seen_layers:
                raise ModelDefinitionError(node.name, "duplicate layer name", name=node.name)
            seen_layers.add(node.name)
            for out in node.outputs:
                if out in defined or out in producer:
                    raise ModelDefinitionError(node.name, "tensor name defined twice", tensor=out)
                producer[out] = node
        for node in nodes:
            for inp in node.inputs:
                if inp and inp not in defined and inp not in producer:
                    raise ModelDefinitionError(
                        node.name, "input tensor is not a graph input, a parameter or any node's output "
                        "(dangling input)", tensor=inp)
        if not self.outputs:
            raise ModelDefinitionError(None, "a graph needs at least one output", outputs=self.outputs)
        for out in self.outputs:
            if out not in producer and out not in defined:
                raise ModelDefinitionError(None, "graph output is not produced by any node", output=out)

        # Kahn's algorithm taking the earliest ready node in the given order each time, so a valid
        # user order is kept exactly (a residual branch is not hoisted next to its sibling).
        deps = {n.name: {producer[i].name for i in n.inputs if i in producer} for n in nodes}
        order: list[Node] = []
        done: set[str] = set()
        remaining = list(nodes)
        while remaining:
            ready = next((i for i, n in enumerate(remaining) if deps[n.name] <= done), None)
            if ready is None:
                raise ModelDefinitionError(
                    remaining[0].name, "the graph has a cycle",
                    layers_in_cycle=[n.name for n in remaining])
            node = remaining.pop(ready)
            order.append(node)
            done.add(node.name)
        return order

    def _infer(self):
        shapes = {spec.name: spec.shape for spec in self.inputs}
        shapes.update({k: tuple(v.shape) for k, v in self.params.items()})
        for node in self.nodes:
            op = make_op(node)
            op.check_inputs(node.inputs)
            in_shapes = [shapes.get(i) if i else None for i in node.inputs]
            out_shapes = op.infer_shapes(in_shapes)
            for shape in out_shapes:
                for d in shape:
                    if not isinstance(d, str) and d <= 0:
                        op.fail("output would have a non-positive size", input_shapes=in_shapes,
                                output_shape=tuple(shape))
            if len(out_shapes) < len(node.outputs):
                op.fail(f"produces {len(out_shapes)} output(s)", outputs=node.outputs)
            for name, shape in zip(node.outputs, out_shapes):
                shapes[name] = tuple(shape)
            self.ops[node.name] = op
        self.shapes = shapes

    # -- queries ------------------------------------------------------------------------------
    def node(self, layer: str) -> Node:
        for n in self.nodes:
            if n.name == layer:
                return n
        raise KeyError(layer)

    def producer_of(self, tensor: str) -> Node | None:
        for n in self.nodes:
            if tensor in n.outputs:
                return n
        return None

    def fixed_batch(self) -> int | None:
        """The batch every input fixes (an imported PyTorch export pins its own), None when the
        batch is symbolic; inputs that fix different batches name each in a ModelDefinitionError."""
        fixed = {spec.name: spec.shape[0] for spec in self.inputs if spec.shape and isinstance(spec.shape[0], int)}
        if len(set(fixed.values())) > 1:
            raise ModelDefinitionError(None, "the inputs fix different batches", batches=fixed)
        return next(iter(fixed.values()), None)

    def trainable_params(self) -> list[str]:
        """Parameter names updated by gradients (BatchNorm running statistics excluded)."""
        state = set()
        for node in self.nodes:
            op = self.ops[node.name]
            state |= {node.inputs[i] for i in op.state_inputs if i < len(node.inputs)}
        return [p for p in self.params if p not in state]

    def num_params(self) -> int:
        return int(sum(v.size for v in self.params.values()))

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in self.inputs],
            "outputs": list(self.outputs),
            "nodes": [n.to_dict() for n in self.nodes],
            "params": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in self.params.items()},
            "metadata": jsonable(self.metadata),
        }

    @staticmethod
    def from_dict(d: dict, params: dict[str, np.ndarray]) -> "Graph":
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelDefinitionError(None, f"unsupported graph format version (this edgecnn reads {FORMAT_VERSION})",
                                       format_version=version)
        declared = d.get("params", {})
        missing = sorted(set(declared) - set(params))
        if missing:
            raise ModelDefinitionError(None, "weights file lacks parameters the graph declares", missing=missing)
        for k, spec in declared.items():
            if list(params[k].shape) != list(spec["shape"]):
                raise ModelDefinitionError(None, "parameter shape in weights file differs from the graph",
                                           name=k, expected=tuple(spec["shape"]), got=params[k].shape)
        return Graph(
            inputs=[TensorSpec(i["name"], tuple(i["shape"]), i.get("dtype", "float32")) for i in d["inputs"]],
            outputs=list(d["outputs"]),
            nodes=[Node.from_dict(n) for n in d["nodes"]],
            params={k: params[k] for k in declared},
            name=d.get("name", "model"),
            metadata=d.get("metadata", {}),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def copy(self) -> "Graph":
        return Graph.from_dict(self.to_dict(), {k: v.copy() for k, v in self.params.items()})

    def __repr__(self):
        return f"Graph({self.name!r}, {len(self.nodes)} nodes, {self.num_params()} parameters)"
