"""`edgecnn export` and `edgecnn run` through the command line: files, outputs and clear errors."""
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.compiler import onnx_io, zoo
from edgecnn.compiler.cli import main


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def ort_outputs(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "digits.onnx"
    assert main(["export", "digits-cnn", "-o", str(path)]) == 0
    return path


def test_export_writes_a_checked_model(digits_onnx, capsys):
    model = onnx.load(digits_onnx)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert {p.key for p in model.metadata_props} >= {"labels", "edgecnn_version"}


def test_export_opset_and_static_batch(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    code, out, err = cli(capsys, "export", "resnet8", "-o", path, "--opset", 13, "--static-batch", 2)
    assert code == 0, err
    assert "opset 13" in out and "2x3x32x32" in out
    model = onnx.load(path)
    assert model.opset_import[0].version == 13
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 32, 32]


@pytest.mark.parametrize("args, expected", [
    (["--opset", "99"], "opset must be an integer"),
    (["--static-batch", "0"], "static-batch"),
])
def test_export_rejects_bad_options(tmp_path, capsys, args, expected):
    path = tmp_path / "m.onnx"
    code, out, err = cli(capsys, "export", "digits-cnn", "-o", path, *args)
    assert code == 2 and expected in err
    assert len(err.strip().splitlines()) == 1
    assert not path.exists()


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_run_writes_one_array_per_output_matching_onnxruntime(digits_onnx, tmp_path, capsys, backend, rng):
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out_path = tmp_path / "out.npz"
    code, out, err = cli(capsys, "run", digits_onnx, "--backend", backend, "--input", tmp_path / "x.npy",
                         "-o", out_path)
    assert code == 0, err
    with np.load(out_path, allow_pickle=False) as npz:
        assert npz.files == ["logits"]
        got = npz["logits"]
    want = ort_outputs(digits_onnx, {"input": x})["logits"]
    assert got.shape == (3, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # a classifier with labels prints its top 5 per sample
    assert out.count("sample ") == 3
    best = str(int(np.argmax(want[0])))
    assert out.split("sample 0: ")[1].startswith(best + " ")


def test_run_npz_input_single_sample_and_zoo_model(tmp_path, capsys, rng):
    x = rng.standard_normal((1, 8, 8)).astype(np.float32)  # no batch dimension
    np.savez(tmp_path / "in.npz", input=x)
    code, out, err = cli(capsys, "run", "digits-cnn", "--input", tmp_path / "in.npz", "-o", tmp_path / "o.npz",
                         "--json")
    assert code == 0, err
    import json

    doc = json.loads(out)
    assert doc["outputs"]["logits"]["shape"] == [1, 10]
    assert len(doc["top"]) == 1 and len(doc["top"][0]) == 5
    graph = zoo.build("digits-cnn")
    want = ort.InferenceSession(onnx_io.export_model(graph).SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"input": x[None]})[0]
    with np.load(tmp_path / "o.npz") as npz:
        np.testing.assert_allclose(npz["logits"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make_input, expected", [
    (lambda d: np.savez(d / "i.npz", image=np.zeros((1, 1, 8, 8), np.float32)), "named after the model inputs"),
    (lambda d: np.save(d / "i.npy", np.zeros((1, 1, 7, 8), np.float32)), "must have shape"),
    (lambda d: np.save(d / "i.npy", np.zeros((1, 1, 8, 8), np.int64)), "floating-point"),
    (lambda d: (d / "i.npy").write_bytes(b"not numpy"), "not a readable .npy"),
    (lambda d: (d / "i.png").write_bytes(b"x"), "not a readable image"),
    (lambda d: (d / "i.txt").write_bytes(b"x"), "inputs must be"),
])
def test_run_input_errors(tmp_path, capsys, make_input, expected):
    make_input(tmp_path)
    (path,) = [p for p in tmp_path.iterdir() if p.name.startswith("i.")]
    code, out, err = cli(capsys, "run", "digits-cnn", "--input", path, "-o", tmp_path / "o.npz")
    assert code == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.npz").exists()


# -- malformed models: one clear error each, exit code 2 --------------------------------------
def _model(nodes, inits=None, inputs=(("x", [1, 4, 6, 6]),), out_shape=None):
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


W = np.zeros((2, 4, 3, 3), np.float32)
GOOD = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv1")], {"w": W})
MALFORMED = {
    "truncated": (GOOD[: len(GOOD) // 3], "truncated"),
    "not-onnx": (b"P6\n4 4\n255\n" + bytes(48), "not"),
    "empty": (b"", "empty"),
    "unknown-op": (_model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv1"),
                           helper.make_node("MyFancyOp", ["c"], ["d"], name="fancy"),
                           helper.make_node("Hardmax", ["d"], ["y"], name="hardmax1")], {"w": W}),
                   "node 'fancy' (MyFancyOp), node 'hardmax1' (Hardmax)"),
    "initializer-wrong-shape": (_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv1")],
                                       {"w": np.zeros((2, 3, 3, 3), np.float32)}), "Layer 'conv1'"),
    "missing-graph-input": (_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv1")]),
                            "node 'conv1' (Conv) reads 'w'"),
    "cycle": (_model([helper.make_node("Add", ["x", "b"], ["a"], name="first"),
                      helper.make_node("Relu", ["a"], ["b"], name="second"),
                      helper.make_node("Relu", ["a"], ["y"], name="out")]), "cycle"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
@pytest.mark.parametrize("command", ["run", "export"])
def test_malformed_models_give_one_clear_error(tmp_path, capsys, case, command):
    data, expected = MALFORMED[case]
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    np.save(tmp_path / "x.npy", np.zeros((1, 4, 6, 6), np.float32))
    if command == "run":
        argv = ["run", path, "--input", tmp_path / "x.npy", "-o", tmp_path / "o.npz"]
    else:
        argv = ["export", path, "-o", tmp_path / "again.onnx"]
    code, out, err = cli(capsys, *argv)
    assert code == 2, (out, err)
    assert expected in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"edgecnn {command}: error: ")
    assert not (tmp_path / "o.npz").exists() and not (tmp_path / "again.onnx").exists()


def test_real_process_exit_code_and_no_traceback(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(MALFORMED["unknown-op"][0])
    np.save(tmp_path / "x.npy", np.zeros((1, 4, 6, 6), np.float32))
    proc = subprocess.run([sys.executable, "-m", "edgecnn.compiler", "run", str(path), "--input",
                           str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "node 'fancy' (MyFancyOp)" in proc.stderr and proc.stdout == ""


def test_run_an_image_with_the_models_preprocessing(tmp_path, capsys):
    from PIL import Image

    pixels = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) % 251).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(tmp_path / "digit.png")
    graph = zoo.build("digits-cnn")
    graph.metadata["preprocessing"] = {"mean": [0.25], "std": [0.5]}
    from edgecnn.compiler.serialize import save_model

    save_model(graph, tmp_path / "model")
    code, out, err = cli(capsys, "run", tmp_path / "model", "--input", tmp_path / "digit.png", "-o",
                         tmp_path / "o.npz")
    assert code == 0, err
    # the reference preprocessing, written out: 16x16 -> 8x8 bilinear, /255, (x - mean) / std
    small = np.asarray(Image.fromarray(pixels, mode="L").resize((8, 8), Image.BILINEAR), np.float32) / 255
    x = ((small - 0.25) / 0.5).reshape(1, 1, 8, 8).astype(np.float32)
    want = ort.InferenceSession(onnx_io.export_model(graph).SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with np.load(tmp_path / "o.npz") as npz:
        np.testing.assert_allclose(npz["logits"], want, rtol=1e-5, atol=1e-5)
    assert "sample 0: " in out
