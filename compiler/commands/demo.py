"""``edgecnn demo``: the whole mission on the built-in digits dataset, ending in one table.

Train ``digits-cnn`` with the NumPy backend, summarise it, export ONNX, compile for ``host`` and,
where this machine has the tools, for ``rpi4`` (verified under qemu) and ``jetson-orin-nano``
(CUDA kernels generated and built with nvcc), then run, benchmark against onnxruntime and verify
the three backends. Everything lands in a report directory (Markdown plus PNG plots); what could
not be run here is said, with the reason, instead of being left out silently.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HELP = "the whole flow on the built-in digits dataset, ending in a summary table and a report"

MODEL = "digits-cnn"
DATASET = "digits"
# Settings measured by bench/train_accuracy.py to reach >= 98% test accuracy on digits.
TRAIN_SETTINGS = dict(batch_size=16, optimizer="sgd", lr=0.05, label_smoothing=0.1)
VERIFY_RTOL = VERIFY_ATOL = 1e-4


def add_arguments(parser):
    parser.add_argument("-o", "--output", default="demo-report", metavar="REPORT_DIR",
                        help="directory for report.md, plots, the trained model and bundles (default: demo-report)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the data split")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    parser.add_argument("--repeat", type=int, default=300, help="timed calls per backend in the benchmark")


def progress(message: str):
    print(f"[demo] {message}", file=sys.stderr, flush=True)


@dataclass
class TargetRow:
    """One line of the final table."""

    target: str
    status: str = "not run"
    bundle_bytes: int | None = None
    compile_seconds: float | None = None
    p50_ms: float | None = None
    ratio_to_onnxruntime: float | None = None
    max_abs_error: float | None = None
    verified_against: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class DemoState:
    out: Path
    rows: dict[str, TargetRow] = field(default_factory=dict)
    facts: dict = field(default_factory=dict)
    not_run: list[str] = field(default_factory=list)


# -- steps ---------------------------------------------------------------------------------------

def train_model(state: DemoState, seed: int, epochs: int):
    from .. import serialize, zoo
    from ..train import TrainConfig, train

    progress(f"training {MODEL} on scikit-learn's digits for {epochs} epochs (NumPy backend)")
    config = TrainConfig(epochs=epochs, seed=seed, **TRAIN_SETTINGS)
    metrics = train(zoo.build(MODEL, seed=seed), DATASET, config, state.out / "train", model_spec=MODEL)
    state.facts.update(test_accuracy=metrics["test_accuracy"], train_seconds=metrics["seconds"],
                       epochs=metrics["epochs"])
    return serialize.load_model(state.out / "train" / "model")


def summarize_model(state: DemoState, graph) -> str:
    from ..summary import summarize

    summary = summarize(graph)
    table = summary.to_text()
    print(table, flush=True)
    state.facts["params"] = graph.num_params()
    return table


def export_model(state: DemoState, graph) -> Path:
    from ..onnx_io import save_onnx

    path = state.out / f"{MODEL}.onnx"
    save_onnx(graph, path)
    state.facts["onnx_bytes"] = path.stat().st_size
    progress(f"exported {path} ({path.stat().st_size / 1024:.1f} KiB)")
    return path


def compile_for(state: DemoState, graph, preset_name: str):
    """Compile when this machine can build for the preset; otherwise record why not."""
    from edgecnn.targets.presets import get_preset

    from ..tvm.bundle import compile_bundle

    row = state.rows.setdefault(preset_name, TargetRow(preset_name))
    caps = get_preset(preset_name).capabilities()
    if not caps.build:
        row.status = "not built"
        row.notes.append("; ".join(caps.build_missing))
        state.not_run.append(f"{preset_name}: not built: {'; '.join(caps.build_missing)}")
        return None
    progress(f"compiling for {preset_name}")
    result = compile_bundle(graph, preset_name, state.out / "bundles" / preset_name)
    row.status = "built"
    row.bundle_bytes = sum(f.stat().st_size for f in result.path.iterdir())
    row.compile_seconds = result.manifest["compile_seconds"]
    return result


def accuracy_of_bundle(state: DemoState, bundle_path: Path, seed: int):
    """Test accuracy of the compiled code itself, on the held-out digits."""
    from edgecnn.runtime.bundle import Bundle

    from ..data import load_dataset

    dataset = load_dataset(DATASET, seed=seed, sample_shape=(1, 8, 8))
    index = dataset.split.test
    with Bundle.open(bundle_path) as bundle:
        logits = bundle.run({bundle.input_names[0]: dataset.batch(index)})[bundle.output_names[0]]
    state.facts["compiled_test_accuracy"] = float((logits.argmax(axis=1) == dataset.y[index]).mean())
    progress(f"compiled host code classifies {len(index)} test digits at "
             f"{state.facts['compiled_test_accuracy']:.2%}")


def benchmark_host(state: DemoState, bundle_path: Path, repeat: int):
    from edgecnn.runtime.bundle import Bundle, set_threads

    from ._bundle_cli import default_threads
    from .bench import measure

    threads = default_threads()
    set_threads(threads)
    with Bundle.open(bundle_path) as bundle:
        result, rows = measure(bundle, repeat=repeat, warmup=20, threads=threads, compare=True)
    row = state.rows["host"]
    row.p50_ms, row.ratio_to_onnxruntime = result["p50_ms"], result["ratio_p50"]
    state.facts["bench"] = result
    progress(f"host p50 {result['p50_ms']:.3f} ms, onnxruntime {result['onnxruntime']['p50_ms']:.3f} ms "
             f"({threads} threads)")


def verify_host(state: DemoState, bundle_path: Path, graph):
    from edgecnn.runtime.bundle import Bundle

    from ..verify import verify_bundle

    row = state.rows["host"]
    worst = 0.0
    with Bundle.open(bundle_path) as bundle:
        for against in ("golden", "numpy", "onnxruntime"):
            report = verify_bundle(bundle, against, rtol=VERIFY_RTOL, atol=VERIFY_ATOL, graph=graph)
            worst = max(worst, report.max_abs_error)
            verdict = "passed" if report.passed else f"FAILED ({report.mismatches} mismatches)"
            row.verified_against.append(f"{against} {verdict}")
            progress(f"host vs {against}: max abs error {report.max_abs_error:.2e}, {verdict}")
    row.max_abs_error = worst
    row.status = "built, run, verified" if all("passed" in v for v in row.verified_against) else "MISMATCH"


def int8_host(state: DemoState, graph, seed: int, repeat: int):
    """The same model quantized to int8 (calibrated on 256 training digits), compiled for the
    host, its accuracy from the compiled code, timed against onnxruntime on the same QDQ file
    and verified against the integer reference (at the bundle's own tolerance: one output unit)."""
    from edgecnn.runtime.bundle import Bundle, set_threads

    from ..data import load_dataset
    from ..onnx_io import save_onnx
    from ..quant.integer import integer_graph
    from ..quant.qdq import quantize_graph
    from ..train import evaluate
    from ..tvm.bundle import compile_bundle
    from ..verify import verify_bundle
    from ._bundle_cli import default_threads
    from .bench import measure

    row = state.rows.setdefault("host int8", TargetRow("host int8"))
    dataset = load_dataset(DATASET, seed=seed, sample_shape=(1, 8, 8))
    saved = graph.metadata.get("preprocessing")
    if saved:
        dataset.set_preprocessing(saved["mean"], saved["std"])
    chosen = np.random.default_rng(seed).permutation(dataset.split.train)[:256]
    progress("quantizing to int8 (256 calibration digits, minmax, per-channel weights)")
    qgraph, _ = quantize_graph(graph, [dataset.batch(chosen[i:i + 64]) for i in range(0, chosen.size, 64)])
    path = save_onnx(qgraph, state.out / f"{MODEL}.int8.onnx")
    state.facts["int8_onnx_bytes"] = path.stat().st_size
    state.facts["int8_test_accuracy"] = evaluate(integer_graph(qgraph)[0], dataset, dataset.split.test)
    result = compile_bundle(path, "host", state.out / "bundles" / "host-int8")
    row.status = "built"
    row.bundle_bytes = sum(f.stat().st_size for f in result.path.iterdir())
    row.compile_seconds = result.manifest["compile_seconds"]
    threads = default_threads()
    set_threads(threads)
    index = dataset.split.test
    with Bundle.open(result.path) as bundle:
        logits = bundle.run({bundle.input_names[0]: dataset.batch(index)})[bundle.output_names[0]]
        state.facts["int8_compiled_test_accuracy"] = float((logits.argmax(axis=1) == dataset.y[index]).mean())
        bench, _ = measure(bundle, repeat=repeat, warmup=20, threads=threads, compare=True)
        row.p50_ms, row.ratio_to_onnxruntime = bench["p50_ms"], bench["ratio_p50"]
        worst = 0.0
        for against in ("golden", "numpy", "onnxruntime"):
            report = verify_bundle(bundle, against)
            worst = max(worst, report.max_abs_error)
            verdict = "passed" if report.passed else f"FAILED ({report.mismatches} mismatches)"
            row.verified_against.append(f"{against} {verdict}")
    row.max_abs_error = worst
    row.notes.append(f"int8 test accuracy {state.facts['int8_test_accuracy']:.2%} (integer reference), "
                     f"{state.facts['int8_compiled_test_accuracy']:.2%} compiled; tolerance "
                     f"{result.manifest['golden']['atol']:.1e} (one output unit)")
    row.status = "built, run, verified" if all("passed" in v for v in row.verified_against) else "MISMATCH"
    progress(f"host int8: p50 {row.p50_ms:.3f} ms, onnxruntime int8 {bench['onnxruntime']['p50_ms']:.3f} ms; "
             f"accuracy {state.facts['int8_compiled_test_accuracy']:.2%}")


def verify_emulated(state: DemoState, bundle_path: Path):
    from edgecnn.runtime.emulate import open_emulated
    from edgecnn.runtime.errors import EdgeCNNError
    from edgecnn.runtime.verify import verify_golden

    row = state.rows["rpi4"]
    try:
        bundle = open_emulated(bundle_path)
    except EdgeCNNError as exc:
        row.notes.append(f"not emulated: {exc}")
        state.not_run.append(f"rpi4: built, not emulated: {exc}")
        return
    with bundle:
        report = verify_golden(bundle, rtol=VERIFY_RTOL, atol=VERIFY_ATOL)
    row.max_abs_error = report.max_abs_error
    row.verified_against.append(f"golden under qemu-aarch64 {'passed' if report.passed else 'FAILED'}")
    row.status = "built, emulated, verified" if report.passed else "MISMATCH"
    row.notes.append("speed on a real Raspberry Pi 4 not measured (no board here)")
    state.not_run.append("rpi4: latency not measured: qemu timings say nothing about an ARM board")
    progress(f"rpi4 bundle under qemu vs golden: max abs error {report.max_abs_error:.2e}")


def build_cuda_kernels(state: DemoState, result):
    """Generate the CUDA kernels and compile them with nvcc for the preset's architecture."""
    from edgecnn.targets.presets import get_preset

    from ..tvm.library import cuda_kernel_names, cuda_source

    row = state.rows["jetson-orin-nano"]
    source = cuda_source(result.library)
    kernels = cuda_kernel_names(source)
    row.notes.append(f"{len(kernels)} CUDA kernels generated")
    nvcc = shutil.which("nvcc")
    arch = get_preset("jetson-orin-nano").cuda_arch
    if nvcc is None:
        row.notes.append("nvcc not found: CUDA source not compiled")
        state.not_run.append("jetson-orin-nano: CUDA source not compiled (nvcc not found)")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            cu = Path(tmp) / "kernels.cu"
            cu.write_text(source)
            proc = subprocess.run([nvcc, "-cubin", f"-arch={arch}", "-o", str(Path(tmp) / "kernels.cubin"), str(cu)],
                                  capture_output=True, text=True)
        if proc.returncode == 0:
            row.notes.append(f"nvcc -cubin -arch={arch} passed")
            row.status = "built, kernels compiled with nvcc"
        else:
            row.status = "nvcc FAILED"
            row.notes.append(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "nvcc failed")
    state.not_run.append("jetson-orin-nano: not run: no NVIDIA GPU on this machine")
    progress(f"jetson-orin-nano: {len(kernels)} kernels; {row.status}")


# -- report --------------------------------------------------------------------------------------

def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def final_table(state: DemoState) -> str:
    f = state.facts
    lines = [
        f"model {MODEL}: {f['params']:,} parameters, ONNX {f['onnx_bytes'] / 1024:.1f} KiB; "
        f"test accuracy {f['test_accuracy']:.2%} (NumPy backend, {f['epochs']} epochs in {f['train_seconds']:.1f} s)"
        + (f", {f['compiled_test_accuracy']:.2%} from the compiled host code" if "compiled_test_accuracy" in f
           else ""),
        "",
        "| target | status | bundle | compile s | p50 ms | p50 / onnxruntime | max abs error | checks and notes |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    if "int8_onnx_bytes" in f:
        lines[0] += (f"; int8: ONNX {f['int8_onnx_bytes'] / 1024:.1f} KiB, test accuracy "
                     f"{f['int8_test_accuracy']:.2%} (integer reference), {f['int8_compiled_test_accuracy']:.2%} compiled")
    for row in state.rows.values():
        lines.append(
            f"| {row.target} | {row.status} | {_fmt(row.bundle_bytes and row.bundle_bytes / 1024, '.0f')} KiB | "
            f"{_fmt(row.compile_seconds, '.1f')} | {_fmt(row.p50_ms, '.4f')} | "
            f"{_fmt(row.ratio_to_onnxruntime, '.2f')} | {_fmt(row.max_abs_error, '.1e')} | "
            f"{'; '.join(row.verified_against + row.notes) or '-'} |")
    if state.not_run:
        lines += ["", "Not run here, and why:"] + [f"- {line}" for line in state.not_run]
    return "\n".join(lines)


def plot_latency(state: DemoState) -> Path | None:
    bench = state.facts.get("bench")
    if not bench:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fileio import atomic_path

    names = ["edgecnn (host)", "onnxruntime"]
    keys = ["p50_ms", "p90_ms", "p99_ms"]
    values = [[bench[k] for k in keys], [bench["onnxruntime"][k] for k in keys]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.35
    x = np.arange(len(keys))
    for i, (name, vals) in enumerate(zip(names, values)):
        ax.bar(x + (i - 0.5) * width, vals, width, label=name)
    ax.set_xticks(x, ["p50", "p90", "p99"])
    ax.set_ylabel("latency per batch of 1 (ms)")
    ax.set_title(f"{MODEL}: edgecnn vs onnxruntime, {bench['threads']} threads, same process")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = state.out / "latency.png"
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def write_report(state: DemoState, summary_table: str, table: str, seconds: float) -> Path:
    from ..fileio import write_text

    lines = [
        "# edgecnn demo", "",
        f"The whole flow on scikit-learn's 8x8 digits, end to end in {seconds:.0f} s.", "",
        "## Result", "", table, "",
        "## Training", "", "![training curves](train/curves.png)", "",
        "## Model summary", "", "```", summary_table, "```", "",
        "## Latency", "", "![latency](latency.png)", "",
        "## Files", "",
        "- `train/`: metrics.json, curves.png, the trained model (graph.json + weights.npz)",
        f"- `{MODEL}.onnx`: the exported model; `{MODEL}.int8.onnx`: its int8 QDQ form",
        "- `bundles/<target>/`: model.so, manifest.json, golden.npz, model.onnx",
        "- `results.json`: every number above", "",
    ]
    path = state.out / "report.md"
    write_text(path, "\n".join(lines))
    doc = {"facts": state.facts, "targets": [row.__dict__ for row in state.rows.values()],
           "not_run": state.not_run, "seconds": seconds}
    write_text(state.out / "results.json", json.dumps(doc, indent=1, default=float))
    return path


def run(args) -> int:
    start = time.perf_counter()
    state = DemoState(out=Path(args.output))
    state.out.mkdir(parents=True, exist_ok=True)

    graph = train_model(state, args.seed, args.epochs)
    summary_table = summarize_model(state, graph)
    export_model(state, graph)

    host = compile_for(state, graph, "host")
    if host is not None:
        accuracy_of_bundle(state, host.path, args.seed)
        benchmark_host(state, host.path, args.repeat)
        verify_host(state, host.path, graph)
        int8_host(state, graph, args.seed, args.repeat)
    rpi4 = compile_for(state, graph, "rpi4")
    if rpi4 is not None:
        verify_emulated(state, rpi4.path)
    jetson = compile_for(state, graph, "jetson-orin-nano")
    if jetson is not None:
        build_cuda_kernels(state, jetson)

    plot_latency(state)
    seconds = time.perf_counter() - start
    table = final_table(state)
    path = write_report(state, summary_table, table, seconds)
    print()
    print(table)
    print(f"\nreport: {path} ({seconds:.0f} s)")
    failed = [row.target for row in state.rows.values() if "MISMATCH" in row.status or "FAILED" in row.status]
    if failed:
        print(f"verification failed for: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
