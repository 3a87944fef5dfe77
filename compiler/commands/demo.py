"""``edgecnn demo``: the flow on the built-in digits dataset, ending in a report.

Steps (each a function, so more can be slotted in): build ``digits-cnn`` from the zoo, print its
summary, run the NumPy reference backend on real test digits, write ``REPORT_DIR/report.md``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HELP = "the whole flow on the built-in digits dataset, ending in a summary table and a report"

MODEL = "digits-cnn"


def add_arguments(parser):
    parser.add_argument("-o", "--output", default="demo-report", metavar="REPORT_DIR",
                        help="directory for report.md (default: demo-report)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the data split")
    parser.add_argument("--samples", type=int, default=8, help="test digits to classify (default: 8)")


def progress(message: str):
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def build_model(seed: int):
    from ..zoo import build

    progress(f"building {MODEL} (seed {seed})")
    return build(MODEL, seed=seed)


def summarize_model(graph) -> str:
    from ..summary import summarize

    table = summarize(graph).to_text()
    print(table, flush=True)
    return table


def load_digits(graph, seed: int):
    from ..data import load_dataset

    progress("loading scikit-learn's 8x8 digits")
    return load_dataset("digits", seed=seed, sample_shape=tuple(graph.inputs[0].shape[1:]))


def classify(graph, dataset, count: int) -> dict:
    """Logits of the NumPy backend for the first ``count`` test digits."""
    from edgecnn.runtime.images import top_k

    from .. import numpy_backend

    index = dataset.split.test[:count]
    x = dataset.batch(index)
    start = time.perf_counter()
    outputs = numpy_backend.run(graph, {graph.inputs[0].name: x})
    seconds = time.perf_counter() - start
    best = [ranked[0] for ranked in top_k(outputs, graph.outputs, dataset.labels, k=1)]
    progress(f"NumPy backend: {len(index)} digits in {seconds * 1e3:.1f} ms")
    return {"index": index, "truth": dataset.y[index], "predicted": np.array([b["index"] for b in best]),
            "confidence": np.array([b["probability"] for b in best]), "seconds": seconds,
            "labels": dataset.labels}


def write_report(out_dir: Path, table: str, predictions: dict, trained: bool) -> Path:
    from ..fileio import write_text

    labels = predictions["labels"]
    correct = int((predictions["predicted"] == predictions["truth"]).sum())
    lines = [
        "# edgecnn demo", "",
        f"## Model: {MODEL}", "", "```", table, "```", "",
        "## NumPy reference backend on real test digits", "",
        ("" if trained else "The weights are the seeded initialisation, not trained: expect chance-level "
                            "predictions (about 1 in 10).\n"),
        "| sample | true | predicted | confidence |", "|---:|---:|---:|---:|",
    ]
    for i, truth, pred, conf in zip(predictions["index"], predictions["truth"], predictions["predicted"],
                                    predictions["confidence"]):
        lines.append(f"| {int(i)} | {labels[int(truth)]} | {labels[int(pred)]} | {conf:.3f} |")
    lines += ["", f"{correct} of {len(predictions['index'])} correct; "
                  f"{predictions['seconds'] * 1e3:.1f} ms for the batch.", ""]
    path = out_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path


def run(args) -> int:
    out_dir = Path(args.output)
    graph = build_model(args.seed)
    table = summarize_model(graph)
    dataset = load_digits(graph, args.seed)
    predictions = classify(graph, dataset, max(1, args.samples))
    path = write_report(out_dir, table, predictions, trained=False)
    progress(f"report written to {path}")
    return 0
