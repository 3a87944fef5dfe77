"""ONNX -> Relax -> the preset's pipeline -> ``tvm.compile`` -> ``export_library`` -> a bundle.

TVM only ever sees ONNX: our own graphs are exported first, so an external model and a zoo
model take the same road. The result is a bundle directory (DESIGN.md):

- ``model.so``       the executable, linked for the preset (cross-linked for aarch64);
- ``manifest.json``  inputs, outputs, batch, the full target, versions, SHA-256 of the files,
                     labels and preprocessing when known, whether tuning records were applied;
- ``golden.npz``     seeded sample inputs and reference outputs: from the NumPy backend when the
                     model imports into the IR, from onnxruntime otherwise (the manifest says which);
- ``model.onnx``     the exact model compiled (static batch).

The bundle is assembled in a temporary sibling directory and renamed into place, so a compile
that fails leaves no half bundle and an older bundle at that path untouched.

Bundles are compiled for one static batch (the runtime splits larger batches).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecnn.runtime.bundle import seal_manifest, sha256_file
from edgecnn.runtime.errors import EdgeCNNError, InputError, received
from edgecnn.targets import Preset, get_preset

from .fileio import atomic_dir

BUNDLE_FORMAT_VERSION = 1
GOLDEN_SEED = 0
GOLDEN_RTOL = 1e-4
GOLDEN_ATOL = 1e-4


class CompileError(EdgeCNNError):
    """A model TVM cannot import or compile for the preset, named with the reason."""


# -- the pipelines ---------------------------------------------------------------------------------
# One function per device kind: each returns the Relax pass sequence run under the target.
# Tuning records in the current MetaSchedule database are applied by the zero pipeline itself,
# before any schedule rule runs (rules skip functions already marked as scheduled).

def _graph_passes():
    """Operator fusion over the legalized module :func:`to_relax` returns (no schedules yet)."""
    from tvm import relax

    return [relax.get_pipeline("zero")]


def cpu_pipeline(target):
    """The Relax pass sequence for CPU presets (x86-64 and aarch64)."""
    import tvm

    from .schedules.cpu import cpu_passes

    return tvm.transform.Sequential(cpu_passes(target), name="edgecnn_cpu_pipeline")


def gpu_pipeline(target):
    """The Relax pass sequence for CUDA presets: dlight's GPU rules, ending in Fallback.

    Without a GPU schedule a function would silently stay on the host CPU; Fallback gives
    every remaining function a thread binding, and :func:`check_gpu_scheduled` makes sure.
    """
    import tvm
    from tvm.s_tir import dlight

    rules = dlight.ApplyDefaultSchedule(
        dlight.gpu.Matmul(), dlight.gpu.GEMV(), dlight.gpu.Reduction(), dlight.gpu.GeneralReduction(),
        dlight.gpu.Fallback(),
    )
    return tvm.transform.Sequential([*_graph_passes(), rules], name="edgecnn_gpu_pipeline")


PIPELINES = {"cpu": cpu_pipeline, "cuda": gpu_pipeline}


def _cpu_graph_passes(target):
    from .schedules.cpu import cpu_graph_stage

    return cpu_graph_stage(target)


def _gpu_graph_passes(target):
    return _graph_passes()


GRAPH_STAGES = {"cpu": _cpu_graph_passes, "cuda": _gpu_graph_passes}


def graph_stage(preset: Preset, target):
    """Legalized and fused, before any schedule: where tuning tasks are extracted from.

    For CPU presets that is the blocked-layout module the default rules schedule, so tuning
    records are keyed by the very functions they are applied to.
    """
    import tvm

    return tvm.transform.Sequential(GRAPH_STAGES[preset.device](target), name="edgecnn_graph_stage")


def prim_funcs(mod) -> dict:
    import tvm

    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def check_gpu_scheduled(mod, preset: Preset) -> None:
    """Every TensorIR function is bound to GPU threads, or a CompileError names those that are not."""
    left = sorted(name for name, f in prim_funcs(mod).items() if "T.thread_binding(" not in f.script())
    if left:
        raise CompileError(
            f"preset '{preset.name}': {len(left)} function(s) have no GPU schedule and would run on the "
            f"host CPU: {', '.join(left[:8])}{' ...' if len(left) > 8 else ''}")


# -- the built library -----------------------------------------------------------------------------

def imported_modules(library, kind: str) -> list:
    """Runtime modules of ``kind`` (e.g. ``"cuda"``) anywhere in the library's import tree."""
    found, stack = [], [library]
    while stack:
        m = stack.pop()
        if m.kind == kind:
            found.append(m)
        stack.extend(m.imports)
    return found


_KERNEL_RE = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\(\d+\)\s+)?(\w+)\s*\(")


def cuda_source(library) -> str:
    """The CUDA C source a GPU library carries (compiled on the device when loaded)."""
    modules = imported_modules(library, "cuda")
    if not modules:
        raise CompileError("the library holds no CUDA module")
    return "\n".join(m.inspect_source() for m in modules)


def cuda_kernel_names(source: str) -> set[str]:
    return set(_KERNEL_RE.findall(source))


# -- the model -------------------------------------------------------------------------------------

@dataclass
class ModelSource:
    """What is compiled: a static-shape ONNX model, plus the IR graph when we have one."""

    onnx_model: object
    name: str
    graph: object | None  # edgecnn Graph, the NumPy reference; None when the importer rejects the model
    graph_note: str = ""  # why there is no graph
    metadata: dict = field(default_factory=dict)


def _onnx_float_inputs(model) -> list:
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _fix_batch(model, batch: int):
    """Pin the batch (first) dimension of every input; other dimensions must be static already."""
    import onnx

    for inp in _onnx_float_inputs(model):
        t = inp.type.tensor_type
        if t.elem_type != onnx.TensorProto.FLOAT:
            raise InputError(f"ONNX input '{inp.name}' must be float32. "
                             f"{received(dtype=onnx.TensorProto.DataType.Name(t.elem_type))}")
        if not t.HasField("shape") or len(t.shape.dim) == 0:
            raise InputError(f"ONNX input '{inp.name}' has no shape; edgecnn compiles static shapes")
        dims = list(t.shape.dim)
        first = dims[0]
        if first.HasField("dim_value") and first.dim_value > 0 and first.dim_value != batch:
            raise InputError(f"ONNX input '{inp.name}' has a fixed batch of {first.dim_value}; "
                             f"compile it with --batch {first.dim_value}. {received(batch=batch)}")
        for axis, d in enumerate(dims[1:], start=1):
            if not (d.HasField("dim_value") and d.dim_value > 0):
                raise InputError(f"ONNX input '{inp.name}' has a dynamic dimension at axis {axis}; "
                                 f"edgecnn compiles static shapes. "
                                 f"{received(shape=[x.dim_value or x.dim_param or '?' for x in dims])}")
        first.ClearField("dim_param")
        first.dim_value = batch
    return model


def _metadata_from_onnx(model) -> dict:
    metadata = {}
    for prop in model.metadata_props:
        if prop.key in ("labels", "preprocessing"):
            try:
                metadata[prop.key] = json.loads(prop.value)
            except json.JSONDecodeError:
                pass
    return metadata


def resolve_model(model, *, batch: int = 1, opset: int = 17) -> ModelSource:
    """A Graph, a saved-model directory, a zoo name or an ``.onnx`` path -> ModelSource."""
    import onnx

    from .ir import Graph
    from . import onnx_io

    if isinstance(model, (str, Path)) and str(model).lower().endswith(".onnx"):
        path = Path(model)
        if not path.is_file():
            raise InputError(f"ONNX file not found. {received(model=str(model))}")
        try:
            proto = onnx.load(str(path))
        except Exception as exc:
            raise InputError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
        _fix_batch(proto, batch)
        graph, note = None, ""
        try:
            graph = onnx_io.import_model(proto, name=path.stem)
        except EdgeCNNError as exc:  # an op the IR lacks: onnxruntime gives the reference instead
            note = str(exc)
        metadata = dict(graph.metadata) if graph is not None else _metadata_from_onnx(proto)
        return ModelSource(proto, path.stem, graph, note, metadata)
    if isinstance(model, Graph):
        graph = model
    else:
        from .models import load_any

        graph = load_any(str(model))
    proto = onnx_io.export_model(graph, opset=opset, static_batch=batch)
    return ModelSource(proto, graph.name, graph, "", dict(graph.metadata))


def _opset_of(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def _call_tir_op():
    import tvm

    return tvm.ir.Op.get("relax.call_tir")


# Elements computed by a fold above which its loops are worth optimizing (see _build_fold_library).
_FOLD_OPTIMIZE_ELEMENTS = 1 << 20


def _build_fold_library(kernels: dict, elements: int):
    """The PrimFuncs ``kernels`` (name -> function), built for this CPU and loaded.

    The loops run once, unscheduled: per-channel statistics build fastest at LLVM's -O0, while
    repacking whole weights (``elements`` computed in all) runs 6x faster at -O1, which builds
    in half the default's time (ResNet-50: 0.5 s and 1.5 s for its two folds, against 1.4 s and
    2.6 s). The library goes through a shared object because loading one takes 0.1 s, where
    LLVM's JIT spends 0.5 s on even a few small functions.
    """
    import tempfile

    import tvm

    module = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in kernels.items()})
    opt_level = 1 if elements > _FOLD_OPTIMIZE_ELEMENTS else 0
    built = tvm.tirx.build(module, target=tvm.target.Target({"kind": "llvm", "opt-level": opt_level}))
    with tempfile.TemporaryDirectory(prefix="edgecnn-fold-") as tmp:
        path = str(Path(tmp) / "fold.so")
        try:
            built.export_library(path)
        except Exception:  # no host C++ compiler to link with: the JIT is slower, not wrong
            return built
        return tvm.runtime.load_module(path)


def _static_shape(ty) -> list[int] | None:
    """The dimensions of a tensor type known at compile time, else None."""
    import tvm
    from tvm import relax

    shape = getattr(ty, "shape", None) if isinstance(ty, relax.TensorType) else None
    if shape is None or not hasattr(shape, "values") or not all(isinstance(d, tvm.tirx.IntImm) for d in shape.values):
        return None
    return [int(d) for d in shape.values]


def _op_name(expr) -> str | None:
    """The name of the Relax op ``expr`` calls (``relax.add``, ...), None for anything else."""
    import tvm
    from tvm import relax

    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else None


def fold_constants(mod):
    """Evaluate every computation on constants alone, in one compiled library, and bind the results.

    Relax's ``FoldConstant`` builds and runs one small module per constant call: with BatchNorm
    statistics, Clip bounds and ``ConstantOfShape`` weights that is hundreds of LLVM builds
    (27 s of a 35 s ResNet-50 compile, measured). Here the PrimFuncs of every ``call_tir`` whose
    arguments are constants, or results of such calls, are built once for this CPU and called in
    binding order on the constants' own tensors (no Relax VM: its set-up copies every weight,
    0.6 s for ResNet-50); ``main`` then takes the results as constants. Expects a legalized module.
    """
    import tvm
    from tvm import relax

    main = mod["main"]
    call_tir = _call_tir_op()
    foldable: dict = {}  # var -> its call, in binding order
    kept_values = [main.body.body]
    for block in main.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if (isinstance(binding, relax.VarBinding) and isinstance(value, relax.Call) and value.op.same_as(call_tir)
                    and len(value.args) == 2 and _static_shape(value.ty) is not None
                    and all(isinstance(a, tvm.ir.expr.Constant) or a in foldable for a in value.args[1].fields)):
                foldable[binding.var] = value
            else:
                kept_values.append(value)
    used = {v for expr in kept_values for v in relax.analysis.free_vars(expr)}
    if not any(v in used for v in foldable):
        return mod

    shapes = {var: _static_shape(call.ty) for var, call in foldable.items()}
    library = _build_fold_library({call.args[0].name_hint: mod[call.args[0]] for call in foldable.values()},
                                  elements=sum(math.prod(shape) for shape in shapes.values()))
    device = tvm.cpu()
    values: dict = {}
    for var, call in foldable.items():
        args = [a.value if isinstance(a, tvm.ir.expr.Constant) else values[a] for a in call.args[1].fields]
        values[var] = tvm.runtime.empty(shapes[var], call.ty.dtype, device)
        library[call.args[0].name_hint](*args, values[var])
    constants = {v: relax.const(values[v]) for v in foldable if v in used}

    @relax.expr_functor.mutator
    class _BindFolded(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            if binding.var not in foldable:
                self.builder_.emit_normalized(relax.VarBinding(binding.var, self.visit_expr(binding.value)))

        def visit_dataflow_var_(self, var):
            return constants.get(var, var)

        def visit_var_(self, var):
            return constants.get(var, var)

    new_main = _BindFolded(mod).visit_expr(main)
    mod = tvm.IRModule({gv: (new_main if gv.name_hint == "main" else f) for gv, f in mod.functions.items()})
    return relax.transform.DeadCodeElimination(["main"])(mod)


def to_relax(onnx_model):
    """ONNX -> a legalized Relax IRModule, weights bound and constant work folded.

    Unsupported ops are named together in one CompileError.
    """
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    try:
        mod = from_onnx(onnx_model, keep_params_in_input=False, sanitize_input_names=False)
    except tvm.error.OpNotImplemented as exc:
        ops = sorted(set(re.findall(r"[A-Za-z_][\w.]*", str(exc).split(":", 1)[-1])))
        nodes = [f"{n.name or '<unnamed>'} ({n.op_type})" for n in onnx_model.graph.node if n.op_type in ops]
        raise CompileError(f"TVM's ONNX importer does not support op(s) {', '.join(ops)}; "
                           f"nodes: {', '.join(nodes[:8])}{' ...' if len(nodes) > 8 else ''}") from None
    except EdgeCNNError:
        raise
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise CompileError(f"TVM's ONNX importer rejected the model ({type(exc).__name__}: {first_line})") from None
    inference = tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        simplify_imported_graph(),
        relax.transform.DeadCodeElimination(),
        relax.transform.CanonicalizeBindings(),
        legalize_constant_work(),
    ])
    return fold_affine_into_conv(fold_constants(inference(mod)))


# How an elementwise op with a per-channel constant c maps y = a * x + b (the constant may sit on
# either side of add and multiply, only on the right of divide; subtract works both ways).
_AFFINE_STEPS = {
    "relax.add": lambda a, b, c, left: (a, b + c),
    "relax.multiply": lambda a, b, c, left: (a * c, b * c),
    "relax.subtract": lambda a, b, c, left: (a, b - c) if left else (-a, c - b),
    "relax.divide": lambda a, b, c, left: (a / c, b / c) if left else None,
}


def _per_channel(constant, channels: int):
    """The constant as a vector over NCHW's channels, or None if it varies along another axis."""
    import tvm

    if not isinstance(constant, tvm.ir.expr.Constant):
        return None
    values = constant.value.numpy().astype(np.float64)
    if values.ndim > 4:
        return None
    shape = (1,) * (4 - values.ndim) + values.shape
    if shape[0] != 1 or shape[2] != 1 or shape[3] != 1 or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(values.reshape(shape)[0, :, 0, 0], (channels,))


def fold_affine_into_conv(mod):
    """Fold per-channel scales and shifts that follow a convolution into its weights and one bias
    add: BatchNorm at inference, (x - mean) / sqrt(var + eps) * gamma + beta, becomes
    conv(x, W * gamma / sqrt(var + eps)) + b'. Saves four elementwise passes (one of them a
    division) per conv, as onnxruntime does. Only chains whose intermediate results have no
    other user are folded, and only into float32 NCHW/OIHW convs with constant weights."""
    import tvm
    from tvm import relax

    main = mod["main"]
    uses: dict = {}
    bound: dict = {}
    for block in main.body.blocks:
        for binding in block.bindings:
            bound[binding.var] = binding.value
            for var in relax.analysis.free_vars(binding.value):
                uses.setdefault(var, []).append(binding.var)
    for var in relax.analysis.free_vars(main.body.body):
        uses.setdefault(var, []).append(None)

    rewrites: dict = {}  # conv var -> (new weight, shift vector, last var of the chain, vars dropped)
    for var, value in bound.items():
        if _op_name(value) != "relax.nn.conv2d" or not isinstance(value.args[1], tvm.ir.expr.Constant):
            continue
        attrs = value.attrs
        if (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) != ("NCHW", "OIHW", "NCHW") \
                or _static_shape(value.ty) is None or str(value.ty.dtype) != "float32":
            continue
        channels = _static_shape(value.ty)[1]
        scale, shift = np.ones(channels), np.zeros(channels)
        chain, current = [], var
        while len(uses.get(current, [])) == 1 and uses[current][0] is not None:
            user = uses[current][0]
            step = _AFFINE_STEPS.get(_op_name(bound[user]))
            args = bound[user].args if step else ()
            # exactly one operand is the running value, and the op does not broadcast it
            if len(args) != 2 or args[0].same_as(current) == args[1].same_as(current) \
                    or _static_shape(bound[user].ty) != _static_shape(value.ty):
                break
            left = args[0].same_as(current)
            constant = _per_channel(args[1] if left else args[0], channels)
            stepped = None if constant is None else step(scale, shift, constant, left)
            if stepped is None:
                break
            scale, shift = stepped
            chain.append(user)
            current = user
        if chain:
            weight = value.args[1].value.numpy()
            folded = (weight.astype(np.float64) * scale.reshape(-1, 1, 1, 1)).astype(weight.dtype)
            rewrites[var] = (folded, shift.astype(weight.dtype), chain[-1], set(chain[:-1]))
    if not rewrites:
        return mod
    finals = {last: (conv, shift) for conv, (_, shift, last, _) in rewrites.items()}
    dropped = set().union(*(drop for *_, drop in rewrites.values()))

    @relax.expr_functor.mutator
    class _FoldAffine(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            var = binding.var
            if var in dropped:
                return
            if var in rewrites:
                conv = binding.value
                weight = relax.const(rewrites[var][0])
                new = relax.Call(conv.op, [self.visit_expr(conv.args[0]), weight], conv.attrs)
                self.builder_.emit_normalized(relax.VarBinding(var, self.builder_.normalize(new)))
            elif var in finals:
                conv_var, shift = finals[var]
                bias = relax.const(shift.reshape(1, -1, 1, 1))
                biased = self.builder_.normalize(relax.op.add(conv_var, bias))
                self.builder_.emit_normalized(relax.VarBinding(var, biased))
            else:
                self.builder_.emit_normalized(relax.VarBinding(var, self.visit_expr(binding.value)))

    new_main = _FoldAffine(mod).visit_expr(main)
    return tvm.IRModule({gv: (new_main if gv.name_hint == "main" else f) for gv, f in mod.functions.items()})


def simplify_imported_graph():
    """Undo two shapes TVM's ONNX importer gives ops, which no layout pass can move through:

    - ``Sum`` as ``sum(stack(broadcast_to(x_i)), axis=0)``, which copies every input into a
      stacked tensor, becomes a chain of ``add``. ResNet-50's 16 residual additions came out
      that way: each one converted to NCHW and back around an unblocked add and ReLU (about
      9 ms of an 80 ms run).
    - ``Dropout``'s output is its input at inference; the kernel TVM keeps for it copies the
      tensor and, in SqueezeNet, forced a round trip out of the blocked layout and back.
    """
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class _Simplify(relax.PyExprMutator):
        def _bound(self, expr):
            return self.lookup_binding(expr) if isinstance(expr, relax.Var) else None

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (_op_name(call) == "relax.sum" and not call.attrs.keepdims and call.attrs.axis is not None
                    and [int(a) for a in call.attrs.axis] == [0]):
                return call
            stacked = self._bound(call.args[0])
            if not (_op_name(stacked) == "relax.stack" and int(stacked.attrs.axis) == 0):
                return call
            fields = stacked.args[0].fields if isinstance(stacked.args[0], relax.Tuple) else None
            if fields is None and isinstance(stacked.args[0], relax.Var):
                bound_tuple = self._bound(stacked.args[0])
                fields = bound_tuple.fields if isinstance(bound_tuple, relax.Tuple) else None
            if not fields:
                return call
            terms = []
            for field in fields:
                source = self._bound(field)
                terms.append(source.args[0] if _op_name(source) == "relax.broadcast_to" else field)
            total = terms[0]
            for term in terms[1:]:
                total = self.builder_.emit(relax.op.add(total, term))
            expected = _static_shape(call.ty)
            if expected is None or _static_shape(total.ty) != expected:
                total = self.builder_.emit(relax.op.broadcast_to(total, call.ty.shape))
            return total

        def visit_tuple_getitem_(self, item):
            item = super().visit_tuple_getitem_(item)
            source = self._bound(item.tuple_value)
            if item.index == 0 and _op_name(source) == "relax.nn.dropout":
                return source.args[0]
            return item

    @tvm.transform.module_pass(opt_level=0, name="EdgecnnSimplifyImportedGraph")
    def _pass(mod, _ctx):
        mutator = _Simplify(mod)
        for g_var, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mutator.builder_.update_func(g_var, mutator.visit_expr(func))
        return mutator.builder_.get()

    return _pass


def legalize_constant_work():
    """``LegalizeOps`` for the calls that compute on constants alone (BatchNorm statistics,
    reshaped biases, Clip bounds), so :func:`fold_constants` folds them in one build; every
    other call stays a high-level Relax op. The CPU pipeline needs those: it puts ``conv2d``
    into blocked layouts, folds zero ``pad`` into convs and moves layout transforms through
    elementwise ops and pooling; a call legalized here would reach it as opaque TensorIR and
    run unblocked (ResNet-50: 410 ms against 92 ms blocked)."""
    import tvm
    from tvm import relax

    call_tir = _call_tir_op()

    def is_constant(bb, expr) -> bool:
        if isinstance(expr, tvm.ir.expr.Constant):
            return True
        if isinstance(expr, relax.Var):
            value = bb.lookup_binding(expr)
            if isinstance(value, relax.Call) and value.op.same_as(call_tir):
                return all(is_constant(bb, a) for a in value.args[1].fields)
            return isinstance(value, tvm.ir.expr.Constant)
        if isinstance(expr, relax.Tuple):
            return all(is_constant(bb, f) for f in expr.fields)
        # shapes and scalars given in the IR are known at compile time
        return not isinstance(getattr(expr, "ty", None), relax.TensorType)

    def only_constant(default):
        def legalize(bb, call):
            return default(bb, call) if all(is_constant(bb, a) for a in call.args) else call
        return legalize

    mapping = {}
    for name in tvm.ir.Op.list_op_names():
        default = tvm.ir.Op.get(name).get_attr("FLegalize") if name.startswith("relax.") else None
        if default is not None:
            mapping[name] = only_constant(default)
    return relax.transform.LegalizeOps(customize_legalize_map=mapping, enable_warning=False)


# -- golden data -----------------------------------------------------------------------------------

def golden_data(source: ModelSource, batch: int) -> tuple[dict, dict, str]:
    """Seeded sample inputs and the reference outputs: NumPy backend, or onnxruntime without a graph."""
    rng = np.random.default_rng(GOLDEN_SEED)
    feeds = {}
    for inp in _onnx_float_inputs(source.onnx_model):
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    if source.graph is not None:
        from . import numpy_backend

        outputs = numpy_backend.run(source.graph, feeds)
        names = [o.name for o in source.onnx_model.graph.output]
        return feeds, {n: np.asarray(outputs[n], dtype=np.float32) for n in names}, "numpy"
    import onnxruntime as ort

    session = ort.InferenceSession(source.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    results = session.run(names, feeds)
    return feeds, {n: np.asarray(r, dtype=np.float32) for n, r in zip(names, results)}, "onnxruntime"


# -- compile ---------------------------------------------------------------------------------------

@dataclass
class CompileResult:
    path: Path
    manifest: dict
    library: object  # the built tvm runtime Module (for inspection: kernels, sources)
    relax_module: object  # the IRModule after the preset's pipeline


def _versions(opset: int) -> dict:
    import onnx
    import tvm

    from .onnx_io import edgecnn_version

    return {"edgecnn": edgecnn_version(), "tvm": tvm.__version__, "onnx": onnx.__version__, "opset": opset}


def build(relax_mod, preset: Preset, *, database=None):
    """Run the preset's pipeline (applying ``database`` records) and ``tvm.compile`` the result."""
    import tvm

    target = preset.target()
    pipeline = PIPELINES[preset.device](target)
    with target:
        if database is not None:
            with database:
                lowered = pipeline(relax_mod)
        else:
            lowered = pipeline(relax_mod)
    if preset.is_gpu:
        check_gpu_scheduled(lowered, preset)
    try:
        executable = tvm.compile(lowered, target=target)
    except Exception as exc:
        lines = [x for x in str(exc).strip().splitlines() if x.strip()]
        raise CompileError(f"tvm.compile failed for preset '{preset.name}' "
                           f"({type(exc).__name__}: {lines[-1] if lines else ''})") from None
    return executable, lowered


def build_with_records(relax_mod, preset: Preset, database, feeds: dict, *, log=None):
    """Build with ``database``'s tuning records and keep the result only if it is faster.

    Where records changed the module and the preset runs on this machine, the default build is
    made too and both are timed whole on ``feeds`` (``tuning.compare_builds``); the tuned one
    is returned only if it beats the default by ``tuning.KEEP_MARGIN``, so tuning never makes
    a bundle slower. Where the preset cannot run here the records are trusted (they were
    measured on the device). Returns (executable, lowered, verdict); the verdict holds the
    manifest's ``kept`` ("tuned" or "default") and ``tuned_over_default`` (None: not timed).
    """
    from . import tuning
    from .schedules import cpu

    say = log or (lambda msg: None)
    tuned_executable, tuned_lowered = build(relax_mod, preset, database=database)
    if preset.device == "cpu" and not cpu.record_scheduled(tuned_lowered):
        return tuned_executable, tuned_lowered, {"kept": "default", "tuned_over_default": None}
    if preset.device != "cpu" or not preset.capabilities().run:
        return tuned_executable, tuned_lowered, {"kept": "tuned", "tuned_over_default": None}
    say("timing the tuned build against the default one")
    default_executable, default_lowered = build(relax_mod, preset)
    ratio = tuning.compare_builds({"default": default_executable, "tuned": tuned_executable}, feeds)["tuned"]
    if ratio <= tuning.KEEP_MARGIN:
        say(f"tuned build kept: {ratio:.3f}x the default's latency")
        return tuned_executable, tuned_lowered, {"kept": "tuned", "tuned_over_default": round(ratio, 4)}
    say(f"tuned build dropped: {ratio:.3f}x the default's latency (kept only at <= {tuning.KEEP_MARGIN})")
    return default_executable, default_lowered, {"kept": "default", "tuned_over_default": round(ratio, 4)}


def export_library(executable, preset: Preset, path: Path) -> None:
    from tvm.support import cc

    try:
        executable.export_library(str(path), fcompile=cc.cross_compiler(preset.linker()))
    except Exception as exc:
        lines = [x for x in str(exc).strip().splitlines() if x.strip()]
        raise CompileError(f"linking model.so with {preset.linker()} failed: {lines[-1] if lines else exc}") from None


def compile_bundle(model, target: str, out_dir, *, batch: int = 1, tune: int = 0, tuning_db=None,
                   opset: int = 17, log=None) -> CompileResult:
    """Compile ``model`` for the preset ``target`` into the bundle directory ``out_dir``."""
    start = time.perf_counter()
    preset = get_preset(target)
    if not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be a positive integer. {received(batch=batch)}")
    if tune < 0:
        raise InputError(f"--tune takes a number of trials >= 0. {received(tune=tune)}")
    preset.require_buildable()
    say = log or (lambda msg: None)

    source = resolve_model(model, batch=batch, opset=opset)
    say(f"importing {source.name} into Relax")
    relax_mod = to_relax(source.onnx_model)

    database, tuning_info = None, {"applied": False, "records": 0, "trials": 0}
    if tune > 0 or tuning_db is not None:
        from . import tuning

        database, tuning_info = tuning.prepare(relax_mod, preset, trials=tune, db_root=tuning_db, log=say)

    feeds, outputs, reference = golden_data(source, batch)
    say(f"compiling for {preset.name}")
    if database is None:
        executable, lowered = build(relax_mod, preset)
    else:
        executable, lowered, verdict = build_with_records(relax_mod, preset, database, feeds, log=say)
        tuning_info = {**tuning_info, **verdict, "applied": tuning_info["applied"] and verdict["kept"] == "tuned"}

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        export_library(executable, preset, tmp / "model.so")
        (tmp / "model.onnx").write_bytes(source.onnx_model.SerializeToString())
        buf = io.BytesIO()
        np.savez(buf, **{f"input:{k}": v for k, v in feeds.items()}, **{f"output:{k}": v for k, v in outputs.items()})
        (tmp / "golden.npz").write_bytes(buf.getvalue())
        manifest = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "model_name": source.name,
            "inputs": [{"name": k, "shape": list(v.shape), "dtype": "float32"} for k, v in feeds.items()],
            "outputs": [{"name": k, "shape": list(v.shape), "dtype": "float32"} for k, v in outputs.items()],
            "batch": batch,
            "target": {"preset": preset.name, "tvm_target": preset.target_json(), "device": preset.device,
                       "arch": preset.arch},
            "versions": _versions(_opset_of(source.onnx_model)),
            "files": {name: {"sha256": sha256_file(tmp / name)} for name in ("model.so", "model.onnx", "golden.npz")},
            "labels": source.metadata.get("labels"),
            "preprocessing": source.metadata.get("preprocessing"),
            "tuning": tuning_info,
            "golden": {"reference": reference, "rtol": GOLDEN_RTOL, "atol": GOLDEN_ATOL},
            "compile_seconds": round(time.perf_counter() - start, 3),
        }
        if source.graph is None:
            manifest["golden"]["why"] = source.graph_note
        manifest = seal_manifest(manifest)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return CompileResult(out_dir, manifest, executable.mod, lowered)


def compile_model(model, target: str, out_dir, *, batch: int = 1, tune: int = 0, tuning_db=None,
                  opset: int = 17) -> Path:
    """Compile to a bundle directory and return its path (see :func:`compile_bundle`)."""
    return compile_bundle(model, target, out_dir, batch=batch, tune=tune, tuning_db=tuning_db, opset=opset).path


# -- a compile cache for `edgecnn run --backend tvm` ----------------------------------------------

def default_cache_root() -> Path:
    import os

    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "edgecnn" / "bundles"


def cached_bundle(model, target: str = "host", *, cache_root=None, log=None) -> Path:
    """A bundle of ``model`` (a Graph or an ``.onnx`` path) for ``target``, compiled once and reused.

    The key covers the exact ONNX bytes, the preset's full target and the edgecnn and TVM
    versions, so a changed model, CPU or compiler gets a fresh bundle.
    """
    import tvm

    from .ir import Graph
    from .onnx_io import edgecnn_version, export_model

    preset = get_preset(target)
    if isinstance(model, Graph):
        onnx_bytes = export_model(model, static_batch=1).SerializeToString()
    else:
        onnx_bytes = Path(model).read_bytes()
    key = hashlib.sha256(onnx_bytes)
    key.update(json.dumps([preset.name, preset.target_json(), edgecnn_version(), tvm.__version__],
                          sort_keys=True).encode())
    path = Path(cache_root or default_cache_root()) / f"{preset.name}-{key.hexdigest()[:24]}"
    if not (path / "manifest.json").is_file():
        compile_bundle(model, target, path, log=log)
    return path
