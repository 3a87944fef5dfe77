"""edgecnn's compiler side: the graph IR, ops, NumPy reference backend, ONNX I/O and TVM lowering."""
from .ir import Graph, Node, TensorSpec

__all__ = ["Graph", "Node", "TensorSpec"]
