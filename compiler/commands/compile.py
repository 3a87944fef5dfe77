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
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset used when exporting an IR model")
    parser.add_argument("--json", action="store_true", help="print the bundle's manifest as JSON")


def run(args) -> int:
    from edgecnn.compiler.tvm.bundle import compile_bundle

    def log(message: str) -> None:
        print(f"edgecnn compile: {message}", file=sys.stderr, flush=True)

    result = compile_bundle(args.model, args.target, args.output, batch=args.batch, tune=args.tune,
                            tuning_db=args.tuning_db, opset=args.opset, log=log)
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
    print(f"wrote {result.path} ({manifest['model_name']} for {manifest['target']['preset']}, batch "
          f"{manifest['batch']}, {manifest['compile_seconds']:.1f} s{tuned})")
    return 0
