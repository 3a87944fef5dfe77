"""torchvision's architectures at 224x224, run exactly as a user types them, against PyTorch.

Each architecture is built with random weights (bench/torchvision_zoo.py), exported by PyTorch's
exporter at opset 17 with batch 1, and run with ``edgecnn run model.onnx --backend B --input x.npy
-o out.npz`` in a fresh process for each backend. The output is compared with PyTorch's at rtol
1e-4, atol 1e-4 x the output's magnitude; a failure is reported with the command's last stderr
line (it must be one line, never a traceback). ``seconds`` is the wall time of the command, for
TVM mostly the compile (each model compiles once, into a temporary cache).

    .venv/bin/python bench/torchvision_models.py [--size 224] [--backends numpy tvm] [--models ...]

Prints a table and writes bench/results/torchvision_models.json.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import torchvision_zoo
from _common import print_table, write_result


def run_backend(model: Path, x: Path, want: np.ndarray, backend: str, env: dict) -> dict:
    out = model.with_suffix(f".{backend}.npz")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgecnn.compiler", "run", str(model), "--backend", backend,
                           "--input", str(x), "-o", str(out)], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        traceback = any(line.startswith("Traceback") for line in lines)
        return {"outcome": "fail", "seconds": seconds,
                "detail": f"exit {done.returncode}{' TRACEBACK' if traceback else ''}: {(lines or [''])[-1][:200]}"}
    with np.load(out) as outputs:
        got = outputs[outputs.files[0]]
    error = float(np.abs(got - want).max())
    ok = got.shape == want.shape and np.allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max())))
    return {"outcome": "pass" if ok else "mismatch", "seconds": seconds, "max_abs_error": error,
            "detail": f"max abs error {error:.3g} (|output| up to {np.abs(want).max():.3g})"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--backends", nargs="+", default=["numpy", "tvm"], choices=["numpy", "onnxruntime", "tvm"])
    parser.add_argument("--models", nargs="+", default=sorted(torchvision_zoo.ARCHITECTURES),
                        choices=sorted(torchvision_zoo.ARCHITECTURES))
    args = parser.parse_args()
    if torchvision_zoo.torchvision_models() is None:
        print("torchvision and PyTorch are needed: pip install torch==2.13.0 && pip install --no-deps "
              "torchvision==0.28.0", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        for name in args.models:
            model = Path(tmp) / f"{name}.onnx"
            x, want = torchvision_zoo.export(torchvision_zoo.build(name), args.size, model)
            np.save(Path(tmp) / f"{name}.x.npy", x)
            row = {"model": name, "size": args.size}
            for backend in args.backends:
                result = run_backend(model, Path(tmp) / f"{name}.x.npy", want, backend, env)
                row.update({backend: result["outcome"], f"{backend}_s": result["seconds"],
                            f"{backend}_detail": result["detail"]})
                print(f"{name} [{backend}] {result['outcome']} in {result['seconds']:.1f} s: {result['detail']}",
                      file=sys.stderr)
            model.unlink()
            rows.append(row)
    print_table(rows, ["model", *[c for b in args.backends for c in (b, f"{b}_s")]], floatfmt=".1f")
    for backend in args.backends:
        passed = sum(r[backend] == "pass" for r in rows)
        print(f"{backend}: {passed} of {len(rows)} match PyTorch")
    path = write_result("torchvision_models", {"size": args.size, "rows": rows, "backends": args.backends})
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
