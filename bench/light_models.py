"""Compile the nine `light` ONNX models that ship with the onnx package for `host`, and compare.

For each model: the wall time of ``compile_bundle`` (import, fold, pipeline, tvm.compile,
export_library, golden data), the largest difference from onnxruntime on seeded random inputs
(the pass mark is the bundle tolerance, rtol = atol = 1e-4), and the latency of the untuned
bundle against onnxruntime on the same inputs, the two interleaved round by round
(``edgecnn.runtime.timing.interleaved``; the ratio is ``paired_ratio``). The shipped
models have constant-filled weights and flat outputs, so each is also compiled and compared
with seeded random weights (``rand`` columns), where agreement means something.

    .venv/bin/python bench/light_models.py [--repeat 3] [--only resnet50,squeezenet] [--target host]

Prints a table and writes bench/results/light_models.json.
"""
from __future__ import annotations

import argparse
import os
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgecnn.compiler.tvm.bundle import compile_bundle
from edgecnn.runtime.bundle import Bundle, set_threads
from edgecnn.runtime.timing import flatten, interleaved, paired_ratio

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
RESULTS = Path(__file__).parent / "results" / "light_models.json"
RTOL = ATOL = 1e-4


THREADS = len(os.sched_getaffinity(0))


def _ort_session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS  # the same thread count as TVM's pool (set in main)
    options.log_severity_level = 3  # old exporters leave unused initializers; the warnings drown the table
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def with_random_weights(path: Path, out: Path, seed: int = 0) -> Path:
    """The same network with seeded random weights in place of its constant-filled ones.

    The light models build every weight with ConstantOfShape (one value repeated), so their
    outputs are flat and any two backends agree on them. Here each such weight becomes an
    initializer: He-scaled normal values for conv/dense weights (2-D and up), values in
    [0.5, 1.5] for per-channel vectors (BatchNorm scale, bias, mean and a positive variance).
    """
    from onnx import numpy_helper

    model = onnx.load(str(path))
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            shapes[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    kept = []
    for node in model.graph.node:
        shape = shapes.get(node.input[0]) if node.op_type == "ConstantOfShape" else None
        if shape is None:
            kept.append(node)
            continue
        shape = [int(d) for d in shape]
        if len(shape) >= 2:
            value = rng.standard_normal(shape) * np.sqrt(2.0 / max(1, int(np.prod(shape[1:]))))
        else:
            value = rng.uniform(0.5, 1.5, shape)
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
    model.ir_version = max(model.ir_version, 4)  # IR 3 wants every initializer listed as a graph input
    del model.graph.node[:]
    model.graph.node.extend(kept)
    onnx.save(model, str(out))
    return out


def check_random_weights(path: Path, target: str, workdir: Path) -> dict:
    variant = with_random_weights(path, workdir / f"{path.stem}_random.onnx")
    result = compile_bundle(variant, target, workdir / f"{path.stem}_random")
    session = _ort_session(result.path / "model.onnx")
    rng = np.random.default_rng(1)
    feeds = {i["name"]: rng.standard_normal(i["shape"]).astype(np.float32) for i in result.manifest["inputs"]}
    names = [o.name for o in session.get_outputs()]
    with Bundle.open(result.path) as bundle:
        ours = bundle.run(feeds)
    theirs = dict(zip(names, session.run(names, feeds)))
    return {"random_max_abs_err": max(float(np.max(np.abs(ours[n] - theirs[n]))) for n in names),
            "random_ref_spread": max(float(np.ptp(theirs[n])) for n in names),
            "random_passed": all(np.allclose(ours[n], theirs[n], rtol=RTOL, atol=ATOL) for n in names)}


def bench_one(path: Path, target: str, repeat: int, workdir: Path) -> dict:
    start = time.perf_counter()
    result = compile_bundle(path, target, workdir / path.stem)
    compile_s = time.perf_counter() - start

    session = _ort_session(workdir / path.stem / "model.onnx")  # the static-batch model that was compiled
    rng = np.random.default_rng(0)
    feeds = {i["name"]: rng.standard_normal(i["shape"]).astype(np.float32) for i in result.manifest["inputs"]}
    names = [o.name for o in session.get_outputs()]
    row = {"model": path.stem.removeprefix("light_"), "compile_s": round(compile_s, 2),
           "golden_reference": result.manifest["golden"]["reference"]}
    with Bundle.open(result.path) as bundle:
        ours = bundle.run(feeds)
        theirs = dict(zip(names, session.run(names, feeds)))
        abs_err = max(float(np.max(np.abs(ours[n] - theirs[n]))) for n in names)
        scale = max(float(np.max(np.abs(theirs[n]))) for n in names)
        # The light models carry constant-filled weights: their softmax outputs can be nearly flat,
        # which makes agreement easy. The spread (max - min) of the reference shows how informative
        # the comparison is.
        spread = max(float(np.ptp(theirs[n])) for n in names)
        row.update(max_abs_err=abs_err, max_abs_ref=scale, ref_spread=spread,
                   passed=all(np.allclose(ours[n], theirs[n], rtol=RTOL, atol=ATOL) for n in names))
        # one timed call per runtime and round (no filling): how the README's table was measured
        times = interleaved({"tvm": lambda: bundle.run(feeds), "onnxruntime": lambda: session.run(names, feeds)},
                            rounds=repeat, calls=1, round_seconds=0)
    row.update(tvm_ms=round(statistics.median(flatten(times["tvm"])) * 1e3, 2),
               onnxruntime_ms=round(statistics.median(flatten(times["onnxruntime"])) * 1e3, 2))
    row["ratio_tvm_over_ort"] = round(paired_ratio(times["tvm"], times["onnxruntime"]), 2)
    row.update(check_random_weights(path, target, workdir))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="host")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated model names (without light_)")
    parser.add_argument("--json-out", default=str(RESULTS))
    args = parser.parse_args(argv)
    # Both runtimes get every core this process may use.
    set_threads(THREADS)

    models = sorted(LIGHT_DIR.glob("light_*.onnx"))
    if args.only:
        wanted = {f"light_{n}" for n in args.only.split(",")}
        models = [m for m in models if m.stem in wanted]
    rows = []
    header = f"{'model':<14}{'compile s':>10}{'max |err|':>12}{'max |ref|':>11}{'ref spread':>11}{'pass':>6}{'tvm ms':>10}{'ort ms':>9}{'tvm/ort':>9}{'rand |err|':>12}{'rand spread':>12}{'pass':>6}  reference"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for path in models:
            try:
                row = bench_one(path, args.target, args.repeat, Path(tmp))
            except Exception as exc:  # one model failing must not hide the others' numbers
                row = {"model": path.stem.removeprefix("light_"), "error": f"{type(exc).__name__}: {exc}"}
                print(f"{row['model']:<14}FAILED: {row['error']}", flush=True)
                rows.append(row)
                continue
            rows.append(row)
            print(f"{row['model']:<14}{row['compile_s']:>10.2f}{row['max_abs_err']:>12.2e}{row['max_abs_ref']:>11.3g}{row['ref_spread']:>11.3g}"
                  f"{'yes' if row['passed'] else 'NO':>6}{row['tvm_ms']:>10.1f}{row['onnxruntime_ms']:>9.1f}"
                  f"{row['ratio_tvm_over_ort']:>9.1f}{row['random_max_abs_err']:>12.2e}{row['random_ref_spread']:>12.3g}"
                  f"{'yes' if row['random_passed'] else 'NO':>6}  {row['golden_reference']}", flush=True)
    ok = [r for r in rows if "error" not in r]
    summary = {"models": len(rows), "passed": sum(r["passed"] for r in ok),
               "passed_random_weights": sum(r["random_passed"] for r in ok),
               "total_compile_s": round(sum(r["compile_s"] for r in ok), 1)}
    print(f"\n{summary['passed']}/{summary['models']} match onnxruntime at rtol=atol={RTOL} "
          f"({summary['passed_random_weights']}/{summary['models']} with random weights); "
          f"total compile {summary['total_compile_s']} s")
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"target": args.target, "machine": platform.machine(), "repeat": args.repeat,
                               "rows": rows, "summary": summary}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if summary["passed"] == summary["passed_random_weights"] == summary["models"] else 1


if __name__ == "__main__":
    sys.exit(main())
