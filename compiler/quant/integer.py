"""The integer reference: a QDQ graph rewritten so its convolutions and dense layers run as
int8 x int8 products with exact accumulation (``QLinearConv``, ``QGemm``).

A QDQ graph run as it stands is *simulated* quantization: float convolutions of dequantized
values, rounded where a QuantizeLinear sits. Compiled int8 code and onnxruntime do not compute
that; they accumulate integers and requantize once. This rewrite makes the NumPy backend compute
the same thing, so ``verify`` compares integer code against an integer reference.

Chains rewritten (everything else, e.g. Add or pooling between QDQ pairs, runs as it is):

    DequantizeLinear(x) ─┐
    DequantizeLinear(w) ─┼─ Conv ─[Relu]─ QuantizeLinear      -> QLinearConv [-> Clip(zero point)]
    DequantizeLinear(b) ─┘                                       (a ReLU is free when the zero
                                                                  point is the type's minimum)
    ... ─ Gemm (transA 0, alpha 1) ─ QuantizeLinear or a float output -> QGemm
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node
from ..ops.quantization import INTEGER_RANGES


def _only_consumer(consumers: dict, tensor: str, graph: Graph):
    users = consumers.get(tensor, [])
    return users[0] if len(users) == 1 and tensor not in graph.outputs else None


def _dequantized(graph: Graph, producers: dict, tensor: str, *, constant: bool):
    """The DequantizeLinear feeding ``tensor``: (node, its inputs) or None."""
    node = producers.get(tensor)
    if node is None or node.op_type != "DequantizeLinear":
        return None
    if constant != (node.inputs[0] in graph.params):
        return None
    if len(node.inputs) > 2 and node.inputs[2] and node.inputs[2] not in graph.params:
        return None
    if node.inputs[1] not in graph.params:
        return None
    return node


def _scalar(graph: Graph, name: str | None, default=None):
    if not name:
        return default
    value = graph.params[name]
    return value if value.size == 1 else None


def _bias_int32(graph, producers, name, sx, sw, out_channels, new_params, layer):
    """The bias as int32 at scale sx*sw: DequantizeLinear(int32) as it is, a float bias rounded."""
    if not name:
        return None
    dq = _dequantized(graph, producers, name, constant=True)
    if dq is not None and graph.params[dq.inputs[0]].dtype == np.int32:
        return dq.inputs[0]
    if name in graph.params and graph.params[name].dtype.kind == "f":
        scale = np.float32(sx) * np.broadcast_to(np.asarray(sw, np.float32).ravel(), (out_channels,))
        key = f"{layer}.bias_int32"
        new_params[key] = np.rint(graph.params[name].astype(np.float64).ravel() / scale).astype(np.int32)
        return key
    return False  # a bias we cannot express in integers: the layer stays simulated


def integer_graph(graph: Graph) -> tuple[Graph, dict]:
    """``graph`` with its quantized conv/dense chains as integer ops, and a report:
    ``{"integer": [layers], "float": {layer: why}}``."""
    producers = {o: n for n in graph.nodes for o in n.outputs}
    consumers: dict[str, list] = {}
    for n in graph.nodes:
        for i in n.inputs:
            if i:
                consumers.setdefault(i, []).append(n)
    replaced: dict[str, list[Node]] = {}  # first node of a chain -> its replacement
    dropped: set[str] = set()
    new_params: dict[str, np.ndarray] = {}
    report = {"integer": [], "float": {}}
    for node in graph.nodes:
        if graph.ops[node.name].quantized_weight_axis() is None:
            continue
        why = _fuse(graph, node, producers, consumers, replaced, dropped, new_params)
        if why:
            report["float"][node.name] = why
        else:
            report["integer"].append(node.name)
    if not replaced:
        return graph, report
    nodes = []
    for node in graph.nodes:
        if node.name in replaced:
            nodes.extend(replaced[node.name])
        elif node.name not in dropped:
            nodes.append(node)
    nodes = _without_dead(nodes, graph.outputs)
    used = {i for n in nodes for i in n.inputs}
    params = {k: v for k, v in {**graph.params, **new_params}.items() if k in used}
    return Graph(graph.inputs, graph.outputs, nodes, params, name=graph.name, metadata=graph.metadata), report


def _without_dead(nodes: list[Node], outputs) -> list[Node]:
    needed = set(outputs)
    kept = []
    for node in reversed(nodes):
        if any(o in needed for o in node.outputs):
            kept.append(node)
            needed.update(i for i in node.inputs if i)
    return kept[::-1]


def _fuse(graph, node, producers, consumers, replaced, dropped, new_params) -> str | None:
    """Rewrite one Conv/Gemm chain; the reason it stays simulated, or None when rewritten."""
    dq_x = _dequantized(graph, producers, node.inputs[0], constant=False)
    dq_w = _dequantized(graph, producers, node.inputs[1], constant=True)
    if dq_x is None or dq_w is None:
        return "its input or weight is not dequantized from integers"
    sx, zx = _scalar(graph, dq_x.inputs[1]), _scalar(graph, dq_x.inputs[2] if len(dq_x.inputs) > 2 else None,
                                                    np.zeros((), graph.params[dq_x.inputs[0]].dtype)
                                                    if dq_x.inputs[0] in graph.params else None)
    if sx is None:
        return "its input has a per-channel scale"
    wq = graph.params[dq_w.inputs[0]]
    if wq.dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
        return f"its weight is {wq.dtype}, not 8-bit"
    sw = graph.params[dq_w.inputs[1]]
    zw_name = dq_w.inputs[2] if len(dq_w.inputs) > 2 and dq_w.inputs[2] else None
    out_axis = graph.ops[node.name].quantized_weight_axis()
    w_axis = int(graph.ops[dq_w.name].attrs["axis"]) % wq.ndim
    out_channels = wq.shape[out_axis]
    if sw.size != 1 and w_axis != out_axis:
        return "its weight scale is not per output channel"
    bias = _bias_int32(graph, producers, node.inputs[2] if len(node.inputs) > 2 else None, sx, sw, out_channels,
                       new_params, node.name)
    if bias is False:
        return "its bias is neither a DequantizeLinear of int32 nor a float constant"
    # the chain's end: [Relu] -> QuantizeLinear
    chain_end = node
    relu = _only_consumer(consumers, node.outputs[0], graph)
    relu = relu if relu is not None and relu.op_type == "Relu" else None
    if relu is not None:
        chain_end = relu
    quant = _only_consumer(consumers, chain_end.outputs[0], graph)
    if quant is not None and quant.op_type != "QuantizeLinear":
        quant = None
    if quant is not None and (_scalar(graph, quant.inputs[1]) is None or len(quant.inputs) < 3
                              or quant.inputs[2] not in graph.params):
        quant = None
    if zx is None:
        zx_name = None
    else:
        zx_name = dq_x.inputs[2] if len(dq_x.inputs) > 2 and dq_x.inputs[2] else None
    if zx_name is None:
        zx_name = f"{node.name}.x_zero_point"
        new_params[zx_name] = np.zeros((), np.uint8)
    if zw_name is None:
        zw_name = f"{node.name}.w_zero_point"
        new_params[zw_name] = np.zeros((), wq.dtype)
    head = [dq_x.inputs[0], dq_x.inputs[1], zx_name, dq_w.inputs[0], dq_w.inputs[1], zw_name]
    requantize = (quant.inputs[1], quant.inputs[2]) if quant is not None else None
    output = quant.outputs[0] if quant is not None else node.outputs[0]  # a float-output chain keeps its Relu after it
    fused = graph.ops[node.name].integer_node(node.name, head, bias, requantize, output, len(node.inputs) > 2)
    if isinstance(fused, str):
        return fused
    chain = [fused]
    if quant is not None:
        dropped.add(quant.name)
        if relu is not None:
            dropped.add(relu.name)
            zy = graph.params[quant.inputs[2]]
            lo, _ = INTEGER_RANGES[zy.dtype]
            if int(zy) > lo:  # the ReLU is not implied by saturation: clamp at the zero point
                fused.outputs = [f"{node.name}.preclamp"]
                chain.append(Node("Clip", f"{relu.name}", [fused.outputs[0]], [quant.outputs[0]],
                                  {"min": float(zy), "max": None}))
    replaced[node.name] = chain
    return None


def is_quantized(graph: Graph) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.nodes)


def reference_graph(graph: Graph) -> Graph:
    """What the NumPy backend runs as the reference for ``graph``: the integer graph of a
    quantized model, the graph itself otherwise."""
    return integer_graph(graph)[0] if is_quantized(graph) else graph


def output_tolerance(graph: Graph) -> float:
    """The absolute tolerance a compiled quantized model is held to: one unit of the last
    quantization step before each output, carried through what follows it.

    An output that is a DequantizeLinear's is off by at most one of its units when the code
    under test rounds one tie differently; a float output of the last dense layer (QGemm) moves
    by at most ``a_scale * max_c sum_k |w_kc|`` when its whole int8 input is off by one unit.
    """
    integer = reference_graph(graph)
    producers = {o: n for n in integer.nodes for o in n.outputs}
    worst = 0.0
    for name in integer.outputs:
        node = producers.get(name)
        if node is None:
            continue
        if node.op_type == "DequantizeLinear":
            worst = max(worst, float(np.max(integer.params[node.inputs[1]])))
        elif node.op_type == "QGemm":
            w = integer.params[node.inputs[3]].astype(np.float64)
            w = w.T if integer.ops[node.name].attrs["transB"] else w  # (K, N)
            w = w - np.asarray(integer.params[node.inputs[5]], np.float64).reshape(1, -1)
            scale = np.broadcast_to(np.asarray(integer.params[node.inputs[4]], np.float64).ravel(), (w.shape[1],))
            column = np.abs(w).sum(axis=0) * scale
            worst = max(worst, float(integer.params[node.inputs[1]]) * float(column.max()))
    return worst
