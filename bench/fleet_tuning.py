"""Tuning wall time on a device pool: one RPC server against several, same model, same trials.

Each run tunes from an empty database, through a real TVM tracker and RPC servers on
127.0.0.1 (``edgecnn.runtime.fleet.LocalPool``), as ``edgecnn compile --tune N --tracker
HOST:PORT --key KEY`` does. Pool sizes alternate in rotating order over ``--rounds``. On one
machine the servers share its cores, so this measures how far the runner's parallel
measurement shortens a tuning run, not what separate boards would give.

    .venv/bin/python bench/fleet_tuning.py [--model lenet5] [--trials 32] [--servers 1,3] [--rounds 2]

Prints a table, writes bench/results/fleet_tuning.json.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import print_table, write_result


def tune_once(model: str, target: str, trials: int, servers: int) -> dict:
    from edgecnn.compiler.tvm.bundle import compile_bundle
    from edgecnn.runtime.fleet import LocalPool

    with tempfile.TemporaryDirectory(prefix="edgecnn-fleet-bench-") as work:
        with LocalPool(servers, key="bench", log_dir=Path(work) / "pool") as pool:
            start = time.perf_counter()
            result = compile_bundle(model, target, Path(work) / "bundle", tune=trials, tuning_db=Path(work) / "db",
                                    tracker=pool.address, key="bench",
                                    log=lambda m: print(f"  [{servers} server(s)] {m}", flush=True)
                                    if m.startswith("tuning task") else None)
            seconds = time.perf_counter() - start
    tuning = result.manifest["tuning"]
    return {"servers": servers, "seconds": seconds, "trials": tuning["trials"],
            "devices_used": len(tuning["measured_on"]["devices"]), "records": tuning["records"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--target", default="host")
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--servers", default="1,3", help="pool sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(s) for s in args.servers.split(",")]
    runs = []
    for r in range(args.rounds):
        order = sizes[r % len(sizes):] + sizes[:r % len(sizes)]
        for servers in order:
            print(f"round {r + 1}/{args.rounds}: {args.model}, {args.trials} trials, {servers} server(s)", flush=True)
            runs.append({"round": r + 1, **tune_once(args.model, args.target, args.trials, servers)})
            print(f"  {runs[-1]['seconds']:.1f} s, candidates measured on {runs[-1]['devices_used']} device(s)")
    rows = []
    base = statistics.median(x["seconds"] for x in runs if x["servers"] == sizes[0])
    for servers in sizes:
        times = [x["seconds"] for x in runs if x["servers"] == servers]
        rows.append({"servers": servers, "runs": len(times), "median_s": statistics.median(times),
                     "min_s": min(times), "max_s": max(times),
                     f"over_{sizes[0]}_server": statistics.median(times) / base})
    print_table(rows)
    path = write_result("fleet_tuning", {"model": args.model, "target": args.target, "trials": args.trials,
                                          "runs": runs, "summary": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
