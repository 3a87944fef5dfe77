"""The compile path's own error."""
from edgecnn.runtime.errors import EdgeCNNError


class CompileError(EdgeCNNError):
    """A model TVM cannot import or compile for the preset, named with the reason."""
