"""Arithmetic, reductions and normalization as exporters write them, imported and run.

Hand-built ONNX (onnx.helper) for the decompositions older opsets force on PyTorch: GELU as
Div/Erf/Add/Mul/Mul below opset 20, LayerNorm as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/
Add below 17, a squeeze-and-excitation block, and the ``x.mean([2, 3])`` head of MNASNet and
ShuffleNetV2 in both encodings of ReduceMean's axes (attribute before 18, input from 18). Each is
imported, run on the NumPy backend and compared with onnxruntime. PyTorch's own exports of a
LayerNorm/GELU block are compared with PyTorch, forward and backward.
"""
import io
import math
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.compiler import numpy_backend, onnx_io
from edgecnn.compiler.errors import ModelDefinitionError, UnsupportedOpError
from edgecnn.compiler.ops import REGISTRY, RunContext

RTOL = ATOL = 1e-5


def make_model(nodes, inputs, outputs, inits=None, opset=13, check=True):
    """inputs/outputs: (name, shape) of float32 tensors; inits: name -> array."""
    graph = helper.make_graph(
        nodes, "case", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def f32(a):
    return np.asarray(a, np.float32)


@pytest.fixture
def matches_onnxruntime(ort_session):
    """``matches_onnxruntime(model, x) -> graph``: import, run on the NumPy backend and compare
    every output with onnxruntime's."""
    def check(model, x, rtol=RTOL, atol=ATOL):
        graph = onnx_io.import_model(model)
        name = model.graph.input[0].name
        got = numpy_backend.run(graph, {name: x})
        want = ort_session(model).run(None, {name: x})
        for out, ref in zip([o.name for o in model.graph.output], want):
            assert got[out].shape == ref.shape, out
            assert got[out].dtype == np.float32
            np.testing.assert_allclose(got[out], ref, rtol=rtol, atol=atol, err_msg=out)
        return graph
    return check


rng = np.random.default_rng(21)


# -- (a) GELU as PyTorch writes it below opset 20 --------------------------------------------
def gelu_decomposition(opset):
    w = f32(rng.standard_normal((6, 3, 3, 3)) * 0.4)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Div", ["c", "sqrt2"], ["scaled"], name="div"),
        helper.make_node("Erf", ["scaled"], ["erf"], name="erf"),
        helper.make_node("Add", ["erf", "one"], ["shifted"], name="add"),
        helper.make_node("Mul", ["c", "shifted"], ["gated"], name="mul"),
        helper.make_node("Mul", ["gated", "half"], ["y"], name="mul_half"),
    ]
    inits = {"w": w, "sqrt2": f32(math.sqrt(2)), "one": f32(1.0), "half": f32(0.5)}
    return make_model(nodes, [("x", ["N", 3, 5, 5])], [("y", ["N", 6, 5, 5])], inits, opset)


@pytest.mark.parametrize("opset", [9, 13, 17])
def test_gelu_decomposition_matches_onnxruntime(opset, matches_onnxruntime):
    x = f32(rng.standard_normal((2, 3, 5, 5)) * 2)
    graph = matches_onnxruntime(gelu_decomposition(opset), x)
    assert [n.op_type for n in graph.nodes] == ["Conv", "Div", "Erf", "Add", "Mul", "Mul"]


def test_gelu_decomposition_equals_the_gelu_op(matches_onnxruntime):
    x = f32(rng.standard_normal((2, 3, 5, 5)) * 2)
    decomposed = onnx_io.import_model(gelu_decomposition(17))
    conv_out = numpy_backend.forward(decomposed, {"x": x}, keep="all")["c"]
    gelu = onnx_io.import_model(make_model([helper.make_node("Gelu", ["x"], ["y"], name="gelu")],
                                           [("x", [2, 6, 5, 5])], [("y", [2, 6, 5, 5])], opset=20))
    np.testing.assert_allclose(numpy_backend.run(gelu, {"x": conv_out})["y"],
                               numpy_backend.run(decomposed, {"x": x})["y"], rtol=1e-6, atol=1e-6)


# -- (b) LayerNorm decomposed, as PyTorch writes it below opset 17 ----------------------------
def layernorm_decomposition(opset=13, channels=6, eps=1e-5):
    gamma = f32(rng.uniform(0.5, 1.5, channels))
    beta = f32(rng.standard_normal(channels) * 0.3)
    mean_axes = {"axes": [-1]} if opset < 18 else {}
    mean_inputs = [] if opset < 18 else ["axes"]
    nodes = [
        helper.make_node("ReduceMean", ["x", *mean_inputs], ["mean"], name="mean", **mean_axes),
        helper.make_node("Sub", ["x", "mean"], ["centered"], name="sub"),
        helper.make_node("Pow", ["centered", "two"], ["squared"], name="pow"),
        helper.make_node("ReduceMean", ["squared", *mean_inputs], ["var"], name="var", **mean_axes),
        helper.make_node("Add", ["var", "eps"], ["var_eps"], name="add_eps"),
        helper.make_node("Sqrt", ["var_eps"], ["std"], name="sqrt"),
        helper.make_node("Div", ["centered", "std"], ["normalized"], name="div"),
        helper.make_node("Mul", ["normalized", "gamma"], ["scaled"], name="mul_gamma"),
        helper.make_node("Add", ["scaled", "beta"], ["y"], name="add_beta"),
    ]
    inits = {"two": f32(2.0), "eps": f32(eps), "gamma": gamma, "beta": beta}
    if opset >= 18:
        inits["axes"] = np.array([-1], np.int64)
    shape = ["N", 4, 5, channels]
    return make_model(nodes, [("x", shape)], [("y", shape)], inits, opset)


@pytest.mark.parametrize("opset", [13, 18])
def test_layernorm_decomposition_matches_onnxruntime(opset, matches_onnxruntime):
    x = f32(rng.standard_normal((3, 4, 5, 6)) * 3 + 1)
    graph = matches_onnxruntime(layernorm_decomposition(opset), x)
    # the constant exponent is the op's attribute, not a parameter that training would move
    assert graph.ops["pow"].attrs["exponent"] == 2.0 and "two" not in graph.params
    assert sorted(graph.params) == ["beta", "eps", "gamma"]


def test_layernorm_decomposition_equals_the_layernorm_op():
    x = f32(rng.standard_normal((3, 4, 5, 6)))
    decomposed = onnx_io.import_model(layernorm_decomposition(13))
    gamma, beta = decomposed.params["gamma"], decomposed.params["beta"]
    fused = make_model([helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], name="ln")],
                       [("x", ["N", 4, 5, 6])], [("y", ["N", 4, 5, 6])], {"gamma": gamma, "beta": beta}, 17)
    np.testing.assert_allclose(numpy_backend.run(onnx_io.import_model(fused), {"x": x})["y"],
                               numpy_backend.run(decomposed, {"x": x})["y"], rtol=1e-5, atol=1e-5)


def test_layernorm_decomposition_trains_gradients_match_central_differences(numeric_gradient):
    graph = onnx_io.import_model(layernorm_decomposition(13, channels=4))
    x = rng.standard_normal((2, 4, 5, 4))
    weights = rng.standard_normal((2, 4, 5, 4))
    params = {k: v.astype(np.float64) for k, v in graph.params.items()}

    def loss(p, feed):
        return float((numpy_backend.forward(graph, {"x": feed}, params=p, dtype=np.float64)["y"] * weights).sum())

    ctx = RunContext(training=True, need_grad=True)
    tape = numpy_backend.forward(graph, {"x": x}, params=params, ctx=ctx, keep="tape", dtype=np.float64)
    grads = numpy_backend.backward(graph, tape, {"y": weights})
    for name in ["gamma", "beta", "eps"]:
        value = params[name].copy()
        numeric = numeric_gradient(lambda v: loss(dict(params, **{name: v}), x), value)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-7, err_msg=name)
    numeric = numeric_gradient(lambda v: loss(params, v), x.copy())
    np.testing.assert_allclose(grads["x"], numeric, rtol=1e-5, atol=1e-7, err_msg="x")


# -- (c) squeeze-and-excitation -------------------------------------------------------------
def test_squeeze_and_excitation_block_matches_onnxruntime(matches_onnxruntime):
    c, r = 8, 2
    inits = {"w1": f32(rng.standard_normal((r, c, 1, 1)) * 0.5), "b1": f32(rng.standard_normal(r) * 0.1),
             "w2": f32(rng.standard_normal((c, r, 1, 1)) * 0.5), "b2": f32(rng.standard_normal(c) * 0.1)}
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["squeezed"], name="squeeze"),
        helper.make_node("Conv", ["squeezed", "w1", "b1"], ["reduced"], name="reduce"),
        helper.make_node("Relu", ["reduced"], ["relu"], name="relu"),
        helper.make_node("Conv", ["relu", "w2", "b2"], ["expanded"], name="expand"),
        helper.make_node("Sigmoid", ["expanded"], ["gate"], name="gate"),
        helper.make_node("Mul", ["x", "gate"], ["y"], name="excite"),
    ]
    model = make_model(nodes, [("x", ["N", c, 6, 6])], [("y", ["N", c, 6, 6])], inits, 13)
    for batch in (1, 3):
        matches_onnxruntime(model, f32(rng.standard_normal((batch, c, 6, 6))))


# -- (d) the x.mean([2, 3]) head of MNASNet and ShuffleNetV2 ---------------------------------
@pytest.mark.parametrize("opset", [13, 18])
def test_spatial_mean_head_matches_onnxruntime(opset, matches_onnxruntime):
    w = f32(rng.standard_normal((10, 8)) * 0.3)
    if opset < 18:
        mean = helper.make_node("ReduceMean", ["x"], ["pooled"], name="mean", axes=[2, 3], keepdims=0)
        inits = {"w": w}
    else:
        mean = helper.make_node("ReduceMean", ["x", "axes"], ["pooled"], name="mean", keepdims=0)
        inits = {"w": w, "axes": np.array([2, 3], np.int64)}
    nodes = [mean, helper.make_node("Gemm", ["pooled", "w"], ["y"], name="fc", transB=1)]
    model = make_model(nodes, [("x", ["N", 8, 7, 7])], [("y", ["N", 10])], inits, opset)
    graph = matches_onnxruntime(model, f32(rng.standard_normal((2, 8, 7, 7))))
    assert graph.shapes["pooled"] == ("N", 8)
    assert graph.ops["mean"].attrs["axes"] == [2, 3] and sorted(graph.params) == ["w"]
    # and edgecnn writes the head back in the encoding of every opset around the change
    for again in (11, 13, 17, 18, 21):
        exported = onnx_io.export_model(graph, opset=again)
        matches_onnxruntime(exported, f32(rng.standard_normal((3, 8, 7, 7))))


def test_negative_reduce_axes_before_opset_11_are_written_non_negative(matches_onnxruntime):
    model = make_model([helper.make_node("ReduceMax", ["x"], ["y"], name="max", axes=[-1, 1])],
                       [("x", ["N", 3, 4, 5])], [("y", ["N", 1, 4, 1])], opset=13)
    graph = matches_onnxruntime(model, f32(rng.standard_normal((2, 3, 4, 5))))
    old = onnx_io.export_model(graph, opset=9)
    assert list(old.graph.node[0].attribute[0].ints) == [3, 1]
    matches_onnxruntime(old, f32(rng.standard_normal((2, 3, 4, 5))))


# -- what is refused, and how ------------------------------------------------------------------
def test_reducing_over_the_symbolic_batch_is_refused_with_the_rule():
    model = make_model([helper.make_node("ReduceSum", ["x"], ["y"], name="total", keepdims=0)],
                       [("x", ["N", 3])], [("y", [])], opset=11)
    with pytest.raises(ModelDefinitionError, match=r"'total'.*symbolic \(batch\).*Received.*'N', 3") as err:
        onnx_io.import_model(model)
    assert "mix the samples" in str(err.value)
    # a model that pins its batch may reduce over it
    fixed = make_model([helper.make_node("ReduceSum", ["x"], ["y"], name="total", keepdims=0)],
                       [("x", [2, 3])], [("y", [])], opset=11)
    x = f32(rng.standard_normal((2, 3)))
    np.testing.assert_allclose(numpy_backend.run(onnx_io.import_model(fixed), {"x": x})["y"], x.sum(), rtol=1e-6)


def test_layernorm_statistics_outputs_are_refused():
    node = helper.make_node("LayerNormalization", ["x", "s"], ["y", "mean", "inv_std"], name="ln")
    model = make_model([node], [("x", [2, 5])], [("y", [2, 5]), ("mean", [2, 1]), ("inv_std", [2, 1])],
                       {"s": f32(np.ones(5))}, 17)
    with pytest.raises(UnsupportedOpError, match="'ln'.*Mean and InvStdDev.*Received"):
        onnx_io.import_model(model)


def test_computed_reduce_axes_are_refused():
    node = helper.make_node("ReduceMean", ["x", "computed"], ["y"], name="mean")

    class NothingConstant:
        def constant(self, name):
            return None

    with pytest.raises(UnsupportedOpError, match="'mean'.*axes.*constant.*Received: axes='computed'"):
        REGISTRY["ReduceMean"].from_onnx(node, 18, NothingConstant())


def test_empty_axes_noop_needs_the_opset_that_has_it():
    graph = onnx_io.import_model(make_model(
        [helper.make_node("ReduceMean", ["x"], ["y"], name="noop", noop_with_empty_axes=1)],
        [("x", ["N", 3])], [("y", ["N", 3])], opset=18))
    assert graph.shapes["y"] == ("N", 3)
    with pytest.raises(ModelDefinitionError, match="'noop'.*noop_with_empty_axes.*opset 18.*Received"):
        onnx_io.export_model(graph, opset=17)


# -- PyTorch's own exports of a LayerNorm/GELU block -------------------------------------------
def _block_class(torch):
    class Block(torch.nn.Module):
        """Conv, LayerNorm over (H, W), exact and tanh GELU, the spatial mean head, a classifier."""

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.ln = torch.nn.LayerNorm([5, 5])
            self.gelu = torch.nn.GELU()
            self.gelu_tanh = torch.nn.GELU(approximate="tanh")
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.gelu_tanh(self.gelu(self.ln(self.conv(x)))).mean([2, 3]))

    return Block


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="PyTorch is an optional test peer (pip install torch==2.13.0)")


@pytest.fixture(scope="module")
def block(torch):
    torch.manual_seed(0)
    module = _block_class(torch)().eval()
    with torch.no_grad():  # LayerNorm starts at scale 1, bias 0: make both matter
        module.ln.weight.uniform_(0.5, 1.5)
        module.ln.bias.normal_(0, 0.3)
    return module


def _export(torch, module, opset):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(2, 3, 5, 5),), buffer, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return onnx.load_from_string(buffer.getvalue())


# 13: LayerNorm and GELU decomposed; 17: LayerNormalization; 18: ReduceMean's axes an input; 20: Gelu
@pytest.mark.parametrize("opset,expected_op", [(13, "Erf"), (17, "LayerNormalization"), (18, "ReduceMean"),
                                               (20, "Gelu")])
def test_pytorch_export_imports_and_matches_pytorch(torch, block, opset, expected_op):
    graph = onnx_io.import_model(_export(torch, block, opset))
    assert expected_op in {n.op_type for n in graph.nodes}
    x = rng.standard_normal((3, 3, 5, 5)).astype(np.float32)
    with torch.no_grad():
        want = block(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(numpy_backend.run(graph, {"x": x})["y"], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("opset", [13, 20])
def test_imported_pytorch_block_trains_gradients_match_pytorch(torch, block, opset):
    graph = onnx_io.import_model(_export(torch, block, opset))
    mirror = _block_class(torch)().double()
    mirror.load_state_dict({k: v.double() for k, v in block.state_dict().items()})
    named = dict(mirror.named_parameters())
    shared = sorted(set(named) & set(graph.params))
    assert {"ln.weight", "ln.bias", "conv.weight", "fc.weight"} <= set(shared)

    x = rng.standard_normal((2, 3, 5, 5))
    weights = rng.standard_normal((2, 4))
    params = {k: v.astype(np.float64) for k, v in graph.params.items()}
    params.update({k: named[k].detach().numpy().copy() for k in shared})  # the same float64 weights
    ctx = RunContext(training=True, need_grad=True, input_grads=False)
    tape = numpy_backend.forward(graph, {"x": x}, params=params, ctx=ctx, keep="tape", dtype=np.float64)
    grads = numpy_backend.backward(graph, tape, {"y": weights})

    # Both in float64 with the same weights; the decompositions' constants (epsilon, sqrt(2),
    # 0.044715) are float32 in the file, which moves the results by ~1e-8 relative.
    out = mirror(torch.from_numpy(x))
    np.testing.assert_allclose(tape.values["y"], out.detach().numpy(), rtol=1e-6, atol=1e-9)
    (out * torch.from_numpy(weights)).sum().backward()
    for name in shared:
        np.testing.assert_allclose(grads[name], named[name].grad.numpy(), rtol=1e-6, atol=1e-9, err_msg=name)
