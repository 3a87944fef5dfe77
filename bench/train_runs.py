"""Whole training runs: `edgecnn train` (NumPy backend) beside PyTorch doing the same epochs.

Each case runs twice, each in its own process, so each side's peak RSS is its own:

* edgecnn: the real command, ``edgecnn train MODEL --dataset D ... --json``; the wall time is the
  run's training time (epochs with their validation passes) from the JSON, peak RSS the process's.
* PyTorch: the same architecture as ``torch.nn`` modules (``bench/torch_models.py``) with the same
  initial weights, data split, normalisation, batch order, learning-rate schedule and SGD
  (momentum, Nesterov, weight decay), timed over the same epochs with the same validation passes;
  its test accuracy comes from the same test images.

Cases: lenet5 on full MNIST (target: at least 99.0% test accuracy) and resnet8 and vgg-small on
MNIST framed as 3x32x32 (``--dataset mnist:3x32x32``). Prints a table, writes
``bench/results/train_runs.json`` and ``train_runs.png`` (validation accuracy per epoch).

    .venv/bin/python bench/train_runs.py [--threads 2] [--only lenet5] [--epochs N]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS_DIR, machine, print_table, pyplot, save_figure, set_threads, write_result

CASES = {
    "lenet5": {"dataset": "mnist", "epochs": 8, "batch_size": 64, "lr": 0.1, "target": 0.99},
    "resnet8": {"dataset": "mnist:3x32x32", "epochs": 2, "batch_size": 64, "lr": 0.05, "target": None},
    "vgg-small": {"dataset": "mnist:3x32x32", "epochs": 2, "batch_size": 32, "lr": 0.02, "target": None},
}
COMMON = ["--optimizer", "sgd", "--nesterov", "--warmup-epochs", "0.2", "--seed", "0"]


def edgecnn_run(name: str, case: dict, workdir: Path) -> dict:
    cmd = [sys.executable, "-m", "edgecnn.compiler", "train", name, "--dataset", case["dataset"],
           "--epochs", str(case["epochs"]), "--batch-size", str(case["batch_size"]), "--lr", str(case["lr"]),
           *COMMON, "--json", "--quiet", "-o", str(workdir / name)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    doc = json.loads(proc.stdout)
    return {"test_accuracy": doc["test_accuracy"], "train_seconds": doc["seconds"],
            "peak_rss_mb": doc["peak_rss_mb"], "val_accuracy": [h["val_accuracy"] for h in doc["history"]],
            "command": "edgecnn " + " ".join(cmd[3:-2])}


def torch_run(name: str, case: dict, threads: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--torch-case", name, "--threads", str(threads),
           "--epochs", str(case["epochs"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the PyTorch run of {name} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _torch_main(name: str, case: dict, threads: int) -> int:
    """The PyTorch side of one case, in this process (its peak RSS is reported)."""
    import numpy as np
    import torch

    from edgecnn.compiler import zoo
    from edgecnn.compiler.data import load_dataset
    from edgecnn.compiler.train import TrainConfig, Trainer
    from torch_models import from_graph

    torch.set_num_threads(threads)
    graph = zoo.build(name, seed=0)
    data = load_dataset(case["dataset"], seed=0, sample_shape=tuple(graph.inputs[0].shape[1:]))
    config = TrainConfig(epochs=case["epochs"], batch_size=case["batch_size"], optimizer="sgd", lr=case["lr"],
                         nesterov=True, warmup_epochs=0.2, seed=0)
    plan = Trainer(graph, data, config)  # the same steps per epoch, schedule and batch order as edgecnn's
    module = from_graph(name, plan.graph)
    opt = torch.optim.SGD(module.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                          weight_decay=config.weight_decay)

    def accuracy(index) -> float:
        module.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, index.size, config.eval_batch_size):
                idx = index[start:start + config.eval_batch_size]
                logits = module(torch.from_numpy(data.batch(idx)))
                correct += int((logits.argmax(1).numpy() == data.y[idx]).sum())
        module.train()
        return correct / index.size

    train, history, seconds = data.split.train, [], 0.0
    for epoch in range(config.epochs):
        order = train[np.random.default_rng([config.seed, epoch, 1]).permutation(train.size)]
        start = time.perf_counter()
        for step in range(plan.steps_per_epoch):
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            for group in opt.param_groups:
                group["lr"] = plan.lr_at(epoch * plan.steps_per_epoch + step)
            x, y = torch.from_numpy(data.batch(idx)), torch.from_numpy(data.y[idx])
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(module(x), y).backward()
            opt.step()
        history.append(accuracy(data.split.val))
        seconds += time.perf_counter() - start
        print(f"torch {name} epoch {epoch + 1}: val {history[-1]:.4f} ({seconds:.0f} s)", file=sys.stderr)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"test_accuracy": accuracy(data.split.test), "train_seconds": seconds, "peak_rss_mb": peak,
                      "val_accuracy": history}))
    return 0


def plot(results: list[dict], path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3), squeeze=False)
    for ax, r in zip(axes[0], results):
        for side, style in (("edgecnn", "-o"), ("torch", "--s")):
            values = r[side]["val_accuracy"]
            ax.plot(range(1, len(values) + 1), values, style, label=f"{side} ({r[side]['train_seconds']:.0f} s)")
        ax.set_title(f"{r['model']} on {r['dataset']}", fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy")
        ax.legend(fontsize=7)
    fig.suptitle(machine()["cpu"], fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", action="append", choices=list(CASES), help="run only this model (repeatable)")
    parser.add_argument("--epochs", type=int, help="override every case's epochs")
    parser.add_argument("--torch-case", choices=list(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    cases = {name: dict(case, **({"epochs": args.epochs} if args.epochs else {})) for name, case in CASES.items()}
    if args.torch_case:
        return _torch_main(args.torch_case, cases[args.torch_case], args.threads)
    print(f"CPU: {machine()['cpu']}, {args.threads} threads", flush=True)
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="edgecnn-train-runs-") as tmp:
        for name, case in cases.items():
            if args.only and name not in args.only:
                continue
            ours = edgecnn_run(name, case, Path(tmp))
            print(f"edgecnn {name}: test {ours['test_accuracy']:.4f} in {ours['train_seconds']:.0f} s", flush=True)
            theirs = torch_run(name, case, args.threads)
            print(f"torch {name}: test {theirs['test_accuracy']:.4f} in {theirs['train_seconds']:.0f} s", flush=True)
            target = case["target"]
            rows.append({"model": name, "dataset": case["dataset"], "epochs": case["epochs"],
                         "edgecnn_test_acc": ours["test_accuracy"], "torch_test_acc": theirs["test_accuracy"],
                         "target": "" if target is None else f">= {target}",
                         "edgecnn_s": ours["train_seconds"], "torch_s": theirs["train_seconds"],
                         "time_ratio": ours["train_seconds"] / theirs["train_seconds"],
                         "edgecnn_peak_mb": ours["peak_rss_mb"], "torch_peak_mb": theirs["peak_rss_mb"]})
            results.append({"model": name, "dataset": case["dataset"], "epochs": case["epochs"],
                            "batch_size": case["batch_size"], "lr": case["lr"], "target": target,
                            "edgecnn": ours, "torch": theirs})
    print_table(rows, floatfmt=".4g")
    name = "train_runs" if not args.only else "train_runs-" + "-".join(args.only)
    path = write_result(name, {"threads": args.threads, "results": results})
    plot(results, RESULTS_DIR / f"{name}.png")
    print(f"wrote {path} and {RESULTS_DIR / f'{name}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
