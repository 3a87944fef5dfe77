"""Conformance against the ONNX project's own test data, run through the NumPy backend.

The onnx wheel ships operator cases converted from PyTorch (``pytorch-converted``,
``pytorch-operator``: a ``model.onnx`` and ``test_data_set_*/input_*.pb`` / ``output_*.pb``) and
small real architectures (``light``: ``light_<name>.onnx`` with ``light_<name>_output_0.pb``,
computed by ONNX's runner from the input ``arange(n).reshape(shape) / n``).

Each case is imported, run with the NumPy backend and compared with the expected outputs at
``rtol = atol = 1e-4``. A case is

- ``pass``: every output matches (for the light models, whose constant weights make the expected
  softmax uniform, the logits feeding the outputs must also match onnxruntime on the same input);
- ``fail``: it imported (so every op is supported) but an output differs or running raised; or
  the importer raised an error other than "unsupported" on a model that onnx's checker accepts
  (a valid model edgecnn claims to handle and does not);
- ``skip``: the importer refused it (an unsupported op, input type or op configuration), or the
  model is one onnx's own checker rejects; the reason is the importer's (or the checker's) own
  message, so the report says exactly what is missing.

Run ``python -m edgecnn.compiler.conformance -o report.md`` to regenerate the committed report.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecnn.runtime.errors import EdgeCNNError

from .errors import UnsupportedOpError

RTOL = 1e-4
ATOL = 1e-4
SUITES = ("pytorch-converted", "pytorch-operator", "light")


@dataclass
class Case:
    suite: str
    name: str
    model_path: Path
    #: list of (input files or arrays, expected output files or arrays)
    data_sets: list = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.suite}/{self.name}"


@dataclass
class Result:
    case: str
    status: str  # "pass" | "fail" | "skip"
    reason: str = ""
    max_abs_error: float | None = None
    seconds: float = 0.0


def data_root() -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data"


def _read_tensor(path: Path) -> np.ndarray:
    import onnx

    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return np.asarray(onnx.numpy_helper.to_array(tensor))


def light_input(shape) -> np.ndarray:
    """The input ONNX's test runner feeds the light models: ``arange(n).reshape(shape) / n``."""
    n = int(np.prod(shape))
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


def discover(suites=SUITES, root: Path | None = None) -> list[Case]:
    """Every case of the given suites, sorted by suite then name."""
    root = root or data_root()
    cases = []
    for suite in suites:
        folder = root / suite
        if not folder.is_dir():
            continue
        if suite == "light":
            for model in sorted(folder.glob("light_*.onnx")):
                outputs = sorted(folder.glob(model.stem + "_output_*.pb"))
                cases.append(Case(suite, model.stem[len("light_"):], model, [(None, outputs)]))
            continue
        for case_dir in sorted(p for p in folder.iterdir() if (p / "model.onnx").is_file()):
            sets = []
            for ds in sorted(case_dir.glob("test_data_set_*")):
                ins = sorted(ds.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
                outs = sorted(ds.glob("output_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
                sets.append((ins, outs))
            cases.append(Case(suite, case_dir.name, case_dir / "model.onnx", sets))
    return cases


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def run_case(case: Case, rtol: float = RTOL, atol: float = ATOL) -> Result:
    """Import, run and compare one case."""
    from . import numpy_backend, onnx_io

    start = time.perf_counter()
    try:
        graph = onnx_io.import_model(case.model_path)
    except UnsupportedOpError as exc:
        kinds = list(getattr(exc, "op_types", []))
        kinds += [_short_problem(p) for p in getattr(exc, "problems", [])]
        reason = "unsupported: " + ("; ".join(kinds) if kinds else _first_line(exc))
        return Result(case.id, "skip", reason, seconds=time.perf_counter() - start)
    except EdgeCNNError as exc:
        invalid = _checker_rejects(case.model_path)
        if invalid:
            return Result(case.id, "skip", "invalid model: " + invalid, seconds=time.perf_counter() - start)
        return Result(case.id, "fail", f"the importer raised {type(exc).__name__} on a model onnx's checker "
                      f"accepts: {_first_line(exc)}", seconds=time.perf_counter() - start)
    worst = 0.0
    try:
        for ins, outs in case.data_sets:
            if ins is None:
                feeds = {s.name: light_input(s.concrete(1)) for s in graph.inputs}
            else:
                if len(ins) != len(graph.inputs):
                    return Result(case.id, "fail", f"the case has {len(ins)} input(s), the imported graph "
                                  f"{len(graph.inputs)}", seconds=time.perf_counter() - start)
                feeds = {s.name: _read_tensor(p) for s, p in zip(graph.inputs, ins)}
            values = numpy_backend.forward(graph, feeds, keep="all")
            got = {o: values[o] for o in graph.outputs}
            if len(outs) != len(graph.outputs):
                return Result(case.id, "fail", f"the case has {len(outs)} expected output(s), the graph "
                              f"{len(graph.outputs)}", seconds=time.perf_counter() - start)
            for out_name, path in zip(graph.outputs, outs):
                expected = _read_tensor(path)
                y = got[out_name]
                if y.shape != expected.shape:
                    return Result(case.id, "fail", f"output '{out_name}' has shape {y.shape}, expected "
                                  f"{expected.shape}", seconds=time.perf_counter() - start)
                # nan where the expected value is nan conforms (Sqrt and Pow of negative inputs)
                both_nan = np.isnan(y) & np.isnan(expected)
                err = np.abs(np.where(both_nan, 0, y.astype(np.float64) - expected.astype(np.float64)))
                worst = max(worst, float(err.max()) if err.size else 0.0)
                if not np.allclose(y, expected, rtol=rtol, atol=atol, equal_nan=True):
                    return Result(case.id, "fail", f"output '{out_name}' differs: max abs error {float(err.max()):.3g} "
                                  f"(rtol={rtol}, atol={atol})", max_abs_error=worst,
                                  seconds=time.perf_counter() - start)
            if ins is None:
                problem = _compare_inner_with_onnxruntime(case, graph, feeds, values, rtol, atol)
                if problem:
                    return Result(case.id, "fail", problem, max_abs_error=worst, seconds=time.perf_counter() - start)
    except Exception as exc:  # a crash in a supported case is a failure to report, not to hide
        return Result(case.id, "fail", f"running raised {type(exc).__name__}: {_first_line(exc)}",
                      seconds=time.perf_counter() - start)
    return Result(case.id, "pass", max_abs_error=worst, seconds=time.perf_counter() - start)


def _checker_rejects(model_path: Path) -> str:
    """onnx's checker's first complaint about the model, or '' if it accepts it."""
    import onnx

    try:
        onnx.checker.check_model(str(model_path))
    except Exception as exc:  # ValidationError, or a file onnx itself cannot parse: not a valid model
        return _first_line(exc)
    return ""


def inner_tensors(graph) -> list[str]:
    """The computed inputs of the nodes producing the graph outputs (a classifier's logits)."""
    names = []
    for node in graph.nodes:
        if any(o in graph.outputs for o in node.outputs):
            names += [i for i in node.inputs if i and i not in graph.params and i not in graph.outputs]
    return [n for n in dict.fromkeys(names) if n not in {s.name for s in graph.inputs}]


def _compare_inner_with_onnxruntime(case, graph, feeds, values, rtol, atol) -> str:
    """The light models' weights are constants, so their expected softmax is uniform and checks
    little arithmetic; the tensors feeding the outputs (the logits) are compared with onnxruntime
    running the original file on the same input. Returns a failure description or ''."""
    import onnx
    import onnxruntime as ort

    names = inner_tensors(graph)
    if not names:
        return ""
    model = onnx.load(str(case.model_path))
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for name, want in zip(names, session.run(names, feeds)):
        got = values[name]
        if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
            err = float(np.abs(got.astype(np.float64) - want).max()) if got.shape == want.shape else float("nan")
            return (f"tensor '{name}' feeding the outputs differs from onnxruntime: shapes {got.shape} / "
                    f"{want.shape}, max abs error {err:.3g}")
    return ""


def _short_problem(problem: str) -> str:
    """One importer problem without the node names it lists (a grouping key for the report)."""
    import re

    text = re.sub(r"(Layer|node|Node) '[^']*' ?", "", problem)
    return text.split(". Received")[0].split(" (edgecnn ")[0].strip()


def run_all(cases: list[Case], rtol: float = RTOL, atol: float = ATOL, progress=None) -> list[Result]:
    results = []
    for case in cases:
        result = run_case(case, rtol, atol)
        if progress:
            progress(result)
        results.append(result)
    return results


def skip_category(reason: str) -> str:
    """A grouping key for a skip reason: the reason without the layer/node it names."""
    import re

    text = re.sub(r"Layer '[^']*': ", "", reason)
    text = re.sub(r"(node|Node) '[^']*' ", "", text)
    return text.split(". Received")[0]


def render_report(results: list[Result], rtol: float = RTOL, atol: float = ATOL) -> str:
    """The Markdown report: totals per suite, skip reasons grouped, every case listed."""
    import onnx

    def count(status, suite=None):
        return sum(r.status == status and (suite is None or r.case.startswith(suite + "/")) for r in results)

    lines = [
        "# ONNX conformance of the NumPy backend",
        "",
        f"Generated by `python -m edgecnn.compiler.conformance -o <this file>` from the test data of "
        f"onnx {onnx.__version__}; tolerance rtol={rtol:g}, atol={atol:g}.",
        "",
        "| suite | cases | passed | failed | skipped |",
        "|---|---:|---:|---:|---:|",
    ]
    for suite in SUITES:
        total = sum(r.case.startswith(suite + "/") for r in results)
        if total:
            lines.append(f"| {suite} | {total} | {count('pass', suite)} | {count('fail', suite)} | "
                         f"{count('skip', suite)} |")
    lines.append(f"| **all** | {len(results)} | {count('pass')} | {count('fail')} | {count('skip')} |")
    groups: dict[str, list[str]] = {}
    for r in results:
        if r.status == "skip":
            groups.setdefault(skip_category(r.reason), []).append(r.case)
    if groups:
        lines += ["", "## Skips by reason", "", "| reason | cases |", "|---|---:|"]
        for reason, cases in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            lines.append(f"| {_cell(reason)} | {len(cases)} |")
    lines += ["", "## Cases", "", "| case | result | max abs error | detail |", "|---|---|---:|---|"]
    for r in results:
        err = "" if r.max_abs_error is None else f"{r.max_abs_error:.2e}"
        lines.append(f"| {r.case} | {r.status} | {err} | {_cell(r.reason)} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def parse_report(text: str) -> dict[str, str]:
    """Case id -> status, read back from a rendered report (to check committed claims)."""
    statuses = {}
    in_cases = False
    for line in text.splitlines():
        if line.startswith("## Cases"):
            in_cases = True
            continue
        if in_cases and line.startswith("| ") and not line.startswith("| case ") and "/" in line.split("|")[1]:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            statuses[cells[0]] = cells[1]
    return statuses


def main(argv=None) -> int:
    from .fileio import write_text

    parser = argparse.ArgumentParser(prog="python -m edgecnn.compiler.conformance", description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--output", required=True, help="Markdown report to write")
    parser.add_argument("--suite", action="append", choices=SUITES, help="suites to run (default: all)")
    parser.add_argument("--rtol", type=float, default=RTOL)
    parser.add_argument("--atol", type=float, default=ATOL)
    args = parser.parse_args(argv)
    cases = discover(tuple(args.suite or SUITES))

    def progress(r: Result):
        print(f"{r.status:4s} {r.case} ({r.seconds:.2f} s){' ' + r.reason if r.reason else ''}", file=sys.stderr)

    results = run_all(cases, args.rtol, args.atol, progress)
    write_text(args.output, render_report(results, args.rtol, args.atol))
    passed = sum(r.status == "pass" for r in results)
    failed = sum(r.status == "fail" for r in results)
    print(f"{passed} passed, {failed} failed, {len(results) - passed - failed} skipped -> {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
