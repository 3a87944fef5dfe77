"""Default CPU schedules: fast untuned code for every layer of a CNN, chosen from its shapes.

TVM 0.27's zero pipeline legalizes and fuses but schedules nothing on CPU, so every layer
runs as scalar, single-thread loops (50-70x slower than onnxruntime). ``cpu_passes(target)``
replaces it: Relax rewrites, then every fused PrimFunc scheduled with TVM's own primitives,
no search.

Relax level (``layout_passes``):
* Zero ``Pad`` nodes (edgecnn's exporter writes "same" padding as one) fold into the conv's
  own padding; ONNX ``Sum`` (stack + sum) becomes adds.
* ``ConvertLayout`` puts convolutions into a blocked layout: NCHW{b}c activations,
  OIHW{bi}i{bo}o weights, ``b`` = ``channel_block(target)``: one vector of fp32 lanes (16
  AVX-512, 4 NEON/SSE), two on AVX2 (16 channels, a tile of 6 columns x 2 vectors).
  Then ``_BlockRemaining`` blocks what it left, layer by layer, with blocks chosen from the
  channel counts (3-channel inputs stay NCHW as a free reshape, 24 channels at 16 lanes use
  blocks of 8, depthwise and grouped convs get their own), and moves the NCHW{b}c -> NCHW
  transforms down through elementwise ops, pooling and concat until they meet their inverse
  and cancel, so activations stay blocked between layers.
* Our legalization of blocked convs: direct, depthwise, grouped, and Winograd F(4x4, 3x3)
  for 3x3 stride-1 convs with >= 32 channels (``use_winograd``). Weight repacks and the
  Winograd weight transform are computations on constants, folded at compile time.

TIR level (``schedule_rules``), first match wins:
* ``WinogradConv`` / ``BlockedConv``: a register tile of ``reg_w`` output columns x one block
  of output channels (one vector, two on AVX2) accumulated in a local buffer, reductions over
  input-channel chunks, kernel taps and the channels of a block (per step: the block's weight
  vectors, ``reg_w`` broadcasts, an FMA for each accumulator); bias, BatchNorm, activation
  and residual adds inlined into the store; outer loops fused and parallel when the layer has
  enough work.
* ``PlainConv``: a conv still in NCHW: output channels x a vector of output columns.
* dlight's CPU ``GEMV``, then ``Generic``: pooling, dense, layout transforms, elementwise and
  padding get fused parallel outer loops and a vectorized innermost axis; the spatial axes
  of a reduction move inside it so they vectorize.

A rule that does not recognise a function returns None and leaves it to the next one; a
schedule primitive that refuses (TVM checks each one) makes the rule give up on that
function rather than emit anything unchecked. With a MetaSchedule database in scope, a
record replaces a default schedule only where it measures faster here (``keep_faster``).
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import tvm
import tvm_ffi
from tvm.sym.analyzer import Analyzer as _Analyzer
from tvm import relax, s_tir, te, tirx, topi
from tvm.relax.transform.legalize_ops.linear_algebra import _matmul as _default_matmul_legalize
from tvm.relax.transform.legalize_ops.nn import _nn_conv2d as _default_conv2d_legalize
from tvm.s_tir import dlight
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target, codegen

_LOG = logging.getLogger(__name__)

# Name of the compute block our blocked-conv legalization emits; the conv rule looks for it.
NCHWC_CONV_BLOCK = "conv2d_nchwc"
NCHWC_DEPTHWISE_BLOCK = "depthwise_conv2d_nchwc"
GEMV_BLOCK = "gemv_rows"
RULE_ANNOTATION = "edgecnn.schedule_rule"
WINOGRAD_INPUT_BLOCK = "winograd_input"
WINOGRAD_GEMM_BLOCK = "winograd_gemm"
WINOGRAD_OUTPUT_BLOCK = "winograd_output"

_AVX512_CPUS = ("skylake-avx512", "cascadelake", "cooperlake", "icelake", "tigerlake",
                "sapphirerapids", "emeraldrapids", "graniterapids", "rocketlake",
                "cannonlake", "znver4", "znver5", "x86-64-v4", "knl", "knm")
_AVX2_CPUS = ("haswell", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake",
              "znver1", "znver2", "znver3", "x86-64-v3", "core-avx2", "arrowlake", "lunarlake")

# Largest register tile of output columns: 14 accumulators + weight + broadcast fit the 32
# vector registers of AVX-512 and NEON; AVX2 has 16, so it gets fewer columns.
_MAX_REG_W = {16: 14, 8: 12, 4: 12}


def _as_target(target) -> Target:
    if isinstance(target, Target):
        return target
    return Target(target)


def vector_lanes(target) -> int:
    """fp32 lanes of the target's widest vector unit: 16 (AVX-512), 8 (AVX2), 4 (NEON, SSE)."""
    target = _as_target(target)
    attrs = target.attrs
    mcpu = str(attrs.get("mcpu", "") or "").lower()
    mattr = [str(a).lower() for a in (attrs.get("mattr", None) or [])]
    mtriple = str(attrs.get("mtriple", "") or "").lower()
    if mtriple.startswith(("aarch64", "arm")) or "+neon" in mattr:
        return 4
    try:  # LLVM's own view of the mcpu/mattr pair: covers every CPU name it knows
        features = {str(f) for f in codegen.llvm_get_cpu_features(target)}
    except Exception:  # pylint: disable=broad-except
        features = set()
    if "avx512f" in features or "+avx512f" in mattr or any(mcpu.startswith(c) for c in _AVX512_CPUS):
        return 16
    if "avx2" in features or "+avx2" in mattr or any(mcpu.startswith(c) for c in _AVX2_CPUS):
        return 8
    return 4


def channel_block(target) -> int:
    """Channels per block of the blocked layout: one vector, except on AVX2, where it is two.

    AVX2 has 16 vector registers and no broadcast operand for FMA (AVX-512 has 32 and one), so
    a tile of 12 columns x one 8-lane vector pays a broadcast per FMA; 6 columns x two vectors
    of output channels keeps 12 accumulators, loads each input value once for two FMAs and
    each weight vector once for six (measured on a Zen 3, 2 threads: 3conv-224 1.38 -> 1.16x
    onnxruntime, resnet8 1.89 -> 1.24x, vgg-small 2.13 -> 1.74x)."""
    lanes = vector_lanes(target)
    return 2 * lanes if lanes == 8 else lanes


def host_vector_lanes() -> int:
    """fp32 lanes this machine's CPU offers (from /proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return 4
    flags = set(re.findall(r"\b(avx512f|avx2|asimd|neon)\b", text))
    if "avx512f" in flags:
        return 16
    if "avx2" in flags:
        return 8
    return 4


# --------------------------------------------------------------------------------------
# Relax level: blocked layout and our legalization of the blocked convolution
# --------------------------------------------------------------------------------------


def _blocked_conv_te(data, kernel, strides, padding, dilation, groups=1):
    """Direct convolution in NCHW{bi}c x OIHW{bi}i{bo}o -> NCHW{bo}c.

    out[n, oc, y, x, ob] = sum over (ic, ky, kx, ib) of
        pad(data)[n, g(oc)*IC + ic, y*sy + ky*dy, x*sx + kx*dx, ib] * kernel[oc, ic, ky, kx, ib, ob]
    where IC is the number of input-channel chunks per group and g(oc) the group of output
    chunk oc (0 when groups = 1).
    The input-channel reduction is split into chunk and block (two axes) so the schedule can
    place the in-block channels innermost without index arithmetic.
    """
    batch, in_chunks, height, width, in_block = (int(v) for v in data.shape)
    out_chunks, kernel_chunks, kernel_h, kernel_w, kernel_block, out_block = (
        int(v) for v in kernel.shape)
    if kernel_chunks * groups != in_chunks or kernel_block != in_block or out_chunks % groups:
        raise ValueError(
            "blocked conv: kernel input channels must match the data's per group. "
            f"Received: data={tuple(data.shape)}, kernel={tuple(kernel.shape)}, groups={groups}")
    out_chunks_per_group = out_chunks // groups
    pad_top, pad_left, pad_bottom, pad_right = (int(p) for p in padding)
    stride_h, stride_w = (int(s) for s in strides)
    dil_h, dil_w = (int(d) for d in dilation)
    out_h = (height + pad_top + pad_bottom - (kernel_h - 1) * dil_h - 1) // stride_h + 1
    out_w = (width + pad_left + pad_right - (kernel_w - 1) * dil_w - 1) // stride_w + 1
    if pad_top or pad_left or pad_bottom or pad_right:
        padded = topi.nn.pad(data, (0, 0, pad_top, pad_left, 0),
                             (0, 0, pad_bottom, pad_right, 0), name="data_pad")
    else:
        padded = data
    r_chunk = te.reduce_axis((0, kernel_chunks), "ic_chunk")
    r_y = te.reduce_axis((0, kernel_h), "ky")
    r_x = te.reduce_axis((0, kernel_w), "kx")
    r_block = te.reduce_axis((0, in_block), "ic_block")

    def in_chunk(oc):
        if groups == 1:
            return r_chunk
        return oc // out_chunks_per_group * kernel_chunks + r_chunk

    return te.compute(
        (batch, out_chunks, out_h, out_w, out_block),
        lambda n, oc, y, x, ob: te.sum(
            padded[n, in_chunk(oc), y * stride_h + r_y * dil_h, x * stride_w + r_x * dil_w,
                   r_block]
            * kernel[oc, r_chunk, r_y, r_x, r_block, ob],
            axis=[r_chunk, r_y, r_x, r_block]),
        name=NCHWC_CONV_BLOCK)


def _blocked_depthwise_te(data, kernel, strides, padding, dilation):
    """Depthwise convolution in NCHW{b}c x (C/b, 1, KH, KW, 1, b) -> NCHW{b}c.

    out[n, c, y, x, cb] = sum over (ky, kx) of
        pad(data)[n, c, y*sy + ky*dy, x*sx + kx*dx, cb] * kernel[c, 0, ky, kx, 0, cb]
    """
    batch, chunks, height, width, block = (int(v) for v in data.shape)
    k_chunks, k_one, kernel_h, kernel_w, k_one_b, k_block = (int(v) for v in kernel.shape)
    if (k_chunks, k_one, k_one_b, k_block) != (chunks, 1, 1, block):
        raise ValueError(
            "blocked depthwise conv: kernel must be (C/b, 1, KH, KW, 1, b) for data "
            f"(N, C/b, H, W, b). Received: data={tuple(data.shape)}, kernel={tuple(kernel.shape)}")
    pad_top, pad_left, pad_bottom, pad_right = (int(p) for p in padding)
    stride_h, stride_w = (int(s) for s in strides)
    dil_h, dil_w = (int(d) for d in dilation)
    out_h = (height + pad_top + pad_bottom - (kernel_h - 1) * dil_h - 1) // stride_h + 1
    out_w = (width + pad_left + pad_right - (kernel_w - 1) * dil_w - 1) // stride_w + 1
    if pad_top or pad_left or pad_bottom or pad_right:
        padded = topi.nn.pad(data, (0, 0, pad_top, pad_left, 0),
                             (0, 0, pad_bottom, pad_right, 0), name="data_pad")
    else:
        padded = data
    r_y = te.reduce_axis((0, kernel_h), "ky")
    r_x = te.reduce_axis((0, kernel_w), "kx")
    return te.compute(
        (batch, chunks, out_h, out_w, block),
        lambda n, c, y, x, cb: te.sum(
            padded[n, c, y * stride_h + r_y * dil_h, x * stride_w + r_x * dil_w, cb]
            * kernel[c, 0, r_y, r_x, 0, cb],
            axis=[r_y, r_x]),
        name=NCHWC_DEPTHWISE_BLOCK)


# Winograd F(4x4, 3x3) (Lavin & Gray): Y = A^T [(G g G^T) * (B^T d B)] A on 6x6 input tiles.
_WINOGRAD_TILE = 4
_WINOGRAD_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
                        np.float32)
_WINOGRAD_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                        [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float32)
_WINOGRAD_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                         [0, 1, -1, 8, -8, 1]], np.float32)


def _winograd_weight_te(kernel, g_matrix):
    """U[e, u, oc, ic, ib, ob] = sum over (ky, kx) of G[e, ky] G[u, kx] kernel[oc, ic, ky, kx, ib, ob]
    (folded at compile time: the kernel is a constant)."""
    out_chunks, in_chunks, _, _, in_block, out_block = (int(v) for v in kernel.shape)
    alpha = int(g_matrix.shape[0])
    r_y = te.reduce_axis((0, 3), "ky")
    r_x = te.reduce_axis((0, 3), "kx")
    return te.compute(
        (alpha, alpha, out_chunks, in_chunks, in_block, out_block),
        lambda e, u, o, i, ib, ob: te.sum(
            g_matrix[e, r_y] * g_matrix[u, r_x] * kernel[o, i, r_y, r_x, ib, ob], axis=[r_y, r_x]),
        name="winograd_weight")


def _coefficient(matrix, row_index, col: int):
    """``matrix[row_index, col]`` for a loop variable ``row_index``: a chain of Selects over
    constants, which the simplifier folds to one constant once the loop is unrolled."""
    rows = len(matrix)
    expr = tirx.const(float(matrix[rows - 1][col]), "float32")
    for r in reversed(range(rows - 1)):
        expr = tirx.Select(row_index == r, tirx.const(float(matrix[r][col]), "float32"), expr)
    return expr


def _tile_transform(matrix, row_index, col_index, tile_values):
    """``(M X M^T)[row_index, col_index]`` for the 2-D tile ``X = tile_values``, rows first:
    sum over b of M[col_index, b] (sum over a of M[row_index, a] X[a, b]).

    The schedules unroll both indices, so every coefficient folds to a constant, and the
    simplifier drops the zero ones and the multiplications by 1: with B^T 22 of 36 entries are
    nonzero and most are +-1, with A^T 18 of 24. The row sums of one row index repeat across
    the unrolled column indices and LLVM computes each once: an input tile costs about 264
    adds per channel instead of the 1296 multiply-adds of the plain double sum, an output
    tile 180 instead of 576.
    """
    height, width = len(tile_values), len(tile_values[0])
    rows = [sum(_coefficient(matrix, row_index, a) * tile_values[a][b] for a in range(height))
            for b in range(width)]
    return sum(_coefficient(matrix, col_index, b) * rows[b] for b in range(width))


def _winograd_conv_te(data, weight_t, padding):
    """3x3 stride-1 convolution in NCHW{bi}c -> NCHW{bo}c by Winograd F(4x4, 3x3).

    V[e, u, ic, p, ib] = (B^T d B)[e, u] for the 6x6 input tile p of pad(data)
    M[e, u, oc, p, ob] = sum over (ic, ib) of U[e, u, oc, ic, ib, ob] V[e, u, ic, p, ib]
    Y[n, oc, y, x, ob] = (A^T M A)[y % 4, x % 4] for the tile (y // 4, x // 4)

    The transforms are sums with coefficients that become constants once their schedules
    unroll the (e, u) and (y % 4, x % 4) loops (``_tile_transform``).
    """
    batch, in_chunks, height, width, in_block = (int(v) for v in data.shape)
    alpha, _, out_chunks, _, _, out_block = (int(v) for v in weight_t.shape)
    tile = _WINOGRAD_TILE
    pad_top, pad_left, pad_bottom, pad_right = (int(p) for p in padding)
    out_h = height + pad_top + pad_bottom - 2
    out_w = width + pad_left + pad_right - 2
    tiles_h, tiles_w = -(-out_h // tile), -(-out_w // tile)
    tiles = batch * tiles_h * tiles_w
    # pad further down/right so every 6x6 input tile lies inside the padded data
    extra_h = tiles_h * tile + 2 - (height + pad_top + pad_bottom)
    extra_w = tiles_w * tile + 2 - (width + pad_left + pad_right)
    padded = topi.nn.pad(data, (0, 0, pad_top, pad_left, 0),
                         (0, 0, pad_bottom + extra_h, pad_right + extra_w, 0), name="data_pad")
    per_image = tiles_h * tiles_w

    def input_tile(e, u, c, p, i):
        image, row, col = p // per_image, (p % per_image) // tiles_w * tile, p % tiles_w * tile
        values = [[padded[image, c, row + a, col + b, i] for b in range(alpha)] for a in range(alpha)]
        return _tile_transform(_WINOGRAD_BT, e, u, values)

    transformed = te.compute((alpha, alpha, in_chunks, tiles, in_block), input_tile,
                             name=WINOGRAD_INPUT_BLOCK)
    r_chunk = te.reduce_axis((0, in_chunks), "ic_chunk")
    r_block = te.reduce_axis((0, in_block), "ic_block")
    product = te.compute(
        (alpha, alpha, out_chunks, tiles, out_block),
        lambda e, u, o, p, j: te.sum(
            weight_t[e, u, o, r_chunk, r_block, j] * transformed[e, u, r_chunk, p, r_block],
            axis=[r_chunk, r_block]),
        name=WINOGRAD_GEMM_BLOCK)

    def output_point(n, o, y, x, j):
        p = n * per_image + y // tile * tiles_w + x // tile
        values = [[product[a, b, o, p, j] for b in range(alpha)] for a in range(alpha)]
        return _tile_transform(_WINOGRAD_AT, y % tile, x % tile, values)

    return te.compute((batch, out_chunks, out_h, out_w, out_block), output_point,
                      name=WINOGRAD_OUTPUT_BLOCK)


def use_winograd(in_channels: int, out_channels: int, out_h: int, out_w: int) -> bool:
    """Winograd F(4x4, 3x3) for a 3x3 stride-1 conv with at least 32 input and output channels.

    Per output pixel the direct conv does 9 IC OC FMAs; Winograd 2.25 IC OC in its GEMM plus
    transforms of about 16 IC + 11 OC adds (``_tile_transform``). Timed in whole models (A/B
    builds interleaved in one process, Zen 4, 2 threads), Winograd from 32 channels made
    3conv-224 0.63-0.68x, vgg-small 0.85-0.91x and resnet8 0.83-0.96x as long as Winograd
    from 64 channels; from 16 channels resnet8 took 1.14x as long (its 16-channel convs at
    32x32, 64 tiles, are small enough that the extra stages cost more than they save). With
    many tiles 16 channels win too: SqueezeNet's 16->64 convs at 55x55 (196 tiles) took
    0.35-0.6x the direct time alone, and the model 0.92-0.97x as long.

    Each of the 36 GEMMs reads IC x OC transformed weights (4x the direct conv's) once per
    image and uses every value once per tile: with few tiles and weights too big for the
    cache it streams them from memory. 512->512 at 7x7 (4 tiles, 38 MB) ran 1.25x slower
    than direct on a Zen 4; 128->128 at 8x8 (4 tiles, 2.4 MB) and 256->256 at 14x14 (16
    tiles, 9.4 MB) ran 0.55-0.7x. So small outputs need the weights to fit the cache.
    """
    tiles = -(-out_h // _WINOGRAD_TILE) * -(-out_w // _WINOGRAD_TILE)
    channels = min(in_channels, out_channels)
    if not (out_h >= 4 and out_w >= 4 and (channels >= 32 or (channels >= 16 and tiles >= _WINOGRAD_MANY_TILES))):
        return False
    transformed_weight_bytes = 36 * in_channels * out_channels * 4
    return tiles >= _WINOGRAD_STREAMING_TILES or transformed_weight_bytes <= _WINOGRAD_CACHED_WEIGHT_BYTES


# Winograd's transformed weights: below this size they stay in cache between tiles; above it
# a conv needs this many tiles per image to reuse each weight enough (see use_winograd).
_WINOGRAD_CACHED_WEIGHT_BYTES = 8 << 20
_WINOGRAD_STREAMING_TILES = 16
# from this many tiles per image, 16-channel convs go Winograd too
_WINOGRAD_MANY_TILES = 128


_BLOCKED = re.compile(r"^NCHW(\d+)c$")


def _legalize_matmul(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """A batch-1 dense layer (one row times constant weights K x N) as a GEMV over the weights
    transposed at compile time (N x K, ONNX's own Gemm layout): each output then reads one
    contiguous row. Over the K x N layout each step of the reduction reads 16 floats from a
    new 4 KB page (4096 x 4096: 10.6 ms, 6 GB/s, against NumPy's 1.7 ms)."""
    data, weight = call.args
    shape = _static_shape(data)
    if (isinstance(weight, tvm.ir.expr.Constant) and shape is not None and len(shape) >= 2
            and int(np.prod(shape[:-1])) == 1 and len(weight.value.shape) == 2
            and str(data.ty.dtype) == "float32" and str(weight.value.dtype) == "float32"
            and str(call.ty.dtype) == "float32"):
        # rows padded with zeros to whole vectors of the widest target (16 lanes)
        rows = weight.value.numpy().T
        length = -(-rows.shape[1] // 16) * 16
        rows = np.pad(rows, [(0, 0), (0, length - rows.shape[1])])
        return bb.call_te(_gemv_te, data, relax.const(np.ascontiguousarray(rows)), primfunc_name_hint="gemv")
    return _default_matmul_legalize(bb, call)


def _gemv_te(data, rows):
    length = int(data.shape[-1])
    if int(rows.shape[1]) != length:
        unpadded = data
        data = te.compute([*data.shape[:-1], rows.shape[1]],
                          lambda *i: te.if_then_else(i[-1] < length, unpadded[i], tvm.tirx.const(0, "float32")),
                          name="gemv_pad")
    k = te.reduce_axis((0, rows.shape[1]), name="k")
    return te.compute([*data.shape[:-1], rows.shape[0]],
                      lambda *i: te.sum(data[(*i[:-1], k)] * rows[i[-1], k], axis=k), name=GEMV_BLOCK)


def _legalize_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    attrs = call.attrs
    data_match = _BLOCKED.match(str(attrs.data_layout))
    plain_dtype = not attrs.out_dtype or str(attrs.out_dtype) in ("", "float32")
    out_match = _BLOCKED.match(str(attrs.out_layout))
    if data_match is None or out_match is None or not plain_dtype:
        return _default_conv2d_legalize(bb, call)
    block = int(data_match.group(1))
    channels = int(call.args[0].ty.shape[1]) * block
    args = (list(attrs.strides), list(attrs.padding), list(attrs.dilation))
    groups = int(attrs.groups)
    kernel_match = re.match(r"^OIHW(\d+)i(\d+)o$", str(attrs.kernel_layout))
    out_channels = int(call.ty.shape[1]) * int(out_match.group(1))
    weight_shape = _static_shape(call.args[1])
    out_shape = _static_shape(call)
    if (groups == 1 and kernel_match is not None and weight_shape is not None
            and out_shape is not None and weight_shape[2:4] == [3, 3]
            and [int(v) for v in attrs.strides] == [1, 1]
            and [int(v) for v in attrs.dilation] == [1, 1]
            and use_winograd(channels, out_channels, out_shape[2], out_shape[3])):
        weight_t = bb.emit(bb.call_te(_winograd_weight_te, call.args[1],
                                      relax.const(_WINOGRAD_G), primfunc_name_hint="winograd_weight"))
        return bb.call_te(_winograd_conv_te, call.args[0], weight_t, list(attrs.padding),
                          primfunc_name_hint="conv2d_winograd_nchwc")
    if (kernel_match is not None and int(kernel_match.group(1)) == block
            and int(kernel_match.group(2)) == int(out_match.group(1))
            and (groups == 1 or ((channels // groups) % block == 0
                                 and (out_channels // groups) % int(out_match.group(1)) == 0
                                 and not (groups == channels and block == 1)))):
        return bb.call_te(_blocked_conv_te, call.args[0], call.args[1], *args, groups,
                          primfunc_name_hint="conv2d_nchwc")
    if (int(attrs.groups) == channels and str(attrs.kernel_layout) == f"OIHW1i{block}o"
            and out_match.group(1) == data_match.group(1)):
        return bb.call_te(_blocked_depthwise_te, call.args[0], call.args[1], *args,
                          primfunc_name_hint="depthwise_conv2d_nchwc")
    return _default_conv2d_legalize(bb, call)


def _vector_block(value: int, lanes: int) -> int:
    """Channels per block: the largest power of two up to ``lanes`` dividing ``value`` (whole
    vector registers), else the largest divisor up to ``lanes`` (3-channel inputs, odd counts)."""
    width = lanes
    while width >= 4:
        if value % width == 0:
            return width
        width //= 2
    return _largest_divisor(value, lanes)


def _largest_divisor(value: int, limit: int) -> int:
    for cand in range(min(value, limit), 0, -1):
        if value % cand == 0:
            return cand
    return 1


def _static_shape(expr) -> list[int] | None:
    shape = getattr(expr.ty, "shape", None)
    if shape is None:
        return None
    try:
        return [int(v) for v in shape]
    except (TypeError, ValueError):
        return None


def _to_blocked_map(block: int):
    return lambda n, c, h, w: (n, c // block, h, w, c % block)


def _to_plain_map(block: int):
    return lambda n, c, h, w, b: (n, c * block + b, h, w)


def _layout_kind(call: relax.Call) -> tuple[str, int] | None:
    """('to_plain', b) for NCHW{b}c -> NCHW, ('to_blocked', b) for NCHW -> NCHW{b}c, else None.

    Checked on the shapes and on sample indices of the index map, so a transpose or any other
    transform is never mistaken for one of these two."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
        return None
    if call.op.name != "relax.layout_transform" or call.attrs.pad_value is not None:
        return None
    src = _static_shape(call.args[0])
    dst = _static_shape(call)
    if src is None or dst is None:
        return None
    index_map = call.attrs.index_map
    if len(src) == 5 and len(dst) == 4 and dst == [src[0], src[1] * src[4], src[2], src[3]]:
        kind, block, expected = "to_plain", src[4], _to_plain_map(src[4])
    elif len(src) == 4 and len(dst) == 5 and dst[4] > 0 and src[1] == dst[1] * dst[4]:
        kind, block, expected = "to_blocked", dst[4], _to_blocked_map(dst[4])
    else:
        return None
    analyzer = _Analyzer()
    for sample in ((0, 0, 0, 0, 0), (1, 3, 2, 5, 7), (2, 17, 4, 1, 3)):
        point = [tvm.tirx.IntImm("int64", v % max(d, 1)) for v, d in zip(sample, src)]
        got = [int(analyzer.simplify(e)) for e in index_map.map_indices(point)]
        want = [int(v) for v in expected(*[int(p) for p in point])]
        if got != want:
            return None
    return kind, block


_UNARY_ELEMENTWISE = frozenset({
    "relax.nn.relu", "relax.clip", "relax.sigmoid", "relax.tanh", "relax.nn.silu",
    "relax.nn.gelu", "relax.nn.leakyrelu", "relax.nn.relu6", "relax.exp", "relax.negative",
    "relax.sqrt", "relax.abs"})
_BINARY_ELEMENTWISE = frozenset({
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
    "relax.minimum"})
_POOLS = {"relax.nn.max_pool2d": relax.op.nn.max_pool2d,
          "relax.nn.avg_pool2d": relax.op.nn.avg_pool2d}


@relax.expr_functor.mutator
class _BlockRemaining(relax.PyExprMutator):
    """After ConvertLayout: put the convolutions it left in NCHW (first layers, channel counts
    that do not divide the vector, depthwise) into per-layer blocked layouts, and move
    NCHW{b}c -> NCHW transforms down through elementwise ops and pooling so that they meet
    their inverse and cancel. Every rewrite keeps the math: only layouts change."""

    def __init__(self, mod: tvm.IRModule, block: int):
        super().__init__(mod)
        self.module = mod
        self.block = block

    def transform(self) -> tvm.IRModule:
        for g_var, func in self.module.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(g_var, self.visit_expr(func))
        return self.builder_.get()

    # -- helpers -------------------------------------------------------------------------
    def _plain_source(self, expr) -> tuple[relax.Expr, int] | None:
        """If ``expr`` is (bound to) NCHW{b}c -> NCHW of some y, return (y, b)."""
        value = expr
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if bound is not None:
                value = bound
        kind = _layout_kind(value)
        if kind is not None and kind[0] == "to_plain":
            return value.args[0], kind[1]
        return None

    def _to_blocked(self, expr, block: int) -> relax.Expr:
        source = self._plain_source(expr)
        if source is not None and source[1] == block:
            return source[0]
        if block == 1:  # NCHW1c is NCHW with a unit axis: a free reshape, no copy
            shape = _static_shape(expr)
            return self.builder_.emit(relax.op.reshape(expr, [*shape, 1]))
        return self.builder_.emit(relax.op.layout_transform(expr, _to_blocked_map(block)))

    def _to_plain(self, expr, block: int) -> relax.Expr:
        return relax.op.layout_transform(self.builder_.emit(expr), _to_plain_map(block))

    def _scalar_minmax_op(self, call):
        """The Relax op for ``call_tir(f, (x, s))`` when f is exactly ``max(x[i...], s[])`` or
        ``min(...)`` (how the ONNX frontend emits Clip), else None."""
        if call.op.name != "relax.call_tir" or len(call.args) < 2:
            return None
        args = call.args[1]
        if not isinstance(call.args[0], relax.GlobalVar) or not isinstance(args, relax.Tuple) \
                or len(args.fields) != 2 or _static_shape(args.fields[1]) != []:
            return None
        func = self.module[call.args[0]] if call.args[0] in self.module.get_global_vars() else None
        if not isinstance(func, tirx.PrimFunc) or len(func.params) != 3:
            return None
        try:
            sch = s_tir.Schedule(func)
            blocks = _root_blocks(sch)
        except Exception:  # pylint: disable=broad-except
            return None
        if len(blocks) != 1:
            return None
        store = sch.get(blocks[0]).body
        value = getattr(store, "value", None)
        kind = {"Max": relax.op.maximum, "Min": relax.op.minimum}.get(type(value).__name__)
        if kind is None:
            return None
        load_x, load_s = value.a, value.b
        if not hasattr(load_x, "source") or not hasattr(load_s, "source"):
            return None  # not two plain tensor loads
        if not load_x.source.same_as(func.params[0]) or not load_s.source.same_as(func.params[1]) \
                or len(load_s.indices) != 0 or not store.buffer.same_as(func.params[2]):
            return None
        iter_vars = [iv.var for iv in sch.get(blocks[0]).iter_vars]
        if len(load_x.indices) != len(iter_vars) or any(
                not idx.same_as(var) for idx, var in zip(load_x.indices, iter_vars)):
            return None
        return kind(args.fields[0], args.fields[1])

    # -- rewrites --------------------------------------------------------------------------
    def visit_call_(self, call):  # pylint: disable=arguments-renamed
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op):
            return call
        if call.op.name == "relax.call_tir" and \
                self._plain_source(call.args[1].fields[0] if isinstance(call.args[1], relax.Tuple)
                                   and call.args[1].fields else call.args[1]) is not None:
            as_op = self._scalar_minmax_op(call)
            if as_op is None:
                return call
            call = self.builder_.normalize(as_op)
        name = call.op.name
        if name == "relax.nn.conv2d":
            return self._conv(call)
        if name == "relax.layout_transform":
            kind = _layout_kind(call)
            source = self._plain_source(call.args[0])
            if kind is not None and kind[0] == "to_blocked" and source is not None \
                    and source[1] == kind[1]:
                return source[0]
            return call
        if name in _UNARY_ELEMENTWISE:
            source = self._plain_source(call.args[0])
            if source is None:
                return call
            inner = relax.Call(call.op, [source[0], *call.args[1:]], call.attrs)
            return self._to_plain(inner, source[1])
        if name in _BINARY_ELEMENTWISE:
            return self._binary(call)
        if name in _POOLS:
            return self._pool(call)
        if name == "relax.concat":
            return self._concat(call)
        return call

    def _concat(self, call):
        """Channel concat of blocked tensors with the same block stays blocked (chunks append)."""
        fields = call.args[0].fields if isinstance(call.args[0], relax.Tuple) else None
        if not fields or call.attrs.axis is None or int(call.attrs.axis) != 1:
            return call
        sources = [self._plain_source(f) for f in fields]
        if any(src is None for src in sources) or len({src[1] for src in sources}) != 1:
            return call
        block = sources[0][1]
        return self._to_plain(relax.op.concat([src[0] for src in sources], axis=1), block)

    def _binary(self, call):
        lhs, rhs = call.args[0], call.args[1]
        left, right = self._plain_source(lhs), self._plain_source(rhs)
        out_shape = _static_shape(call)
        if out_shape is None or len(out_shape) != 4:
            return call
        if left is not None and right is not None and left[1] == right[1]:
            if _static_shape(lhs) != _static_shape(rhs):
                return call
            return self._to_plain(relax.Call(call.op, [left[0], right[0]], call.attrs), left[1])
        source, other, source_first = (left, rhs, True) if left is not None else (right, lhs, False)
        if isinstance(other, relax.Var) and self.lookup_binding(other) is not None:
            other = self.lookup_binding(other)
        if source is None or not isinstance(other, tvm.ir.expr.Constant):
            return call
        other_shape = _static_shape(other)
        channels = out_shape[1]
        block = source[1]
        if other_shape is not None and all(d == 1 for d in other_shape) and len(other_shape) <= 4:
            scalar = relax.op.reshape(other, []) if other_shape else other
            args = [source[0], scalar] if source_first else [scalar, source[0]]
            return self._to_plain(relax.Call(call.op, args, call.attrs), block)
        if other_shape is None or other_shape not in ([1, channels, 1, 1], [channels, 1, 1]):
            return call
        const4 = other if len(other_shape) == 4 else self.builder_.emit(relax.op.reshape(other, [1, channels, 1, 1]))
        blocked = self.builder_.emit(relax.op.layout_transform(const4, _to_blocked_map(block)))
        args = [source[0], blocked] if source_first else [blocked, source[0]]
        return self._to_plain(relax.Call(call.op, args, call.attrs), block)

    def _pool(self, call):
        attrs = call.attrs
        source = self._plain_source(call.args[0])
        if source is None or str(attrs.layout) != "NCHW" or str(attrs.out_layout) != "NCHW":
            return call
        block = source[1]
        layout = f"NCHW{block}c"
        make = _POOLS[call.op.name]
        kwargs = dict(pool_size=list(attrs.pool_size), strides=list(attrs.strides),
                      padding=list(attrs.padding), dilation=list(attrs.dilation),
                      ceil_mode=bool(attrs.ceil_mode), layout=layout, out_layout=layout)
        if call.op.name == "relax.nn.avg_pool2d":
            kwargs["count_include_pad"] = bool(attrs.count_include_pad)
        return self._to_plain(make(source[0], **kwargs), block)

    def _conv(self, call):
        attrs = call.attrs
        if (str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW"
                or str(attrs.out_layout) != "NCHW"
                or (attrs.out_dtype and str(attrs.out_dtype) not in ("", "float32"))):
            return call
        data_shape = _static_shape(call.args[0])
        weight_shape = _static_shape(call.args[1])
        if data_shape is None or weight_shape is None or call.args[0].ty.dtype != "float32":
            return call
        in_channels, out_channels, groups = data_shape[1], weight_shape[0], int(attrs.groups)
        conv_args = dict(strides=list(attrs.strides), padding=list(attrs.padding),
                         dilation=list(attrs.dilation))
        depthwise = groups == in_channels == out_channels and weight_shape[1] == 1
        if not depthwise and in_channels % groups == 0 and out_channels % groups == 0:
            # dense or grouped: each output block must lie inside one group
            per_group_out = out_channels // groups
            # a 3-channel image stays NCHW (block 1): each tap is one broadcast of a
            # contiguous plane, and no layout copy of the input is needed
            in_block = (1 if in_channels // groups < 4
                        else _vector_block(in_channels // groups, self.block))
            out_block = _vector_block(per_group_out, self.block)
            weight = call.args[1]
            pad_out = _padded_out_channels(out_channels, out_block, self.block) if groups == 1 else 0
            if pad_out:
                out_block = self.block
                weight = self.builder_.emit(relax.op.nn.pad(weight, [0, pad_out, 0, 0, 0, 0, 0, 0]))
            data = self._to_blocked(call.args[0], in_block)
            weight = self.builder_.emit(relax.op.layout_transform(
                weight,
                lambda o, i, h, w: (o // out_block, i // in_block, h, w, i % in_block,
                                    o % out_block)))
            conv = relax.op.nn.conv2d(
                data, weight, **conv_args, groups=groups, data_layout=f"NCHW{in_block}c",
                kernel_layout=f"OIHW{in_block}i{out_block}o", out_layout=f"NCHW{out_block}c")
            if pad_out:
                plain = self.builder_.emit(self._to_plain(conv, out_block))
                return relax.op.strided_slice(plain, axes=[1], begin=[0], end=[out_channels])
            return self._to_plain(conv, out_block)
        if depthwise:
            block = _vector_block(in_channels, self.block)
            data = self._to_blocked(call.args[0], block)
            weight = self.builder_.emit(relax.op.layout_transform(
                call.args[1],
                lambda o, i, h, w: (o // block, i, h, w, tvm.tirx.IntImm("int64", 0), o % block)))
            conv = relax.op.nn.conv2d(
                data, weight, **conv_args, groups=groups, data_layout=f"NCHW{block}c",
                kernel_layout=f"OIHW1i{block}o", out_layout=f"NCHW{block}c")
            return self._to_plain(conv, block)
        return call


def _padded_out_channels(out_channels: int, out_block: int, block: int) -> int:
    """Zero output channels to add so a conv gets whole blocks of ``block`` channels, or 0.

    A channel count the block does not divide gets a narrower block (SqueezeNet's last conv,
    1000 channels: 8 of 16 lanes), which runs its FMAs on half vectors: 138 against 211
    GFLOP/s for the same conv at 512 channels (Zen 4, 2 threads). Computing up to 1/8 more
    channels on zero weights and slicing them off costs less."""
    if out_block >= block:
        return 0
    extra = -out_channels % block
    return extra if extra * 8 <= out_channels else 0


def _zero_pad_widths(func, in_shape, out_shape) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) when ``func`` is exactly TOPI's zero padding of H and W of an
    NCHW tensor (what the ONNX frontend emits for Pad), else None. Checked by rebuilding that
    padding for the same shapes and comparing the two functions structurally."""
    if len(in_shape) != 4 or len(out_shape) != 4 or in_shape[:2] != out_shape[:2]:
        return None
    if not isinstance(func, tirx.PrimFunc) or len(func.params) != 2:
        return None
    try:
        sch = s_tir.Schedule(func)
        blocks = _root_blocks(sch)
        if len(blocks) != 1:
            return None
        load = sch.get(blocks[0]).body.value.args[1]
        iter_vars = [iv.var for iv in sch.get(blocks[0]).iter_vars]
        analyzer = _Analyzer()
        top = int(analyzer.simplify(iter_vars[2] - load.indices[2]))
        left = int(analyzer.simplify(iter_vars[3] - load.indices[3]))
    except Exception:  # pylint: disable=broad-except
        return None
    bottom = out_shape[2] - in_shape[2] - top
    right = out_shape[3] - in_shape[3] - left
    if min(top, left, bottom, right) < 0:
        return None
    # Rebuild TOPI's zero padding for these shapes (input named like ours) and compare the
    # stored value: same condition, same load, same zero, over the same iteration space.
    data = te.placeholder([tvm.tirx.IntImm("int64", d) for d in in_shape], "float32",
                          str(func.params[0].name))
    padded = topi.nn.pad(data, (0, 0, top, left), (0, 0, bottom, right), 0.0)
    expected_sch = s_tir.Schedule(te.create_prim_func([data, padded]))
    expected = expected_sch.get(_root_blocks(expected_sch)[0])
    actual = sch.get(blocks[0])
    if str(actual.body.value) != str(expected.body.value):
        return None
    if [_extent(iv) for iv in actual.iter_vars] != list(out_shape) or any(
            int(iv.iter_type) != _DATA_PAR for iv in actual.iter_vars):
        return None
    store = actual.body
    if not store.buffer.same_as(func.params[1]) or [str(i) for i in store.indices] != [
            str(iv.var) for iv in actual.iter_vars]:
        return None
    if not load.source.same_as(func.params[0]):
        return None
    return top, left, bottom, right


@relax.expr_functor.mutator
class _FoldPadIntoConv(relax.PyExprMutator):
    """``conv2d(pad(x))`` with a zero pad of H and W becomes ``conv2d(x)`` with the padding
    added to the conv's own: the separate pad would keep the conv in NCHW and cost a pass
    over the activation."""

    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.module = mod

    def transform(self) -> tvm.IRModule:
        for g_var, func in self.module.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(g_var, self.visit_expr(func))
        return self.builder_.get()

    def _bound(self, expr):
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else None

    def _sum_of_stack(self, call):
        """``sum(stack([a, b, ...], axis=0), axis=0)`` (ONNX Sum as the frontend writes it)
        becomes ``a + b + ...``: ConvertLayout cannot carry a blocked layout through stack."""
        axis = call.attrs.axis
        if axis is None or [int(a) for a in axis] != [0] or bool(call.attrs.keepdims):
            return None
        stacked = self._bound(call.args[0])
        if not isinstance(stacked, relax.Call) or not isinstance(stacked.op, tvm.ir.Op) \
                or stacked.op.name != "relax.stack" or int(stacked.attrs.axis) != 0:
            return None
        fields = stacked.args[0].fields if isinstance(stacked.args[0], relax.Tuple) else None
        if not fields or any(_static_shape(f) != _static_shape(call) for f in fields):
            return None
        total = fields[0]
        for field in fields[1:]:
            total = self.builder_.emit(relax.op.add(total, field))
        return total

    def visit_call_(self, call):  # pylint: disable=arguments-renamed
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op):
            return call
        if call.op.name == "relax.broadcast_to" and _static_shape(call.args[0]) is not None \
                and _static_shape(call.args[0]) == _static_shape(call):
            return call.args[0]
        if call.op.name == "relax.sum":
            folded = self._sum_of_stack(call)
            return call if folded is None else folded
        if call.op.name != "relax.nn.conv2d":
            return call
        if str(call.attrs.data_layout) != "NCHW":
            return call
        data = call.args[0]
        bound = self.lookup_binding(data) if isinstance(data, relax.Var) else None
        if not isinstance(bound, relax.Call) or not isinstance(bound.op, tvm.ir.Op) \
                or bound.op.name != "relax.call_tir" or not isinstance(bound.args[0], relax.GlobalVar):
            return call
        fields = bound.args[1].fields if isinstance(bound.args[1], relax.Tuple) else []
        if len(fields) != 1:
            return call
        in_shape, out_shape = _static_shape(fields[0]), _static_shape(bound)
        if in_shape is None or out_shape is None:
            return call
        func = self.module[bound.args[0]] if bound.args[0] in self.module.get_global_vars() else None
        widths = _zero_pad_widths(func, in_shape, out_shape)
        if widths is None:
            return call
        top, left, bottom, right = widths
        p_top, p_left, p_bottom, p_right = (int(v) for v in call.attrs.padding)
        attrs = call.attrs
        return relax.op.nn.conv2d(
            fields[0], call.args[1], strides=list(attrs.strides),
            padding=[p_top + top, p_left + left, p_bottom + bottom, p_right + right],
            dilation=list(attrs.dilation), groups=int(attrs.groups), data_layout="NCHW",
            kernel_layout=str(attrs.kernel_layout), out_layout=str(attrs.out_layout),
            out_dtype=attrs.out_dtype if attrs.out_dtype else None)


def fold_pad_into_conv():
    """Module pass form of :class:`_FoldPadIntoConv`."""

    @tvm.transform.module_pass(opt_level=0, name="EdgecnnFoldPadIntoConv")
    def _pass(mod, _ctx):
        return _FoldPadIntoConv(mod).transform()

    return _pass


def block_remaining(block: int):
    """Module pass form of :class:`_BlockRemaining`."""

    @tvm.transform.module_pass(opt_level=0, name="EdgecnnBlockRemaining")
    def _pass(mod, _ctx):
        return _BlockRemaining(mod, block).transform()

    return _pass


def _convert_layout(block: int):
    """TVM's ConvertLayout for conv2d, or nothing when it cannot handle the graph (it fails on
    some tuple-valued ops): the per-layer blocking that follows still blocks every conv."""

    convert = relax.transform.ConvertLayout(
        {"relax.nn.conv2d": [f"NCHW{block}c", f"OIHW{block}i{block}o"]})

    @tvm.transform.module_pass(opt_level=0, name="EdgecnnConvertLayout")
    def _pass(mod, _ctx):
        try:
            return convert(mod)
        except Exception as exc:  # pylint: disable=broad-except
            _LOG.info("ConvertLayout failed (%s); blocking layer by layer", exc)
            return mod

    return _pass


def _fold_constant_work():
    """Weight repacks and Winograd weight transforms evaluated in one build (edgecnn's batched
    folding; Relax's ``FoldConstant`` builds one module per call: ResNet-50 compiled in 46 s)."""

    @tvm.transform.module_pass(opt_level=0, name="EdgecnnFoldConstantWork")
    def _pass(mod, _ctx):
        from ..lower import fold_constants  # pylint: disable=import-outside-toplevel

        return fold_constants(mod)

    return _pass


def layout_passes(block: int) -> list:
    """Relax passes before scheduling: inference-only ops, blocked layouts of ``block``
    channels, legalization with our blocked convolutions, constant folding (weight repacks
    happen here), fusion."""
    return [
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        # computations on constants are folded after legalization, all in one build
        fold_pad_into_conv(),
        relax.transform.DeadCodeElimination(),
        _convert_layout(block),
        block_remaining(block),
        relax.transform.DeadCodeElimination(),
        relax.transform.LegalizeOps(customize_legalize_map={"relax.nn.conv2d": _legalize_conv2d,
                                                            "relax.matmul": _legalize_matmul}),
        relax.transform.AnnotateTIROpPattern(),
        _fold_constant_work(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


# --------------------------------------------------------------------------------------
# TIR level: helpers
# --------------------------------------------------------------------------------------

_DATA_PAR = 0
_REDUCE = 2


def _iters(sch: s_tir.Schedule, block) -> list:
    return list(sch.get(block).iter_vars)


def _is_spatial(sch, block) -> bool:
    return all(int(iv.iter_type) == _DATA_PAR for iv in _iters(sch, block))


def _extent(loop_or_iv) -> int | None:
    dom = loop_or_iv.dom if hasattr(loop_or_iv, "dom") else loop_or_iv
    ext = dom.extent if hasattr(dom, "extent") else loop_or_iv.extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _loop_extent(sch, loop) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _root_blocks(sch: s_tir.Schedule) -> list:
    root = sch.get_sblock("root") if _has_block(sch, "root") else None
    if root is not None:
        return list(sch.get_child_blocks(root))
    return []


def _has_block(sch, name) -> bool:
    try:
        sch.get_sblock(name)
    except Exception:  # pylint: disable=broad-except
        return False
    return True


def _try(fn, *args) -> bool:
    """Apply one schedule primitive; TVM verifies it and raises when it does not apply."""
    try:
        fn(*args)
    except Exception:  # pylint: disable=broad-except
        return False
    return True


def _best_tile(extent: int, limit: int) -> int:
    """A register tile for ``extent`` output columns: a divisor in [limit/2, limit] when one
    exists (no remainder), else ``limit`` itself (the split leaves a guarded tail)."""
    if extent <= limit:
        return extent
    for tile in range(limit, max(limit // 2, 1) - 1, -1):
        if extent % tile == 0:
            return tile
    return limit


def _inline_epilogue(sch, producer) -> object:
    """Inline every elementwise consumer chain of ``producer`` into it; return the last block."""
    current = producer
    while True:
        consumers = list(sch.get_consumers(current))
        if len(consumers) != 1:
            return current
        consumer = consumers[0]
        if not _is_spatial(sch, consumer):
            return current
        if not _try(sch.reverse_compute_inline, consumer):
            return current
        # the inlined block's work now lives in ``current``; keep going down the chain


# Below this many loop iterations (times the reduction: 1M MACs, about 20 us on one core) a
# function runs on one thread: starting a parallel region costs a few microseconds and TVM
# splits the work statically. Timed function by function, each alone (Zen 3, 2 threads),
# convs of 2.4M MACs and more ran 1.2-1.6x faster in parallel and those of 1.2M broke even;
# but in a whole model a layer left on one thread also reads what both cores wrote, and the
# next parallel layer reads what it wrote from one core's cache. Timed in whole models (A/B
# builds interleaved in one process, Zen 4): 1M instead of 2M made resnet8 0.84-0.98x,
# mobilenet-tiny 0.83-0.90x and vgg-small 0.94x as long; 256K made resnet8 1.2x longer.
# On a machine whose other core is busy, fewer threads (``--threads 1``) beat any threshold.
_PARALLEL_MIN_WORK = int(os.environ.get("EDGECNN_PARALLEL_MIN_WORK", 1 << 20))
# Convolutions with reductions this short (a 3-channel first layer: 27 taps, depthwise: 9)
# run at a fraction of the dense MAC rate, so they pay for a parallel region at a quarter of
# the work: mobilenet-tiny's first layer (1M MACs) ran in 0.11 ms on two threads, 0.17 on one.
_SHORT_REDUCTION = 64
# Dense layers and pooling (``_schedule_reduction``) are memory-bound: each MAC of a batch-1
# dense layer reads a weight of its own, so 128K of them already take ~0.1 ms on one core.
_REDUCTION_WORK_SCALE = 16


def _work(sch, block) -> int:
    total = 1
    for iv in _iters(sch, block):
        ext = _extent(iv)
        total *= ext if ext else 1 << 10
    return total


def _reduction(sch, block) -> int:
    """Iterations of a block's reduction loops (MACs per output element of a conv)."""
    reduction = 1
    for iv in _iters(sch, block):
        if int(iv.iter_type) == _REDUCE:
            reduction *= _extent(iv) or 1 << 10
    return reduction


def _conv_work(sch, block) -> int:
    """``_work`` of a convolution block, scaled up for short reductions (see above) and, for
    depthwise convs, as for the memory-bound dense layers and pools: each output reads an
    input window of its own. Timed in the whole model (mobilenet-tiny, Zen 4, 2 threads,
    interleaved with the default build in one process), depthwise layers parallel from 1/16
    of the threshold made the model 0.72-0.83x as long; timed alone, in their own caches,
    they had looked no faster in parallel: in the model each reads what the previous layer
    wrote on both cores."""
    work = _work(sch, block)
    if str(sch.get(block).name_hint) == NCHWC_DEPTHWISE_BLOCK:
        return work * _REDUCTION_WORK_SCALE
    return work * 4 if _reduction(sch, block) < _SHORT_REDUCTION else work


def _schedule_spatial(sch, block, lanes: int, parallel: bool | None = None) -> None:
    """Parallel outer loops and a vectorized innermost axis for an elementwise/injective block."""
    loops = sch.get_loops(block)
    if not loops:
        return
    inner_extent = _loop_extent(sch, loops[-1])
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    total = _loop_extent(sch, fused)
    if total is None:
        sch.parallel(fused)
        return
    if parallel is None:
        parallel = total >= _PARALLEL_MIN_WORK // 4
    vec = 0
    if inner_extent and inner_extent % lanes == 0:
        vec = lanes
    elif inner_extent and 4 <= inner_extent <= 4 * lanes and total % inner_extent == 0:
        vec = inner_extent
    if vec and total > vec:
        outer, inner = sch.split(fused, [None, vec])
        if parallel:
            sch.parallel(outer)
        sch.vectorize(inner)
    elif vec:
        sch.vectorize(fused)
    elif parallel:
        sch.parallel(fused)


def _schedule_reduction(sch, block, lanes: int, parallel: bool | None = None) -> None:
    """Parallel spatial loops; the innermost spatial axis (or its last ``lanes`` part) moved
    inside the reduction and vectorized (pooling over NCHWc channels, dense over output
    units); the initialization split off."""
    iters = _iters(sch, block)
    loops = sch.get_loops(block)
    if len(loops) != len(iters):
        return
    spatial = [l for l, iv in zip(loops, iters) if int(iv.iter_type) == _DATA_PAR]
    reduce = [l for l, iv in zip(loops, iters) if int(iv.iter_type) == _REDUCE]
    if not spatial or not reduce or len(spatial) + len(reduce) != len(loops):
        return
    inner = spatial[-1]
    inner_extent = _loop_extent(sch, inner)
    outer = spatial[:-1]
    vector = None
    # a vector that divides the axis (1000 classes: 8 lanes), so no tail breaks vectorization
    width = next((w for w in (lanes, lanes // 2, lanes // 4) if w >= 4 and inner_extent
                  and inner_extent % w == 0), None)
    if inner_extent is not None and inner_extent > 4 * lanes and width:
        inner_outer, vector = sch.split(inner, [None, width])
        outer = outer + [inner_outer]
    elif inner_extent is not None and 2 <= inner_extent <= 4 * lanes:
        vector = inner
    else:
        outer = spatial
    sch.reorder(*outer, *reduce, *([vector] if vector is not None else []))
    if outer:
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        extent = _loop_extent(sch, fused)
        if parallel is None:
            parallel = _work(sch, block) * _REDUCTION_WORK_SCALE >= _PARALLEL_MIN_WORK
        if (extent is None or extent >= 2) and parallel:
            sch.parallel(fused)
    if vector is not None:
        sch.vectorize(vector)
    sch.decompose_reduction(block, reduce[0])


# --------------------------------------------------------------------------------------
# TIR level: rules
# --------------------------------------------------------------------------------------


class _SafeRule(ScheduleRule):
    """Runs ``schedule`` on a fresh Schedule; any refused primitive means 'not mine'."""

    def __init__(self, lanes: int | None = None):
        self.lanes = lanes

    def _lanes(self, target) -> int:
        return self.lanes or vector_lanes(target)

    def apply(self, func, target, tunable):  # noqa: D102 - see ScheduleRule
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        try:
            done = self.schedule(sch, self._lanes(target))
            if done:
                # which rule scheduled a function: read back by tests and the benchmark
                sch.annotate(sch.get_sblock("root"), RULE_ANNOTATION, type(self).__name__)
        except Exception as exc:  # pylint: disable=broad-except
            _LOG.debug("%s left %s unscheduled: %s", type(self).__name__,
                       func.attrs.get("global_symbol", "?") if func.attrs else "?", exc)
            return None
        return sch if done else None

    def schedule(self, sch, lanes) -> bool:  # pylint: disable=unused-argument
        """Schedule ``sch`` in place; False when the function is not this rule's kind.
        Subclasses override it; the base rule claims nothing."""
        return False


def _schedule_tiled(sch, block, lanes, parallel: bool | None = None,
                    rows_outer: bool = False) -> bool:
    """The register-tiled schedule shared by direct, depthwise and Winograd convolutions, for
    a block with 5 spatial axes (outer, outer, outer, columns, channel vector) and its
    reductions: accumulators for ``reg_w`` columns x one channel vector live in registers
    (a local buffer), the reduction runs over them, and elementwise consumers are inlined
    into the store; the three outer axes are fused and parallel (the second and third
    swapped with ``rows_outer``)."""
    iters = _iters(sch, block)
    n_reduce = len(iters) - 5
    kinds = [int(iv.iter_type) for iv in iters]
    if n_reduce < 1 or kinds != [_DATA_PAR] * 5 + [_REDUCE] * n_reduce:
        return False
    out_w = _extent(iters[3])
    out_block = _extent(iters[4])
    limit = _MAX_REG_W.get(lanes, 12)
    if out_block > lanes:
        limit = max(limit * lanes // out_block, 4)
    reg_w = _best_tile(out_w, limit)
    if parallel is None:
        parallel = _conv_work(sch, block) >= _PARALLEL_MIN_WORK
    sch.cache_write(block, 0, "local")
    copy = sch.get_consumers(block)[0]
    out = _inline_epilogue(sch, copy)
    loops = sch.get_loops(out)
    if len(loops) != 5:
        return False
    a, b, c, x, vec = loops
    if rows_outer:
        # (batch, rows, channel chunks): each thread takes a band of rows across all chunks,
        # the band the next layer's thread reads back, from its own core's cache. With chunks
        # outer a thread wrote half the chunks of every row, and the next layer read the other
        # half from the other core. Timed in whole models (A/B builds interleaved with
        # onnxruntime in one process, Zen 4, 2 threads): resnet8 0.80-0.87x as long,
        # mobilenet-tiny 0.86-0.87x, lenet5 0.80x, SqueezeNet 0.95x, vgg-small and ResNet-50
        # level. The Winograd stages ordered the same way came out level to 1.07x slower.
        b, c = c, b
    x_out, x_in = sch.split(x, [None, reg_w])
    sch.reorder(a, b, c, x_out, x_in, vec)
    outer = sch.fuse(a, b, c)
    if parallel:
        sch.parallel(outer)
    sch.vectorize(vec)
    sch.compute_at(block, x_out, preserve_unit_loops=True)
    # [outer, x_out, a, b, c, x tile, channel vector, reductions...]
    loops = sch.get_loops(block)
    if len(loops) != 7 + n_reduce:
        return False
    reduce = loops[7:]
    x_tile, channel_vector = loops[5], loops[6]
    sch.reorder(*reduce, x_tile, channel_vector)
    sch.unroll(x_tile)
    sch.vectorize(channel_vector)
    sch.decompose_reduction(block, reduce[0])
    return True


class BlockedConv(_SafeRule):
    """Direct (or depthwise) convolution in NCHW{b}c: a register tile of output columns x one
    vector of output channels, accumulated in registers, epilogue fused into the store."""

    def schedule(self, sch, lanes) -> bool:
        name = next((n for n in (NCHWC_CONV_BLOCK, NCHWC_DEPTHWISE_BLOCK) if _has_block(sch, n)),
                    None)
        if name is None:
            return False
        conv = sch.get_sblock(name)
        if len(_iters(sch, conv)) - 5 not in (2, 4):
            return False
        others = _other_block_names(sch, conv)
        # A conv with a short reduction (depthwise: 9 taps; a 3-channel first layer: 27) spends
        # as long padding its input as convolving it: depthwise convs (each output block reads
        # one input block) and parallel first layers pad row by row inside the conv's outer
        # loop, in cache (mobilenet-tiny's first layer 3x faster, its depthwise layers up to
        # 3x). Dense convs read each padded row for every output block and are faster with
        # the padding made once (16->16 at 32x32: 1.6x); so are small serial first layers,
        # whose unblocked rows pad in scalar code (lenet5's first layer: 2x).
        parallel = _conv_work(sch, conv) >= _PARALLEL_MIN_WORK
        pad_per_row = name == NCHWC_DEPTHWISE_BLOCK or (
            parallel and _reduction(sch, conv) < _SHORT_REDUCTION)
        if not _schedule_tiled(sch, conv, lanes, parallel, rows_outer=True):
            return False
        if pad_per_row:
            outer = sch.get_loops(conv)[0]
            for producer in sch.get_producers(conv):
                producer_name = str(sch.get(producer).name_hint)
                if producer_name not in others:
                    continue
                try:
                    sch.compute_at(producer, outer, preserve_unit_loops=True)
                except tvm.TVMError:  # TVM checks before it moves anything: padded once instead
                    _LOG.debug("padding of %s kept outside the conv loop", name)
                    continue
                others.remove(producer_name)
                inner = sch.get_loops(producer)[-1]
                if (_loop_extent(sch, inner) or 1) % lanes == 0:
                    sch.vectorize(inner)
        # The padding of a parallel conv is small for an elementwise pass (16 channels at
        # 34x34: 18K floats), but serial it kept the conv's worker waiting: parallel, the
        # workers already awake for the conv, resnet8's 16- and 32-channel convs took
        # 0.75-0.85x as long, function by function.
        _schedule_remaining(sch, others, lanes, parallel or None)
        return True


def _tile_point_loops(sch, outer: list, points: list, vector, parallel: bool) -> None:
    """Outer loops fused (and parallel), tile-point loops unrolled, the channel vector last."""
    fused = sch.fuse(*outer)
    if parallel:
        sch.parallel(fused)
    for loop in points:
        sch.unroll(loop)
    sch.vectorize(vector)


def _schedule_winograd_input(sch, block, parallel: bool) -> bool:
    """Input transform V[e, u, c, p, i]: tiles outer (parallel), the 36 (e, u) points unrolled
    so each keeps its own constant-coefficient sum, the channel block vectorized."""
    loops = sch.get_loops(block)
    if len(loops) != 5:
        return False
    e, u, c, p, i = loops
    sch.reorder(c, p, e, u, i)
    _tile_point_loops(sch, [c, p], [e, u], i, parallel)
    return True


def _schedule_winograd_output(sch, block, parallel: bool) -> bool:
    """Output transform with the epilogue inlined: for each 4x4 output tile (rows of tiles
    parallel) the 16 points unrolled, sharing the tile's 36 loads, the channel vector inside."""
    out = _inline_epilogue(sch, block)
    loops = sch.get_loops(out)
    if len(loops) != 5:
        return False
    n, o, y, x, j = loops
    tile_y, in_y = sch.split(y, [None, _WINOGRAD_TILE])
    tile_x, in_x = sch.split(x, [None, _WINOGRAD_TILE])
    sch.reorder(n, o, tile_y, tile_x, in_y, in_x, j)
    _tile_point_loops(sch, [n, o, tile_y], [in_y, in_x], j, parallel)
    return True


class WinogradConv(_SafeRule):
    """Winograd F(4x4, 3x3) in NCHW{b}c: the batched GEMM over the 36 transform points gets
    the register-tiled schedule; the input and output transforms (with the epilogue) run
    unrolled over their tile points, vectorized over the channel block; padding gets
    parallel loops."""

    def schedule(self, sch, lanes) -> bool:
        blocks = (WINOGRAD_INPUT_BLOCK, WINOGRAD_GEMM_BLOCK, WINOGRAD_OUTPUT_BLOCK)
        if not all(_has_block(sch, name) for name in blocks):
            return False
        gemm = sch.get_sblock(WINOGRAD_GEMM_BLOCK)
        others = [n for n in _other_block_names(sch, gemm) if n not in blocks]
        # one decision for the whole conv: its stages are small, the conv as a whole is not
        output = sch.get_sblock(WINOGRAD_OUTPUT_BLOCK)
        parallel = _work(sch, output) * 9 >= _PARALLEL_MIN_WORK
        if not _schedule_tiled(sch, gemm, lanes, parallel):
            return False
        if not _schedule_winograd_output(sch, sch.get_sblock(WINOGRAD_OUTPUT_BLOCK), parallel):
            return False
        if not _schedule_winograd_input(sch, sch.get_sblock(WINOGRAD_INPUT_BLOCK), parallel):
            return False
        _schedule_remaining(sch, others, lanes, parallel)
        return True


def _other_block_names(sch, main) -> list[str]:
    main_name = str(sch.get(main).name_hint)
    return [str(sch.get(b).name_hint) for b in _root_blocks(sch)
            if str(sch.get(b).name_hint) != main_name]


def _schedule_remaining(sch, names, lanes, parallel: bool | None = None) -> None:
    """Give the blocks outside the main loop nest (padding, epilogues that could not be
    inlined) their own parallel, vectorized loops."""
    for name in names:
        if not _has_block(sch, name):
            continue  # inlined into the main nest
        _schedule_other(sch, sch.get_sblock(name), lanes, parallel)


def _schedule_other(sch, block, lanes, parallel: bool | None = None) -> None:
    if _is_spatial(sch, block):
        _schedule_spatial(sch, block, lanes, parallel)
    else:
        _schedule_reduction(sch, block, lanes, parallel)


class PlainConv(_SafeRule):
    """A convolution left in NCHW (first layers, odd channel counts, grouped, depthwise):
    register tile of output channels x one vector of output columns."""

    def schedule(self, sch, lanes) -> bool:
        convs = [b for b in _root_blocks(sch) if not _is_spatial(sch, b)]
        if len(convs) != 1:
            return False
        conv = convs[0]
        iters = _iters(sch, conv)
        kinds = [int(iv.iter_type) for iv in iters]
        if kinds != [_DATA_PAR] * 4 + [_REDUCE] * 3:
            return False
        writes = sch.get(conv).writes
        if len(writes) != 1 or len(writes[0].source.shape) != 4:
            return False
        reads = [r.source for r in sch.get(conv).reads]
        if not any(len(b.shape) == 4 for b in reads) or len(reads) != 2:
            return False
        channels = _extent(iters[1])
        out_w = _extent(iters[3])
        vec = lanes if out_w >= lanes else out_w
        oc_tile = 1
        for cand in (8, 6, 4, 3, 2):
            if channels % cand == 0:
                oc_tile = cand
                break
        others = _other_block_names(sch, conv)
        sch.cache_write(conv, 0, "local")
        copy = sch.get_consumers(conv)[0]
        out = _inline_epilogue(sch, copy)
        loops = sch.get_loops(out)
        if len(loops) != 4:
            return False
        n, c, y, x = loops
        c_out, c_in = sch.split(c, [None, oc_tile])
        x_out, x_in = sch.split(x, [None, vec])
        sch.reorder(n, c_out, y, x_out, c_in, x_in)
        outer = sch.fuse(n, c_out, y)
        if _conv_work(sch, conv) >= _PARALLEL_MIN_WORK:
            sch.parallel(outer)
        sch.vectorize(x_in)
        sch.compute_at(conv, x_out, preserve_unit_loops=True)
        # [outer, x_out, n, channel tile, y, column vector, 3 reductions]
        loops = sch.get_loops(conv)
        if len(loops) != 9:
            return False
        r0, r1, r2 = loops[6:]
        sch.reorder(r0, r1, r2, loops[3], loops[5])
        sch.unroll(loops[3])
        sch.vectorize(loops[5])
        sch.decompose_reduction(conv, r0)
        _schedule_remaining(sch, others, lanes)
        return True


class Gemv(_SafeRule):
    """A batch-1 dense layer over weight rows (``_legalize_matmul``): each output streams its
    contiguous row; a vector of partial sums over the row (rfactor), summed across lanes at
    the end with the epilogue; outputs split in parallel chunks."""

    def schedule(self, sch, lanes) -> bool:
        if not _has_block(sch, GEMV_BLOCK):
            return False
        gemv = sch.get_sblock(GEMV_BLOCK)
        others = _other_block_names(sch, gemv)
        *spatial, k = sch.get_loops(gemv)
        length = _loop_extent(sch, k)
        if not spatial or length is None or length % lanes:
            return False
        k_outer, k_lane = sch.split(k, [None, lanes])
        partial = sch.rfactor(k_lane, factor_axis=len(spatial))
        total = _inline_epilogue(sch, gemv)
        *outputs, k_outer, k_lane = sch.get_loops(partial)
        row = sch.fuse(*outputs) if len(outputs) > 1 else outputs[0]
        if _work(sch, partial) * _REDUCTION_WORK_SCALE >= _PARALLEL_MIN_WORK:
            chunk, row = sch.split(row, [_PARALLEL_CHUNKS, None])
            sch.parallel(chunk)
        sch.vectorize(k_lane)
        sch.decompose_reduction(partial, k_outer)
        sch.reverse_compute_at(total, row, preserve_unit_loops=True)
        _schedule_remaining(sch, others, lanes)
        return True


# Parallel chunks of a GEMV's outputs: a few per thread, so a slow core does not hold up the rest.
_PARALLEL_CHUNKS = 8


class Generic(_SafeRule):
    """Every other function: inline cheap producers, then parallel + vectorized loops."""

    def schedule(self, sch, lanes) -> bool:
        blocks = _root_blocks(sch)
        if not blocks:
            return False
        # inline spatial producers (padding, layout transforms, broadcasts) into consumers
        for block in blocks[:-1]:
            if _is_spatial(sch, block):
                _try(sch.compute_inline, block)
        for block in _root_blocks(sch):
            if _is_spatial(sch, block):
                _schedule_spatial(sch, block, lanes)
            else:
                _schedule_reduction(sch, block, lanes)
        return True


def rule_of(func) -> str | None:
    """Name of the edgecnn rule that scheduled ``func`` (None: another rule or none)."""
    try:
        sch = s_tir.Schedule(func)
        value = sch.get(sch.get_sblock("root")).annotations.get(RULE_ANNOTATION)
    except Exception:  # pylint: disable=broad-except
        return None
    return None if value is None else str(value)


def schedule_rules(lanes: int | None = None) -> list:
    """The ordered CPU rules: conv rules, TVM's GEMV, then the generic parallel/vector rule."""
    return [WinogradConv(lanes), BlockedConv(lanes), PlainConv(lanes), Gemv(lanes), dlight.cpu.GEMV(),
            Generic(lanes)]


def _can_run_here(target: Target) -> bool:
    """Whether code for ``target`` runs on this machine (so two schedules can be timed)."""
    import platform  # pylint: disable=import-outside-toplevel

    triple = str(target.attrs.get("mtriple", "") or "")
    machine = platform.machine().lower()
    arch_ok = (not triple or triple.startswith(machine)
               or (machine in ("amd64", "x86_64") and triple.startswith("x86_64")))
    if not arch_ok:
        return False
    return host_vector_lanes() >= vector_lanes(target)


def time_prim_func(func, target, *, repeat: int = 15) -> float:
    """Median seconds of one call of ``func`` alone on random inputs of its shapes."""
    import time  # pylint: disable=import-outside-toplevel

    library = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                          target=target)
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.random([int(d) for d in p.shape]).astype(str(p.dtype)))
            for p in func.params]
    run = library["main"]
    run(*args)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(*args)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def record_scheduled(tuned: tvm.IRModule) -> list[str]:
    """Functions a tuning record scheduled (scheduled, but by none of our rules)."""
    return [g.name_hint for g, f in tuned.functions_items()
            if isinstance(f, tirx.PrimFunc) and f.attrs and "tirx.is_scheduled" in f.attrs
            and rule_of(f) is None]


def keep_faster(default: tvm.IRModule, tuned: tvm.IRModule, target, names) -> tvm.IRModule:
    """For each function in ``names``, the faster of ``default``'s and ``tuned``'s version,
    timed here with rounds interleaved: the result is never slower than ``default`` (up to
    timing noise). Every other function comes from ``default``."""
    target = _as_target(target)
    result = default
    default_names = {g.name_hint for g in default.get_global_vars()}
    for name in names:
        func = tuned[name]
        baseline = default[name] if name in default_names else None
        if not isinstance(baseline, tirx.PrimFunc) or not isinstance(func, tirx.PrimFunc):
            continue
        rounds = {"default": [], "tuned": []}
        for _ in range(3):
            rounds["default"].append(time_prim_func(baseline, target, repeat=5))
            rounds["tuned"].append(time_prim_func(func, target, repeat=5))
        if min(rounds["tuned"]) < min(rounds["default"]):
            if result is default:
                result = tvm.IRModule(dict(default.functions_items()), attrs=default.attrs)
            result[result.get_global_var(name)] = func
            _LOG.info("tuning record kept for %s (%.3g ms < %.3g ms)", name,
                      min(rounds["tuned"]) * 1e3, min(rounds["default"]) * 1e3)
    return result


def _copy(mod: tvm.IRModule) -> tvm.IRModule:
    return tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)


def _schedule_with_records(lanes: int):
    """Default rules everywhere; where the current MetaSchedule database has a record, the
    record's schedule replaces the default one only if it is faster on this machine (when the
    target cannot run here the record is trusted: it was measured on the device)."""
    apply_rules = dlight.ApplyDefaultSchedule(*schedule_rules(lanes))

    @tvm.transform.module_pass(opt_level=0, name="EdgecnnScheduleWithRecords")
    def _pass(mod, _ctx):
        from tvm.s_tir import meta_schedule as ms  # pylint: disable=import-outside-toplevel

        if ms.Database.current() is None:
            return apply_rules(mod)
        # dlight's ApplyDefaultSchedule, called directly, writes the scheduled functions back
        # into the module it is given: each build gets its own copy, or the records (keyed by
        # the unscheduled workloads) would find nothing to match
        tuned = apply_rules(relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(_copy(mod)))
        default = apply_rules(_copy(mod))
        target = Target.current(allow_none=True)
        if target is None or not _can_run_here(target):
            return tuned
        return keep_faster(default, tuned, target, record_scheduled(tuned))

    return _pass


def cpu_graph_stage(target) -> list:
    """Blocked layouts, legalized and fused, nothing scheduled: where CPU tuning tasks come
    from, so that tuning records match the functions the default rules schedule."""
    return layout_passes(channel_block(_as_target(target)))


def cpu_passes(target) -> list:
    """Relax passes replacing the zero pipeline for a CPU target (run inside the target)."""
    target = _as_target(target)
    return layout_passes(channel_block(target)) + [_schedule_with_records(vector_lanes(target))]


def optimize_cpu(mod: tvm.IRModule, target) -> tvm.IRModule:
    """Lower an imported Relax module with the default CPU schedules (no tuning)."""
    target = _as_target(target)
    with target:
        return tvm.transform.Sequential(cpu_passes(target))(mod)
