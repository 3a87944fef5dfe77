"""Time one training step (forward, loss, backward, SGD update) of the NumPy backend against PyTorch CPU.

Same architecture and weights, same batch, same thread count for both (BLAS threads for NumPy,
``torch.set_num_threads`` for PyTorch), rounds interleaved so that load on the machine hits both
alike (``edgecnn.runtime.timing.interleaved``). The PyTorch peer is a graph-walking mirror, not
``torch.nn`` layers: the test fixtures' ``graph_to_torch``, one module whose forward walks the
zoo graph node by node calling ``torch.nn.functional`` (eager); the output and the JSON say so.
Prints a table with the ratio (NumPy time / PyTorch time, median over rounds of the per-round
ratio; the target is <= 1.5) and the per-op split of the NumPy step, and writes
``bench/results/train_step.json``.

    .venv/bin/python bench/train_step.py [--threads 2] [--rounds 15]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from _common import print_table, set_threads, write_result

from edgecnn.runtime.timing import flatten, interleaved, paired_ratio, round_medians

CASES = (("lenet5", 64), ("vgg-small", 32))
TARGET_RATIO = 1.5
TORCH_PEER = ("graph-walking mirror: tests/compiler/conftest.py graph_to_torch, one torch.nn.Module whose "
              "forward walks the edgecnn graph calling torch.nn.functional per node (eager, no torch.nn layers)")


def load_torch_mirror():
    """``graph_to_torch`` from the test fixtures: one mirror for tests and benchmarks."""
    path = Path(__file__).resolve().parents[1] / "tests" / "compiler" / "conftest.py"
    spec = importlib.util.spec_from_file_location("edgecnn_test_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.graph_to_torch


def per_op_times(graph, x, steps: int = 3) -> dict:
    """Forward + backward milliseconds per op type in the NumPy backend (mean over ``steps``)."""
    import time

    import numpy as np

    from edgecnn.compiler.ops.base import RunContext

    totals: dict[str, float] = {}
    for _ in range(steps):
        ctx = RunContext(training=True, need_grad=True)
        values = {graph.inputs[0].name: x, **graph.params}
        caches = {}
        for node in graph.nodes:
            start = time.perf_counter()
            outs, caches[node.name] = graph.ops[node.name].forward([values[i] if i else None for i in node.inputs], ctx)
            totals[node.op_type] = totals.get(node.op_type, 0.0) + time.perf_counter() - start
            values.update(zip(node.outputs, outs))
        grads = {graph.outputs[0]: np.ones_like(values[graph.outputs[0]])}
        for node in reversed(graph.nodes):
            start = time.perf_counter()
            gxs = graph.ops[node.name].backward(caches[node.name], [grads[o] for o in node.outputs])
            totals[node.op_type] = totals.get(node.op_type, 0.0) + time.perf_counter() - start
            for name, g in zip(node.inputs, gxs):
                if g is not None and name:
                    grads[name] = grads[name] + g if name in grads else g
    return {k: v / steps * 1e3 for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def summary(rounds) -> dict:
    """Seconds per step: median over all timed steps, the fastest round's median, each round's median."""
    import statistics

    medians = round_medians(rounds)
    return {"median_s": statistics.median(flatten(rounds)), "min_s": min(medians), "rounds_s": medians}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=3,
                        help="timed steps per peer per round, at least (a faster step fills ~20 ms)")
    args = parser.parse_args(argv)
    set_threads(args.threads)

    import resource

    import numpy as np

    from edgecnn.compiler import zoo
    from edgecnn.compiler.train import SGD, TrainConfig, loss_and_gradients

    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: the peer of this benchmark (pip install torch==2.13.0)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    graph_to_torch = load_torch_mirror()

    rows, results = [], []
    for name, batch in CASES:
        graph = zoo.build(name, seed=0)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, *graph.inputs[0].shape[1:])).astype(np.float32)
        y = rng.integers(0, 10, batch)
        config = TrainConfig(optimizer="sgd", lr=0.01)
        ours = SGD(momentum=0.9, weight_decay=5e-4)

        def numpy_step():
            loss, _, grads = loss_and_gradients(graph, x, y, config)
            ours.step(graph.params, grads, 0.01)

        module = graph_to_torch(zoo.build(name, seed=0))
        module.train()
        opt = torch.optim.SGD(list(module.weights), lr=0.01, momentum=0.9, weight_decay=5e-4)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(module(tx), ty).backward()
            opt.step()

        rounds = interleaved({"numpy": numpy_step, "torch": torch_step}, rounds=args.rounds, calls=args.per_round)
        times = {peer: summary(r) for peer, r in rounds.items()}
        ratio = paired_ratio(rounds["numpy"], rounds["torch"])
        ops = per_op_times(graph, x)
        rows.append({"model": name, "batch": batch, "threads": args.threads,
                     "numpy_ms": times["numpy"]["median_s"] * 1e3,
                     "torch_mirror_ms": times["torch"]["median_s"] * 1e3,
                     "ratio": ratio, "target": f"<= {TARGET_RATIO}", "meets": ratio <= TARGET_RATIO,
                     "top_ops_ms": ", ".join(f"{k} {v:.1f}" for k, v in list(ops.items())[:4])})
        results.append({"model": name, "batch": batch, "threads": args.threads, "numpy": times["numpy"],
                        "torch": times["torch"], "ratio": ratio, "numpy_ops_ms": ops})
    print_table(rows)
    print(f"torch_mirror: {TORCH_PEER}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"peak RSS of this process: {peak:.0f} MB")
    path = write_result("train_step", {"target_ratio": TARGET_RATIO, "results": results, "peak_rss_mb": peak,
                                       "torch_peer": TORCH_PEER,
                                       "torch_version": torch.__version__, "numpy_version": np.__version__})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
