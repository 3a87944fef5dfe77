"""Quantized (QDQ) models in integer arithmetic: the Relax rewrite of ``dequantize -> conv2d /
matmul -> quantize`` chains into int8 x int8 -> int32 products with a requantize epilogue.

TVM's ONNX importer turns a QDQ model (onnxruntime's ``quantize_static``) into
``relax.quantize`` / ``relax.dequantize`` around float convs; left alone, the dequantized
weights fold to float constants and every conv runs in fp32. :func:`rewrite_quantized` runs on
the imported module before any constant is folded, where it still sees
``dequantize(constant)``, and rewrites

    dequantize(xq, sx, zx) -> conv2d(., dequantize(wq, sw, 0)) [+ dequantize(bq, sx*sw, 0)]
        [-> relu] -> quantize(., sy, zy)

(and the same with ``matmul``, the weight transposed or not) into

    acc = conv2d(pad(xq, value zx), wq, out_dtype=int32) + (bq - zx * sum_k wq)
    y   = clip(round_half_even(float32(acc) * M_c) + zy, lo, qmax),  M_c = sx * sw_c / sy

with ``M_c`` computed in float32 NumPy here, ``lo`` the type's minimum, or ``max(qmin, zy)``
when a Relu was fused: onnxruntime's QLinearConv. Without a quantize after the chain the output
is ``float32(acc) * (sx * sw_c)``. Padding counts as the real value zero (``zx`` in xq's
domain). Anything that does not match stays as imported and runs in fp32.

Also: ``quantize(f(dequantize(q, s, z)), s, z)`` with the same parameters, ``f`` one of
reshape, flatten, permute_dims, max_pool2d (monotone or moving values only) becomes ``f(q)``.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, s_tir, te, topi

from .relax_helpers import bindings_and_uses, op_name, rewrite_functions, static_shape

# ops that move or select values without changing them: quantize(f(dequantize(q))) == f(q)
_MOVES_VALUES = ("relax.reshape", "relax.flatten", "relax.permute_dims", "relax.nn.max_pool2d")
_QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}


def _bound_value(bound: dict, expr):
    while isinstance(expr, relax.Var) and expr in bound:
        expr = bound[expr]
    return expr


def _constant(bound: dict, expr) -> np.ndarray | None:
    expr = _bound_value(bound, expr)
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None


def _qparams(bound: dict, call):
    """(data, scale, zero point, axis) of a quantize/dequantize call with constant parameters."""
    scale, zero = _constant(bound, call.args[1]), _constant(bound, call.args[2])
    if scale is None or zero is None:
        return None
    return call.args[0], scale.astype(np.float32), zero.astype(np.int64), int(call.attrs.axis)


def _scalar(values: np.ndarray):
    return values.reshape(-1)[0] if values.size == 1 else None


def _activation(bound: dict, expr):
    """(xq, sx, zx) for a per-tensor ``dequantize`` of an int8/uint8 tensor, else None."""
    call = _bound_value(bound, expr)
    if op_name(call) != "relax.dequantize" or str(call.attrs.out_dtype) != "float32":
        return None
    params = _qparams(bound, call)
    if params is None or str(params[0].ty.dtype) not in _QRANGE:
        return None
    data, scale, zero, _ = params
    if _scalar(scale) is None or _scalar(zero) is None:
        return None
    return data, np.float32(_scalar(scale)), int(_scalar(zero))


def _weight(bound: dict, expr, channel_axis: int):
    """(wq int8 array, per-channel scales float32 [C]) of ``dequantize(const int8, sw, 0)``,
    channels along ``channel_axis`` of the result, optionally through a 2-D transpose; else None."""
    call = _bound_value(bound, expr)
    transposed = False
    if op_name(call) == "relax.permute_dims":
        axes = call.attrs.axes
        if axes is None or [int(a) for a in axes] != [1, 0]:
            return None
        transposed, call = True, _bound_value(bound, call.args[0])
    if op_name(call) != "relax.dequantize" or str(call.attrs.out_dtype) != "float32":
        return None
    params = _qparams(bound, call)
    values = _constant(bound, call.args[0])
    if params is None or values is None or values.dtype != np.int8:
        return None
    _, scale, zero, axis = params
    if np.any(zero != 0):
        return None
    if transposed:
        values = values.T
        axis = {0: 1, 1: 0, -1: 0, -2: 1}.get(axis, axis)
    channels = values.shape[channel_axis]
    if scale.size == 1:
        scale = np.full(channels, scale.reshape(-1)[0], dtype=np.float32)
    elif scale.size != channels or axis % values.ndim != channel_axis % values.ndim:
        return None
    return values, scale.reshape(-1)


def _bias(bound: dict, add, core_var, channels: int, bias_scale: np.ndarray):
    """The int32 bias of ``add(core, reshape(dequantize(bq, sx*sw, 0)))``, else None."""
    if op_name(add) != "relax.add" or len(add.args) != 2:
        return None
    first, second = add.args
    if first.same_as(core_var) == second.same_as(core_var):
        return None
    other = _bound_value(bound, second if first.same_as(core_var) else first)
    while op_name(other) in ("relax.reshape", "relax.expand_dims"):
        other = _bound_value(bound, other.args[0])
    if op_name(other) != "relax.dequantize":
        return None
    params = _qparams(bound, other)
    values = _constant(bound, other.args[0])
    if params is None or values is None or values.dtype != np.int32 or values.size != channels:
        return None
    _, scale, zero, _ = params
    scale = np.broadcast_to(scale.reshape(-1), (channels,)) if scale.size in (1, channels) else None
    if scale is None or np.any(zero != 0) or not np.allclose(scale, bias_scale, rtol=1e-6, atol=0):
        return None
    if static_shape(add) != static_shape(core_var):
        return None
    return values.reshape(-1).astype(np.int64)


def _stored_value(func) -> str | None:
    """The value the single block of ``func`` stores, as text (names and dtypes included)."""
    try:
        sch = s_tir.Schedule(func)
        blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
        if len(blocks) != 1:
            return None
        block = sch.get(blocks[0])
        return str(block.body.value) if isinstance(block.body, tvm.tirx.BufferStore) else None
    except Exception:  # pylint: disable=broad-except  # not a one-block function
        return None


def _zero_pad(mod, bound: dict, expr):
    """(source, (top, left, bottom, right)) when ``expr`` is the importer's TIR zero padding of H
    and W (Conv's auto_pad), found by rebuilding TOPI's padding for each possible split of the
    added rows and columns and comparing structurally; else None."""
    call = _bound_value(bound, expr)
    if op_name(call) != "relax.call_tir" or not isinstance(call.args[0], relax.GlobalVar) \
            or call.args[0] not in mod.get_global_vars():
        return None
    fields = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else []
    if len(fields) != 1:
        return None
    src, dst = static_shape(fields[0]), static_shape(call)
    func = mod[call.args[0]]
    if src is None or dst is None or len(src) != 4 or len(dst) != 4 or src[:2] != dst[:2] \
            or str(fields[0].ty.dtype) != "float32" or not isinstance(func, tvm.tirx.PrimFunc):
        return None
    extra_h, extra_w = dst[2] - src[2], dst[3] - src[3]
    if not (0 <= extra_h <= 8 and 0 <= extra_w <= 8):
        return None
    actual = _stored_value(func) if len(func.params) == 2 else None
    if actual is None:
        return None
    for top in range(extra_h + 1):
        for left in range(extra_w + 1):
            data = te.placeholder([tvm.tirx.IntImm("int64", d) for d in src], "float32", str(func.params[0].name))
            padded = topi.nn.pad(data, (0, 0, top, left), (0, 0, extra_h - top, extra_w - left), 0.0)
            if _stored_value(te.create_prim_func([data, padded])) == actual:
                return fields[0], (top, left, extra_h - top, extra_w - left)
    return None


class _Chain:
    """One matched chain: the integer product and what follows it."""

    def __init__(self, kind, call, xq, sx, zx, weight, scale):
        self.kind, self.call, self.xq, self.sx, self.zx = kind, call, xq, sx, zx
        self.weight, self.scale = weight, scale
        self.bias = np.zeros(weight.shape[0] if kind == "conv" else weight.shape[1], dtype=np.int64)
        self.relu = False
        self.out = None  # (sy, zy, dtype) when a quantize ends the chain
        self.extra_pad = (0, 0, 0, 0)  # a zero pad before the conv (the importer's auto_pad)


def _core(mod, bound: dict, value):
    """A ``_Chain`` for conv2d / matmul on a dequantized activation and dequantized int8 weight."""
    name = op_name(value)
    if name == "relax.nn.conv2d":
        attrs = value.attrs
        if (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) != ("NCHW", "OIHW", "NCHW"):
            return None
        data, extra_pad = value.args[0], (0, 0, 0, 0)
        padded = _zero_pad(mod, bound, data)
        if padded is not None:
            data, extra_pad = padded
        act, weight = _activation(bound, data), _weight(bound, value.args[1], 0)
        kind = "conv"
    elif name == "relax.matmul":
        act, weight = _activation(bound, value.args[0]), _weight(bound, value.args[1], 1)
        if weight is not None and weight[0].ndim != 2:
            return None
        kind = "dense"
    else:
        return None
    if act is None or weight is None or static_shape(value) is None:
        return None
    chain = _Chain(kind, value, *act, *weight)
    if kind == "conv":
        chain.extra_pad = extra_pad
    return chain


def _find_chains(mod, main) -> tuple[dict, dict]:
    """(final var -> _Chain, quantize var -> replacement source var) over ``main``'s bindings."""
    bound, uses = bindings_and_uses(main)

    def only_user(var):
        users = uses.get(var, [])
        return users[0] if len(users) == 1 and users[0] is not None else None

    chains, moves = {}, {}
    for var, value in bound.items():
        name = op_name(value)
        if name == "relax.quantize":
            moved = _bound_value(bound, value.args[0])
            if op_name(moved) in _MOVES_VALUES:
                inner = _bound_value(bound, moved.args[0])
                outer_p, inner_p = _qparams(bound, value), (
                    _qparams(bound, inner) if op_name(inner) == "relax.dequantize" else None)
                if (outer_p is not None and inner_p is not None
                        and str(inner_p[0].ty.dtype) == str(value.attrs.out_dtype)
                        and outer_p[1].size == outer_p[2].size == inner_p[1].size == inner_p[2].size == 1
                        and outer_p[1].reshape(-1)[0] == inner_p[1].reshape(-1)[0]
                        and outer_p[2].reshape(-1)[0] == inner_p[2].reshape(-1)[0]):
                    moves[var] = (moved, inner_p[0])
            continue
        chain = _core(mod, bound, value)
        if chain is None:
            continue
        channels = chain.scale.size
        acc_scale = chain.sx * chain.scale  # float32
        last = var
        user = only_user(last)
        if user is not None:
            bias = _bias(bound, bound[user], last, channels, acc_scale)
            if bias is not None:
                chain.bias, last, user = bias, user, only_user(user)
        float_end = last
        relu_var = None
        if user is not None and op_name(bound[user]) == "relax.nn.relu":
            relu_var, user = user, only_user(user)
        if user is not None and op_name(bound[user]) == "relax.quantize":
            params = _qparams(bound, bound[user])
            dtype = str(bound[user].attrs.out_dtype)
            if (params is not None and dtype in _QRANGE and _scalar(params[1]) is not None
                    and _scalar(params[2]) is not None):
                chain.relu = relu_var is not None
                chain.out = (np.float32(_scalar(params[1])), int(_scalar(params[2])), dtype)
                chains[user] = chain
                continue
        chains[float_end] = chain
    return chains, moves


def _emit_integer(bb: relax.BlockBuilder, chain: _Chain, xq):
    """The int32 accumulator ``sum((xq - zx) * wq) + bq`` of ``chain`` on the (visited) ``xq``."""
    weight = chain.weight.astype(np.int64)
    if chain.kind == "conv":
        attrs = chain.call.attrs
        padding = [int(p) + e for p, e in zip(attrs.padding, chain.extra_pad)]  # top, left, bottom, right
        if chain.zx != 0 and any(padding):
            top, left, bottom, right = padding
            xq = bb.emit(relax.op.nn.pad(xq, [0, 0, 0, 0, top, bottom, left, right],
                                         pad_value=float(chain.zx)))
            padding = [0, 0, 0, 0]
        acc = bb.emit(relax.op.nn.conv2d(
            xq, relax.const(chain.weight), strides=list(attrs.strides), padding=padding,
            dilation=list(attrs.dilation), groups=int(attrs.groups), out_dtype="int32"))
        bias = chain.bias - chain.zx * weight.reshape(weight.shape[0], -1).sum(axis=1)
        bias_shape = (1, -1, 1, 1)
    else:
        acc = bb.emit(relax.op.matmul(xq, relax.const(chain.weight), out_dtype="int32"))
        bias = chain.bias - chain.zx * weight.sum(axis=0)
        bias_shape = (-1,)
    if np.any(bias):
        acc = bb.emit(relax.op.add(acc, relax.const(bias.astype(np.int32).reshape(bias_shape))))
    return acc, bias_shape


def _emit_chain(bb: relax.BlockBuilder, chain: _Chain, xq):
    acc, shape = _emit_integer(bb, chain, xq)
    real = bb.emit(relax.op.astype(acc, "float32"))
    if chain.out is None:
        scale = (chain.sx * chain.scale).astype(np.float32)
        return relax.op.multiply(real, relax.const(scale.reshape(shape)))
    sy, zy, dtype = chain.out
    multiplier = ((chain.sx * chain.scale) / sy).astype(np.float32)
    scaled = bb.emit(relax.op.multiply(real, relax.const(multiplier.reshape(shape))))
    rounded = bb.emit(relax.op.round(scaled))
    if zy:
        rounded = bb.emit(relax.op.add(rounded, relax.const(np.float32(zy))))
    low, high = _QRANGE[dtype]
    if chain.relu:
        low = max(low, zy)
    clipped = bb.emit(relax.op.clip(rounded, float(low), float(high)))
    return relax.op.astype(clipped, dtype)


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def __init__(self, mod, chains, moves):
        super().__init__(mod)
        self.chains, self.moves = chains, moves

    def visit_var_binding_(self, binding):
        var = binding.var
        if var in self.chains:
            chain = self.chains[var]
            new = _emit_chain(self.builder_, chain, self.visit_expr(chain.xq))
        elif var in self.moves:
            moved, source = self.moves[var]
            args = [self.visit_expr(source), *[self.visit_expr(a) for a in moved.args[1:]]]
            new = relax.Call(moved.op, args, moved.attrs)
        else:
            new = self.visit_expr(binding.value)
        self.builder_.emit_normalized(relax.VarBinding(var, self.builder_.normalize(new)))


def count_rewrites(mod) -> tuple[int, int]:
    """(integer chains, value moves) :func:`rewrite_quantized` would rewrite in ``mod``'s main."""
    chains, moves = _find_chains(mod, mod["main"])
    return len(chains), len(moves)


def rewrite_quantized(mod):
    """Quantized chains of ``mod``'s functions as integer arithmetic (see the module's doc)."""
    found = {}
    for g_var, func in mod.functions_items():
        if isinstance(func, relax.Function):
            chains, moves = _find_chains(mod, func)
            if chains or moves:
                found[g_var] = (chains, moves)
    if not found:
        return mod
    chains = {k: v for c, _ in found.values() for k, v in c.items()}
    moves = {k: v for _, m in found.values() for k, v in m.items()}
    mod = rewrite_functions(mod, _Rewrite(mod, chains, moves))
    return relax.transform.DeadCodeElimination()(mod)


def quantized_arithmetic():
    """:func:`rewrite_quantized` as a module pass."""

    @tvm.transform.module_pass(opt_level=0, name="EdgecnnQuantizedArithmetic")
    def _pass(mod, _ctx):
        return rewrite_quantized(mod)

    return _pass
