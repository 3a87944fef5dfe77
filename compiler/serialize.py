"""Save and load models as graph JSON plus weights ``.npz`` (never pickle).

A saved model is a directory holding ``graph.json`` and ``weights.npz``; loading it gives a graph
that computes exactly the same function (the round trip is bit-exact).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from edgecnn.runtime.errors import InputError

from .fileio import atomic_dir
from .ir import Graph

GRAPH_FILE = "graph.json"
WEIGHTS_FILE = "weights.npz"


def _write_weights(path: Path, params: dict[str, np.ndarray]):
    """The ``.npz`` layout (one ``<name>.npy`` per array in a zip), written entry by entry:
    ``np.savez(file, allow_pickle=..., **params)`` would swallow parameters named ``file`` or
    ``allow_pickle``, and pickling is refused outright."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in params.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(value), allow_pickle=False)


def save_model(graph: Graph, path) -> Path:
    path = Path(path)
    with atomic_dir(path) as tmp:
        (tmp / GRAPH_FILE).write_text(graph.to_json())
        _write_weights(tmp / WEIGHTS_FILE, graph.params)
    return path


def is_saved_model(path) -> bool:
    path = Path(path)
    return (path.is_dir() and (path / GRAPH_FILE).is_file()) or (path.name == GRAPH_FILE and path.is_file())


def load_model(path) -> Graph:
    path = Path(path)
    root = path.parent if path.name == GRAPH_FILE else path
    graph_file, weights_file = root / GRAPH_FILE, root / WEIGHTS_FILE
    for f in (graph_file, weights_file):
        if not f.is_file():
            raise InputError(f"saved model '{root}' lacks {f.name}")
    try:
        spec = json.loads(graph_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{graph_file} is not valid JSON: {exc}") from None
    try:
        with np.load(weights_file, allow_pickle=False) as npz:
            params = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise InputError(f"{weights_file} is not a readable .npz weights file: {exc}") from None
    return Graph.from_dict(spec, params)
