"""Small questions asked of Relax IR by every pass and rule, answered once."""
from __future__ import annotations

import tvm
from tvm import relax


def static_shape(expr) -> list[int] | None:
    """The dimensions of a tensor-valued expression, when all are known at compile time; else None."""
    ty = getattr(expr, "ty", None)
    shape = ty.shape if isinstance(ty, relax.TensorType) else None
    values = getattr(shape, "values", None)
    if values is None or not all(isinstance(d, tvm.tirx.IntImm) for d in values):
        return None
    return [int(d) for d in values]


def op_name(expr) -> str | None:
    """The name of the Relax op ``expr`` calls (``relax.add``, ...), None for anything else."""
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else None


def spatial_pad(expr):
    """(source, [top, bottom, left, right], value) when ``expr`` is a constant ``relax.nn.pad`` of
    only H and W (axes 2 and 3) of an NCHW or NCHW{b}c tensor, else None."""
    if op_name(expr) != "relax.nn.pad" or str(expr.attrs.pad_mode) != "constant":
        return None
    widths = [int(w) for w in expr.attrs.pad_width]  # (before, after) per axis
    if len(widths) not in (8, 10) or any(widths[:4]) or any(widths[8:]):
        return None
    return expr.args[0], widths[4:8], float(expr.attrs.pad_value)


def call_tir_op():
    return tvm.ir.Op.get("relax.call_tir")


def prim_funcs(mod) -> dict:
    """The module's TensorIR functions by name."""
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def copy_module(mod):
    """A new IRModule with the same functions: passes that write into their input get their own."""
    return tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)


def with_main(mod, main):
    """``mod`` with its ``main`` replaced."""
    return tvm.IRModule({gv: (main if gv.name_hint == "main" else f) for gv, f in mod.functions.items()})


def rewrite_functions(mod, mutator):
    """Run ``mutator`` (a ``PyExprMutator`` built on ``mod``) over each Relax function of ``mod``."""
    for g_var, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(g_var, mutator.visit_expr(func))
    return mutator.builder_.get()


def bindings_and_uses(func) -> tuple[dict, dict]:
    """(var -> bound value, var -> the vars whose bindings use it) over ``func``'s dataflow
    blocks; a use by the function's result is recorded as None."""
    from tvm import relax

    bound, uses = {}, {}
    for block in func.body.blocks:
        for binding in block.bindings:
            bound[binding.var] = binding.value
            for var in relax.analysis.free_vars(binding.value):
                uses.setdefault(var, []).append(binding.var)
    for var in relax.analysis.free_vars(func.body.body):
        uses.setdefault(var, []).append(None)
    return bound, uses
