"""``edgecnn compile MODEL --target PRESET -o BUNDLE``."""
from __future__ import annotations

import json
import sys

HELP = "compile a model (zoo name, saved model or .onnx file) into a bundle for a target preset"


def add_arguments(parser):
    parser.add_argument("model", metavar="MODEL", help="zoo name, saved model directory or .onnx file")
    parser.add_argument("--target", required=True, metavar="PRESET", help="target preset (see `edgecnn targets`)")
    parser.add_argument("-o", "--output", required=True, metavar="BUNDLE", help="bundle directory to write")
    parser.add_argument("--batch", type=int, default=None, metavar="N",
                        help="static batch the bundle is compiled for (default: the model's own fixed batch, else 1)")
    parser.add_argument("--tune", type=int, default=0, metavar="TRIALS",
                        help="MetaSchedule trials to spend on tasks without records (default 0: no tuning)")
    parser.add_argument("--tuning-db", default=None, metavar="DIR",
                        help="tuning database directory (default: edgecnn/tuning in the user's cache "
                             "directory); given without --tune, its records are applied without tuning")
    parser.add_argument("--tracker", metavar="HOST:PORT",
                        help="with --tune: measure candidates on a device pool behind this TVM RPC tracker "
                             "(built here, cross-compiled for ARM presets)")
    parser.add_argument("--key", metavar="KEY", help="with --tracker: the pool's key (the servers' --key)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset used when exporting an IR model")
    parser.add_argument("--json", action="store_true", help="print the bundle's manifest as JSON")


def _check_pool(args) -> None:
    """--tracker/--key: consistent, and the pool there, before minutes of importing and compiling."""
    from edgecnn.runtime.errors import InputError
    from edgecnn.runtime.fleet import Tracker

    from ._bundle_cli import check_device_options

    check_device_options(args)
    if args.tracker and args.tune <= 0:
        raise InputError(f"--tracker measures tuning candidates on a pool; give --tune TRIALS too. "
                         f"Received: tune={args.tune}")
    if args.tracker:
        with Tracker(args.tracker) as tracker:
            tracker.pool(args.key)


def run(args) -> int:
    from edgecnn.compiler.tvm.bundle import compile_bundle

    def log(message: str) -> None:
        print(f"edgecnn compile: {message}", file=sys.stderr, flush=True)

    _check_pool(args)
    result = compile_bundle(args.model, args.target, args.output, batch=args.batch, tune=args.tune,
                            tuning_db=args.tuning_db, opset=args.opset, log=log, tracker=args.tracker,
                            key=args.key)
    manifest = result.manifest
    if args.json:
        print(json.dumps({"bundle": str(result.path), **manifest}, indent=2))
        return 0
    tuning = manifest["tuning"]
    tuned = ""
    if tuning["applied"]:
        tuned = f", tuning records applied to {tuning['records']} task(s), {tuning['trials']} trial(s) run"
    elif tuning["records"] or tuning["trials"]:
        ratio = tuning.get("tuned_over_default")
        why = f" (the tuned build ran {ratio:.2f}x the default's latency)" if ratio else ""
        tuned = f", default schedules kept{why}, {tuning['trials']} trial(s) run"
    measured = tuning.get("measured_on")
    if measured and measured["devices"]:
        tuned += f", measured on {len(measured['devices'])} device(s) of '{measured['key']}'"
    print(f"wrote {result.path} ({manifest['model_name']} for {manifest['target']['preset']}, batch "
          f"{manifest['batch']}, {manifest['compile_seconds']:.1f} s{tuned})")
    return 0
