"""Shape subgraphs folded on the ONNX graph, before either road imports it.

Exporters compute reshape targets, pads and slice bounds at run time: PyTorch's channel shuffle
is ``Shape -> Gather -> Div -> Concat -> Reshape``, a reflect pad of a traced module is
``Slice/Transpose/Cast`` on its pads. Where the shapes are static those values are constants,
and :func:`fold_constant_subgraphs` replaces every node whose inputs are all known by an
initializer holding its output, so the IR and TVM see static reshapes, pads and slices.

The nodes are evaluated by onnx's own ``ReferenceEvaluator`` (the spec's executable semantics,
no second implementation of any op here) and ``Shape``/``Size`` are read from onnx's shape
inference. A ``Shape`` of a tensor with a symbolic batch is partly known: ``Gather``, ``Slice``,
``Concat`` and ``(Un)squeeze`` move its entries symbolically, what picks only static entries
folds, and a ``Reshape`` target whose symbolic entry is the data's own batch becomes a constant
with 0 there ("copy that dimension"), which is what ``x.view(x.size(0), -1)`` means.
Quantization, random and control-flow ops are never folded (a QDQ model keeps its structure).

onnxsim and onnxslim do this too, but fuse and rewrite other patterns on the way, pull in
compiled or large dependencies, and would be a second source of truth for op semantics.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .onnx_graph import constant_node_value, tensor_to_array

#: Never evaluated ahead of time: quantization keeps its QDQ structure for the integer kernels,
#: random ops must draw at run time, control flow carries subgraphs.
NEVER_FOLD = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
    "If", "Loop", "Scan",
})
#: Pass-throughs that the importers already resolve without copying a (possibly large) constant.
PASS_THROUGH = frozenset({"Identity"})
#: A folded output larger than this stays computed: folding must not bloat the file.
MAX_FOLDED_ELEMENTS = 1 << 22
#: Ops that only move entries (of their first input; Concat: of every input), and so may be
#: evaluated on shape vectors with symbolic entries.
MOVES_ENTRIES = frozenset({"Gather", "Slice", "Concat", "Unsqueeze", "Squeeze"})
# Constant inputs up to this size are kept when shape inference looks at the graph (it reads
# reshape targets and the like); larger weights are passed by type only, which is all it needs.
_SMALL_CONSTANT = 4096


def _default_domain(node) -> bool:
    return node.domain in ("", "ai.onnx")


def _static_shapes(model) -> dict:
    """Tensor name -> tuple of dims from onnx's shape inference: int, the symbol's name (str), or
    None where nothing is known."""
    import onnx

    light = _without_big_weights(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True).graph
    except Exception:  # noqa: BLE001 - a model shape inference rejects simply folds less
        inferred = light.graph
    shapes = {}
    for vi in [*inferred.input, *inferred.value_info, *inferred.output]:
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and t.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                    for d in t.shape.dim)
    for t in model.graph.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
    return shapes


def _without_big_weights(model):
    """A copy of ``model`` whose large initializers are typed graph inputs instead."""
    import onnx

    light = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import)
    light.graph.CopyFrom(onnx.GraphProto(name=model.graph.name, node=model.graph.node,
                                         input=model.graph.input, output=model.graph.output,
                                         value_info=model.graph.value_info))
    declared = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        if int(np.prod(t.dims)) <= _SMALL_CONSTANT:
            light.graph.initializer.append(t)
        elif t.name not in declared:
            light.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


def _evaluate(node, values: list, opset: int) -> list[np.ndarray] | None:
    """``node``'s outputs for constant ``values``, by onnx's reference evaluator at ``opset`` (a
    one-node model: an evaluator given the bare node would apply the newest version of its op).

    None when the evaluator fails: the node stays, and the importer (or TVM) that meets it says
    what is wrong in its own terms, instead of the evaluator's limits refusing a valid model."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    feeds = {name: value for name, value in zip(node.input, values) if name}
    graph = onnx.helper.make_graph(
        [node], "fold", [onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(
            np.asarray(v).dtype), None) for name, v in feeds.items()],
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None) for name in node.output if name])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        outputs = ReferenceEvaluator(model).run(None, feeds)
    except Exception:  # noqa: BLE001 - the evaluator raises whatever NumPy raises
        return None
    return [np.asarray(o) for o in outputs]


@dataclass(frozen=True)
class _Dim:
    """An entry of a shape vector that is not a number: dimension ``axis`` of ``tensor``, named
    ``param`` by shape inference (the symbolic batch ``N``) or None when nothing is known."""

    tensor: str
    axis: int
    param: str | None


def _shape_entries(node, dims) -> list | None:
    """A ``Shape`` node's output, entry by entry (int or _Dim), honouring opset 15's start/end."""
    import onnx

    if dims is None:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    entries = [d if isinstance(d, int) else _Dim(node.input[0], axis, d) for axis, d in enumerate(dims)]
    return entries[slice(attrs.get("start", 0), attrs.get("end"))]


def _move_entries(node, inputs: list, opset: int) -> np.ndarray | None:
    """Evaluate a data-movement op (MOVES_ENTRIES) on vectors whose entries may be symbolic: each
    entry of the moved inputs is replaced by its index in one table, the op is evaluated by the
    reference evaluator on those indices, and the indices it returns are looked up again."""
    table: list = []
    coded = []
    for position, value in enumerate(inputs):
        if value is not None and _is_moved(node, position):
            flat = np.asarray(value, dtype=object).reshape(-1)
            codes = np.arange(len(table), len(table) + flat.size, dtype=np.int64).reshape(np.shape(value))
            table.extend(int(v) if isinstance(v, (int, np.integer)) else v for v in flat)
            coded.append(codes)
        else:
            coded.append(value)
    picked = _evaluate(node, coded, opset)
    if picked is None:
        return None
    picked = picked[0]
    return np.asarray([table[i] for i in picked.reshape(-1)], dtype=object).reshape(picked.shape)


def _is_moved(node, position: int) -> bool:
    return node.op_type == "Concat" or position == 0


def _reshape_target(entries: np.ndarray, data_dims) -> np.ndarray | None:
    """A Reshape target with symbolic entries as a constant one: an entry that is the data's own
    dimension at the same position becomes 0 ("copy it", allowzero=0), as ``x.view(x.size(0), -1)``
    means. None when an entry is anything else."""
    target = []
    for position, entry in enumerate(entries.reshape(-1)):
        if isinstance(entry, int):
            target.append(entry)
        elif (entry.param is not None and data_dims is not None and position < len(data_dims)
              and entry.axis == position and data_dims[position] == entry.param):
            target.append(0)
        else:
            return None
    return np.asarray(target, dtype=np.int64)


def fold_constant_subgraphs(model):
    """``model`` with its constant-computable nodes replaced by initializers (a copy), or
    ``model`` itself when nothing folds.

    A Reshape given a constant target has a shape that inference could not see before, and the
    next shape computation may read it (ShuffleNet's units chain so): passes repeat until one
    folds nothing."""
    for _ in range(len(model.graph.node) + 1):
        folded = _fold_once(model)
        if folded is model:
            return model
        model = folded
    return model


def _fold_once(model):
    import onnx

    g = model.graph
    opset = next((int(i.version) for i in model.opset_import if i.domain in ("", "ai.onnx")), None)
    if opset is None or not _may_fold(g):  # without the default opset the importer says what is wrong
        return model
    initializers = {t.name: t for t in g.initializer}
    # Constant tensors: name -> array, or None until a folded node reads it (weights are large and
    # mostly never read here); pass-throughs alias their source instead of copying it.
    known: dict[str, np.ndarray | None] = dict.fromkeys(initializers)
    alias: dict[str, str] = {}

    def value(name):
        name = alias.get(name, name)
        if known.get(name) is None and name in initializers:
            known[name] = tensor_to_array(initializers[name], "initializer")
        return known.get(name)

    shapes = _static_shapes(model)
    symbolic: dict[str, np.ndarray] = {}  # shape vectors with symbolic entries (object arrays)
    folded: dict[str, np.ndarray] = {}
    folded_nodes: set[int] = set()
    retargeted: dict[int, str] = {}  # Reshape node -> the constant target that replaces its input
    shape_work: set[int] = set()  # nodes computing symbolic shape vectors: dropped once unused
    for index, node in enumerate(g.node):
        if not _default_domain(node) or node.op_type in NEVER_FOLD:
            continue
        if node.op_type == "Constant":
            known[node.output[0]] = constant_node_value(node)
            continue
        if node.op_type in PASS_THROUGH:
            if node.input and node.input[0] in symbolic:
                symbolic[node.output[0]] = symbolic[node.input[0]]
            elif node.input and node.input[0] in known:
                alias[node.output[0]] = alias.get(node.input[0], node.input[0])
                known[node.output[0]] = None
            continue
        outputs = None
        entries = None  # the output as an object array when some of its entries are symbolic
        if node.op_type in ("Shape", "Size"):
            dims = shapes.get(node.input[0])
            if node.op_type == "Size":
                outputs = [np.asarray(int(np.prod(dims)), np.int64)] if _static(dims) else None
            elif (shape := _shape_entries(node, dims)) is not None:
                entries = np.asarray(shape, dtype=object)
        elif (node.op_type in MOVES_ENTRIES and any(i in symbolic for i in node.input)
              and all(not i or i in known or i in symbolic for i in node.input)):
            entries = _move_entries(node, [symbolic[i] if i in symbolic else value(i) if i else None
                                           for i in node.input], opset)
            if entries is None:
                continue
        elif node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in symbolic:
            target = _reshape_target(symbolic[node.input[1]], shapes.get(node.input[0]))
            if target is not None and not _attribute(node, "allowzero", 0):
                retargeted[index] = f"{node.output[0]}::target"
                folded[retargeted[index]] = target
            continue
        elif node.input and all(not i or i in known for i in node.input):
            outputs = _evaluate(node, [value(i) if i else None for i in node.input], opset)
        if entries is not None:
            if all(isinstance(e, int) for e in entries.reshape(-1)):
                outputs = [entries.astype(np.int64)]
            else:
                symbolic[node.output[0]] = entries
                shape_work.add(index)
                continue
        if outputs is None or sum(o.size for o in outputs) > MAX_FOLDED_ELEMENTS:
            continue
        for name, out in zip(node.output, outputs):
            if name:
                known[name] = folded[name] = out
        folded_nodes.add(index)

    if not folded:
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    for index, target in retargeted.items():
        result.graph.node[index].input[1] = target
    kept = [(n, i in shape_work) for i, n in enumerate(result.graph.node) if i not in folded_nodes]
    del result.graph.node[:]
    result.graph.node.extend(_without_dead_constants(kept, result.graph))
    result.graph.initializer.extend(onnx.numpy_helper.from_array(v, name) for name, v in folded.items())
    _drop_unused_initializers(result.graph)
    return result


def _static(dims) -> bool:
    return dims is not None and all(isinstance(d, int) for d in dims)


def _attribute(node, name: str, default):
    import onnx

    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _may_fold(graph) -> bool:
    """Whether any node reads a shape or only constants: most models have neither, and skip the rest."""
    constant = {t.name for t in graph.initializer}
    for node in graph.node:
        if not _default_domain(node) or node.op_type in NEVER_FOLD:
            continue
        if node.op_type in ("Shape", "Size"):
            return True
        if node.op_type == "Constant" or node.op_type in PASS_THROUGH:
            if node.op_type == "Constant" or (node.input and node.input[0] in constant):
                constant.update(node.output)
            continue
        if node.input and all(not i or i in constant for i in node.input):
            return True
    return False


def _consumed(nodes, graph) -> set[str]:
    return {i for n in nodes for i in n.input if i} | {o.name for o in graph.output}


def _without_dead_constants(nodes, graph) -> list:
    """The nodes of (node, computes a shape) pairs, without the Constant, pass-through and shape
    nodes that only fed folded nodes."""
    nodes = list(nodes)
    while True:
        used = _consumed([n for n, _ in nodes], graph)
        alive = [(n, shape) for n, shape in nodes
                 if not (shape or n.op_type in ("Constant", *PASS_THROUGH)) or any(o in used for o in n.output)]
        if len(alive) == len(nodes):
            return [n for n, _ in nodes]
        nodes = alive


def _drop_unused_initializers(graph):
    """Initializers nothing reads any more (the folded nodes' inputs); those that are declared
    graph inputs too (IR version < 4 models) stay, as callers may feed them."""
    used = _consumed(graph.node, graph) | {i.name for i in graph.input}
    kept = [t for t in graph.initializer if t.name in used]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)
