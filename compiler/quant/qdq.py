"""Static post-training quantization of an IR graph into QDQ form.

``quantize_graph`` folds BatchNorm into the convolution before it, calibrates activation
ranges with the NumPy backend, and writes QuantizeLinear/DequantizeLinear pairs the way
onnxruntime's ``quantize_static`` does (so onnxruntime, TVM and edgecnn's integer reference
all read the same file):

- weights of Conv and Gemm: int8, symmetric (zero point 0, range [-127, 127]), one scale per
  output channel (``per_channel``) or per tensor;
- biases: int32 at scale ``x_scale * w_scale`` (so they add straight into the accumulator);
- activations entering a Conv or Gemm, and their outputs (after a ReLU that follows them):
  int8 with a zero point, per tensor, over the calibrated range (which always contains 0, so
  zero padding is exact);
- MaxPool, Flatten and Reshape pass a quantized tensor on with the same scale and zero point,
  so an int8 value can flow through them unchanged;
- graph outputs stay float: the last dense layer's accumulator is dequantized.
"""
from __future__ import annotations

import numpy as np

from edgecnn.runtime.errors import InputError

from ..ir import Graph, Node
from . import calibrate

#: ops whose output is a subset or rearrangement of their input's values: same quantization
SAME_SCALE_OPS = ("MaxPool", "Flatten", "Reshape")


def _quantizable(graph: Graph, node) -> bool:
    """Whether the op runs in integer arithmetic once quantized (its class says: Conv, Gemm)."""
    return graph.ops[node.name].quantized_weight_axis() is not None


def fold_batchnorm(graph: Graph) -> tuple[Graph, list[str]]:
    """Every BatchNormalization whose input is a Conv's only use, folded into that Conv."""
    consumers: dict[str, int] = {}
    for n in graph.nodes:
        for i in n.inputs:
            consumers[i] = consumers.get(i, 0) + 1
    producers = {o: n for n in graph.nodes for o in n.outputs}
    params = dict(graph.params)
    folded, dropped, rewired = [], set(), {}
    for bn in graph.nodes:
        if bn.op_type != "BatchNormalization":
            continue
        conv = producers.get(bn.inputs[0])
        if (conv is None or conv.op_type != "Conv" or consumers.get(bn.inputs[0]) != 1
                or bn.inputs[0] in graph.outputs or not all(i in params for i in bn.inputs[1:5])
                or conv.inputs[1] not in params):
            continue
        gamma, beta, mean, var = (params[i].astype(np.float64) for i in bn.inputs[1:5])
        eps = float(graph.ops[bn.name].attrs.get("epsilon", 1e-5))
        factor = gamma / np.sqrt(var + eps)
        w = params[conv.inputs[1]].astype(np.float64)
        b = params[conv.inputs[2]].astype(np.float64) if len(conv.inputs) > 2 and conv.inputs[2] else 0.0
        w_name, b_name = f"{conv.name}.weight_folded", f"{conv.name}.bias_folded"
        params[w_name] = (w * factor.reshape(-1, 1, 1, 1)).astype(np.float32)
        params[b_name] = ((b - mean) * factor + beta).astype(np.float32)
        rewired[conv.name] = Node("Conv", conv.name, [conv.inputs[0], w_name, b_name], list(bn.outputs),
                                  dict(graph.ops[conv.name].attrs))
        dropped.add(bn.name)
        folded.append(bn.name)
    if not folded:
        return graph, []
    nodes = [rewired.get(n.name, n) for n in graph.nodes if n.name not in dropped]
    used = {i for n in nodes for i in n.inputs}
    params = {k: v for k, v in params.items() if k in used}
    return Graph(graph.inputs, graph.outputs, nodes, params, name=graph.name, metadata=graph.metadata), folded


def activation_params(lo: float, hi: float) -> tuple[np.float32, np.int8]:
    """Scale and int8 zero point for the range [lo, hi] (widened to hold 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero = int(np.clip(np.rint(-128 - lo / scale), -128, 127))
    return np.float32(scale), np.int8(zero)


def weight_params(w: np.ndarray, per_channel: bool, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, float32 scales) with symmetric ranges [-127, 127]."""
    moved = np.moveaxis(w.astype(np.float64), axis, 0).reshape(w.shape[axis], -1)
    peak = np.abs(moved).max(axis=1) if per_channel else np.full(w.shape[axis], np.abs(w).max())
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, (scale if per_channel else scale[:1].reshape(()))


def plan(graph: Graph) -> tuple[list[str], dict[str, str]]:
    """(activation tensors to calibrate, {tensor: tensor it shares its quantization with})."""
    consumers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)
    producers = {o: n for n in graph.nodes for o in n.outputs}
    wanted: list[str] = []

    def add(t):
        if t not in wanted and t not in graph.params and t not in graph.outputs:
            wanted.append(t)

    for n in graph.nodes:
        if not _quantizable(graph, n):
            continue
        add(n.inputs[0])
        out = n.outputs[0]
        users = consumers.get(out, [])
        if len(users) == 1 and users[0].op_type == "Relu":
            out = users[0].outputs[0]
        if out not in graph.outputs:
            add(out)
    shared = {}
    for t in wanted:
        source = producers.get(t)
        while source is not None and source.op_type in SAME_SCALE_OPS and source.inputs[0] in wanted:
            shared[t] = source.inputs[0]
            source = producers.get(source.inputs[0])
            if shared[t] in shared:
                shared[t] = shared[shared[t]]
    return wanted, shared


def quantize_graph(graph: Graph, batches, *, method: str = "minmax", per_channel: bool = True,
                   progress=None) -> tuple[Graph, dict]:
    """The QDQ graph and a report: what was quantized, what stayed float and why."""
    if len(graph.inputs) != 1:
        raise InputError(f"quantize: models with one input only. Received: {len(graph.inputs)} inputs")
    graph, folded = fold_batchnorm(graph)
    tensors, shared = plan(graph)
    if not tensors:
        raise InputError("quantize: the model has no Conv or Gemm layer to quantize")
    ranges = calibrate.collect(graph, batches, [t for t in tensors if t not in shared], method, progress)
    qparams = {}
    for t in tensors:
        qparams[t] = activation_params(*ranges[shared.get(t, t)])
    params = dict(graph.params)
    nodes: list[Node] = []
    rename: dict[str, str] = {}
    report = {"method": method, "per_channel": per_channel, "batchnorm_folded": folded, "quantized": [],
              "float": {}, "activations": {}}

    def emit_qdq(t):
        scale, zero = qparams[t]
        params[f"{t}.scale"], params[f"{t}.zero_point"] = scale, np.asarray(zero)
        nodes.append(Node("QuantizeLinear", f"{t}.quantize", [t, f"{t}.scale", f"{t}.zero_point"], [f"{t}.q"]))
        nodes.append(Node("DequantizeLinear", f"{t}.dequantize", [f"{t}.q", f"{t}.scale", f"{t}.zero_point"],
                          [f"{t}.dq"]))
        rename[t] = f"{t}.dq"
        report["activations"][t] = {"scale": float(scale), "zero_point": int(zero), "range": list(ranges[shared.get(t, t)])}

    for t in tensors:  # the graph input is quantized before the first node
        if t in {s.name for s in graph.inputs}:
            emit_qdq(t)
    for n in graph.nodes:
        inputs = [rename.get(i, i) for i in n.inputs]
        if _quantizable(graph, n) and n.inputs[0] in qparams and n.inputs[1] in params:
            sx = qparams[n.inputs[0]][0]
            w = params[n.inputs[1]]
            axis = graph.ops[n.name].quantized_weight_axis()
            wq, sw = weight_params(w, per_channel, axis)
            base = n.inputs[1]
            params[f"{base}.q"], params[f"{base}.scale"] = wq, sw
            params[f"{base}.zero_point"] = np.zeros(np.shape(sw), np.int8)
            nodes.append(Node("DequantizeLinear", f"{base}.dequantize",
                              [f"{base}.q", f"{base}.scale", f"{base}.zero_point"], [f"{base}.dq"],
                              {"axis": axis} if np.ndim(sw) else {}))
            inputs[1] = f"{base}.dq"
            if len(n.inputs) > 2 and n.inputs[2] in params:
                b = params[n.inputs[2]]
                bscale = (np.float32(sx) * np.broadcast_to(sw, (w.shape[axis],))).astype(np.float32)
                params[f"{n.inputs[2]}.q"] = np.rint(b.astype(np.float64) / bscale).astype(np.int32)
                params[f"{n.inputs[2]}.scale"] = bscale
                params[f"{n.inputs[2]}.zero_point"] = np.zeros(bscale.shape, np.int32)
                nodes.append(Node("DequantizeLinear", f"{n.inputs[2]}.dequantize",
                                  [f"{n.inputs[2]}.q", f"{n.inputs[2]}.scale", f"{n.inputs[2]}.zero_point"],
                                  [f"{n.inputs[2]}.dq"], {"axis": 0}))
                inputs[2] = f"{n.inputs[2]}.dq"
            report["quantized"].append(n.name)
        elif _quantizable(graph, n):
            report["float"][n.name] = "its input is not a calibrated activation or its weight is not a constant"
        nodes.append(Node(n.op_type, n.name, inputs, list(n.outputs), dict(graph.ops[n.name].attrs)))
        for o in n.outputs:
            if o in qparams:
                emit_qdq(o)
    for n in graph.nodes:
        if not _quantizable(graph, n) and n.op_type not in SAME_SCALE_OPS + ("Relu",):
            report["float"].setdefault(n.name, f"{n.op_type} runs in float between dequantize and quantize")
    used = {i for n in nodes for i in n.inputs}
    params = {k: v for k, v in params.items() if k in used}
    metadata = dict(graph.metadata)
    metadata["quantization"] = {k: report[k] for k in ("method", "per_channel", "quantized", "batchnorm_folded")}
    return Graph(graph.inputs, graph.outputs, nodes, params, name=graph.name, metadata=metadata), report
