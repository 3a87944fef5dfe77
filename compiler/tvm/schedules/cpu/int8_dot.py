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

import numpy as np
from tvm import s_tir, te, tirx, topi
from tvm.script import tirx as T

from edgecnn.compiler.ops._shapes import output_size
from edgecnn.targets.isa import has_arm_dot_product, has_vnni, is_aarch64, target_features

from .common import (
    INT8_GEMV_BLOCK, NCHWC_INT8_CONV_BLOCK, PARALLEL_MIN_WORK, REDUCTION_WORK_SCALE, SafeRule, accumulate_in_registers, block_iters,
    conv_work, has_block, is_spatial, other_block_names, schedule_remaining, try_primitive,
)

SHIFT_BLOCK = "data_shifted"
_INT8_TYPES = ("int8", "uint8")


@dataclass(frozen=True)
class DotInstruction:
    """One dot-product instruction at one vector width: ``lanes`` int32 accumulators, each
    given the sum of ``width`` products of ``data_dtype`` x ``weight_dtype`` per instruction."""

    name: str  # the tensor intrinsic's registered name
    llvm_intrinsic: str
    lanes: int
    width: int
    data_dtype: str
    weight_dtype: str
    # how the product reaches the accumulator: "fused" (vpdpbusd, sdot add to it themselves),
    # "add" (vpmaddwd's int32 sums, then an add), or "pairwise" (NEON: int16 products added in
    # pairs into int32 by ``pairwise_intrinsic``, saddlp, then added: LLVM emits sadalp)
    form: str = "fused"
    pairwise_intrinsic: str = ""

    def shift(self, dtype: str) -> int:
        """What is added to int8/uint8 activations to bring them into ``data_dtype``."""
        if dtype == "int8" and self.data_dtype == "uint8":
            return 128
        if dtype == "uint8" and self.data_dtype == "int8":
            return -128
        return 0  # the same type, or widened to int16 (every value kept)


def _dot_intrinsic(instruction: DotInstruction):
    """(description, implementation) of ``instruction`` as a tensor intrinsic."""
    lanes, width = instruction.lanes, instruction.width
    data_dtype, weight_dtype = instruction.data_dtype, instruction.weight_dtype
    elements = lanes * width
    llvm_intrinsic, form = instruction.llvm_intrinsic, instruction.form
    # TVMScript builds every branch below, so the unused one still names a real intrinsic
    pairwise = instruction.pairwise_intrinsic or llvm_intrinsic
    word_bits = width * int(data_dtype.lstrip("uint"))

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((width,), data_dtype, offset_factor=1),
        B: T.Buffer((lanes, width), weight_dtype, offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:width], B[0:lanes, 0:width])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, width):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((width,), data_dtype, offset_factor=1),
        B: T.Buffer((lanes, width), weight_dtype, offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:width], B[0:lanes, 0:width])
            T.writes(C[0:lanes])
            # the products' inputs of one lane are one word (32 bits; 16 for NEON's pairs): broadcast
            word = T.reinterpret(A.vload([0], f"{data_dtype}x{width}"), dtype=f"int{word_bits}")
            operands = (T.reinterpret(T.broadcast(word, lanes), dtype=f"{data_dtype}x{elements}"),
                        B.vload([0, 0], dtype=f"{weight_dtype}x{elements}"))
            if form == "fused":
                C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm_intrinsic), C.vload([0], dtype=f"int32x{lanes}"),
                    *operands, dtype=f"int32x{lanes}")
            elif form == "add":
                C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=f"int32x{lanes}") + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm_intrinsic), *operands, dtype=f"int32x{lanes}")
            else:
                C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=f"int32x{lanes}") + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(pairwise),
                    T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(llvm_intrinsic), *operands,
                                            dtype=f"int16x{elements}"),
                    dtype=f"int32x{lanes}")

    return desc, impl


# x86 AVX-512 VNNI: vpdpbusd on zmm (16 lanes) and ymm (8); u8 x s8, 4 products per lane
VNNI = [DotInstruction(f"edgecnn_vnni_{lanes}x4", f"llvm.x86.avx512.vpdpbusd.{32 * lanes}", lanes, 4,
                       "uint8", "int8") for lanes in (16, 8)]
# ARM dot product (+dotprod): sdot, s8 x s8, 4 products per lane, 4 lanes
SDOT = [DotInstruction("edgecnn_sdot_4x4", "llvm.aarch64.neon.sdot.v4i32.v16i8", 4, 4, "int8", "int8")]
# ARM NEON without dot product (Cortex-A72, Raspberry Pi 4): smull (8 s8 x s8 -> s16 products,
# exact) and sadalp (their pairs added into 4 int32 lanes), 2 products per lane
SMULL = [DotInstruction("edgecnn_smull_sadalp_4x2", "llvm.aarch64.neon.smull.v8i16", 4, 2, "int8", "int8",
                        form="pairwise", pairwise_intrinsic="llvm.aarch64.neon.saddlp.v4i32.v8i16")]
# x86 without VNNI: vpmaddwd on int16 (the int8 data and weights widened), 2 products per lane
# and exact, unlike vpmaddubsw's int16 sums, which saturate on full-range data
PMADDWD_AVX512 = [DotInstruction("edgecnn_pmaddwd_16x2", "llvm.x86.avx512.pmaddw.d.512", 16, 2,
                                 "int16", "int16", form="add")]
PMADDWD_AVX2 = [DotInstruction("edgecnn_pmaddwd_8x2", "llvm.x86.avx2.pmadd.wd", 8, 2, "int16", "int16", form="add")]
_ALL = (*VNNI, *SDOT, *SMULL, *PMADDWD_AVX512, *PMADDWD_AVX2)
for _instruction in _ALL:
    s_tir.TensorIntrin.register(_instruction.name, *_dot_intrinsic(_instruction), override=True)


def dot_instructions(target) -> list:
    """The dot-product instructions ``target``'s code may use, best first (empty without one)."""
    if has_vnni(target):
        return VNNI
    if has_arm_dot_product(target):
        return SDOT
    features = target_features(target) if target is not None else frozenset()
    if is_aarch64(target) and "neon" in features:
        return SMULL
    if "avx512bw" in features:
        return PMADDWD_AVX512 + PMADDWD_AVX2
    if "avx2" in features:
        return PMADDWD_AVX2
    return []


MAX_TILE = 16  # output columns of one register tile: 16 accumulators of the 32 zmm / NEON registers
PAIRED_TILE = 8  # columns when two channel vectors share the tile


def accumulator_budget(lanes: int) -> int:
    """Accumulator registers a tile may hold: 32 vector registers with AVX-512 and NEON, 16 with
    AVX2 (the weight vectors and the broadcast take the rest)."""
    return 16 if lanes >= 16 or lanes == 4 else 12


def column_tile(out_w: int, limit: int = MAX_TILE) -> int | None:
    """Output columns per register tile: a whole row up to ``limit``, else its largest divisor
    in [4, limit]. The tile must divide the row: a guarded tail cannot be tensorized. None when no
    such divisor exists (a row of 38 columns), and the conv takes the widened direct conv."""
    if out_w <= limit:
        return out_w
    return next((t for t in range(limit, 3, -1) if out_w % t == 0), None)


def register_tile(instruction: DotInstruction, out_chunks: int, out_w: int, out_block: int):
    """(output-channel chunks, output columns) of a conv's register tile, or None when no column
    tile divides the row. Two chunks share each broadcast when they pair up and the tile keeps 4
    columns or more: 2 x 8 accumulators on AVX-512 (64 -> 64 channels at 56x56, 2 threads, Intel
    with VNNI: 0.24 -> 0.22 ms)."""
    vectors = out_block // instruction.lanes
    budget = accumulator_budget(instruction.lanes)
    paired_limit = budget // (2 * vectors)
    if out_chunks % 2 == 0 and paired_limit >= 4:
        paired = column_tile(out_w, paired_limit)
        if paired is not None:
            return 2, paired
    single = column_tile(out_w, budget // vectors)
    return None if single is None else (1, single)


def dot_instruction_for(target, data_dtype: str, in_block: int, out_block: int, groups: int,
                        out_chunks: int, out_w: int) -> DotInstruction | None:
    """The instruction a blocked int8 conv runs on for ``target``, or None (widened direct conv):
    the widest whose lanes divide the output block and whose products divide the input block."""
    if data_dtype not in _INT8_TYPES or groups != 1:
        return None
    fitting = [i for i in dot_instructions(target) if out_block % i.lanes == 0 and in_block % i.width == 0]
    if not fitting or register_tile(fitting[0], out_chunks, out_w, out_block) is None:
        return None
    return fitting[0]


def pack_weight_te(kernel, width: int, dtype: str):
    """OIHW{b}i{o}o -> OIHW{b/w}i{o}o{w}i in ``dtype``: the ``width`` input channels of one
    product adjacent for each output channel."""
    out_chunks, in_chunks, kernel_h, kernel_w, in_block, out_block = (int(v) for v in kernel.shape)
    return te.compute(
        (out_chunks, in_chunks, kernel_h, kernel_w, in_block // width, out_block, width),
        lambda o, i, y, x, q, b, r: kernel[o, i, y, x, q * width + r, b].astype(dtype), name="dot_weight")


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


def dot_conv_te(data, packed, compensation, strides, padding, dilation, instruction: DotInstruction,
                pad_value: float = 0.0):
    """int8/uint8 NCHW{b}c x packed weight (``pack_weight_te``) -> int32 NCHW{o}c, exact, the
    data first brought into the instruction's type (shifted, or widened to int16).

    ``padding`` pads with ``pad_value`` (in the data's domain: the zero point, where the int8
    road pads the real value 0). ``compensation`` is ``compensation_te``'s result, or None
    when no shift is needed."""
    batch, _, height, width, _ = (int(v) for v in data.shape)
    out_chunks, in_chunks, kernel_h, kernel_w, groups_of, out_block, dot = (int(v) for v in packed.shape)
    shift = instruction.shift(str(data.dtype))
    pad_top, pad_left, pad_bottom, pad_right = (int(p) for p in padding)
    (stride_h, stride_w), (dil_h, dil_w) = (int(s) for s in strides), (int(d) for d in dilation)
    out_h = output_size(height, kernel_h, stride_h, dil_h, pad_top, pad_bottom)
    out_w = output_size(width, kernel_w, stride_w, dil_w, pad_left, pad_right)
    converted = data
    if shift or str(data.dtype) != instruction.data_dtype:
        converted = te.compute(
            data.shape, lambda *i: (data(*i).astype("int32") + shift).astype(instruction.data_dtype),
            name=SHIFT_BLOCK)
    if pad_top or pad_left or pad_bottom or pad_right:
        converted = topi.nn.pad(converted, (0, 0, pad_top, pad_left, 0), (0, 0, pad_bottom, pad_right, 0),
                                pad_value=int(pad_value) + shift, name="data_pad")
    r_chunk = te.reduce_axis((0, in_chunks), "ic_chunk")
    r_y = te.reduce_axis((0, kernel_h), "ky")
    r_x = te.reduce_axis((0, kernel_w), "kx")
    r_group = te.reduce_axis((0, groups_of), "ic_group")
    r_lane = te.reduce_axis((0, dot), "ic_lane")
    acc = te.compute(
        (batch, out_chunks, out_h, out_w, out_block),
        lambda n, oc, y, x, b: te.sum(
            converted[n, r_chunk, y * stride_h + r_y * dil_h, x * stride_w + r_x * dil_w,
                      r_group * dot + r_lane].astype("int32")
            * packed[oc, r_chunk, r_y, r_x, r_group, b, r_lane].astype("int32"),
            axis=[r_chunk, r_y, r_x, r_group, r_lane]),
        name=NCHWC_INT8_CONV_BLOCK)
    if compensation is None:
        return acc
    return te.compute(acc.shape, lambda n, oc, y, x, b: acc[n, oc, y, x, b] - compensation[oc, b],
                      name="dot_compensate")


def _instruction_of(sch, conv, lanes: int) -> DotInstruction | None:
    """The widest instruction (at most ``lanes`` wide, the target's vector) that the conv
    block's operand types and product width match."""
    reads = {len(r.source.shape): r.source for r in sch.get(conv).reads}  # data 5 axes, weight 7
    iters = block_iters(sch, conv)
    if set(reads) != {5, 7}:
        return None
    out_block, dot = int(iters[4].dom.extent), int(iters[9].dom.extent)
    found = [i for i in _ALL if i.data_dtype == str(reads[5].dtype) and i.weight_dtype == str(reads[7].dtype)
             and i.width == dot and i.lanes <= lanes and out_block % i.lanes == 0]
    return max(found, key=lambda i: i.lanes) if found else None


class IntegerDotConv(SafeRule):
    """``dot_conv_te``: a register tile of output columns x one or two chunks of output channels
    (each chunk one or two vectors) in accumulator registers; per step one packed-weight load
    per vector and one broadcast dot product per column and vector; the compensation and the
    requantize epilogue inlined into the store."""

    def schedule(self, sch, lanes) -> bool:
        if not has_block(sch, NCHWC_INT8_CONV_BLOCK):
            return False
        conv = sch.get_sblock(NCHWC_INT8_CONV_BLOCK)
        iters = block_iters(sch, conv)
        instruction = _instruction_of(sch, conv, lanes) if len(iters) == 10 else None
        if instruction is None:
            return False
        out_chunks, out_w, out_block = (int(iters[i].dom.extent) for i in (1, 3, 4))
        tile = register_tile(instruction, out_chunks, out_w, out_block)
        if tile is None:
            return False
        oc_tile, reg_w = tile
        vectors = out_block // instruction.lanes
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
        chunk_out, chunk_in = sch.split(chunk, [None, oc_tile])
        col_out, col_in = sch.split(col, [None, reg_w])
        # rows outer of channel chunks, as the fp32 direct conv (common.schedule_tiled)
        sch.reorder(n, row, chunk_out, col_out, chunk_in, col_in, vec)
        outer = sch.fuse(n, row, chunk_out)
        if parallel:
            sch.parallel(outer)
        sch.vectorize(vec)
        sch.compute_at(conv, col_out, preserve_unit_loops=True)
        # [outer, col_out, n, chunk tile, row, column tile, channels, 5 reductions]
        loops = sch.get_loops(conv)
        if len(loops) != 12:
            return False
        r_chunk, r_y, r_x, r_group, r_lane = loops[7:]
        chunk_tile, col_tile, channels = loops[3], loops[5], loops[6]
        vector_tile, lane = sch.split(channels, [vectors, instruction.lanes])
        sch.reorder(r_chunk, r_y, r_x, r_group, chunk_tile, vector_tile, col_tile, lane, r_lane)
        init = sch.decompose_reduction(conv, r_chunk)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.tensorize(lane, instruction.name)
        for tile in (col_tile, vector_tile, chunk_tile):
            sch.unroll(tile)
        schedule_remaining(sch, [o for o in others if has_block(sch, o)], lanes, parallel or None)
        return True


# -- batch-1 dense layers ------------------------------------------------------------------------

def pack_dense_weight(weight: np.ndarray, instruction: DotInstruction) -> np.ndarray:
    """K x N int8 weights -> [N/lanes, K/width, lanes, width] in the instruction's weight type, K
    padded with zeros to whole products: one vector load per instruction."""
    k, n = weight.shape
    lanes, width = instruction.lanes, instruction.width
    padded = np.zeros((-(-k // width) * width, n), dtype=np.int64)
    padded[:k] = weight
    return np.ascontiguousarray(padded.reshape(-1, width, n // lanes, lanes).transpose(2, 0, 3, 1)
                                .astype(instruction.weight_dtype))


def compensation_for_dense(weight: np.ndarray, shift: int) -> np.ndarray:
    """``shift * sum_k w[k, n]`` (N,) int32: what shifting the data added to each output."""
    return (shift * weight.astype(np.int64).sum(axis=0)).astype(np.int32)


def dense_instruction_for(target, data_dtype: str, out_features: int) -> DotInstruction | None:
    """The instruction a batch-1 int8 dense layer runs on, or None (the default matmul)."""
    if data_dtype not in _INT8_TYPES:
        return None
    return next((i for i in dot_instructions(target) if out_features % i.lanes == 0), None)


def dot_gemv_te(data, packed, compensation, instruction: DotInstruction):
    """(1, K) int8/uint8 x packed weight -> (1, N) int32, exact; data converted as in ``dot_conv_te``
    (and padded with zeros to whole products), ``compensation`` (N,) int32 or None."""
    length = int(data.shape[-1])
    chunks, groups_of, lanes, dot = (int(v) for v in packed.shape)
    shift = instruction.shift(str(data.dtype))
    converted = te.compute(
        (1, groups_of * dot),
        lambda i, k: te.if_then_else(k < length, (data[i, k].astype("int32") + shift).astype(instruction.data_dtype),
                                     tirx.const(0, instruction.data_dtype)),
        name=SHIFT_BLOCK)
    r_group = te.reduce_axis((0, groups_of), "k_group")
    r_lane = te.reduce_axis((0, dot), "k_lane")
    acc = te.compute(
        (1, chunks, lanes),
        lambda i, c, b: te.sum(converted[i, r_group * dot + r_lane].astype("int32")
                               * packed[c, r_group, b, r_lane].astype("int32"), axis=[r_group, r_lane]),
        name=INT8_GEMV_BLOCK)
    return te.compute(
        (1, chunks * lanes),
        lambda i, n: acc[i, n // lanes, n % lanes] - (compensation[n] if compensation is not None else 0),
        name="dot_gemv_out")


class IntegerDotGemv(SafeRule):
    """``dot_gemv_te``: each chunk of output lanes accumulates in one register over the whole
    row of products (tensorized); chunks in parallel when there is enough work."""

    def schedule(self, sch, lanes) -> bool:
        if not has_block(sch, INT8_GEMV_BLOCK):
            return False
        gemv = sch.get_sblock(INT8_GEMV_BLOCK)
        reads = {len(r.source.shape): r.source for r in sch.get(gemv).reads}
        iters = block_iters(sch, gemv)
        if set(reads) != {2, 4}:
            return False
        chunk_lanes, dot = int(iters[2].dom.extent), int(iters[4].dom.extent)
        found = [i for i in _ALL if i.data_dtype == str(reads[2].dtype) and i.weight_dtype == str(reads[4].dtype)
                 and i.width == dot and i.lanes == chunk_lanes]
        if not found:
            return False
        others = other_block_names(sch, gemv)  # the converted row stays a buffer: the product reads words
        loops = accumulate_in_registers(sch, gemv)  # the store: (1, chunks, lanes), or (1, N) when
        if len(loops) == 3:                         # the output's flattening did not inline into it
            _, chunk, lane = loops
        elif len(loops) == 2:
            chunk, lane = sch.split(loops[1], [None, chunk_lanes])
        else:
            return False
        if conv_work(sch, gemv) * REDUCTION_WORK_SCALE >= PARALLEL_MIN_WORK:
            sch.parallel(chunk)
        sch.vectorize(lane)
        sch.compute_at(gemv, chunk, preserve_unit_loops=True)
        *_, lane_loop, r_group, r_lane = sch.get_loops(gemv)  # [store loops..., i, c, lanes, group, lane]
        sch.reorder(r_group, lane_loop, r_lane)
        init = sch.decompose_reduction(gemv, r_group)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.tensorize(lane_loop, found[0].name)
        schedule_remaining(sch, [o for o in others if has_block(sch, o)], lanes)
        return True
