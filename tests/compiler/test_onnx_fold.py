"""Shape subgraphs folded on the ONNX graph (compiler/onnx_fold.py), checked against onnxruntime
running the original model, and through the NumPy backend as a user runs it."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.compiler.cli import main
from edgecnn.compiler.onnx_fold import fold_constant_subgraphs
from edgecnn.compiler.onnx_io import import_model


def _ort(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _channel_shuffle(batch):
    """PyTorch's channel shuffle as its exporter writes it: the view's sizes come from Shape."""
    c, groups = 6, 2
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, c, 4, 4])
    consts = {name: numpy_helper.from_array(np.asarray(v, np.int64), name) for name, v in
              {"i0": 0, "i1": 1, "i2": 2, "i3": 3, "g": [groups], "axes0": [0], "minus1": [-1]}.items()}
    nodes = [helper.make_node("Shape", ["x"], ["s"])]
    for k in range(4):
        nodes += [helper.make_node("Gather", ["s", f"i{k}"], [f"d{k}"], axis=0),
                  helper.make_node("Unsqueeze", [f"d{k}", "axes0"], [f"u{k}"])]
    nodes += [
        helper.make_node("Div", ["u1", "g"], ["per_group"]),
        helper.make_node("Concat", ["u0", "g", "per_group", "u2", "u3"], ["grouped"], axis=0),
        helper.make_node("Reshape", ["x", "grouped"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Concat", ["u0", "minus1", "u2", "u3"], ["flat"], axis=0),
        helper.make_node("Reshape", ["t", "flat"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "shuffle", [x], [y], initializer=list(consts.values()))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_static_channel_shuffle_folds_to_static_reshapes():
    model = _channel_shuffle(2)
    folded = fold_constant_subgraphs(model)
    assert [n.op_type for n in folded.graph.node] == ["Reshape", "Transpose", "Reshape"]
    onnx.checker.check_model(folded, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 6, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(_ort(folded, x), _ort(model, x))
    assert {t.name for t in folded.graph.initializer} == {"grouped", "flat"}  # the index constants went


def test_a_symbolic_batch_becomes_copy_the_batch_in_the_reshape_targets():
    model = _channel_shuffle("N")
    folded = fold_constant_subgraphs(model)
    assert [n.op_type for n in folded.graph.node] == ["Reshape", "Transpose", "Reshape"]
    targets = {t.name: numpy_helper.to_array(t).tolist() for t in folded.graph.initializer}
    assert sorted(targets.values()) == [[0, -1, 4, 4], [0, 2, 3, 4, 4]]
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 6, 4, 4)).astype(np.float32)
        np.testing.assert_array_equal(_ort(folded, x), _ort(model, x))
    graph = import_model(folded)
    assert graph.inputs[0].shape[0] == "N"


def test_a_symbolic_entry_that_is_not_the_batch_in_place_stays_computed():
    """Reshape to (H, N, ...) cannot say "copy" for N (it is not at the batch's position)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "N", 3])
    consts = [numpy_helper.from_array(np.asarray(v, np.int64), n) for n, v in
              {"i0": [0], "rest": [3], "two": [2]}.items()]
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
             helper.make_node("Concat", ["two", "n", "rest"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=consts),
                              opset_imports=[helper.make_opsetid("", 17)])
    folded = fold_constant_subgraphs(model)
    assert [n.op_type for n in folded.graph.node] == ["Shape", "Gather", "Concat", "Reshape"]


@pytest.mark.parametrize("batch", [2, "N"])
def test_a_flatten_written_as_view_of_its_own_size_imports(batch, tmp_path):
    """``x.view(x.size(0), -1)``, the classifier head of many hand-written CNNs."""
    torch = pytest.importorskip("torch", reason="PyTorch is an optional test peer (pip install torch==2.13.0)")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return self.fc(y.view(y.size(0), -1))

    torch.manual_seed(0)
    net, x = Net().eval(), torch.randn(2, 1, 8, 8)
    path = tmp_path / "view.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=13, input_names=["x"],
                      dynamic_axes={"x": {0: "N"}} if batch == "N" else None)
    if batch == "N":  # a static export has PyTorch fold the size itself
        assert "Shape" in {n.op_type for n in onnx.load(str(path)).graph.node}
    graph = import_model(path)
    assert "Shape" not in {n.op_type for n in graph.nodes}
    from edgecnn.compiler.numpy_backend import run

    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(next(iter(run(graph, {"x": x.numpy()}).values())), want, rtol=1e-5, atol=1e-5)


def test_the_callers_model_is_never_changed_and_nothing_to_fold_returns_it():
    model = _channel_shuffle(2)
    before = model.SerializeToString()
    fold_constant_subgraphs(model)
    assert model.SerializeToString() == before
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    plain = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    assert fold_constant_subgraphs(plain) is plain


def test_quantization_nodes_on_constants_keep_their_structure():
    w = numpy_helper.from_array(np.arange(-4, 4, dtype=np.int8).reshape(2, 4), "w_q")
    scale = numpy_helper.from_array(np.asarray(0.5, np.float32), "w_scale")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"]),
             helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)]
    model = helper.make_model(helper.make_graph(nodes, "qdq", [x], [y], initializer=[w, scale]),
                              opset_imports=[helper.make_opsetid("", 17)])
    assert fold_constant_subgraphs(model) is model


def test_a_constant_node_that_cannot_be_evaluated_stays_for_the_importer_to_name():
    a = numpy_helper.from_array(np.zeros((2, 3), np.float32), "a")
    b = numpy_helper.from_array(np.zeros((4, 5), np.float32), "b")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])
    nodes = [helper.make_node("MatMul", ["a", "b"], ["w"], name="bad_matmul"),
             helper.make_node("Add", ["x", "w"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=[a, b]),
                              opset_imports=[helper.make_opsetid("", 17)])
    assert fold_constant_subgraphs(model) is model
    with pytest.raises(Exception, match=r"bad_matmul"):
        import_model(model)


@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_a_traced_reflect_pad_runs_on_the_numpy_backend(dynamic_batch, tmp_path, capsys):
    """PyTorch writes F.pad(mode='reflect') as a Slice/Transpose/Cast subgraph on the pads."""
    torch = pytest.importorskip("torch", reason="PyTorch is an optional test peer (pip install torch==2.13.0)")

    class ReflectConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(torch.nn.functional.pad(x, (1, 2, 3, 0), mode="reflect"))

    torch.manual_seed(0)
    net = ReflectConv().eval()
    x = torch.randn(2, 3, 8, 8)
    path = tmp_path / "reflect.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=13, input_names=["x"],
                      dynamic_axes={"x": {0: "N"}} if dynamic_batch else None)
    assert "Slice" in {n.op_type for n in onnx.load(str(path)).graph.node}
    assert [n.op_type for n in import_model(path).nodes] == ["Pad", "Conv"]
    np.save(tmp_path / "x.npy", x.numpy())
    assert main(["run", str(path), "--backend", "numpy", "--input", str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "y.npz")]) == 0, capsys.readouterr().err
    with np.load(tmp_path / "y.npz") as out, torch.no_grad():
        np.testing.assert_allclose(out[out.files[0]], net(x).numpy(), rtol=1e-5, atol=1e-5)
