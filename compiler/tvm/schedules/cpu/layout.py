"""Relax level, before any schedule: blocked layouts for the whole graph.

* Zero ``Pad`` nodes (edgecnn's exporter writes "same" padding as one) fold into the conv's
  own padding (``fold_pad_into_conv``).
* ``ConvertLayout`` puts convolutions into a blocked layout: NCHW{b}c activations,
  OIHW{bi}i{bo}o weights, ``b`` = ``common.channel_block(target)``. Then ``_BlockRemaining``
  blocks what it left, layer by layer, with blocks chosen from the channel counts (3-channel
  inputs stay NCHW as a free reshape, 24 channels at 16 lanes use blocks of 8, depthwise and
  grouped convs get their own), and moves the NCHW{b}c -> NCHW transforms down through
  elementwise ops, pooling and concat until they meet their inverse and cancel, so
  activations stay blocked between layers.
* Legalization with edgecnn's blocked computes (``legalize.py``); weight repacks and Winograd
  weight transforms are computations on constants, folded at compile time in one build.
"""
from __future__ import annotations

import logging

import tvm
from tvm import relax, s_tir, te, tirx, topi
from tvm.sym.analyzer import Analyzer as _Analyzer

from edgecnn.compiler.tvm.passes import fold_constants
from edgecnn.compiler.tvm.relax_helpers import rewrite_functions, spatial_pad, static_shape

from .common import DATA_PAR, extent_of, root_blocks
from .legalize import integer_dot_convs, legalize_map

_LOG = logging.getLogger(__name__)

# input channels of one integer dot product (x86 VNNI ``vpdpbusd``, ARM ``sdot``)
INTEGER_DOT_CHANNELS = 4


def vector_block(value: int, lanes: int) -> int:
    """Channels per block: the largest power of two up to ``lanes`` dividing ``value`` (whole
    vector registers), else the largest divisor up to ``lanes`` (3-channel inputs, odd counts)."""
    width = lanes
    while width >= 4:
        if value % width == 0:
            return width
        width //= 2
    return largest_divisor(value, lanes)


def largest_divisor(value: int, limit: int) -> int:
    for cand in range(min(value, limit), 0, -1):
        if value % cand == 0:
            return cand
    return 1


def to_blocked_map(block: int):
    return lambda n, c, h, w: (n, c // block, h, w, c % block)


def to_plain_map(block: int):
    return lambda n, c, h, w, b: (n, c * block + b, h, w)


def layout_kind(call: relax.Call) -> tuple[str, int] | None:
    """('to_plain', b) for NCHW{b}c -> NCHW, ('to_blocked', b) for NCHW -> NCHW{b}c, else None.

    Checked on the shapes and on sample indices of the index map, so a transpose or any other
    transform is never mistaken for one of these two."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
        return None
    if call.op.name != "relax.layout_transform" or call.attrs.pad_value is not None:
        return None
    src = static_shape(call.args[0])
    dst = static_shape(call)
    if src is None or dst is None:
        return None
    index_map = call.attrs.index_map
    if len(src) == 5 and len(dst) == 4 and dst == [src[0], src[1] * src[4], src[2], src[3]]:
        kind, block, expected = "to_plain", src[4], to_plain_map(src[4])
    elif len(src) == 4 and len(dst) == 5 and dst[4] > 0 and src[1] == dst[1] * dst[4]:
        kind, block, expected = "to_blocked", dst[4], to_blocked_map(dst[4])
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
    "relax.sqrt", "relax.abs",
    # the int8 road's requantize epilogue: round, then the cast to int8 after the clip
    "relax.round", "relax.astype"})


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

    # -- helpers -------------------------------------------------------------------------
    def _plain_source(self, expr) -> tuple[relax.Expr, int] | None:
        """If ``expr`` is (bound to) NCHW{b}c -> NCHW of some y, return (y, b)."""
        value = expr
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if bound is not None:
                value = bound
        kind = layout_kind(value)
        if kind is not None and kind[0] == "to_plain":
            return value.args[0], kind[1]
        return None

    def _to_blocked(self, expr, block: int) -> relax.Expr:
        source = self._plain_source(expr)
        if source is not None and source[1] == block:
            return source[0]
        if block == 1:  # NCHW1c is NCHW with a unit axis: a free reshape, no copy
            shape = static_shape(expr)
            return self.builder_.emit(relax.op.reshape(expr, [*shape, 1]))
        return self.builder_.emit(relax.op.layout_transform(expr, to_blocked_map(block)))

    def _to_plain(self, expr, block: int) -> relax.Expr:
        return relax.op.layout_transform(self.builder_.emit(expr), to_plain_map(block))

    def _scalar_minmax_op(self, call):
        """The Relax op for ``call_tir(f, (x, s))`` when f is exactly ``max(x[i...], s[])`` or
        ``min(...)`` (how the ONNX frontend emits Clip), else None."""
        if call.op.name != "relax.call_tir" or len(call.args) < 2:
            return None
        args = call.args[1]
        if not isinstance(call.args[0], relax.GlobalVar) or not isinstance(args, relax.Tuple) \
                or len(args.fields) != 2 or static_shape(args.fields[1]) != []:
            return None
        func = self.module[call.args[0]] if call.args[0] in self.module.get_global_vars() else None
        if not isinstance(func, tirx.PrimFunc) or len(func.params) != 3:
            return None
        try:
            sch = s_tir.Schedule(func)
            blocks = root_blocks(sch)
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
            kind = layout_kind(call)
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
        if name == "relax.nn.pad":
            return self._pad(call)
        if name in ("relax.quantize", "relax.dequantize"):
            return self._per_tensor_quantization(call)
        if name == "relax.mean":
            return self._spatial_mean(call)
        return call

    def _per_tensor_quantization(self, call):
        """quantize / dequantize with one scale and zero point (the int8 road's activations: a
        residual add runs on its dequantized inputs) are elementwise, so they stay blocked."""
        source = self._plain_source(call.args[0])
        if source is None or any(static_shape(a) != [] for a in call.args[1:]):
            return call
        return self._to_plain(relax.Call(call.op, [source[0], *call.args[1:]], call.attrs), source[1])

    def _spatial_mean(self, call):
        """A mean over H and W kept as 1x1 (GlobalAveragePool) reduces each block in place."""
        source = self._plain_source(call.args[0])
        axes = [int(a) for a in call.attrs.axis] if call.attrs.axis is not None else []
        if source is None or sorted(a % 4 for a in axes) != [2, 3] or not bool(call.attrs.keepdims):
            return call
        return self._to_plain(relax.op.mean(source[0], axis=[2, 3], keepdims=True), source[1])

    def _pad(self, call):
        """A constant pad of H and W only (the int8 road pads with the zero point) stays blocked."""
        source, pad = self._plain_source(call.args[0]), spatial_pad(call)
        if source is None or pad is None:
            return call
        _, widths, value = pad
        return self._to_plain(relax.op.nn.pad(source[0], [0] * 4 + widths + [0, 0], pad_value=value), source[1])

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
        out_shape = static_shape(call)
        if out_shape is None or len(out_shape) != 4:
            return call
        if left is not None and right is not None and left[1] == right[1]:
            if static_shape(lhs) != static_shape(rhs):
                return call
            return self._to_plain(relax.Call(call.op, [left[0], right[0]], call.attrs), left[1])
        source, other, source_first = (left, rhs, True) if left is not None else (right, lhs, False)
        if isinstance(other, relax.Var) and self.lookup_binding(other) is not None:
            other = self.lookup_binding(other)
        if source is None or not isinstance(other, tvm.ir.expr.Constant):
            return call
        other_shape = static_shape(other)
        channels = out_shape[1]
        block = source[1]
        if other_shape is not None and all(d == 1 for d in other_shape) and len(other_shape) <= 4:
            scalar = relax.op.reshape(other, []) if other_shape else other
            args = [source[0], scalar] if source_first else [scalar, source[0]]
            return self._to_plain(relax.Call(call.op, args, call.attrs), block)
        if other_shape is None or other_shape not in ([1, channels, 1, 1], [channels, 1, 1]):
            return call
        const4 = other if len(other_shape) == 4 else self.builder_.emit(relax.op.reshape(other, [1, channels, 1, 1]))
        blocked = self.builder_.emit(relax.op.layout_transform(const4, to_blocked_map(block)))
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
                or str(attrs.out_layout) != "NCHW"):
            return call
        data_shape = static_shape(call.args[0])
        weight_shape = static_shape(call.args[1])
        # float convs, and the int8 road's int8 x int8 -> int32 ones (tvm/quantized.py)
        out_dtype = str(attrs.out_dtype) if attrs.out_dtype else ""
        floating = str(call.args[0].ty.dtype) == "float32" and out_dtype in ("", "float32")
        integer = str(call.args[0].ty.dtype) in ("int8", "uint8") and out_dtype == "int32"
        if data_shape is None or weight_shape is None or not (floating or integer):
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
                        else vector_block(in_channels // groups, self.block))
            out_block = vector_block(per_group_out, self.block)
            weight = call.args[1]
            pad_out = padded_out_channels(out_channels, out_block, self.block) if groups == 1 else 0
            if pad_out:
                out_block = self.block
                weight = self.builder_.emit(relax.op.nn.pad(weight, [0, pad_out, 0, 0, 0, 0, 0, 0]))
            if integer and groups == 1 and in_channels < INTEGER_DOT_CHANNELS:
                # int8 products come in dot products of 4 channels (VNNI, sdot): a 3-channel
                # image gets a fourth, zero-weighted channel (the blocking's own padding) and
                # blocks of 4; the zero-point pad of H and W moves after the blocking, where
                # the dot conv takes it into its own padding stage
                extra = INTEGER_DOT_CHANNELS - in_channels
                weight = self.builder_.emit(relax.op.nn.pad(weight, [0, 0, 0, extra, 0, 0, 0, 0]))
                in_block = INTEGER_DOT_CHANNELS
                pad = spatial_pad(self.lookup_binding(call.args[0]) if isinstance(call.args[0], relax.Var)
                                  else call.args[0])
                data = call.args[0] if pad is None else pad[0]
                data = self.builder_.emit(relax.op.layout_transform(
                    data, to_blocked_map(in_block), pad_value=tvm.tirx.const(0, str(data.ty.dtype))))
                if pad is not None:
                    data = self.builder_.emit(relax.op.nn.pad(data, [0] * 4 + pad[1] + [0, 0], pad_value=pad[2]))
            else:
                data = self._to_blocked(call.args[0], in_block)
            weight = self.builder_.emit(relax.op.layout_transform(
                weight,
                lambda o, i, h, w: (o // out_block, i // in_block, h, w, i % in_block,
                                    o % out_block)))
            conv = relax.op.nn.conv2d(
                data, weight, **conv_args, groups=groups, data_layout=f"NCHW{in_block}c",
                kernel_layout=f"OIHW{in_block}i{out_block}o", out_layout=f"NCHW{out_block}c",
                out_dtype=out_dtype or None)
            if pad_out:
                plain = self.builder_.emit(self._to_plain(conv, out_block))
                return relax.op.strided_slice(plain, axes=[1], begin=[0], end=[out_channels])
            return self._to_plain(conv, out_block)
        if depthwise:
            block = vector_block(in_channels, self.block)
            data = self._to_blocked(call.args[0], block)
            weight = self.builder_.emit(relax.op.layout_transform(
                call.args[1],
                lambda o, i, h, w: (o // block, i, h, w, tvm.tirx.IntImm("int64", 0), o % block)))
            conv = relax.op.nn.conv2d(
                data, weight, **conv_args, groups=groups, data_layout=f"NCHW{block}c",
                kernel_layout=f"OIHW1i{block}o", out_layout=f"NCHW{block}c",
                out_dtype=out_dtype or None)
            return self._to_plain(conv, block)
        return call


def padded_out_channels(out_channels: int, out_block: int, block: int) -> int:
    """Zero output channels to add so a conv gets whole blocks of ``block`` channels, or 0.

    A channel count the block does not divide gets a narrower block (SqueezeNet's last conv,
    1000 channels: 8 of 16 lanes), which runs its FMAs on half vectors: 138 against 211
    GFLOP/s for the same conv at 512 channels (Zen 4, 2 threads). Computing up to 1/8 more
    channels on zero weights and slicing them off costs less."""
    if out_block >= block:
        return 0
    extra = -out_channels % block
    return extra if extra * 8 <= out_channels else 0


def zero_pad_widths(func, in_shape, out_shape) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) when ``func`` is exactly TOPI's zero padding of H and W of an
    NCHW tensor (what the ONNX frontend emits for Pad), else None. Checked by rebuilding that
    padding for the same shapes and comparing the two functions structurally."""
    if len(in_shape) != 4 or len(out_shape) != 4 or in_shape[:2] != out_shape[:2]:
        return None
    if not isinstance(func, tirx.PrimFunc) or len(func.params) != 2:
        return None
    try:
        sch = s_tir.Schedule(func)
        blocks = root_blocks(sch)
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
    expected = expected_sch.get(root_blocks(expected_sch)[0])
    actual = sch.get(blocks[0])
    if str(actual.body.value) != str(expected.body.value):
        return None
    if [extent_of(iv) for iv in actual.iter_vars] != list(out_shape) or any(
            int(iv.iter_type) != DATA_PAR for iv in actual.iter_vars):
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

    def visit_call_(self, call):  # pylint: disable=arguments-renamed
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op):
            return call
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
        in_shape, out_shape = static_shape(fields[0]), static_shape(bound)
        if in_shape is None or out_shape is None:
            return call
        func = self.module[bound.args[0]] if bound.args[0] in self.module.get_global_vars() else None
        widths = zero_pad_widths(func, in_shape, out_shape)
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
        return rewrite_functions(mod, _FoldPadIntoConv(mod))

    return _pass


def block_remaining(block: int):
    """Module pass form of :class:`_BlockRemaining`."""

    @tvm.transform.module_pass(opt_level=0, name="EdgecnnBlockRemaining")
    def _pass(mod, _ctx):
        return rewrite_functions(mod, _BlockRemaining(mod, block))

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
        integer_dot_convs(),
        relax.transform.DeadCodeElimination(),
        relax.transform.LegalizeOps(customize_legalize_map=legalize_map()),
        relax.transform.AnnotateTIROpPattern(),
        _fold_constant_work(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
