"""Host-side verification: reference comparisons and --layerwise finding a perturbed layer."""
import json

import numpy as np
import pytest

from edgecnn.compiler import numpy_backend
from edgecnn.compiler.cli import main
from edgecnn.compiler.models import load_any
from edgecnn.compiler.verify import expose_all, layerwise
from edgecnn.runtime.errors import InputError
from edgecnn.runtime.verify import compare


def test_expose_all_outputs_every_layer_with_unchanged_values(rng):
    graph = load_any("digits-cnn")
    exposed = expose_all(graph)
    assert exposed.outputs == [t for node in graph.nodes for t in node.outputs]
    x = {"input": rng.standard_normal((2, 1, 8, 8)).astype(np.float32)}
    expected = numpy_backend.forward(graph, x, keep="all")
    for name, value in numpy_backend.run(exposed, x).items():
        np.testing.assert_array_equal(value, expected[name])


def test_perturbed_copy_differs_from_the_layer_on(rng):
    graph = load_any("digits-cnn")
    layer = graph.nodes[2]
    exposed = expose_all(graph, perturb_layer=layer.name, delta=0.5)
    x = {"input": rng.standard_normal((1, 1, 8, 8)).astype(np.float32)}
    expected = numpy_backend.forward(graph, x, keep="all")
    got = numpy_backend.run(exposed, x)
    for node in graph.nodes[:2]:
        np.testing.assert_array_equal(got[node.outputs[0]], expected[node.outputs[0]])
    np.testing.assert_allclose(got[layer.outputs[0]], expected[layer.outputs[0]] + 0.5, rtol=1e-6)


def test_perturb_unknown_layer_names_the_layers():
    with pytest.raises(InputError, match=r"no layer named 'nope'.*conv1"):
        expose_all(load_any("digits-cnn"), perturb_layer="nope")


@pytest.mark.parametrize("layer", ["conv2", "pool1"])
def test_layerwise_names_the_perturbed_layer(layer):
    graph = load_any("digits-cnn")
    report = layerwise(graph, "host", perturb_layer=layer)
    names = [row.layer for row in report.rows]
    assert names == [node.name for node in graph.nodes]
    assert report.first_divergent.layer == layer
    before = names.index(layer)
    assert all(row.mismatches == 0 for row in report.rows[:before])
    assert report.rows[before].max_abs_error == pytest.approx(0.05, rel=1e-3)
    assert not report.passed


def test_layerwise_cli_clean_model_passes(capsys):
    code = main(["verify", "digits-cnn", "--layerwise", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["passed"] is True and doc["first_divergent_layer"] is None
    assert [row["layer"] for row in doc["layers"]] == [n.name for n in load_any("digits-cnn").nodes]
    assert doc["max_abs_error"] < 1e-4


def test_layerwise_cli_perturbed_exits_1_and_prints_the_table(capsys):
    code = main(["verify", "digits-cnn", "--layerwise", "--perturb-layer", "relu1"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "first divergent layer: relu1 (Relu" in out
    assert out.count(">> ") == 1 and ">> relu1" in out


def test_compare_metrics_against_hand_computed_values():
    expected = np.array([[1.0, -2.0, 0.0, 4.0]], np.float32)
    actual = np.array([[1.0, -2.1, 1e-5, 3.0]], np.float32)
    report = compare("y", actual, expected, rtol=1e-3, atol=1e-4)
    assert report.max_abs_error == pytest.approx(1.0)
    assert report.max_rel_error == pytest.approx(0.25)   # |3 - 4| / 4; the 0 is not counted
    assert report.mismatches == 2                         # -2.1 and 3.0; 1e-5 is within atol
    assert report.top1_agreement == 1.0                   # argmax 3 in both


def test_compare_nan_is_a_mismatch():
    report = compare("y", np.array([np.nan, 1.0]), np.array([0.0, 1.0]), rtol=0, atol=1)
    assert report.mismatches == 1 and report.max_abs_error == float("inf")
