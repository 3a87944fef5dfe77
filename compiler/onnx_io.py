"""Graph <-> ONNX ModelProto, through each op's own ``to_onnx`` / ``from_onnx``.

Export writes one ONNX graph per IR graph: parameters become initializers, input and output
names are the user's layer names, the batch dimension stays symbolic unless ``static_batch``
pins it, and ``metadata_props`` carries class labels, input preprocessing and the edgecnn
version. Every export is checked with ``onnx.checker.check_model(full_check=True)`` and ONNX's
shape inference must agree with edgecnn's own shapes for every tensor both know.

Import reads supported ONNX back into the IR. What the importer does itself, because these are
not computations of the inference graph:

- initializers and ``Constant`` / ``ConstantOfShape`` outputs become constants; an op reads the
  constant inputs it needs through ``ctx.constant(name)`` and the constants that are still IR
  inputs afterwards become parameters (float32);
- ``Identity`` and ``Dropout`` are inference no-ops and are removed (consumers rewired; a graph
  output that was an Identity/Dropout output keeps its name);
- nodes whose inputs are all constants are evaluated once with the op's own forward (constant
  folding, as old exporters leave weight transforms in the graph).

Everything that is not supported (unknown op types, opsets outside what an op implements,
non-float inputs) is collected and reported together in one ``UnsupportedOpError``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecnn.runtime.errors import EdgeCNNError, InputError
from edgecnn.runtime.host import edgecnn_version
from edgecnn.runtime.jsonable import jsonable

from .errors import ModelDefinitionError, UnsupportedOpError
from .fileio import write_bytes
from .ir import Graph, Node, TensorSpec
from .onnx_fold import fold_constant_subgraphs
from .onnx_graph import CONSTANT_SOURCES, sorted_nodes, tensor_to_array, uniquely_named
from .ops.base import REGISTRY, RunContext, make_op

DEFAULT_OPSET = 17
PRODUCER_NAME = "edgecnn"
#: metadata_props key holding the version of edgecnn that wrote the file.
VERSION_KEY = "edgecnn_version"
#: graph.metadata keys that are read back from any producer's metadata_props (JSON values).
PORTABLE_METADATA = ("labels", "preprocessing")
#: ONNX ops with no effect at inference; the importer removes them.
INFERENCE_NO_OPS = ("Identity", "Dropout")


def _onnx():
    import onnx

    return onnx


# =============================================================================================
# Export
# =============================================================================================
def fresh_name(base: str, taken: set[str]) -> str:
    """``base`` or ``base_1``, ``base_2``...: the first not in ``taken``, which it then joins."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


class ExportContext:
    """What an op's ``to_onnx`` may use: extra initializers and fresh tensor/node names."""

    def __init__(self, graph: Graph, opset: int):
        self.graph = graph
        self.opset = opset
        self.initializers: dict[str, np.ndarray] = {}
        self._model_names: set[str] = set(graph.shapes) | {n.name for n in graph.nodes}
        self._taken: set[str] = set(self._model_names)

    def unique_name(self, base: str) -> str:
        """``base`` or ``base_1``, ``base_2``...: a name no tensor or node of the model uses."""
        return fresh_name(base, self._taken)

    def add_initializer(self, name: str, array) -> str:
        """Add a constant tensor (e.g. Reshape's shape, Clip's bounds); returns its name."""
        array = np.asarray(array)
        if name in self.initializers or name in self._model_names:
            raise ModelDefinitionError(None, "an op's ONNX mapping added an initializer whose name is taken",
                                       name=name)
        self._taken.add(name)
        self.initializers[name] = array
        return name

    def shape(self, tensor: str):
        """The IR shape of a tensor of the graph being exported."""
        return self.graph.shapes[tensor]


def _value_info(name: str, shape, static_batch: int | None):
    onnx = _onnx()
    dims = []
    for d in shape:
        if isinstance(d, str):
            dims.append(int(static_batch) if static_batch is not None else d)
        else:
            dims.append(int(d))
    return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims)


def check_opsets(graph: Graph, opset: int):
    """Raise one UnsupportedOpError naming every layer whose op cannot be written at ``opset``."""
    onnx = _onnx()
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, (int, np.integer)) or not 1 <= int(opset) <= newest:
        raise InputError(f"opset must be an integer from 1 to {newest} (the newest this onnx "
                         f"{onnx.__version__} knows). Received: opset={opset!r}")
    problems = []
    for node in graph.nodes:
        lo, hi = type(graph.ops[node.name]).onnx_opsets
        if not lo <= opset <= hi:
            problems.append(f"layer '{node.name}' ({node.op_type}) can be written for opsets {lo}..{min(hi, newest)}")
    if problems:
        raise UnsupportedOpError(f"cannot export at opset {opset}: " + "; ".join(problems)
                                 + f". Received: opset={opset}")


def export_model(graph: Graph, opset: int = DEFAULT_OPSET, static_batch: int | None = None,
                 check: bool = True):
    """The ONNX ModelProto of ``graph``.

    ``static_batch`` replaces symbolic (batch) dimensions by a fixed size. With ``check`` the
    model passes ``onnx.checker.check_model(full_check=True)`` and ONNX shape inference must
    reproduce edgecnn's shape of every tensor it can infer.
    """
    onnx = _onnx()
    check_opsets(graph, opset)
    opset = int(opset)
    if static_batch is not None and (not isinstance(static_batch, (int, np.integer)) or static_batch < 1):
        raise InputError(f"static batch must be a positive integer. Received: static_batch={static_batch!r}")
    ctx = ExportContext(graph, opset)
    nodes = []
    for node in graph.nodes:
        op = graph.ops[node.name]
        made = op.to_onnx(list(node.inputs), list(node.outputs), opset, ctx)
        nodes.extend([made] if isinstance(made, onnx.NodeProto) else list(made))

    initializers = [onnx.numpy_helper.from_array(np.asarray(v, dtype=np.float32)
                                                 if np.asarray(v).dtype.kind not in "iu" else np.asarray(v), name=k)
                    for k, v in graph.params.items()]
    initializers += [onnx.numpy_helper.from_array(np.asarray(v), name=k)
                     for k, v in ctx.initializers.items()]
    inputs = [_value_info(s.name, s.shape, static_batch) for s in graph.inputs]
    outputs = [_value_info(o, graph.shapes[o], static_batch) for o in graph.outputs]
    ir_version = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])
    if ir_version < 4:
        # IR version 3 requires every initializer to be listed as a graph input as well.
        inputs += [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in initializers]
    graph_proto = onnx.helper.make_graph(nodes, graph.name, inputs, outputs, initializer=initializers)
    model = onnx.helper.make_model(graph_proto, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name=PRODUCER_NAME, producer_version=edgecnn_version())
    model.ir_version = ir_version
    meta = {VERSION_KEY: edgecnn_version()}
    for key, value in graph.metadata.items():
        if value is not None:
            meta[key] = json.dumps(jsonable(value))
    onnx.helper.set_model_props(model, meta)
    if check:
        check_export(model, graph, static_batch)
    return model


def check_export(model, graph: Graph, static_batch: int | None = None):
    """The checker (full) and ONNX shape inference, compared with edgecnn's shapes."""
    onnx = _onnx()
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelDefinitionError(None, f"the exported ONNX model of '{graph.name}' fails the ONNX checker: "
                                   f"{str(exc).strip().splitlines()[0]}") from None
    known = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    mismatches = []
    for name, shape in graph.shapes.items():
        vi = known.get(name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        ours = [static_batch if isinstance(d, str) else d for d in shape]
        if len(dims) != len(ours) or any(a is not None and b is not None and a != b for a, b in zip(dims, ours)):
            mismatches.append(f"{name}: edgecnn {tuple(shape)}, onnx {tuple(dims)}")
    if mismatches:
        raise ModelDefinitionError(None, "ONNX shape inference disagrees with edgecnn's shapes on export",
                                   tensors=mismatches)


def save_onnx(graph: Graph, path, opset: int = DEFAULT_OPSET, static_batch: int | None = None) -> Path:
    """Export and write atomically; returns the path."""
    model = export_model(graph, opset=opset, static_batch=static_batch)
    path = Path(path)
    write_bytes(path, model.SerializeToString())
    return path


# =============================================================================================
# Import
# =============================================================================================
@dataclass
class ImportContext:
    """What an op's ``from_onnx`` may use: the values of constant tensors."""

    constants: dict[str, np.ndarray]
    opset: int
    #: shapes of the non-constant tensors converted so far (inferred node by node)
    shapes: dict = field(default_factory=dict)

    def constant(self, name: str):
        """The value of an initializer or Constant-node output, or None if ``name`` is computed."""
        return self.constants.get(name)

    def shape(self, name: str):
        """The shape of a tensor converted so far (graph input, constant or earlier node output)."""
        if name in self.constants:
            return tuple(self.constants[name].shape)
        return self.shapes.get(name)


def load_onnx(source):
    """A ModelProto from a path, bytes or a ModelProto, with clear errors for what is not ONNX."""
    onnx = _onnx()
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, (bytes, bytearray)):
        data, where, base = bytes(source), "the given bytes", None
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"ONNX file not found. Received: path='{path}'")
        data, where, base = path.read_bytes(), f"'{path}'", path.parent
    if not data:
        raise InputError(f"{where} is empty, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError and friends: a truncated or foreign file
        raise InputError(f"{where} is not a readable ONNX model (truncated or not ONNX at all): "
                         f"protobuf parsing failed: {exc}") from None
    if model.ir_version < 1 or not model.HasField("graph") or not model.opset_import:
        raise InputError(f"{where} is not an ONNX model: it has no IR version, graph or opset "
                         f"(a truncated file or another format). Received: ir_version={model.ir_version}, "
                         f"nodes={len(model.graph.node)}, opsets={len(model.opset_import)}")
    bad = _non_utf8_text(model, "model")
    if bad is not None:  # protobuf hands such a proto2 string over as bytes, which nothing downstream expects
        raise InputError(f"{where} is corrupted: {bad[0]} is not UTF-8 text. Received: {bad[0]}={bad[1]!r}")
    if base is not None and _has_external_data(model):
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(base))
        except (OSError, ValueError) as exc:
            raise InputError(f"{where}: cannot read its external weight data: {exc}") from None
    return model


def _non_utf8_text(message, where: str):
    """(field path, value) of the first string field of ``message`` (recursively) that is not UTF-8."""
    from google.protobuf.descriptor import FieldDescriptor

    for desc, value in message.ListFields():
        repeated = desc.is_repeated if hasattr(desc, "is_repeated") else desc.label == desc.LABEL_REPEATED
        values = list(value) if repeated else [value]
        for k, v in enumerate(values):
            path = f"{where}.{desc.name}" + (f"[{k}]" if repeated else "")
            if desc.type == FieldDescriptor.TYPE_STRING and isinstance(v, bytes):
                return path, v
            if desc.type == FieldDescriptor.TYPE_MESSAGE:
                found = _non_utf8_text(v, path)
                if found is not None:
                    return found
    return None


def _has_external_data(model) -> bool:
    onnx = _onnx()
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


#: The oldest default-domain opset onnxruntime runs (golden data and ``--backend onnxruntime`` need it).
ONNXRUNTIME_MIN_OPSET = 7


def upgrade_opset(model):
    """``model`` at the lowest opset where edgecnn implements every op it uses and onnxruntime runs
    it: converted with onnx's own ``version_converter`` when its opset is older, else unchanged.

    PyTorch's old exports (opset 6: BatchNormalization, Gemm, PRelu) keep their meaning through the
    converter, which rewrites the attributes and inputs that changed between opsets."""
    opset = model_opset(model)
    needed = max([ONNXRUNTIME_MIN_OPSET] + [REGISTRY[n.op_type].onnx_opsets[0] for n in model.graph.node
                                          if n.domain in ("", "ai.onnx") and n.op_type in REGISTRY])
    if opset >= needed:
        return model
    onnx = _onnx()
    from onnx import version_converter

    model = onnx.ModelProto.FromString(model.SerializeToString())  # the caller's copy stays as it was
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
        ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.input, *inferred.value_info]
                 if v.type.tensor_type.HasField("shape")}
    except Exception:  # noqa: BLE001 - shape inference is a help here, not a requirement
        ranks = {}
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type in REGISTRY:
            REGISTRY[node.op_type].before_opset_upgrade(node, opset, model.graph, ranks)
    try:
        return version_converter.convert_version(model, needed)
    except Exception as exc:  # the converter raises its C++ errors as plain RuntimeError/ValueError
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"the model's opset {opset} is older than edgecnn and onnxruntime read ({needed}), and "
                         f"onnx's version converter cannot upgrade it: {reason}. Received: opset={opset}") from None


def model_opset(model) -> int:
    """The version of the default ONNX operator set (ai.onnx) the model imports."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise UnsupportedOpError("the model imports no version of the default ONNX operator set (ai.onnx). "
                             f"Received: opset_import={[(i.domain, i.version) for i in model.opset_import]}")


def _dtype_name(elem_type: int) -> str:
    onnx = _onnx()
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return str(elem_type)


def _graph_inputs(g, constants: dict, problems: list[str]) -> list[TensorSpec]:
    """The model's real inputs (float32 tensors with known non-batch dimensions).

    Old ONNX lists initializers among the inputs: those are parameters, and their declared shape
    must agree with the data. What edgecnn cannot take is appended to ``problems``.
    """
    onnx = _onnx()
    inputs: list[TensorSpec] = []
    for vi in g.input:
        tt = vi.type.tensor_type
        if vi.name in constants:
            value = constants[vi.name]
            if tt.HasField("shape") and any(d.HasField("dim_value") for d in tt.shape.dim):
                dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
                if len(dims) != value.ndim or any(a is not None and a != b for a, b in zip(dims, value.shape)):
                    raise InputError(f"initializer '{vi.name}' has shape {value.shape} but the graph input of "
                                     f"that name declares {dims}")
            continue
        if not vi.type.HasField("tensor_type"):
            problems.append(f"graph input '{vi.name}' is not a tensor")
            continue
        if tt.elem_type != onnx.TensorProto.FLOAT:
            problems.append(f"graph input '{vi.name}' has element type {_dtype_name(tt.elem_type)} "
                            "(edgecnn models take float32 inputs)")
            continue
        if not tt.HasField("shape"):
            problems.append(f"graph input '{vi.name}' has no shape")
            continue
        shape = []
        for axis, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                shape.append(d.dim_param)
            else:  # an unnamed batch dimension gets the usual symbol
                shape.append("N" if axis == 0 else None)
        if None in shape:
            problems.append(f"graph input '{vi.name}' has an unknown non-batch dimension: shape "
                            f"{tuple('?' if s is None else s for s in shape)}")
            continue
        inputs.append(TensorSpec(vi.name, tuple(shape)))
    return inputs


def import_model(source, name: str | None = None) -> Graph:
    """An IR Graph from an ONNX file path, bytes or ModelProto."""
    onnx = _onnx()
    model = fold_constant_subgraphs(upgrade_opset(load_onnx(source)))
    g = model.graph
    opset = model_opset(model)

    named_nodes = uniquely_named(g.node)
    constants: dict[str, np.ndarray] = {t.name: tensor_to_array(t, "initializer") for t in g.initializer}
    problems: list[str] = [f"sparse initializer '{t.values.name}'" for t in g.sparse_initializer]
    inputs = _graph_inputs(g, constants, problems)

    available = {s.name for s in inputs} | set(constants) | {vi.name for vi in g.input}
    order = sorted_nodes(named_nodes, available)

    # Unsupported ops and opsets, all at once, before converting anything.
    unknown_nodes: list[tuple[str, str]] = []
    wrong_opset: dict[tuple, list[str]] = {}
    for node in order:
        if node.domain not in ("", "ai.onnx"):
            unknown_nodes.append((node.name, f"{node.domain}.{node.op_type}"))
            continue
        if node.op_type in CONSTANT_SOURCES or node.op_type in INFERENCE_NO_OPS:
            continue
        cls = REGISTRY.get(node.op_type)
        if cls is None:
            unknown_nodes.append((node.name, node.op_type))
            continue
        lo, hi = cls.onnx_opsets
        if not lo <= opset <= hi:
            wrong_opset.setdefault((node.op_type, lo, hi), []).append(node.name)
    for (op_type, lo, hi), names in wrong_opset.items():
        problems.append(f"{op_type} at opset {opset} (edgecnn implements its semantics for opsets {lo}..{hi}): "
                        + _listing([(n, op_type) for n in names]))
    if problems or unknown_nodes:
        raise _unsupported(problems, unknown_nodes, opset)

    alias: dict[str, str] = {}  # removed node's output -> the tensor it passes through

    def resolve(t: str) -> str:
        while t in alias:
            t = alias[t]
        return t

    class _Context(ImportContext):
        def constant(self, name):
            return super().constant(resolve(name))

        def shape(self, name):
            return super().shape(resolve(name))

    ctx = _Context(constants=constants, opset=opset, shapes={s.name: s.shape for s in inputs})

    ir_nodes: list[Node] = []
    # What an op's own from_onnx refuses (a configuration it does not implement) is collected too,
    # so one run reports every refused node; nodes downstream of a refused one are not converted.
    refused: list[str] = []
    blocked: set[str] = set()
    consumed = {i for n in order for i in n.input} | {o.name for o in g.output}
    for node in order:
        if any(resolve(i) in blocked for i in node.input if i):
            blocked.update(o for o in node.output if o)
            continue
        try:
            if node.op_type in CONSTANT_SOURCES:
                constants[node.output[0]] = CONSTANT_SOURCES[node.op_type](
                    node, {k: constants[k] for k in node.input if k in constants})
                continue
            if node.op_type in INFERENCE_NO_OPS:
                if any(o in consumed for o in node.output[1:] if o):
                    raise UnsupportedOpError(f"node '{node.name}' ({node.op_type}): its mask output is used, "
                                             f"which only training computes. Received: outputs={list(node.output)}")
                src = resolve(node.input[0])
                if src in constants:
                    constants[node.output[0]] = constants[src]
                else:
                    alias[node.output[0]] = src
                continue
            cls = REGISTRY[node.op_type]
            resolved = onnx.NodeProto()
            resolved.CopyFrom(node)
            del resolved.input[:]
            resolved.input.extend([resolve(i) if i else "" for i in node.input])
            attrs, ins, outs = cls.from_onnx(resolved, opset, ctx)
        except UnsupportedOpError as exc:
            text = str(exc)
            refused.append(text if f"'{node.name}'" in text else f"node '{node.name}' ({node.op_type}): {text}")
            blocked.update(o for o in node.output if o)
            continue
        except EdgeCNNError as exc:
            if f"'{node.name}'" in str(exc):
                raise
            raise type(exc)(f"node '{node.name}' ({node.op_type}): {exc}") from None
        ins = [resolve(i) if i else "" for i in ins]
        ir_node = Node(node.op_type, node.name, ins, list(outs), dict(attrs))
        make_op(ir_node).check_inputs(ir_node.inputs)
        folded = _fold(ir_node, constants)
        if folded is not None:
            constants.update(folded)
            continue
        # Shapes node by node, so later ops' from_onnx can ask ctx.shape() and a bad model
        # fails at the node that breaks a rule.
        op = make_op(ir_node)
        out_shapes = op.infer_shapes([ctx.shape(i) if i else None for i in ir_node.inputs])
        ctx.shapes.update(zip(ir_node.outputs, (tuple(s) for s in out_shapes)))
        ir_nodes.append(ir_node)

    if refused:
        raise _unsupported(refused, [], opset)

    # Graph outputs keep their ONNX names: an output that was passed through a removed node
    # renames the tensor it aliases.
    rename: dict[str, str] = {}
    produced = {o: n for n in ir_nodes for o in n.outputs}
    output_names = [o.name for o in g.output]
    out_problems = []
    for out in output_names:
        src = resolve(out)
        if src == out:
            if out in constants and out not in produced:
                out_problems.append(f"graph output '{out}' is a constant")
            continue
        if src in produced and src not in output_names and src not in rename:
            rename[src] = out
        else:
            out_problems.append(f"graph output '{out}' passes '{src}' through an Identity/Dropout unchanged "
                                "(an edgecnn graph output must be computed by a node)")
    if out_problems:
        raise UnsupportedOpError("; ".join(out_problems))
    for n in ir_nodes:
        n.inputs = [rename.get(i, i) for i in n.inputs]
        n.outputs = [rename.get(o, o) for o in n.outputs]

    readers = {}
    for n in ir_nodes:
        for i in n.inputs:
            readers.setdefault(i, n)
    for k, v in constants.items():
        if k in readers and not (np.issubdtype(v.dtype, np.integer) or np.issubdtype(v.dtype, np.floating)
                                 or v.dtype == np.bool_):
            reader = readers[k]
            raise InputError(f"node '{reader.name}' ({reader.op_type}) reads constant '{k}', which holds "
                             f"{v.dtype} values; edgecnn parameters are real numbers. "
                             f"Received: dtype={v.dtype}, shape={v.shape}")
    params = {k: _param_array(v) for k, v in constants.items() if k in readers}
    metadata = read_metadata(model)
    try:
        return Graph(inputs, output_names, ir_nodes, params, name=name or g.name or "model", metadata=metadata)
    except ModelDefinitionError as exc:
        raise ModelDefinitionError(exc.layer, f"importing ONNX: {exc.rule}", **exc.values) from None


def _listing(nodes: list[tuple[str, str]], limit: int = 25) -> str:
    shown = ", ".join(f"node '{name}' ({op_type})" for name, op_type in nodes[:limit])
    if len(nodes) > limit:
        rest: dict[str, int] = {}
        for _, op_type in nodes[limit:]:
            rest[op_type] = rest.get(op_type, 0) + 1
        shown += f" and {len(nodes) - limit} more (" + ", ".join(f"{k} x{v}" for k, v in rest.items()) + ")"
    return shown


def _unsupported(problems: list[str], unknown_nodes: list[tuple[str, str]], opset: int) -> UnsupportedOpError:
    """One error for everything unsupported; ``op_types`` and ``problems`` keep the structure."""
    parts = []
    if unknown_nodes:
        kinds = sorted({op for _, op in unknown_nodes})
        parts.append(f"{len(unknown_nodes)} node(s) of unsupported op type(s) {', '.join(kinds)}: "
                     + _listing(unknown_nodes))
    parts += problems
    exc = UnsupportedOpError(f"the ONNX model (opset {opset}) cannot be imported: " + "; ".join(parts)
                             + ". Supported ops: " + ", ".join(sorted(REGISTRY)))
    exc.op_types = sorted({op for _, op in unknown_nodes})
    exc.problems = list(problems)
    exc.nodes = list(unknown_nodes)
    return exc


def _param_array(value: np.ndarray) -> np.ndarray:
    """A parameter the graph owns: float32, and writable (training updates it in place; arrays
    read from protobuf memory are read-only views)."""
    if np.issubdtype(value.dtype, np.floating):
        value = np.asarray(value, dtype=np.float32)
    return value if value.flags.writeable else value.copy()


def _fold(ir_node: Node, constants: dict) -> dict | None:
    """Evaluate a node whose inputs are all float constants with the op's own forward."""
    present = [i for i in ir_node.inputs if i]
    if not present or not all(i in constants for i in present):
        return None
    values = [constants[i] if i else None for i in ir_node.inputs]
    if not all(v is None or np.issubdtype(v.dtype, np.floating) for v in values):
        return None
    op = make_op(ir_node)
    op.infer_shapes([None if v is None else tuple(v.shape) for v in values])  # the op's rules, named
    outputs, _ = op.forward([None if v is None else v.astype(np.float32) for v in values], RunContext())
    return dict(zip(ir_node.outputs, outputs))


def read_metadata(model) -> dict:
    """``metadata_props`` as graph metadata: all of ours, only the portable keys of other producers."""
    props = {p.key: p.value for p in model.metadata_props}
    ours = model.producer_name == PRODUCER_NAME
    metadata = {}
    for key, text in props.items():
        if key == VERSION_KEY or (not ours and key not in PORTABLE_METADATA):
            continue
        try:
            metadata[key] = json.loads(text)
        except json.JSONDecodeError:
            if ours:
                metadata[key] = text
    return metadata
