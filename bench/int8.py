"""int8 against fp32 and onnxruntime: the same models quantized with ``edgecnn quantize``'s code.

For each model, in one process, interleaved in rotating order, batch 1: edgecnn int8 (the QDQ
file compiled for the host preset), edgecnn fp32, onnxruntime int8 on the same QDQ file,
onnxruntime fp32, and a second copy of the edgecnn int8 build (the noise floor: two copies of
one build timed against each other). Ratios are medians over rounds of per-round p50 ratios
(``runtime.timing.paired_ratio``). Activations are calibrated on seeded random inputs (timing
does not depend on accuracy; ``edgecnn quantize`` reports accuracy on real data). Also counts
``vpdpbusd`` (VNNI) and ``sdot`` in the assembly of each int8 build, and the convs that run in
integer arithmetic. Writes ``bench/results/int8.json`` and a PNG.

    .venv/bin/python bench/int8.py                          # vgg-small resnet8 resnet50 3conv-224
    .venv/bin/python bench/int8.py --models vgg-small --rounds 20
"""
from __future__ import annotations

import argparse
import re
import sys

from _common import machine, print_table, pyplot, save_figure, set_threads, write_result
from cpu_kernels import edgecnn_build, input_feeds, load_model, ort_peer, _vm_peer

from edgecnn.runtime.timing import flatten, interleaved, paired_ratio

DEFAULT_MODELS = ["vgg-small", "resnet8", "resnet50", "3conv-224"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--per-round", type=int, default=6)
    p.add_argument("--calibration-batches", type=int, default=2, help="random batches of 4 to calibrate on")
    p.add_argument("--target", default="host")
    p.add_argument("--name", default="int8")
    return p.parse_args(argv)


def quantized(model, graph, batches: int):
    """The model's QDQ form from edgecnn's quantizer (the graph imported from the ONNX file)."""
    import numpy as np

    from edgecnn.compiler import onnx_io
    from edgecnn.compiler.quant.qdq import quantize_graph

    if graph is None:
        graph = onnx_io.import_model(model)
    # batches of 4 images, or as many single images where the model fixes its batch at 1
    fixed = graph.inputs[0].shape[0]
    batch = fixed if isinstance(fixed, int) else 4
    shape = (batch,) + tuple(d if isinstance(d, int) else 1 for d in graph.inputs[0].shape[1:])
    rng = np.random.default_rng(0)
    qgraph, report = quantize_graph(graph, [rng.standard_normal(shape).astype(np.float32)
                                            for _ in range(batches * 4 // batch)])
    return onnx_io.export_model(qgraph, static_batch=1), report


def instruction_counts(executable) -> dict:
    from edgecnn.compiler.tvm.library import cpu_assembly

    text = cpu_assembly(executable)
    return {name: len(re.findall(rf"\b{name}\b", text)) for name in ("vpdpbusd", "vpmaddwd", "vpmaddubsw",
                                                                        "vpmulld", "vfmadd231ps", "sdot")}


def integer_convs(lowered) -> int:
    """Scheduled functions whose accumulator is int32 (a conv or dense in integer arithmetic)."""
    import tvm

    return sum(1 for _, f in lowered.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc) and "int32" in str(f.ret_type if hasattr(f, "ret_type") else "")
               or (isinstance(f, tvm.tirx.PrimFunc) and 'T.Cast("int32"' in f.script()))


def bench_model(name, args, target):
    model, graph = load_model(name)
    qmodel, report = quantized(model, graph, args.calibration_batches)
    feeds = input_feeds(model)
    q_exec, q_lowered = edgecnn_build(qmodel, target)
    f_exec, _ = edgecnn_build(model, target)
    peers = {
        "edgecnn int8": _vm_peer(q_exec, feeds),
        "edgecnn fp32": _vm_peer(f_exec, feeds),
        "onnxruntime int8": ort_peer(qmodel, feeds, args.threads),
        "onnxruntime fp32": ort_peer(model, feeds, args.threads),
        "edgecnn int8 (copy)": _vm_peer(edgecnn_build(qmodel, target)[0], feeds),
    }
    import numpy as np

    outs = {k: np.asarray(p()) for k, p in peers.items()}
    agree = float((outs["edgecnn int8"].reshape(1, -1).argmax(1) == outs["onnxruntime int8"].reshape(1, -1).argmax(1)).mean())
    timings = interleaved(peers, rounds=args.rounds, calls=args.per_round,
                          progress=lambda r, p, _: print(f"  {name}: round {r + 1}/{args.rounds} {p}", file=sys.stderr,
                                                         end="\r"))
    print(file=sys.stderr)
    p50 = {k: float(np.median(flatten(v))) * 1e3 for k, v in timings.items()}
    row = {
        "model": name,
        "int8 ms": p50["edgecnn int8"], "fp32 ms": p50["edgecnn fp32"],
        "ort int8 ms": p50["onnxruntime int8"], "ort fp32 ms": p50["onnxruntime fp32"],
        "int8/ort int8": paired_ratio(timings["edgecnn int8"], timings["onnxruntime int8"]),
        "int8/fp32": paired_ratio(timings["edgecnn int8"], timings["edgecnn fp32"]),
        "noise": paired_ratio(timings["edgecnn int8 (copy)"], timings["edgecnn int8"]),
        "quantized layers": len(report["quantized"]),
        "top-1 vs ort": agree,
        "max |int8 - ort int8|": float(np.abs(outs["edgecnn int8"] - outs["onnxruntime int8"]).max()),
    }
    row.update({f"asm {k}": v for k, v in instruction_counts(q_exec).items()})
    return row, {k: flatten(v) for k, v in timings.items()}


def plot(rows, path):
    plt = pyplot()
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.8))
    names = [r["model"] for r in rows]
    keys = [("int8 ms", "edgecnn int8"), ("fp32 ms", "edgecnn fp32"), ("ort int8 ms", "onnxruntime int8"),
            ("ort fp32 ms", "onnxruntime fp32")]
    x = np.arange(len(rows))
    width = 0.2
    for i, (key, label) in enumerate(keys):
        ax.bar(x + (i - 1.5) * width, [r[key] / r["ort int8 ms"] for r in rows], width, label=label)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x, names)
    ax.set_ylabel("p50 latency / onnxruntime int8")
    ax.set_title(f"int8 and fp32, batch 1, {machine()['cpu']}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    from edgecnn.targets.presets import get_preset

    target = get_preset(args.target).target()
    host = machine()
    print(f"CPU: {host['cpu']}, {host['cores']} cores; preset {args.target}: {target}", file=sys.stderr)
    rows, raw = [], {}
    for name in args.models:
        row, raw[name] = bench_model(name, args, target)
        rows.append(row)
    print_table(rows)
    doc = {"machine": host, "target": str(target), "threads": args.threads, "rounds": args.rounds,
           "rows": rows, "seconds": raw}
    path = write_result(args.name, doc)
    plot(rows, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png').name}")


if __name__ == "__main__":
    main()
