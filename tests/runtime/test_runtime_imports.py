"""runtime/ depends on numpy and TVM's runtime only: never onnx, never edgecnn.compiler."""
import json
import pkgutil
import subprocess
import sys

import edgecnn.runtime


def test_runtime_modules_import_neither_onnx_nor_the_compiler():
    modules = sorted(f"edgecnn.runtime.{m.name}" for m in pkgutil.iter_modules(edgecnn.runtime.__path__))
    assert "edgecnn.runtime.bundle" in modules and "edgecnn.runtime.rpc" in modules
    # Loading a module's code also imports TVM (lazily); do that too so TVM's own imports count.
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "import tvm.runtime.vm, tvm.rpc\n"
        "bad = sorted(m for m in sys.modules if m == 'onnx' or m.startswith('onnx.')\n"
        "             or m == 'onnxruntime' or m.startswith('edgecnn.compiler'))\n"
        "print(json.dumps(bad))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
