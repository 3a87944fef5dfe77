"""Options and opening of bundles shared by ``run``, ``bench`` and ``verify``.

Where a bundle runs: here (default), on a device through TVM RPC (``--rpc HOST:PORT``), on a
device lent by an RPC tracker (``--tracker HOST:PORT --key KEY``, ``--devices N`` for several at
once) or, for aarch64 bundles, under qemu-user (``--emulate``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from edgecnn.runtime.bundle import Bundle, set_threads
from edgecnn.runtime.errors import InputError

BUNDLE_MARKERS = ("manifest.json", "model.so")


def is_bundle(spec) -> bool:
    """A directory holding a bundle's manifest or library (an incomplete one is still a bundle)."""
    path = Path(spec)
    return path.is_dir() and any((path / name).exists() for name in BUNDLE_MARKERS)


def add_device_arguments(parser, *, threads: bool = True, fleet: bool = False) -> None:
    from edgecnn.runtime.fleet import DEFAULT_WAIT_S

    group = parser.add_argument_group("where a bundle runs")
    group.add_argument("--rpc", metavar="HOST:PORT",
                       help="run on a device through TVM RPC; start the server there with "
                            "`python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090`")
    group.add_argument("--tracker", metavar="HOST:PORT",
                       help="run on a device of a pool behind a TVM RPC tracker (with --key); see `edgecnn devices`")
    group.add_argument("--key", metavar="KEY", help="the pool's key at the tracker (the servers' --key)")
    group.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, metavar="SECONDS",
                       help=f"longest wait for a free device of the pool (default {DEFAULT_WAIT_S:g})")
    if fleet:
        group.add_argument("--devices", type=int, metavar="N",
                           help="run on N devices of the pool at once and report each and the spread")
    group.add_argument("--emulate", action="store_true",
                       help="run an aarch64 bundle here under qemu-user (see `make aarch64-runtime`)")
    if threads:
        group.add_argument("--threads", type=int, metavar="N",
                           help="CPU threads for TVM (default: every CPU this process may use)")


def reject_device_options(args) -> None:
    """--rpc, --tracker, --emulate and --threads run compiled bundles; a MODEL given with them is a mistake."""
    used = [flag for flag, value in (("--rpc", getattr(args, "rpc", None)), ("--tracker", getattr(args, "tracker", None)),
                                     ("--emulate", getattr(args, "emulate", False)),
                                     ("--threads", getattr(args, "threads", None))) if value]
    if used:
        raise InputError(f"options for compiled bundles ({', '.join(used)}) given, but '{args.model}' is not a "
                         f"bundle directory (compile it with `edgecnn compile`)")


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_device_options(args) -> None:
    """The options of where a bundle runs, consistent with each other, before anything starts."""
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1. Received: threads={threads}")
    chosen = [flag for flag, value in (("--rpc", getattr(args, "rpc", None)), ("--tracker", getattr(args, "tracker", None)),
                                       ("--emulate", getattr(args, "emulate", False))) if value]
    if len(chosen) > 1:
        raise InputError(f"{' and '.join(chosen)} exclude each other: a bundle runs in one place")
    tracker, key = getattr(args, "tracker", None), getattr(args, "key", None)
    if bool(tracker) != bool(key):
        raise InputError("--tracker and --key go together: the tracker's address and the pool's key. "
                         f"Received: tracker={tracker!r}, key={key!r}")
    devices = getattr(args, "devices", None)
    if devices is not None and not tracker:
        raise InputError("--devices N runs on N devices of a pool: give --tracker HOST:PORT --key KEY")
    if devices is not None and devices < 1:
        raise InputError(f"--devices must be at least 1. Received: devices={devices}")
    wait = getattr(args, "wait", None)
    if wait is not None and not wait > 0:
        raise InputError(f"--wait must be a positive number of seconds. Received: wait={wait}")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def open_fleet(path, args) -> list[Bundle]:
    """The bundle on ``--devices N`` devices of the pool, held at once."""
    from edgecnn.runtime.fleet import open_fleet as open_on_devices

    check_device_options(args)
    _say(f"requesting {args.devices} device(s) under key '{args.key}' from the tracker at {args.tracker}")
    bundles = open_on_devices(path, args.tracker, args.key, args.devices, threads=getattr(args, "threads", None),
                              wait_s=args.wait)
    _say(f"uploaded {Path(path) / 'model.so'} to {', '.join(b.executor.address for b in bundles)}")
    return bundles


def open_bundle(path, args) -> Bundle:
    """Open the bundle where the options say; progress goes to stderr."""
    check_device_options(args)
    rpc = getattr(args, "rpc", None)
    emulate = getattr(args, "emulate", False)
    threads = getattr(args, "threads", None)
    tracker = getattr(args, "tracker", None)
    if tracker:
        from edgecnn.runtime.fleet import open_pooled

        bundle = open_pooled(path, tracker, args.key, threads=threads, wait_s=args.wait, log=_say)
        _say(f"uploaded {Path(path) / 'model.so'} to {bundle.executor.address} (key '{args.key}', "
             f"tracker {tracker})")
        return bundle
    if rpc:
        from edgecnn.runtime.rpc import open_remote

        print(f"uploading {Path(path) / 'model.so'} to {rpc}", file=sys.stderr)
        return open_remote(path, rpc, threads=threads)
    if emulate:
        from edgecnn.runtime.emulate import open_emulated

        return open_emulated(path, threads=threads)
    # Before any code runs: TVM sizes its thread pool when the first kernel starts.
    set_threads(threads if threads is not None else default_threads())
    return Bundle.open(path)


def where(args, bundle: Bundle | None = None) -> str:
    """Where the bundle ran, for people and the --json documents; a pool's device is named once known."""
    if getattr(args, "tracker", None):
        device = getattr(getattr(bundle, "executor", None), "address", None)
        pool = f"key '{args.key}' of tracker {args.tracker}"
        return f"rpc {device}, {pool}" if device else pool
    if getattr(args, "rpc", None):
        return f"rpc {args.rpc}"
    if getattr(args, "emulate", False):
        return "qemu-aarch64"
    return "local"
