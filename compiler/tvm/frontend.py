"""What is compiled, and its Relax form: a Graph, a saved model, a zoo name or an ONNX file
becomes a static-shape ONNX model (``resolve_model``), which TVM's ONNX importer turns into a
Relax module with the weights bound and constant work folded (``to_relax``).

TVM only ever sees ONNX: our own graphs are exported first, so an external model and a zoo
model take the same road.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from edgecnn.compiler import onnx_io
from edgecnn.compiler.ir import Graph
from edgecnn.compiler.models import load_any
from edgecnn.compiler.onnx_fold import fold_constant_subgraphs
from edgecnn.runtime.errors import EdgeCNNError, InputError, received

from .errors import CompileError, tvm_failure
from .passes import fold_affine_into_conv, fold_static_work, simplify_imported_graph
from .quantized import quantized_arithmetic


@dataclass
class ModelSource:
    """What is compiled: a static-shape ONNX model, plus the IR graph when we have one."""

    onnx_model: object
    name: str
    graph: object | None  # edgecnn Graph, the NumPy reference; None when the importer rejects the model
    graph_note: str = ""  # why there is no graph
    metadata: dict = field(default_factory=dict)
    batch: int = 1  # the static batch every input is pinned to


def model_inputs(model) -> list:
    """The graph inputs that are not initializers: what a caller feeds."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _fixed_batch(dim) -> int | None:
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


def _fixed_batches(model) -> dict[str, int]:
    """Input name -> its fixed batch, for the inputs that fix one."""
    dims = {inp.name: inp.type.tensor_type.shape.dim for inp in model_inputs(model)}
    return {name: b for name, d in dims.items() if len(d) and (b := _fixed_batch(d[0])) is not None}


def fixed_batch(model) -> int | None:
    """The batch an ONNX model's inputs fix (PyTorch exports pin theirs), None when symbolic."""
    fixed = _fixed_batches(model)
    if len(set(fixed.values())) > 1:
        raise InputError(f"the model's inputs fix different batches; edgecnn compiles one batch for all. "
                         f"{received(batches=fixed)}")
    return next(iter(fixed.values()), None)


def pin_batch(model, batch: int | None, *, default: int = 1) -> int:
    """Pin the batch (first) dimension of every input and return it; the other dimensions must
    be static already.

    ``batch`` None takes the model's own fixed batch (PyTorch exports pin theirs), else
    ``default``; a ``batch`` that contradicts a fixed one is an InputError naming both.
    """
    inputs = model_inputs(model)
    for inp in inputs:
        t = inp.type.tensor_type
        if t.elem_type != onnx.TensorProto.FLOAT:
            raise InputError(f"ONNX input '{inp.name}' must be float32. "
                             f"{received(dtype=onnx.TensorProto.DataType.Name(t.elem_type))}")
        if not t.HasField("shape") or len(t.shape.dim) == 0:
            raise InputError(f"ONNX input '{inp.name}' has no shape; edgecnn compiles static shapes")
        dims = list(t.shape.dim)
        for axis, d in enumerate(dims[1:], start=1):
            if _fixed_batch(d) is None:
                raise InputError(f"ONNX input '{inp.name}' has a dynamic dimension at axis {axis}; "
                                 f"edgecnn compiles static shapes. "
                                 f"{received(shape=[x.dim_value or x.dim_param or '?' for x in dims])}")
    fixed = _fixed_batches(model)
    if batch is None:
        batch = fixed_batch(model) or default
    for name, value in fixed.items():
        if value != batch:
            raise InputError(f"ONNX input '{name}' has a fixed batch of {value}, which contradicts the batch "
                             f"asked for ({batch}): drop --batch, or give --batch {value}. "
                             f"{received(batch=batch, fixed_batch=value)}")
    for inp in inputs:
        first = inp.type.tensor_type.shape.dim[0]
        first.ClearField("dim_param")
        first.dim_value = batch
    return batch


def resolve_model(model, *, batch: int | None = None, default_batch: int = 1, opset: int = 17) -> ModelSource:
    """A Graph, a saved-model directory, a zoo name or an ``.onnx`` path -> ModelSource.

    ``batch`` None: an ONNX file's own fixed batch, else ``default_batch`` (see :func:`pin_batch`).
    An ONNX file older than the opsets edgecnn and onnxruntime read is upgraded first
    (``onnx_io.upgrade_opset``), so the IR, TVM and the golden run all see the same model.
    """
    if isinstance(model, (str, Path)) and str(model).lower().endswith(".onnx"):
        path = Path(model)
        if not path.is_file():
            raise InputError(f"ONNX file not found. {received(model=str(model))}")
        proto = onnx_io.upgrade_opset(onnx_io.load_onnx(path))
        pinned = pin_batch(proto, batch, default=default_batch)
        proto = fold_constant_subgraphs(proto)  # shapes are static now: every shape subgraph folds
        graph, note = None, ""
        try:
            graph = onnx_io.import_model(proto, name=path.stem)
        except EdgeCNNError as exc:  # an op the IR lacks: onnxruntime gives the reference instead
            note = str(exc)
        metadata = dict(graph.metadata) if graph is not None else onnx_io.read_metadata(proto)
        return ModelSource(proto, path.stem, graph, note, metadata, pinned)
    graph = model if isinstance(model, Graph) else load_any(str(model))
    pinned = batch if batch is not None else (graph.fixed_batch() or default_batch)
    proto = onnx_io.export_model(graph, opset=opset, static_batch=pinned)
    return ModelSource(proto, graph.name, graph, "", dict(graph.metadata), pinned)


def to_relax(onnx_model):
    """ONNX -> a legalized Relax IRModule, weights bound and constant work (shape arithmetic on
    static shapes too) folded.

    Unsupported ops are named together in one CompileError.
    """
    try:
        mod = from_onnx(onnx_model, keep_params_in_input=False, sanitize_input_names=False)
    except tvm.error.OpNotImplemented as exc:
        ops = sorted(set(re.findall(r"[A-Za-z_][\w.]*", str(exc).split(":", 1)[-1])))
        nodes = [f"{n.name or '<unnamed>'} ({n.op_type})" for n in onnx_model.graph.node if n.op_type in ops]
        raise CompileError(f"TVM's ONNX importer does not support op(s) {', '.join(ops)}; "
                           f"nodes: {', '.join(nodes[:8])}{' ...' if len(nodes) > 8 else ''}") from None
    except EdgeCNNError:
        raise
    except Exception as exc:  # TVM's importer raises plain and TVM-internal errors alike
        raise tvm_failure("TVM's ONNX importer", None, exc) from None
    inference = tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        simplify_imported_graph(),
        relax.transform.DeadCodeElimination(),
        relax.transform.CanonicalizeBindings(),
        # QDQ chains as integer arithmetic, while dequantize(constant) is still in sight
        quantized_arithmetic(),
    ])
    try:
        return fold_affine_into_conv(fold_static_work(inference(mod)))
    except Exception as exc:  # an InternalError in a rewrite or a constant fold
        raise tvm_failure("the Relax graph rewrites", None, exc) from None
