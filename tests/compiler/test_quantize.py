"""int8 quantization: the quantized ops against onnx's ReferenceEvaluator and onnxruntime, the
integer reference against onnxruntime on onnxruntime-quantized files, and ``edgecnn quantize``
end to end (QDQ export, accuracy, bad calibration input)."""
import json
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgecnn.compiler import numpy_backend, onnx_io, zoo
from edgecnn.compiler.ops import REGISTRY, RunContext
from edgecnn.compiler.quant.calibrate import entropy_threshold
from edgecnn.compiler.quant.integer import integer_graph, output_tolerance
from edgecnn.compiler.quant.qdq import fold_batchnorm, quantize_graph

@pytest.fixture
def cli():
    """The real command line in a child process: exit code, stdout, stderr."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "edgecnn.compiler", *args], capture_output=True, text=True,
                              timeout=600)
    return run


TYPES = {np.int8: TensorProto.INT8, np.uint8: TensorProto.UINT8, np.int32: TensorProto.INT32,
         np.float32: TensorProto.FLOAT}


def _one_node(op_type, inputs: dict, out_type, attrs=None, opset=21):
    """A one-node model whose inputs are all graph inputs (so nothing is folded away)."""
    node = helper.make_node(op_type, list(inputs), ["y"], **(attrs or {}))
    ins = [helper.make_tensor_value_info(k, TYPES[v.dtype.type], list(v.shape)) for k, v in inputs.items()]
    out = helper.make_tensor_value_info("y", TYPES[out_type], None)
    model = helper.make_model(helper.make_graph([node], "g", ins, [out]),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _both_references(model, feeds):
    ref = ReferenceEvaluator(model).run(None, feeds)[0]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    return ref, got


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("per_axis", [False, True])
def test_quantize_and_dequantize_linear_match_both_references(dtype, per_axis, rng):
    x = (rng.standard_normal((2, 3, 4, 5)) * 4).astype(np.float32)
    # exact ties (k + 0.5 steps) and values far outside the range: rounding and saturation
    x[0, 0, 0, :] = np.array([0.5, 1.5, -0.5, -2.5, 1000.0], np.float32) * 0.25
    scale = np.array([0.25, 0.05, 0.1], np.float32) if per_axis else np.array(0.25, np.float32)
    zero = (np.array([3, -7, 0], dtype) if dtype == np.int8 else np.array([128, 3, 250], dtype)) if per_axis \
        else np.array(5, dtype)
    feeds = {"x": x, "s": scale, "z": zero}
    ours, _ = REGISTRY["QuantizeLinear"]({"axis": 1}, name="q").forward([x, scale, zero], RunContext())
    for ref in _both_references(_one_node("QuantizeLinear", feeds, dtype, {"axis": 1}), feeds):
        assert ref.dtype == ours[0].dtype
        np.testing.assert_array_equal(ours[0], ref)
    q = ours[0]
    feeds = {"x": q, "s": scale, "z": zero}
    back, _ = REGISTRY["DequantizeLinear"]({"axis": 1}, name="dq").forward([q, scale, zero], RunContext())
    for ref in _both_references(_one_node("DequantizeLinear", feeds, np.float32, {"axis": 1}), feeds):
        np.testing.assert_array_equal(back[0], ref)


def _qlinearconv_case(rng, channels, out_channels, group, attrs, x_type=np.int8, full_range=False):
    lo, hi = (-128, 127) if x_type == np.int8 else (0, 255)
    size = (1, channels, 7, 6)
    x = rng.integers(lo, hi + 1, size).astype(x_type)
    w = rng.integers(-128 if full_range else -127, 128, (out_channels, channels // group, 3, 3)).astype(np.int8)
    if full_range:
        x[:] = hi
        w[:] = -128
    feeds = {
        "x": x, "xs": np.array(0.02, np.float32), "xz": np.array(lo + 17, x_type),
        "w": w, "ws": rng.uniform(0.001, 0.01, out_channels).astype(np.float32),
        "wz": np.zeros(out_channels, np.int8),
        "ys": np.array(0.05, np.float32), "yz": np.array(-3 if x_type == np.int8 else 120, x_type),
        "b": rng.integers(-5000, 5000, out_channels).astype(np.int32),
    }
    return feeds, {**attrs, "group": group}


@pytest.mark.parametrize("channels,out_channels,group,attrs", [
    (3, 5, 1, {"pads": [1, 1, 1, 1]}),
    (4, 6, 2, {"strides": [2, 2], "pads": [0, 1, 1, 0]}),
    (5, 5, 5, {"pads": [1, 1, 1, 1]}),  # depthwise
    (7, 3, 1, {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    (2, 4, 1, {"auto_pad": "SAME_UPPER", "strides": [2, 1]}),
])
@pytest.mark.parametrize("x_type", [np.int8, np.uint8])
def test_qlinearconv_matches_both_references(channels, out_channels, group, attrs, x_type, rng):
    feeds, attrs = _qlinearconv_case(rng, channels, out_channels, group, attrs, x_type)
    op = REGISTRY["QLinearConv"](attrs, name="conv")
    ours, _ = op.forward(list(feeds.values()), RunContext())
    for ref in _both_references(_one_node("QLinearConv", feeds, x_type, attrs), feeds):
        assert ref.dtype == ours[0].dtype
        np.testing.assert_array_equal(ours[0], ref)


def test_qlinearconv_saturates_on_full_range_data(rng):
    feeds, attrs = _qlinearconv_case(rng, 16, 4, 1, {"pads": [1, 1, 1, 1]}, np.uint8, full_range=True)
    feeds["xz"] = np.array(0, np.uint8)
    ours, _ = REGISTRY["QLinearConv"](attrs, name="conv").forward(list(feeds.values()), RunContext())
    assert (ours[0] == 0).any()  # 255 x -128 x 144 taps, far below the output range: clipped to 0
    _, got = _both_references(_one_node("QLinearConv", feeds, np.uint8, attrs), feeds)
    np.testing.assert_array_equal(ours[0], got)


@pytest.mark.parametrize("trans_b,quantized_out", [(0, True), (1, True), (1, False)])
def test_qgemm_matches_onnxruntime(trans_b, quantized_out, rng):
    a = rng.integers(-128, 128, (3, 20)).astype(np.int8)
    b = rng.integers(-127, 128, (6, 20) if trans_b else (20, 6)).astype(np.int8)
    feeds = {"a": a, "as": np.array(0.03, np.float32), "az": np.array(4, np.int8), "b": b,
             "bs": rng.uniform(0.001, 0.01, 6).astype(np.float32), "bz": np.zeros(6, np.int8),
             "c": rng.integers(-900, 900, 6).astype(np.int32)}
    if quantized_out:
        feeds.update({"ys": np.array(0.04, np.float32), "yz": np.array(-10, np.int8)})
    node = helper.make_node("QGemm", list(feeds), ["y"], domain="com.microsoft", transB=trans_b)
    ins = [helper.make_tensor_value_info(k, TYPES[v.dtype.type], list(v.shape)) for k, v in feeds.items()]
    out = helper.make_tensor_value_info("y", TensorProto.INT8 if quantized_out else TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph([node], "g", ins, [out]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    ours, _ = REGISTRY["QGemm"]({"transB": trans_b}, name="fc").forward(list(feeds.values()), RunContext())
    if quantized_out:
        np.testing.assert_array_equal(ours[0], got)
    else:
        np.testing.assert_allclose(ours[0], got, rtol=1e-6, atol=1e-6)


class _Reader:
    def __init__(self, name, batches):
        self.it = iter([{name: b} for b in batches])

    def get_next(self):
        return next(self.it, None)


def _ort_quantized(graph, tmp_path, rng, per_channel=True, activation=None):
    """``graph`` exported and quantized by onnxruntime's quantize_static (QDQ, S8S8)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    fp32 = tmp_path / "fp32.onnx"
    onnx_io.save_onnx(graph, fp32)
    shape = (4,) + tuple(graph.inputs[0].shape[1:])
    batches = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    out = tmp_path / "int8.onnx"
    quantize_static(str(fp32), str(out), _Reader(graph.inputs[0].name, batches), quant_format=QuantFormat.QDQ,
                    activation_type=activation or QuantType.QInt8, weight_type=QuantType.QInt8,
                    per_channel=per_channel)
    return out


@pytest.mark.parametrize("name", ["digits-cnn", "resnet8", "mobilenet-tiny"])
def test_integer_reference_equals_onnxruntime_on_its_own_quantized_files(name, tmp_path, rng):
    path = _ort_quantized(zoo.build(name), tmp_path, rng)
    graph = onnx_io.import_model(path)
    integer, report = integer_graph(graph)
    assert report["integer"], report  # the rewrite happened: convs run as integer ops
    assert "QLinearConv" in {n.op_type for n in integer.nodes}
    x = rng.standard_normal((3,) + tuple(graph.inputs[0].shape[1:])).astype(np.float32)
    ours = numpy_backend.run(integer, {graph.inputs[0].name: x})[graph.outputs[0]]
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {graph.inputs[0].name: x})[0]
    # bit-exact except where onnxruntime's own float ops (Add, GlobalAveragePool of dequantized
    # values) round a tie differently: then within the tolerance a compiled bundle is held to
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=output_tolerance(graph) + 1e-6)
    if name == "digits-cnn":
        np.testing.assert_array_equal(ours, theirs)


def test_simulated_and_integer_references_differ_only_by_rounding(tmp_path, rng):
    """The QDQ graph as it stands (float convs of dequantized values) is a different, simulated
    computation; the rewrite changes it by at most a few output units, never more."""
    path = _ort_quantized(zoo.build("digits-cnn"), tmp_path, rng)
    graph = onnx_io.import_model(path)
    x = rng.standard_normal((8,) + tuple(graph.inputs[0].shape[1:])).astype(np.float32)
    simulated = numpy_backend.run(graph, {graph.inputs[0].name: x})[graph.outputs[0]]
    exact = numpy_backend.run(integer_graph(graph)[0], {graph.inputs[0].name: x})[graph.outputs[0]]
    np.testing.assert_allclose(simulated, exact, rtol=0, atol=8 * output_tolerance(graph))


def test_batchnorm_folding_keeps_the_function(rng):
    graph = zoo.build("resnet8")
    for k, v in graph.params.items():  # non-trivial statistics, so folding has something to do
        if "running_var" in k or k.endswith(".var"):
            graph.params[k] = rng.uniform(0.5, 2.0, v.shape).astype(np.float32)
        elif "running_mean" in k or k.endswith(".mean"):
            graph.params[k] = rng.standard_normal(v.shape).astype(np.float32)
    folded, names = fold_batchnorm(graph)
    assert names and "BatchNormalization" not in {n.op_type for n in folded.nodes}
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(numpy_backend.run(folded, {"input": x})["logits"],
                               numpy_backend.run(graph, {"input": x})["logits"], rtol=1e-4, atol=1e-4)


def test_entropy_threshold_clips_a_long_tail_and_keeps_a_dense_range():
    dense = np.ones(2048)
    assert entropy_threshold(dense) > 0.9
    tail = np.zeros(2048)
    tail[:200] = 1000.0
    tail[2047] = 1.0  # one outlier at the far end
    assert entropy_threshold(tail) < 0.2


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_quantize_graph_exports_qdq_that_onnxruntime_runs_like_the_integer_reference(method, tmp_path, rng):
    graph = zoo.build("resnet8")
    batches = [rng.standard_normal((8, 3, 32, 32)).astype(np.float32) for _ in range(2)]
    qgraph, report = quantize_graph(graph, batches, method=method)
    assert report["batchnorm_folded"] and len(report["quantized"]) == sum(
        n.op_type in ("Conv", "Gemm") for n in graph.nodes)
    path = onnx_io.save_onnx(qgraph, tmp_path / "q.onnx")  # checker (full) and shape inference inside
    model = onnx.load(path)
    weights = [t for t in model.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 4]
    assert weights and all(np.abs(numpy_helper.to_array(t)).max() <= 127 for t in weights)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    ours = numpy_backend.run(integer_graph(onnx_io.import_model(path))[0], {"input": x})["logits"]
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=output_tolerance(qgraph) + 1e-6)
    assert (ours.argmax(1) == theirs.argmax(1)).all()
    # and the int8 model still computes the float model's function, roughly
    fp32 = numpy_backend.run(graph, {"input": x})["logits"]
    assert np.abs(ours - fp32).max() < 0.1 * np.abs(fp32).max() + 0.05


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    from edgecnn.compiler.serialize import load_model
    from edgecnn.compiler.train import TrainConfig, train

    run = tmp_path_factory.mktemp("digits-run")
    train(zoo.build("digits-cnn"), "digits", TrainConfig(epochs=8), run, progress=False)
    return run / "model", load_model(run / "model")


@pytest.mark.parametrize("flags", [[], ["--method", "entropy", "--per-tensor"]])
def test_quantize_command_keeps_accuracy_and_agrees_with_onnxruntime(flags, trained_digits, tmp_path, cli):
    model_dir, _ = trained_digits
    out = tmp_path / "digits.int8.onnx"
    result = cli("quantize", str(model_dir), "--calibrate", "digits", "-o", str(out), "--json", *flags)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads(out.with_suffix(".quantization.json").read_text())
    assert report["fp32_accuracy"] > 0.9
    assert report["fp32_accuracy"] - report["int8_accuracy"] <= 0.005
    assert report["onnxruntime_top1_agreement"] == 1.0
    assert report["quantized"] == ["conv1", "conv2", "conv3", "logits"]
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert out.stat().st_size < 0.5 * (len(onnx_io.export_model(trained_digits[1]).SerializeToString()))


def _npz(path, x, y):
    np.savez(path, x=x, y=y)
    return str(path)


@pytest.mark.parametrize("case,match", [
    ("nan", "NaN"),
    ("shape", "expects"),
    ("empty", "0 samples"),
    ("samples", "--samples"),
])
def test_bad_calibration_input_is_exit_2_with_one_line(case, match, tmp_path, cli):
    x = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
    y = np.arange(20) % 10
    args = ["quantize", "digits-cnn", "-o", str(tmp_path / "q.onnx")]
    if case == "nan":
        x[3, 0, 2, 2] = np.nan
        args += ["--calibrate", _npz(tmp_path / "d.npz", x, y)]
    elif case == "shape":
        args += ["--calibrate", _npz(tmp_path / "d.npz", np.zeros((20, 1, 5, 5), np.float32), y)]
    elif case == "empty":
        args += ["--calibrate", _npz(tmp_path / "d.npz", np.zeros((0, 1, 8, 8), np.float32), y[:0])]
    else:
        args += ["--calibrate", "digits", "--samples", "0"]
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and re.search(match, lines[0]), result.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_an_already_quantized_model_is_refused(tmp_path, rng, cli):
    path = _ort_quantized(zoo.build("digits-cnn"), tmp_path, rng)
    result = cli("quantize", str(path), "--calibrate", "digits", "-o", str(tmp_path / "again.onnx"))
    assert result.returncode == 2 and "already quantized" in result.stderr
