"""int8 QDQ models (onnxruntime's quantize_static) compiled through edgecnn's TVM road run in integer
arithmetic and agree with onnxruntime on the same file.

The reference is onnxruntime's CPU session on the QDQ file (it fuses DQ -> Conv -> Q into
QLinearConv, whose requantization the rewrite follows). A quantized output must be within one unit
of its scale (exact in practice); each test also checks the rewrite happened (int32-accumulating
convs and products, no float conv left), so none can pass on the fp32 fallback.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from edgecnn.compiler.tvm import frontend, pipelines
from edgecnn.compiler.tvm.bundle import compile_bundle
from edgecnn.compiler.tvm.relax_helpers import op_name
from edgecnn.runtime.bundle import Bundle
from edgecnn.targets import get_preset, host_cpu_features
from edgecnn.compiler.tvm.schedules.cpu import rule_of


class _Reader(CalibrationDataReader):
    def __init__(self, shape, seed, scale=1.0, count=6):
        rng = np.random.default_rng(seed)
        self._data = iter([{"x": (rng.standard_normal(shape) * scale).astype(np.float32)} for _ in range(count)])

    def get_next(self):
        return next(self._data, None)


def _conv_net(seed, in_shape, convs, head=10, relu=True, pool=False):
    """A float ONNX model: convs (cout, kernel, stride, pad, groups, dilation) [+ relu], optional
    max pool, then Flatten -> Gemm (transB) when ``head``."""
    rng = np.random.default_rng(seed)
    nodes, inits, current, channels = [], [], "x", in_shape[1]
    height, width = in_shape[2], in_shape[3]
    for i, (cout, k, stride, pad, groups, dilation) in enumerate(convs):
        w = (rng.standard_normal((cout, channels // groups, k, k)) / np.sqrt(channels // groups * k * k))
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"b{i}")]
        nodes.append(helper.make_node("Conv", [current, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[pad] * 4, group=groups,
                                      dilations=[dilation, dilation]))
        current = f"c{i}"
        if relu:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
        channels = cout
        height = (height + 2 * pad - dilation * (k - 1) - 1) // stride + 1
        width = (width + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    if pool:
        nodes.append(helper.make_node("MaxPool", [current], ["p"], kernel_shape=[2, 2], strides=[2, 2]))
        current, height, width = "p", height // 2, width // 2
    out_shape = [in_shape[0], channels, height, width]
    if head:
        nodes.append(helper.make_node("Flatten", [current], ["f"]))
        features = channels * height * width
        inits += [numpy_helper.from_array((rng.standard_normal((head, features)) / np.sqrt(features))
                                          .astype(np.float32), "wd"),
                  numpy_helper.from_array((rng.standard_normal(head) * 0.1).astype(np.float32), "bd")]
        nodes.append(helper.make_node("Gemm", ["f", "wd", "bd"], ["y"], transB=1))
        out_shape = [in_shape[0], head]
    else:
        nodes.append(helper.make_node("Identity", [current], ["y"]))
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _quantize(tmp_path, model, in_shape, *, per_channel=True, activations=QuantType.QInt8, seed=0,
              calibration_scale=1.0):
    src, dst = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    onnx.save(model, src)
    quantize_static(str(src), str(dst), _Reader(in_shape, seed, calibration_scale), quant_format=QuantFormat.QDQ,
                    activation_type=activations, weight_type=QuantType.QInt8, per_channel=per_channel)
    return dst


def _float_output(path):
    """The QDQ file with its final QuantizeLinear -> DequantizeLinear pair removed: float logits."""
    model = onnx.load(path)
    nodes = list(model.graph.node)
    dq = next(n for n in nodes if n.output[0] == "y")
    q = next(n for n in nodes if n.output[0] == dq.input[0])
    producer = next(n for n in nodes if q.input[0] in n.output)
    producer.output[list(producer.output).index(q.input[0])] = "y"
    for node in (q, dq):
        model.graph.node.remove(node)
    out = path.with_name("float_out.onnx")
    onnx.save(model, out)
    return out


def _output_scale(path):
    model = onnx.load(path)
    dq = next((n for n in model.graph.node if n.output[0] == "y" and n.op_type == "DequantizeLinear"), None)
    if dq is None:
        return None
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return float(inits[dq.input[1]].reshape(-1)[0])


def _integer_layers(relax_mod):
    """(integer convs/products, float convs/products) in the imported module's main."""
    integer = floating = 0
    for binding in (b for block in relax_mod["main"].body.blocks for b in block.bindings):
        if op_name(binding.value) in ("relax.nn.conv2d", "relax.matmul"):
            if str(binding.value.ty.dtype) == "int32":
                integer += 1
            else:
                floating += 1
    return integer, floating


def _compile_and_compare(path, in_shape, *, layers, seed=1, input_scale=1.0, preset="host"):
    proto = frontend.resolve_model(str(path)).onnx_model
    relax_mod = frontend.to_relax(proto)
    assert _integer_layers(relax_mod) == (layers, 0), relax_mod["main"]
    executable, _ = pipelines.build(relax_mod, get_preset(preset))
    import tvm
    from tvm import relax
    vm = relax.VirtualMachine(executable, tvm.cpu())
    rng = np.random.default_rng(seed)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    scale = _output_scale(path)
    for _ in range(3):
        x = (rng.standard_normal(in_shape) * input_scale).astype(np.float32)
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        want = session.run(None, {"x": x})[0]
        assert got.shape == want.shape
        if scale is None:  # float logits from the int32 accumulator
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
        else:
            units = np.abs(got.astype(np.float64) - want) / scale
            assert units.max() <= 1.0 + 1e-3, f"{units.max()} units of the output scale"
            assert np.mean(units > 0.5) <= 0.01  # off-by-one ties only, if any
    return relax_mod


# (cout, kernel, stride, pad, groups, dilation)
CONV_CASES = {
    "stride1-pad1": ((1, 3, 10, 10), [(8, 3, 1, 1, 1, 1), (16, 3, 1, 1, 1, 1)]),
    "stride2-odd-channels": ((1, 5, 11, 11), [(7, 3, 2, 1, 1, 1), (3, 3, 2, 0, 1, 1)]),
    "groups-depthwise": ((1, 8, 9, 9), [(8, 3, 1, 1, 8, 1), (12, 1, 1, 0, 4, 1), (12, 3, 2, 1, 12, 1)]),
    "dilation-pad2": ((1, 3, 12, 12), [(5, 3, 1, 2, 1, 2), (7, 5, 1, 2, 1, 1)]),
}


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_nets_match_onnxruntime(tmp_path, case, per_channel):
    in_shape, convs = CONV_CASES[case]
    model = _conv_net(3, in_shape, convs, head=10, relu=True)
    path = _quantize(tmp_path, model, in_shape, per_channel=per_channel)
    _compile_and_compare(path, in_shape, layers=len(convs) + 1)


def test_convs_without_relu_and_int8_output(tmp_path):
    """No Relu: signed outputs with a zero point away from -128; the model ends on a conv."""
    in_shape = (1, 3, 9, 9)
    model = _conv_net(4, in_shape, [(6, 3, 1, 1, 1, 1), (5, 3, 2, 1, 1, 1)], head=0, relu=False)
    path = _quantize(tmp_path, model, in_shape)
    _compile_and_compare(path, in_shape, layers=2)


def test_uint8_activations(tmp_path):
    in_shape = (1, 3, 10, 10)
    model = _conv_net(5, in_shape, [(8, 3, 1, 1, 1, 1), (6, 3, 2, 1, 2, 1)], head=4, relu=True, pool=True)
    path = _quantize(tmp_path, model, in_shape, activations=QuantType.QUInt8)
    _compile_and_compare(path, in_shape, layers=3)


def test_max_pool_and_flatten_stay_int8(tmp_path):
    """quantize(max_pool(dequantize(q))) with one set of parameters runs on q itself."""
    in_shape = (1, 3, 12, 12)
    model = _conv_net(6, in_shape, [(8, 3, 1, 1, 1, 1)], head=10, relu=True, pool=True)
    path = _quantize(tmp_path, model, in_shape)
    relax_mod = _compile_and_compare(path, in_shape, layers=2)
    ops = {op_name(b.value): str(b.value.ty.dtype) for block in relax_mod["main"].body.blocks
           for b in block.bindings if op_name(b.value) in ("relax.nn.max_pool2d", "relax.reshape")}
    assert ops == {"relax.nn.max_pool2d": "int8", "relax.reshape": "int8"}


def test_float_logits_from_the_accumulator(tmp_path):
    """A Gemm head with no QuantizeLinear after it: float32(acc) * sx * sw."""
    in_shape = (1, 3, 8, 8)
    model = _conv_net(7, in_shape, [(8, 3, 2, 1, 1, 1)], head=10, relu=True)
    path = _float_output(_quantize(tmp_path, model, in_shape))
    _compile_and_compare(path, in_shape, layers=2)


def test_matmul_head_untransposed(tmp_path):
    """MatMul with a [K, N] weight (per-channel axis 1), as PyTorch exports nn.Linear sometimes."""
    rng = np.random.default_rng(8)
    in_shape = (1, 24)
    w = rng.standard_normal((24, 7)).astype(np.float32) / 5
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 7])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(rng.standard_normal(7).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = _quantize(tmp_path, model, in_shape)
    _compile_and_compare(path, in_shape, layers=1)


def test_saturating_full_range(tmp_path):
    """Full-range int8 weights (-128 .. 127) and activations that saturate: calibrated on small inputs,
    run on inputs 20x larger, so the input quantize and every output clip at both ends."""
    rng = np.random.default_rng(9)
    in_shape = (1, 16, 6, 6)
    wq = rng.integers(-128, 128, size=(16, 16, 3, 3), dtype=np.int8)
    wq[0, 0, 0, 0], wq[1, 0, 0, 0] = -128, 127
    x_scale, y_scale = np.float32(0.05), np.float32(0.5)
    w_scale = np.full(16, 0.01, np.float32)
    inits = [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(w_scale, "ws"),
             numpy_helper.from_array(np.zeros(16, np.int8), "wz"),
             numpy_helper.from_array(np.array(x_scale), "xs"), numpy_helper.from_array(np.array(3, np.int8), "xz"),
             numpy_helper.from_array(np.array(y_scale), "ys"), numpy_helper.from_array(np.array(-5, np.int8), "yz"),
             numpy_helper.from_array(rng.integers(-5000, 5000, 16).astype(np.int32), "bq"),
             numpy_helper.from_array(x_scale * w_scale, "bs"), numpy_helper.from_array(np.zeros(16, np.int32), "bz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "bd"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "ys", "yz"], ["y"])]
    graph = helper.make_graph(nodes, "sat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "sat.onnx"
    onnx.save(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = (rng.standard_normal(in_shape) * 20).astype(np.float32)
    y = session.run(None, {"x": x})[0]
    assert (y == (127 + 5) * y_scale).any() and (y == (-128 + 5) * y_scale).any()  # both ends clip
    _compile_and_compare(path, in_shape, layers=1, input_scale=20.0)


def test_quantized_model_through_compile_bundle(tmp_path):
    """The whole `edgecnn compile` road: a bundle whose outputs agree with onnxruntime."""
    in_shape = (1, 3, 8, 8)
    model = _conv_net(10, in_shape, [(8, 3, 1, 1, 1, 1)], head=5, relu=True)
    path = _quantize(tmp_path, model, in_shape)
    result = compile_bundle(str(path), "host", tmp_path / "bundle")
    bundle = Bundle.open(result.path if hasattr(result, "path") else tmp_path / "bundle")
    x = np.random.default_rng(2).standard_normal(in_shape).astype(np.float32)
    got = bundle.run({"x": x})
    got = got["y"] if isinstance(got, dict) else got[0]
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(got - want).max() <= _output_scale(path) * 1.001


@pytest.mark.parametrize("stride", [1, 2])
def test_auto_pad_same_upper(tmp_path, stride):
    """Conv's auto_pad (edgecnn's exporter writes SAME_UPPER) reaches Relax as a separate TIR zero
    pad; the rewrite looks through it (stride 2 on an even size pads only bottom and right)."""
    rng = np.random.default_rng(11)
    in_shape = (1, 4, 10, 10)
    w = (rng.standard_normal((6, 4, 3, 3)) / 6).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], strides=[stride, stride],
                              auto_pad="SAME_UPPER"),
             helper.make_node("Relu", ["c"], ["y"])]
    out = 10 // stride
    graph = helper.make_graph(nodes, "same", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, out, out])],
                              [numpy_helper.from_array(w, "w"),
                               numpy_helper.from_array((rng.standard_normal(6) * 0.1).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = _quantize(tmp_path, model, in_shape)
    _compile_and_compare(path, in_shape, layers=1)


def test_blocked_integer_conv_is_the_scheduled_direct_conv(tmp_path):
    """A conv ConvertLayout blocks (16 -> 16 channels) goes to the blocked direct compute, widened
    to int32, and is scheduled (vectorized; parallel when big enough) like the fp32 one."""
    from edgecnn.compiler.tvm.relax_helpers import prim_funcs
    in_shape = (1, 16, 8, 8)
    model = _conv_net(12, in_shape, [(16, 3, 1, 1, 1, 1), (16, 3, 1, 1, 1, 1)], head=0, relu=True)
    path = _quantize(tmp_path, model, in_shape)
    relax_mod = _compile_and_compare(path, in_shape, layers=2)
    _, lowered = pipelines.build(relax_mod, get_preset("host"))
    convs = {n: f.script() for n, f in prim_funcs(lowered).items() if "conv2d_nchwc" in n}
    assert convs and all("int32" in s and "T.vectorized" in s for s in convs.values())


# --- VNNI (vpdpbusd) kernels ---------------------------------------------------------------------

VNNI_TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "icelake-server"}
HOST_HAS_VNNI = "avx512vnni" in host_cpu_features()
needs_vnni_host = pytest.mark.skipif(not HOST_HAS_VNNI, reason="this CPU has no avx512_vnni: VNNI code cannot run here")

# (cout, kernel, stride, pad, groups, dilation); 16 and 8 output channels per block (zmm / ymm)
VNNI_CASES = {
    "first-layer-3ch-stride1": ((1, 3, 13, 13), [(16, 3, 1, 1, 1, 1), (32, 3, 1, 1, 1, 1)]),
    "stride2-odd-width": ((1, 16, 15, 11), [(32, 3, 2, 1, 1, 1), (16, 1, 1, 0, 1, 1)]),
    "ymm-8-channels-dilation": ((1, 8, 12, 12), [(8, 3, 1, 2, 1, 2), (24, 5, 1, 2, 1, 1)]),
    "no-pad-wide": ((1, 32, 6, 42), [(48, 3, 1, 0, 1, 1)]),  # 40 columns: tiles of 10
}


def _conv_rules(lowered):
    from edgecnn.compiler.tvm.schedules.cpu import rule_of

    return {g.name_hint: rule_of(f) for g, f in lowered.functions_items()
            if isinstance(f, __import__("tvm").tirx.PrimFunc) and "conv2d" in g.name_hint}


@needs_vnni_host
@pytest.mark.parametrize("activations", [QuantType.QInt8, QuantType.QUInt8], ids=["s8", "u8"])
@pytest.mark.parametrize("case", sorted(VNNI_CASES))
def test_vnni_convs_match_onnxruntime(tmp_path, case, activations):
    """Convs with whole blocks of 16 or 8 output channels run as vpdpbusd (the int8 data shifted
    to uint8 and compensated, or uint8 as is) and agree with onnxruntime."""
    in_shape, convs = VNNI_CASES[case]
    model = _conv_net(21, in_shape, convs, head=10, relu=True)
    path = _quantize(tmp_path, model, in_shape, activations=activations)
    relax_mod = _compile_and_compare(path, in_shape, layers=len(convs) + 1)
    _, lowered = pipelines.build(relax_mod, get_preset("host"))
    rules = _conv_rules(lowered)
    assert list(rules.values()).count("IntegerDotConv") == len(convs), rules


@needs_vnni_host
def test_vnni_full_range_is_exact(tmp_path):
    """Activations and weights over the whole int8 range (inputs 20x the calibration's): the
    u8 x s8 products and the 128 * sum(w) compensation stay exact in int32, both ends clip."""
    in_shape = (1, 16, 9, 9)
    model = _conv_net(5, in_shape, [(32, 3, 1, 1, 1, 1)], head=0, relu=False)
    path = _quantize(tmp_path, model, in_shape)
    relax_mod = _compile_and_compare(path, in_shape, layers=1, input_scale=20.0)
    _, lowered = pipelines.build(relax_mod, get_preset("host"))
    assert "IntegerDotConv" in _conv_rules(lowered).values()


def test_vnni_target_assembly_has_vpdpbusd_and_others_vpmaddwd(tmp_path):
    """Compiled (not run) for a VNNI CPU the int8 convs are vpdpbusd; for AVX-512 without VNNI
    and for AVX2 the same file compiles to vpmaddwd on int16 (exact) instead."""
    from edgecnn.compiler.tvm.library import cpu_assembly

    in_shape = (1, 3, 16, 16)
    model = _conv_net(8, in_shape, [(16, 3, 1, 1, 1, 1), (32, 3, 2, 1, 1, 1)], head=10, relu=True)
    path = _quantize(tmp_path, model, in_shape)
    relax_mod = frontend.to_relax(frontend.resolve_model(str(path)).onnx_model)
    counts = {}
    for mcpu in ("icelake-server", "skylake-avx512", "haswell"):
        target = dict(VNNI_TARGET, mcpu=mcpu)
        lowered = pipelines.lower(relax_mod, target)
        assembly = cpu_assembly(pipelines.compile_lowered(lowered, target, mcpu))
        counts[mcpu] = (assembly.count("vpdpbusd"), assembly.count("vpmaddwd"))
        assert list(_conv_rules(lowered).values()).count("IntegerDotConv") == 2, mcpu
    assert counts["icelake-server"][0] >= 2, counts
    assert counts["skylake-avx512"][0] == counts["haswell"][0] == 0, counts
    assert counts["skylake-avx512"][1] >= 2 and counts["haswell"][1] >= 2, counts


@pytest.mark.parametrize("preset", ["x86-64-avx512", "x86-64-avx2"])
@pytest.mark.parametrize("activations", [QuantType.QInt8, QuantType.QUInt8], ids=["s8", "u8"])
def test_vpmaddwd_convs_match_onnxruntime(tmp_path, preset, activations):
    """Without VNNI the int8 convs widen to int16 and run on vpmaddwd (16 lanes on AVX-512, two
    8-lane vectors per 16-channel block on AVX2), exact against onnxruntime, full range included."""
    from edgecnn.targets.isa import runs_here

    if not runs_here(get_preset(preset).target()):
        pytest.skip(f"this CPU cannot run {preset} code")
    in_shape = (1, 3, 16, 16)  # rows of 16 and 8: register tiles of 8 (AVX-512) and 4 (AVX2)
    model = _conv_net(17, in_shape, [(16, 3, 1, 1, 1, 1), (32, 3, 2, 1, 1, 1), (16, 1, 1, 0, 1, 1)],
                      head=10, relu=True)
    path = _quantize(tmp_path, model, in_shape, activations=activations)
    relax_mod = _compile_and_compare(path, in_shape, layers=4, preset=preset, input_scale=4.0)
    _, lowered = pipelines.build(relax_mod, get_preset(preset))
    assert list(_conv_rules(lowered).values()).count("IntegerDotConv") == 3


@pytest.mark.parametrize("preset, instruction, absent", [("rpi5", "sdot", "sadalp"), ("rpi4", "sadalp", "sdot")])
@pytest.mark.parametrize("activations", [QuantType.QInt8, QuantType.QUInt8], ids=["s8", "u8"])
def test_arm_int8_bundles_use_dot_products_and_are_exact_under_emulation(tmp_path, activations, preset,
                                                                         instruction, absent):
    """rpi5 (+dotprod) runs int8 convs and dense layers on sdot, rpi4 (NEON only) on smull + sadalp
    (int8 x int8 as the file stores them; a uint8 file is shifted): the assembly shows which, and
    the bundle under qemu agrees with onnxruntime."""
    from edgecnn.compiler.tvm.bundle import compile_model
    from edgecnn.compiler.tvm.library import cpu_assembly
    from edgecnn.runtime import emulate

    in_shape = (1, 3, 12, 12)
    model = _conv_net(13, in_shape, [(16, 3, 1, 1, 1, 1), (8, 3, 2, 1, 1, 1)], head=12, relu=True)
    path = _quantize(tmp_path, model, in_shape, activations=activations)
    relax_mod = frontend.to_relax(frontend.resolve_model(str(path)).onnx_model)
    target = get_preset(preset).target()
    lowered = pipelines.lower(relax_mod, target)
    assembly = cpu_assembly(pipelines.compile_lowered(lowered, target, preset))
    assert assembly.count(instruction) >= 2 and assembly.count(absent) == 0
    assert list(_conv_rules(lowered).values()).count("IntegerDotConv") == 2
    missing = emulate.missing_requirements()
    if missing:
        pytest.skip("aarch64 emulation unavailable: " + "; ".join(missing))
    bundle = emulate.open_emulated(compile_model(str(path), preset, tmp_path / "bundle"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed in (0, 1):
        x = (np.random.default_rng(seed).standard_normal(in_shape) * 3).astype(np.float32)
        got = np.asarray(bundle.run({"x": x})["y"])
        want = session.run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_grouped_and_depthwise_int8_convs_are_scheduled(tmp_path):
    """Depthwise and grouped int8 convs take the blocked direct and depthwise computes widened to
    int32 (scheduled like the fp32 ones, not left as unscheduled loops) and agree with onnxruntime."""
    in_shape = (1, 16, 10, 10)
    model = _conv_net(19, in_shape, [(16, 3, 1, 1, 16, 1), (32, 3, 1, 1, 2, 1), (32, 3, 2, 1, 32, 1)],
                      head=10, relu=True)
    path = _quantize(tmp_path, model, in_shape)
    relax_mod = _compile_and_compare(path, in_shape, layers=4)
    _, lowered = pipelines.build(relax_mod, get_preset("host"))
    rules = _conv_rules(lowered)
    assert len(rules) == 3 and set(rules.values()) == {"BlockedConv"}, rules


@pytest.mark.parametrize("activations", [QuantType.QInt8, QuantType.QUInt8], ids=["s8", "u8"])
def test_int8_dense_layers_on_dot_products(tmp_path, activations):
    """Batch-1 int8 dense layers whose outputs fill whole vectors (48 -> 32 requantized to int8 with a
    Relu, then 32 -> 16 float logits) run as a dot-product GEMV on VNNI or vpmaddwd (the row
    padded to whole products: 3 * 5 * 5 = 75 inputs), exact against onnxruntime."""
    from edgecnn.targets.isa import runs_here

    rng = np.random.default_rng(23)
    in_shape = (1, 3, 5, 5)
    inits = [numpy_helper.from_array((rng.standard_normal((32, 75)) / 8).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal(32) * 0.1).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((16, 32)) / 6).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float32), "b2")]
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = _quantize(tmp_path, model, in_shape, activations=activations)
    for preset in ("host", "x86-64-avx2"):
        if not runs_here(get_preset(preset).target()):
            continue
        relax_mod = _compile_and_compare(path, in_shape, layers=2, preset=preset, input_scale=3.0)
        _, lowered = pipelines.build(relax_mod, get_preset(preset))
        rules = [rule_of(f) for g, f in lowered.functions_items()
                 if isinstance(f, __import__("tvm").tirx.PrimFunc) and "gemv_int8" in g.name_hint]
        assert rules == ["IntegerDotGemv", "IntegerDotGemv"], (preset, rules)
