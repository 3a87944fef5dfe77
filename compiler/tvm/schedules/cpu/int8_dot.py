"""int8 convolutions on dot-product instructions: each int32 lane of the accumulator gets the sum
of 4 byte products per instruction, under a register tile of output columns.

* x86 AVX-512 VNNI: ``vpdpbusd``, uint8 x int8, 16 lanes (zmm) or 8 (ymm).
* ARM dot product (``+dotprod``: Cortex-A76/A78, Raspberry Pi 5, Jetson Orin): ``sdot``,
  int8 x int8, 4 lanes (one NEON register).

Layouts: the data stays NCHW{b}c (b a multiple of 4); the weight is repacked once, at compile
time, from OIHW{b}i{o}o to OIHW{b/4}i{o}o4i (o = the lanes), so the 4 input channels of one
product are adjacent for each output channel (one vector load per instruction); the 4 input
bytes are one broadcast 32-bit word.

When the data's signedness is not the instruction's, the data is shifted by 128 (its padding
included) and the constant ``shift * sum(w)`` of each output channel is taken off the
accumulator, so the result is the exact ``sum(x * w)``: int8 activations on VNNI become
uint8 (oneDNN's s8s8 scheme), uint8 ones on ``sdot`` int8. Products and sums are exact in int32
(no int16 intermediate, unlike ``vpmaddubsw``, which saturates on full-range data).

The intrinsics are edgecnn's own: TVM 0.27's ``dot_16x4_vnni`` passes the operands as
``int32x16``, which the wheel's LLVM 22 rejects for ``llvm.x86.avx512.vpdpbusd.512`` (its
operands are ``<64 x i8>`` since LLVM 21).
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, te, topi
from tvm.script import tirx as T

from edgecnn.compiler.ops._shapes import output_size
from edgecnn.targets.isa import has_arm_dot_product, has_vnni

from .common import (
    NCHWC_INT8_CONV_BLOCK, PARALLEL_MIN_WORK, SafeRule, accumulate_in_registers, block_iters,
    conv_work, has_block, is_spatial, other_block_names, schedule_remaining, try_primitive,
)

DOT_WIDTH = 4  # input channels per product
SHIFT_BLOCK = "data_shifted"
_QRANGE_LOW = {"int8": -128, "uint8": 0}


@dataclass(frozen=True)
class DotInstruction:
    """One dot-product instruction at one vector width."""

    name: str  # the tensor intrinsic's registered name
    llvm_intrinsic: str
    lanes: int  # int32 accumulators per register
    data_dtype: str  # what the instruction multiplies the weights (int8) with

    def shift(self, dtype: str) -> int:
        """What is added to activations of ``dtype`` to bring them into ``data_dtype``."""
        return _QRANGE_LOW[self.data_dtype] - _QRANGE_LOW[dtype]


def _dot_intrinsic(lanes: int, data_dtype: str, llvm_intrinsic: str):
    """(description, implementation): ``lanes`` int32 accumulators += 4 byte products each."""
    width = lanes * DOT_WIDTH

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4,), data_dtype, offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), data_dtype, offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            four_bytes = T.reinterpret(A.vload([0], f"{data_dtype}x4"), dtype="int32")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_intrinsic),
                C.vload([0], dtype=f"int32x{lanes}"),
                T.reinterpret(T.broadcast(four_bytes, lanes), dtype=f"{data_dtype}x{width}"),
                B.vload([0, 0], dtype=f"int8x{width}"),
                dtype=f"int32x{lanes}",
            )

    return desc, impl


VNNI = {lanes: DotInstruction(f"edgecnn_vnni_dot_{lanes}x4", f"llvm.x86.avx512.vpdpbusd.{32 * lanes}", lanes, "uint8")
        for lanes in (16, 8)}
SDOT = {4: DotInstruction("edgecnn_sdot_4x4", "llvm.aarch64.neon.sdot.v4i32.v16i8", 4, "int8")}
for _instruction in (*VNNI.values(), *SDOT.values()):
    s_tir.TensorIntrin.register(_instruction.name, *_dot_intrinsic(
        _instruction.lanes, _instruction.data_dtype, _instruction.llvm_intrinsic), override=True)
_BY_NAME = {i.name: i for i in (*VNNI.values(), *SDOT.values())}


def dot_instructions(target) -> dict:
    """lanes -> DotInstruction that ``target``'s code may use (empty without one)."""
    if has_vnni(target):
        return VNNI
    if has_arm_dot_product(target):
        return SDOT
    return {}


MAX_TILE = 16  # output columns of one register tile: 16 accumulators of the 32 zmm / NEON registers
PAIRED_TILE = 8  # columns when two channel vectors share the tile


def column_tile(out_w: int, limit: int = MAX_TILE) -> int | None:
    """Output columns per register tile: a whole row up to ``limit``, else its largest divisor
    in [4, limit]. The tile must divide the row: a guarded tail cannot be tensorized. None when no
    such divisor exists (a row of 38 columns), and the conv takes the widened direct conv."""
    if out_w <= limit:
        return out_w
    return next((t for t in range(limit, 3, -1) if out_w % t == 0), None)


def dot_instruction_for(target, data_dtype: str, in_block: int, out_block: int, groups: int,
                        out_w: int) -> DotInstruction | None:
    """The instruction a blocked int8 conv runs on for ``target``, or None (widened direct conv)."""
    instruction = dot_instructions(target).get(out_block)
    if (instruction is None or data_dtype not in _QRANGE_LOW or groups != 1 or in_block % DOT_WIDTH
            or column_tile(out_w) is None):
        return None
    return instruction


def pack_weight_te(kernel):
    """OIHW{b}i{o}o -> OIHW{b/4}i{o}o4i: the 4 input channels of one product adjacent."""
    out_chunks, in_chunks, kernel_h, kernel_w, in_block, out_block = (int(v) for v in kernel.shape)
    return te.compute(
        (out_chunks, in_chunks, kernel_h, kernel_w, in_block // DOT_WIDTH, out_block, DOT_WIDTH),
        lambda o, i, y, x, q, b, r: kernel[o, i, y, x, q * DOT_WIDTH + r, b], name="dot_weight")


def compensation_te(kernel, shift: int):
    """``shift * sum(w)`` per output channel ([out chunks, o] int32): what shifting the data
    added to each accumulator."""
    out_chunks, in_chunks, kernel_h, kernel_w, in_block, out_block = (int(v) for v in kernel.shape)
    r_i = te.reduce_axis((0, in_chunks), "i")
    r_y = te.reduce_axis((0, kernel_h), "y")
    r_x = te.reduce_axis((0, kernel_w), "x")
    r_b = te.reduce_axis((0, in_block), "b")
    return te.compute(
        (out_chunks, out_block),
        lambda o, c: te.sum(kernel[o, r_i, r_y, r_x, r_b, c].astype("int32") * shift, axis=[r_i, r_y, r_x, r_b]),
        name="dot_compensation")


def dot_conv_te(data, packed, compensation, strides, padding, dilation, data_dtype: str,
                pad_value: float = 0.0):
    """int8/uint8 NCHW{b}c x packed int8 weight (``pack_weight_te``) -> int32 NCHW{o}c, exact,
    the data brought into ``data_dtype`` (the instruction's) first.

    ``padding`` pads with ``pad_value`` (in the data's domain: the zero point, where the int8
    road pads the real value 0). ``compensation`` is ``compensation_te``'s result, or None
    when no shift is needed."""
    batch, _, height, width, _ = (int(v) for v in data.shape)
    out_chunks, in_chunks, kernel_h, kernel_w, quads, out_block, _ = (int(v) for v in packed.shape)
    shift = _QRANGE_LOW[data_dtype] - _QRANGE_LOW[str(data.dtype)]
    pad_top, pad_left, pad_bottom, pad_right = (int(p) for p in padding)
    (stride_h, stride_w), (dil_h, dil_w) = (int(s) for s in strides), (int(d) for d in dilation)
    out_h = output_size(height, kernel_h, stride_h, dil_h, pad_top, pad_bottom)
    out_w = output_size(width, kernel_w, stride_w, dil_w, pad_left, pad_right)
    shifted = data
    if shift:
        shifted = te.compute(data.shape, lambda *i: (data(*i).astype("int32") + shift).astype(data_dtype),
                             name=SHIFT_BLOCK)
    if pad_top or pad_left or pad_bottom or pad_right:
        shifted = topi.nn.pad(shifted, (0, 0, pad_top, pad_left, 0), (0, 0, pad_bottom, pad_right, 0),
                              pad_value=int(pad_value) + shift, name="data_pad")
    r_chunk = te.reduce_axis((0, in_chunks), "ic_chunk")
    r_y = te.reduce_axis((0, kernel_h), "ky")
    r_x = te.reduce_axis((0, kernel_w), "kx")
    r_quad = te.reduce_axis((0, quads), "ic_quad")
    r_lane = te.reduce_axis((0, DOT_WIDTH), "ic_lane")
    acc = te.compute(
        (batch, out_chunks, out_h, out_w, out_block),
        lambda n, oc, y, x, b: te.sum(
            shifted[n, r_chunk, y * stride_h + r_y * dil_h, x * stride_w + r_x * dil_w,
                    r_quad * DOT_WIDTH + r_lane].astype("int32")
            * packed[oc, r_chunk, r_y, r_x, r_quad, b, r_lane].astype("int32"),
            axis=[r_chunk, r_y, r_x, r_quad, r_lane]),
        name=NCHWC_INT8_CONV_BLOCK)
    if compensation is None:
        return acc
    return te.compute(acc.shape, lambda n, oc, y, x, b: acc[n, oc, y, x, b] - compensation[oc, b],
                      name="dot_compensate")


def _instruction_of(sch, conv) -> DotInstruction | None:
    """The instruction whose lanes and operand type the conv block's reads match."""
    lanes = int(block_iters(sch, conv)[4].dom.extent)
    data = [r.source for r in sch.get(conv).reads if len(r.source.shape) == 5]  # the weight has 7 axes
    if len(data) != 1:
        return None
    data_dtype = str(data[0].dtype)
    found = [i for i in _BY_NAME.values() if i.lanes == lanes and i.data_dtype == data_dtype]
    return found[0] if len(found) == 1 else None


class IntegerDotConv(SafeRule):
    """``dot_conv_te``: a register tile of output columns x one vector of output channels in
    accumulator registers; per step one packed-weight load and one broadcast dot product per
    column; the compensation and the requantize epilogue inlined into the store."""

    def schedule(self, sch, lanes) -> bool:
        if not has_block(sch, NCHWC_INT8_CONV_BLOCK):
            return False
        conv = sch.get_sblock(NCHWC_INT8_CONV_BLOCK)
        iters = block_iters(sch, conv)
        instruction = _instruction_of(sch, conv)
        reg_w = column_tile(int(iters[3].dom.extent)) if len(iters) == 10 else None
        if instruction is None or reg_w is None:
            return False
        if has_block(sch, SHIFT_BLOCK) and has_block(sch, "data_pad"):
            sch.compute_inline(sch.get_sblock(SHIFT_BLOCK))
        # elementwise stages the epilogue reads besides the accumulator (a residual add's
        # dequantized skip input) go into the epilogue, so it inlines into the store
        feeding = {str(sch.get(b).name_hint) for b in sch.get_producers(conv)}
        for name in other_block_names(sch, conv):
            if name not in feeding and is_spatial(sch, sch.get_sblock(name)):
                try_primitive(sch.compute_inline, sch.get_sblock(name))
        others = other_block_names(sch, conv)
        parallel = conv_work(sch, conv) >= PARALLEL_MIN_WORK
        loops = accumulate_in_registers(sch, conv)
        if len(loops) != 5:
            return False
        n, chunk, row, col, vec = loops
        # two vectors of output channels share each broadcast when the chunks pair up: 2 x 8
        # accumulators (64 -> 64 channels at 56x56, 2 threads, Intel with VNNI: 0.24 -> 0.22 ms)
        paired_w = column_tile(int(iters[3].dom.extent), PAIRED_TILE)
        oc_tile = 2 if int(iters[1].dom.extent) % 2 == 0 and paired_w is not None else 1
        if oc_tile == 2:
            reg_w = paired_w
        chunk_out, chunk_in = sch.split(chunk, [None, oc_tile])
        col_out, col_in = sch.split(col, [None, reg_w])
        # rows outer of channel chunks, as the fp32 direct conv (common.schedule_tiled)
        sch.reorder(n, row, chunk_out, col_out, chunk_in, col_in, vec)
        outer = sch.fuse(n, row, chunk_out)
        if parallel:
            sch.parallel(outer)
        sch.vectorize(vec)
        sch.compute_at(conv, col_out, preserve_unit_loops=True)
        # [outer, col_out, n, chunk tile, row, column tile, lane, 5 reductions]
        loops = sch.get_loops(conv)
        if len(loops) != 12:
            return False
        r_chunk, r_y, r_x, r_quad, r_lane = loops[7:]
        chunk_tile, col_tile, lane = loops[3], loops[5], loops[6]
        sch.reorder(r_chunk, r_y, r_x, r_quad, chunk_tile, col_tile, lane, r_lane)
        init = sch.decompose_reduction(conv, r_chunk)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.tensorize(lane, instruction.name)
        sch.unroll(col_tile)
        sch.unroll(chunk_tile)
        schedule_remaining(sch, [o for o in others if has_block(sch, o)], lanes, parallel or None)
        return True
