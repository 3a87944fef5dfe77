"""A compiled bundle: the executable, the exact ONNX, golden data and a sealed manifest.

- ``model.so``       the executable, linked for the preset (cross-linked for aarch64);
- ``manifest.json``  inputs, outputs, batch, the full target, versions, SHA-256 of the files,
                     labels and preprocessing when known, whether tuning records were applied;
- ``golden.npz``     seeded sample inputs and reference outputs: from the NumPy backend when the
                     model imports into the IR, from onnxruntime otherwise (the manifest says which);
- ``model.onnx``     the exact model compiled (static batch).

The bundle is assembled in a temporary sibling directory and renamed into place, so a compile
that fails leaves no half bundle and an older bundle at that path untouched. Bundles are
compiled for one static batch (the runtime splits larger batches). ``cached_bundle`` keeps one
bundle per model, target and compiler version for ``edgecnn run --backend tvm``.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import tvm
from tvm.support import cc

from edgecnn.compiler import numpy_backend, onnx_io
from edgecnn.compiler.fileio import atomic_dir
from edgecnn.compiler.ir import Graph
from edgecnn.compiler.quant.integer import is_quantized, output_tolerance, reference_graph
from edgecnn.runtime.bundle import seal_manifest, sha256_file
from edgecnn.runtime.errors import InputError, received
from edgecnn.runtime.host import cache_root, edgecnn_version
from edgecnn.targets import Preset, get_preset

from .errors import CompileError, first_line
from . import tuning
from .frontend import ModelSource, fixed_batch, model_inputs, resolve_model, to_relax
from .pipelines import build


BUNDLE_FORMAT_VERSION = 1
GOLDEN_SEED = 0
GOLDEN_RTOL = 1e-4
GOLDEN_ATOL = 1e-4


def golden_data(source: ModelSource, batch: int) -> tuple[dict, dict, str]:
    """Seeded sample inputs and the reference outputs: NumPy backend, or onnxruntime without a graph."""
    rng = np.random.default_rng(GOLDEN_SEED)
    feeds = {}
    for inp in model_inputs(source.onnx_model):
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    if source.graph is not None:
        quantized = is_quantized(source.graph)
        # a quantized model's reference is integer arithmetic, as the compiled int8 code's
        outputs = numpy_backend.run(reference_graph(source.graph), feeds)
        names = [o.name for o in source.onnx_model.graph.output]
        return (feeds, {n: np.asarray(outputs[n], dtype=np.float32) for n in names},
                "numpy-int8" if quantized else "numpy")
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(source.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, feeds)
    except Exception as exc:  # onnxruntime's exception types are not importable in a stable way
        raise CompileError(f"no reference outputs for the golden data: the IR does not import the model "
                           f"({first_line(source.graph_note)}) and onnxruntime cannot run it: "
                           f"{first_line(str(exc))}") from None
    return feeds, {n: np.asarray(r, dtype=np.float32) for n, r in zip(names, results)}, "onnxruntime"


@dataclass
class CompileResult:
    path: Path
    manifest: dict
    library: object  # the built tvm runtime Module (for inspection: kernels, sources)
    relax_module: object  # the IRModule after the preset's pipeline


def _versions(opset: int) -> dict:
    return {"edgecnn": edgecnn_version(), "tvm": tvm.__version__, "onnx": onnx.__version__, "opset": opset}


def export_library(executable, preset: Preset, path: Path) -> None:
    try:
        executable.export_library(str(path), fcompile=cc.cross_compiler(preset.linker()))
    except Exception as exc:
        lines = [x for x in str(exc).strip().splitlines() if x.strip()]
        raise CompileError(f"linking model.so with {preset.linker()} failed: {lines[-1] if lines else exc}") from None


def compile_bundle(model, target: str, out_dir, *, batch: int | None = None, default_batch: int = 1, tune: int = 0,
                   tuning_db=None, opset: int = 17, log=None, tracker: str | None = None,
                   key: str | None = None) -> CompileResult:
    """Compile ``model`` for the preset ``target`` into the bundle directory ``out_dir``.

    ``batch`` None compiles an ONNX model at its own fixed batch, and any other at ``default_batch``.
    """
    start = time.perf_counter()
    preset = get_preset(target)
    for name, value in (("batch", batch), ("default_batch", default_batch)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InputError(f"{name} must be a positive integer. {received(**{name: value})}")
    if tune < 0:
        raise InputError(f"--tune takes a number of trials >= 0. {received(tune=tune)}")
    preset.require_buildable()
    say = log or (lambda msg: None)

    source = resolve_model(model, batch=batch, default_batch=default_batch, opset=opset)
    batch = source.batch
    say(f"importing {source.name} into Relax")
    relax_mod = to_relax(source.onnx_model)

    database, tuning_info = None, {"applied": False, "records": 0, "trials": 0}
    if tune > 0 or tuning_db is not None:
        database, tuning_info = tuning.prepare(relax_mod, preset, trials=tune, db_root=tuning_db, log=say,
                                               tracker=tracker, key=key)

    feeds, outputs, reference = golden_data(source, batch)
    golden_atol = GOLDEN_ATOL
    if source.graph is not None and is_quantized(source.graph):
        golden_atol = max(GOLDEN_ATOL, output_tolerance(source.graph))
    say(f"compiling for {preset.name}")
    if database is None:
        executable, lowered = build(relax_mod, preset)
    else:
        executable, lowered, verdict = tuning.build_with_records(relax_mod, preset, database, feeds, log=say)
        tuning_info = {**tuning_info, **verdict, "applied": tuning_info["applied"] and verdict["kept"] == "tuned"}

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        export_library(executable, preset, tmp / "model.so")
        (tmp / "model.onnx").write_bytes(source.onnx_model.SerializeToString())
        buf = io.BytesIO()
        np.savez(buf, **{f"input:{k}": v for k, v in feeds.items()}, **{f"output:{k}": v for k, v in outputs.items()})
        (tmp / "golden.npz").write_bytes(buf.getvalue())
        manifest = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "model_name": source.name,
            "inputs": [{"name": k, "shape": list(v.shape), "dtype": "float32"} for k, v in feeds.items()],
            "outputs": [{"name": k, "shape": list(v.shape), "dtype": "float32"} for k, v in outputs.items()],
            "batch": batch,
            "target": {"preset": preset.name, "tvm_target": preset.target_json(), "device": preset.device,
                       "arch": preset.arch},
            "versions": _versions(onnx_io.model_opset(source.onnx_model)),
            "files": {name: {"sha256": sha256_file(tmp / name)} for name in ("model.so", "model.onnx", "golden.npz")},
            "labels": source.metadata.get("labels"),
            "preprocessing": source.metadata.get("preprocessing"),
            "tuning": tuning_info,
            "golden": {"reference": reference, "rtol": GOLDEN_RTOL, "atol": golden_atol},
            "compile_seconds": round(time.perf_counter() - start, 3),
        }
        if source.graph is None:
            manifest["golden"]["why"] = source.graph_note
        manifest = seal_manifest(manifest)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return CompileResult(out_dir, manifest, executable.mod, lowered)


def compile_model(model, target: str, out_dir, *, batch: int | None = None, tune: int = 0, tuning_db=None,
                  opset: int = 17) -> Path:
    """Compile to a bundle directory and return its path (see :func:`compile_bundle`)."""
    return compile_bundle(model, target, out_dir, batch=batch, tune=tune, tuning_db=tuning_db, opset=opset).path


def default_cache_root() -> Path:
    return cache_root() / "bundles"


def cached_bundle(model, target: str = "host", *, batch: int | None = None, default_batch: int = 1,
                  cache_root=None, log=None) -> Path:
    """A bundle of ``model`` (a Graph or an ``.onnx`` path) for ``target``, compiled once and reused.

    ``batch`` and ``default_batch`` as for :func:`compile_bundle`. The key covers the exact ONNX
    bytes, the batch asked for, the preset's full target and the edgecnn and TVM versions, so a
    changed model, batch, CPU or compiler gets a fresh bundle.
    """
    preset = get_preset(target)
    if isinstance(model, Graph):
        onnx_bytes = onnx_io.export_model(model, static_batch=1).SerializeToString()
        fixed = model.fixed_batch()
    else:
        onnx_bytes = Path(model).read_bytes()
        fixed = fixed_batch(onnx_io.load_onnx(onnx_bytes))
    # keyed by the batch compiled, so a fixed-batch model is compiled once whatever the input's size
    compiled_batch = batch if batch is not None else (fixed or default_batch)
    key = hashlib.sha256(onnx_bytes)
    key.update(json.dumps([preset.name, preset.target_json(), edgecnn_version(), tvm.__version__, compiled_batch],
                          sort_keys=True).encode())
    path = Path(cache_root or default_cache_root()) / f"{preset.name}-{key.hexdigest()[:24]}"
    if not (path / "manifest.json").is_file():
        compile_bundle(model, target, path, batch=compiled_batch, log=log)
    return path
