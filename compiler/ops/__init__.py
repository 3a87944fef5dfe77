"""The op registry. Importing this package registers every op family."""
from . import activation, conv, layout, linear, normalization, pool, quantization, reduce, tensor  # noqa: F401  (registration side effects)
from .base import REGISTRY, Op, RunContext, get_op_class, make_op, register

__all__ = ["REGISTRY", "Op", "RunContext", "get_op_class", "make_op", "register"]
