"""int8 accuracy, end to end as a user types it: train, quantize, compile, then classify the test split
with the NumPy fp32 model, the NumPy integer reference and the compiled int8 host bundle.

For each model: ``edgecnn train MODEL --dataset D --epochs E``, ``edgecnn quantize RUN/model
--calibrate D --json``, ``edgecnn compile MODEL.int8.onnx --target host``; then the bundle runs on
every test image (the same split and normalisation as ``quantize``) and its top-1 is compared with
the labels, with the integer reference and with onnxruntime on the same QDQ file. Writes
``bench/results/int8_accuracy.json`` and a PNG.

    .venv/bin/python bench/int8_accuracy.py                              # digits-cnn, lenet5 on MNIST
    .venv/bin/python bench/int8_accuracy.py --models lenet5:mnist:8
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import machine, print_table, pyplot, save_figure, write_result

DEFAULT_MODELS = ["digits-cnn:digits:30", "lenet5:mnist:8"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="MODEL:DATASET:EPOCHS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="int8_accuracy")
    return p.parse_args(argv)


def edgecnn(*args) -> str:
    """One ``edgecnn`` command as a user runs it; its stdout (progress goes to stderr, shown)."""
    command = [str(Path(sys.executable).with_name("edgecnn")), *args]
    print("$ edgecnn " + " ".join(args), file=sys.stderr, flush=True)
    return subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout


def measure(model: str, dataset_name: str, epochs: int, seed: int, work: Path) -> dict:
    import numpy as np
    import onnxruntime as ort

    from edgecnn.compiler.data import load_dataset
    from edgecnn.compiler.models import load_any
    from edgecnn.compiler.numpy_backend import run as numpy_run
    from edgecnn.compiler.quant.integer import integer_graph
    from edgecnn.runtime.bundle import Bundle

    run_dir, qdq, bundle_dir = work / f"{model}_run", work / f"{model}.int8.onnx", work / f"{model}-int8"
    edgecnn("train", model, "--dataset", dataset_name, "--epochs", str(epochs), "--seed", str(seed),
            "-o", str(run_dir))
    report = json.loads(edgecnn("quantize", str(run_dir / "model"), "--calibrate", dataset_name,
                                "--seed", str(seed), "--json", "-o", str(qdq)))
    edgecnn("compile", str(qdq), "--target", "host", "-o", str(bundle_dir))

    graph = load_any(str(run_dir / "model"))
    data = load_dataset(dataset_name, seed=seed, sample_shape=tuple(graph.inputs[0].shape[1:]))
    known = graph.metadata.get("preprocessing")
    if known and len(known.get("mean", [])) == data.x.shape[1]:
        data.set_preprocessing(known["mean"], known["std"])
    test = data.split.test
    labels = data.y[test]
    igraph, _ = integer_graph(load_any(str(qdq)))
    session = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"])
    reference, compiled, onnxruntime = [], [], []
    with Bundle.open(bundle_dir) as bundle:
        name = bundle.input_names[0]
        for start in range(0, test.size, 256):
            x = data.batch(test[start:start + 256])
            reference.append(next(iter(numpy_run(igraph, {igraph.inputs[0].name: x}).values())).argmax(axis=1))
            compiled.append(bundle.run({name: x})[bundle.output_names[0]].argmax(axis=1))
            onnxruntime.append(session.run(None, {session.get_inputs()[0].name: x})[0].argmax(axis=1))
    reference, compiled, onnxruntime = (np.concatenate(v) for v in (reference, compiled, onnxruntime))
    return {
        "model": model, "dataset": dataset_name, "epochs": epochs, "test images": int(test.size),
        "fp32 %": 100 * report["fp32_accuracy"],
        "int8 reference %": 100 * float((reference == labels).mean()),
        "int8 compiled %": 100 * float((compiled == labels).mean()),
        "int8 onnxruntime %": 100 * float((onnxruntime == labels).mean()),
        "compiled = reference (top-1)": float((compiled == reference).mean()),
        "compiled = onnxruntime (top-1)": float((compiled == onnxruntime).mean()),
        "fp32 - int8 compiled (points)": 100 * report["fp32_accuracy"] - 100 * float((compiled == labels).mean()),
    }


def plot(rows, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    keys = ["fp32 %", "int8 reference %", "int8 compiled %", "int8 onnxruntime %"]
    width = 0.8 / len(keys)
    for k, key in enumerate(keys):
        ax.bar([i + k * width for i in range(len(rows))], [r[key] for r in rows], width, label=key)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], [f"{r['model']} ({r['dataset']})" for r in rows])
    low = min(r[key] for r in rows for key in keys)
    ax.set_ylim(max(0, low - 5), 100)
    ax.set_ylabel("test top-1 %")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("int8 accuracy: fp32, integer reference, compiled host bundle, onnxruntime")
    save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models:
            model, dataset_name, epochs = spec.split(":")
            rows.append(measure(model, dataset_name, int(epochs), args.seed, Path(tmp)))
    print(f"CPU: {machine()['cpu']}")
    print_table(rows)
    json_path = write_result(args.name, {"machine": machine(), "rows": rows})
    png = json_path.with_suffix(".png")
    plot(rows, png)
    print(f"wrote {json_path} and {png.name}")


if __name__ == "__main__":
    main()
