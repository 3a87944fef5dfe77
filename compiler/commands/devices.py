"""``edgecnn devices --tracker HOST:PORT``: the device pools behind a TVM RPC tracker.

One row per key: devices registered, free, busy (lent to a session now) and requests waiting
for one; then each device's address. Bundles run on a pool with ``--tracker HOST:PORT --key KEY``
on ``run``, ``bench`` and ``verify``, and ``compile --tune`` measures on one.
"""
from __future__ import annotations

import json

HELP = "list the device pools of a TVM RPC tracker: keys, free and busy devices, waiting requests"


def add_arguments(parser):
    parser.add_argument("--tracker", required=True, metavar="HOST:PORT",
                        help="the tracker (`python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190`)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")


def run(args) -> int:
    from edgecnn.runtime.fleet import Tracker

    with Tracker(args.tracker) as tracker:
        pools = tracker.status()
        address = tracker.address
    if args.json:
        print(json.dumps({"tracker": address, "pools": [p.to_dict() for p in pools.values()]}, indent=1))
        return 0
    if not pools:
        print(f"tracker {address}: no device registered (start `python -m tvm.exec.rpc_server --tracker "
              f"{address} --key KEY` on each board)")
        return 0
    width = max(8, *(len(k) + 1 for k in pools))
    print(f"tracker {address}")
    print(f"{'key':<{width}} {'total':>6} {'free':>6} {'busy':>6} {'pending':>8}  devices")
    for pool in pools.values():
        print(f"{pool.key:<{width}} {pool.total:>6} {pool.free:>6} {pool.busy:>6} {pool.pending:>8}  "
              f"{', '.join(pool.servers) or '-'}")
    return 0
