"""Resolve the MODEL argument every command takes: a zoo name, a saved model, or an ONNX file."""
from __future__ import annotations

from pathlib import Path

from edgecnn.runtime.errors import InputError

from . import zoo
from .ir import Graph
from .serialize import is_saved_model, load_model


def load_any(spec: str) -> Graph:
    """The graph named by ``spec``, tried in this order:

    1. a zoo name (``edgecnn.compiler.zoo.NAMES``), built with seed 0;
    2. a saved model directory (``graph.json`` + ``weights.npz``) or its ``graph.json``;
    3. an ``.onnx`` file, through the ONNX importer.
    """
    spec = str(spec)
    if spec in zoo.NAMES:
        return zoo.build(spec)
    path = Path(spec)
    if is_saved_model(path):
        return load_model(path)
    if path.suffix.lower() == ".onnx" and path.is_file():
        # Imported lazily: commands that never see an ONNX file need not load onnx at all.
        from .onnx_io import import_model

        return import_model(path)
    if path.is_dir():
        why = "a directory without graph.json"
    elif path.suffix.lower() == ".onnx":
        why = "no such file"
    elif path.exists():
        why = "a file that is neither graph.json nor .onnx"
    else:
        why = "no such zoo model, directory or file"
    raise InputError(
        f"not a zoo model, saved model directory or .onnx file ({why}); zoo models: {', '.join(zoo.NAMES)}. "
        f"Received: {spec!r}")
