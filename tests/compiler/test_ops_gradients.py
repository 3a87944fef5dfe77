"""Every op's backward against float64 central differences, configuration by configuration.

The loss is ``sum(y * R)`` for a fixed random R, so the finite difference of the loss for one
input element is the exact directional derivative the backward must produce. Tolerance:
rtol 1e-5 and atol 1e-7 with step 1e-6 (float64 central differences are good to ~1e-9 here).
Also: MaxPool tie routing (first maximum in scan order), and fan-out accumulation in a small DAG
through ``numpy_backend.forward(keep="tape")`` + ``backward``.
"""
import numpy as np
import pytest

from edgecnn.compiler import numpy_backend
from edgecnn.compiler.ir import Graph, Node, TensorSpec
from edgecnn.compiler.ops import REGISTRY, RunContext

STEP = 1e-6
RTOL, ATOL = 1e-5, 1e-7


def _context(case, seed=11):
    # A fresh generator per run: Dropout draws the same mask in every perturbed forward.
    return RunContext(training=case.training, need_grad=True, rng=np.random.default_rng(seed))


def test_backward_matches_central_differences(gradient_case, case_inputs, numeric_gradient):
    case = gradient_case
    op = REGISTRY[case.op](case.attrs, name="node")
    inputs = case_inputs(case, np.float64)
    ys, cache = op.forward(inputs, _context(case))
    rng = np.random.default_rng(99)
    weights = [rng.standard_normal(y.shape) for y in ys]  # one per output (Split has several)
    grads = op.backward(cache, [w.copy() for w in weights])

    def loss(arrays):
        outs, _ = op.forward(arrays, _context(case))
        return float(sum((out * w).sum() for out, w in zip(outs, weights)))

    wrt = case.wrt if case.wrt is not None else [i for i in range(len(inputs)) if i not in op.state_inputs]
    assert len(grads) == len(inputs)
    for i in range(len(inputs)):
        if i not in wrt:
            assert grads[i] is None, f"input {i} is not differentiable but got a gradient"
            continue
        numeric = numeric_gradient(lambda _: loss(inputs), inputs[i], STEP)
        assert grads[i].shape == inputs[i].shape, f"input {i}: gradient shape"
        assert grads[i].dtype == np.float64, f"input {i}: gradient dtype"
        np.testing.assert_allclose(grads[i], numeric, rtol=RTOL, atol=ATOL, err_msg=f"input {i}")


# -- MaxPool ties: the documented routing rule ------------------------------------------------
def _first_max_routing(x, dy, kernel, strides, pads):
    """Slow, obvious reference: per window, scan row-major and give dy to the first maximum."""
    n, c, h, w = x.shape
    dx = np.zeros_like(x)
    for b in range(n):
        for ch in range(c):
            for oi in range(dy.shape[2]):
                for oj in range(dy.shape[3]):
                    best, where = -np.inf, None
                    for ki in range(kernel[0]):
                        for kj in range(kernel[1]):
                            r, s = oi * strides[0] + ki - pads[0], oj * strides[1] + kj - pads[1]
                            if 0 <= r < h and 0 <= s < w and x[b, ch, r, s] > best:
                                best, where = x[b, ch, r, s], (r, s)
                    dx[b, ch, where[0], where[1]] += dy[b, ch, oi, oj]
    return dx


@pytest.mark.parametrize("kernel,strides,pads", [((3, 3), (1, 1), (1, 1, 1, 1)), ((2, 2), (2, 2), (0, 0, 0, 0)),
                                                 ((3, 2), (2, 1), (1, 0, 1, 1))])
def test_maxpool_ties_route_to_the_first_maximum_in_scan_order(kernel, strides, pads):
    x = np.random.default_rng(2).integers(0, 3, (2, 2, 5, 6)).astype(np.float64)  # many ties
    x[0, 0] = 1.0  # a whole plane of ties
    op = REGISTRY["MaxPool"]({"kernel_shape": list(kernel), "strides": list(strides), "pads": list(pads)}, name="mp")
    (y,), cache = op.forward([x], RunContext(need_grad=True))
    dy = np.random.default_rng(3).standard_normal(y.shape)
    (dx,) = op.backward(cache, [dy])
    np.testing.assert_allclose(dx, _first_max_routing(x, dy, kernel, strides, pads), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx.sum(), dy.sum(), rtol=1e-12)  # each window's gradient lands exactly once


def test_global_maxpool_ties_route_to_the_first_maximum():
    x = np.zeros((1, 2, 3, 3))
    x[0, 1, 1, 1] = x[0, 1, 2, 0] = 5.0
    op = REGISTRY["GlobalMaxPool"]({}, name="gmp")
    (y,), cache = op.forward([x], RunContext(need_grad=True))
    (dx,) = op.backward(cache, [np.ones_like(y)])
    expected = np.zeros_like(x)
    expected[0, 0, 0, 0] = 1.0
    expected[0, 1, 1, 1] = 1.0
    np.testing.assert_array_equal(dx, expected)


# -- gradients accumulate over fan-out in a DAG through the backend ---------------------------
def _dag(rng):
    params = {
        "w1": rng.standard_normal((3, 2, 3, 3)) * 0.5, "b1": rng.standard_normal(3) * 0.1,
        "slope": np.full((3, 1, 1), 0.2), "s": rng.standard_normal((6, 1, 1)),
        "g": rng.standard_normal((6 * 2 * 2, 4)) * 0.3,
        "bn_scale": rng.uniform(0.5, 1.5, 3), "bn_bias": rng.standard_normal(3) * 0.1,
        "bn_mean": np.zeros(3), "bn_var": np.ones(3),
    }
    nodes = [
        Node("Conv", "conv", ["x", "w1", "b1"], ["c"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
        Node("BatchNormalization", "bn", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"], {"momentum": 0.9}),
        Node("PRelu", "act", ["bn", "slope"], ["r"]),
        Node("Add", "residual", ["r", "c"], ["a"]),          # c feeds bn and the Add
        Node("Concat", "cat", ["a", "r"], ["cat"], {"axis": 1}),  # r feeds the Add and the Concat
        Node("Mul", "gate", ["cat", "s"], ["m"]),
        Node("MaxPool", "pool", ["m"], ["p"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
        Node("Flatten", "flat", ["p"], ["f"]),
        Node("Gemm", "fc", ["f", "g"], ["out"]),
    ]
    graph = Graph([TensorSpec("x", ("N", 2, 4, 4))], ["out"], nodes, {k: v.astype(np.float32) for k, v in params.items()})
    return graph, params


def test_fan_out_gradients_accumulate_through_the_backend(numeric_gradient):
    rng = np.random.default_rng(8)
    graph, params = _dag(rng)
    x = rng.standard_normal((2, 2, 4, 4))
    weights = rng.standard_normal((2, 4))

    def run(feeds, p, need_grad=False):
        ctx = RunContext(training=True, need_grad=need_grad)
        return numpy_backend.forward(graph, feeds, params=p, ctx=ctx, keep="tape", dtype=np.float64), ctx

    tape, ctx = run({"x": x}, params, need_grad=True)
    grads = numpy_backend.backward(graph, tape, {"out": weights})
    assert set(ctx.state_updates) == {"bn_mean", "bn_var"}  # running stats filed under their tensor names

    def loss_of(name):
        def loss(arrays):
            feeds = {"x": arrays[0]} if name == "x" else {"x": x}
            p = dict(params, **({name: arrays[0]} if name != "x" else {}))
            return float((run(feeds, p)[0].values["out"] * weights).sum())
        return loss

    for name in ["x", "w1", "b1", "slope", "s", "g", "bn_scale", "bn_bias"]:
        value = (x if name == "x" else params[name]).copy()
        numeric = numeric_gradient(lambda v: loss_of(name)([v]), value, STEP)
        assert grads[name].shape == value.shape
        np.testing.assert_allclose(grads[name], numeric, rtol=RTOL, atol=ATOL, err_msg=name)
    assert "bn_mean" not in grads and "bn_var" not in grads


def test_training_skips_the_graph_input_gradient_and_keeps_parameter_gradients():
    from edgecnn.compiler import zoo

    graph = zoo.build("lenet5")
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    grads = {}
    for wanted in (True, False):
        ctx = RunContext(training=True, need_grad=True, input_grads=wanted)
        tape = numpy_backend.forward(graph, {"input": x}, ctx=ctx, keep="tape")
        dy = np.ones_like(tape.values[graph.outputs[0]])
        grads[wanted] = numpy_backend.backward(graph, tape, {graph.outputs[0]: dy})
    assert "input" in grads[True] and "input" not in grads[False]
    for name in graph.params:
        np.testing.assert_array_equal(grads[True][name], grads[False][name])
