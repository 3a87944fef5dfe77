"""Batch-1 dense layers as a GEMV over weight rows transposed at compile time, and its rule."""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te
from tvm.relax.transform.legalize_ops.linear_algebra import _matmul as _default_matmul_legalize

from edgecnn.compiler.tvm.relax_helpers import static_shape

from .common import (
    GEMV_BLOCK, PARALLEL_MIN_WORK, REDUCTION_WORK_SCALE, SafeRule, block_work, has_block, inline_epilogue,
    loop_extent, other_block_names, schedule_remaining,
)
from .int8_dot import compensation_for_dense, dense_instruction_for, dot_gemv_te, pack_dense_weight


def legalize_matmul(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """A batch-1 dense layer (one row times constant weights K x N) as a GEMV over the weights
    transposed at compile time (N x K, ONNX's own Gemm layout): each output then reads one
    contiguous row. Over the K x N layout each step of the reduction reads 16 floats from a
    new 4 KB page (4096 x 4096: 10.6 ms, 6 GB/s, against NumPy's 1.7 ms)."""
    data, weight = call.args
    shape = static_shape(data)
    if (isinstance(weight, tvm.ir.expr.Constant) and shape is not None and len(shape) >= 2
            and int(np.prod(shape[:-1])) == 1 and len(weight.value.shape) == 2
            and str(data.ty.dtype) == "float32" and str(weight.value.dtype) == "float32"
            and str(call.ty.dtype) == "float32"):
        # rows padded with zeros to whole vectors of the widest target (16 lanes)
        rows = weight.value.numpy().T
        length = -(-rows.shape[1] // 16) * 16
        rows = np.pad(rows, [(0, 0), (0, length - rows.shape[1])])
        return bb.call_te(gemv_te, data, relax.const(np.ascontiguousarray(rows)), primfunc_name_hint="gemv")
    integer = _integer_gemv(bb, call)
    return _default_matmul_legalize(bb, call) if integer is None else integer


def _integer_gemv(bb: relax.BlockBuilder, call: relax.Call):
    """A batch-1 int8 dense layer (``tvm/quantized.py``: int8 x int8 -> int32 on constant weights)
    on the target's dot-product instruction, or None."""
    data, weight = call.args
    shape = static_shape(data)
    if (not isinstance(weight, tvm.ir.expr.Constant) or shape is None or len(shape) != 2 or shape[0] != 1
            or len(weight.value.shape) != 2 or str(weight.value.dtype) != "int8" or str(call.ty.dtype) != "int32"):
        return None
    values = weight.value.numpy()
    instruction = dense_instruction_for(tvm.target.Target.current(allow_none=True), str(data.ty.dtype),
                                        values.shape[1])
    if instruction is None:
        return None
    shift = instruction.shift(str(data.ty.dtype))
    args = [data, relax.const(pack_dense_weight(values, instruction))]
    if shift:
        args.append(relax.const(compensation_for_dense(values, shift)))

    def compute(x, packed, *compensation):
        return dot_gemv_te(x, packed, compensation[0] if compensation else None, instruction)

    return bb.call_te(compute, *args, primfunc_name_hint="gemv_int8")


def gemv_te(data, rows):
    length = int(data.shape[-1])
    if int(rows.shape[1]) != length:
        unpadded = data
        data = te.compute([*data.shape[:-1], rows.shape[1]],
                          lambda *i: te.if_then_else(i[-1] < length, unpadded[i], tvm.tirx.const(0, "float32")),
                          name="gemv_pad")
    k = te.reduce_axis((0, rows.shape[1]), name="k")
    return te.compute([*data.shape[:-1], rows.shape[0]],
                      lambda *i: te.sum(data[(*i[:-1], k)] * rows[i[-1], k], axis=k), name=GEMV_BLOCK)


# Parallel chunks of a GEMV's outputs: a few per thread, so a slow core does not hold up the rest.
_PARALLEL_CHUNKS = 8


class Gemv(SafeRule):
    """A batch-1 dense layer over weight rows (``legalize_matmul``): each output streams its
    contiguous row; a vector of partial sums over the row (rfactor), summed across lanes at
    the end with the epilogue; outputs split in parallel chunks."""

    def schedule(self, sch, lanes) -> bool:
        if not has_block(sch, GEMV_BLOCK):
            return False
        gemv = sch.get_sblock(GEMV_BLOCK)
        others = other_block_names(sch, gemv)
        *spatial, k = sch.get_loops(gemv)
        length = loop_extent(sch, k)
        if not spatial or length is None or length % lanes:
            return False
        k_outer, k_lane = sch.split(k, [None, lanes])
        partial = sch.rfactor(k_lane, factor_axis=len(spatial))
        total = inline_epilogue(sch, gemv)
        *outputs, k_outer, k_lane = sch.get_loops(partial)
        row = sch.fuse(*outputs) if len(outputs) > 1 else outputs[0]
        if block_work(sch, partial) * REDUCTION_WORK_SCALE >= PARALLEL_MIN_WORK:
            chunk, row = sch.split(row, [_PARALLEL_CHUNKS, None])
            sch.parallel(chunk)
        sch.vectorize(k_lane)
        sch.decompose_reduction(partial, k_outer)
        sch.reverse_compute_at(total, row, preserve_unit_loops=True)
        schedule_remaining(sch, others, lanes)
        return True
