"""`edgecnn compile` and `edgecnn targets` from the command line: results, and one-line errors with exit 2."""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgecnn.compiler.cli import main

ENTRY = [sys.executable, "-m", "edgecnn.compiler"]


def _cli(args, env=None):
    """Run edgecnn in a fresh process (PATH changes must reach the compile), capturing both streams."""
    return subprocess.run(ENTRY + args, capture_output=True, text=True, env=env, timeout=600)


def _main_error(args, capsys):
    """Run edgecnn in this process; it must exit 2 with exactly one error line on stderr."""
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, err
    assert len(lines) == 1, err
    return lines[0]


def _one_line_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_compile_writes_a_bundle_and_json_manifest(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["compile", "digits-cnn", "--target", "host", "-o", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)  # stdout holds exactly one JSON document
    manifest = json.loads((out / "manifest.json").read_text())
    assert printed["files"] == manifest["files"]
    assert printed["target"]["preset"] == "host" and printed["bundle"] == str(out)

    from edgecnn.compiler import numpy_backend, zoo
    from edgecnn.runtime.bundle import Bundle

    with np.load(out / "golden.npz", allow_pickle=False) as g:
        x = g["input:input"]
    with Bundle.open(out) as bundle:
        got = bundle.run({"input": x})
    ref = numpy_backend.run(zoo.build("digits-cnn"), {"input": x})
    np.testing.assert_allclose(got["logits"], ref["logits"], rtol=1e-4, atol=1e-4)


def test_unknown_preset_exits_2_naming_the_presets(tmp_path, capsys):
    line = _main_error(["compile", "digits-cnn", "--target", "tpu-v9", "-o", str(tmp_path / "b")], capsys)
    assert "tpu-v9" in line and "jetson-orin-nano" in line
    assert not (tmp_path / "b").exists()


def test_op_tvm_cannot_import_exits_2_naming_the_op_and_node(tmp_path, capsys):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="act"), helper.make_node("Det", ["r"], ["y"], name="determinant")],
        "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])])
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    line = _main_error(["compile", str(path), "--target", "host", "-o", str(tmp_path / "b")], capsys)
    assert "Det" in line and "determinant" in line
    assert not (tmp_path / "b").exists()


def test_missing_cross_compiler_exits_2_with_the_fix(tmp_path):
    bin_dir = tmp_path / "bin"  # only Python on PATH: no aarch64-linux-gnu-g++
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python3")
    env = {**os.environ, "PATH": str(bin_dir)}
    line = _one_line_error(_cli(["compile", "digits-cnn", "--target", "rpi4", "-o", str(tmp_path / "b")], env=env))
    assert "aarch64-linux-gnu-g++ not found" in line and "apt-get install g++-aarch64-linux-gnu" in line
    assert not (tmp_path / "b").exists()


def test_tuning_a_preset_that_cannot_run_here_exits_2(tmp_path, capsys):
    line = _main_error(["compile", "digits-cnn", "--target", "cuda", "--tune", "4", "--tuning-db",
                        str(tmp_path / "db"), "-o", str(tmp_path / "b")], capsys)
    assert "cannot run on this machine" in line


def test_bad_batch_exits_2(tmp_path, capsys):
    assert main(["compile", "digits-cnn", "--target", "host", "--batch", "0", "-o", str(tmp_path / "b")]) == 2
    assert "batch" in capsys.readouterr().err


def test_targets_json_lists_every_preset_with_capabilities(capsys):
    assert main(["targets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [p["name"] for p in data["presets"]]
    assert {"host", "x86-64-avx2", "x86-64-avx512", "aarch64", "rpi4", "rpi5", "jetson-orin-nano", "cuda"} == set(names)
    host = data["presets"][names.index("host")]
    assert host["build"] is True and host["run"] is True
    for p in data["presets"]:
        assert {"build", "run", "emulate", "missing", "limits"} <= set(p)


def test_targets_table_says_what_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "cross compiler aarch64-linux-gnu-g++ not found: apt-get install g++-aarch64-linux-gnu" in out
    assert "qemu-aarch64-static not found" in out


@pytest.mark.parametrize("preset", ["host"])
def test_run_backend_tvm_matches_onnxruntime(tmp_path, preset, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])], "c",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 2, 3, 3)).astype(np.float32), "w")])
    model = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(1).standard_normal((3, 2, 6, 6)).astype(np.float32))  # batch 3 > bundle batch 1
    for backend in ("tvm", "onnxruntime", "tvm"):  # the second tvm run comes from the cache
        assert main(["run", str(model), "--input", str(x), "--backend", backend, "-o", str(tmp_path / f"{backend}.npz")]) == 0
    assert len(list((tmp_path / "cache" / "edgecnn" / "bundles").iterdir())) == 1
    with np.load(tmp_path / "tvm.npz") as a, np.load(tmp_path / "onnxruntime.npz") as b:
        assert a["y"].shape == (3, 3, 6, 6)
        np.testing.assert_allclose(a["y"], b["y"], rtol=1e-4, atol=1e-4)
