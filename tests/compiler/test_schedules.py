"""Default CPU schedules (compiler/tvm/schedules/cpu/) against the NumPy backend, lowered
through the same import and pipeline as ``edgecnn compile``.

Every rule is checked numerically on small shapes: strides, pads (asymmetric too), dilation,
groups and depthwise, 1x1, 5x5 and 7x7 kernels, odd sizes, 3-channel first layers and channel
counts that do not divide the vector block, for the three vector widths (16 lanes AVX-512,
8 AVX2, 4 NEON/SSE). Many layers share one compiled module (one graph input and output per
case) to keep compile time down. Structural checks (which rule scheduled what, weight repacks
folded away) are kept apart from the numerical ones. The aarch64 build is checked for numerics
under qemu when the emulation runtime is installed.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

from edgecnn.compiler import numpy_backend, onnx_io
from edgecnn.compiler.tvm import frontend, pipelines, records
from edgecnn.compiler.tvm.relax_helpers import prim_funcs
from edgecnn.compiler.tvm.schedules import cpu
# the legalization asks use_winograd; tests that force a choice patch it there
from edgecnn.compiler.tvm.schedules.cpu import legalize
from edgecnn.targets import isa

RTOL = 1e-4
ATOL = 1e-4

# Targets runnable on any x86-64 machine with AVX-512, picked for their vector width.
X86_TARGETS = {
    16: {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v4"},
    8: {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3"},
    4: {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"},
}
AARCH64_TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}


def _host_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _require_x86(lanes: int):
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"needs an x86-64 host to run x86 code; this is {platform.machine()}")
    needed = {16: "avx512f", 8: "avx2", 4: "sse2"}[lanes]
    if needed not in _host_flags():
        pytest.skip(f"this CPU lacks {needed}, needed to run {lanes}-lane code")


def _widest_x86_lanes() -> int:
    """The widest vector this x86 host runs (skips elsewhere), so a test runs on any x86 CPU."""
    _require_x86(4)
    flags = _host_flags()
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 4


# -- ONNX graphs built here, independently of the code under test -------------------------------

class _Net:
    """Tiny ONNX builder: several independent branches, one input and one output each."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.count = 0

    def _name(self, base):
        self.count += 1
        return f"{base}{self.count}"

    def input(self, shape):
        name = self._name("x")
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name, shape[1]

    def const(self, array, dtype=np.float32):
        name = self._name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype), name))
        return name

    def node(self, op, inputs, **attrs):
        out = self._name("t")
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(self, x, cin, cout, k, stride=1, pads=None, groups=1, dilation=1, bias=True):
        pads = [k // 2] * 4 if pads is None else list(pads)
        fan_in = cin // groups * k * k
        w = self.const(self.rng.standard_normal((cout, cin // groups, k, k)) / np.sqrt(fan_in))
        inputs = [x, w] + ([self.const(self.rng.standard_normal(cout) * 0.5)] if bias else [])
        return self.node("Conv", inputs, kernel_shape=[k, k], strides=[stride, stride], pads=pads,
                         group=groups, dilations=[dilation, dilation])

    def output(self, name):
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))

    def model(self):
        graph = helper.make_graph(self.nodes, "schedules_test", self.inputs, self.outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model


# (name, cin, cout, kernel, stride, pads or None for "same", groups, dilation, H, W, tail)
# tail: the ops after the conv, fused into its epilogue or scheduled by the generic rule.
CONV_CASES = [
    ("first_3ch", 3, 16, 3, 1, None, 1, 1, 9, 11, "relu"),
    ("first_7x7_s2", 3, 24, 7, 2, None, 1, 1, 15, 13, "relu_maxpool"),
    ("blocked_3x3", 16, 32, 3, 1, None, 1, 1, 7, 9, "relu"),
    ("pointwise", 32, 16, 1, 1, [0, 0, 0, 0], 1, 1, 5, 6, ""),
    ("stride2_odd", 16, 16, 3, 2, None, 1, 1, 9, 9, "clip"),
    ("odd_blocks", 24, 40, 3, 1, None, 1, 1, 6, 5, "relu"),
    ("no_pad", 20, 12, 3, 1, [0, 0, 0, 0], 1, 1, 8, 8, "avgpool"),
    ("prime_channels", 7, 5, 3, 1, None, 1, 1, 6, 6, "relu"),
    ("asym_pad", 8, 16, 3, 1, [0, 1, 1, 0], 1, 1, 6, 7, ""),
    ("dilated", 16, 16, 3, 1, [2, 2, 2, 2], 1, 2, 9, 9, "relu"),
    ("kernel5", 16, 16, 5, 1, None, 1, 1, 6, 6, "relu"),
    ("wide_row", 16, 16, 3, 1, None, 1, 1, 3, 31, "relu"),
    ("depthwise", 32, 32, 3, 1, None, 32, 1, 9, 9, "clip"),
    ("depthwise_s2", 48, 48, 3, 2, None, 48, 1, 11, 11, "relu"),
    ("depthwise_odd", 12, 12, 3, 1, None, 12, 1, 7, 7, "clip"),
    ("grouped", 16, 32, 3, 1, None, 4, 1, 8, 8, "relu"),
    ("winograd", 32, 32, 3, 1, None, 1, 1, 9, 11, "relu"),
    ("winograd_asym_pad", 40, 48, 3, 1, [0, 1, 1, 0], 1, 1, 10, 13, "clip"),
    ("winograd_exact_tiles", 32, 64, 3, 1, None, 1, 1, 8, 8, ""),
]


def _tail(net, y, tail):
    for op in filter(None, tail.split("_")):
        if op == "relu":
            y = net.node("Relu", [y])
        elif op == "clip":
            y = net.node("Clip", [y, net.const(0.0), net.const(6.0)])
        elif op == "maxpool":
            y = net.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
        elif op == "avgpool":
            y = net.node("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2])
    return y


def conv_table_model():
    net = _Net(seed=1)
    for _, cin, cout, k, stride, pads, groups, dilation, h, w, tail in CONV_CASES:
        x, _ = net.input((1, cin, h, w))
        y = net.conv(x, cin, cout, k, stride, pads, groups, dilation)
        net.output(_tail(net, y, tail))
    return net.model()


def chain_model():
    """A small CNN across rule boundaries: explicit zero Pad (as edgecnn's exporter writes it),
    a 3-channel first layer, blocked convs, a residual Add, ReLU6, depthwise, max pooling,
    global average pooling and a dense layer; plus a Pad with a non-zero value, which must not
    be folded into the conv."""
    net = _Net(seed=2)
    x, _ = net.input((1, 3, 19, 17))
    pads = net.const([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
    padded = net.node("Pad", [x, pads], mode="constant")
    y = net.node("Relu", [net.conv(padded, 3, 32, 3, 2, [0, 0, 0, 0])])
    skip = y
    y = net.node("Relu", [net.conv(y, 32, 32, 3)])
    y = net.conv(y, 32, 32, 3)
    y = net.node("Relu", [net.node("Add", [y, skip])])
    y = net.conv(y, 32, 32, 3, groups=32, bias=False)
    y = net.node("Clip", [y, net.const(0.0), net.const(6.0)])
    y = net.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    nonzero = net.node("Pad", [y, pads, net.const(0.5)], mode="constant")
    y = net.node("Relu", [net.conv(nonzero, 32, 48, 3, pads=[0, 0, 0, 0])])
    y = net.node("Flatten", [net.node("GlobalAveragePool", [y])], axis=1)
    w = net.const(net.rng.standard_normal((10, 48)) * 0.2)
    y = net.node("Gemm", [y, w, net.const(np.full(10, 0.1))], transB=1)
    net.output(y)
    return net.model()


def _feeds(model, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def _numpy_reference(model, feeds):
    graph = onnx_io.import_model(model)
    out = numpy_backend.run(graph, feeds)
    return [out[o.name] for o in model.graph.output]


def _lower(model, target):
    """The model through the CPU pipeline, as ``edgecnn compile`` lowers it (import included)."""
    return pipelines.lower(frontend.to_relax(model), target)


def _run(lowered, target, feeds):
    from tvm import relax

    executable = tvm.compile(lowered, target=tvm.target.Target(target))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()])
    if hasattr(out, "numpy"):
        return [out.numpy()]
    return [o.numpy() for o in out]


def _assert_close(got, want, names):
    assert len(got) == len(want)
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape, f"{name}: shape {g.shape} != reference {w.shape}"
        assert g.dtype == np.float32, f"{name}: dtype {g.dtype}"
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.fixture(scope="module")
def conv_table():
    model = conv_table_model()
    feeds = _feeds(model)
    return model, feeds, _numpy_reference(model, feeds)


# Channels per block for each vector width: one vector, except AVX2 (8 lanes), whose tile is
# two vectors of output channels (16 registers, no broadcast operand for FMA).
CHANNEL_BLOCK = {16: 16, 8: 16, 4: 4}


@pytest.fixture(scope="module")
def lowered_by_lanes(conv_table):
    model = conv_table[0]
    cache = {}

    def get(lanes):
        if lanes not in cache:
            cache[lanes] = _lower(model, X86_TARGETS[lanes])
        return cache[lanes]

    return get


# -- numerics ------------------------------------------------------------------------------------

@pytest.mark.parametrize("lanes", [16, 8, 4])
def test_conv_table_matches_numpy(conv_table, lowered_by_lanes, lanes):
    _require_x86(lanes)
    model, feeds, reference = conv_table
    got = _run(lowered_by_lanes(lanes), X86_TARGETS[lanes], feeds)
    _assert_close(got, reference, [c[0] for c in CONV_CASES])


@pytest.mark.parametrize("lanes", [16, 8, 4])
def test_winograd_matches_numpy(conv_table, monkeypatch, lanes):
    """Every 3x3 stride-1 dense conv of the table forced through Winograd F(4x4, 3x3):
    odd sizes, padding, partial tiles, channel counts that do not divide the block."""
    _require_x86(lanes)
    monkeypatch.setattr(legalize, "use_winograd", lambda *shape: True)
    model, feeds, reference = conv_table
    lowered = _lower(model, X86_TARGETS[lanes])
    rules = {n: cpu.rule_of(f) for n, f in prim_funcs(lowered).items() if "winograd" in n}
    eligible = [c for c in CONV_CASES if c[3] == 3 and c[4] == 1 and c[6] == 1 and c[7] == 1]
    assert len(rules) == len(eligible) and set(rules.values()) == {"WinogradConv"}, rules
    shapes = [tuple(int(d) for d in prim_funcs(lowered)[n].params[-1].shape) for n in rules]
    block = CHANNEL_BLOCK[lanes]
    assert (1, 64 // block, 8, 8, block) in shapes, shapes
    _assert_close(_run(lowered, X86_TARGETS[lanes], feeds), reference, [c[0] for c in CONV_CASES])


def test_winograd_is_chosen_for_wide_layers_only():
    assert cpu.use_winograd(64, 128, 56, 56)
    assert cpu.use_winograd(128, 128, 28, 28)
    assert not cpu.use_winograd(3, 32, 224, 224)
    assert not cpu.use_winograd(8, 16, 56, 56)
    assert not cpu.use_winograd(16, 16, 32, 32)
    assert cpu.use_winograd(16, 64, 55, 55)  # 16 channels: only with many tiles
    assert cpu.use_winograd(32, 64, 112, 112)
    assert cpu.use_winograd(32, 32, 32, 32)
    assert not cpu.use_winograd(256, 256, 2, 2)
    # few tiles and transformed weights that do not fit the cache: direct
    assert not cpu.use_winograd(512, 512, 7, 7)
    assert cpu.use_winograd(128, 128, 8, 8)  # few tiles, weights cached
    assert cpu.use_winograd(512, 512, 14, 14)  # enough tiles to reuse streamed weights


@pytest.mark.parametrize("lanes", [16, 8, 4])
def test_chain_matches_numpy(lanes):
    _require_x86(lanes)
    model = chain_model()
    feeds = _feeds(model, seed=3)
    lowered = _lower(model, X86_TARGETS[lanes])
    assert {cpu.rule_of(f) for n, f in prim_funcs(lowered).items() if "conv" in n} <= {
        "BlockedConv", "WinogradConv"}
    _assert_close(_run(lowered, X86_TARGETS[lanes], feeds), _numpy_reference(model, feeds), ["logits"])


# Layers big enough to run on parallel loops (the conv table's are serial): direct convs
# with several output chunks (the parallel loop runs over rows and chunks), stride 2, and a
# depthwise conv, each with its padding.
PARALLEL_CASES = [
    ("dense_3x3", 16, 48, 3, 1, 24, 24, 1),
    ("stride2", 32, 64, 3, 2, 26, 26, 1),
    ("depthwise", 48, 48, 3, 1, 40, 40, 48),
]


def parallel_conv_model():
    net = _Net(seed=4)
    for _, cin, cout, k, stride, h, w, groups in PARALLEL_CASES:
        x, _ = net.input((1, cin, h, w))
        net.output(net.node("Relu", [net.conv(x, cin, cout, k, stride, groups=groups)]))
    return net.model()


def _root_blocks_in_parallel(func) -> dict[str, bool]:
    """Each block at the root of ``func``: whether it sits inside a parallel loop."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    return {str(sch.get(block).name_hint): any(
        sch.get(loop).kind == tvm.tirx.ForKind.PARALLEL for loop in sch.get_loops(block))
        for block in sch.get_child_blocks(sch.get_sblock("root"))}


def test_parallel_convs_match_numpy_and_pad_in_parallel():
    lanes = _widest_x86_lanes()
    model = parallel_conv_model()
    feeds = _feeds(model, seed=5)
    lowered = _lower(model, X86_TARGETS[lanes])
    convs = {n: f for n, f in prim_funcs(lowered).items() if "conv" in n}
    assert len(convs) == len(PARALLEL_CASES), sorted(convs)
    for name, func in convs.items():
        assert cpu.rule_of(func) == "BlockedConv", name
        blocks = _root_blocks_in_parallel(func)
        assert any(parallel for block, parallel in blocks.items()
                   if block.startswith(("conv2d_nchwc", "depthwise_conv2d_nchwc"))), (name, blocks)
        # padding made once before the conv runs on both threads too (a serial pass kept the
        # conv's worker idle); the depthwise conv pads row by row inside its own loop
        assert blocks.get("data_pad", True), (name, blocks)
    names = [case[0] for case in PARALLEL_CASES]
    _assert_close(_run(lowered, X86_TARGETS[lanes], feeds), _numpy_reference(model, feeds), names)


def test_zoo_model_matches_numpy_through_compile_pipeline():
    """The rules as pipelines.cpu_pipeline applies them, on a zoo model with BatchNorm and ReLU6."""
    from edgecnn.compiler import zoo

    lanes = _widest_x86_lanes()
    graph = zoo.build("mobilenet-tiny", seed=0)
    model = onnx_io.export_model(graph, static_batch=1)
    x = np.random.default_rng(4).standard_normal((1, 3, 96, 96)).astype(np.float32)
    want = numpy_backend.run(graph, {"input": x})
    lowered = _lower(model, X86_TARGETS[lanes])
    got = _run(lowered, X86_TARGETS[lanes], {"input": x})
    _assert_close(got, [want[o.name] for o in model.graph.output], ["logits"])


def test_plain_rule_without_blocking_matches_numpy(conv_table):
    """PlainConv (NCHW register tiling) and Generic on NCHW pooling, applied to the zero
    pipeline's functions directly: the fallback path for any conv the layout passes leave."""
    from tvm import relax
    from tvm.s_tir import dlight

    lanes = _widest_x86_lanes()
    model, feeds, reference = conv_table
    target = tvm.target.Target(X86_TARGETS[lanes])
    with target:
        lowered = tvm.transform.Sequential([
            relax.get_pipeline("zero"),
            dlight.ApplyDefaultSchedule(cpu.PlainConv(lanes), cpu.Generic(lanes)),
        ])(frontend.to_relax(model))
    rules = {n: cpu.rule_of(f) for n, f in prim_funcs(lowered).items() if "conv" in n}
    assert rules and all(r == "PlainConv" for r in rules.values()), rules
    _assert_close(_run(lowered, X86_TARGETS[lanes], feeds), reference, [c[0] for c in CONV_CASES])


# -- structure -----------------------------------------------------------------------------------

def test_vector_lanes_follow_the_target():
    assert isa.vector_lanes(X86_TARGETS[16]) == 16
    assert isa.vector_lanes(X86_TARGETS[8]) == 8
    assert isa.vector_lanes(X86_TARGETS[4]) == 4
    assert isa.vector_lanes({"kind": "llvm", "mcpu": "skylake-avx512"}) == 16
    assert isa.vector_lanes({"kind": "llvm", "mcpu": "haswell"}) == 8
    assert isa.vector_lanes(AARCH64_TARGET) == 4


def test_every_function_is_scheduled_and_convs_use_conv_rules(lowered_by_lanes):
    funcs = prim_funcs(lowered_by_lanes(16))
    unscheduled = [n for n, f in funcs.items() if not (f.attrs and "tirx.is_scheduled" in f.attrs)]
    assert not unscheduled, f"left as scalar single-thread loops: {unscheduled}"
    conv_funcs = {n: cpu.rule_of(f) for n, f in funcs.items() if "conv" in n}
    assert len(conv_funcs) == len(CONV_CASES), sorted(conv_funcs)
    wrong = {n: r for n, r in conv_funcs.items() if r not in ("BlockedConv", "WinogradConv")}
    assert not wrong, f"convolutions not in the blocked layout: {wrong}"


@pytest.mark.parametrize("lanes", [16, 8, 4])
def test_blocked_convs_use_the_target_vector_width(lowered_by_lanes, lanes):
    funcs = prim_funcs(lowered_by_lanes(lanes))
    blocked = {n: f for n, f in funcs.items() if "conv2d_nchwc" in n}
    assert blocked
    # the 16->32 3x3 conv: output (1, 32/block, 7, 9, block)
    block = CHANNEL_BLOCK[lanes]
    shapes = [tuple(int(d) for d in f.params[-1].shape) for f in blocked.values()]
    assert (1, 32 // block, 7, 9, block) in shapes, shapes


def test_weight_repacks_are_folded_at_compile_time(lowered_by_lanes):
    lowered = lowered_by_lanes(16)
    layout_funcs = {gv for gv, f in lowered.functions_items()
                    if isinstance(f, tvm.tirx.PrimFunc) and "layout_transform" in gv.name_hint}
    text = lowered["main"].script()
    for gv in layout_funcs:
        for line in text.splitlines():
            if f"call_tir({gv.name_hint}," in line:
                assert "metadata[" not in line.split("out_ty")[0], (
                    f"a weight is repacked at run time: {line.strip()}")


def test_explicit_zero_pad_is_folded_into_the_conv():
    model = chain_model()
    lowered = _lower(model, X86_TARGETS[16])
    text = lowered["main"].script()
    pads = [line for line in text.splitlines() if "call_tir(pad" in line]
    # of the two Pads only the one with value 0.5 remains a separate function
    assert len(pads) == 1, pads


def test_rules_leave_what_they_cannot_schedule():
    """A conv rule given a function without a conv returns None (no schedule, no error)."""
    lowered = _lower(conv_table_model(), X86_TARGETS[16])
    target = tvm.target.Target(X86_TARGETS[16])
    for name, func in prim_funcs(lowered).items():
        if "conv" in name:
            continue
        raw = func.without_attr("tirx.is_scheduled")
        assert cpu.BlockedConv(16).apply(raw, target, False) is None, name
        assert cpu.PlainConv(16).apply(raw, target, False) is None or "pool" in name, name


# -- aarch64 ----------------------------------------------------------------------------------

def test_aarch64_build_cross_compiles(tmp_path):
    import shutil

    from tvm.support import cc

    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ not found: apt-get install g++-aarch64-linux-gnu")
    lowered = _lower(chain_model(), AARCH64_TARGET)
    funcs = prim_funcs(lowered)
    assert any(cpu.rule_of(f) == "BlockedConv" for f in funcs.values())
    blocked = [f for n, f in funcs.items() if "conv2d_nchwc" in n]
    assert all(int(f.params[-1].shape[-1]) <= 4 for f in blocked)
    executable = tvm.compile(lowered, target=tvm.target.Target(AARCH64_TARGET))
    path = tmp_path / "model.so"
    executable.export_library(str(path), fcompile=cc.cross_compiler("aarch64-linux-gnu-g++"))
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64


@pytest.mark.parametrize("winograd", [False, True], ids=["direct", "winograd"])
def test_aarch64_numerics_under_emulation(tmp_path, monkeypatch, winograd):
    """NEON schedules (4 lanes) run under qemu and match the NumPy backend."""
    from edgecnn.runtime import emulate

    monkeypatch.setattr(legalize, "use_winograd", lambda *shape: winograd)
    missing = emulate.missing_requirements()
    if missing:
        pytest.skip("aarch64 emulation unavailable: " + "; ".join(missing))
    from edgecnn.compiler.tvm.bundle import compile_model

    model = chain_model()
    path = tmp_path / "chain.onnx"
    onnx.save(model, str(path))
    bundle_dir = compile_model(str(path), "aarch64", tmp_path / "bundle")
    bundle = emulate.open_emulated(bundle_dir)
    feeds = _feeds(model, seed=5)
    got = bundle.run(feeds)
    want = _numpy_reference(model, feeds)
    _assert_close([np.asarray(got[o.name]) for o in model.graph.output], want, ["logits"])


# -- tuning never makes it slower ---------------------------------------------------------------

def test_keep_faster_prefers_the_faster_schedule_per_function():
    """A 'record' that is the unscheduled loop nest (tens of times slower) is rejected; when the
    default is the slow one, the faster candidate is kept. Numerics hold either way."""
    lanes = _widest_x86_lanes()
    net = _Net(seed=6)
    x, _ = net.input((1, 32, 28, 28))
    net.output(net.node("Relu", [net.conv(x, 32, 64, 3)]))
    model = net.model()
    target = tvm.target.Target(X86_TARGETS[lanes])
    with target:
        staged = pipelines.graph_stage("cpu", target)(frontend.to_relax(model))
    fast = _lower(model, target)
    slow = tvm.IRModule({g: (f.with_attr("tirx.is_scheduled", True) if isinstance(f, tvm.tirx.PrimFunc) else f)
                         for g, f in staged.functions_items()}, attrs=staged.attrs)
    conv = [n for n in records.record_scheduled(slow) if "conv" in n]
    assert len(conv) == 1, records.record_scheduled(slow)
    kept = records.keep_faster(fast, slow, target, conv)
    assert cpu.rule_of(kept[conv[0]]) is not None  # the default rule's schedule stayed
    swapped = records.keep_faster(slow, fast, target, conv)
    assert cpu.rule_of(swapped[conv[0]]) is not None  # the faster candidate replaced the slow one
    feeds = _feeds(model, seed=7)
    reference = _numpy_reference(model, feeds)
    _assert_close(_run(swapped, X86_TARGETS[lanes], feeds), reference, ["conv"])
