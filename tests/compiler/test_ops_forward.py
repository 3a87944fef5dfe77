"""Each op's NumPy forward against onnx's ReferenceEvaluator on a one-node model built from the
op's own ``to_onnx``; shape, then dtype, then values. The configurations live in conftest.py.

Also: ``from_onnx`` round trips (the node the exporter wrote reads back to the same op), older
opset encodings on import, symbolic batch dimensions in shape inference, and definition errors.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgecnn.compiler.errors import ModelDefinitionError, UnsupportedOpError
from edgecnn.compiler.ops import REGISTRY, RunContext

RTOL = ATOL = 1e-5


def _single_node_model(nodes, feeds: dict, out_shapes: list, initializers: dict, opset: int,
                       shape_inference: bool = True):
    inputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in feeds.items()]
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, list(s) if shape_inference else [f"d{j}" for j in range(len(s))])
               for i, s in enumerate(out_shapes)]
    graph = helper.make_graph(nodes, "single_op", inputs, outputs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # readable by every onnx/onnxruntime release that knows opsets 13..21
    # full_check also runs ONNX shape inference strictly against our output shape
    onnx.checker.check_model(model, full_check=shape_inference)
    return model


def _export(case, opset, inputs, export_context):
    op = REGISTRY[case.op](case.attrs, name="node")
    names = [f"in{i}" for i in range(len(inputs))]
    outs = [f"y{i}" for i in range(len(op.infer_shapes([x.shape for x in inputs])))]  # Split has several
    ctx = export_context(taken=names + outs + ["node"])
    nodes = op.to_onnx(names, outs, opset, ctx)
    return op, names, nodes, ctx.initializers


def test_forward_matches_onnx_reference(forward_case, case_inputs, export_context):
    case, opset = forward_case
    inputs = case_inputs(case, np.float32)
    op, names, nodes, initializers = _export(case, opset, inputs, export_context)
    expected_shapes = op.infer_shapes([x.shape for x in inputs])
    ys, _ = op.forward(inputs, RunContext())

    model = _single_node_model(nodes, dict(zip(names, inputs)), expected_shapes, initializers, opset,
                               case.onnx_shape_inference)
    if case.reference == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        refs = session.run(None, dict(zip(names, inputs)))
    else:
        refs = ReferenceEvaluator(model).run(None, dict(zip(names, inputs)))

    assert len(ys) == len(refs) == len(expected_shapes)
    for y, ref, expected_shape in zip(ys, refs, expected_shapes):
        assert y.shape == ref.shape == tuple(expected_shape)
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


def test_forward_keeps_float64(op_case, case_inputs):
    case = op_case
    inputs = case_inputs(case, np.float64)
    ys, _ = REGISTRY[case.op](case.attrs, name="node").forward(inputs, RunContext(training=case.training))
    assert all(y.dtype == np.float64 for y in ys)


def test_from_onnx_reads_back_the_exported_node(forward_case, case_inputs, export_context, import_context):
    case, opset = forward_case
    inputs = case_inputs(case, np.float32)
    op, names, nodes, initializers = _export(case, opset, inputs, export_context)
    assert len(nodes) == 1
    attrs, in_names, out_names = REGISTRY[case.op].from_onnx(nodes[0], opset, import_context(initializers))
    assert out_names == list(nodes[0].output)
    feeds = dict(zip(names, inputs))
    back = REGISTRY[case.op](attrs, name="node")
    ys0, _ = op.forward(inputs, RunContext())
    ys1, _ = back.forward([feeds[n] for n in in_names], RunContext())
    assert len(ys0) == len(ys1) == len(out_names)
    for y0, y1 in zip(ys0, ys1):
        np.testing.assert_array_equal(y0, y1)


def test_symbolic_batch_flows_through_shape_inference(batch_first_case):
    case = batch_first_case
    op = REGISTRY[case.op](case.attrs, name="node")
    concrete = [shape for shape, _ in case.inputs]
    symbolic = [("N",) + tuple(shape[1:]) if role in ("x", "distinct", "ties") else shape
                for shape, role in case.inputs]
    expected = op.infer_shapes(concrete)[0]
    assert op.infer_shapes(symbolic)[0] == ("N",) + tuple(expected[1:])


@pytest.mark.parametrize("shape,target,expected", [
    (("N", 16, 4, 4), [0, -1], ("N", 256)),
    (("N", 6, 4), [-1, 4], ("N*6", 4)),
    (("N", 6, 4), [0, 2, 3, 4], ("N", 2, 3, 4)),
    (("N", 6), [-1], ("N*6",)),
])
def test_reshape_symbolic_batch(shape, target, expected):
    assert REGISTRY["Reshape"]({"shape": target}, name="r").infer_shapes([shape]) == [expected]


def test_flatten_symbolic_batch():
    assert REGISTRY["Flatten"]({"axis": 2}, name="f").infer_shapes([("N", 3, 4, 5)]) == [("N*3", 20)]


# -- BatchNormalization in training mode: ONNX's training_mode=1 is the reference -------------
def test_batchnorm_training_forward_and_running_stats_match_onnx(case_inputs):
    x = np.random.default_rng(3).standard_normal((4, 3, 3, 2)).astype(np.float32)
    rng = np.random.default_rng(4)
    scale, bias, mean = (rng.standard_normal(3).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.5, 2, 3).astype(np.float32)
    momentum, eps = 0.8, 1e-5
    op = REGISTRY["BatchNormalization"]({"epsilon": eps, "momentum": momentum}, name="bn")
    ctx = RunContext(training=True)
    (y,), _ = op.forward([x, scale, bias, mean, var], ctx)

    names = ["x", "scale", "b", "mean", "var"]
    node = helper.make_node("BatchNormalization", names, ["y0", "y1", "y2"], epsilon=eps, momentum=momentum,
                            training_mode=1)
    feeds = dict(zip(names, [x, scale, bias, mean, var]))
    inputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in feeds.items()]
    outputs = [helper.make_tensor_value_info("y0", TensorProto.FLOAT, list(x.shape)),
               helper.make_tensor_value_info("y1", TensorProto.FLOAT, [3]),
               helper.make_tensor_value_info("y2", TensorProto.FLOAT, [3])]
    model = helper.make_model(helper.make_graph([node], "bn", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 15)])
    ref_y, ref_mean, ref_var = ReferenceEvaluator(model).run(None, feeds)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref_y, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ctx.pending_state[3], ref_mean, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ctx.pending_state[4], ref_var, rtol=RTOL, atol=ATOL)


def test_dropout_training_mask_is_seeded_and_scaled():
    x = np.ones((200, 50), np.float32)
    op = REGISTRY["Dropout"]({"ratio": 0.25}, name="d")
    (a,), _ = op.forward([x], RunContext(training=True, rng=np.random.default_rng(7)))
    (b,), _ = op.forward([x], RunContext(training=True, rng=np.random.default_rng(7)))
    (c,), _ = op.forward([x], RunContext(training=False))
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {0.0, np.float32(1 / 0.75)}
    assert abs((a == 0).mean() - 0.25) < 0.02  # 10,000 draws: 5 standard deviations is 0.022
    assert a.dtype == np.float32
    np.testing.assert_array_equal(c, x)


# -- older opset encodings on import, checked against the ReferenceEvaluator at that opset ----
def _old_model(op_type, inputs, attrs, feeds, out_shape, opset, initializers=None):
    node = helper.make_node(op_type, inputs, ["y0"], name="old", **attrs)
    vi = [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in feeds.items()]
    out = [helper.make_tensor_value_info("y0", TensorProto.FLOAT, list(out_shape))]
    init = [numpy_helper.from_array(v, k) for k, v in (initializers or {}).items()]
    model = helper.make_model(helper.make_graph([node], "old", vi, out, initializer=init),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return node, model


@pytest.mark.parametrize("op_type,opset,attrs,extra,out_shape", [
    ("Clip", 6, {"min": -0.5, "max": 0.7}, {}, (2, 3, 4)),
    ("Clip", 11, {}, {"lo": np.array(-0.2, np.float32), "hi": np.array(0.4, np.float32)}, (2, 3, 4)),
    ("Pad", 2, {"pads": [0, 0, 1, 2, 0, 0, 2, 0], "mode": "edge"}, {}, (2, 3, 7, 6)),
    ("Pad", 2, {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "value": 2.5}, {}, (2, 3, 6, 6)),
    ("Pad", 11, {"mode": "reflect"}, {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}, (2, 3, 7, 7)),
    ("Reshape", 5, {}, {"shape": np.array([0, -1], np.int64)}, (2, 48)),
    ("Dropout", 10, {"ratio": 0.2}, {}, (2, 3, 4, 4)),
    ("Dropout", 12, {}, {"ratio": np.array(0.2, np.float32)}, (2, 3, 4, 4)),
    ("Softmax", 11, {"axis": -1}, {}, (2, 3, 4, 4)),
    ("LogSoftmax", 11, {"axis": -1}, {}, (2, 3, 4, 4)),
])
def test_import_of_older_opset_encodings(op_type, opset, attrs, extra, out_shape, import_context):
    x = np.random.default_rng(5).standard_normal((2, 3, 4, 4) if op_type not in ("Clip",) else (2, 3, 4))
    x = x.astype(np.float32)
    feeds = {"x": x}
    node, model = _old_model(op_type, ["x", *extra], attrs, feeds, out_shape, opset, extra)
    onnx.checker.check_model(model)
    (ref,) = ReferenceEvaluator(model).run(None, feeds)
    ir_attrs, ins, outs = REGISTRY[op_type].from_onnx(node, opset, import_context(extra))
    assert ins == ["x"] and outs == ["y0"]
    (y,), _ = REGISTRY[op_type](ir_attrs, name="old").forward([x], RunContext())
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("op_type,attrs,shapes,opset", [
    ("Clip", {"min": 0.0, "max": 6.0}, [(2, 3, 4)], 6),
    ("Clip", {"max": 0.5}, [(2, 3, 4)], 10),
    ("Pad", {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "mode": "reflect"}, [(1, 2, 4, 4)], 2),
    ("Pad", {"pads": [0, 0, 1, 0, 0, 1, 0, 2], "value": -1.0}, [(1, 2, 4, 4)], 10),
    ("Reshape", {"shape": [0, -1]}, [(2, 3, 4)], 5),
    ("Dropout", {"ratio": 0.2}, [(2, 3, 4)], 10),
    ("Gemm", {"alpha": 2.0}, [(3, 5), (5, 4)], 9),
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "dilations": [1, 1]}, [(1, 2, 5, 5)], 8),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}, [(1, 2, 5, 5)], 7),
    ("Softmax", {"axis": -1}, [(2, 3, 5)], 11),
    ("Softmax", {"axis": 2}, [(2, 3, 5)], 9),
    ("LogSoftmax", {"axis": -1}, [(2, 3, 5)], 10),
    ("Flatten", {"axis": -1}, [(2, 3, 4)], 9),
    ("Concat", {"axis": -1}, [(2, 3), (2, 2)], 4),
])
def test_export_at_older_opsets(op_type, attrs, shapes, opset, export_context):
    rng = np.random.default_rng(6)
    inputs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    names = [f"in{i}" for i in range(len(inputs))]
    op = REGISTRY[op_type](attrs, name="node")
    ctx = export_context(taken=names + ["y0", "node"], shapes=dict(zip(names, shapes)))
    nodes = op.to_onnx(names, ["y0"], opset, ctx)
    expected_shape = op.infer_shapes(shapes)[0]
    model = _single_node_model(nodes, dict(zip(names, inputs)), [expected_shape], ctx.initializers, opset)
    (ref,) = ReferenceEvaluator(model).run(None, dict(zip(names, inputs)))
    (y,), _ = op.forward(inputs, RunContext())
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("op_type,attrs,opset,match", [
    ("Softmax", {"axis": 1}, 12, "opset 13"),
    ("MaxPool", {"kernel_shape": [2, 2], "ceil_mode": 1}, 9, "opset 10"),
    ("MaxPool", {"kernel_shape": [2, 2], "dilations": [2, 2]}, 9, "opset 10"),
    ("AveragePool", {"kernel_shape": [2, 2], "count_include_pad": 1}, 6, "opset 7"),
])
def test_export_refuses_semantics_an_older_opset_lacks(op_type, attrs, opset, match, export_context):
    op = REGISTRY[op_type](attrs, name="old")
    with pytest.raises(ModelDefinitionError, match=match):
        op.to_onnx(["in0"], ["y0"], opset, export_context(shapes={"in0": (2, 3, 4, 4)}))


def test_old_softmax_on_a_non_last_axis_is_rejected(import_context):
    node = helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=1)
    with pytest.raises(UnsupportedOpError, match="'sm'.*axis=1"):
        REGISTRY["Softmax"].from_onnx(node, 11, import_context({}))


@pytest.mark.parametrize("op_type,node_inputs,attrs,constants,match", [
    ("Pad", ["x", "p"], {}, {}, "'n'.*pads.*constant"),
    ("Pad", ["x", "p", "", "axes"], {}, {"p": np.zeros(4, np.int64)}, "'n'.*axes"),
    ("Pad", ["x", "p"], {}, {"p": np.array([0, 0, -1, 0, 0, 0, 0, 0], np.int64)}, "'n'.*negative"),
    ("Pad", ["x", "p"], {"mode": "wrap"}, {"p": np.zeros(8, np.int64)}, "'n'.*wrap"),
    ("Clip", ["x", "lo"], {}, {}, "'n'.*min"),
    ("Reshape", ["x", "s"], {}, {}, "'n'.*shape"),
    ("Conv", ["x", "w"], {}, {"w": np.zeros((4, 3, 3), np.float32)}, "'n'.*2-D"),
    ("Conv", ["x", "w"], {"kernel_shape": [3, 3, 3]}, {}, "'n'.*2-D"),
    ("MaxPool", ["x"], {"kernel_shape": [2]}, {}, "'n'.*2-D"),
    ("ConvTranspose", ["x", "w"], {}, {"w": np.zeros((3, 4, 3), np.float32)}, "'n'.*2-D"),
    ("ConvTranspose", ["x", "w"], {"output_padding": [1]}, {}, "'n'.*2-D"),
    ("AveragePool", ["x"], {"kernel_shape": [2, 2], "pads": [1, 1, 1, 1, 1, 1]}, {}, "'n'.*2-D"),
])
def test_from_onnx_rejects_what_it_cannot_support(op_type, node_inputs, attrs, constants, match, import_context):
    node = helper.make_node(op_type, node_inputs, ["y"], name="n", **attrs)
    with pytest.raises(UnsupportedOpError, match=match):
        REGISTRY[op_type].from_onnx(node, 18, import_context(constants))


def test_maxpool_indices_output_is_rejected(import_context):
    node = helper.make_node("MaxPool", ["x"], ["y", "idx"], name="mp", kernel_shape=[2, 2])
    with pytest.raises(UnsupportedOpError, match="'mp'.*Indices"):
        REGISTRY["MaxPool"].from_onnx(node, 17, import_context({}))


def test_dilated_averagepool_needs_opset_19(export_context):
    op = REGISTRY["AveragePool"]({"kernel_shape": [2, 2], "dilations": [2, 2]}, name="ap")
    with pytest.raises(ModelDefinitionError, match="'ap'.*opset 19.*Received"):
        op.to_onnx(["x"], ["y"], 18, export_context())
    node = REGISTRY["AveragePool"]({"kernel_shape": [2, 2]}, name="ap").to_onnx(["x"], ["y"], 17,
                                                                                 export_context())[0]
    assert "dilations" not in [a.name for a in node.attribute]


# -- definition-time errors: the layer, the rule, "Received:" ----------------------------------
@pytest.mark.parametrize("op_type,attrs,in_shapes,match", [
    ("Conv", {}, [("N", 3, 8, 8), (4, 2, 3, 3)], "channels"),
    ("MaxPool", {"kernel_shape": [5, 5]}, [("N", 3, 4, 4)], "larger than the padded input"),
    ("AveragePool", {"kernel_shape": [2, 2]}, [("N", 3, 4)], "4-D"),
    ("Pad", {"pads": [0, 0, 1, 1]}, [("N", 3, 4, 4)], "every axis"),
    ("Pad", {"pads": [0, 0, 4, 0, 0, 0, 0, 0], "mode": "reflect"}, [("N", 3, 4, 4)], "reflect"),
    ("Pad", {"pads": [1, 0, 0, 0, 0, 0, 0, 0]}, [("N", 3, 4, 4)], "symbolic"),
    ("PRelu", {}, [("N", 3, 4, 4), (4, 1, 1)], "broadcast"),
    ("Softmax", {"axis": 2}, [("N", 10)], "axis"),
    ("Gemm", {}, [("N", 5), (4, 3)], "inner dimensions"),
    ("Gemm", {"transB": 1}, [("N", 5), (3, 5), (4,)], "C must broadcast to the output"),
    ("BatchNormalization", {}, [("N", 3, 4, 4), (3,), (3,), (4,), (3,)], "mean"),
    ("Concat", {"axis": 1}, [("N", 3, 4, 4), ("N", 3, 5, 4)], "agree"),
    ("Concat", {"axis": 0}, [("N", 3), ("N", 3)], "symbolic"),
    ("Reshape", {"shape": [0, 7]}, [("N", 12)], "number of elements"),
    ("Reshape", {"shape": [5, -1]}, [(2, 12)], "divide"),
    ("Flatten", {"axis": 5}, [("N", 3, 4)], "axis"),
    ("Add", {}, [("N", 3, 4), ("N", 2, 4)], "broadcast"),
    ("Mul", {}, [("N", 3, 4), (5,)], "broadcast"),
    ("ConvTranspose", {}, [("N", 3, 8, 8), (4, 2, 3, 3)], "input channels"),
    ("ConvTranspose", {"group": 2}, [("N", 3, 8, 8), (3, 2, 3, 3)], "divisible by group"),
    ("ConvTranspose", {}, [("N", 3, 4, 4), (3, 2, 3, 3), (3,)], "bias"),
    ("ConvTranspose", {"pads": [2, 2, 2, 2]}, [("N", 3, 2, 2), (3, 2, 2, 2)], "crop away"),
    ("ConvTranspose", {"output_shape": [20, 20]}, [("N", 3, 4, 4), (3, 2, 3, 3)], "negative pads"),
])
def test_shape_errors_name_the_layer_and_values(op_type, attrs, in_shapes, match):
    op = REGISTRY[op_type](attrs, name="layer7")
    with pytest.raises(ModelDefinitionError, match=match) as info:
        op.infer_shapes(in_shapes)
    assert "Layer 'layer7'" in str(info.value) and "Received:" in str(info.value)


@pytest.mark.parametrize("op_type,attrs,match", [
    ("Clip", {"min": 2.0, "max": 1.0}, "min must not exceed max"),
    ("LeakyRelu", {"alpha": "x"}, "number"),
    ("Pad", {"pads": [0, 0, 1]}, "even number"),
    ("Pad", {"pads": [0] * 8, "mode": "wrap"}, "mode"),
    ("MaxPool", {}, "kernel_shape"),
    ("MaxPool", {"kernel_shape": [2, 2], "auto_pad": "SAME"}, "auto_pad"),
    ("AveragePool", {"kernel_shape": [2, 2], "pads": [1, 1]}, "four"),
    ("Gemm", {"transA": 2}, "transA"),
    ("BatchNormalization", {"epsilon": 0}, "epsilon"),
    ("Dropout", {"ratio": 1.0}, "ratio"),
    ("Reshape", {"shape": [-1, -1]}, "at most one -1"),
    ("Relu", {"alpha": 1}, "unknown attribute"),
    ("ConvTranspose", {"output_padding": [1, 1]}, "smaller than its stride or its dilation"),
    ("ConvTranspose", {"output_shape": [4]}, "output_shape"),
    ("ConvTranspose", {"auto_pad": "SAME_UPPER", "pads": [1, 1, 1, 1]}, "together"),
])
def test_attribute_errors_name_the_layer_and_values(op_type, attrs, match):
    with pytest.raises(ModelDefinitionError, match=match) as info:
        REGISTRY[op_type](attrs, name="layer3")
    assert "Layer 'layer3'" in str(info.value) and "Received:" in str(info.value)
