"""Relax ops in blocked layouts legalized to edgecnn's TE computes: each conv2d in NCHW{b}c goes
to Winograd, the blocked direct conv or the depthwise conv by its shape; batch-1 dense layers
to the GEMV. Anything else keeps TVM's default legalization."""
from __future__ import annotations

import re

import tvm
from tvm import relax, te, topi
from tvm.relax.transform.legalize_ops.nn import _nn_conv2d as _default_conv2d_legalize

from edgecnn.compiler.tvm.relax_helpers import rewrite_functions, spatial_pad, static_shape

from .dense import legalize_matmul
from .depthwise import blocked_depthwise_te
from .direct import blocked_conv_te
from .int8_dot import compensation_te, dot_conv_te, dot_instruction_for, pack_weight_te
from .winograd import WINOGRAD_G, use_winograd, winograd_conv_te, winograd_weight_te


_BLOCKED = re.compile(r"^NCHW(\d+)c$")


def legalize_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    attrs = call.attrs
    data_match = _BLOCKED.match(str(attrs.data_layout))
    plain_dtype = not attrs.out_dtype or str(attrs.out_dtype) in ("", "float32")
    out_match = _BLOCKED.match(str(attrs.out_layout))
    if data_match is not None and out_match is not None and not plain_dtype:
        return _blocked_integer_conv(bb, call, int(data_match.group(1)), int(out_match.group(1)))
    if data_match is None or out_match is None or not plain_dtype:
        return _default_conv2d_legalize(bb, call)
    block = int(data_match.group(1))
    channels = int(call.args[0].ty.shape[1]) * block
    args = (list(attrs.strides), list(attrs.padding), list(attrs.dilation))
    groups = int(attrs.groups)
    kernel_match = re.match(r"^OIHW(\d+)i(\d+)o$", str(attrs.kernel_layout))
    out_channels = int(call.ty.shape[1]) * int(out_match.group(1))
    weight_shape = static_shape(call.args[1])
    out_shape = static_shape(call)
    if (groups == 1 and kernel_match is not None and weight_shape is not None
            and out_shape is not None and weight_shape[2:4] == [3, 3]
            and [int(v) for v in attrs.strides] == [1, 1]
            and [int(v) for v in attrs.dilation] == [1, 1]
            and use_winograd(channels, out_channels, out_shape[2], out_shape[3])):
        weight_t = bb.emit(bb.call_te(winograd_weight_te, call.args[1],
                                      relax.const(WINOGRAD_G), primfunc_name_hint="winograd_weight"))
        return bb.call_te(winograd_conv_te, call.args[0], weight_t, list(attrs.padding),
                          primfunc_name_hint="conv2d_winograd_nchwc")
    if (kernel_match is not None and int(kernel_match.group(1)) == block
            and int(kernel_match.group(2)) == int(out_match.group(1))
            and (groups == 1 or ((channels // groups) % block == 0
                                 and (out_channels // groups) % int(out_match.group(1)) == 0
                                 # a true depthwise conv in NCHW1c goes to the depthwise compute;
                                 # with a channel multiplier it is a grouped conv like any other
                                 and not (groups == channels == out_channels and block == 1)))):
        return bb.call_te(blocked_conv_te, call.args[0], call.args[1], *args, groups,
                          primfunc_name_hint="conv2d_nchwc")
    if (int(attrs.groups) == channels and str(attrs.kernel_layout) == f"OIHW1i{block}o"
            and out_match.group(1) == data_match.group(1)):
        return bb.call_te(blocked_depthwise_te, call.args[0], call.args[1], *args,
                          primfunc_name_hint="depthwise_conv2d_nchwc")
    return _default_conv2d_legalize(bb, call)


def _blocked_integer_conv(bb, call, block: int, out_block: int):
    """An integer conv (int8 x int8 -> int32, from ``quantized.py``) that ConvertLayout blocked:
    TVM's default legalization has no blocked integer conv, so one TE function unblocks the
    data and weight, runs topi's NCHW conv in the call's out_dtype (exact) and blocks the result."""
    attrs = call.attrs
    kernel_match = re.match(r"^OIHW(\d+)i(\d+)o$", str(attrs.kernel_layout))
    if kernel_match is None:
        return _default_conv2d_legalize(bb, call)
    kin, kout = int(kernel_match.group(1)), int(kernel_match.group(2))
    out_dtype = str(attrs.out_dtype)
    conv_args = ([int(v) for v in attrs.strides], [int(v) for v in attrs.padding],
                 [int(v) for v in attrs.dilation], int(attrs.groups))
    groups = int(attrs.groups)
    channels = int(call.args[0].ty.shape[1]) * block
    out_channels = int(call.ty.shape[1]) * out_block
    if kin == block and kout == out_block and (
            groups == 1 or ((channels // groups) % block == 0 and (out_channels // groups) % out_block == 0
                            and not (groups == channels == out_channels and block == 1))):
        # the blocked direct conv (dense or grouped), widened to int32: scheduled by direct.BlockedConv
        return bb.call_te(blocked_conv_te, call.args[0], call.args[1], *conv_args, out_dtype=out_dtype,
                          primfunc_name_hint="conv2d_nchwc")
    if groups == channels == out_channels and kin == 1 and kout == block == out_block:
        # depthwise, widened to int32: scheduled by direct.BlockedConv like the fp32 one
        return bb.call_te(blocked_depthwise_te, call.args[0], call.args[1], *conv_args[:3], out_dtype=out_dtype,
                          primfunc_name_hint="depthwise_conv2d_nchwc")

    def compute(data, kernel):
        n, cb, h, w, b = data.shape
        plain = te.compute((n, cb * b, h, w), lambda i, c, y, x: data[i, c // block, y, x, c % block],
                           name="unblock_data")
        ob, ib, kh, kw, bi, bo = kernel.shape
        weight = te.compute((ob * bo, ib * bi, kh, kw),
                            lambda o, c, y, x: kernel[o // kout, c // kin, y, x, c % kin, o % kout],
                            name="unblock_kernel")
        strides, padding, dilation, groups = conv_args
        out = topi.nn.conv2d(plain, weight, strides, padding, dilation, data_layout="NCHW",
                             kernel_layout="OIHW", out_dtype=out_dtype) if groups == 1 else \
            topi.nn.group_conv2d_nchw(plain, weight, strides, padding, dilation, groups, out_dtype=out_dtype)
        on, oc, oh, ow = out.shape
        return te.compute((on, oc // out_block, oh, ow, out_block),
                          lambda i, c, y, x, b: out[i, c * out_block + b, y, x], name="block_out")

    return bb.call_te(compute, call.args[0], call.args[1], primfunc_name_hint="conv2d_int_nchwc")


def _dot_conv(bb: relax.BlockBuilder, call: relax.Call, source, pad_value: float):
    """``call`` (a blocked int8 conv) on the target's dot-product instruction, or None.

    ``source`` is the data before a constant pad of H and W folded into the conv (``pad_value``
    in the data's domain: the int8 road pads with the zero point), else the conv's own data."""
    attrs = call.attrs
    data_match, out_match = _BLOCKED.match(str(attrs.data_layout)), _BLOCKED.match(str(attrs.out_layout))
    kernel_match = re.match(r"^OIHW(\d+)i(\d+)o$", str(attrs.kernel_layout))
    if data_match is None or out_match is None or kernel_match is None or str(attrs.out_dtype) != "int32":
        return None
    block, out_block = int(data_match.group(1)), int(out_match.group(1))
    if (int(kernel_match.group(1)), int(kernel_match.group(2))) != (block, out_block):
        return None
    data_dtype = str(source.ty.dtype)
    out_shape = static_shape(call)
    if out_shape is None or static_shape(source) is None:
        return None
    instruction = dot_instruction_for(tvm.target.Target.current(allow_none=True), data_dtype, block, out_block,
                                      int(attrs.groups), out_shape[1], out_shape[3])
    if instruction is None:
        return None
    # the weight repacked and the shift's compensation computed on the constant: both folded
    # at compile time
    packed = bb.emit(bb.call_te(pack_weight_te, call.args[1], instruction.width, instruction.weight_dtype,
                                primfunc_name_hint="dot_weight"))
    shift = instruction.shift(data_dtype)
    extra = [bb.emit(bb.call_te(compensation_te, call.args[1], shift,
                                primfunc_name_hint="dot_compensation"))] if shift else []
    conv_args = ([int(v) for v in attrs.strides], [int(v) for v in attrs.padding], [int(v) for v in attrs.dilation])

    def compute(data, weight, *compensation):
        return dot_conv_te(data, weight, compensation[0] if compensation else None, *conv_args,
                           instruction=instruction, pad_value=pad_value)

    return bb.call_te(compute, source, packed, *extra, primfunc_name_hint="conv2d_nchwc_int8_dot")


@relax.expr_functor.mutator
class _IntegerDotConvs(relax.PyExprMutator):
    """Blocked int8 convs to the dot-product compute before ``LegalizeOps``, where the constant
    pad in front of each (the zero point's, from ``quantized.py``) is still a Relax op: it
    folds into the conv's own padding stage instead of running as a pass of its own."""

    def visit_call_(self, call):  # pylint: disable=arguments-renamed
        call = super().visit_call_(call)
        if (not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.nn.conv2d"
                or str(call.attrs.out_dtype) != "int32"):
            return call
        source, pad_value, padding = call.args[0], 0.0, [int(p) for p in call.attrs.padding]
        bound = source
        while isinstance(bound, relax.Var):  # through aliases (``y = x``) to the bound call
            bound = self.lookup_binding(bound)
        pad = spatial_pad(bound)
        if pad is not None and len(static_shape(pad[0]) or []) == 5:
            source, (top, bottom, left, right), pad_value = pad
            padding = [padding[0] + top, padding[1] + left, padding[2] + bottom, padding[3] + right]
        if source is not call.args[0]:
            folded = relax.op.nn.conv2d(
                source, call.args[1], strides=list(call.attrs.strides), padding=padding,
                dilation=list(call.attrs.dilation), groups=int(call.attrs.groups),
                data_layout=str(call.attrs.data_layout), kernel_layout=str(call.attrs.kernel_layout),
                out_layout=str(call.attrs.out_layout), out_dtype=str(call.attrs.out_dtype))
            lowered = _dot_conv(self.builder_, self.builder_.normalize(folded), source, pad_value)
            if lowered is not None:
                return lowered
        lowered = _dot_conv(self.builder_, call, call.args[0], 0.0)
        return call if lowered is None else lowered


def integer_dot_convs():
    """:class:`_IntegerDotConvs` as a module pass (run under the target)."""

    @tvm.transform.module_pass(opt_level=0, name="EdgecnnIntegerDotConvs")
    def _pass(mod, _ctx):
        return rewrite_functions(mod, _IntegerDotConvs(mod))

    return _pass


def legalize_map() -> dict:
    """``LegalizeOps``' custom map for the CPU pipeline."""
    return {"relax.nn.conv2d": legalize_conv2d, "relax.matmul": legalize_matmul}
