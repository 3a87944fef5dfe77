"""ONNX import: every supported op across opsets (with the spec's attribute defaults) against
onnx's ReferenceEvaluator, constants, removed inference no-ops, old-style models, and errors.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgecnn.compiler import numpy_backend, onnx_io
from edgecnn.compiler.errors import ModelDefinitionError, UnsupportedOpError
from edgecnn.compiler.ops import REGISTRY
from edgecnn.runtime.errors import InputError

RTOL = ATOL = 1e-5


def make_model(nodes, inputs, outputs, inits=(), opset=17, ir_version=None, check=True):
    """inputs/outputs: (name, shape) pairs (float32); inits: name -> array."""
    ir_version = ir_version or (3 if opset < 7 else helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    declared = {n for n, _ in inputs}
    if ir_version < 4:  # IR 3 lists every initializer among the graph inputs
        inputs = list(inputs) + [(k, list(np.shape(v))) for k, v in dict(inits).items() if k not in declared]
    graph = helper.make_graph(
        nodes, "case",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT if n in declared or np.asarray(
            dict(inits)[n]).dtype == np.float32 else TensorProto.INT64, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def reference_outputs(model, feeds):
    """onnxruntime's outputs; onnx's ReferenceEvaluator where onnxruntime cannot load the model.

    onnxruntime comes first because the ReferenceEvaluator's BatchNormalization-9 disagrees with
    the spec's formula (and with onnxruntime) in onnx 1.23.
    """
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # an opset or IR version this onnxruntime does not run
        return ReferenceEvaluator(model).run(None, feeds)
    return session.run(None, feeds)


def compare_with_reference(model, feeds, rtol=RTOL, atol=ATOL):
    graph = onnx_io.import_model(model)
    got = numpy_backend.run(graph, feeds)
    want = reference_outputs(model, feeds)
    for out, ref in zip([o.name for o in model.graph.output], want):
        assert got[out].shape == ref.shape, out
        assert got[out].dtype == np.float32
        np.testing.assert_allclose(got[out], ref, rtol=rtol, atol=atol)
    return graph


def node(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), name=f"{op.lower()}_node", **attrs)


R = np.random.default_rng(7)
X = R.standard_normal((2, 4, 9, 9)).astype(np.float32)
W3 = (R.standard_normal((6, 4, 3, 3)) * 0.3).astype(np.float32)
W2 = (R.standard_normal((6, 4, 2, 2)) * 0.3).astype(np.float32)
WG = (R.standard_normal((8, 2, 3, 3)) * 0.3).astype(np.float32)
B6 = R.standard_normal(6).astype(np.float32)
XV = R.standard_normal((3, 10)).astype(np.float32)
FC = (R.standard_normal((10, 5)) * 0.3).astype(np.float32)
C4 = R.standard_normal(4).astype(np.float32)
VAR4 = R.uniform(0.5, 1.5, 4).astype(np.float32)
I64 = np.int64
S9 = R.uniform(0.5, 1.5, 9).astype(np.float32)
WT = (R.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)  # ConvTranspose: (C_in, C_out / group, KH, KW)
WTG = (R.standard_normal((4, 3, 2, 2)) * 0.3).astype(np.float32)


def conv(opset=11, w=W3, **attrs):
    inits = {"w": w, "b": np.resize(B6, w.shape[0]).astype(np.float32)}
    return (node("Conv", ["x", "w", "b"], **attrs), inits, opset)


#: case id -> (node, initializers, opset); input is X (2, 4, 9, 9) unless the id starts with "vec"
CASES = {
    "Conv-defaults-opset1": conv(1),
    "Conv-pads-strides-dilations": conv(11, pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]),
    "Conv-same-upper-stride2": conv(11, W2, auto_pad="SAME_UPPER", strides=[2, 2]),
    "Conv-same-lower-stride2": conv(11, W2, auto_pad="SAME_LOWER", strides=[2, 2]),
    "Conv-valid": conv(11, auto_pad="VALID"),
    "Conv-group": conv(11, WG, group=2, pads=[1, 1, 1, 1]),
    "Conv-opset22": conv(22, pads=[1, 1, 1, 1]),
    "Conv-no-bias": (node("Conv", ["x", "w"], kernel_shape=[3, 3]), {"w": W3}, 13),
    "MaxPool-defaults-opset8": (node("MaxPool", ["x"], kernel_shape=[3, 3]), {}, 8),
    "MaxPool-ceil-pads-opset12": (node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                       ceil_mode=1), {}, 12),
    "MaxPool-dilations": (node("MaxPool", ["x"], kernel_shape=[2, 2], dilations=[2, 2]), {}, 12),
    "MaxPool-same-upper": (node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
                           {}, 12),
    "AveragePool-exclude-pad": (node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
                                     pads=[1, 1, 1, 1]), {}, 11),
    "AveragePool-include-pad": (node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 0, 1, 0],
                                     count_include_pad=1), {}, 7),
    "AveragePool-same-lower-ceil": (node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2],
                                         auto_pad="SAME_LOWER"), {}, 19),
    "GlobalAveragePool": (node("GlobalAveragePool", ["x"]), {}, 1),
    "GlobalMaxPool": (node("GlobalMaxPool", ["x"]), {}, 1),
    "BatchNormalization-opset9": (node("BatchNormalization", ["x", "s", "b", "m", "v"]),
                                  {"s": C4, "b": C4[::-1].copy(), "m": C4 * 0.5, "v": VAR4}, 9),
    "BatchNormalization-opset15-eps": (node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=0.1),
                                       {"s": C4, "b": C4, "m": C4, "v": VAR4}, 15),
    "Relu": (node("Relu", ["x"]), {}, 14),
    "Sigmoid": (node("Sigmoid", ["x"]), {}, 13),
    "Tanh": (node("Tanh", ["x"]), {}, 6),
    "LeakyRelu-default": (node("LeakyRelu", ["x"]), {}, 16),
    "Elu-default": (node("Elu", ["x"]), {}, 6),
    "Selu-default": (node("Selu", ["x"]), {}, 6),
    "HardSigmoid-default": (node("HardSigmoid", ["x"]), {}, 6),
    "HardSigmoid-alpha": (node("HardSigmoid", ["x"], alpha=0.3, beta=0.4), {}, 22),
    "HardSwish": (node("HardSwish", ["x"]), {}, 14),
    "PRelu-per-channel": (node("PRelu", ["x", "slope"]), {"slope": C4.reshape(4, 1, 1)}, 16),
    "Clip-attrs-opset6": (node("Clip", ["x"], min=-0.5, max=0.5), {}, 6),
    "Clip-default-opset6": (node("Clip", ["x"]), {}, 6),
    "Clip-inputs-opset11": (node("Clip", ["x", "lo", "hi"]), {"lo": np.float32(-0.2), "hi": np.float32(0.3)}, 11),
    "Clip-max-only-opset13": (node("Clip", ["x", "", "hi"]), {"hi": np.float32(0.1)}, 13),
    "Clip-min-only-opset13": (node("Clip", ["x", "lo"]), {"lo": np.float32(0.0)}, 13),
    "Pad-attrs-opset2": (node("Pad", ["x"], pads=[0, 0, 1, 2, 0, 0, 2, 1], value=0.5), {}, 2),
    "Pad-reflect-opset11": (node("Pad", ["x", "pads"], mode="reflect"),
                            {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], I64)}, 11),
    "Pad-value-opset13": (node("Pad", ["x", "pads", "v"]),
                          {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], I64), "v": np.float32(-1.5)}, 13),
    "Pad-edge-opset18": (node("Pad", ["x", "pads"], mode="edge"),
                         {"pads": np.array([0, 0, 2, 0, 0, 0, 0, 3], I64)}, 18),
    "Add-broadcast": (node("Add", ["x", "c"]), {"c": C4.reshape(1, 4, 1, 1)}, 14),
    "Mul-broadcast": (node("Mul", ["x", "c"]), {"c": C4.reshape(4, 1, 1)}, 7),
    "Sum-three-broadcast": (node("Sum", ["x", "c", "x"]), {"c": C4.reshape(4, 1, 1)}, 8),
    "Sum-opset6": (node("Sum", ["x", "x"]), {}, 6),
    "Concat-with-constant": (node("Concat", ["x", "c"], axis=1), {"c": X[:, :2] * 2}, 4),
    "Concat-negative-axis": (node("Concat", ["x", "x"], axis=-1), {}, 13),
    "Flatten-axis2": (node("Flatten", ["x"], axis=2), {}, 13),
    "Flatten-default-opset1": (node("Flatten", ["x"]), {}, 1),
    "Reshape-zero-minus-one-opset5": (node("Reshape", ["x", "s"]), {"s": np.array([0, 4, -1], I64)}, 5),
    "Reshape-opset14": (node("Reshape", ["x", "s"]), {"s": np.array([0, -1, 9], I64)}, 14),
    "Softmax-default-axis-opset13": (node("Softmax", ["x"]), {}, 13),
    "Softmax-axis1-opset13": (node("Softmax", ["x"], axis=1), {}, 13),
    "LogSoftmax-default-axis-opset13": (node("LogSoftmax", ["x"]), {}, 13),
    "vec-Softmax-opset11": (node("Softmax", ["x"]), {}, 11),
    "vec-LogSoftmax-opset9-last-axis": (node("LogSoftmax", ["x"], axis=1), {}, 9),
    "vec-Gemm-defaults": (node("Gemm", ["x", "w", "c"]), {"w": FC, "c": C4[:1]}, 13),
    "vec-Gemm-transB-alpha-beta": (node("Gemm", ["x", "w", "c"], transB=1, alpha=0.5, beta=2.0),
                                   {"w": FC.T.copy(), "c": np.resize(C4, 5).astype(np.float32)}, 11),
    "vec-Gemm-no-bias-opset11": (node("Gemm", ["x", "w"]), {"w": FC}, 11),
    "vec-Gemm-opset7-bias-row": (node("Gemm", ["x", "w", "c"]), {"w": FC, "c": np.ones((1, 5), np.float32)}, 7),
    # arithmetic, reductions and normalization
    "Sub-constant-minuend-opset7": (node("Sub", ["c", "x"]), {"c": C4.reshape(4, 1, 1)}, 7),
    "Div-by-constant-opset14": (node("Div", ["x", "v"]), {"v": VAR4.reshape(1, 4, 1, 1)}, 14),
    "Pow-constant-exponent-opset7": (node("Pow", ["x", "p"]), {"p": np.float32(2.0)}, 7),
    "Pow-int64-exponent-opset15": (node("Pow", ["x", "p"]), {"p": np.array([3], I64)}, 15),
    "Pow-exponent-tensor-opset13": (node("Pow", ["v", "x"]), {"v": VAR4.reshape(4, 1, 1)}, 13),
    "Sqrt-opset13": (node("Sqrt", ["x"]), {}, 13),
    "Reciprocal-opset6": (node("Reciprocal", ["x"]), {}, 6),
    "Erf-opset9": (node("Erf", ["x"]), {}, 9),
    "Gelu-opset20": (node("Gelu", ["x"]), {}, 20),
    "Gelu-tanh-opset21": (node("Gelu", ["x"], approximate="tanh"), {}, 21),
    "ReduceMean-head-opset13": (node("ReduceMean", ["x"], axes=[2, 3], keepdims=0), {}, 13),
    "ReduceMean-head-opset18": (node("ReduceMean", ["x", "axes"], keepdims=0), {"axes": np.array([2, 3], I64)}, 18),
    "ReduceMean-default-axes-opset11": (node("ReduceMean", ["x"]), {}, 11),
    "ReduceSum-attribute-opset11": (node("ReduceSum", ["x"], axes=[-1, 1]), {}, 11),
    "ReduceSum-axes-input-opset13": (node("ReduceSum", ["x", "axes"], keepdims=0), {"axes": np.array([1], I64)}, 13),
    "ReduceSum-noop-empty-axes-opset13": (node("ReduceSum", ["x"], noop_with_empty_axes=1), {}, 13),
    "ReduceMax-opset13": (node("ReduceMax", ["x"], axes=[-1]), {}, 13),
    "ReduceMin-axes-input-opset18": (node("ReduceMin", ["x", "axes"], keepdims=0), {"axes": np.array([1], I64)}, 18),
    "LayerNormalization-opset17": (node("LayerNormalization", ["x", "s", "b"]), {"s": S9, "b": S9[::-1].copy()}, 17),
    "LayerNormalization-no-bias-two-axes": (node("LayerNormalization", ["x", "s"], axis=2, epsilon=1e-3),
                                            {"s": np.resize(S9, (9, 9)).astype(np.float32)}, 18),
    # layout ops and MatMul (a Split's other outputs are left unused)
    "MatMul-constant-opset13": (node("MatMul", ["x", "w"]), {"w": FC[:9]}, 13),
    "MatMul-broadcast-opset9": (node("MatMul", ["x", "w"]), {"w": np.resize(FC, (4, 9, 3)).astype(np.float32)}, 9),
    "vec-MatMul-vector-opset1": (node("MatMul", ["x", "v"]), {"v": FC[:, 0].copy()}, 1),
    "Transpose-default-opset1": (node("Transpose", ["x"]), {}, 1),
    "Transpose-nhwc-opset13": (node("Transpose", ["x"], perm=[0, 2, 3, 1]), {}, 13),
    "Slice-attrs-opset1": (node("Slice", ["x"], starts=[1, -3], ends=[100, -1], axes=[1, 3]), {}, 1),
    "Slice-steps-opset10": (node("Slice", ["x", "st", "en", "ax", "sp"]),
                            {"st": np.array([0, 8], I64), "en": np.array([9, 0], I64), "ax": np.array([2, 3], I64),
                             "sp": np.array([2, -3], I64)}, 10),
    "Slice-reverse-opset13": (node("Slice", ["x", "st", "en", "ax", "sp"]),
                              {"st": np.array([-1], I64), "en": np.array([-2**63], I64), "ax": np.array([-1], I64),
                               "sp": np.array([-2], I64)}, 13),
    "Split-attr-opset11": (node("Split", ["x"], ("y", "rest"), axis=-1, split=[4, 5]), {}, 11),
    "Split-input-opset13": (node("Split", ["x", "s"], ("rest", "y"), axis=2), {"s": np.array([3, 6], I64)}, 13),
    "Split-equal-opset13": (node("Split", ["x"], ("y", "rest"), axis=1), {}, 13),
    "Split-num-outputs-uneven-opset18": (node("Split", ["x"], ("rest", "y"), axis=3, num_outputs=2), {}, 18),
    "Squeeze-no-size-1-axes-opset13": (node("Squeeze", ["x"]), {}, 13),
    "Unsqueeze-attr-opset11": (node("Unsqueeze", ["x"], axes=[-1, 0]), {}, 11),
    "Unsqueeze-input-opset13": (node("Unsqueeze", ["x", "a"]), {"a": np.array([2], I64)}, 13),
    # transposed convolution and more elementwise ops
    "ConvTranspose-pytorch-form-opset11": (node("ConvTranspose", ["x", "w", "b"], strides=[2, 2], pads=[1, 1, 1, 1],
                                                output_padding=[1, 1]), {"w": WT, "b": B6[:3].copy()}, 11),
    "ConvTranspose-group-dilated-no-bias-opset1": (node("ConvTranspose", ["x", "w"], group=2, strides=[3, 2],
                                                        dilations=[1, 2]), {"w": WTG}, 1),
    "ConvTranspose-output-shape-opset13": (node("ConvTranspose", ["x", "w", "b"], strides=[2, 2], output_shape=[18, 19]),
                                           {"w": WT, "b": B6[:3].copy()}, 13),
    "ConvTranspose-same-lower-opset22": (node("ConvTranspose", ["x", "w"], auto_pad="SAME_LOWER", strides=[2, 3]),
                                         {"w": WT[:, :, :2].copy()}, 22),
    "ConvTranspose-same-upper-stride1-opset9": (node("ConvTranspose", ["x", "w"], auto_pad="SAME_UPPER"),
                                                {"w": WT[:, :, :2].copy()}, 9),
    "Exp-opset13": (node("Exp", ["x"]), {}, 13),
    "Log-opset6": (node("Log", ["x"]), {}, 6),  # nan for the negative half, as the reference
    "Neg-opset6": (node("Neg", ["x"]), {}, 6),
    "Abs-opset13": (node("Abs", ["x"]), {}, 13),
    "Softplus-opset1": (node("Softplus", ["x"]), {}, 1),
    "Softsign-opset21": (node("Softsign", ["x"]), {}, 21),
}


def _model_of(case):
    n, inits, opset = CASES[case]
    x = XV if case.startswith("vec-") else X
    tmp = make_model([n], [("x", list(x.shape))], [("y", None)], inits, opset, check=False)
    inferred = onnx.shape_inference.infer_shapes(tmp)
    out_shape = [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    return make_model([n], [("x", list(x.shape))], [("y", out_shape)], inits, opset), x


@pytest.mark.parametrize("case", sorted(CASES))
def test_single_op_matches_the_reference_evaluator(case):
    model, x = _model_of(case)
    graph = compare_with_reference(model, {"x": x})
    # constants an op consumes as attributes (Clip bounds, Pad pads, Reshape shape) are not parameters
    referenced = {i for n in graph.nodes for i in n.inputs}
    assert set(graph.params) <= referenced


def test_every_registered_op_is_imported_by_some_case():
    covered = {CASES[c][0].op_type for c in CASES} | {"Dropout"}  # Dropout: removed on import, tested below
    # quantized ops: imported from onnxruntime-quantized files in tests/compiler/test_quantize.py
    missing = sorted({k for k, cls in REGISTRY.items() if cls.differentiable} - covered)
    assert not missing, f"add import cases for {missing} to CASES"


def test_consumed_constants_are_not_parameters():
    model, _ = _model_of("Pad-reflect-opset11")
    assert onnx_io.import_model(model).params == {}
    model, _ = _model_of("Clip-inputs-opset11")
    assert onnx_io.import_model(model).params == {}
    model, _ = _model_of("Reshape-opset14")
    assert onnx_io.import_model(model).params == {}
    model, _ = _model_of("Conv-group")
    assert sorted(onnx_io.import_model(model).params) == ["b", "w"]


def test_constant_nodes_of_every_value_form():
    nodes = [
        helper.make_node("Constant", [], ["shape"], value_ints=[0, -1]),
        helper.make_node("Constant", [], ["scale"], value_float=0.5),
        helper.make_node("Constant", [], ["shift"], value=numpy_helper.from_array(C4.reshape(1, 4, 1, 1))),
        helper.make_node("Constant", [], ["bias"], value_floats=[1.0, 2.0, 3.0, 4.0]),
        helper.make_node("Mul", ["x", "scale"], ["m"]),
        helper.make_node("Add", ["m", "shift"], ["a"]),
        helper.make_node("Reshape", ["a", "shape"], ["flat"]),
        helper.make_node("Constant", [], ["lo"], value=numpy_helper.from_array(np.float32(-0.1))),
        helper.make_node("Clip", ["flat", "lo"], ["y"]),
    ]
    model = make_model(nodes, [("x", [2, 4, 9, 9])], [("y", [2, 324])], opset=13)
    graph = compare_with_reference(model, {"x": X})
    assert [n.op_type for n in graph.nodes] == ["Mul", "Add", "Reshape", "Clip"]
    assert sorted(graph.params) == ["scale", "shift"]  # "bias" is unused; shape and lo are attributes


def test_identity_and_dropout_are_removed_and_output_names_kept():
    nodes = [
        helper.make_node("Identity", ["x"], ["x_id"], name="id0"),
        helper.make_node("Relu", ["x_id"], ["r"], name="relu"),
        helper.make_node("Dropout", ["r", "ratio"], ["d"], name="drop"),
        helper.make_node("Identity", ["d"], ["d_id"], name="id1"),
        helper.make_node("Conv", ["d_id", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Identity", ["c"], ["y"], name="id_out"),
        helper.make_node("Dropout", ["r"], ["z"], name="drop_out"),
    ]
    model = make_model(nodes, [("x", [2, 4, 9, 9])], [("y", [2, 6, 9, 9]), ("z", [2, 4, 9, 9])],
                       {"w": W3, "ratio": np.float32(0.3)}, opset=13)
    graph = compare_with_reference(model, {"x": X})
    assert [n.op_type for n in graph.nodes] == ["Relu", "Conv"]
    assert graph.outputs == ["y", "z"]
    assert graph.node("relu").outputs == ["z"] and graph.node("relu").inputs == ["x"]
    assert graph.node("conv").outputs == ["y"] and graph.node("conv").inputs == ["z", "w"]
    assert sorted(graph.params) == ["w"]


def test_identity_of_a_graph_input_as_output_is_reported():
    nodes = [helper.make_node("Identity", ["x"], ["y"], name="passthrough")]
    model = make_model(nodes, [("x", [1, 4, 9, 9])], [("y", [1, 4, 9, 9])])
    with pytest.raises(UnsupportedOpError, match="graph output 'y' passes 'x'"):
        onnx_io.import_model(model)


def test_dropout_mask_output_is_unsupported():
    nodes = [helper.make_node("Dropout", ["x"], ["y", "mask"], name="drop")]
    model = make_model(nodes, [("x", [1, 4])], [("y", [1, 4]), ("mask", [1, 4])], opset=9, check=False)
    model.graph.output[1].type.tensor_type.elem_type = TensorProto.BOOL
    with pytest.raises(UnsupportedOpError, match="drop.*mask"):
        onnx_io.import_model(model)


def test_old_onnx_with_initializers_listed_as_inputs():
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    model = make_model(nodes, [("x", [2, 4, 9, 9]), ("w", [6, 4, 3, 3]), ("b", [6])], [("y", [2, 6, 9, 9])],
                       {"w": W3, "b": B6}, opset=7, ir_version=3)
    graph = compare_with_reference(model, {"x": X})
    assert [s.name for s in graph.inputs] == ["x"]
    assert sorted(graph.params) == ["b", "w"]


def test_initializer_disagreeing_with_its_input_declaration():
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"])], [("x", [2, 4, 9, 9]), ("w", [6, 4, 5, 5])],
                       [("y", None)], {"w": W3}, opset=7, ir_version=3, check=False)
    with pytest.raises(InputError, match=r"initializer 'w' has shape \(6, 4, 3, 3\).*\(6, 4, 5, 5\)"):
        onnx_io.import_model(model)


def test_constant_folding_uses_the_ops_own_forward():
    # An exporter that leaves a weight transform in the graph: w_eff = w * 0.5 feeds the Conv.
    nodes = [helper.make_node("Mul", ["w", "half"], ["w_eff"], name="scale_w"),
             helper.make_node("Conv", ["x", "w_eff"], ["y"], name="conv")]
    model = make_model(nodes, [("x", [2, 4, 9, 9])], [("y", [2, 6, 7, 7])], {"w": W3, "half": np.float32(0.5)})
    graph = compare_with_reference(model, {"x": X})
    assert [n.op_type for n in graph.nodes] == ["Conv"]
    np.testing.assert_array_equal(graph.params["w_eff"], W3 * np.float32(0.5))


def test_unnamed_and_duplicate_node_names_become_unique():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["a"], ["b"], name="n"),
             helper.make_node("Tanh", ["b"], ["y"], name="n")]
    model = make_model(nodes, [("x", [1, 4])], [("y", [1, 4])])
    graph = compare_with_reference(model, {"x": XV[:1, :4]})
    names = [n.name for n in graph.nodes]
    assert len(set(names)) == 3 and all(names)


def test_symbolic_and_unknown_batch_dimensions():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = make_model(nodes, [("x", ["batch", 4, 9, 9])], [("y", ["batch", 4, 9, 9])])
    graph = onnx_io.import_model(model)
    assert graph.inputs[0].shape == ("batch", 4, 9, 9)
    model.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    graph = onnx_io.import_model(model)
    assert isinstance(graph.inputs[0].shape[0], str)
    for batch in (1, 5):
        x = R.standard_normal((batch, 4, 9, 9)).astype(np.float32)
        np.testing.assert_array_equal(numpy_backend.run(graph, {"x": x})["y"], np.maximum(x, 0))


def test_two_inputs_two_outputs():
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Mul", ["a", "b"], ["p"])]
    model = make_model(nodes, [("a", [2, 3]), ("b", [2, 3])], [("s", [2, 3]), ("p", [2, 3])])
    a, b = XV[:2, :3], XV[1:, 3:6]
    compare_with_reference(model, {"a": a, "b": b})


# -- everything unsupported, reported at once -------------------------------------------------
def test_unsupported_ops_are_all_reported_with_node_names_and_types():
    nodes = [helper.make_node("LRN", ["x"], ["l"], name="norm1", size=3),
             helper.make_node("Relu", ["l"], ["r"], name="relu1"),
             helper.make_node("Hardmax", ["r"], ["t"], name="swap"),
             helper.make_node("Round", ["t"], ["y"], name="rounding")]
    model = make_model(nodes, [("x", [1, 4, 9, 9])], [("y", [1, 4, 9, 9])])
    with pytest.raises(UnsupportedOpError) as err:
        onnx_io.import_model(model)
    message = str(err.value)
    for expected in ("node 'norm1' (LRN)", "node 'swap' (Hardmax)", "node 'rounding' (Round)"):
        assert expected in message
    assert "relu1" not in message
    assert "Supported ops:" in message and "Conv" in message
    assert err.value.op_types == ["Hardmax", "LRN", "Round"]


@pytest.mark.parametrize("attrs,match", [
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, "SAME.*stride 1.*strides=\\[2, 2\\]"),
    ({"output_shape": [18, 19], "strides": [2, 2]}, "output_shape.*even.*total pads=\\[1, 0\\]"),
])
def test_conv_transpose_forms_whose_meaning_changed_at_opset_11_are_refused_before(attrs, match):
    model = make_model([node("ConvTranspose", ["x", "w"], **attrs)], [("x", [2, 4, 9, 9])], [("y", None)],
                       {"w": WT}, opset=10, check=False)
    with pytest.raises(UnsupportedOpError, match="'convtranspose_node'.*opset 10.*" + match):
        onnx_io.import_model(model)


def test_conv_transpose_output_shape_with_even_pads_reads_alike_at_every_opset():
    for opset in (10, 11):
        model = make_model([node("ConvTranspose", ["x", "w"], strides=[2, 2], output_shape=[17, 19])],
                           [("x", [2, 4, 9, 9])], [("y", [2, 3, 17, 19])], {"w": WT}, opset=opset)
        compare_with_reference(model, {"x": X})


def test_configurations_ops_refuse_are_all_reported_too():
    # Two independent 1-D convolutions (the ops implement 2-D only) and a node downstream of them.
    w1 = np.zeros((2, 4, 3), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv_a"),
             helper.make_node("Conv", ["x", "w1"], ["b"], name="conv_b"),
             helper.make_node("Add", ["a", "b"], ["y"], name="join")]
    model = make_model(nodes, [("x", [1, 4, 9])], [("y", [1, 2, 7])], {"w1": w1})
    with pytest.raises(UnsupportedOpError) as err:
        onnx_io.import_model(model)
    message = str(err.value)
    assert "'conv_a'" in message and "'conv_b'" in message and "join" not in message


def test_old_opsets_are_upgraded_and_other_domains_refused():
    # opset 6 is older than Add's implemented semantics (7..) and than onnxruntime reads: the
    # version converter upgrades the model; the node of another domain is still refused by name
    nodes = [helper.make_node("Add", ["x", "x"], ["a"], name="old_add"),
             helper.make_node("Custom", ["a"], ["y"], name="mine", domain="com.example")]
    model = make_model(nodes, [("x", [1, 4])], [("y", [1, 4])], opset=6, check=False)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedOpError) as err:
        onnx_io.import_model(model)
    lo = REGISTRY["Add"].onnx_opsets[0]
    assert f"(opset {max(lo, onnx_io.ONNXRUNTIME_MIN_OPSET)})" in str(err.value)
    assert "old_add" not in str(err.value)
    assert "node 'mine' (com.example.Custom)" in str(err.value)


def test_an_upgraded_old_opset_model_computes_what_the_reference_evaluator_does():
    nodes = [helper.make_node("Add", ["x", "x"], ["y"], name="old_add")]
    model = make_model(nodes, [("x", [1, 4])], [("y", [1, 4])], opset=6, check=False)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    (want,) = ReferenceEvaluator(model).run(None, {"x": x})  # the model as stored, at opset 6
    got = numpy_backend.run(onnx_io.import_model(model), {"x": x})["y"]
    np.testing.assert_array_equal(got, want)


def test_non_float_input_is_reported():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 4])], [("y", [1, 4])])
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    with pytest.raises(UnsupportedOpError, match="graph input 'x' has element type INT64"):
        onnx_io.import_model(model)


# -- malformed files -------------------------------------------------------------------------
@pytest.fixture
def good_bytes():
    model, _ = _model_of("Conv-group")
    return model.SerializeToString()


def test_truncated_file(tmp_path, good_bytes):
    path = tmp_path / "cut.onnx"
    path.write_bytes(good_bytes[: len(good_bytes) // 2])
    with pytest.raises(InputError, match="truncated"):
        onnx_io.import_model(path)


@pytest.mark.parametrize("content", [b"", b"hello, this is a text file\n" * 3, np.arange(20).tobytes()])
def test_not_onnx_at_all(tmp_path, content):
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not .*ONNX|empty"):
        onnx_io.import_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        onnx_io.import_model(tmp_path / "nope.onnx")


def test_initializer_whose_data_disagrees_with_its_shape():
    model, _ = _model_of("Conv-group")
    w = next(t for t in model.graph.initializer if t.name == "w")
    w.dims[0] = 9  # raw data still holds 8 output channels
    with pytest.raises(InputError, match="initializer 'w' is malformed"):
        onnx_io.import_model(model)


def test_initializer_of_the_wrong_shape_for_its_op_names_the_layer():
    model, _ = _model_of("Conv-group")
    w = next(t for t in model.graph.initializer if t.name == "w")
    w.CopyFrom(numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w"))
    with pytest.raises(ModelDefinitionError, match="conv_node.*channels"):
        onnx_io.import_model(model)


def test_missing_graph_input():
    nodes = [helper.make_node("Add", ["x", "other"], ["y"], name="adder")]
    model = make_model(nodes, [("x", [1, 4])], [("y", [1, 4])], check=False)
    with pytest.raises(InputError, match="node 'adder' \\(Add\\) reads 'other'"):
        onnx_io.import_model(model)


def test_cycle():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Relu", ["a"], ["y"], name="out")]
    model = make_model(nodes, [("x", [1, 4])], [("y", [1, 4])], check=False)
    with pytest.raises(InputError, match="cycle.*'first' \\(Add\\).*'second' \\(Relu\\)") as err:
        onnx_io.import_model(model)
    assert "'out'" not in str(err.value)  # downstream of the cycle, not in it
