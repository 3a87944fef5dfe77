"""What a device needs to load, check, run, benchmark and verify an edgecnn bundle.

Imports only numpy and TVM's runtime: never onnx, never ``edgecnn.compiler``.
"""
from .errors import BundleError, EdgeCNNError, InputError, VerificationError

__all__ = ["BundleError", "EdgeCNNError", "InputError", "VerificationError"]
