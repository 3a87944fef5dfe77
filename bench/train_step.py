"""Time one training step (forward, loss, backward, SGD update) of the NumPy backend against PyTorch CPU.

The PyTorch peer is a real ``torch.nn`` module of the same architecture (``bench/torch_models.py``:
``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.Linear`` ...), holding the same weights, on the same batch,
with the same thread count (BLAS threads for NumPy, ``torch.set_num_threads``). Before timing, the
two forward passes are checked to agree. Rounds are interleaved in rotating order so that load on
the machine hits both alike, with a second copy of the NumPy step as a third peer: its ratio to the
first is the run's noise floor. Interleaving is fair to both but not free: each side's threads
and cache footprint slow the other's next step a little (PyTorch's lenet5 step measured 5.1 ms
alone and 6.8 ms right after a NumPy step), so each side is also timed alone, 20 steps in a row,
and that ratio is reported beside the interleaved one.

Reported per model: each side's median step, the ratio (median over rounds of NumPy / PyTorch),
the noise floor, the split of each side's step per op kind (NumPy: per op type, timed node by
node; PyTorch: its profiler's self CPU time per aten op, grouped the same way) and each side's
training memory: peak RSS of a fresh process running only that side, less its RSS before the
first step (after imports and model set-up; the kernel's peak is reset there through
``/proc/self/clear_refs``), so interpreter and library sizes do not count.
Writes ``bench/results/train_step.json`` and ``train_step.png``.

    .venv/bin/python bench/train_step.py [--threads 2] [--rounds 15] [--models lenet5 vgg-small resnet8]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import RESULTS_DIR, machine, print_table, pyplot, save_figure, set_threads, write_result

CASES = {"lenet5": 64, "vgg-small": 32, "resnet8": 64}
TARGETS = {"lenet5": 1.0, "vgg-small": 1.2, "resnet8": 1.2}
MEMORY_STEPS = 5
# PyTorch profiler op names -> the ONNX op types the NumPy split uses (first match wins)
TORCH_KINDS = (("conv", "Conv"), ("max_pool", "MaxPool"), ("avg_pool", "GlobalAveragePool"),
               ("batch_norm", "BatchNormalization"), ("relu", "Relu"), ("threshold_backward", "Relu"),
               ("addmm", "Gemm"), ("aten::mm", "Gemm"), ("aten::t", "Gemm"), ("linear", "Gemm"))


def setup(name: str, batch: int, side: str):
    """(one training step of ``side`` as a callable, its model) on a fixed random batch."""
    import numpy as np

    from edgecnn.compiler import zoo

    graph = zoo.build(name, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *graph.inputs[0].shape[1:])).astype(np.float32)
    y = rng.integers(0, 10, batch)
    if side == "numpy":
        from edgecnn.compiler.train import SGD, TrainConfig, loss_and_gradients

        config = TrainConfig(optimizer="sgd", lr=0.01)
        sgd = SGD(momentum=0.9, weight_decay=5e-4)

        def numpy_step():
            _, _, grads = loss_and_gradients(graph, x, y, config)
            sgd.step(graph.params, grads, 0.01)
        return numpy_step, graph, x
    import torch

    from torch_models import from_graph

    module = from_graph(name, graph).train()
    opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def torch_step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(module(tx), ty).backward()
        opt.step()
    return torch_step, module, x


def _alone_median(step, calls: int = 20) -> float:
    """Median seconds of ``calls`` steps of one side with nothing else between them."""
    from edgecnn.runtime.timing import settle, time_calls

    settle()
    time_calls(step, 3)
    return float(sorted(time_calls(step, calls))[calls // 2])


def forward_agreement(name: str, batch: int) -> float:
    """Largest |difference| between the two sides' training-mode logits, relative to their scale."""
    import numpy as np
    import torch

    from edgecnn.compiler import numpy_backend
    from edgecnn.compiler.ops.base import RunContext

    _, graph, x = setup(name, batch, "numpy")
    _, module, _ = setup(name, batch, "torch")
    ours = numpy_backend.forward(graph, {graph.inputs[0].name: x}, ctx=RunContext(training=True))[graph.outputs[0]]
    with torch.no_grad():
        theirs = module(torch.from_numpy(x)).numpy()
    return float(np.abs(ours - theirs).max() / max(1e-12, np.abs(theirs).max()))


def numpy_split(graph, x, steps: int = 5) -> dict:
    """Forward + backward milliseconds per op type of the NumPy backend (mean over ``steps``), timed
    by the backend itself on the path training takes."""
    import numpy as np

    from edgecnn.compiler import numpy_backend
    from edgecnn.compiler.ops.base import RunContext
    from edgecnn.compiler.train import trainable_parameters

    totals: dict[str, float] = {}
    output = graph.outputs[0]
    for step in range(steps + 1):
        seconds = totals if step else {}  # the first step warms up, untimed
        tape = numpy_backend.forward(graph, {graph.inputs[0].name: x}, keep="tape", op_seconds=seconds,
                                     ctx=RunContext(training=True, need_grad=True, input_grads=False))
        numpy_backend.backward(graph, tape, {output: np.ones_like(tape.values[output])},
                               wanted=trainable_parameters(graph), op_seconds=seconds)
    return {k: v / steps * 1e3 for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def torch_split(step, steps: int = 5) -> dict:
    """Self CPU milliseconds per op kind of PyTorch's step (its profiler; mean over ``steps``)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        kind = next((k for pattern, k in TORCH_KINDS if pattern in event.key), "other")
        totals[kind] = totals.get(kind, 0.0) + event.self_cpu_time_total / 1e3
    return {k: v / steps for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def memory_child(side: str, name: str, batch: int, threads: int) -> dict:
    """Run in a fresh process: RSS before the first step and peak RSS after MEMORY_STEPS steps."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-of", side, "--models", name,
           "--batch", str(batch), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory run of {side} {name} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field}")


def _memory_main(side: str, name: str, batch: int, threads: int) -> int:
    if side == "torch":
        import torch

        torch.set_num_threads(threads)
    step, _, _ = setup(name, batch, side)
    before = _status_mb("VmRSS")
    # Reset the peak (VmHWM) to the present RSS, so that imports' transient peaks do not count.
    Path("/proc/self/clear_refs").write_text("5")
    for _ in range(MEMORY_STEPS):
        step()
    peak = _status_mb("VmHWM")
    print(json.dumps({"rss_before_mb": before, "peak_rss_mb": peak, "step_mb": peak - before}))
    return 0


def plot(results: list[dict], path: Path) -> None:
    plt = pyplot()

    kinds = sorted({k for r in results for side in ("numpy_split_ms", "torch_split_ms") for k in r[side]})
    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = []
    for i, r in enumerate(results):
        for j, side in enumerate(("numpy_split_ms", "torch_split_ms")):
            bottom, x = 0.0, i * 3 + j
            for n, kind in enumerate(kinds):
                value = r[side].get(kind, 0.0)
                ax.bar(x, value, bottom=bottom, color=plt.cm.tab10(n % 10), label=kind if (i, j) == (0, 0) else None)
                bottom += value
            labels.append((x, f"{r['model']}\n{'NumPy' if j == 0 else 'PyTorch'}"))
    ax.set_xticks([x for x, _ in labels], [t for _, t in labels], fontsize=7)
    ax.set_ylabel("ms per training step (fwd + bwd, by op)")
    ax.set_title(f"Training step split, {results[0]['threads']} threads: {machine()['cpu']}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=3,
                        help="timed steps per peer per round, at least (a faster step fills ~20 ms)")
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory-of", choices=("numpy", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # PyTorch's profiler: no start/stop lines
    if args.memory_of:
        return _memory_main(args.memory_of, args.models[0], args.batch, args.threads)

    import numpy as np

    from edgecnn.runtime.timing import flatten, interleaved, paired_ratio

    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: the peer of this benchmark (pip install torch==2.13.0)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    print(f"CPU: {machine()['cpu']}, {args.threads} threads; numpy {np.__version__}, torch {torch.__version__}")

    rows, results = [], []
    for name in args.models:
        batch = CASES[name]
        agreement = forward_agreement(name, batch)
        if agreement > 1e-3:
            print(f"{name}: the PyTorch module's logits differ from edgecnn's by {agreement:.2e} (relative): "
                  "not the same model, nothing to compare", file=sys.stderr)
            return 1
        numpy_step, graph, x = setup(name, batch, "numpy")
        numpy_copy, _, _ = setup(name, batch, "numpy")
        torch_step, _, _ = setup(name, batch, "torch")
        rounds = interleaved({"numpy": numpy_step, "numpy_copy": numpy_copy, "torch": torch_step},
                             rounds=args.rounds, calls=args.per_round)
        median = {peer: float(np.median(flatten(r))) for peer, r in rounds.items()}
        ratio = paired_ratio(rounds["numpy"], rounds["torch"])
        noise = paired_ratio(rounds["numpy_copy"], rounds["numpy"])
        alone = {peer: _alone_median(step) for peer, step in (("numpy", numpy_step), ("torch", torch_step))}
        ours, theirs = numpy_split(graph, x), torch_split(torch_step)
        memory = {side: memory_child(side, name, batch, args.threads) for side in ("numpy", "torch")}
        target = TARGETS[name]
        rows.append({"model": name, "batch": batch, "numpy_ms": median["numpy"] * 1e3,
                     "torch_ms": median["torch"] * 1e3, "ratio": ratio, "target": f"<= {target}",
                     "meets": ratio <= target, "noise": noise, "alone_ratio": alone["numpy"] / alone["torch"],
                     "numpy_step_mb": memory["numpy"]["step_mb"], "torch_step_mb": memory["torch"]["step_mb"],
                     "numpy_split": ", ".join(f"{k} {v:.1f}" for k, v in list(ours.items())[:4]),
                     "torch_split": ", ".join(f"{k} {v:.1f}" for k, v in list(theirs.items())[:4])})
        results.append({"model": name, "batch": batch, "threads": args.threads, "rounds": args.rounds,
                        "numpy_median_s": median["numpy"], "numpy_copy_median_s": median["numpy_copy"],
                        "torch_median_s": median["torch"], "ratio": ratio, "target": target,
                        "noise_floor_ratio": noise, "forward_agreement": agreement,
                        "alone_median_s": alone, "alone_ratio": alone["numpy"] / alone["torch"],
                        "numpy_split_ms": ours, "torch_split_ms": theirs, "memory": memory,
                        "rounds_s": {peer: [float(np.median(r)) for r in rs] for peer, rs in rounds.items()}})
        print(f"{name}: NumPy {median['numpy'] * 1e3:.1f} ms, PyTorch {median['torch'] * 1e3:.1f} ms, "
              f"ratio {ratio:.2f} (noise floor {noise:.2f})", flush=True)
    print_table(rows)
    print("ratio: interleaved rounds (median of per-round ratios); alone_ratio: each side's median of 20 steps "
          "in a row")
    print("torch peer: torch.nn modules in bench/torch_models.py; step memory = peak RSS of a fresh process "
          f"running {MEMORY_STEPS} steps of one side, less its RSS before the first step")
    path = write_result("train_step", {"targets": TARGETS, "results": results, "torch_version": torch.__version__,
                                       "numpy_version": np.__version__,
                                       "torch_peer": "torch.nn modules, bench/torch_models.py"})
    plot(results, RESULTS_DIR / "train_step.png")
    print(f"wrote {path} and {RESULTS_DIR / 'train_step.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
