"""Definition-time errors of the graph IR."""
from edgecnn.runtime.errors import EdgeCNNError, received


class ModelDefinitionError(EdgeCNNError):
    """A graph that breaks a rule: named layer, the rule, and the values received."""

    def __init__(self, layer: str | None, rule: str, **values):
        where = f"Layer '{layer}': " if layer else ""
        message = where + rule
        if values:
            message += ". " + received(**values)
        super().__init__(message)
        self.layer = layer
        self.rule = rule
        self.values = values


class UnsupportedOpError(EdgeCNNError):
    """One or more op types that edgecnn does not implement."""
