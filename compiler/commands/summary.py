"""``edgecnn summary MODEL``: per-layer shapes, parameters, MACs, receptive field, memory."""
from __future__ import annotations

import json
import re

from edgecnn.runtime.errors import InputError

HELP = "per layer: output shape, parameters, MACs, receptive field (size, stride), activation memory; totals"


def add_arguments(parser):
    parser.add_argument("model", metavar="MODEL", help="zoo name, saved model directory or .onnx file")
    parser.add_argument("--input-shape", metavar="C,H,W",
                        help="per-sample input shape to use instead of the model's (batch excluded)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")


def parse_shape(text: str) -> tuple[int, ...]:
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InputError(f"--input-shape must be positive integers like 3,64,64. Received: {text!r}")
    return tuple(int(p) for p in parts)


def run(args) -> int:
    from ..models import load_any
    from ..summary import summarize, with_input_shape

    graph = load_any(args.model)
    if args.input_shape:
        graph = with_input_shape(graph, parse_shape(args.input_shape))
    summary = summarize(graph)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=1))
    else:
        print(summary.to_text())
    return 0
