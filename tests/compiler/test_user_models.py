"""Models a user brings, run exactly as the README says: the onnx package's ``pytorch-converted``
cases (PyTorch's own exports: fixed batches, opset 6) and fixed-batch files through ``compile``.

The expected outputs are the ones the onnx package ships with each case (computed by PyTorch).
"""
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.compiler.cli import main
from edgecnn.compiler.tvm.frontend import pin_batch
from edgecnn.runtime.bundle import Bundle
from edgecnn.runtime.errors import InputError

CASES = Path(onnx.__file__).parent / "backend" / "test" / "data" / "pytorch-converted"

# The 2-D cases whose ops the IR implements, among them the opset-6 exports (BatchNormalization,
# Gemm, PRelu) that are upgraded with onnx's version converter and the fixed batches of 2.
NUMPY_CASES = [
    "test_AvgPool2d", "test_AvgPool2d_stride", "test_BatchNorm2d_eval", "test_BatchNorm2d_momentum_eval",
    "test_ConstantPad2d", "test_Conv2d", "test_Conv2d_depthwise", "test_Conv2d_depthwise_padded",
    "test_Conv2d_depthwise_strided", "test_Conv2d_depthwise_with_multiplier", "test_Conv2d_dilated",
    "test_Conv2d_groups", "test_Conv2d_groups_thnn", "test_Conv2d_no_bias", "test_Conv2d_padding",
    "test_Conv2d_strided", "test_ConvTranspose2d", "test_ConvTranspose2d_no_bias", "test_ELU", "test_GLU",
    "test_GLU_dim", "test_LeakyReLU", "test_LeakyReLU_with_negval", "test_Linear", "test_Linear_no_bias",
    "test_LogSoftmax", "test_MaxPool2d", "test_MaxPool2d_stride_padding_dilation", "test_PReLU_2d",
    "test_PReLU_2d_multiparam", "test_PixelShuffle", "test_PoissonNLLLLoss_no_reduce",
    "test_ReLU", "test_ReflectionPad2d", "test_ReplicationPad2d", "test_SELU", "test_Sigmoid", "test_Softmax",
    "test_Softmin", "test_Softplus", "test_Softsign",
    "test_Tanh", "test_ZeroPad2d", "test_log_softmax_dim3", "test_log_softmax_lastdim",
    "test_softmax_functional_dim3", "test_softmax_lastdim",
]
# Compiled for this CPU on first use: the fixed batch, the opset upgrade and the depthwise conv
# with a channel multiplier (it used to end in tvm.compile) on the TVM road.
TVM_CASES = ["test_BatchNorm2d_eval", "test_Conv2d_strided", "test_Linear", "test_PReLU_2d_multiparam",
             "test_Conv2d_depthwise_with_multiplier"]
# What the IR refuses, with the reason it gives: Embedding (a Gather of an integer model input) and
# the 1-D convolutions. The NumPy backend says so in one line (exit 2); TVM takes the ONNX file as
# it is, with onnxruntime as the reference of its golden data.
LACKING_CASES = {"test_Embedding": "unsupported op type", "test_Conv1d": "only 2-D"}


def _case(name):
    case = CASES / name
    if not case.is_dir():
        pytest.skip(f"the installed onnx package does not ship pytorch-converted/{name}")
    data = case / "test_data_set_0"
    x = numpy_helper.to_array(onnx.load_tensor(str(data / "input_0.pb")))
    want = numpy_helper.to_array(onnx.load_tensor(str(data / "output_0.pb")))
    return case / "model.onnx", x, want


def _run(capsys, tmp_path, model, x, backend):
    np.save(tmp_path / "x.npy", x)
    code = main(["run", str(model), "--backend", backend, "--input", str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "out.npz")])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_matches(tmp_path, want):
    with np.load(tmp_path / "out.npz") as outputs:
        assert len(outputs.files) == 1, outputs.files
        got = outputs[outputs.files[0]]
    assert got.shape == want.shape
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("name", NUMPY_CASES)
def test_pytorch_export_runs_on_the_numpy_backend(name, capsys, tmp_path):
    model, x, want = _case(name)
    code, _, err = _run(capsys, tmp_path, model, x, "numpy")
    assert code == 0, err
    _assert_matches(tmp_path, want)


@pytest.mark.parametrize("name", TVM_CASES)
def test_pytorch_export_runs_on_the_tvm_backend(name, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model, x, want = _case(name)
    code, _, err = _run(capsys, tmp_path, model, x, "tvm")
    assert code == 0, err
    _assert_matches(tmp_path, want)


@pytest.mark.parametrize("name", sorted(LACKING_CASES))
def test_an_op_the_ir_lacks_is_one_line_and_exit_2_on_numpy(name, capsys, tmp_path):
    model, x, _ = _case(name)
    code, _, err = _run(capsys, tmp_path, model, x, "numpy")
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "cannot be imported" in err and LACKING_CASES[name] in err


def test_an_op_the_ir_lacks_still_runs_through_tvm(capsys, tmp_path, monkeypatch):
    # test_Conv1d: `run` reads float32 inputs only, so Embedding's integer indices cannot be fed
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model, x, want = _case("test_Conv1d")
    code, _, err = _run(capsys, tmp_path, model, x, "tvm")
    assert code == 0, err
    _assert_matches(tmp_path, want)


# -- the batch a bundle is compiled for ---------------------------------------------------------

def _relu_model(batch):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("declared, asked, default, expected", [
    (2, None, 1, 2),        # the model's own fixed batch
    ("N", None, 1, 1),      # symbolic: the default
    ("N", None, 5, 5),      # symbolic: the caller's default (run: the input's samples)
    ("N", 3, 1, 3),         # asked for
    (4, 4, 1, 4),           # asked for, agreeing with the fixed batch
])
def test_pin_batch_takes_the_fixed_batch_unless_asked(declared, asked, default, expected):
    model = _relu_model(declared)
    assert pin_batch(model, asked, default=default) == expected
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == expected


def test_a_batch_that_contradicts_the_fixed_one_names_both():
    with pytest.raises(InputError, match=r"fixed batch of 2.*contradicts the batch asked for \(1\)"):
        pin_batch(_relu_model(2), 1)


def test_compile_takes_the_fixed_batch_and_refuses_a_contradicting_one(tmp_path, capsys):
    path = tmp_path / "relu2.onnx"
    onnx.save(_relu_model(2), str(path))
    assert main(["compile", str(path), "--target", "host", "-o", str(tmp_path / "b")]) == 0
    with Bundle.open(tmp_path / "b") as bundle:
        assert bundle.batch == 2
        x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
        np.testing.assert_array_equal(bundle.run({"x": x})["y"], np.maximum(x, 0))
    capsys.readouterr()
    assert main(["compile", str(path), "--target", "host", "--batch", "1", "-o", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "fixed batch of 2" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_run_on_tvm_compiles_a_symbolic_batch_for_the_input(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "relu.onnx"
    onnx.save(_relu_model("N"), str(path))
    x = np.random.default_rng(1).standard_normal((3, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(path), "--backend", "tvm", "--input", str(tmp_path / "x.npy"), "--json"]) == 0
    assert '"batch": 3' in capsys.readouterr().out


def test_batch_on_run_is_for_the_tvm_backend_only(tmp_path, capsys):
    path = tmp_path / "relu.onnx"
    onnx.save(_relu_model("N"), str(path))
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 4, 4), np.float32))
    assert main(["run", str(path), "--backend", "numpy", "--batch", "2", "--input", str(tmp_path / "x.npy")]) == 2
    assert "--backend tvm" in capsys.readouterr().err


def test_run_on_tvm_compiles_a_fixed_batch_model_once_whatever_the_input_size(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "relu2.onnx"
    onnx.save(_relu_model(2), str(path))
    for samples in (3, 2):
        x = np.random.default_rng(samples).standard_normal((samples, 3, 4, 4)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        assert main(["run", str(path), "--backend", "tvm", "--input", str(tmp_path / "x.npy"),
                     "-o", str(tmp_path / "y.npz")]) == 0
        with np.load(tmp_path / "y.npz") as out:
            np.testing.assert_array_equal(out["y"], np.maximum(x, 0))
    capsys.readouterr()
    assert len(list((tmp_path / "cache" / "edgecnn" / "bundles").iterdir())) == 1


def test_a_pytorch_export_trains_through_the_cli(tmp_path, capsys):
    """A PyTorch model exported with BatchNorm, a symbolic batch and x.view(x.size(0), -1) is
    trained by `edgecnn train model.onnx` as the README says, and learns the digits."""
    torch = pytest.importorskip("torch", reason="PyTorch is an optional test peer (pip install torch==2.13.0)")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
            self.fc = torch.nn.Linear(8 * 4 * 4, 10)

        def forward(self, x):
            y = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
            return self.fc(y.view(y.size(0), -1))

    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(1, 1, 8, 8),), str(path), dynamo=False, opset_version=17,
                      do_constant_folding=False, input_names=["x"], dynamic_axes={"x": {0: "N"}})
    assert main(["train", str(path), "--dataset", "digits", "--epochs", "3", "--json", "-o", str(tmp_path / "run")]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["test_accuracy"] > 0.9, report
