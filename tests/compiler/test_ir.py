"""The graph IR: definition-time errors, topological order, symbolic batch, dict round trip."""
import json

import numpy as np
import pytest

from edgecnn.compiler import numpy_backend
from edgecnn.compiler.errors import ModelDefinitionError, UnsupportedOpError
from edgecnn.compiler.ir import Graph, Node, TensorSpec
from edgecnn.compiler.layers import Conv2d, Input, Model, ReLU, Sequential
from edgecnn.compiler.ops import REGISTRY


def conv_params(name, out_ch, in_ch, k, rng=None):
    rng = rng or np.random.default_rng(0)
    return {f"{name}.weight": rng.normal(size=(out_ch, in_ch, k, k)).astype(np.float32),
            f"{name}.bias": rng.normal(size=(out_ch,)).astype(np.float32)}


def conv_node(name, x, k=3, pads=(1, 1, 1, 1)):
    return Node("Conv", name, [x, f"{name}.weight", f"{name}.bias"], [name],
                {"kernel_shape": [k, k], "pads": list(pads)})


def small_graph(nodes=None, input_shape=("N", 3, 8, 8)):
    """input -> conv1 -> relu1 -> conv2 -> add(relu1, conv2) -> relu2."""
    params = {**conv_params("conv1", 4, 3, 3), **conv_params("conv2", 4, 4, 3, np.random.default_rng(1))}
    nodes = nodes if nodes is not None else [
        conv_node("conv1", "input"),
        Node("Relu", "relu1", ["conv1"], ["relu1"]),
        conv_node("conv2", "relu1"),
        Node("Add", "add", ["relu1", "conv2"], ["add"]),
        Node("Relu", "relu2", ["add"], ["relu2"]),
    ]
    return Graph([TensorSpec("input", input_shape)], ["relu2"], nodes, params, name="small")


def raises_one_error(fn, error=ModelDefinitionError):
    with pytest.raises(error) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, f"the error should be one line: {message!r}"
    return message


# -- definition errors, one per broken rule -------------------------------------------------
def test_channel_mismatch_names_layer_and_shapes():
    params = conv_params("conv1", 4, 2, 3)  # expects 2 input channels, gets 3
    msg = raises_one_error(lambda: Graph([TensorSpec("input", ("N", 3, 8, 8))], ["conv1"],
                                         [conv_node("conv1", "input")], params))
    assert msg.startswith("Layer 'conv1': ")
    assert "input channels must equal weight in-channels" in msg
    assert "Received:" in msg and "input_shape=('N', 3, 8, 8)" in msg and "weight_shape=(4, 2, 3, 3)" in msg


def test_kernel_larger_than_padded_input():
    params = conv_params("big", 2, 1, 5)
    msg = raises_one_error(lambda: Graph([TensorSpec("input", ("N", 1, 3, 3))], ["big"],
                                         [conv_node("big", "input", k=5, pads=(0, 0, 0, 0))], params))
    assert msg.startswith("Layer 'big': ")
    assert "kernel (with dilation) is larger than the padded input" in msg
    assert "Received:" in msg and "padded_hw=(3, 3)" in msg and "effective_kernel=(5, 5)" in msg


def test_kernel_larger_than_input_via_layers_fails_on_the_layer():
    msg = raises_one_error(lambda: Sequential([Conv2d(4, 5, name="too_big")], input_shape=(1, 4, 4)).build())
    assert msg.startswith("Layer 'too_big': ") and "Received:" in msg


def test_conv_with_zero_out_channels():
    msg = raises_one_error(lambda: Sequential([Conv2d(0, 3, name="empty")], input_shape=(1, 8, 8)).build())
    assert msg.startswith("Layer 'empty': ")
    assert "positive" in msg and "Received:" in msg and "out_channels=0" in msg


@pytest.mark.parametrize("shape", [(1, 0, 8), (0, 8, 8), (1, 8, -2)])
def test_input_shape_with_non_positive_dimension(shape):
    msg = raises_one_error(lambda: Input(shape, name="pixels"))
    assert msg.startswith("Layer 'pixels': ")
    assert "dimensions must be positive" in msg and "Received:" in msg and str(shape[-1]) in msg


def test_unknown_op_lists_known_ops():
    nodes = [Node("Frobnicate", "mystery", ["input"], ["mystery"])]
    msg = raises_one_error(lambda: Graph([TensorSpec("input", ("N", 3, 8, 8))], ["mystery"], nodes),
                           UnsupportedOpError)
    assert "Layer 'mystery'" in msg and "'Frobnicate'" in msg
    for known in ("Conv", "Relu", "Add"):
        assert known in msg
    assert len(REGISTRY) >= 3 and all(name in msg for name in REGISTRY)


def test_cycle_is_reported_with_its_layers():
    nodes = [
        Node("Relu", "a", ["input_or_b"], ["a"]),
        Node("Relu", "b", ["a"], ["input_or_b"]),
        Node("Relu", "out", ["b_out"], ["out"]),
        Node("Relu", "b2", ["a"], ["b_out"]),
    ]
    msg = raises_one_error(lambda: Graph([TensorSpec("input", ("N", 3))], ["out"], nodes))
    assert "the graph has a cycle" in msg
    assert "Received: layers_in_cycle=" in msg and "'a'" in msg and "'b'" in msg


def test_self_loop_is_a_cycle():
    nodes = [Node("Add", "loop", ["input", "loop"], ["loop"])]
    msg = raises_one_error(lambda: Graph([TensorSpec("input", ("N", 3))], ["loop"], nodes))
    assert msg.startswith("Layer 'loop': ") and "cycle" in msg and "Received:" in msg


def test_dangling_input_names_layer_and_tensor():
    nodes = [Node("Relu", "relu1", ["input"], ["relu1"]), Node("Add", "add", ["relu1", "ghost"], ["add"])]
    msg = raises_one_error(lambda: Graph([TensorSpec("input", ("N", 3))], ["add"], nodes))
    assert msg.startswith("Layer 'add': ") and "dangling input" in msg and "Received: tensor='ghost'" in msg


def test_duplicate_layer_names():
    nodes = [Node("Relu", "act", ["input"], ["t1"]), Node("Relu", "act", ["t1"], ["t2"])]
    msg = raises_one_error(lambda: Graph([TensorSpec("input", ("N", 3))], ["t2"], nodes))
    assert msg.startswith("Layer 'act': ") and "duplicate layer name" in msg and "Received: name='act'" in msg


def test_duplicate_layer_names_via_builder():
    def build():
        x = Input((3, 8, 8))
        y = ReLU(name="act")(x)
        return Model(x, ReLU(name="act")(y))

    msg = raises_one_error(build)
    assert msg.startswith("Layer 'act': ") and "duplicate layer name" in msg and "Received:" in msg


def test_duplicate_tensor_names():
    nodes = [Node("Relu", "first", ["input"], ["same"]), Node("Relu", "second", ["input"], ["same"])]
    msg = raises_one_error(lambda: Graph([TensorSpec("input", ("N", 3))], ["same"], nodes))
    assert msg.startswith("Layer 'second': ") and "tensor name defined twice" in msg
    assert "Received: tensor='same'" in msg


def test_node_output_shadowing_a_graph_input():
    nodes = [Node("Relu", "relu", ["input"], ["input"])]
    msg = raises_one_error(lambda: Graph([TensorSpec("input", ("N", 3))], ["input"], nodes))
    assert "tensor name defined twice" in msg and "Received: tensor='input'" in msg


# -- structure ----------------------------------------------------------------------------------
def test_nodes_given_out_of_order_are_sorted_topologically():
    in_order = small_graph()
    shuffled_nodes = [in_order.nodes[i] for i in (4, 2, 0, 3, 1)]
    shuffled = small_graph([Node.from_dict(n.to_dict()) for n in shuffled_nodes])
    position = {n.name: i for i, n in enumerate(shuffled.nodes)}
    for node in shuffled.nodes:
        for inp in node.inputs:
            producer = shuffled.producer_of(inp)
            if producer is not None:
                assert position[producer.name] < position[node.name], (producer.name, node.name)
    x = np.random.default_rng(3).normal(size=(2, 3, 8, 8)).astype(np.float32)
    a = numpy_backend.run(in_order, {"input": x})["relu2"]
    b = numpy_backend.run(shuffled, {"input": x})["relu2"]
    np.testing.assert_array_equal(a, b)


def test_valid_user_order_is_kept():
    graph = small_graph()
    assert [n.name for n in graph.nodes] == ["conv1", "relu1", "conv2", "add", "relu2"]


def test_valid_user_order_of_a_dag_is_kept():
    # Two branches from one input: the second branch must not be hoisted next to the first
    # branch's head just because it is ready as early.
    nodes = [Node("Relu", "a1", ["input"], ["a1"]), Node("Relu", "a2", ["a1"], ["a2"]),
             Node("Relu", "b1", ["input"], ["b1"]), Node("Add", "join", ["a2", "b1"], ["join"])]
    graph = Graph([TensorSpec("input", ("N", 3))], ["join"], nodes)
    assert [n.name for n in graph.nodes] == ["a1", "a2", "b1", "join"]


def test_symbolic_batch_dimension_flows_through():
    graph = small_graph()
    for tensor in ("conv1", "relu1", "conv2", "add", "relu2"):
        assert graph.shapes[tensor] == ("N", 4, 8, 8)
    rng = np.random.default_rng(5)
    for batch in (1, 3):
        x = rng.normal(size=(batch, 3, 8, 8)).astype(np.float32)
        y = numpy_backend.run(graph, {"input": x})["relu2"]
        assert y.shape == (batch, 4, 8, 8) and y.dtype == np.float32


def test_fixed_batch_stays_fixed():
    graph = small_graph(input_shape=(2, 3, 8, 8))
    assert graph.shapes["relu2"] == (2, 4, 8, 8)


def test_dict_round_trip():
    graph = small_graph()
    graph.metadata["labels"] = ["a", "b"]
    d = graph.to_dict()
    text = json.dumps(d)  # must be plain JSON
    again = Graph.from_dict(json.loads(text), {k: v.copy() for k, v in graph.params.items()})
    assert again.to_dict() == d
    assert again.shapes == graph.shapes
    assert again.metadata == {"labels": ["a", "b"]}
    x = np.random.default_rng(7).normal(size=(2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(numpy_backend.run(graph, {"input": x})["relu2"],
                                  numpy_backend.run(again, {"input": x})["relu2"])


def test_from_dict_reports_missing_and_misshapen_weights():
    graph = small_graph()
    d = graph.to_dict()
    params = dict(graph.params)
    del params["conv2.bias"]
    msg = raises_one_error(lambda: Graph.from_dict(d, params))
    assert "lacks parameters" in msg and "conv2.bias" in msg and "Received:" in msg
    params = dict(graph.params, **{"conv1.weight": np.zeros((4, 3, 5, 5), np.float32)})
    msg = raises_one_error(lambda: Graph.from_dict(d, params))
    assert "conv1.weight" in msg and "(4, 3, 3, 3)" in msg and "(4, 3, 5, 5)" in msg


def test_from_dict_rejects_another_format_version():
    d = small_graph().to_dict()
    d["format_version"] = 99
    msg = raises_one_error(lambda: Graph.from_dict(d, small_graph().params))
    assert "format version" in msg and "Received: format_version=99" in msg
