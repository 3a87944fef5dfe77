"""Graph rewrites in ``frontend.to_relax``: ONNX ``Sum`` as adds, per-channel affine ops folded into convs.

Each model is built with onnx.helper, compiled for the host and checked against onnxruntime on
random data; the Relax module is inspected to see that the rewrite did (or did not) happen.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from edgecnn.compiler.tvm import frontend, pipelines
from edgecnn.targets import get_preset, isa

RTOL = ATOL = 1e-4


def _model(nodes, inputs, output_shape, initializers=()):
    graph = helper.make_graph(
        nodes, "rewrites",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _ops(mod) -> list[str]:
    names = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            names.append(expr.op.name)

    relax.analysis.post_order_visit(mod["main"], visit)
    return names


def _check_against_onnxruntime(model, feeds):
    mod = frontend.to_relax(model)
    executable, _ = pipelines.build(mod, get_preset("host"))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(feeds[i.name]) for i in model.graph.input]).numpy()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(["y"], feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    return mod


def test_sum_becomes_adds_with_broadcasting():
    shapes = {"a": [1, 16, 6, 6], "b": [1, 16, 1, 1], "c": [16, 6, 6]}
    model = _model([helper.make_node("Sum", list(shapes), ["y"])], shapes.items(), [1, 16, 6, 6])
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    ops = _ops(_check_against_onnxruntime(model, feeds))
    assert "relax.stack" not in ops and ops.count("relax.add") == 2, ops


def test_sum_of_one_input_is_that_input():
    model = _model([helper.make_node("Sum", ["a"], ["y"])], [("a", [1, 4, 3, 3])], [1, 4, 3, 3])
    feeds = {"a": np.random.default_rng(1).standard_normal([1, 4, 3, 3]).astype(np.float32)}
    assert "relax.stack" not in _ops(_check_against_onnxruntime(model, feeds))


def _conv_bn_initializers(rng, cin, cout, groups=1):
    return [("w", rng.standard_normal([cout, cin // groups, 3, 3])), ("bias", rng.standard_normal([cout])),
            ("gamma", rng.uniform(0.5, 2.0, cout)), ("beta", rng.standard_normal(cout)),
            ("mean", rng.standard_normal(cout)), ("var", rng.uniform(0.1, 3.0, cout))]


@pytest.mark.parametrize("groups", [1, 4])
def test_batchnorm_after_conv_folds_into_its_weights(groups):
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["x", "w", "bias"], ["c"], pads=[1, 1, 1, 1], group=groups),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-3),
             helper.make_node("Relu", ["bn"], ["y"])]
    model = _model(nodes, [("x", [1, 8, 10, 10])], [1, 16, 10, 10], _conv_bn_initializers(rng, 8, 16, groups))
    mod = _check_against_onnxruntime(model, {"x": rng.standard_normal([1, 8, 10, 10]).astype(np.float32)})
    ops = _ops(mod)
    # conv, one bias add, relu: the BatchNorm's subtract/divide/multiply/add are in the weights
    assert sorted(ops) == ["relax.add", "relax.nn.conv2d", "relax.nn.relu"], ops


def test_affine_ops_with_constant_on_the_left_fold_too():
    rng = np.random.default_rng(3)
    scale, shift = rng.uniform(0.5, 2, [1, 6, 1, 1]), rng.standard_normal([6, 1, 1])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Mul", ["scale", "c"], ["m"]),
             helper.make_node("Sub", ["shift", "m"], ["y"])]  # shift - scale * conv: a negated scale
    model = _model(nodes, [("x", [1, 3, 7, 7])], [1, 6, 5, 5],
                   [("w", rng.standard_normal([6, 3, 3, 3])), ("scale", scale), ("shift", shift)])
    ops = _ops(_check_against_onnxruntime(model, {"x": rng.standard_normal([1, 3, 7, 7]).astype(np.float32)}))
    assert sorted(ops) == ["relax.add", "relax.nn.conv2d"], ops


@pytest.mark.parametrize("case", ["conv result used twice", "constant varies over space"])
def test_affine_ops_that_cannot_fold_are_kept(case):
    rng = np.random.default_rng(4)
    if case == "conv result used twice":  # the unscaled conv is needed as well
        tail = [helper.make_node("Mul", ["c", "scale"], ["m"]), helper.make_node("Add", ["m", "c"], ["y"])]
        scale = rng.standard_normal([1, 6, 1, 1])
    else:
        tail = [helper.make_node("Mul", ["c", "scale"], ["y"])]
        scale = rng.standard_normal([1, 1, 5, 5])
    model = _model([helper.make_node("Conv", ["x", "w"], ["c"]), *tail], [("x", [1, 3, 7, 7])], [1, 6, 5, 5],
                   [("w", rng.standard_normal([6, 3, 3, 3])), ("scale", scale)])
    ops = _ops(_check_against_onnxruntime(model, {"x": rng.standard_normal([1, 3, 7, 7]).astype(np.float32)}))
    assert "relax.multiply" in ops, ops


def test_dropout_is_removed_at_inference():
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Dropout", ["c"], ["d"], seed=1),
             helper.make_node("Relu", ["d"], ["y"])]
    model = _model(nodes, [("x", [1, 3, 7, 7])], [1, 6, 5, 5], [("w", rng.standard_normal([6, 3, 3, 3]))])
    ops = _ops(_check_against_onnxruntime(model, {"x": rng.standard_normal([1, 3, 7, 7]).astype(np.float32)}))
    assert "relax.nn.dropout" not in ops and "relax.nn.relu" in ops, ops


def test_output_channels_the_block_does_not_divide_are_padded_to_whole_blocks():
    # 72 = 4.5 blocks of 16: computed as 80 channels (8 on zero weights), sliced back to 72
    from edgecnn.compiler.tvm.schedules import cpu

    if isa.host_vector_lanes() < 8:
        pytest.skip("this CPU has no AVX2: the x86-64-avx2 preset's code cannot run here")
    preset = get_preset("x86-64-avx2")
    assert cpu.channel_block(preset.target()) == 16
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    model = _model(nodes, [("x", [1, 16, 9, 9])], [1, 72, 9, 9],
                   [("w", rng.standard_normal([72, 16, 3, 3])), ("b", rng.standard_normal([72]))])
    feeds = {"x": rng.standard_normal([1, 16, 9, 9]).astype(np.float32)}
    executable, lowered = pipelines.build(frontend.to_relax(model), preset)
    conv_outputs = [[int(d) for d in f.params[-1].shape] for g, f in lowered.functions_items()
                    if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in g.name_hint]
    assert conv_outputs == [[1, 5, 9, 9, 16]], conv_outputs
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(feeds["x"])).numpy()
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    assert not cpu.padded_out_channels(40, 8, 16)  # 8 of 40 would be 20% wasted: narrower block


@pytest.mark.parametrize("in_features,out_features", [(256, 40), (100, 7), (1000, 64)])
def test_batch1_dense_runs_as_gemv_over_weight_rows(in_features, out_features):
    from edgecnn.compiler.tvm.schedules import cpu

    rng = np.random.default_rng(in_features)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1), helper.make_node("Relu", ["g"], ["y"])]
    model = _model(nodes, [("x", [1, in_features])], [1, out_features],
                   [("w", rng.standard_normal([out_features, in_features])), ("b", rng.standard_normal(out_features))])
    feeds = {"x": rng.standard_normal([1, in_features]).astype(np.float32)}
    _check_against_onnxruntime(model, feeds)
    _, lowered = pipelines.build(frontend.to_relax(model), get_preset("host"))
    rules = {g.name_hint: cpu.rule_of(f) for g, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    assert [r for n, r in rules.items() if "gemv" in n] == ["Gemv"], rules
