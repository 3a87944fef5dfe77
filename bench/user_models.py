"""The onnx package's `pytorch-converted` cases run exactly as a user types them.

For every 2-D case (``--all``: every case) and each backend: ``edgecnn run case/model.onnx
--backend B --input x.npy -o out.npz`` in a fresh process, with no other option, and the output
compared with the one the onnx package ships (computed by PyTorch) at rtol 1e-4, atol 1e-4 x the
output's magnitude. A failure is reported with the command's last line of stderr: it must be
one line, never a traceback. TVM compiles go to a temporary cache, so each case compiles once.

    .venv/bin/python bench/user_models.py [--backends numpy tvm] [--all]

Prints a table and writes bench/results/user_models.json.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from _common import print_table, write_result

CASES = Path(onnx.__file__).parent / "backend" / "test" / "data" / "pytorch-converted"


def run_case(case: Path, backend: str, env: dict) -> tuple[str, str]:
    """("pass" | "fail" | "mismatch", detail) for one case on one backend."""
    data = case / "test_data_set_0"
    x = numpy_helper.to_array(onnx.load_tensor(str(data / "input_0.pb")))
    want = numpy_helper.to_array(onnx.load_tensor(str(data / "output_0.pb")))
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", x)
        done = subprocess.run([sys.executable, "-m", "edgecnn.compiler", "run", str(case / "model.onnx"),
                               "--backend", backend, "--input", str(Path(tmp) / "x.npy"),
                               "-o", str(Path(tmp) / "out.npz")], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            traceback = any(line.startswith("Traceback") for line in lines)
            return "fail", f"exit {done.returncode}{' TRACEBACK' if traceback else ''}: {(lines or [''])[-1][:160]}"
        with np.load(Path(tmp) / "out.npz") as outputs:
            got = outputs[outputs.files[0]]
    if got.shape != want.shape:
        return "mismatch", f"shape {got.shape}, expected {want.shape}"
    worst = float(np.abs(got - want).max()) if got.size else 0.0
    if not np.allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max()))):
        return "mismatch", f"max abs error {worst:.3g}"
    return "pass", f"max abs error {worst:.3g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["numpy", "tvm"], choices=["numpy", "onnxruntime", "tvm"])
    parser.add_argument("--all", action="store_true", help="also the 1-D and 3-D cases")
    args = parser.parse_args()
    names = sorted(p.name for p in CASES.iterdir() if p.is_dir()
                   and (args.all or not any(k in p.name for k in ("1d", "3d"))))
    rows, summary = [], {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        for name in names:
            row = {"case": name}
            for backend in args.backends:
                outcome, detail = run_case(CASES / name, backend, env)
                row[backend] = outcome
                row[f"{backend}_detail"] = detail
                summary.setdefault(backend, {}).setdefault(outcome, 0)
                summary[backend][outcome] += 1
                print(f"{name} [{backend}] {outcome}: {detail}", file=sys.stderr)
            rows.append(row)
    print_table(rows, ["case", *args.backends])
    for backend in args.backends:
        counts = summary[backend]
        print(f"{backend}: {counts.get('pass', 0)} of {len(names)} pass, {counts.get('mismatch', 0)} mismatch, "
              f"{counts.get('fail', 0)} refused")
    path = write_result("user_models", {"cases": rows, "summary": summary, "backends": args.backends})
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
