"""Relax graph rewrites on the imported model, before any target's pipeline, each written once.

- ``simplify_imported_graph``: shapes TVM's ONNX importer gives ops that no layout pass can
  move through (Sum as stack + sum, Dropout's copy, identity broadcasts);
- ``legalize_constant_work`` + ``fold_constants``: every computation on constants (BatchNorm
  statistics, reshaped biases, weight repacks) evaluated in one compiled library;
- ``fold_static_work``: those two, with the shape arithmetic an exporter writes (``Shape ->
  Gather -> Div -> Slice``) read off the static shapes, so every slice, reshape and broadcast
  whose bounds it computes gets a static shape;
- ``fold_affine_into_conv``: per-channel scales and shifts after a conv folded into its
  weights and one bias (BatchNorm at inference).
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from .relax_helpers import bindings_and_uses, call_tir_op, op_name, rewrite_functions, static_shape, with_main


def simplify_imported_graph():
    """Undo three shapes TVM's ONNX importer gives ops, which no layout pass can move through:

    - ``Sum`` as ``sum(stack(broadcast_to(x_i)), axis=0)``, which copies every input into a
      stacked tensor, becomes a chain of ``add``. ResNet-50's 16 residual additions came out
      that way: each one converted to NCHW and back around an unblocked add and ReLU (about
      9 ms of an 80 ms run).
    - ``Dropout``'s output is its input at inference; the kernel TVM keeps for it copies the
      tensor and, in SqueezeNet, forced a round trip out of the blocked layout and back.
    - ``broadcast_to`` a tensor's own shape (ONNX Expand to the same shape) is that tensor:
      ConvertLayout cannot carry a blocked layout through it.
    """

    @relax.expr_functor.mutator
    class _Simplify(relax.PyExprMutator):
        def _bound(self, expr):
            return self.lookup_binding(expr) if isinstance(expr, relax.Var) else None

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if op_name(call) == "relax.broadcast_to" and static_shape(call.args[0]) is not None \
                    and static_shape(call.args[0]) == static_shape(call):
                return call.args[0]
            if not (op_name(call) == "relax.sum" and not call.attrs.keepdims and call.attrs.axis is not None
                    and [int(a) for a in call.attrs.axis] == [0]):
                return call
            stacked = self._bound(call.args[0])
            if not (op_name(stacked) == "relax.stack" and int(stacked.attrs.axis) == 0):
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
                terms.append(source.args[0] if op_name(source) == "relax.broadcast_to" else field)
            total = terms[0]
            for term in terms[1:]:
                total = self.builder_.emit(relax.op.add(total, term))
            expected = static_shape(call)
            if expected is None or static_shape(total) != expected:
                total = self.builder_.emit(relax.op.broadcast_to(total, call.ty.shape))
            return total

        def visit_tuple_getitem_(self, item):
            item = super().visit_tuple_getitem_(item)
            source = self._bound(item.tuple_value)
            if item.index == 0 and op_name(source) == "relax.nn.dropout":
                return source.args[0]
            return item

    @tvm.transform.module_pass(opt_level=0, name="EdgecnnSimplifyImportedGraph")
    def _pass(mod, _ctx):
        return rewrite_functions(mod, _Simplify(mod))

    return _pass


def legalize_constant_work():
    """``LegalizeOps`` for the calls that compute on constants alone (BatchNorm statistics,
    reshaped biases, Clip bounds), so :func:`fold_constants` folds them in one build; every
    other call stays a high-level Relax op. The CPU pipeline needs those: it puts ``conv2d``
    into blocked layouts, folds zero ``pad`` into convs and moves layout transforms through
    elementwise ops and pooling; a call legalized here would reach it as opaque TensorIR and
    run unblocked (ResNet-50: 410 ms against 92 ms blocked)."""
    call_tir = call_tir_op()

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


def fold_constants(mod):
    """Evaluate every computation on constants alone, in one compiled library, and bind the results.

    Relax's ``FoldConstant`` builds and runs one small module per constant call: with BatchNorm
    statistics, Clip bounds and ``ConstantOfShape`` weights that is hundreds of LLVM builds
    (27 s of a 35 s ResNet-50 compile, measured). Here the PrimFuncs of every ``call_tir`` whose
    arguments are constants, or results of such calls, are built once for this CPU and called in
    binding order on the constants' own tensors (no Relax VM: its set-up copies every weight,
    0.6 s for ResNet-50); ``main`` then takes the results as constants. Expects a legalized module.
    """
    main = mod["main"]
    call_tir = call_tir_op()
    foldable: dict = {}  # var -> its call, in binding order
    bound: dict = {}  # var -> the constant it is bound to (a shape read at compile time)
    kept_values = [main.body.body]
    for block in main.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(binding, relax.VarBinding) and isinstance(value, tvm.ir.expr.Constant):
                bound[binding.var] = value
            if (isinstance(binding, relax.VarBinding) and isinstance(value, relax.Call) and value.op.same_as(call_tir)
                    and len(value.args) == 2 and static_shape(value) is not None
                    and all(isinstance(a, tvm.ir.expr.Constant) or a in foldable or a in bound
                            for a in value.args[1].fields)):
                foldable[binding.var] = value
            else:
                kept_values.append(value)
    used = {v for expr in kept_values for v in relax.analysis.free_vars(expr)}
    if not any(v in used for v in foldable):
        return mod

    shapes = {var: static_shape(call) for var, call in foldable.items()}
    library = _build_fold_library({call.args[0].name_hint: mod[call.args[0]] for call in foldable.values()},
                                  elements=sum(math.prod(shape) for shape in shapes.values()))
    device = tvm.cpu()
    values: dict = {}
    for var, call in foldable.items():
        args = [a.value if isinstance(a, tvm.ir.expr.Constant) else bound[a].value if a in bound else values[a]
                for a in call.args[1].fields]
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

    return relax.transform.DeadCodeElimination(["main"])(with_main(mod, _BindFolded(mod).visit_expr(main)))


def _constant_of(bb, expr):
    """The Constant ``expr`` is or is bound to, else None."""
    while isinstance(expr, relax.Var):
        bound = bb.lookup_binding(expr)
        if bound is None:
            return None
        expr = bound
    return expr if isinstance(expr, tvm.ir.expr.Constant) else None


def _known_shape(expr) -> list[int] | None:
    """The values of a shape-valued expression (``R.Shape([1, 116, 8, 8])``) known at compile time."""
    ty = getattr(expr, "ty", None)
    values = getattr(ty, "values", None) if isinstance(ty, relax.ShapeType) else None
    if values is None or not all(isinstance(v, tvm.tirx.IntImm) for v in values):
        return None
    return [int(v) for v in values]


@relax.expr_functor.mutator
class _StaticShapes(relax.PyExprMutator):
    """Shape arithmetic on static shapes read at compile time, and what it feeds made static.

    TVM's ONNX importer keeps ``Shape -> Gather`` with a 1-D index (PyTorch's ``x.chunk(2, 1)``
    and ``x.size(1) // 2``) as run-time work: the shape becomes an int64 constant, and the
    gather, its negative-index normalization (``shape_of`` of that constant) and the arithmetic
    after it are Relax calls. A ``Slice`` whose bounds are such calls takes the importer's
    dynamic road, ``dynamic_strided_slice``, whose result has no static shape, and neither has
    any op after it: ShuffleNet V2's channel split reached ``tvm.compile`` as a ``concat`` of
    unknown shapes, which nothing legalizes (an InternalError in VM codegen), and its convs
    would have missed the blocked layouts. Here:

    - ``shape_of(x)`` of a static-shape ``x`` is that shape, ``shape_to_tensor`` of a known
      shape an int64 constant (and so constant work for :func:`legalize_constant_work`);
    - ``tensor_to_shape`` of a constant is a shape (reshape targets, Expand, ConstantOfShape);
    - ``dynamic_strided_slice`` with constant bounds and a static input is ``strided_slice``
      over the axes it cuts, with ONNX's (NumPy's) clamping of out-of-range bounds.

    ``rewrites`` counts what changed, so :func:`fold_static_work` knows when to stop.
    """

    def __init__(self, mod):
        super().__init__(mod)
        self.rewrites = 0

    def visit_call_(self, call):  # pylint: disable=arguments-renamed
        call = super().visit_call_(call)
        name = op_name(call)
        new = None
        if name == "relax.shape_of":
            shape = static_shape(call.args[0])
            new = relax.ShapeExpr(shape) if shape is not None else None
        elif name == "relax.shape_to_tensor":
            values = _known_shape(call.args[0])
            new = relax.const(np.array(values, dtype="int64"), "int64") if values is not None else None
        elif name == "relax.tensor_to_shape":
            constant = _constant_of(self.builder_, call.args[0])
            values = constant.value.numpy() if constant is not None else None
            if values is not None and values.ndim == 1:
                new = relax.ShapeExpr([int(v) for v in values])
        elif name == "relax.dynamic_strided_slice":
            new = self._static_slice(call)
        if new is None:
            return call
        self.rewrites += 1
        return new

    def _static_slice(self, call):
        data = call.args[0]
        shape = static_shape(data)
        bounds = [_constant_of(self.builder_, a) for a in call.args[1:]]
        if shape is None or any(b is None for b in bounds):
            return None
        begin, end, strides = (b.value.numpy().astype(np.int64).reshape(-1).tolist() for b in bounds)
        if not len(begin) == len(end) == len(strides) == len(shape) or 0 in strides:
            return None
        # the axes the slice cuts; a whole-axis bound (0 .. INT64_MAX step 1) leaves its axis be
        axes = [i for i, n in enumerate(shape) if slice(begin[i], end[i], strides[i]).indices(n) != (0, n, 1)]
        if not axes:
            return data
        return relax.op.strided_slice(data, axes=axes, begin=[begin[i] for i in axes], end=[end[i] for i in axes],
                                      strides=[strides[i] for i in axes], assume_inbound=False)


def fold_static_work(mod, max_rounds: int = 8):
    """:func:`legalize_constant_work` and :func:`fold_constants`, round after round, with the
    shape arithmetic on static shapes folded too (:class:`_StaticShapes`): a slice whose bounds
    one round folds becomes static in the next, and the shapes after it with it. A model with
    no shape arithmetic takes one round, as before."""
    for _ in range(max_rounds):
        shapes = _StaticShapes(mod)
        mod = rewrite_functions(mod, shapes)
        if shapes.rewrites:
            mod = relax.transform.DeadCodeElimination()(mod)
        mod = fold_constants(legalize_constant_work()(mod))
        if not shapes.rewrites:
            break
    return mod


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
    main = mod["main"]
    bound, uses = bindings_and_uses(main)

    rewrites: dict = {}  # conv var -> (new weight, shift vector, last var of the chain, vars dropped)
    for var, value in bound.items():
        if op_name(value) != "relax.nn.conv2d" or not isinstance(value.args[1], tvm.ir.expr.Constant):
            continue
        attrs = value.attrs
        if (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) != ("NCHW", "OIHW", "NCHW") \
                or static_shape(value) is None or str(value.ty.dtype) != "float32":
            continue
        channels = static_shape(value)[1]
        scale, shift = np.ones(channels), np.zeros(channels)
        chain, current = [], var
        while len(uses.get(current, [])) == 1 and uses[current][0] is not None:
            user = uses[current][0]
            step = _AFFINE_STEPS.get(op_name(bound[user]))
            args = bound[user].args if step else ()
            # exactly one operand is the running value, and the op does not broadcast it
            if len(args) != 2 or args[0].same_as(current) == args[1].same_as(current) \
                    or static_shape(bound[user]) != static_shape(value):
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

    return with_main(mod, _FoldAffine(mod).visit_expr(main))
