"""The NumPy kernels behind Conv's forward and backward: three ways to one result.

Each is chosen from the layer's geometry, and all compute the same sums up to float32 rounding
(the tests hold every one to the same finite-difference and onnxruntime checks):

* **pointwise** (1x1 kernel, no padding): the convolution is a matrix product per sample,
  ``Y[n] = W (M, C) @ X[n] (C, H*W)``, read and written in NCHW as they lie (a stride is one
  subsampling copy first).
* **wide** (stride 1, any kernel, padding and dilation, not depthwise, where the padded grid is
  at most ``WIDE_WASTE_LIMIT`` times the output): the input goes channels
  first into a zero-padded buffer ``(C, N*Hp*Wp)``. There the pixel a kernel tap reads for output
  position ``p`` is at ``p + offset(tap)``, one fixed offset per tap, so each tap's rows of the
  patch matrix are one *contiguous* slice of that buffer, and the output is computed on the whole
  padded grid ("wide": the positions past an image's edge are computed and dropped). Copies run
  at memory speed instead of row by row. The input gradient is the same computation on the
  output gradient with the kernel flipped and transposed (a full correlation), so the backward
  has no scatter-add. The patch matrix is built and consumed in column chunks sized for the
  cache, and never kept: the backward rebuilds it, so a layer's training memory is its input and
  output, not nine copies of the input.
* **columns** (the rest: strided, depthwise, small maps): im2col with the columns channels first,
  one strided copy per kernel tap, and its adjoint col2im in the backward.

Temporaries come from :mod:`._scratch` and are reused across calls; the work is cut into slices
for the threads of :mod:`._parallel` (by columns of the patch matrix, by sample, or by channel).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ._parallel import assign, for_slices, matmul
from ._scratch import scratch

# Bytes of patch matrix one thread builds and multiplies at a time in the wide path (each thread
# keeps one such buffer). Smaller chunks stay in cache, but their products are too narrow for
# BLAS: on a 2-vCPU Xeon, vgg-small's convs took 147 ms (forward and backward) with 1 MiB chunks,
# 133 ms with 4 MiB and 116 ms with 16 MiB, single-threaded copies; with the copies split over
# two threads, 4 MiB ran 7% slower than 8 MiB but keeps vgg-small's training step under
# PyTorch's memory (one buffer per thread).
CHUNK_BYTES = 4 << 20
MIN_CHUNK_COLUMNS = 512
# Beyond this much wasted work the wide path loses to plain im2col (2-vCPU Xeon, forward +
# backward, both with reused buffers and split over two threads): 32x32 maps padded by 1 (1.13)
# ran 8% faster wide, 16x16 maps (1.27) about even; 8x8 maps (1.56), LeNet's 28x28 padded by 2
# (1.31) and its unpadded 5x5 conv on 14x14 (1.96) faster as columns. (A third way, one product
# per kernel tap from the padded grid with no patch matrix at all, was 25% slower overall: its
# products are only C deep.)
WIDE_WASTE_LIMIT = 1.3


@dataclass(frozen=True)
class Geometry:
    """One Conv call's shapes: input (N, C, H, W), weight (M, C/g, KH, KW), ONNX-order pads."""

    n: int
    c: int
    h: int
    w: int
    m: int
    kernel: tuple
    strides: tuple
    dilations: tuple
    pads: tuple
    out: tuple
    group: int

    @property
    def padded(self) -> tuple:
        return (self.h + self.pads[0] + self.pads[2], self.w + self.pads[1] + self.pads[3])

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def method(self) -> str:
        if self.kernel == (1, 1) and not any(self.pads):
            return "pointwise"
        depthwise = self.c == self.group and self.m == self.group and self.group > 1
        if self.strides == (1, 1) and not depthwise and self.waste < WIDE_WASTE_LIMIT:
            return "wide"
        return "columns"

    @property
    def waste(self) -> float:
        """Positions the wide path computes per output it keeps (the padded grid over the output)."""
        return self.padded[0] * self.padded[1] / (self.out[0] * self.out[1])


def forward(x: np.ndarray, w: np.ndarray, b, geo: Geometry) -> np.ndarray:
    y = _METHODS[geo.method][0](x, w, geo)
    if b is not None:
        y += b.reshape(1, -1, 1, 1).astype(y.dtype, copy=False)
    return y


def backward(x: np.ndarray, w: np.ndarray, dy: np.ndarray, geo: Geometry, need_dx: bool):
    """(dx or None, dW) for the output gradient ``dy``."""
    return _METHODS[geo.method][1](x, w, np.ascontiguousarray(dy), geo, need_dx)


# -- pointwise ------------------------------------------------------------------------------------
def _subsampled(x, geo: Geometry) -> np.ndarray:
    if geo.strides == (1, 1):
        return x
    return np.ascontiguousarray(x[:, :, ::geo.strides[0], ::geo.strides[1]])


def _pointwise_forward(x, w, geo: Geometry):
    g, (oh, ow) = geo.group, geo.out
    xs = _subsampled(x, geo).reshape(geo.n, g, geo.c // g, oh * ow)
    wmat = w.reshape(g, geo.m // g, geo.c // g)
    y = np.empty((geo.n, g, geo.m // g, oh * ow), dtype=x.dtype)  # NCHW as it lies

    def body(first, stop):
        np.matmul(wmat, xs[first:stop], out=y[first:stop])
    for_slices(body, geo.n, y.size * geo.c // g)
    return y.reshape(geo.n, geo.m, oh, ow)


def _pointwise_backward(x, w, dy, geo: Geometry, need_dx):
    g, (oh, ow) = geo.group, geo.out
    mg, cg = geo.m // g, geo.c // g
    xs = _subsampled(x, geo).reshape(geo.n, g, cg, oh * ow)
    dys = dy.reshape(geo.n, g, mg, oh * ow)
    wt = w.reshape(g, mg, cg).transpose(0, 2, 1)
    dxs = np.empty((geo.n, g, cg, oh * ow), dtype=dy.dtype) if need_dx else None

    def body(first, stop):
        if need_dx:
            np.matmul(wt, dys[first:stop], out=dxs[first:stop])
        return np.matmul(dys[first:stop], xs[first:stop].transpose(0, 1, 3, 2)).sum(axis=0)
    dw = sum(for_slices(body, geo.n, dy.size * cg)).reshape(w.shape)
    if not need_dx:
        return None, dw
    dxs = dxs.reshape(geo.n, geo.c, oh, ow)
    if geo.strides == (1, 1):
        return dxs, dw
    dx = np.zeros((geo.n, geo.c, geo.h, geo.w), dtype=dy.dtype)
    dx[:, :, ::geo.strides[0], ::geo.strides[1]] = dxs
    return dx, dw


# -- wide -----------------------------------------------------------------------------------------
def _offsets(geo: Geometry, row_length: int) -> list[int]:
    """Flat offset of each kernel tap (kh outer, kw inner) on a grid ``row_length`` wide."""
    dh, dw = geo.dilations
    return [i * dh * row_length + j * dw for i in range(geo.kernel[0]) for j in range(geo.kernel[1])]


def _chunks(start: int, stop: int, rows: int, itemsize: int):
    step = max(MIN_CHUNK_COLUMNS, CHUNK_BYTES // max(1, rows * itemsize))
    for s in range(start, stop, step):
        yield s, min(stop, s + step)


def _padded_channels_first(x, geo: Geometry) -> np.ndarray:
    """``x`` zero-padded, channels first, flattened: (C, N*Hp*Wp), in this thread's scratch."""
    hp, wp = geo.padded
    flat = scratch("conv.input", (x.shape[1], geo.n * hp * wp), x.dtype, zero=True)
    grid = flat.reshape(x.shape[1], geo.n, hp, wp)
    top, left = geo.pads[0], geo.pads[1]
    assign(grid[:, :, top:top + x.shape[2], left:left + x.shape[3]], x.transpose(1, 0, 2, 3))
    return flat


def _tap_rows(source: np.ndarray, offsets, s: int, e: int, groups: int) -> np.ndarray:
    """Patch-matrix columns ``s:e``: (groups, rows/groups * taps, e - s), tap ``t`` read at ``+offsets[t]``.

    In this thread's scratch: each worker builds and consumes its own.
    """
    rows = source.shape[0]
    cols = scratch("conv.cols", (rows, len(offsets), e - s), source.dtype)
    for t, off in enumerate(offsets):
        cols[:, t] = source[:, s + off:e + off]
    return cols.reshape(groups, rows // groups * len(offsets), e - s)


def _over_columns(body, start: int, stop: int, rows: int, itemsize: int) -> list:
    """``body(s, e)`` for every chunk of columns ``start:stop``, the chunks spread over the threads."""
    def run(first, last):
        return [body(s, e) for s, e in _chunks(first, last, rows, itemsize)]
    return [r for results in for_slices(run, stop - start, (stop - start) * rows, start) for r in results]


def _wide_forward(x, w, geo: Geometry):
    g, (hp, wp), (oh, ow) = geo.group, geo.padded, geo.out
    size = geo.n * hp * wp
    offsets = _offsets(geo, wp)
    valid = size - offsets[-1]  # every output position lies below this
    flat = _padded_channels_first(x, geo)
    wide = scratch("conv.output", (g, geo.m // g, size), x.dtype)
    wmat = w.reshape(g, geo.m // g, -1)

    def chunk(s, e):
        np.matmul(wmat, _tap_rows(flat, offsets, s, e, g), out=wide[:, :, s:e])
    _over_columns(chunk, 0, valid, geo.c * geo.taps, x.dtype.itemsize)
    y = np.empty((geo.n, geo.m, oh, ow), dtype=x.dtype)
    assign(y, wide.reshape(geo.m, geo.n, hp, wp)[:, :, :oh, :ow].transpose(1, 0, 2, 3))
    return y


def _wide_backward(x, w, dy, geo: Geometry, need_dx):
    g, (hp, wp), (oh, ow) = geo.group, geo.padded, geo.out
    mg, cg = geo.m // g, geo.c // g
    size = geo.n * hp * wp
    offsets = _offsets(geo, wp)
    lead = offsets[-1]
    valid = size - lead
    # The output gradient on the padded grid, zero where no output is (so those positions add
    # nothing), after ``lead`` zeros so that every shifted read below stays inside the buffer.
    dgrid = scratch("conv.grad", (geo.m, lead + size), dy.dtype, zero=True)
    assign(dgrid[:, lead:].reshape(geo.m, geo.n, hp, wp)[:, :, :oh, :ow], dy.transpose(1, 0, 2, 3))
    dwide = dgrid[:, lead:].reshape(g, mg, size)
    flat = _padded_channels_first(x, geo)

    def weight_chunk(s, e):
        return np.matmul(dwide[:, :, s:e], _tap_rows(flat, offsets, s, e, g).transpose(0, 2, 1))
    dw = sum(_over_columns(weight_chunk, 0, valid, geo.c * geo.taps, dy.dtype.itemsize))
    dw = dw.astype(w.dtype, copy=False).reshape(w.shape)
    if not need_dx:
        return None, dw
    # dX at padded position q is sum over taps t of W_t^T dY[q - offset_t]: read dgrid at
    # q + lead - offset_t, with the weight transposed per group to (C/g, M/g * taps).
    wt = w.reshape(g, mg, cg, geo.taps).transpose(0, 2, 1, 3).reshape(g, cg, mg * geo.taps)
    flipped = [lead - off for off in offsets]
    top, left = geo.pads[0], geo.pads[1]
    first = top * wp + left
    last = (geo.n - 1) * hp * wp + (top + geo.h - 1) * wp + left + geo.w  # one past the last input pixel
    dflat = scratch("conv.output", (g, cg, size), dy.dtype)  # the forward's output buffer, idle here

    def input_chunk(s, e):
        np.matmul(wt, _tap_rows(dgrid, flipped, s, e, g), out=dflat[:, :, s:e])
    _over_columns(input_chunk, first, last, geo.m * geo.taps, dy.dtype.itemsize)
    dx = np.empty((geo.n, geo.c, geo.h, geo.w), dtype=dy.dtype)
    assign(dx, dflat.reshape(geo.c, geo.n, hp, wp)[:, :, top:top + geo.h, left:left + geo.w].transpose(1, 0, 2, 3))
    return dx, dw


# -- columns --------------------------------------------------------------------------------------
def tap_slices(i: int, j: int, strides, dilations, out_hw) -> tuple[slice, slice]:
    """Rows and columns of the padded input that kernel position (i, j) reads, one per output."""
    hi, wj = i * dilations[0], j * dilations[1]
    return (slice(hi, hi + strides[0] * (out_hw[0] - 1) + 1, strides[0]),
            slice(wj, wj + strides[1] * (out_hw[1] - 1) + 1, strides[1]))


def move_taps(cols: np.ndarray, grid: np.ndarray, strides, dilations, out_hw, *, add_to_grid: bool = False):
    """Between patch-matrix columns ``cols`` (C, KH, KW, N, OH, OW) and a padded channels-first
    ``grid`` (C, N, Hp, Wp): one strided copy per kernel tap into ``cols`` (im2col), or with
    ``add_to_grid`` one strided add per tap into ``grid`` (its adjoint, col2im). Split over the
    threads by channel, or by sample where there are more samples (a 1-channel input)."""
    c, kh, kw, n = cols.shape[:4]
    by_channel = c >= n

    def move(first, stop):
        part = slice(first, stop)
        for i in range(kh):
            for j in range(kw):
                rows, columns = tap_slices(i, j, strides, dilations, out_hw)
                taps = cols[part, i, j] if by_channel else cols[:, i, j, part]
                pixels = grid[part, :, rows, columns] if by_channel else grid[:, part, rows, columns]
                if add_to_grid:
                    pixels += taps
                else:
                    taps[...] = pixels
    for_slices(move, c if by_channel else n, cols.size)


def im2col_channel_first(xp: np.ndarray, kernel, strides, dilations, out_hw) -> np.ndarray:
    """Columns (C, KH, KW, N, OH, OW) of the padded input, a new array (ConvTranspose keeps them)."""
    n, c = xp.shape[:2]
    cols = np.empty((c, kernel[0], kernel[1], n, out_hw[0], out_hw[1]), dtype=xp.dtype)
    move_taps(cols, xp.transpose(1, 0, 2, 3), strides, dilations, out_hw)
    return cols


def col2im_channel_first(dcols: np.ndarray, padded_shape, kernel, strides, dilations, out_hw) -> np.ndarray:
    """Adjoint of :func:`im2col_channel_first`: add column values back into an (N, C, H, W) canvas."""
    n, c = padded_shape[:2]
    out = np.zeros((c, n) + tuple(padded_shape[2:]), dtype=dcols.dtype)
    move_taps(dcols.reshape(c, kernel[0], kernel[1], n, out_hw[0], out_hw[1]), out, strides, dilations, out_hw,
              add_to_grid=True)
    return out.transpose(1, 0, 2, 3)


def _columns(x, geo: Geometry) -> np.ndarray:
    """im2col (g, C/g * KH * KW, N * OH * OW), channels first, in this thread's scratch."""
    (oh, ow), (kh, kw) = geo.out, geo.kernel
    padded = np.pad(x, ((0, 0), (0, 0), (geo.pads[0], geo.pads[2]), (geo.pads[1], geo.pads[3]))) \
        if any(geo.pads) else x
    cols = scratch("conv.cols", (geo.c, kh, kw, geo.n, oh, ow), x.dtype)
    move_taps(cols, padded.transpose(1, 0, 2, 3), geo.strides, geo.dilations, geo.out)
    return cols.reshape(geo.group, -1, geo.n * oh * ow)


def _over_samples(body, geo: Geometry, bytes_per_sample: int) -> list:
    """``body(first, stop, sub_geometry)`` over chunks of samples whose patch matrix is about
    CHUNK_BYTES, one after another, each chunk's copies and products split over the threads.
    (Handing whole chunks to the threads instead holds a patch matrix per thread: vgg-small's
    training step then took 65 MB over its start instead of 52.)"""
    per_chunk = max(1, CHUNK_BYTES // max(1, bytes_per_sample))
    return [body(s, min(geo.n, s + per_chunk), replace(geo, n=min(geo.n, s + per_chunk) - s))
            for s in range(0, geo.n, per_chunk)]


def _columns_forward(x, w, geo: Geometry):
    g, (oh, ow) = geo.group, geo.out
    wmat = w.reshape(g, geo.m // g, -1)
    y = np.empty((geo.n, geo.m, oh, ow), dtype=x.dtype)

    def chunk(first, stop, sub):
        cols = _columns(x[first:stop], sub)
        out = matmul(wmat, cols, out=scratch("conv.output", (g, geo.m // g, cols.shape[-1]), x.dtype))
        assign(y[first:stop], out.reshape(geo.m, sub.n, oh, ow).transpose(1, 0, 2, 3))
    _over_samples(chunk, geo, geo.c * geo.taps * oh * ow * x.dtype.itemsize)
    return y


def _columns_backward(x, w, dy, geo: Geometry, need_dx):
    g, (oh, ow), (kh, kw), (hp, wp) = geo.group, geo.out, geo.kernel, geo.padded
    mg = geo.m // g
    wmat = w.reshape(g, mg, -1)
    top, left = geo.pads[0], geo.pads[1]
    dx = np.empty((geo.n, geo.c, geo.h, geo.w), dtype=dy.dtype) if need_dx else None

    def chunk(first, stop, sub):
        dy_mat = scratch("conv.grad", (geo.m, sub.n, oh * ow), dy.dtype)
        assign(dy_mat, dy[first:stop].reshape(sub.n, geo.m, oh * ow).transpose(1, 0, 2))
        dy_mat = dy_mat.reshape(g, mg, sub.n * oh * ow)
        cols = _columns(x[first:stop], sub)
        dw = sum(for_slices(lambda a, b: np.matmul(dy_mat[..., a:b], cols[..., a:b].transpose(0, 2, 1)),
                            cols.shape[-1], cols.size * mg))
        if not need_dx:
            return dw
        if mg == 1:
            # Depthwise: each column gradient is an outer product with one weight row; a broadcast
            # multiply does it ~6x faster than matmul's stack of (K, 1) @ (1, N*OH*OW) products.
            def outer(a, b):
                np.multiply(wmat.transpose(0, 2, 1), dy_mat[..., a:b], out=cols[..., a:b])
            for_slices(outer, cols.shape[-1], cols.size)
            dcols = cols
        else:
            dcols = matmul(wmat.transpose(0, 2, 1), dy_mat, out=cols)
        dpadded = scratch("conv.output", (geo.c, sub.n, hp, wp), dy.dtype, zero=True)  # the forward's, idle here
        move_taps(dcols.reshape(geo.c, kh, kw, sub.n, oh, ow), dpadded, geo.strides, geo.dilations, geo.out,
                  add_to_grid=True)
        assign(dx[first:stop], dpadded[:, :, top:top + geo.h, left:left + geo.w].transpose(1, 0, 2, 3))
        return dw
    dw = sum(_over_samples(chunk, geo, geo.c * geo.taps * oh * ow * dy.dtype.itemsize))
    return dx, dw.reshape(w.shape).astype(w.dtype, copy=False)


_METHODS = {
    "pointwise": (_pointwise_forward, _pointwise_backward),
    "wide": (_wide_forward, _wide_backward),
    "columns": (_columns_forward, _columns_backward),
}
