"""Direct convolutions: the blocked NCHW{b}c compute (dense and grouped) and its rule, and the
rule for convolutions left in plain NCHW.

``BlockedConv`` also schedules the depthwise compute (``depthwise.py``): both are one register
tile of output columns x one vector of output channels.
"""
from __future__ import annotations

import logging

import tvm
from tvm import te, topi

from edgecnn.compiler.ops._shapes import output_size

from .common import (
    DATA_PAR, NCHWC_CONV_BLOCK, NCHWC_DEPTHWISE_BLOCK, PARALLEL_MIN_WORK, REDUCE, SHORT_REDUCTION,
    SafeRule, accumulate_in_registers, block_iters, conv_work, extent_of, has_block, loop_extent,
    other_block_names, reduction_extent, root_blocks, schedule_remaining, schedule_tiled, is_spatial,
)

_LOG = logging.getLogger(__name__)


def padded_input(data, kernel_size, strides, padding, dilation):
    """(the zero-padded NCHW{b}c input, output height, output width) of a convolution, with
    ``padding`` in ONNX order (top, left, bottom, right); no pad stage when every pad is zero."""
    height, width = int(data.shape[2]), int(data.shape[3])
    pad_top, pad_left, pad_bottom, pad_right = (int(p) for p in padding)
    (stride_h, stride_w), (dil_h, dil_w) = (int(s) for s in strides), (int(d) for d in dilation)
    out_h = output_size(height, kernel_size[0], stride_h, dil_h, pad_top, pad_bottom)
    out_w = output_size(width, kernel_size[1], stride_w, dil_w, pad_left, pad_right)
    if not (pad_top or pad_left or pad_bottom or pad_right):
        return data, out_h, out_w
    padded = topi.nn.pad(data, (0, 0, pad_top, pad_left, 0), (0, 0, pad_bottom, pad_right, 0), name="data_pad")
    return padded, out_h, out_w


def blocked_conv_te(data, kernel, strides, padding, dilation, groups=1, out_dtype=None):
    """Direct convolution in NCHW{bi}c x OIHW{bi}i{bo}o -> NCHW{bo}c.

    out[n, oc, y, x, ob] = sum over (ic, ky, kx, ib) of
        pad(data)[n, g(oc)*IC + ic, y*sy + ky*dy, x*sx + kx*dx, ib] * kernel[oc, ic, ky, kx, ib, ob]
    where IC is the number of input-channel chunks per group and g(oc) the group of output
    chunk oc (0 when groups = 1).
    The input-channel reduction is split into chunk and block (two axes) so the schedule can
    place the in-block channels innermost without index arithmetic. ``out_dtype`` (int32 for
    int8 x int8 convs) widens both operands before the product, so integer sums are exact.
    """
    batch, in_chunks, _, _, in_block = (int(v) for v in data.shape)
    out_chunks, kernel_chunks, kernel_h, kernel_w, kernel_block, out_block = (
        int(v) for v in kernel.shape)
    if kernel_chunks * groups != in_chunks or kernel_block != in_block or out_chunks % groups:
        raise ValueError(
            "blocked conv: kernel input channels must match the data's per group. "
            f"Received: data={tuple(data.shape)}, kernel={tuple(kernel.shape)}, groups={groups}")
    out_chunks_per_group = out_chunks // groups
    padded, out_h, out_w = padded_input(data, (kernel_h, kernel_w), strides, padding, dilation)
    stride_h, stride_w = (int(s) for s in strides)
    dil_h, dil_w = (int(d) for d in dilation)
    r_chunk = te.reduce_axis((0, kernel_chunks), "ic_chunk")
    r_y = te.reduce_axis((0, kernel_h), "ky")
    r_x = te.reduce_axis((0, kernel_w), "kx")
    r_block = te.reduce_axis((0, in_block), "ic_block")

    def in_chunk(oc):
        if groups == 1:
            return r_chunk
        return oc // out_chunks_per_group * kernel_chunks + r_chunk

    def widen(value):
        return value if out_dtype is None else value.astype(out_dtype)

    return te.compute(
        (batch, out_chunks, out_h, out_w, out_block),
        lambda n, oc, y, x, ob: te.sum(
            widen(padded[n, in_chunk(oc), y * stride_h + r_y * dil_h, x * stride_w + r_x * dil_w,
                         r_block])
            * widen(kernel[oc, r_chunk, r_y, r_x, r_block, ob]),
            axis=[r_chunk, r_y, r_x, r_block]),
        name=NCHWC_CONV_BLOCK)


class BlockedConv(SafeRule):
    """Direct (or depthwise) convolution in NCHW{b}c: a register tile of output columns x one
    vector of output channels, accumulated in registers, epilogue fused into the store."""

    def schedule(self, sch, lanes) -> bool:
        name = next((n for n in (NCHWC_CONV_BLOCK, NCHWC_DEPTHWISE_BLOCK) if has_block(sch, n)),
                    None)
        if name is None:
            return False
        conv = sch.get_sblock(name)
        if len(block_iters(sch, conv)) - 5 not in (2, 4):
            return False
        others = other_block_names(sch, conv)
        # A conv with a short reduction (depthwise: 9 taps; a 3-channel first layer: 27) spends
        # as long padding its input as convolving it: depthwise convs (each output block reads
        # one input block) and parallel first layers pad row by row inside the conv's outer
        # loop, in cache (mobilenet-tiny's first layer 3x faster, its depthwise layers up to
        # 3x). Dense convs read each padded row for every output block and are faster with
        # the padding made once (16->16 at 32x32: 1.6x); so are small serial first layers,
        # whose unblocked rows pad in scalar code (lenet5's first layer: 2x).
        parallel = conv_work(sch, conv) >= PARALLEL_MIN_WORK
        pad_per_row = name == NCHWC_DEPTHWISE_BLOCK or (
            parallel and reduction_extent(sch, conv) < SHORT_REDUCTION)
        if not schedule_tiled(sch, conv, lanes, parallel, rows_outer=True):
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
                if (loop_extent(sch, inner) or 1) % lanes == 0:
                    sch.vectorize(inner)
        # The padding of a parallel conv is small for an elementwise pass (16 channels at
        # 34x34: 18K floats), but serial it kept the conv's worker waiting: parallel, the
        # workers already awake for the conv, resnet8's 16- and 32-channel convs took
        # 0.75-0.85x as long, function by function.
        schedule_remaining(sch, others, lanes, parallel or None)
        return True


class PlainConv(SafeRule):
    """A convolution left in NCHW (first layers, odd channel counts, grouped, depthwise):
    register tile of output channels x one vector of output columns."""

    def schedule(self, sch, lanes) -> bool:
        convs = [b for b in root_blocks(sch) if not is_spatial(sch, b)]
        if len(convs) != 1:
            return False
        conv = convs[0]
        iters = block_iters(sch, conv)
        kinds = [int(iv.iter_type) for iv in iters]
        if kinds != [DATA_PAR] * 4 + [REDUCE] * 3:
            return False
        writes = sch.get(conv).writes
        if len(writes) != 1 or len(writes[0].source.shape) != 4:
            return False
        reads = [r.source for r in sch.get(conv).reads]
        if not any(len(b.shape) == 4 for b in reads) or len(reads) != 2:
            return False
        channels = extent_of(iters[1])
        out_w = extent_of(iters[3])
        vec = lanes if out_w >= lanes else out_w
        oc_tile = 1
        for cand in (8, 6, 4, 3, 2):
            if channels % cand == 0:
                oc_tile = cand
                break
        others = other_block_names(sch, conv)
        loops = accumulate_in_registers(sch, conv)
        if len(loops) != 4:
            return False
        n, c, y, x = loops
        c_out, c_in = sch.split(c, [None, oc_tile])
        x_out, x_in = sch.split(x, [None, vec])
        sch.reorder(n, c_out, y, x_out, c_in, x_in)
        outer = sch.fuse(n, c_out, y)
        if conv_work(sch, conv) >= PARALLEL_MIN_WORK:
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
        schedule_remaining(sch, others, lanes)
        return True
