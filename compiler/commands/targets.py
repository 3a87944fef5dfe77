"""``edgecnn targets``: the target presets and what this machine can do with each."""
from __future__ import annotations

import json

HELP = "list target presets and whether this machine can build / run / emulate each"


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")


def _yes(flag: bool) -> str:
    return "yes" if flag else "-"


def run(args) -> int:
    from edgecnn.targets import list_presets

    presets = list_presets()
    if args.json:
        print(json.dumps({"presets": [p.to_dict() for p in presets]}, indent=2))
        return 0
    rows = [("PRESET", "DEVICE", "ARCH", "BUILD", "RUN", "EMULATE", "DESCRIPTION")]
    missing, limits = [], []
    for p in presets:
        caps = p.capabilities()
        rows.append((p.name, p.device, p.arch, _yes(caps.build), _yes(caps.run), _yes(caps.emulate), p.description))
        missing.extend(f"  {p.name}: {m}" for m in caps.missing)
        limits.extend(f"  {p.name}: {m}" for m in caps.limits)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    if missing:
        print("\nmissing (install to enable):")
        print("\n".join(missing))
    if limits:
        print("\nnot possible on this machine:")
        print("\n".join(limits))
    return 0
