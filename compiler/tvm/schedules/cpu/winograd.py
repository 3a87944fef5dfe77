"""Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions in NCHW{b}c: when it pays
(``use_winograd``), its computes (weight, input and output transforms, the batched GEMM) and
its rule."""
from __future__ import annotations

import numpy as np
from tvm import te, tirx, topi

from .common import (
    PARALLEL_MIN_WORK, WINOGRAD_GEMM_BLOCK, WINOGRAD_INPUT_BLOCK, WINOGRAD_OUTPUT_BLOCK, SafeRule,
    block_work, has_block, inline_epilogue, other_block_names, schedule_remaining, schedule_tiled,
)


# Winograd F(4x4, 3x3) (Lavin & Gray): Y = A^T [(G g G^T) * (B^T d B)] A on 6x6 input tiles.
WINOGRAD_TILE = 4


_WINOGRAD_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
                        np.float32)


WINOGRAD_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                        [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float32)


_WINOGRAD_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                         [0, 1, -1, 8, -8, 1]], np.float32)


# Winograd's transformed weights: below this size they stay in cache between tiles; above it
# a conv needs this many tiles per image to reuse each weight enough (see use_winograd).
_WINOGRAD_CACHED_WEIGHT_BYTES = 8 << 20


_WINOGRAD_STREAMING_TILES = 16


# from this many tiles per image, 16-channel convs go Winograd too
_WINOGRAD_MANY_TILES = 128


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
    tiles = -(-out_h // WINOGRAD_TILE) * -(-out_w // WINOGRAD_TILE)
    channels = min(in_channels, out_channels)
    if not (out_h >= 4 and out_w >= 4 and (channels >= 32 or (channels >= 16 and tiles >= _WINOGRAD_MANY_TILES))):
        return False
    transformed_weight_bytes = 36 * in_channels * out_channels * 4
    return tiles >= _WINOGRAD_STREAMING_TILES or transformed_weight_bytes <= _WINOGRAD_CACHED_WEIGHT_BYTES


def winograd_weight_te(kernel, g_matrix):
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


def winograd_conv_te(data, weight_t, padding):
    """3x3 stride-1 convolution in NCHW{bi}c -> NCHW{bo}c by Winograd F(4x4, 3x3).

    V[e, u, ic, p, ib] = (B^T d B)[e, u] for the 6x6 input tile p of pad(data)
    M[e, u, oc, p, ob] = sum over (ic, ib) of U[e, u, oc, ic, ib, ob] V[e, u, ic, p, ib]
    Y[n, oc, y, x, ob] = (A^T M A)[y % 4, x % 4] for the tile (y // 4, x // 4)

    The transforms are sums with coefficients that become constants once their schedules
    unroll the (e, u) and (y % 4, x % 4) loops (``_tile_transform``).
    """
    batch, in_chunks, height, width, in_block = (int(v) for v in data.shape)
    alpha, _, out_chunks, _, _, out_block = (int(v) for v in weight_t.shape)
    tile = WINOGRAD_TILE
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
    out = inline_epilogue(sch, block)
    loops = sch.get_loops(out)
    if len(loops) != 5:
        return False
    n, o, y, x, j = loops
    tile_y, in_y = sch.split(y, [None, WINOGRAD_TILE])
    tile_x, in_x = sch.split(x, [None, WINOGRAD_TILE])
    sch.reorder(n, o, tile_y, tile_x, in_y, in_x, j)
    _tile_point_loops(sch, [n, o, tile_y], [in_y, in_x], j, parallel)
    return True


class WinogradConv(SafeRule):
    """Winograd F(4x4, 3x3) in NCHW{b}c: the batched GEMM over the 36 transform points gets
    the register-tiled schedule; the input and output transforms (with the epilogue) run
    unrolled over their tile points, vectorized over the channel block; padding gets
    parallel loops."""

    def schedule(self, sch, lanes) -> bool:
        blocks = (WINOGRAD_INPUT_BLOCK, WINOGRAD_GEMM_BLOCK, WINOGRAD_OUTPUT_BLOCK)
        if not all(has_block(sch, name) for name in blocks):
            return False
        gemm = sch.get_sblock(WINOGRAD_GEMM_BLOCK)
        others = [n for n in other_block_names(sch, gemm) if n not in blocks]
        # one decision for the whole conv, from its batched GEMM's multiplies: its stages are
        # small, the conv as a whole is not. (Counted on the output transform, as it was, the
        # decision lost the input channels once that transform had no reduction left: every
        # Winograd conv of vgg-small and ResNet-50's 28x28 and smaller ones ran on one thread.)
        parallel = block_work(sch, gemm) >= PARALLEL_MIN_WORK
        if not schedule_tiled(sch, gemm, lanes, parallel):
            return False
        if not _schedule_winograd_output(sch, sch.get_sblock(WINOGRAD_OUTPUT_BLOCK), parallel):
            return False
        if not _schedule_winograd_input(sch, sch.get_sblock(WINOGRAD_INPUT_BLOCK), parallel):
            return False
        schedule_remaining(sch, others, lanes, parallel)
        return True
