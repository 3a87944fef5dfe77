"""Importing models that use the layout ops (Transpose, Slice, Split, Squeeze, Unsqueeze) and
MatMul at the opsets whose encodings differ (9, 11, 13, 18, and Slice's attribute form of opset
1), run with the NumPy backend and compared with onnxruntime; training through MatMul and
Transpose; exports at 13..21 read back; and the errors a bad node gives, naming it.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgecnn.compiler import numpy_backend, onnx_io
from edgecnn.compiler.errors import ModelDefinitionError, UnsupportedOpError
from edgecnn.compiler.ir import Graph, Node, TensorSpec
from edgecnn.compiler.ops import REGISTRY, RunContext
from edgecnn.compiler.train import TrainConfig, loss_and_gradients

RTOL = ATOL = 1e-5
INT64_MAX, INT64_MIN = 2**63 - 1, -2**63


def _ints(values):
    return np.array(values, np.int64)


def make_model(nodes, inputs, outputs, inits=None, opset=13):
    """inputs/outputs: (name, shape) pairs of float32 tensors; inits: name -> array."""
    graph = helper.make_graph(
        nodes, "layout",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    if model.ir_version < 4:  # IR 3 lists every initializer among the graph inputs as well
        model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                 for t in model.graph.initializer)
    onnx.checker.check_model(model, full_check=True)
    return model


def _compare_with_onnxruntime(model, feeds, ort_session):
    graph = onnx_io.import_model(model)
    ours = numpy_backend.run(graph, feeds)
    names = [o.name for o in model.graph.output]
    refs = ort_session(model).run(names, feeds)
    for name, ref in zip(names, refs):
        assert ours[name].shape == ref.shape, name
        np.testing.assert_allclose(ours[name], ref, rtol=RTOL, atol=ATOL, err_msg=name)
    return graph


def _pytorch_linear_without_bias(opset, rng):
    """PyTorch's old export of ``Linear(6, 4, bias=False)`` then a flatten back: Transpose of the
    weight, then MatMul."""
    w = (rng.standard_normal((4, 6)) * 0.5).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["fc.weight"], ["wt"], name="t", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wt"], ["y"], name="fc")]
    return make_model(nodes, [("x", ["N", 6])], [("y", ["N", 4])], {"fc.weight": w}, opset=opset), w


@pytest.mark.parametrize("opset", [6, 9])
def test_pytorch_transpose_matmul_linear(opset, ort_session):
    rng = np.random.default_rng(0)
    model, w = _pytorch_linear_without_bias(opset, rng)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    graph = onnx_io.import_model(model)
    assert [n.op_type for n in graph.nodes] == ["MatMul"]  # the weight's Transpose folded into a constant
    y = numpy_backend.run(graph, {"x": x})["y"]
    np.testing.assert_allclose(y, x @ w.T, rtol=RTOL, atol=ATOL)
    if opset >= onnx_io.ONNXRUNTIME_MIN_OPSET:
        _compare_with_onnxruntime(model, {"x": x}, ort_session)


def test_opset9_attribute_encodings(ort_session):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((4, 5)) * 0.5).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], name="to_nhwc", perm=[0, 2, 3, 1]),  # (N, 3, 4, 4)
        helper.make_node("MatMul", ["xt", "w"], ["m"], name="mm"),  # (N, 3, 4, 5)
        helper.make_node("Slice", ["m"], ["s"], name="crop", starts=[1, 0], ends=[INT64_MAX, 4], axes=[2, 3]),
        helper.make_node("Split", ["s"], ["a", "b"], name="halves", axis=3, split=[1, 3]),
        helper.make_node("Unsqueeze", ["a"], ["au"], name="unsq", axes=[1]),  # (N, 1, 3, 3, 1)
        helper.make_node("Squeeze", ["au"], ["y0"], name="sq", axes=[1, 4]),  # (N, 3, 3)
        helper.make_node("Transpose", ["b"], ["y1"], name="back", perm=[0, 3, 1, 2]),
    ]
    model = make_model(nodes, [("x", ["N", 4, 3, 4])], [("y0", ["N", 3, 3]), ("y1", ["N", 3, 3, 3])],
                       {"w": w}, opset=9)
    x = rng.standard_normal((2, 4, 3, 4)).astype(np.float32)
    graph = _compare_with_onnxruntime(model, {"x": x}, ort_session)
    assert graph.shapes["y0"] == ("N", 3, 3) and graph.shapes["y1"] == ("N", 3, 3, 3)


def test_opset11_negative_axes(ort_session):
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["s"], name="rev"),  # both axes reversed
        helper.make_node("Split", ["s"], ["a", "y0", "c"], name="parts", axis=-1, split=[1, 4, 1]),
        helper.make_node("Unsqueeze", ["c"], ["cu"], name="unsq", axes=[-1]),  # (N, 3, 1, 1)
        helper.make_node("Squeeze", ["cu"], ["cs"], name="sq", axes=[-1]),
        helper.make_node("Transpose", ["cs"], ["ct"], name="ct", perm=[0, 2, 1]),  # (N, 1, 3)
        helper.make_node("MatMul", ["a", "ct"], ["y1"], name="outer"),  # (N, 3, 3)
    ]
    inits = {"st": _ints([-1, 5]), "en": _ints([INT64_MIN, -100]), "ax": _ints([1, -1]), "sp": _ints([-1, -1])}
    model = make_model(nodes, [("x", ["N", 3, 6])], [("y0", ["N", 3, 4]), ("y1", ["N", 3, 3])], inits, opset=11)
    x = rng.standard_normal((2, 3, 6)).astype(np.float32)
    _compare_with_onnxruntime(model, {"x": x}, ort_session)


def test_opset13_constant_inputs_and_convnext_linear(ort_session):
    rng = np.random.default_rng(3)
    w_t = (rng.standard_normal((3, 8)) * 0.5).astype(np.float32)  # ConvNeXt: Linear on NHWC as MatMul(x, W^T)
    b = rng.standard_normal(8).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["x"], ["nhwc"], name="permute", perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["nhwc", "w_t"], ["mm"], name="pwconv"),
        helper.make_node("Add", ["mm", "b"], ["lin"], name="pwconv_bias"),
        helper.make_node("Slice", ["lin", "st", "en", "ax", "sp"], ["s"], name="stride2"),
        helper.make_node("Split", ["s", "sizes"], ["p0", "p1"], name="split", axis=3),
        helper.make_node("Squeeze", ["p0", "sq_axes"], ["y0"], name="sq"),
        helper.make_node("Unsqueeze", ["p1", "unsq_axes"], ["y1"], name="unsq"),
    ]
    inits = {"w_t": w_t, "b": b, "st": _ints([0, 1]), "en": _ints([INT64_MAX, INT64_MAX]), "ax": _ints([1, 2]),
             "sp": _ints([2, 2]), "sizes": _ints([1, 7]), "sq_axes": _ints([-1]), "unsq_axes": _ints([0, -1])}
    model = make_model(nodes, [("x", ["N", 3, 5, 5])], [("y0", ["N", 3, 2]), ("y1", [1, "N", 3, 2, 7, 1])],
                       inits, opset=13)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    graph = _compare_with_onnxruntime(model, {"x": x}, ort_session)
    assert graph.shapes["y1"] == (1, "N", 3, 2, 7, 1)


def test_opset18_split_num_outputs_uneven(ort_session):
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Split", ["x"], ["a", "b", "c"], name="chunks", axis=1, num_outputs=3),
             helper.make_node("Squeeze", ["c"], ["y2"], name="last"),  # (N, 1, 4): every 1-dim but the batch
             helper.make_node("Transpose", ["a"], ["y0"], name="t", perm=[0, 2, 1])]
    model = make_model(nodes, [("x", ["N", 7, 4])], [("y0", ["N", 4, 3]), ("b", ["N", 3, 4]), ("y2", ["N", 4])],
                       opset=18)
    x = rng.standard_normal((2, 7, 4)).astype(np.float32)
    graph = _compare_with_onnxruntime(model, {"x": x}, ort_session)
    assert graph.shapes["b"] == ("N", 3, 4) and graph.shapes["y2"] == ("N", 4)
    # A batch of 1 is not squeezed: the shape rule kept the symbolic batch, and so does the run.
    assert numpy_backend.run(graph, {"x": x[:1]})["y2"].shape == (1, 4)


def test_slice_attribute_form_of_opset1():
    x = np.random.default_rng(5).standard_normal((2, 3, 5)).astype(np.float32)
    node = helper.make_node("Slice", ["x"], ["y"], name="s1", starts=[1, -4], ends=[1000, -1], axes=[1, 2])
    model = make_model([node], [("x", [2, 3, 5])], [("y", [2, 2, 3])], opset=1)
    (ref,) = ReferenceEvaluator(model).run(None, {"x": x})

    class Constants:
        def constant(self, name):
            return None

    attrs, ins, outs = REGISTRY["Slice"].from_onnx(node, 1, Constants())
    assert ins == ["x"] and outs == ["y"]
    assert attrs == {"starts": [1, -4], "ends": [1000, -1], "axes": [1, 2]}
    (y,), _ = REGISTRY["Slice"](attrs, name="s1").forward([x], RunContext())
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)
    # the whole importer: an opset-1 model is upgraded to what onnxruntime reads, the attributes kept
    graph = onnx_io.import_model(model)
    np.testing.assert_allclose(numpy_backend.run(graph, {"x": x})["y"], ref, rtol=RTOL, atol=ATOL)


def test_training_through_matmul_and_transpose():
    rng = np.random.default_rng(6)
    w = (rng.standard_normal((4, 5)) * 0.5).astype(np.float32)
    b = np.zeros(5, np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], name="t", perm=[0, 2, 1]),  # (N, 3, 4)
             helper.make_node("MatMul", ["xt", "w"], ["m"], name="mm"),  # (N, 3, 5)
             helper.make_node("Add", ["m", "b"], ["a"], name="bias"),
             helper.make_node("Slice", ["a", "st", "en", "ax"], ["s"], name="first_row"),  # (N, 1, 5)
             helper.make_node("Squeeze", ["s", "sq"], ["logits"], name="sq")]
    inits = {"w": w, "b": b, "st": _ints([0]), "en": _ints([1]), "ax": _ints([1]), "sq": _ints([1])}
    model = make_model(nodes, [("x", ["N", 4, 3])], [("logits", ["N", 5])], inits, opset=13)
    graph = onnx_io.import_model(model)
    x = rng.standard_normal((6, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 5, 6)
    loss, logits, grads = loss_and_gradients(graph, x, labels, TrainConfig())
    assert logits.shape == (6, 5) and np.isfinite(loss)
    assert set(grads) == {"w", "b"}
    for name in ("w", "b"):
        assert grads[name].shape == graph.params[name].shape
        assert np.all(np.isfinite(grads[name])) and np.abs(grads[name]).max() > 0
    # the softmax gradient sums to zero over the classes, so the bias gradient does too
    assert abs(grads["b"].sum()) < 1e-5


def test_split_backward_gives_zeros_for_an_unused_output():
    op = REGISTRY["Split"]({"axis": 1, "split": [1, 2]}, name="sp")
    x = np.random.default_rng(7).standard_normal((2, 3))
    (a, b), cache = op.forward([x], RunContext(need_grad=True))
    (dx,) = op.backward(cache, [np.ones_like(a), None])
    np.testing.assert_array_equal(dx, np.concatenate([np.ones((2, 1)), np.zeros((2, 2))], axis=1))


def _layout_graph(step):
    rng = np.random.default_rng(8)
    params = {"w": (rng.standard_normal((4, 6)) * 0.5).astype(np.float32)}
    rows = ({"starts": [2, 0], "ends": [INT64_MAX, INT64_MAX]} if step == 1 else
            {"starts": [-1, 0], "ends": [INT64_MIN, INT64_MAX]})  # 3 of the 5 rows either way
    nodes = [
        Node("Transpose", "t", ["x"], ["xt"], {"perm": [0, 2, 1]}),  # (N, 5, 4)
        Node("MatMul", "mm", ["xt", "w"], ["m"]),  # (N, 5, 6)
        Node("Slice", "s", ["m"], ["s"], {**rows, "axes": [-2, -1], "steps": [step, 1]}),  # (N, 3, 6)
        Node("Split", "sp", ["s"], ["p0", "p1"], {"axis": -1, "num_outputs": 2}),
        Node("Unsqueeze", "u", ["p0"], ["u"], {"axes": [-1]}),
        Node("Squeeze", "q", ["u"], ["y0"], {"axes": [-1]}),
        Node("Split", "sp2", ["p1"], ["y1", "y2"], {"axis": 1, "num_outputs": 2}),  # 3 rows: 2 and 1
    ]
    return Graph([TensorSpec("x", ("N", 4, 5))], ["y0", "y1", "y2"], nodes, params, name="layout")


@pytest.mark.parametrize("opset,step", [(9, 1), (11, -2), (13, -2), (17, 1), (18, -2), (21, -2)])
def test_export_reads_back_and_matches_onnxruntime(opset, step, ort_session):
    graph = _layout_graph(step)
    model = onnx_io.export_model(graph, opset=opset)  # checker and strict shape inference
    x = np.random.default_rng(9).standard_normal((2, 4, 5)).astype(np.float32)
    ours = numpy_backend.run(graph, {"x": x})
    refs = dict(zip(graph.outputs, ort_session(model).run(graph.outputs, {"x": x})))
    back = numpy_backend.run(onnx_io.import_model(model), {"x": x})
    for name in graph.outputs:
        np.testing.assert_allclose(ours[name], refs[name], rtol=RTOL, atol=ATOL, err_msg=name)
        np.testing.assert_array_equal(back[name], ours[name])


def test_slice_steps_need_opset_10():
    with pytest.raises(ModelDefinitionError, match="Layer 's'.*opset 10.*Received: steps=\\[-2, 1\\]"):
        onnx_io.export_model(_layout_graph(-2), opset=9)


def test_slice_of_a_symbolic_batch_must_keep_it_whole():
    whole = [Node("Slice", "s", ["x"], ["y"], {"starts": [0, 1], "ends": [INT64_MAX, 3], "axes": [0, 1]})]
    graph = Graph([TensorSpec("x", ("N", 4))], ["y"], whole)
    assert graph.shapes["y"] == ("N", 2)
    rev = [Node("Slice", "s", ["x"], ["y"], {"starts": [-1], "ends": [INT64_MIN], "axes": [0], "steps": [-1]})]
    assert Graph([TensorSpec("x", ("N", 4))], ["y"], rev).shapes["y"] == ("N", 4)
    part = [Node("Slice", "s", ["x"], ["y"], {"starts": [1], "ends": [INT64_MAX], "axes": [0]})]
    with pytest.raises(ModelDefinitionError, match="Layer 's'.*symbolic dimension.*whole.*Received"):
        Graph([TensorSpec("x", ("N", 4))], ["y"], part)


# -- errors name the node, the rule and the values ---------------------------------------------
def _single(node, inits=None, in_shape=("N", 4, 6), opset=13, out_shape=None):
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, out_shape) for o in node.output],
                              initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("node,inits,match", [
    (helper.make_node("Transpose", ["x"], ["y"], name="bad_perm", perm=[0, 2, 2]), None,
     "Layer 'bad_perm'.*permutation.*Received: perm=\\[0, 2, 2\\]"),
    (helper.make_node("Transpose", ["x"], ["y"], name="short_perm", perm=[1, 0]), None,
     "Layer 'short_perm'.*every axis.*Received"),
    (helper.make_node("Split", ["x", "sizes"], ["a", "b"], name="bad_split", axis=2), {"sizes": _ints([2, 3])},
     "Layer 'bad_split'.*sum to the length.*Received: split=\\[2, 3\\]"),
    (helper.make_node("Split", ["x", "sizes"], ["a", "b"], name="few_outputs", axis=2), {"sizes": _ints([2, 2, 2])},
     "'few_outputs'.*one output per split size"),
    (helper.make_node("Squeeze", ["x", "axes"], ["y"], name="bad_squeeze"), {"axes": _ints([1])},
     "Layer 'bad_squeeze'.*size 1.*Received"),
    (helper.make_node("Squeeze", ["x", "axes"], ["y"], name="batch_squeeze"), {"axes": _ints([0])},
     "Layer 'batch_squeeze'.*symbolic.*Received"),
    (helper.make_node("Unsqueeze", ["x", "axes"], ["y"], name="bad_unsqueeze"), {"axes": _ints([2, -3])},
     "Layer 'bad_unsqueeze'.*twice.*Received"),
    (helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"], name="zero_step"),
     {"st": _ints([0]), "en": _ints([2]), "ax": _ints([1]), "sp": _ints([0])}, "Layer 'zero_step'.*steps.*0"),
    (helper.make_node("Slice", ["x", "st", "en"], ["y"], name="empty_slice"), {"st": _ints([0, 3]), "en": _ints([INT64_MAX, 3])},
     "Layer 'empty_slice'.*empty.*Received"),
    (helper.make_node("MatMul", ["x", "w"], ["y"], name="bad_k"), {"w": np.zeros((5, 2), np.float32)},
     "Layer 'bad_k'.*inner dimension.*Received"),
])
def test_bad_nodes_raise_naming_the_node(node, inits, match):
    with pytest.raises(ModelDefinitionError, match=match):
        onnx_io.import_model(_single(node, inits))


def test_computed_slice_bounds_are_unsupported_naming_the_node():
    # starts computed from the data (a stand-in for Shape/Gather arithmetic): not a constant
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="r"),
             helper.make_node("Slice", ["x", "r", "en"], ["y"], name="dyn")]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(_ints([0, 1]), "en")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    with pytest.raises(UnsupportedOpError, match="'dyn'.*starts.*must be a constant"):
        onnx_io.import_model(model)


@pytest.mark.parametrize("op_type,attrs,in_shapes,match", [
    ("Transpose", {"perm": [0, 0]}, None, "permutation"),
    ("Split", {"axis": 1}, None, "exactly one of"),
    ("Split", {"split": [2, 0]}, None, "positive"),
    ("Slice", {"starts": [0, 1], "ends": [2]}, None, "one length"),
    ("Unsqueeze", {"axes": []}, None, "at least one"),
    ("Split", {"axis": 1, "num_outputs": 4}, [("N", 5)], "last part empty"),
    ("Split", {"axis": 0, "num_outputs": 2}, [("N", 4)], "symbolic"),
    ("MatMul", {}, [("N", 2, 3, 4), (3, 4, 5)], "batch dimensions"),
])
def test_definition_errors_name_the_layer_and_values(op_type, attrs, in_shapes, match):
    with pytest.raises(ModelDefinitionError, match=match) as info:
        REGISTRY[op_type](attrs, name="layer9").infer_shapes(in_shapes)
    assert "Layer 'layer9'" in str(info.value) and "Received:" in str(info.value)


@pytest.mark.parametrize("op_type,attrs,in_shapes,expected", [
    ("MatMul", {}, [("N", 20), (20, 7)], 20 * 7),  # as Gemm: per row of A
    ("MatMul", {}, [("N", 4, 4, 8), (8, 16)], 4 * 4 * 8 * 16),  # ConvNeXt's Linear on NHWC
    ("MatMul", {}, [(3, "N", 5), (5, 2)], 3 * 5 * 2),  # the batch moved by a Transpose
    ("MatMul", {}, [(2, 3, 4), (2, 4, 5)], 3 * 4 * 5),
    ("Transpose", {}, [("N", 3, 4)], 0),
])
def test_macs_per_sample(op_type, attrs, in_shapes, expected):
    op = REGISTRY[op_type](attrs, name="l")
    assert op.macs(in_shapes, op.infer_shapes(in_shapes)) == expected
