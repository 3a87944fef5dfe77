"""What every CPU schedule rule shares: block names, TIR helpers, when to go parallel, the
register-tiled conv schedule, and the rule base class.

A rule that does not recognise a function returns None and leaves it to the next one; a
schedule primitive that refuses (TVM checks each one) makes the rule give up on that
function rather than emit anything unchecked (``SafeRule``).
"""
from __future__ import annotations

import logging
import os

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule

from edgecnn.targets.isa import vector_lanes

_LOG = logging.getLogger(__name__)

# Names of the compute blocks edgecnn's legalizations emit; the rules look for them.
NCHWC_CONV_BLOCK = "conv2d_nchwc"
NCHWC_DEPTHWISE_BLOCK = "depthwise_conv2d_nchwc"
NCHWC_INT8_CONV_BLOCK = "conv2d_nchwc_int8_dot"
GEMV_BLOCK = "gemv_rows"
INT8_GEMV_BLOCK = "gemv_int8_dot"
WINOGRAD_INPUT_BLOCK = "winograd_input"
WINOGRAD_GEMM_BLOCK = "winograd_gemm"
WINOGRAD_OUTPUT_BLOCK = "winograd_output"
# Root-block annotation naming the rule that scheduled a function (read by tests and benchmarks).
RULE_ANNOTATION = "edgecnn.schedule_rule"


# Largest register tile of output columns: 14 accumulators + weight + broadcast fit the 32
# vector registers of AVX-512 and NEON; AVX2 has 16, so it gets fewer columns.
MAX_REG_W = {16: 14, 8: 12, 4: 12}


def channel_block(target) -> int:
    """Channels per block of the blocked layout: one vector, except on AVX2, where it is two.

    AVX2 has 16 vector registers and no broadcast operand for FMA (AVX-512 has 32 and one), so
    a tile of 12 columns x one 8-lane vector pays a broadcast per FMA; 6 columns x two vectors
    of output channels keeps 12 accumulators, loads each input value once for two FMAs and
    each weight vector once for six (measured on a Zen 3, 2 threads: 3conv-224 1.38 -> 1.16x
    onnxruntime, resnet8 1.89 -> 1.24x, vgg-small 2.13 -> 1.74x)."""
    lanes = vector_lanes(target)
    return 2 * lanes if lanes == 8 else lanes


DATA_PAR = 0


REDUCE = 2


def block_iters(sch: s_tir.Schedule, block) -> list:
    return list(sch.get(block).iter_vars)


def is_spatial(sch, block) -> bool:
    return all(int(iv.iter_type) == DATA_PAR for iv in block_iters(sch, block))


def extent_of(loop_or_iv) -> int | None:
    dom = loop_or_iv.dom if hasattr(loop_or_iv, "dom") else loop_or_iv
    ext = dom.extent if hasattr(dom, "extent") else loop_or_iv.extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def loop_extent(sch, loop) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def root_blocks(sch: s_tir.Schedule) -> list:
    root = sch.get_sblock("root") if has_block(sch, "root") else None
    if root is not None:
        return list(sch.get_child_blocks(root))
    return []


def has_block(sch, name) -> bool:
    try:
        sch.get_sblock(name)
    except Exception:  # pylint: disable=broad-except
        return False
    return True


def try_primitive(fn, *args) -> bool:
    """Apply one schedule primitive; TVM verifies it and raises when it does not apply."""
    try:
        fn(*args)
    except Exception:  # pylint: disable=broad-except
        return False
    return True


def best_tile(extent: int, limit: int) -> int:
    """A register tile for ``extent`` output columns: a divisor in [limit/2, limit] when one
    exists (no remainder), else ``limit`` itself (the split leaves a guarded tail)."""
    if extent <= limit:
        return extent
    for tile in range(limit, max(limit // 2, 1) - 1, -1):
        if extent % tile == 0:
            return tile
    return limit


def inline_epilogue(sch, producer) -> object:
    """Inline every elementwise consumer chain of ``producer`` into it; return the last block."""
    current = producer
    while True:
        consumers = list(sch.get_consumers(current))
        if len(consumers) != 1:
            return current
        consumer = consumers[0]
        if not is_spatial(sch, consumer):
            return current
        if not try_primitive(sch.reverse_compute_inline, consumer):
            return current


# Below this many loop iterations (times the reduction: 1M MACs, about 20 us on one core) a
# function runs on one thread: starting a parallel region costs a few microseconds and TVM
# splits the work statically. Timed function by function, each alone (Zen 3, 2 threads),
# convs of 2.4M MACs and more ran 1.2-1.6x faster in parallel and those of 1.2M broke even;
# but in a whole model a layer left on one thread also reads what both cores wrote, and the
# next parallel layer reads what it wrote from one core's cache. Timed in whole models (A/B
# builds interleaved in one process, Zen 4): 1M instead of 2M made resnet8 0.84-0.98x,
# mobilenet-tiny 0.83-0.90x and vgg-small 0.94x as long; 256K made resnet8 1.2x longer.
# On a machine whose other core is busy, fewer threads (``--threads 1``) beat any threshold.
PARALLEL_MIN_WORK = int(os.environ.get("EDGECNN_PARALLEL_MIN_WORK", 1 << 20))


# Convolutions with reductions this short (a 3-channel first layer: 27 taps, depthwise: 9)
# run at a fraction of the dense MAC rate, so they pay for a parallel region at a quarter of
# the work: mobilenet-tiny's first layer (1M MACs) ran in 0.11 ms on two threads, 0.17 on one.
SHORT_REDUCTION = 64


# Dense layers and pooling (``schedule_reduction``) are memory-bound: each MAC of a batch-1
# dense layer reads a weight of its own, so 128K of them already take ~0.1 ms on one core.
REDUCTION_WORK_SCALE = 16


def accumulate_in_registers(sch, block) -> list:
    """Let ``block`` accumulate in a local buffer (registers once its loops are tiled and
    unrolled) with its elementwise consumers inlined into the store that copies it out; return
    the store's loops, which the caller tiles and then moves the accumulation under."""
    sch.cache_write(block, 0, "local")
    store = inline_epilogue(sch, sch.get_consumers(block)[0])
    return sch.get_loops(store)


def block_work(sch, block) -> int:
    total = 1
    for iv in block_iters(sch, block):
        ext = extent_of(iv)
        total *= ext if ext else 1 << 10
    return total


def reduction_extent(sch, block) -> int:
    """Iterations of a block's reduction loops (MACs per output element of a conv)."""
    reduction = 1
    for iv in block_iters(sch, block):
        if int(iv.iter_type) == REDUCE:
            reduction *= extent_of(iv) or 1 << 10
    return reduction


def conv_work(sch, block) -> int:
    """``block_work`` of a convolution block, scaled up for short reductions (see above) and, for
    depthwise convs, as for the memory-bound dense layers and pools: each output reads an
    input window of its own. Timed in the whole model (mobilenet-tiny, Zen 4, 2 threads,
    interleaved with the default build in one process), depthwise layers parallel from 1/16
    of the threshold made the model 0.72-0.83x as long; timed alone, in their own caches,
    they had looked no faster in parallel: in the model each reads what the previous layer
    wrote on both cores."""
    work = block_work(sch, block)
    if str(sch.get(block).name_hint) == NCHWC_DEPTHWISE_BLOCK:
        return work * REDUCTION_WORK_SCALE
    return work * 4 if reduction_extent(sch, block) < SHORT_REDUCTION else work


def schedule_spatial(sch, block, lanes: int, parallel: bool | None = None) -> None:
    """Parallel outer loops and a vectorized innermost axis for an elementwise/injective block."""
    loops = sch.get_loops(block)
    if not loops:
        return
    inner_extent = loop_extent(sch, loops[-1])
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    total = loop_extent(sch, fused)
    if total is None:
        sch.parallel(fused)
        return
    if parallel is None:
        parallel = total >= PARALLEL_MIN_WORK // 4
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


def schedule_reduction(sch, block, lanes: int, parallel: bool | None = None) -> None:
    """Parallel spatial loops; the innermost spatial axis (or its last ``lanes`` part) moved
    inside the reduction and vectorized (pooling over NCHWc channels, dense over output
    units); the initialization split off."""
    iters = block_iters(sch, block)
    loops = sch.get_loops(block)
    if len(loops) != len(iters):
        return
    spatial = [l for l, iv in zip(loops, iters) if int(iv.iter_type) == DATA_PAR]
    reduce = [l for l, iv in zip(loops, iters) if int(iv.iter_type) == REDUCE]
    if not spatial or not reduce or len(spatial) + len(reduce) != len(loops):
        return
    inner = spatial[-1]
    inner_extent = loop_extent(sch, inner)
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
        extent = loop_extent(sch, fused)
        if parallel is None:
            parallel = block_work(sch, block) * REDUCTION_WORK_SCALE >= PARALLEL_MIN_WORK
        if (extent is None or extent >= 2) and parallel:
            sch.parallel(fused)
    if vector is not None:
        sch.vectorize(vector)
    sch.decompose_reduction(block, reduce[0])


class SafeRule(ScheduleRule):
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


def schedule_tiled(sch, block, lanes, parallel: bool | None = None,
                    rows_outer: bool = False) -> bool:
    """The register-tiled schedule shared by direct, depthwise and Winograd convolutions, for
    a block with 5 spatial axes (outer, outer, outer, columns, channel vector) and its
    reductions: accumulators for ``reg_w`` columns x one channel vector live in registers
    (a local buffer), the reduction runs over them, and elementwise consumers are inlined
    into the store; the three outer axes are fused and parallel (the second and third
    swapped with ``rows_outer``)."""
    iters = block_iters(sch, block)
    n_reduce = len(iters) - 5
    kinds = [int(iv.iter_type) for iv in iters]
    if n_reduce < 1 or kinds != [DATA_PAR] * 5 + [REDUCE] * n_reduce:
        return False
    out_w = extent_of(iters[3])
    out_block = extent_of(iters[4])
    limit = MAX_REG_W.get(lanes, 12)
    if out_block > lanes:
        limit = max(limit * lanes // out_block, 4)
    reg_w = best_tile(out_w, limit)
    if parallel is None:
        parallel = conv_work(sch, block) >= PARALLEL_MIN_WORK
    loops = accumulate_in_registers(sch, block)
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


def other_block_names(sch, main) -> list[str]:
    main_name = str(sch.get(main).name_hint)
    return [str(sch.get(b).name_hint) for b in root_blocks(sch)
            if str(sch.get(b).name_hint) != main_name]


def schedule_remaining(sch, names, lanes, parallel: bool | None = None) -> None:
    """Give the blocks outside the main loop nest (padding, epilogues that could not be
    inlined) their own parallel, vectorized loops."""
    for name in names:
        if not has_block(sch, name):
            continue  # inlined into the main nest
        schedule_other(sch, sch.get_sblock(name), lanes, parallel)


def schedule_other(sch, block, lanes, parallel: bool | None = None) -> None:
    if is_spatial(sch, block):
        schedule_spatial(sch, block, lanes, parallel)
    else:
        schedule_reduction(sch, block, lanes, parallel)


def rule_of(func) -> str | None:
    """Name of the edgecnn rule that scheduled ``func`` (None: another rule or none)."""
    try:
        sch = s_tir.Schedule(func)
        value = sch.get(sch.get_sblock("root")).annotations.get(RULE_ANNOTATION)
    except Exception:  # pylint: disable=broad-except
        return None
    return None if value is None else str(value)
