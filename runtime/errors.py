"""Errors shared by every part of edgecnn.

They live in the runtime because it is the lowest layer: the compiler may import the runtime,
never the other way round. The command line turns these into one-line messages and exit codes
(2 for usage and input errors, 1 for a verification mismatch) instead of tracebacks.
"""


class EdgeCNNError(Exception):
    """A mistake in what the user handed us. Exit code 2."""

    exit_code = 2


class InputError(EdgeCNNError):
    """An input file, tensor or bundle that does not match what was expected."""


class BundleError(EdgeCNNError):
    """A bundle that is missing files, has a wrong format version or fails its hash check."""


class VerificationError(EdgeCNNError):
    """Compiled outputs disagree with the reference. Exit code 1."""

    exit_code = 1


def received(**values) -> str:
    """Format offending values Keras-style: ``Received: a=1, b=(2, 3)``."""
    return "Received: " + ", ".join(f"{k}={v!r}" for k, v in values.items())
