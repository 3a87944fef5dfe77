"""Options and opening of bundles shared by ``run``, ``bench`` and ``verify``.

Where a bundle runs: here (default), on a device through TVM RPC (``--rpc HOST:PORT``) or, for
aarch64 bundles, under qemu-user (``--emulate``).
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


def add_device_arguments(parser, *, threads: bool = True) -> None:
    group = parser.add_argument_group("where a bundle runs")
    group.add_argument("--rpc", metavar="HOST:PORT",
                       help="run on a device through TVM RPC; start the server there with "
                            "`python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090`")
    group.add_argument("--emulate", action="store_true",
                       help="run an aarch64 bundle here under qemu-user (see `make aarch64-runtime`)")
    if threads:
        group.add_argument("--threads", type=int, metavar="N",
                           help="CPU threads for TVM (default: every CPU this process may use)")


def reject_device_options(args) -> None:
    """--rpc, --emulate and --threads run compiled bundles; a MODEL given with them is a mistake."""
    used = [flag for flag, value in (("--rpc", getattr(args, "rpc", None)), ("--emulate", getattr(args, "emulate", False)),
                                     ("--threads", getattr(args, "threads", None))) if value]
    if used:
        raise InputError(f"options for compiled bundles ({', '.join(used)}) given, but '{args.model}' is not a "
                         f"bundle directory (compile it with `edgecnn compile`)")


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def open_bundle(path, args) -> Bundle:
    """Open the bundle where the options say; progress goes to stderr."""
    rpc = getattr(args, "rpc", None)
    emulate = getattr(args, "emulate", False)
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1. Received: threads={threads}")
    if rpc and emulate:
        raise InputError("--rpc and --emulate exclude each other: run on a remote device or under qemu, not both")
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


def where(args) -> str:
    if getattr(args, "rpc", None):
        return f"rpc {args.rpc}"
    if getattr(args, "emulate", False):
        return "qemu-aarch64"
    return "local"
