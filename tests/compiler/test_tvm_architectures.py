"""Architectures whose exports compute shapes at run time, on the TVM road for the host.

PyTorch writes ``x.chunk(2, dim=1)`` (ShuffleNet V2's channel split, gated units) as ``Shape ->
Gather -> Add -> Div -> Mul -> Slice``. TVM's ONNX importer keeps that arithmetic as Relax calls
and slices with ``dynamic_strided_slice``, whose result has no static shape; ShuffleNet V2 then
ended in ``tvm.compile`` with an InternalError on ``R.concat`` (and a gated unit on
``R.multiply``). ``passes.fold_static_work`` reads the arithmetic off the static shapes, so the
slices and everything after them are static. Each reproducer is a few nodes built with
onnx.helper, compared with onnxruntime; the slow test exports torchvision's ShuffleNet V2 and
runs ``edgecnn compile`` and ``edgecnn verify --against onnxruntime`` on it.
"""
from __future__ import annotations


import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from edgecnn.compiler.cli import main
from edgecnn.compiler.tvm import frontend, pipelines
from edgecnn.compiler.tvm.bundle import compile_bundle
from edgecnn.compiler.tvm.relax_helpers import op_name, static_shape
from edgecnn.runtime.bundle import Bundle
from edgecnn.targets import get_preset

RTOL = ATOL = 1e-4
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)


def _ints(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _model(nodes, initializers, x_shape, y_shape, name):
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def shuffle_unit(channels=8, size=4):
    """ShuffleNet V2's stride-1 unit as PyTorch exports it: the channel split is computed from
    ``Shape`` (``x.chunk(2, dim=1)``), the second half goes through 1x1 conv + ReLU and a
    depthwise 3x3, the halves are concatenated and shuffled (Reshape-Transpose-Reshape)."""
    half = channels // 2
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w1", (half, half, 1, 1)), ("b1", (half,)), ("wd", (half, 1, 3, 3)))]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["c"], axis=0),
        helper.make_node("Add", ["c", "one"], ["c1"]),
        helper.make_node("Div", ["c1", "two"], ["h"]),
        helper.make_node("Mul", ["h", "one"], ["mid"]),
        helper.make_node("Mul", ["h", "two"], ["end"]),
        helper.make_node("Slice", ["x", "zero", "mid", "one"], ["left"]),
        helper.make_node("Slice", ["x", "mid", "end", "one"], ["right"]),
        helper.make_node("Conv", ["right", "w1", "b1"], ["conv1"]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("Conv", ["relu1", "wd"], ["dw"], group=half, pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["left", "dw"], ["cat"], axis=1),
        helper.make_node("Reshape", ["cat", "groups"], ["grouped"]),
        helper.make_node("Transpose", ["grouped"], ["swapped"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["swapped", "flat"], ["y"]),
    ]
    constants = [_ints("zero", [0]), _ints("one", [1]), _ints("two", [2]),
                 _ints("groups", [1, 2, half, size, size]), _ints("flat", [1, channels, size, size])]
    shape = [1, channels, size, size]
    return _model(nodes, constants + weights, shape, shape, "shuffle_unit")


def chunk_gate(channels=6, size=3):
    """``a, b = x.chunk(2, 1); sigmoid(a) * b`` with the channel count gathered at a negative
    index and the end of the second half at INT64_MAX (ONNX's "to the end")."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "minus3"], ["c"], axis=0),
        helper.make_node("Div", ["c", "two"], ["mid"]),
        helper.make_node("Slice", ["x", "zero", "mid", "one"], ["a"]),
        helper.make_node("Slice", ["x", "mid", "to_end", "one"], ["b"]),
        helper.make_node("Sigmoid", ["a"], ["gate"]),
        helper.make_node("Mul", ["gate", "b"], ["y"]),
    ]
    constants = [_ints("minus3", [-3]), _ints("two", [2]), _ints("zero", [0]), _ints("one", [1]),
                 _ints("to_end", [INT64_MAX])]
    return _model(nodes, constants, [1, channels, size, size], [1, channels // 2, size, size], "chunk_gate")


def reversed_columns(size=5):
    """``x.flip(3)`` written as a Slice from the last column (``shape[3] - 1``) with step -1 to
    INT64_MIN: negative steps and out-of-range bounds clamp as in NumPy."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "three"], ["w"], axis=0),
        helper.make_node("Sub", ["w", "one"], ["last"]),
        helper.make_node("Slice", ["x", "last", "to_start", "three", "minus1"], ["y"]),
    ]
    constants = [_ints("three", [3]), _ints("one", [1]), _ints("to_start", [INT64_MIN]), _ints("minus1", [-1])]
    shape = [1, 2, 3, size]
    return _model(nodes, constants, shape, shape, "reversed_columns")


CASES = {"shuffle_unit": shuffle_unit, "chunk_gate": chunk_gate, "reversed_columns": reversed_columns}


def _feeds(model, seed=0):
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in frontend.model_inputs(model)}


def _onnxruntime(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _shape_work_left(mod) -> list[str]:
    """Bindings of ``main`` that still compute shapes, or whose tensor has no static shape."""
    left = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            name = op_name(binding.value)
            if name in ("relax.shape_of", "relax.shape_to_tensor", "relax.tensor_to_shape",
                        "relax.dynamic_strided_slice") or (
                    isinstance(binding.var.ty, relax.TensorType) and static_shape(binding.var) is None):
                left.append(f"{binding.var.name} = {name}")
    return left


@pytest.mark.parametrize("name", sorted(CASES))
def test_shape_arithmetic_on_static_shapes_folds_in_relax(name):
    # to_relax on the ONNX file as exported, whatever folds the ONNX graph before it
    model = CASES[name]()
    mod = frontend.to_relax(model)
    assert _shape_work_left(mod) == []
    executable, _ = pipelines.build(mod, get_preset("host"))
    feeds = _feeds(model)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()]).numpy()
    np.testing.assert_allclose(got, _onnxruntime(model, feeds), rtol=RTOL, atol=ATOL)


def test_shuffle_unit_bundle_for_host_matches_onnxruntime(tmp_path):
    model = shuffle_unit()
    path = tmp_path / "shuffle_unit.onnx"
    onnx.save(model, str(path))
    result = compile_bundle(path, "host", tmp_path / "bundle")
    feeds = _feeds(model, seed=1)
    with Bundle.open(result.path) as bundle:
        got = bundle.run(feeds)["y"]
    np.testing.assert_allclose(got, _onnxruntime(model, feeds), rtol=RTOL, atol=ATOL)


@pytest.mark.slow
def test_shufflenet_v2_compiles_for_host_and_verifies_against_onnxruntime(tmp_path, monkeypatch, capsys,
                                                                          torchvision_models):
    import torch

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    torch.manual_seed(0)
    net = torchvision_models.shufflenet_v2_x1_0().eval()
    path = tmp_path / "shufflenet_v2_x1_0.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17)

    # the channel splits are static in Relax on their own (the export, not a pre-folded graph)
    assert _shape_work_left(frontend.to_relax(onnx.load(str(path)))) == []

    bundle = tmp_path / "shufflenet.bundle"
    assert main(["compile", str(path), "--target", "host", "-o", str(bundle)]) == 0, capsys.readouterr().err
    code = main(["verify", str(bundle), "--against", "onnxruntime"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "PASS" in out
