"""JSON-ready copies of values that hold NumPy scalars and arrays (graph attributes, model
metadata, exported TVM targets).

In the runtime, the lowest layer, so that the IR, the ONNX exporter and the target presets
share it: the compiler and the targets may import the runtime, never the other way round.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np


def jsonable(value: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """``value`` with NumPy scalars as Python numbers, arrays as nested lists, mappings as dicts
    with string keys and other sequences as lists, recursively.

    Strings (and ``str`` subclasses such as TVM's FFI String) become plain ``str``. A value of
    any other type is passed to ``default`` when given (as ``json.dumps`` does) and returned
    unchanged otherwise, so a value JSON cannot hold still fails where it is written.
    """
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, default) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return [jsonable(v, default) for v in value]
    return value if default is None else default(value)
