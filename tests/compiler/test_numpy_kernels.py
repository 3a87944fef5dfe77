"""The NumPy backend's fast paths against independent references.

Conv has three kernels chosen from the geometry (``_conv_numpy``); each case below is built so
that a given kernel runs (the test checks which), and is run with the work split over threads and
the patch matrix cut into many small chunks, so that slice and chunk boundaries are crossed. The
forward is checked against onnx's ReferenceEvaluator, the backward against a float64 central
difference along random directions. MaxPool's gradient routing is checked against a plain
per-window loop, the training tape's memory release against the full backward.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx.reference import ReferenceEvaluator

from edgecnn.compiler import numpy_backend, zoo
from edgecnn.compiler.ops import _conv_numpy, _parallel
from edgecnn.compiler.ops.base import RunContext
from edgecnn.compiler.ops.conv import Conv
from edgecnn.compiler.ops.pool import MaxPool

# (attrs, x shape, w shape, kernel the geometry must choose)
CONV_CASES = [
    ({"pads": [1, 1, 1, 1]}, (3, 4, 20, 20), (5, 4, 3, 3), "wide"),
    ({"pads": [0, 2, 1, 1], "dilations": [1, 2]}, (2, 3, 24, 20), (4, 3, 2, 3), "wide"),
    ({"pads": [1, 1, 1, 1], "group": 2}, (2, 4, 20, 20), (6, 2, 3, 3), "wide"),
    ({}, (3, 6, 5, 7), (4, 6, 1, 1), "pointwise"),
    ({"strides": [2, 2], "group": 2}, (2, 4, 7, 6), (6, 2, 1, 1), "pointwise"),
    ({"strides": [2, 1], "pads": [1, 0, 2, 1]}, (2, 3, 9, 8), (4, 3, 3, 3), "columns"),
    ({"group": 4, "pads": [1, 1, 1, 1]}, (2, 4, 6, 6), (4, 1, 3, 3), "columns"),
    ({"pads": [0, 0, 0, 0]}, (2, 3, 8, 8), (4, 3, 5, 5), "columns"),  # padded grid 2.8x the output
    ({"strides": [2, 2], "pads": [1, 1, 1, 1]}, (5, 1, 9, 9), (3, 1, 3, 3), "columns"),  # split by sample
]


@pytest.fixture(params=["small-chunks", "whole-batch"])
def split_everything(monkeypatch, request):
    """Two threads and every operation split however small; patch matrices either cut into chunks
    of 16 columns (one sample at a time in im2col) or built whole."""
    monkeypatch.setattr(_parallel, "MIN_ELEMENTS", 0)
    if request.param == "small-chunks":
        monkeypatch.setattr(_conv_numpy, "CHUNK_BYTES", 16)
        monkeypatch.setattr(_conv_numpy, "MIN_CHUNK_COLUMNS", 16)
    _parallel.set_threads(2)
    yield
    _parallel.set_threads(None)


def _conv(attrs, x, w, b, training=True):
    op = Conv(dict(attrs, kernel_shape=list(w.shape[2:])), "conv")
    with _parallel.compute():
        (y,), cache = op.forward([x, w, b], RunContext(training=training, need_grad=True))
    return op, y, cache


def _reference_conv(attrs, x, w, b):
    node = oh.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(w.shape[2:]), **attrs)
    graph = oh.make_graph([node], "g", [oh.make_tensor_value_info(n, onnx.TensorProto.DOUBLE, None)
                                        for n in ("x", "w", "b")],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, None)])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    return ReferenceEvaluator(model).run(None, {"x": x, "w": w, "b": b})[0]


@pytest.mark.parametrize("attrs, x_shape, w_shape, method", CONV_CASES,
                         ids=[f"{c[3]}-{i}" for i, c in enumerate(CONV_CASES)])
def test_conv_kernels_match_references_forward_and_backward(split_everything, attrs, x_shape, w_shape, method):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    op, y, cache = _conv(attrs, x, w, b)
    assert cache[2].method == method
    np.testing.assert_allclose(y, _reference_conv(attrs, x, w, b), rtol=1e-10, atol=1e-10)

    dy = rng.standard_normal(y.shape)
    with _parallel.compute():
        dx, dw, db = op.backward(cache, [dy])
    np.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)), rtol=1e-10)
    h = 1e-6
    for value, grad, position in ((x, dx, 0), (w, dw, 1)):
        for _ in range(3):
            direction = rng.standard_normal(value.shape)
            inputs = [x, w, b]
            inputs[position] = value + h * direction
            up = _conv(attrs, *inputs)[1]
            inputs[position] = value - h * direction
            down = _conv(attrs, *inputs)[1]
            numeric = float(((up - down) * dy).sum() / (2 * h))
            assert float((grad * direction).sum()) == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_conv_skips_the_input_gradient_it_is_told_is_not_wanted():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 6, 6)).astype(np.float32), rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    op = Conv({"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}, "conv")
    (y,), cache = op.forward([x, w], RunContext(training=True, need_grad=True, requires_grad=(False, True)))
    dx, dw = op.backward(cache, [np.ones_like(y)])
    assert dx is None and dw.shape == w.shape


def _first_max_routing(x, dy, kernel, stride):
    """Per-window loop: the window's gradient to its first maximum in row-major scan; NaN: nowhere."""
    dx = np.zeros_like(x)
    n, c, oh, ow = dy.shape
    for i in range(n):
        for j in range(c):
            for r in range(oh):
                for s in range(ow):
                    window = x[i, j, r * stride:r * stride + kernel, s * stride:s * stride + kernel]
                    if np.isnan(window).any():
                        continue
                    a, b = np.unravel_index(int(np.argmax(window)), window.shape)  # argmax: first maximum
                    dx[i, j, r * stride + a, s * stride + b] += dy[i, j, r, s]
    return dx


@pytest.mark.parametrize("kernel, stride", [(2, 2), (3, 1), (3, 2)])
def test_maxpool_routes_ties_to_the_first_maximum_and_nan_windows_nowhere(split_everything, kernel, stride):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, (2, 3, 7, 7)).astype(np.float64)  # many ties
    x[0, 0, 1, 1] = np.nan
    op = MaxPool({"kernel_shape": [kernel, kernel], "strides": [stride, stride]}, "pool")
    with _parallel.compute():
        (y,), cache = op.forward([x], RunContext(training=True, need_grad=True))
        dy = rng.standard_normal(y.shape)
        (dx,) = op.backward(cache, [dy])
    np.testing.assert_allclose(dx, _first_max_routing(x, dy, kernel, stride), rtol=1e-12, atol=0)


def test_training_backward_frees_the_tape_and_gives_the_same_gradients():
    graph = zoo.build("resnet8", seed=0)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    feeds = {graph.inputs[0].name: x}

    def tape():
        return numpy_backend.forward(graph, feeds, ctx=RunContext(training=True, need_grad=True), keep="tape")
    full_tape = tape()
    kept = set(full_tape.values)
    assert kept == set(graph.params) | {graph.inputs[0].name} | set(graph.outputs)  # no intermediates
    dy = {graph.outputs[0]: np.ones(full_tape.specs[graph.outputs[0]][0], np.float32)}
    everything = numpy_backend.backward(graph, full_tape, dy)
    lean_tape = tape()
    wanted = list(graph.params)
    lean = numpy_backend.backward(graph, lean_tape, dy, wanted=wanted)
    assert set(lean) <= set(wanted) and not lean_tape.caches  # every cache released
    for name in lean:
        np.testing.assert_array_equal(lean[name], everything[name])


def test_compute_holds_blas_to_one_thread_and_restores_it():
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):
        _parallel.set_threads(None)
        with _parallel.compute():
            with _parallel.compute():  # reentrant
                assert {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"} == {1}
                assert _parallel.threads() == 2
            assert {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"} == {1}
        assert {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"} == {2}


def test_for_slices_covers_the_range_once_in_order(split_everything):
    seen = _parallel.for_slices(lambda first, stop: list(range(first, stop)), 11, 11, start=5)
    assert [i for part in seen for i in part] == list(range(5, 16)) and len(seen) == 2


def test_gemm_and_matmul_split_over_threads_equal_numpys_products(split_everything):
    from edgecnn.compiler.ops.linear import Gemm, MatMul

    rng = np.random.default_rng(5)
    a, b, c = rng.standard_normal((7, 5)), rng.standard_normal((9, 5)), rng.standard_normal(9)
    gemm = Gemm({"transB": 1, "alpha": 0.5, "beta": 2.0}, "fc")
    with _parallel.compute():
        (y,), cache = gemm.forward([a, b, c], RunContext(need_grad=True))
        dy = rng.standard_normal(y.shape)
        da, db, dc = gemm.backward(cache, [dy])
    np.testing.assert_allclose(y, 0.5 * a @ b.T + 2.0 * c, rtol=1e-12)
    np.testing.assert_allclose(da, 0.5 * dy @ b, rtol=1e-12)
    np.testing.assert_allclose(db, 0.5 * dy.T @ a, rtol=1e-12)
    x, w = rng.standard_normal((2, 3, 4, 6)), rng.standard_normal((6, 5))
    matmul = MatMul({}, "mm")
    with _parallel.compute():
        (y,), cache = matmul.forward([x, w], RunContext(need_grad=True))
        dx, dw = matmul.backward(cache, [np.ones_like(y)])
    np.testing.assert_allclose(y, x @ w, rtol=1e-12)
    np.testing.assert_allclose(dx, np.ones_like(y) @ w.T, rtol=1e-12)
    np.testing.assert_allclose(dw, x.reshape(-1, 6).T @ np.ones((24, 5)), rtol=1e-12)
