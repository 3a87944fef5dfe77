"""Per-layer summary of a graph: shapes, parameters, MACs, receptive field, activation memory.

Everything is derived by walking the graph and asking each node's op (``op.macs``,
``op.receptive_field``) and the inferred shapes; nothing here knows about particular op types.
All figures are per sample (the batch dimension is excluded) and assume float32.

Receptive field arithmetic (per spatial axis), for a layer with effective kernel ``k``
(``dilation * (k - 1) + 1``) and stride ``s`` on an input whose units see ``r_in`` pixels spaced
``j_in`` pixels apart (the *jump*, i.e. the effective stride of that feature map)::

    r_out = r_in + (k - 1) * j_in
    j_out = j_in * s

The graph input has ``r = 1, j = 1``. Where several inputs meet (residual Adds, Concat) the
maximum over the inputs is taken. Receptive fields are tracked for 4-D (N, C, H, W) tensors
only: once a tensor is flattened it has no spatial layout, and those rows show no value.
An op that reduces a whole feature map to 1 x 1 while reporting a smaller window (global
pooling) is read from the shapes as a window over the whole map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from edgecnn.runtime.errors import InputError

from .errors import ModelDefinitionError
from .ir import Graph, Node, TensorSpec

FLOAT32_BYTES = 4


@dataclass
class LayerSummary:
    name: str
    op_type: str
    output_shape: tuple
    params: int
    macs: int
    receptive_field: tuple[int, int] | None  # (h, w) in input pixels
    jump: tuple[int, int] | None  # (h, w) effective stride in input pixels
    activation_bytes: int | None  # bytes of this layer's outputs, per sample
    # For weight-sharing (convolutional) layers: the weights a fully connected layer mapping the
    # same input to the same output would need, in_numel * out_numel.
    dense_equivalent_params: int | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name, "op_type": self.op_type, "output_shape": list(self.output_shape),
            "params": self.params, "macs": self.macs,
            "receptive_field": list(self.receptive_field) if self.receptive_field else None,
            "jump": list(self.jump) if self.jump else None,
            "activation_bytes": self.activation_bytes,
            "dense_equivalent_params": self.dense_equivalent_params,
        }


@dataclass
class ModelSummary:
    name: str
    inputs: list[TensorSpec]
    outputs: list[tuple[str, tuple]]
    layers: list[LayerSummary]
    totals: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "model": self.name,
            "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in self.inputs],
            "outputs": [{"name": n, "shape": list(shape)} for n, shape in self.outputs],
            "layers": [layer.to_dict() for layer in self.layers],
            "totals": dict(self.totals),
        }

    def to_text(self) -> str:
        return format_table(self)


def _per_sample_numel(shape) -> int | None:
    dims = tuple(shape)[1:]
    if any(not isinstance(d, int) for d in dims):
        return None
    return math.prod(dims)


def _spatial(shape) -> tuple[int, int] | None:
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
        return None
    return int(shape[2]), int(shape[3])


def _receptive_step(op, in_state, in_hw, out_hw):
    """(size, jump) at a node's output from the max (size, jump) over its spatial inputs."""
    (r_h, r_w), (j_h, j_w) = in_state
    (k_h, k_w), (s_h, s_w) = op.receptive_field()
    kernel, stride = [k_h, k_w], [s_h, s_w]
    for axis in range(2):
        # Without padding, a window of k with stride s leaves floor((in - k) / s) + 1 outputs and
        # padding only adds more. Fewer outputs than that means the window is wider than the
        # op reports: a reduction over the whole map (global pooling) when one output is left.
        fewest = max(in_hw[axis] - kernel[axis], 0) // stride[axis] + 1
        if out_hw[axis] < fewest:
            if out_hw[axis] != 1:
                return None
            kernel[axis], stride[axis] = in_hw[axis], in_hw[axis]
    size = (r_h + (kernel[0] - 1) * j_h, r_w + (kernel[1] - 1) * j_w)
    return size, (j_h * stride[0], j_w * stride[1])


def _peak_activation_bytes(graph: Graph) -> int:
    """Most bytes of activations alive at once when nodes run in order and each tensor is freed
    after its last consumer (graph inputs and outputs included, parameters excluded)."""
    steps = len(graph.nodes)
    born = {spec.name: 0 for spec in graph.inputs}
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for out in node.outputs:
            born[out] = i
        for inp in node.inputs:
            if inp in born:
                last_use[inp] = i
    for out in graph.outputs:
        last_use[out] = steps - 1
    # Bytes entering the live set at each step, and leaving it after each step.
    change = [0] * (steps + 1)
    for tensor, start in born.items():
        size = (_per_sample_numel(graph.shapes[tensor]) or 0) * FLOAT32_BYTES
        change[start] += size
        change[max(last_use.get(tensor, start), start) + 1] -= size
    peak = live = 0
    for step in range(steps):
        live += change[step]
        peak = max(peak, live)
    return peak


def summarize(graph: Graph) -> ModelSummary:
    """The per-layer figures and totals of ``graph`` (see the module docstring)."""
    rf: dict[str, tuple | None] = {}
    for spec in graph.inputs:
        rf[spec.name] = ((1, 1), (1, 1)) if _spatial(spec.shape) else None

    layers = []
    for node in graph.nodes:
        op = graph.ops[node.name]
        in_shapes = [graph.shapes.get(i) if i else None for i in node.inputs]
        out_shapes = [graph.shapes[o] for o in node.outputs]
        data_inputs = [i for i in node.inputs if i and i not in graph.params]
        param_inputs = [i for i in node.inputs if i in graph.params]

        out_hw = _spatial(out_shapes[0])
        states = [rf[i] for i in data_inputs if rf.get(i)]
        state = None
        if out_hw and states:
            size = tuple(max(s[0][a] for s in states) for a in range(2))
            jump = tuple(max(s[1][a] for s in states) for a in range(2))
            in_hw = _spatial(graph.shapes[next(i for i in data_inputs if rf.get(i))])
            state = _receptive_step(op, (size, jump), in_hw, out_hw)
        for out in node.outputs:
            rf[out] = state

        numels = [_per_sample_numel(s) for s in out_shapes]
        act = None if None in numels else sum(numels) * FLOAT32_BYTES
        dense_equiv = None
        has_kernel = any(len(graph.params[p].shape) == 4 for p in param_inputs)
        if has_kernel and data_inputs and out_hw and _spatial(graph.shapes[data_inputs[0]]):
            in_numel = _per_sample_numel(graph.shapes[data_inputs[0]])
            out_numel = numels[0]
            if in_numel is not None and out_numel is not None:
                dense_equiv = in_numel * out_numel
        layers.append(LayerSummary(
            name=node.name, op_type=node.op_type, output_shape=tuple(out_shapes[0]),
            params=int(sum(graph.params[p].size for p in dict.fromkeys(param_inputs))),
            macs=int(op.macs(in_shapes, out_shapes)),
            receptive_field=state[0] if state else None, jump=state[1] if state else None,
            activation_bytes=act, dense_equivalent_params=dense_equiv))

    trainable = set(graph.trainable_params())
    totals = {
        "params": graph.num_params(),
        "trainable_params": int(sum(v.size for k, v in graph.params.items() if k in trainable)),
        "param_bytes": int(sum(v.size for v in graph.params.values())) * FLOAT32_BYTES,
        "macs": int(sum(layer.macs for layer in layers)),
        "activation_bytes_total": int(sum(layer.activation_bytes or 0 for layer in layers)),
        "activation_bytes_peak": _peak_activation_bytes(graph),
        "layers": len(layers),
    }
    return ModelSummary(graph.name, list(graph.inputs), [(o, graph.shapes[o]) for o in graph.outputs],
                        layers, totals)


def with_input_shape(graph: Graph, shape) -> Graph:
    """The same model with its (single) input's per-sample shape replaced, shapes re-inferred.

    The batch dimension stays as it was. A model whose layers fix the input size (Flatten then
    Dense) fails with an error naming the first layer that cannot take the new shape.
    """
    if len(graph.inputs) != 1:
        raise InputError(f"--input-shape needs a model with one input. Received: inputs="
                         f"{[s.name for s in graph.inputs]}")
    spec = graph.inputs[0]
    shape = tuple(int(d) for d in shape)
    if len(shape) != len(spec.shape) - 1:
        raise InputError(f"input '{spec.name}' has per-sample shape {tuple(spec.shape[1:])}; give as many "
                         f"dimensions. Received: shape={shape}")
    try:
        new_spec = TensorSpec(spec.name, (spec.shape[0], *shape), spec.dtype)
        return Graph([new_spec], graph.outputs, [Node.from_dict(n.to_dict()) for n in graph.nodes],
                     graph.params, name=graph.name, metadata=graph.metadata)
    except ModelDefinitionError as exc:
        raise InputError(f"model '{graph.name}' does not accept input shape {shape}: {exc}") from None


# -- text -------------------------------------------------------------------------------------
def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _pair_text(pair) -> str:
    if pair is None:
        return "-"
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def format_table(summary: ModelSummary) -> str:
    header = ("Layer", "Op", "Output shape", "Params", "MACs", "RF", "Jump", "Act. mem", "Dense-equiv params")
    right = {3, 4, 5, 6, 7, 8}
    rows = [header]
    for layer in summary.layers:
        rows.append((
            layer.name, layer.op_type, _shape_text(layer.output_shape), f"{layer.params:,}", f"{layer.macs:,}",
            _pair_text(layer.receptive_field), _pair_text(layer.jump), format_bytes(layer.activation_bytes),
            "-" if layer.dense_equivalent_params is None else f"{layer.dense_equivalent_params:,}",
        ))
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]

    def line(row):
        cells = [row[c].rjust(widths[c]) if c in right else row[c].ljust(widths[c]) for c in range(len(row))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    t = summary.totals
    inputs = ", ".join(f"{s.name} {_shape_text(s.shape)}" for s in summary.inputs)
    outputs = ", ".join(f"{n} {_shape_text(shape)}" for n, shape in summary.outputs)
    out = [f"Model: {summary.name}   inputs: {inputs}   outputs: {outputs}", rule, line(rows[0]), rule]
    out += [line(r) for r in rows[1:]]
    out += [rule,
            f"Parameters: {t['params']:,} ({t['trainable_params']:,} trainable), "
            f"{format_bytes(t['param_bytes'])} as float32",
            f"MACs per sample: {t['macs']:,}",
            f"Activation memory per sample: {format_bytes(t['activation_bytes_total'])} total, "
            f"{format_bytes(t['activation_bytes_peak'])} peak (each tensor freed after its last use)",
            "RF = receptive field in input pixels; Jump = its effective stride. "
            "Dense-equiv = weights of a fully connected layer with the same input and output sizes."]
    return "\n".join(out)
