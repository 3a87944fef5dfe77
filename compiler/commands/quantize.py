"""``edgecnn quantize MODEL --calibrate DATASET -o MODEL.int8.onnx``: static int8 quantization."""
from __future__ import annotations

import json
import sys
import time

HELP = ("int8 post-training quantization: calibrate on a dataset with the NumPy backend, write QDQ ONNX, "
        "report fp32 and int8 test accuracy")


def add_arguments(parser):
    from edgecnn.compiler.quant.calibrate import METHODS

    parser.add_argument("model", metavar="MODEL", help="zoo name, saved model directory or .onnx file (float)")
    parser.add_argument("--calibrate", required=True, metavar="DATASET",
                        help="calibration data: digits, mnist, mnist:CxHxW, an .npz file or an image folder "
                             "(samples come from its training split; accuracy is reported on its test split)")
    parser.add_argument("--samples", type=int, default=256, help="calibration samples (default 256)")
    parser.add_argument("--method", choices=METHODS, default="minmax",
                        help="how activation ranges are chosen (default minmax)")
    scheme = parser.add_mutually_exclusive_group()
    scheme.add_argument("--per-channel", dest="per_channel", action="store_true", default=True,
                        help="one weight scale per output channel (the default)")
    scheme.add_argument("--per-tensor", dest="per_channel", action="store_false",
                        help="one weight scale per layer")
    parser.add_argument("--eval-samples", type=int, default=0,
                        help="test images to report accuracy on (default 0: the whole test split)")
    parser.add_argument("--seed", type=int, default=0, help="split and sample seed")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="QDQ ONNX file to write")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the summary")


def run(args) -> int:
    import numpy as np

    from edgecnn.runtime.errors import InputError

    from ..data import load_dataset
    from ..fileio import write_text
    from ..models import load_any
    from ..onnx_io import save_onnx
    from ..quant.integer import integer_graph
    from ..quant.qdq import quantize_graph
    from ..train import evaluate

    if args.samples < 1:
        raise InputError(f"--samples must be a positive integer. Received: --samples={args.samples}")
    if args.eval_samples < 0:
        raise InputError(f"--eval-samples must be 0 (all) or positive. Received: --eval-samples={args.eval_samples}")
    graph = load_any(args.model)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.nodes):
        raise InputError(f"model '{args.model}' is already quantized (it holds QuantizeLinear/DequantizeLinear); "
                         f"compile it directly")
    data = load_dataset(args.calibrate, seed=args.seed, sample_shape=tuple(graph.inputs[0].shape[1:]))
    known = graph.metadata.get("preprocessing")
    if known and len(known.get("mean", [])) == data.x.shape[1]:
        data.set_preprocessing(known["mean"], known["std"])
    pool = data.split.train if data.split.train.size else np.arange(len(data.y))
    if pool.size == 0:
        raise InputError(f"calibration dataset '{args.calibrate}' has no samples")
    chosen = np.random.default_rng(args.seed).permutation(pool)[:args.samples]
    batches = [data.batch(chosen[i:i + 64]) for i in range(0, chosen.size, 64)]
    if any(not np.all(np.isfinite(b)) for b in batches):
        raise InputError(f"calibration dataset '{args.calibrate}' holds NaN or infinite values")

    def progress(done, total):
        if not args.json:
            end = "\n" if done == total else "\r"
            print(f"calibrating ({args.method}, {chosen.size} samples): pass batch {done}/{total}", end=end,
                  file=sys.stderr, flush=True)

    start = time.perf_counter()
    qgraph, report = quantize_graph(graph, batches, method=args.method, per_channel=args.per_channel,
                                    progress=progress)
    path = save_onnx(qgraph, args.output)
    report["seconds"] = round(time.perf_counter() - start, 2)
    igraph, integer = integer_graph(qgraph)
    report["integer_reference"] = integer
    test = data.split.test if args.eval_samples == 0 else data.split.test[:args.eval_samples]
    report["test_samples"] = int(test.size)
    if test.size:
        report["fp32_accuracy"] = evaluate(graph, data, test)
        report["int8_accuracy"] = evaluate(igraph, data, test)
        report["onnxruntime_top1_agreement"] = _onnxruntime_agreement(path, igraph, data, test)
    report["path"] = str(path)
    report["bytes"] = path.stat().st_size
    report["calibration"] = {"dataset": args.calibrate, "samples": int(chosen.size)}
    sidecar = path.with_suffix(".quantization.json")
    write_text(sidecar, json.dumps(report, indent=1) + "\n")
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"wrote {path} ({report['bytes'] / 1024:.1f} KiB, QDQ int8) and {sidecar.name}")
    print(f"  quantized ({len(report['quantized'])}): {', '.join(report['quantized'])}")
    if report["batchnorm_folded"]:
        print(f"  BatchNorm folded into the conv before it: {', '.join(report['batchnorm_folded'])}")
    for layer, why in report["float"].items():
        print(f"  stays float: {layer}: {why}")
    if test.size:
        print(f"  test accuracy on {test.size} images: fp32 {report['fp32_accuracy']:.2%}, int8 "
              f"{report['int8_accuracy']:.2%} (NumPy integer reference); onnxruntime on the same file agrees "
              f"at top-1 on {report['onnxruntime_top1_agreement']:.2%}")
    return 0


def _onnxruntime_agreement(path, igraph, data, test) -> float:
    """Share of test images where onnxruntime on the QDQ file and the integer reference pick
    the same class."""
    import numpy as np
    import onnxruntime as ort

    from .. import numpy_backend

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = igraph.inputs[0].name
    same = 0
    for start in range(0, test.size, 256):
        x = data.batch(test[start:start + 256])
        ours = numpy_backend.forward(igraph, {name: x})[igraph.outputs[0]]
        theirs = session.run(None, {name: x})[0]
        same += int(np.sum(ours.reshape(len(x), -1).argmax(1) == theirs.reshape(len(x), -1).argmax(1)))
    return same / test.size
