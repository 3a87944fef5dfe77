"""Tests generated from the op registry: a registered op without tests fails here.

Every op in REGISTRY must have at least one configuration in the forward table (compared with
onnx's ReferenceEvaluator) and one in the gradient table (compared with finite differences);
both tables live in tests/compiler/conftest.py. Each op class must also carry its own shape
rule, forward, backward and ONNX opset range, named exactly like its ONNX op.
"""
import onnx
import pytest

from edgecnn.compiler.errors import UnsupportedOpError
from edgecnn.compiler.ops import REGISTRY, get_op_class
from edgecnn.compiler.ops.base import Op

ALL_OPS = sorted(REGISTRY)
DIFFERENTIABLE = sorted(k for k, cls in REGISTRY.items() if cls.differentiable)
#: ops on quantized integers: no gradient; their forward is tested against onnx's
#: ReferenceEvaluator and onnxruntime in this module, with integer inputs the tables do not make
QUANTIZED_TESTS = "tests/compiler/test_quantize.py"


def _first_onnx_version(op_type):
    """The opset that introduced ``op_type`` in the default ONNX domain."""
    return min(s.since_version for s in onnx.defs.get_all_schemas_with_history()
               if s.name == op_type and s.domain in ("", "ai.onnx"))


@pytest.mark.parametrize("op_type", sorted(set(ALL_OPS) - set(DIFFERENTIABLE)))
def test_every_quantized_op_has_its_own_forward_tests(op_type):
    from pathlib import Path

    text = (Path(__file__).parents[2] / QUANTIZED_TESTS).read_text()
    assert f'"{op_type}"' in text, f"{op_type} has no forward test in {QUANTIZED_TESTS}"


@pytest.mark.parametrize("op_type", DIFFERENTIABLE)
def test_every_registered_op_has_forward_cases(op_type, forward_table):
    assert op_type in {c.op for c in forward_table}, \
        f"{op_type} is registered but has no forward configuration in tests/compiler/conftest.py"


@pytest.mark.parametrize("op_type", DIFFERENTIABLE)
def test_every_registered_op_has_gradient_cases(op_type, gradient_table):
    assert op_type in {c.op for c in gradient_table}, \
        f"{op_type} is registered but has no gradient configuration in tests/compiler/conftest.py"


def test_tables_only_name_registered_ops(forward_table, gradient_table):
    unknown = {c.op for c in forward_table + gradient_table} - set(REGISTRY)
    assert not unknown


@pytest.mark.parametrize("op_type", ALL_OPS)
def test_op_class_is_complete(op_type):
    cls = REGISTRY[op_type]
    assert cls.__name__ == op_type == cls.op_type
    assert cls.forward is not Op.forward, f"{op_type} has no forward"
    if cls.domain == "com.microsoft":  # onnxruntime's contrib op: onnx has no schema for it
        assert op_type in ("QGemm",)
        return
    onnx.defs.get_schema(op_type, onnx.defs.onnx_opset_version())  # a real ONNX op name
    assert (cls.backward is not Op.backward) == cls.differentiable, f"{op_type}: backward and differentiable disagree"
    lo, hi = cls.onnx_opsets
    first = _first_onnx_version(op_type)
    wanted = max(13, first)  # 13..21, or from the opset that introduced the op (HardSwish 14, Gelu 20)
    assert first <= lo <= wanted and hi >= 21, \
        f"{op_type} must be exportable at opsets {wanted}..21 and claim none before it exists in ONNX ({first}); " \
        f"it claims {lo}..{hi}"


def test_unknown_op_lists_the_supported_ones():
    with pytest.raises(UnsupportedOpError, match="'Foo'.*supported: Abs, Add, AveragePool"):
        get_op_class("Foo", layer="l1")


@pytest.mark.parametrize("op_type,attrs,in_shapes,extent,stride", [
    ("Conv", {"dilations": [2, 1], "strides": [2, 3]}, [("N", 3, 9, 9), (4, 3, 3, 3)], (5, 3), (2, 3)),
    ("Conv", {"kernel_shape": [5, 5]}, [("N", 3, 9, 9), (4, 3, 5, 5)], (5, 5), (1, 1)),
    ("MaxPool", {"kernel_shape": [3, 2], "strides": [2, 2], "dilations": [2, 2]}, [("N", 3, 9, 9)], (5, 3), (2, 2)),
    ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}, [("N", 3, 8, 8)], (2, 2), (2, 2)),
    ("Relu", {}, [("N", 3, 8, 8)], (1, 1), (1, 1)),
    # an output pixel of a transposed conv sees ceil(dilated kernel / stride) input pixels
    ("ConvTranspose", {"strides": [2, 3]}, [("N", 3, 5, 5), (3, 4, 3, 3)], (2, 1), (1, 1)),
    ("ConvTranspose", {"dilations": [2, 1]}, [("N", 3, 5, 5), (3, 4, 3, 2)], (5, 2), (1, 1)),
])
def test_receptive_field_is_kernel_extent_and_stride(op_type, attrs, in_shapes, extent, stride):
    op = REGISTRY[op_type](attrs, name="l")
    op.infer_shapes(in_shapes)
    assert op.receptive_field() == (extent, stride)


@pytest.mark.parametrize("op_type,attrs,in_shapes,expected", [
    ("Conv", {"group": 2}, [("N", 4, 6, 6), (6, 2, 3, 3)], 6 * 4 * 4 * 2 * 3 * 3),
    # every input pixel of every channel times its group's M/g x KH x KW weights
    ("ConvTranspose", {"group": 2, "strides": [2, 2]}, [("N", 4, 5, 6), (4, 3, 3, 3)], 4 * 5 * 6 * 3 * 3 * 3),
    ("Gemm", {"transB": 1}, [("N", 20), (10, 20)], 20 * 10),
    ("Gemm", {}, [("N", 20), (20, 7)], 20 * 7),
    ("MaxPool", {"kernel_shape": [2, 2]}, [("N", 3, 8, 8)], 0),
    ("BatchNormalization", {}, [("N", 3, 4, 4), (3,), (3,), (3,), (3,)], 3 * 4 * 4),
])
def test_macs_per_sample(op_type, attrs, in_shapes, expected):
    op = REGISTRY[op_type](attrs, name="l")
    out = op.infer_shapes(in_shapes)
    assert op.macs(in_shapes, out) == expected
