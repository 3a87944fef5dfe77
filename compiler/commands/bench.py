"""``edgecnn bench BUNDLE``: latency percentiles and throughput, optionally against onnxruntime.

With ``--compare onnxruntime`` the bundle's ``model.onnx`` runs in onnxruntime in this process
with the same thread count, on the same inputs, and the two are timed in interleaved rounds by
:func:`edgecnn.runtime.timing.interleaved` (timings on shared machines drift between runs, so
a peer measured at the same time is the only fair reference). ``ratio_p50`` is edgecnn's p50
over onnxruntime's: below 1 is faster.

With ``--tracker HOST:PORT --key KEY --devices N`` the bundle runs on N devices of a pool at
once; each device gets a row and the spread of their p50s is reported (a fleet check).
"""
from __future__ import annotations

import json
import sys

from edgecnn.runtime.bench import HEADER, bench_bundle, check_counts, header, spread, summarize
from edgecnn.runtime.errors import InputError
from edgecnn.runtime.timing import flatten, interleaved

from ._bundle_cli import add_device_arguments, default_threads, open_bundle, open_fleet, where

HELP = "latency (p50/p90/p99/mean) and throughput of a bundle, optionally against onnxruntime"
ROUNDS = 5


def add_arguments(parser):
    parser.add_argument("bundle", metavar="BUNDLE", help="a bundle directory from `edgecnn compile`")
    parser.add_argument("--repeat", type=int, default=100, metavar="N", help="timed calls (default 100)")
    parser.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed calls first (default 10)")
    parser.add_argument("--compare", choices=["onnxruntime"],
                        help="also time onnxruntime on the bundle's model.onnx, same threads, same process")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    add_device_arguments(parser, fleet=True)


def _onnxruntime_session(bundle, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(bundle.path / "model.onnx"), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's exception types are not importable in a stable way
        raise InputError(f"onnxruntime cannot load {bundle.path / 'model.onnx'}: "
                         f"{str(exc).strip().splitlines()[0]}") from None


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def measure(bundle, *, repeat: int, warmup: int, threads: int | None, compare: bool) -> tuple[dict, list[str]]:
    """Time a bundle, and with ``compare`` onnxruntime on its model.onnx in interleaved rounds.

    Returns the JSON result (the keys `edgecnn bench --json` promises) and the table rows.
    """
    if not compare:
        stats = bench_bundle(bundle, repeat=repeat, warmup=warmup, threads=threads)
        return stats.to_dict(), [stats.row("edgecnn")]
    session = _onnxruntime_session(bundle, threads)
    feeds = {name: bundle.golden_inputs[name] for name in bundle.input_names}
    peers = {"edgecnn": bundle.prepared_call(), "onnxruntime": lambda: session.run(None, feeds)}
    # --repeat counts timed calls per runtime, spread over the rounds exactly (no filling)
    counts = _split(repeat, ROUNDS)
    timings = interleaved(peers, rounds=len(counts), calls=counts, round_seconds=0, warmup=warmup)
    edge_times, ort_times = flatten(timings["edgecnn"]), flatten(timings["onnxruntime"])
    stats = summarize(edge_times, batch=bundle.batch, threads=threads)
    peer = summarize(ort_times, batch=bundle.batch, threads=threads)
    result = stats.to_dict()
    result["onnxruntime"] = peer.to_dict()
    result["ratio_p50"] = stats.p50_ms / peer.p50_ms
    return result, [stats.row("edgecnn"), peer.row("onnxruntime")]


def _bench_fleet(args) -> int:
    from edgecnn.runtime.fleet import address_width, on_each

    bundles = open_fleet(args.bundle, args)
    first = bundles[0]
    print(f"benchmarking {first.model_name} on {len(bundles)} device(s) of key '{args.key}' at once (batch "
          f"{first.batch}, {args.repeat} calls after {args.warmup} warm-up each)", file=sys.stderr)
    try:
        outcomes = on_each(bundles, lambda b: bench_bundle(b, repeat=args.repeat, warmup=args.warmup))
    finally:
        for bundle in bundles:
            bundle.close()
    measured = [o.result for o in outcomes if o.error is None]
    result = {"model": first.model_name, "bundle": str(first.path), "where": where(args),
              "target": first.manifest["target"].get("preset"), "tracker": args.tracker, "key": args.key,
              "devices": [o.to_dict() for o in outcomes],
              "spread": spread(measured)}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        width = address_width(outcomes)
        print(header("device", width))
        for o in outcomes:
            print(o.result.row(o.address, width) if o.error is None else f"{o.address:<{width}} failed")
        if measured:
            s = result["spread"]
            print(f"spread of p50 over {s['devices']} device(s): {s['p50_min_ms']:.3f} to {s['p50_max_ms']:.3f} ms "
                  f"(median {s['p50_median_ms']:.3f}, max/min {s['p50_max_over_min']:.2f})")
    failed = [o for o in outcomes if o.error is not None]
    for o in failed:
        print(f"edgecnn bench: error: {o.error}", file=sys.stderr)
    return 2 if failed else 0


def run(args) -> int:
    check_counts(args.repeat, args.warmup)
    remote = args.rpc or args.tracker or args.emulate
    if args.compare and remote:
        raise InputError("--compare onnxruntime runs onnxruntime in this process, so it compares only with a "
                         "local run; drop --rpc/--tracker/--emulate")
    if args.devices is not None:
        return _bench_fleet(args)
    bundle = open_bundle(args.bundle, args)
    threads = args.threads if args.threads is not None else (None if remote else default_threads())
    print(f"benchmarking {bundle.model_name} ({where(args, bundle)}, batch {bundle.batch}, threads "
          f"{threads or 'default'}, {args.repeat} calls after {args.warmup} warm-up)", file=sys.stderr)
    if args.emulate:
        print("note: under qemu these are emulator timings; they say nothing about an ARM board's speed",
              file=sys.stderr)
    result, rows = measure(bundle, repeat=args.repeat, warmup=args.warmup, threads=threads,
                           compare=bool(args.compare))
    result.update(model=bundle.model_name, bundle=str(bundle.path), where=where(args, bundle),
                  target=bundle.manifest["target"].get("preset"), executor=bundle.executor.description)
    if args.tracker:
        result.update(device=bundle.executor.address, tracker=args.tracker, key=args.key)
    bundle.close()
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(HEADER)
    for row in rows:
        print(row)
    if args.tracker:
        print(f"ran on {result['device']} (key '{args.key}', tracker {args.tracker})")
    if args.compare:
        print(f"ratio p50 edgecnn/onnxruntime: {result['ratio_p50']:.2f} "
              f"({'faster' if result['ratio_p50'] < 1 else 'slower'} than onnxruntime)")
    return 0
