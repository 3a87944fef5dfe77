"""Test accuracy reached by `edgecnn train` (NumPy backend) against the issue's targets.

Each case runs the real command in a subprocess (``edgecnn train ... --json``), so the reported
peak memory is that of one whole training run (the process's peak resident set). Prints a table
and writes ``bench/results/train_accuracy.json``.

    .venv/bin/python bench/train_accuracy.py [--only digits-cnn] [--threads 2]

Targets: ``digits-cnn`` >= 98% test accuracy on digits in under a minute; ``lenet5`` >= 98.5% on
the 10,000 MNIST test images within 2 epochs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table, set_threads, write_result

CASES = [
    {"model": "digits-cnn", "dataset": "digits", "target_accuracy": 0.98, "max_seconds": 60.0,
     "args": ["--epochs", "20", "--batch-size", "16", "--optimizer", "sgd", "--lr", "0.05",
              "--label-smoothing", "0.1"]},
    {"model": "lenet5", "dataset": "mnist", "target_accuracy": 0.985, "max_seconds": None,
     "args": ["--epochs", "2", "--batch-size", "64", "--optimizer", "sgd", "--nesterov", "--lr", "0.1",
              "--warmup-epochs", "0.2"]},
]


def run_case(case: dict, seed: int, workdir: Path) -> dict:
    run_dir = workdir / f"{case['model']}-{case['dataset']}-s{seed}"
    cmd = [sys.executable, "-m", "edgecnn.compiler", "train", case["model"], "--dataset", case["dataset"],
           *case["args"], "--seed", str(seed), "--json", "--quiet", "-o", str(run_dir)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    doc = json.loads(proc.stdout)
    acc = doc["test_accuracy"]
    within_time = case["max_seconds"] is None or wall <= case["max_seconds"]
    return {"model": case["model"], "dataset": case["dataset"], "seed": seed, "epochs": doc["epochs"],
            "test_accuracy": acc, "target": case["target_accuracy"],
            "train_seconds": doc["seconds"], "wall_seconds": wall,
            "time_limit_s": case["max_seconds"], "peak_rss_mb": doc["peak_rss_mb"],
            "meets": bool(acc >= case["target_accuracy"] and within_time),
            "val_accuracy_per_epoch": [h["val_accuracy"] for h in doc["history"]],
            "command": " ".join(cmd[1:])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="run only this model (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    # One BLAS thread by default: on a shared 2-core machine a second OpenBLAS thread spins against
    # other processes and makes small GEMMs many times slower (measured: lenet5 step 23 ms -> 158 ms).
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    cases = [c for c in CASES if not args.only or c["model"] in args.only]
    results = []
    with tempfile.TemporaryDirectory(prefix="edgecnn-train-bench-") as tmp:
        for case in cases:
            for seed in args.seeds:
                results.append(run_case(case, seed, Path(tmp)))
                print(f"done: {case['model']} seed {seed}: {results[-1]['test_accuracy']:.4f}", file=sys.stderr)
    columns = ["model", "dataset", "seed", "epochs", "test_accuracy", "target", "wall_seconds", "time_limit_s",
               "peak_rss_mb", "meets"]
    print_table(results, columns, floatfmt=".4g")
    path = write_result("train_accuracy" if not args.only else "train_accuracy-" + "-".join(args.only),
                        {"threads": args.threads, "results": results})
    print(f"wrote {path}")
    return 0 if all(r["meets"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
