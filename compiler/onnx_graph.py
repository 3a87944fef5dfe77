"""An ONNX graph read as it is stored, before any op is imported: constants as arrays (initializers,
``Constant`` and ``ConstantOfShape`` nodes), the nodes in an order where each reads only defined
tensors (with every dangling reference and any cycle named), and unique node names."""
from __future__ import annotations

import heapq

import numpy as np

from edgecnn.runtime.errors import InputError

from .errors import UnsupportedOpError


def tensor_to_array(tensor, what: str) -> np.ndarray:
    import onnx

    try:
        return np.asarray(onnx.numpy_helper.to_array(tensor))
    except Exception as exc:  # size/shape disagreement in the stored data
        try:
            dtype = onnx.TensorProto.DataType.Name(tensor.data_type)
        except ValueError:  # not an ONNX element type at all
            dtype = f"{tensor.data_type} (no ONNX element type)"
        raise InputError(f"{what} '{tensor.name}' is malformed: its data does not match its declared shape "
                         f"{tuple(tensor.dims)} and type {dtype}: {exc}") from None


def constant_node_value(node) -> np.ndarray:
    """Value of an ONNX ``Constant`` node (any of its value attribute forms)."""
    import onnx

    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if attr.name == "value":
            return tensor_to_array(value, f"Constant node '{node.name}' value")
        if attr.name in ("value_float", "value_int"):
            return np.asarray(value, dtype=np.float32 if attr.name == "value_float" else np.int64)
        if attr.name in ("value_floats", "value_ints"):
            return np.asarray(list(value), dtype=np.float32 if attr.name == "value_floats" else np.int64)
    raise UnsupportedOpError(f"node '{node.name}' (Constant): only tensor, float(s) and int(s) values are "
                             f"supported. Received: attributes={[a.name for a in node.attribute]}")


def constant_of_shape_value(node, constants) -> np.ndarray:
    import onnx

    shape = constants.get(node.input[0]) if node.input else None
    if shape is None:
        raise UnsupportedOpError(f"node '{node.name}' (ConstantOfShape): the shape must be a constant. "
                                 f"Received: shape input='{node.input[0] if node.input else ''}'")
    fill = np.zeros(1, dtype=np.float32)
    for attr in node.attribute:
        if attr.name == "value":
            fill = tensor_to_array(onnx.helper.get_attribute_value(attr), f"ConstantOfShape '{node.name}' value")
    return np.full(tuple(int(d) for d in shape.reshape(-1)), fill.reshape(-1)[0], dtype=fill.dtype)


#: ONNX ops that only produce constants: evaluated during import, never IR nodes.
CONSTANT_SOURCES = {
    "Constant": lambda node, constants: constant_node_value(node),
    "ConstantOfShape": constant_of_shape_value,
}


def sorted_nodes(onnx_nodes, available: set[str]):
    """The ONNX nodes in an order where each reads only defined tensors; clear errors otherwise.

    Reports every reference to an undefined tensor at once, and names the nodes of a cycle.
    """
    producer = {}
    for node in onnx_nodes:
        for out in node.output:
            if out:
                producer[out] = node
    dangling = []
    for node in onnx_nodes:
        for inp in node.input:
            if inp and inp not in available and inp not in producer:
                dangling.append(f"node '{node.name}' ({node.op_type}) reads '{inp}'")
    if dangling:
        raise InputError("the ONNX graph reads tensors that are not graph inputs, initializers or outputs of "
                         "any node (a missing graph input?): " + "; ".join(dangling))
    # Kahn's algorithm taking the earliest ready node first: a valid file order is kept exactly.
    consumers: dict[str, list[int]] = {}
    waiting = []
    for idx, node in enumerate(onnx_nodes):
        pending = {i for i in node.input if i and i not in available}
        waiting.append(len(pending))
        for t in pending:
            consumers.setdefault(t, []).append(idx)
    ready = [idx for idx, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        idx = heapq.heappop(ready)
        order.append(onnx_nodes[idx])
        for out in {o for o in onnx_nodes[idx].output if o}:
            for consumer in consumers.get(out, ()):
                waiting[consumer] -= 1
                if waiting[consumer] == 0:
                    heapq.heappush(ready, consumer)
    if len(order) < len(onnx_nodes):
        done = {id(n) for n in order}
        stuck = [n for n in onnx_nodes if id(n) not in done]
        # Drop the nodes that merely wait downstream of a cycle: what remains feeds itself.
        while True:
            read = {i for n in stuck for i in n.input}
            kept = [n for n in stuck if any(o in read for o in n.output)]
            if len(kept) == len(stuck):
                break
            stuck = kept
        names = [f"'{n.name}' ({n.op_type})" for n in stuck]
        raise InputError("the ONNX graph has a cycle: these nodes wait on each other's outputs: "
                         + ", ".join(names))
    return order


def uniquely_named(onnx_nodes) -> list:
    """The nodes with unique, non-empty names (ONNX allows empty and repeated ones)."""
    import onnx

    taken: set[str] = set()
    named = []
    for i, node in enumerate(onnx_nodes):
        base = node.name or (node.output[0] if node.output and node.output[0] else f"{node.op_type}_{i}")
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        if node.name != name:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = name
            node = copy
        named.append(node)
    return named
