"""``edgecnn export MODEL -o model.onnx``: write a model as checked ONNX."""
from __future__ import annotations

import json
import sys

HELP = "write a model as ONNX (checked with onnx.checker and shape inference; symbolic batch by default)"


def add_arguments(parser):
    from ..onnx_io import DEFAULT_OPSET

    parser.add_argument("model", metavar="MODEL", help="zoo name, saved model directory or .onnx file")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset to write (default {DEFAULT_OPSET}; every op states the range it can write)")
    parser.add_argument("--static-batch", type=int, metavar="N",
                        help="pin the batch dimension to N instead of leaving it symbolic")
    parser.add_argument("--json", action="store_true", help="print one JSON document describing the file")


def _dims(shape, static_batch):
    return [static_batch if isinstance(d, str) and static_batch else d for d in shape]


def run(args) -> int:
    from edgecnn.runtime.errors import InputError

    from ..models import load_any
    from ..onnx_io import save_onnx

    if args.static_batch is not None and args.static_batch < 1:
        raise InputError(f"--static-batch must be a positive integer. Received: --static-batch={args.static_batch}")
    graph = load_any(args.model)
    path = save_onnx(graph, args.output, opset=args.opset, static_batch=args.static_batch)
    info = {
        "path": str(path),
        "opset": args.opset,
        "inputs": [{"name": s.name, "shape": _dims(s.shape, args.static_batch)} for s in graph.inputs],
        "outputs": [{"name": o, "shape": _dims(graph.shapes[o], args.static_batch)} for o in graph.outputs],
        "nodes": len(graph.nodes),
        "parameters": graph.num_params(),
        "bytes": path.stat().st_size,
        "labels": len(graph.metadata.get("labels") or []),
        "checked": True,
    }
    if args.json:
        print(json.dumps(info, indent=1))
        return 0

    def fmt(items):
        return ", ".join(f"{i['name']} [{'x'.join(str(d) for d in i['shape'])}]" for i in items)

    print(f"wrote {path} ({info['bytes'] / 1024:.1f} KiB): opset {args.opset}, {info['nodes']} nodes, "
          f"{info['parameters']:,} parameters")
    print(f"  inputs:  {fmt(info['inputs'])}")
    print(f"  outputs: {fmt(info['outputs'])}")
    extras = [f"{info['labels']} class labels" if info["labels"] else "",
              "input normalisation" if graph.metadata.get("preprocessing") else ""]
    extras = [e for e in extras if e]
    print("  onnx.checker (full) and shape inference passed" + (f"; metadata: {', '.join(extras)}" if extras else ""),
          file=sys.stdout)
    return 0
