"""``edgecnn run MODEL --input FILE [--backend numpy|onnxruntime] [-o OUT.npz]``: inference.

MODEL is a zoo name, a saved model directory, an ``.onnx`` file or a bundle directory (its
compiled code runs, here, over RPC or under qemu: :func:`run_bundle`). In-process backends are
entries of :data:`BACKENDS` (name -> function of a :class:`Loaded` model and its feeds), so
adding one is adding an entry; ``--backend tvm`` compiles the model and runs its bundle
(:func:`run_compiled`). Inputs are read as for bundles (``edgecnn.runtime.images.read_inputs``).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecnn.runtime.errors import InputError

from ._bundle_cli import add_device_arguments, is_bundle, open_bundle, reject_device_options, where

HELP = ("run a model on inputs from .npy/.npz/images with the NumPy backend, onnxruntime or TVM (compiled "
        "for this CPU, cached); -o writes outputs as .npz")


@dataclass
class Loaded:
    """A model resolved from the MODEL argument."""

    spec: str
    graph: object  # edgecnn.compiler.ir.Graph
    #: the ONNX file the user gave, run as it is by onnxruntime (None: export the graph)
    onnx_path: Path | None = None


def _run_numpy(model: Loaded, feeds: dict) -> dict:
    from ..numpy_backend import run
    from ..quant.integer import reference_graph

    # a quantized model runs as integer arithmetic, as compiled int8 code and onnxruntime do
    return run(reference_graph(model.graph), feeds)


def _run_onnxruntime(model: Loaded, feeds: dict) -> dict:
    import onnxruntime as ort

    from ..onnx_io import export_model

    data = model.onnx_path.read_bytes() if model.onnx_path else export_model(model.graph).SerializeToString()
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types are not importable in a stable way
        raise InputError(f"onnxruntime cannot load '{model.spec}': {str(exc).strip().splitlines()[0]}") from None
    names = [o.name for o in session.get_outputs()]
    try:
        return dict(zip(names, session.run(names, feeds)))
    except Exception as exc:  # e.g. InvalidArgument: inputs the file's own declarations refuse
        raise InputError(f"onnxruntime cannot run '{model.spec}': {' '.join(str(exc).split())}") from None


#: backend name -> function(Loaded, feeds {input name: float32 array}) -> {output name: array};
#: ``tvm`` is not in it: it compiles the model and runs it as a bundle (:func:`run_compiled`)
BACKENDS = {
    "numpy": _run_numpy,
    "onnxruntime": _run_onnxruntime,
}


def add_arguments(parser):
    parser.add_argument("model", metavar="MODEL", help="zoo name, saved model directory or .onnx file")
    parser.add_argument("--input", "-i", required=True, metavar="FILE",
                        help="inputs: .npy (single-input models), .npz with one array per input name, or an "
                             "image (resized, scaled to [0, 1] and normalised with the model's preprocessing); "
                             "a sample without its batch dimension gets batch 1")
    parser.add_argument("--backend", default="numpy", choices=sorted([*BACKENDS, "tvm"]),
                        help="what computes the outputs (default: numpy); tvm compiles the model for this CPU "
                             "once (cached) and runs the bundle")
    parser.add_argument("--batch", type=int, default=None, metavar="N",
                        help="with --backend tvm: the static batch it is compiled for (default: the model's own "
                             "fixed batch, else the input's number of samples)")
    parser.add_argument("-o", "--output", metavar="OUT.npz", help="write the outputs, one array per output name")
    parser.add_argument("--top", type=int, default=5, metavar="K",
                        help="classes shown per sample for classifiers with labels (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    # A bundle directory as MODEL runs its compiled code (also images as --input, --rpc, --tracker, --emulate).
    add_device_arguments(parser)


def load_model(spec: str) -> Loaded:
    from ..models import load_any

    graph = load_any(spec)
    path = Path(spec)
    onnx_path = path if path.suffix.lower() == ".onnx" and path.is_file() else None
    return Loaded(spec, graph, onnx_path)


def read_inputs(path, graph) -> dict:
    """Feeds for ``graph`` from a file: the same readers as for bundles, then checked against the graph."""
    from edgecnn.runtime.bundle import TensorInfo
    from edgecnn.runtime.images import read_inputs as read_files

    from ..numpy_backend import check_feeds

    infos = [TensorInfo(spec.name, spec.concrete(1), spec.dtype) for spec in graph.inputs]
    feeds = read_files(path, infos, graph.metadata.get("preprocessing"))
    check_feeds(graph, feeds)
    return feeds


def save_outputs(path, outputs: dict):
    from ..fileio import atomic_path

    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise InputError(f"-o must name an .npz file. Received: '{path}'")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in outputs.items()})


def top_k(graph, outputs: dict, k: int) -> list | None:
    """Per sample the ``k`` most likely classes, for a single-output classifier with labels."""
    from edgecnn.runtime.images import top_k as ranked  # the same ranking for bundles and models

    return ranked(outputs, graph.outputs, graph.metadata.get("labels"), k)


def _run_bundle_on(bundle, feeds: dict, args, title: str, facts: dict) -> int:
    """Run an open bundle on ``feeds`` and report, as every bundle run of ``edgecnn run`` does."""
    from edgecnn.runtime.images import top_k as ranked_classes

    start = time.perf_counter()
    outputs = bundle.run(feeds)
    seconds = time.perf_counter() - start
    ranked = ranked_classes(outputs, bundle.output_names, bundle.labels, getattr(args, "top", 5))
    return report(args, title, feeds, outputs, ranked, seconds, facts)


def run_bundle(args) -> int:
    """``edgecnn run BUNDLE --input FILE [-o OUT.npz]``: the compiled code on .npy/.npz/image inputs."""
    from edgecnn.runtime.images import read_inputs as read_files

    bundle = open_bundle(args.model, args)
    try:
        feeds = read_files(args.input, bundle.inputs, bundle.preprocessing)
        title = f"{bundle.model_name} bundle ({bundle.manifest['target'].get('preset')}, {where(args, bundle)})"
        return _run_bundle_on(bundle, feeds, args, title, {"model": bundle.model_name, "bundle": str(bundle.path),
                                                          "backend": "tvm", "where": where(args, bundle)})
    finally:
        bundle.close()


def _onnx_input_infos(path: Path) -> tuple[list, dict | None]:
    """The inputs an ONNX file declares (a symbolic batch read as 1) and its preprocessing."""
    from edgecnn.runtime.bundle import TensorInfo

    from ..onnx_io import load_onnx, read_metadata
    from ..tvm.frontend import model_inputs

    model = load_onnx(path)
    infos = [TensorInfo(i.name, tuple(d.dim_value if d.dim_value > 0 else 1 for d in i.type.tensor_type.shape.dim),
                        "float32") for i in model_inputs(model)]
    return infos, read_metadata(model).get("preprocessing")


def run_compiled(args) -> int:
    """``--backend tvm``: the model compiled for this CPU (once: the compile cache keeps it) and
    run as its bundle. An ONNX file goes to TVM as it is, whether or not the IR imports it."""
    from edgecnn.runtime.bundle import Bundle, TensorInfo
    from edgecnn.runtime.images import read_inputs as read_files

    from ..models import load_any
    from ..tvm.bundle import cached_bundle

    path = Path(args.model)
    if path.suffix.lower() == ".onnx" and path.is_file():
        source, (infos, preprocessing) = path, _onnx_input_infos(path)
    else:
        source = load_any(args.model)
        infos = [TensorInfo(spec.name, spec.concrete(1), spec.dtype) for spec in source.inputs]
        preprocessing = source.metadata.get("preprocessing")
    feeds = read_files(args.input, infos, preprocessing)
    samples = next(iter(feeds.values())).shape[0] if feeds else 1
    bundle_dir = cached_bundle(source, "host", batch=args.batch, default_batch=max(samples, 1),
                               log=lambda m: print(f"edgecnn run: {m}", file=sys.stderr, flush=True))
    with Bundle.open(bundle_dir) as bundle:
        return _run_bundle_on(bundle, feeds, args, f"{args.model} on tvm (batch {bundle.batch})",
                              {"model": args.model, "backend": "tvm", "batch": bundle.batch})


def run(args) -> int:
    if is_bundle(args.model):
        return run_bundle(args)
    reject_device_options(args)
    if args.backend == "tvm":
        return run_compiled(args)
    if args.batch is not None:
        raise InputError(f"--batch sets the static batch of a TVM build; it applies to --backend tvm only. "
                         f"Received: backend={args.backend}, batch={args.batch}")
    model = load_model(args.model)
    graph = model.graph
    feeds = read_inputs(args.input, graph)
    start = time.perf_counter()
    outputs = BACKENDS[args.backend](model, feeds)
    seconds = time.perf_counter() - start
    missing = [o for o in graph.outputs if o not in outputs]
    if missing:
        raise InputError(f"backend {args.backend} did not produce outputs {missing}. Received: {sorted(outputs)}")
    outputs = {o: np.asarray(outputs[o]) for o in graph.outputs}
    ranked = top_k(graph, outputs, args.top)
    return report(args, f"{args.model} on {args.backend}", feeds, outputs, ranked, seconds,
                  {"model": args.model, "backend": args.backend})


def _finite(ranked: list | None) -> list | None:
    """``ranked`` with a probability that is NaN or infinite (NaN outputs) as None: JSON has no NaN."""
    if ranked is None:
        return None
    return [[{**c, "probability": c["probability"] if np.isfinite(c["probability"]) else None} for c in row]
            for row in ranked]


def report(args, title: str, feeds: dict, outputs: dict, ranked: list | None, seconds: float, facts: dict) -> int:
    """Write ``-o OUT.npz`` and print the result (text, or one JSON document with ``--json``).

    Shared by models and bundles, so both answer in the same form.
    """
    if args.output:
        save_outputs(args.output, outputs)
    if args.json:
        print(json.dumps({
            **facts, "seconds": seconds,
            "inputs": {k: list(v.shape) for k, v in feeds.items()},
            "outputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in outputs.items()},
            "output_file": args.output, "top": _finite(ranked),
        }, indent=1))
        return 0
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
    outs = ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items())
    print(f"{title}: {shapes} -> {outs} in {seconds * 1e3:.1f} ms")
    if ranked:
        shown = ranked[:8]
        for i, row in enumerate(shown):
            print(f"  sample {i}: " + ", ".join(f"{c['label']} {c['probability']:.3f}" for c in row))
        if len(ranked) > len(shown):
            print(f"  ... {len(ranked) - len(shown)} more samples")
    else:
        for k, v in outputs.items():
            if v.size:
                print(f"  {k}: min {float(v.min()):.4g}, max {float(v.max()):.4g}, mean {float(v.mean()):.4g}")
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0
