"""Bundles shared by the runtime tests, compiled once per session.

The bundles follow the bundle format (README, "Bundle format": manifest.json keys, file hashes,
golden data), written by hand here, not by edgecnn's compiler. They are built with TVM directly
from a small hand-written ONNX model (conv -> relu -> maxpool -> flatten -> gemm), so the
runtime is tested against bundles whose golden outputs come from onnxruntime, an independent
reference, and not from the code under test.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

TINY_LABELS = [f"class-{i}" for i in range(10)]


def tiny_onnx(batch: int, seed: int = 0):
    """A 1x8x8 -> 10 classifier with named layers; static batch like compiled bundles."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32)
    b1 = (rng.standard_normal(4) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((10, 4 * 3 * 3)) * 0.3).astype(np.float32)
    b2 = (rng.standard_normal(10) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "conv1.w", "conv1.b"], ["conv1_out"], name="conv1"),
        helper.make_node("Relu", ["conv1_out"], ["relu1_out"], name="relu1"),
        helper.make_node("MaxPool", ["relu1_out"], ["pool1_out"], name="pool1", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Flatten", ["pool1_out"], ["flat_out"], name="flatten"),
        helper.make_node("Gemm", ["flat_out", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        [numpy_helper.from_array(a, n) for n, a in
         (("conv1.w", w1), ("conv1.b", b1), ("fc.w", w2), ("fc.b", b2))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_bundle(model, out_dir: Path, *, arch: str = "x86_64", labels=None, preprocessing=None,
                 seed: int = 0) -> Path:
    """Compile ``model`` (static batch) with TVM's zero pipeline into a bundle directory."""
    import onnx
    import onnxruntime as ort
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out_dir / "model.onnx")
    if arch == "aarch64":
        target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    else:
        target = tvm.target.Target({"kind": "llvm"})
    mod = relax.get_pipeline("zero")(from_onnx(model))
    executable = tvm.compile(mod, target=target)
    if arch == "aarch64":
        executable.export_library(str(out_dir / "model.so"),
                                  fcompile=tvm.support.cc.cross_compiler("aarch64-linux-gnu-g++"))
    else:
        executable.export_library(str(out_dir / "model.so"))

    def dims(value_info):
        return [d.dim_value for d in value_info.type.tensor_type.shape.dim]

    inputs = [{"name": v.name, "shape": dims(v), "dtype": "float32"} for v in model.graph.input]
    outputs = [{"name": v.name, "shape": dims(v), "dtype": "float32"} for v in model.graph.output]
    rng = np.random.default_rng(seed)
    feeds = {i["name"]: rng.standard_normal(i["shape"]).astype(np.float32) for i in inputs}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    results = session.run(None, feeds)
    golden = {f"input:{k}": v for k, v in feeds.items()}
    golden.update({f"output:{o['name']}": r for o, r in zip(outputs, results)})
    np.savez(out_dir / "golden.npz", **golden)
    manifest = {
        "format_version": 1, "model_name": model.graph.name,
        "inputs": inputs, "outputs": outputs, "batch": inputs[0]["shape"][0],
        "target": {"preset": f"test-{arch}", "tvm_target": dict(target.export()), "device": "cpu", "arch": arch},
        "versions": {"edgecnn": "test", "tvm": tvm.__version__, "onnx": onnx.__version__, "opset": 17},
        "files": {name: {"sha256": _sha(out_dir / name)} for name in ("model.so", "model.onnx", "golden.npz")},
        "labels": labels, "preprocessing": preprocessing,
        "tuning": {"applied": False, "records": 0, "trials": 0},
        "golden": {"reference": "onnxruntime", "rtol": 1e-4, "atol": 1e-4},
        "compile_seconds": 0.0,
    }
    from edgecnn.runtime.bundle import seal_manifest

    manifest = seal_manifest(json.loads(json.dumps(manifest, default=str)))
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out_dir


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """x86_64 bundle compiled for batch 2, with labels and preprocessing (read-only: copy to tamper)."""
    out = tmp_path_factory.mktemp("bundles") / "tiny-b2"
    return build_bundle(tiny_onnx(batch=2), out, labels=TINY_LABELS,
                        preprocessing={"mean": [0.5], "std": [0.25]})


@pytest.fixture(scope="session")
def tiny_bundle_aarch64(tmp_path_factory) -> Path:
    """The same model cross-compiled for aarch64 (batch 1)."""
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ not found: install it with `make system-deps`")
    out = tmp_path_factory.mktemp("bundles") / "tiny-aarch64"
    return build_bundle(tiny_onnx(batch=1), out, arch="aarch64")


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle that a test may tamper with."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


@pytest.fixture(scope="session")
def onnxruntime_reference():
    """Run a bundle's model.onnx with onnxruntime (an independent reference)."""
    import onnxruntime as ort

    def run(bundle_dir: Path, feeds: dict) -> dict:
        session = ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, feeds)))

    return run


@pytest.fixture(scope="session")
def digits_bundle_aarch64(tmp_path_factory) -> Path:
    """The zoo's digits-cnn compiled by edgecnn for the aarch64 preset (batch 1)."""
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ not found: install it with `make system-deps`")
    from edgecnn.compiler.tvm.bundle import compile_model

    return compile_model("digits-cnn", "aarch64", tmp_path_factory.mktemp("bundles") / "digits-aarch64")
