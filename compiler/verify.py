"""Host-side verification: compiled bundles against the NumPy backend or onnxruntime, layer by layer.

``verify_bundle`` runs the bundle and a reference on the same inputs: the bundle's golden
inputs, seeded random inputs (more samples than the compiled batch, so batching is exercised),
zeros, and inputs of large magnitude (x1000; there atol is scaled by the largest reference
magnitude, see :func:`edgecnn.runtime.verify.compare_outputs`). The reference is the bundle's
own ``model.onnx``: run by onnxruntime, or imported into the IR and run by the NumPy backend.

``layerwise`` finds where a compiled model starts to disagree: it compiles a copy of the graph
in which every layer's output is also a graph output (same preset, same batch), runs it, and
compares each layer with the NumPy backend's value of the same tensor, in topological order.
The first layer with mismatching elements is named by the user's layer name. ``perturb_layer``
adds a constant to one layer's output in the compiled copy only: a testing aid that shows what
a divergence looks like and that the search finds it.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgecnn.runtime.bundle import Bundle, chunks, check_feeds
from edgecnn.runtime.errors import InputError, received
from edgecnn.runtime.verify import Report, compare, compare_outputs, verify_golden

AGAINST = ("golden", "numpy", "onnxruntime")
LARGE_MAGNITUDE = 1e3
PERTURB_DELTA = 0.05


# -- references ------------------------------------------------------------------------------------
def _batched(run_static: Callable[[dict], dict], batch: int, output_names: list[str]):
    """Run a static-batch function on N samples by chunks, as the runtime does."""

    def run(feeds: dict) -> dict:
        n = next(iter(feeds.values())).shape[0]
        parts = []
        for part, real in chunks(feeds, n, batch):
            out = run_static(part)
            parts.append({k: np.asarray(out[k])[:real] for k in output_names})
        return {k: np.concatenate([p[k] for p in parts]) for k in output_names}

    return run


def onnxruntime_reference(bundle: Bundle):
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(bundle.path / "model.onnx"), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's exception types are not importable in a stable way
        raise InputError(f"onnxruntime cannot load {bundle.path / 'model.onnx'}: "
                         f"{str(exc).strip().splitlines()[0]}") from None
    names = bundle.output_names

    def run_static(feeds):
        return dict(zip(names, session.run(names, feeds)))

    return _batched(run_static, bundle.batch, names)


def bundle_graph(bundle: Bundle):
    """The bundle's ``model.onnx`` imported into the IR (for the NumPy reference and --layerwise)."""
    from .onnx_io import import_model

    try:
        return import_model(bundle.path / "model.onnx")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{bundle.path / 'model.onnx'} does not import into edgecnn's IR, so the NumPy "
                         f"backend cannot be the reference ({exc}); use --against onnxruntime") from None


def numpy_reference(bundle: Bundle, graph=None):
    from .numpy_backend import run

    from .quant.integer import reference_graph

    graph = reference_graph(graph if graph is not None else bundle_graph(bundle))
    names = bundle.output_names
    missing = [n for n in names if n not in graph.outputs]
    if missing:
        raise InputError(f"the imported model.onnx lacks outputs {missing}. {received(outputs=graph.outputs)}")
    return _batched(lambda feeds: run(graph, feeds), bundle.batch, names)


# -- inputs ----------------------------------------------------------------------------------------
def input_cases(bundle: Bundle, seed: int = 0) -> list[tuple[str, dict, bool]]:
    """(case name, feeds, scale atol) for golden, random, zeros and large-magnitude inputs."""
    rng = np.random.default_rng(seed)
    samples = 2 * bundle.batch + 1  # two full chunks and a padded one
    cases = [("golden", dict(bundle.golden_inputs), False)]
    shapes = {i.name: (samples,) + i.shape[1:] for i in bundle.inputs}
    cases.append(("random", {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}, False))
    cases.append(("zeros", {k: np.zeros(s, np.float32) for k, s in shapes.items()}, False))
    cases.append(("large", {k: (rng.standard_normal(s) * LARGE_MAGNITUDE).astype(np.float32)
                            for k, s in shapes.items()}, True))
    return cases


def verify_bundle(bundle: Bundle, against: str = "golden", *, rtol: float | None = None,
                  atol: float | None = None, seed: int = 0, graph=None) -> Report:
    """Compare an opened bundle with ``against``; the report holds every case and output."""
    if against not in AGAINST:
        raise InputError(f"--against takes one of {', '.join(AGAINST)}. {received(against=against)}")
    if against == "golden":
        return verify_golden(bundle, rtol=rtol, atol=atol)
    default_rtol, default_atol = bundle.golden_tolerances
    report = Report(against=against, rtol=default_rtol if rtol is None else rtol,
                    atol=default_atol if atol is None else atol)
    reference = onnxruntime_reference(bundle) if against == "onnxruntime" else numpy_reference(bundle, graph)
    for case, feeds, scale_atol in input_cases(bundle, seed):
        feeds, _ = check_feeds(bundle.inputs, feeds)
        compare_outputs(report, case, bundle.run(feeds), reference(feeds), scale_atol=scale_atol)
    return report


# -- layer by layer --------------------------------------------------------------------------------
@dataclass
class LayerRow:
    layer: str
    op_type: str
    tensor: str
    shape: list[int]
    max_abs_error: float
    max_rel_error: float
    mismatches: int
    elements: int


@dataclass
class LayerReport:
    rtol: float
    atol: float
    target: str
    rows: list[LayerRow] = field(default_factory=list)
    perturbed_layer: str | None = None

    @property
    def first_divergent(self) -> LayerRow | None:
        return next((r for r in self.rows if r.mismatches), None)

    @property
    def passed(self) -> bool:
        return self.first_divergent is None

    def to_dict(self) -> dict:
        first = self.first_divergent
        return {"passed": self.passed, "target": self.target, "rtol": self.rtol, "atol": self.atol,
                "first_divergent_layer": first.layer if first else None,
                "perturbed_layer": self.perturbed_layer,
                "max_abs_error": max((r.max_abs_error for r in self.rows), default=0.0),
                "max_rel_error": max((r.max_rel_error for r in self.rows), default=0.0),
                "mismatches": sum(r.mismatches for r in self.rows),
                "layers": [r.__dict__ for r in self.rows]}

    def table(self) -> str:
        first = self.first_divergent
        lines = [f"   {'layer':<24} {'op':<20} {'shape':<18} {'max abs err':>12} {'max rel err':>12} {'mismatches':>12}"]
        for row in self.rows:
            mark = ">> " if row is first else "   "
            lines.append(f"{mark}{row.layer:<24} {row.op_type:<20} {str(row.shape):<18} {row.max_abs_error:>12.3e} "
                         f"{row.max_rel_error:>12.3e} {row.mismatches:>6}/{row.elements:<5}")
        if first is None:
            lines.append(f"all {len(self.rows)} layer outputs agree (rtol={self.rtol:g}, atol={self.atol:g})")
        else:
            lines.append(f"first divergent layer: {first.layer} ({first.op_type}, tensor '{first.tensor}'): "
                         f"{first.mismatches} of {first.elements} elements outside rtol={self.rtol:g} atol={self.atol:g}")
        return "\n".join(lines)


def expose_all(graph, *, perturb_layer: str | None = None, delta: float = PERTURB_DELTA):
    """A copy of ``graph`` whose outputs are every layer's outputs, in topological order.

    With ``perturb_layer`` the copy adds ``delta`` to that layer's output(s) through an extra
    Add node (the layer itself writes ``<tensor>__unperturbed``), so its consumers see it too.
    """
    from .ir import Graph, Node

    layer_names = [n.name for n in graph.nodes]
    if perturb_layer is not None and perturb_layer not in layer_names:
        raise InputError(f"no layer named '{perturb_layer}' to perturb. {received(layers=layer_names)}")
    nodes, params = [], dict(graph.params)
    for node in graph.nodes:
        if node.name != perturb_layer:
            nodes.append(Node(node.op_type, node.name, list(node.inputs), list(node.outputs), dict(node.attrs)))
            continue
        renamed = [f"{t}__unperturbed" for t in node.outputs]
        nodes.append(Node(node.op_type, node.name, list(node.inputs), renamed, dict(node.attrs)))
        for original, raw in zip(node.outputs, renamed):
            shift = f"{original}__perturbation"
            params[shift] = np.full((1,) * len(graph.shapes[original]), delta, dtype=np.float32)
            nodes.append(Node("Add", f"{node.name}__perturb", [raw, shift], [original]))
    outputs = []
    for node in graph.nodes:
        outputs += [t for t in node.outputs if t not in outputs]
    return Graph(list(graph.inputs), outputs, nodes, params, name=f"{graph.name}-layers",
                 metadata=dict(graph.metadata))


def layerwise(graph, target: str, *, batch: int = 1, rtol: float = 1e-4, atol: float = 1e-4, seed: int = 0,
              perturb_layer: str | None = None, open_bundle: Callable[[Path], Bundle] | None = None,
              log=None) -> LayerReport:
    """Compile ``graph`` with every layer exposed for ``target`` and compare each layer with NumPy."""
    from . import numpy_backend
    from .tvm.bundle import compile_model

    say = log or (lambda msg: None)
    rng = np.random.default_rng(seed)
    feeds = {spec.name: rng.standard_normal(spec.concrete(batch)).astype(np.float32) for spec in graph.inputs}
    expected = numpy_backend.forward(graph, feeds, keep="all")
    exposed = expose_all(graph, perturb_layer=perturb_layer)
    report = LayerReport(rtol=rtol, atol=atol, target=target, perturbed_layer=perturb_layer)
    with tempfile.TemporaryDirectory(prefix="edgecnn-layerwise-") as work:
        say(f"compiling a copy of {graph.name} with all {len(exposed.outputs)} layer outputs exposed for {target}")
        path = compile_model(exposed, target, Path(work) / "bundle", batch=batch)
        bundle = open_bundle(path) if open_bundle else Bundle.open(path)
        try:
            actual = bundle.run(feeds)
        finally:
            bundle.close()
    for node in graph.nodes:
        for tensor in node.outputs:
            result = compare(tensor, actual[tensor], expected[tensor], rtol=rtol, atol=atol)
            report.rows.append(LayerRow(layer=node.name, op_type=node.op_type, tensor=tensor, shape=result.shape,
                                        max_abs_error=result.max_abs_error, max_rel_error=result.max_rel_error,
                                        mismatches=result.mismatches, elements=result.elements))
    return report
