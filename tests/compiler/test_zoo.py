"""The model zoo: every model builds with its documented shapes, runs, and is seeded."""
import numpy as np
import pytest

from edgecnn.compiler import numpy_backend, zoo
from edgecnn.runtime.errors import InputError

# The documented contract (the table in edgecnn.compiler.zoo's docstring): per-sample input, 10 logits.
DOCUMENTED_INPUTS = {
    "digits-cnn": (1, 8, 8),
    "lenet5": (1, 28, 28),
    "vgg-small": (3, 32, 32),
    "resnet8": (3, 32, 32),
    "mobilenet-tiny": (3, 96, 96),
}


def test_names_are_the_documented_ones():
    assert set(zoo.NAMES) == set(DOCUMENTED_INPUTS)


@pytest.fixture(scope="module")
def built():
    return {name: zoo.build(name) for name in zoo.NAMES}


@pytest.mark.parametrize("name", list(DOCUMENTED_INPUTS))
def test_shapes_names_and_labels(built, name):
    graph = built[name]
    assert [s.name for s in graph.inputs] == ["input"]
    assert graph.inputs[0].shape == ("N", *DOCUMENTED_INPUTS[name])
    assert graph.outputs == ["logits"]
    assert graph.shapes["logits"] == ("N", 10)
    assert graph.nodes[-1].name == "logits" and graph.nodes[-1].op_type == "Gemm"  # logits, no Softmax
    assert len(graph.metadata["labels"]) == 10 and all(isinstance(label, str) for label in graph.metadata["labels"])
    assert graph.name == name
    for p, value in graph.params.items():
        assert value.dtype == np.float32, p


def test_architecture_features(built):
    ops = {name: {n.op_type for n in g.nodes} for name, g in built.items()}
    assert {"Add", "BatchNormalization", "GlobalAveragePool"} <= ops["resnet8"]
    assert sum(n.op_type == "Add" for n in built["resnet8"].nodes) == 3
    assert "Clip" in ops["mobilenet-tiny"]  # ReLU6
    depthwise = [n for n in built["mobilenet-tiny"].nodes
                 if n.op_type == "Conv" and n.attrs["group"] > 1]
    assert len(depthwise) == 6
    for node in depthwise:  # one filter per channel
        assert node.attrs["group"] == built["mobilenet-tiny"].shapes[node.inputs[0]][1]
    assert built["digits-cnn"].nodes[0].name == "conv1"
    assert any(n.name == "block1.dw" for n in built["mobilenet-tiny"].nodes)


@pytest.mark.parametrize("name", list(DOCUMENTED_INPUTS))
def test_runs_at_batch_1_and_3(built, name):
    graph = built[name]
    x = np.random.default_rng(11).normal(size=(3, *DOCUMENTED_INPUTS[name])).astype(np.float32)
    y3 = numpy_backend.run(graph, {"input": x})["logits"]
    y1 = numpy_backend.run(graph, {"input": x[1:2]})["logits"]
    assert y3.shape == (3, 10) and y3.dtype == np.float32
    assert y1.shape == (1, 10)
    assert np.isfinite(y3).all()
    assert np.abs(y3).max() > 0  # not a dead network at initialisation
    # Inference is per sample: the batch size does not change a sample's logits.
    np.testing.assert_allclose(y1[0], y3[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(DOCUMENTED_INPUTS))
def test_seeded_weights(built, name):
    again = zoo.build(name, seed=0)
    other = zoo.build(name, seed=1)
    assert list(again.params) == list(built[name].params)
    for p, value in built[name].params.items():
        np.testing.assert_array_equal(again.params[p], value)
    # Every initialised weight tensor (not the zero biases or BatchNorm constants) changes with the seed.
    weights = [p for p in built[name].params if p.endswith(".weight")]
    assert weights
    for p in weights:
        assert not np.array_equal(other.params[p], built[name].params[p]), p


def test_unknown_name_lists_the_zoo():
    with pytest.raises(InputError) as info:
        zoo.build("resnet9000")
    msg = str(info.value)
    assert "resnet9000" in msg and all(name in msg for name in zoo.NAMES)
