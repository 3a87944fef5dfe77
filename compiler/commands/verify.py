"""``edgecnn verify MODEL_OR_BUNDLE``: numerical agreement of compiled code with a reference.

- ``--against golden`` (default for a bundle): the bundle's own golden inputs and outputs; needs
  nothing but the runtime, so it is what a device runs (locally, ``--rpc`` or ``--emulate``).
- ``--against numpy`` / ``onnxruntime``: the reference runs here on the golden inputs plus
  random, all-zero and large-magnitude inputs.
- A MODEL (zoo name, saved model, ``.onnx``) is first compiled for ``--target`` (default
  ``host``) into a temporary bundle.
- ``--tracker HOST:PORT --key KEY [--devices N]``: on a device of a pool, or on N at once, each
  reported on its own row (a fleet check before a rollout).
- ``--layerwise``: compile a copy with every layer's output exposed and name the first layer
  whose output diverges from the NumPy backend.

Exit status 1 when anything mismatches.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from edgecnn.runtime.errors import InputError

from ._bundle_cli import add_device_arguments, is_bundle, open_bundle, open_fleet, where

HELP = "check compiled outputs against golden data, the NumPy backend or onnxruntime (exit 1 on mismatch)"


def add_arguments(parser):
    parser.add_argument("model", metavar="MODEL_OR_BUNDLE",
                        help="a bundle directory, or a zoo name / saved model / .onnx file to compile first")
    parser.add_argument("--against", choices=["golden", "numpy", "onnxruntime"],
                        help="reference (default: golden for a bundle, numpy for a model)")
    parser.add_argument("--rtol", type=float, help="relative tolerance (default: the bundle's, 1e-4)")
    parser.add_argument("--atol", type=float, help="absolute tolerance (default: the bundle's, 1e-4)")
    parser.add_argument("--target", default="host", metavar="PRESET",
                        help="preset to compile a MODEL for (default: host); see `edgecnn targets`")
    parser.add_argument("--batch", type=int, default=None, metavar="N",
                        help="static batch to compile a MODEL for (default: the model's own fixed batch, else 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input cases")
    parser.add_argument("--layerwise", action="store_true",
                        help="compare every layer's output and name the first that diverges")
    parser.add_argument("--perturb-layer", metavar="LAYER",
                        help="testing aid for --layerwise: add 0.05 to this layer's output in the compiled copy")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    add_device_arguments(parser, fleet=True)


def _tolerances(args, bundle=None) -> tuple[float, float]:
    rtol, atol = bundle.golden_tolerances if bundle is not None else (1e-4, 1e-4)
    rtol = rtol if args.rtol is None else args.rtol
    atol = atol if args.atol is None else args.atol
    if rtol < 0 or atol < 0:
        raise InputError(f"--rtol and --atol must be >= 0. Received: rtol={rtol}, atol={atol}")
    return rtol, atol


def _layerwise(args) -> int:
    from edgecnn.runtime.bundle import Bundle

    from ..verify import bundle_graph, layerwise

    if args.against not in (None, "numpy"):
        raise InputError(f"--layerwise compares with the NumPy backend. Received: --against {args.against}")
    if is_bundle(args.model):
        bundle = Bundle.check(args.model)
        graph, target, batch = bundle_graph(bundle), bundle.manifest["target"]["preset"], bundle.batch
        rtol, atol = _tolerances(args, bundle)
    else:
        from ..models import load_any

        graph, target = load_any(args.model), args.target
        batch = args.batch if args.batch is not None else (graph.fixed_batch() or 1)
        rtol, atol = _tolerances(args)
    if args.perturb_layer:
        print(f"note: the compiled copy is perturbed at layer '{args.perturb_layer}' (--perturb-layer)",
              file=sys.stderr)
    report = layerwise(graph, target, batch=batch, rtol=rtol, atol=atol, seed=args.seed,
                       perturb_layer=args.perturb_layer, open_bundle=lambda path: open_bundle(path, args),
                       log=lambda msg: print(msg, file=sys.stderr))
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report.table())
    return 0 if report.passed else 1


def _verify_fleet(path: Path, against: str, args) -> int:
    from edgecnn.runtime.fleet import address_width, on_each

    from ..verify import verify_bundle

    bundles = open_fleet(path, args)
    first = bundles[0]
    rtol, atol = _tolerances(args, first)
    print(f"verifying {first.model_name} ({first.manifest['target'].get('preset')}) against {against} on "
          f"{len(bundles)} device(s) of key '{args.key}' at once", file=sys.stderr)
    try:
        outcomes = on_each(bundles, lambda b: verify_bundle(b, against, rtol=rtol, atol=atol, seed=args.seed))
    finally:
        for bundle in bundles:
            bundle.close()
    failed = [o for o in outcomes if o.error is not None]
    mismatched = [o for o in outcomes if o.error is None and not o.result.passed]
    if args.json:
        print(json.dumps({"model": args.model, "where": where(args), "target": first.manifest["target"].get("preset"),
                          "tracker": args.tracker, "key": args.key, "against": against,
                          "passed": not failed and not mismatched,
                          "devices": [o.to_dict() for o in outcomes]},
                         indent=1))
    else:
        width = address_width(outcomes)
        print(f"{'device':<{width}} {'result':<8} {'mismatches':>10} {'max abs err':>12} {'top-1':>7}")
        for o in outcomes:
            if o.error is not None:
                print(f"{o.address:<{width}} {'failed':<8}")
                continue
            r = o.result
            top1 = "-" if r.top1_agreement is None else f"{r.top1_agreement:.3f}"
            print(f"{o.address:<{width}} {'pass' if r.passed else 'MISMATCH':<8} {r.mismatches:>10} "
                  f"{r.max_abs_error:>12.3e} {top1:>7}")
        print(f"{len(outcomes) - len(failed) - len(mismatched)} of {len(outcomes)} device(s) agree with {against} "
              f"(rtol={rtol:g}, atol={atol:g})")
    for o in failed:
        print(f"edgecnn verify: error: {o.error}", file=sys.stderr)
    for o in mismatched:
        print(f"edgecnn verify: {o.address}: {o.result.mismatches} elements differ beyond rtol={rtol:g} "
              f"atol={atol:g} (max abs error {o.result.max_abs_error:.3e})", file=sys.stderr)
    # a device that could not be checked is not a verdict on the code: that is exit 2, as for --rpc
    return 2 if failed else (1 if mismatched else 0)


def run(args) -> int:
    if args.perturb_layer and not args.layerwise:
        raise InputError("--perturb-layer is a testing aid for --layerwise")
    if args.layerwise:
        if args.devices is not None:
            raise InputError("--layerwise compares layer by layer on one device; drop --devices")
        return _layerwise(args)
    from ..verify import verify_bundle

    with tempfile.TemporaryDirectory(prefix="edgecnn-verify-") as work:
        if is_bundle(args.model):
            path, against = Path(args.model), args.against or "golden"
        else:
            from ..tvm.bundle import compile_model

            print(f"compiling {args.model} for {args.target}", file=sys.stderr)
            path = compile_model(args.model, args.target, Path(work) / "bundle", batch=args.batch)
            against = args.against or "numpy"
        if args.devices is not None:
            return _verify_fleet(path, against, args)
        bundle = open_bundle(path, args)
        try:
            rtol, atol = _tolerances(args, bundle)
            print(f"verifying {bundle.model_name} ({bundle.manifest['target'].get('preset')}, {where(args, bundle)}) "
                  f"against {against}", file=sys.stderr)
            report = verify_bundle(bundle, against, rtol=rtol, atol=atol, seed=args.seed)
        finally:
            bundle.close()
    if args.json:
        document = report.to_dict()
        document.update(model=args.model, where=where(args, bundle), target=bundle.manifest["target"].get("preset"))
        if args.tracker:
            document.update(device=bundle.executor.address, tracker=args.tracker, key=args.key)
        print(json.dumps(document, indent=1))
    else:
        print(report.table())
        if args.tracker:
            print(f"ran on {bundle.executor.address} (key '{args.key}', tracker {args.tracker})")
    if not report.passed:
        print(f"edgecnn verify: {report.mismatches} elements differ beyond rtol={report.rtol:g} "
              f"atol={report.atol:g} (max abs error {report.max_abs_error:.3e})", file=sys.stderr)
        return 1
    return 0
