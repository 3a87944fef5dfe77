"""The NumPy reference backend: executes a Graph forward and backward, with no per-op code.

Forward walks the nodes in topological order and keeps each op's cache when gradients are
needed; backward walks them in reverse, accumulating gradients over fan-out (a tensor used by
two nodes receives the sum of both gradients, which is what residual Adds need).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .errors import ModelDefinitionError
from .ir import Graph
from .ops import _parallel
from .ops.base import RunContext
from edgecnn.runtime.errors import InputError


@dataclass
class Tape:
    """What a forward pass leaves for the backward: per node its cache, every tensor's shape and
    dtype, and the values of the graph's inputs, parameters and outputs.

    Intermediate values are not kept: each op's cache holds what its backward needs, and a value
    no cache holds is freed as soon as its last consumer has run (as PyTorch's autograd frees it),
    which keeps a training step's memory to what the backward really reads.
    """

    values: dict[str, np.ndarray]
    caches: dict[str, object] = field(default_factory=dict)
    ctx: RunContext | None = None
    specs: dict[str, tuple] = field(default_factory=dict)  # tensor name -> (shape, dtype)


def check_feeds(graph: Graph, feeds: dict[str, np.ndarray], dtype=np.float32) -> dict[str, np.ndarray]:
    """Match feeds to graph inputs by name, shape (symbolic dims free) and dtype; clear errors."""
    names = [s.name for s in graph.inputs]
    missing = [n for n in names if n not in feeds]
    extra = [n for n in feeds if n not in names]
    if missing or extra:
        raise InputError(f"model inputs are {names}. Received: names={sorted(feeds)}")
    out = {}
    for spec in graph.inputs:
        x = np.asarray(feeds[spec.name])
        if x.ndim != len(spec.shape) or any(not isinstance(d, str) and d != s for d, s in zip(spec.shape, x.shape)):
            raise InputError(f"input '{spec.name}' must have shape {spec.shape}. Received: shape={x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"input '{spec.name}' must be float32. Received: dtype={x.dtype}")
        if 0 in x.shape:
            raise InputError(f"input '{spec.name}' is empty: every dimension needs at least one element "
                             f"(shape {spec.shape}). Received: shape={x.shape}")
        out[spec.name] = x.astype(dtype, copy=False)
    return out


def forward(graph: Graph, feeds: dict[str, np.ndarray], *, params: dict[str, np.ndarray] | None = None,
            ctx: RunContext | None = None, keep: str = "outputs", dtype=np.float32,
            op_seconds: dict[str, float] | None = None):
    """Run the graph.

    keep: ``"outputs"`` returns ``{output name: array}``; ``"all"`` returns every tensor value
    (used to compare layers one by one); ``"tape"`` returns a :class:`Tape` for :func:`backward`.
    ``params`` overrides the graph's parameters (the trainer passes its own float32/float64 copies).
    ``op_seconds``, when given, gets each op type's forward seconds added to it (profiling).
    """
    with _parallel.compute():
        return _forward(graph, feeds, params, ctx or RunContext(), keep, dtype, op_seconds)


def _timed(op_seconds, op_type: str, call, *args):
    if op_seconds is None:
        return call(*args)
    start = time.perf_counter()
    result = call(*args)
    op_seconds[op_type] = op_seconds.get(op_type, 0.0) + time.perf_counter() - start
    return result


def _forward(graph, feeds, params, ctx, keep, dtype, op_seconds):
    values: dict[str, np.ndarray] = dict(check_feeds(graph, feeds, dtype))
    source = graph.params if params is None else params
    for k, v in source.items():
        # quantized parameters (int8 weights, int32 biases, zero points) keep their integer type
        values[k] = v if v.dtype == dtype or v.dtype.kind in "iub" else v.astype(dtype)
    caches = {}
    no_grad = set() if ctx.input_grads else {spec.name for spec in graph.inputs}
    specs: dict[str, tuple] = {}
    last_use = {}
    if keep == "tape":
        for position, node in enumerate(graph.nodes):
            for name in node.inputs:
                last_use[name] = position
        kept = set(graph.outputs) | set(values)
    for position, node in enumerate(graph.nodes):
        op = graph.ops[node.name]
        inputs = [values[i] if i else None for i in node.inputs]
        if ctx.need_grad:
            ctx.requires_grad = tuple(bool(i) and i not in no_grad for i in node.inputs)
        outputs, cache = _timed(op_seconds, node.op_type, op.forward, inputs, ctx)
        if ctx.pending_state:
            ctx.state_updates.update({node.inputs[pos]: value for pos, value in ctx.pending_state.items()})
            ctx.pending_state.clear()
        for name, y in zip(node.outputs, outputs):
            if y.dtype != dtype and y.dtype.kind not in "iub":  # quantized values are integers
                raise ModelDefinitionError(node.name, f"{node.op_type} produced the wrong dtype",
                                           expected=np.dtype(dtype).name, got=y.dtype.name)
            values[name] = y
            specs[name] = (y.shape, y.dtype)
        if ctx.need_grad:
            caches[node.name] = cache
        del inputs, outputs, cache
        if keep == "tape":
            for name in node.inputs:
                if name and last_use.get(name) == position and name not in kept:
                    values.pop(name, None)
    if keep == "tape":
        return Tape(values=values, caches=caches, ctx=ctx, specs=specs)
    if keep == "all":
        return values
    return {name: values[name] for name in graph.outputs}


def backward(graph: Graph, tape: Tape, grad_outputs: dict[str, np.ndarray], *,
             wanted: list[str] | None = None, op_seconds: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Gradients of a scalar loss with respect to every tensor the outputs depend on.

    ``grad_outputs`` maps output names to dLoss/dOutput. Returns a dict holding gradients for
    parameters and graph inputs (and intermediate tensors). Given ``wanted`` (tensor names), it
    returns only those, and frees as it goes what the rest of the backward no longer needs (each
    intermediate gradient once its producer has used it, each node's cache once used), so a
    training step holds about one layer's gradients at a time instead of all of them; the tape
    is used up. ``op_seconds`` as in :func:`forward`, for each op's backward.
    """
    with _parallel.compute():
        return _backward(graph, tape, grad_outputs, None if wanted is None else set(wanted), op_seconds)


def _backward(graph, tape, grad_outputs, wanted, op_seconds):
    grads: dict[str, np.ndarray] = {k: v for k, v in grad_outputs.items()}
    for node in reversed(graph.nodes):
        gys = [grads.get(o) for o in node.outputs]
        if all(g is None for g in gys):
            continue
        gys = [g if g is not None else np.zeros(*_spec(tape, o)) for g, o in zip(gys, node.outputs)]
        if wanted is not None:  # every consumer of these outputs is done: their values and gradients go
            for name in node.outputs:
                tape.values.pop(name, None)
                if name not in wanted:
                    grads.pop(name, None)
        op = graph.ops[node.name]
        cache = tape.caches.pop(node.name) if wanted is not None else tape.caches[node.name]
        gxs = _timed(op_seconds, node.op_type, op.backward, cache, gys)
        del cache, gys
        for name, gx in zip(node.inputs, gxs):
            if gx is None or not name:
                continue
            expected = _spec(tape, name)[0]
            if gx.shape != expected:
                raise AssertionError(f"{node.name}: gradient for {name} has shape {gx.shape}, expected {expected}")
            grads[name] = grads[name] + gx if name in grads else gx
        del gxs
    if wanted is not None:
        return {k: v for k, v in grads.items() if k in wanted}
    return grads


def _spec(tape: Tape, name: str) -> tuple:
    if name in tape.specs:
        return tape.specs[name]
    return tape.values[name].shape, tape.values[name].dtype


def run(graph: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inference: ``{output name: array}``."""
    return forward(graph, feeds)
