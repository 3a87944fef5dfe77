"""Saved models: graph.json + weights.npz, bit-exact round trip, clear errors, atomic saves."""
import json
import os
import zipfile

import numpy as np
import pytest

from edgecnn.compiler import numpy_backend, serialize, zoo
from edgecnn.compiler.errors import ModelDefinitionError, UnsupportedOpError
from edgecnn.compiler.ir import Graph, Node, TensorSpec
from edgecnn.compiler.serialize import load_model, save_model
from edgecnn.runtime.errors import InputError


def sample(graph, batch=2, seed=0):
    shape = graph.inputs[0].concrete(batch)
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def perturbed(graph, seed=5):
    """The graph with every parameter randomised, so zero biases and unit BatchNorm
    statistics cannot hide a parameter that was dropped or swapped on the way."""
    rng = np.random.default_rng(seed)
    for name, value in graph.params.items():
        fresh = rng.normal(size=value.shape).astype(np.float32)
        graph.params[name] = np.abs(fresh) + 0.5 if name.endswith("running_var") else fresh
    return graph


@pytest.mark.parametrize("name", zoo.NAMES)
def test_round_trip_is_bit_exact(tmp_path, name):
    graph = perturbed(zoo.build(name))
    path = save_model(graph, tmp_path / name)
    assert sorted(os.listdir(path)) == ["graph.json", "weights.npz"]
    loaded = load_model(path)
    assert loaded.to_dict() == graph.to_dict()
    assert list(loaded.params) == list(graph.params)
    for p, value in graph.params.items():
        assert loaded.params[p].dtype == np.float32 and loaded.params[p].shape == value.shape, p
        assert loaded.params[p].tobytes() == value.tobytes(), p
    x = sample(graph)
    expected = numpy_backend.run(graph, {"input": x})["logits"]
    got = numpy_backend.run(loaded, {"input": x})["logits"]
    assert got.tobytes() == expected.tobytes()
    assert loaded.metadata == graph.metadata


def test_files_are_plain_json_and_npz_without_pickle(tmp_path):
    graph = zoo.build("resnet8")
    path = save_model(graph, tmp_path / "m")
    spec = json.loads((path / "graph.json").read_text())
    assert spec["format_version"] == 1 and spec["outputs"] == ["logits"]
    with zipfile.ZipFile(path / "weights.npz") as zf:
        assert sorted(zf.namelist()) == sorted(f"{p}.npy" for p in graph.params)
    with np.load(path / "weights.npz", allow_pickle=False) as npz:  # raises on any object array
        assert sorted(npz.files) == sorted(graph.params)
        for p in npz.files:
            assert npz[p].dtype == np.float32


def test_graph_json_path_also_loads(tmp_path):
    path = save_model(zoo.build("digits-cnn"), tmp_path / "m")
    assert load_model(path / "graph.json").to_dict() == load_model(path).to_dict()


def test_parameter_names_that_collide_with_numpy_keywords(tmp_path):
    # ONNX initializers can be named anything; np.savez(file, allow_pickle=..., **arrays) would
    # swallow these two names.
    params = {"file": np.ones((2, 3), np.float32), "allow_pickle": np.full(2, 3.0, np.float32)}
    nodes = [Node("Gemm", "fc", ["input", "file", "allow_pickle"], ["out"], {"transB": 1})]
    graph = Graph([TensorSpec("input", ("N", 3))], ["out"], nodes, params)
    loaded = load_model(save_model(graph, tmp_path / "m"))
    for p in params:
        np.testing.assert_array_equal(loaded.params[p], params[p])


# -- broken saved models ----------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    return save_model(zoo.build("digits-cnn"), tmp_path / "m")


def test_missing_weights_file(saved):
    (saved / "weights.npz").unlink()
    with pytest.raises(InputError, match="lacks weights.npz"):
        load_model(saved)


def test_corrupt_weights_file(saved):
    (saved / "weights.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(InputError, match="weights.npz is not a readable .npz weights file"):
        load_model(saved)


def test_truncated_weights_file(saved):
    data = (saved / "weights.npz").read_bytes()
    (saved / "weights.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable .npz"):
        load_model(saved)


def test_pickled_weights_are_refused(saved):
    params = dict(np.load(saved / "weights.npz"))
    params["conv1.weight"] = np.array([{"not": "an array"}], dtype=object)  # needs pickle to load
    np.savez(saved / "weights.npz", **params)
    with pytest.raises(InputError, match="not a readable .npz"):
        load_model(saved)


def test_weights_missing_a_parameter(saved):
    params = dict(np.load(saved / "weights.npz"))
    del params["conv2.bias"]
    np.savez(saved / "weights.npz", **params)
    with pytest.raises(ModelDefinitionError) as info:
        load_model(saved)
    assert "lacks parameters" in str(info.value) and "conv2.bias" in str(info.value)


def test_weights_with_a_wrong_shape(saved):
    params = dict(np.load(saved / "weights.npz"))
    params["conv2.weight"] = np.zeros((32, 16, 5, 5), np.float32)
    np.savez(saved / "weights.npz", **params)
    with pytest.raises(ModelDefinitionError) as info:
        load_model(saved)
    msg = str(info.value)
    assert "conv2.weight" in msg and "(32, 16, 3, 3)" in msg and "(32, 16, 5, 5)" in msg


def test_corrupt_graph_json(saved):
    (saved / "graph.json").write_text('{"format_version": 1, "nodes": [')
    with pytest.raises(InputError, match="graph.json is not valid JSON"):
        load_model(saved)


def test_graph_json_with_unknown_op(saved):
    spec = json.loads((saved / "graph.json").read_text())
    spec["nodes"][1]["op_type"] = "Frobnicate"
    (saved / "graph.json").write_text(json.dumps(spec))
    with pytest.raises(UnsupportedOpError, match="'Frobnicate'"):
        load_model(saved)


def test_missing_directory(tmp_path):
    with pytest.raises(InputError, match="lacks graph.json"):
        load_model(tmp_path / "nowhere")


# -- atomic saves ------------------------------------------------------------------------------------
def test_failed_save_leaves_previous_model_intact(tmp_path, monkeypatch):
    path = tmp_path / "m"
    first = perturbed(zoo.build("digits-cnn"), seed=1)
    save_model(first, path)
    before = {f: (path / f).read_bytes() for f in os.listdir(path)}

    def fail_midway(*args, **kwargs):
        raise OSError("disk full (simulated)")

    # graph.json is written first; the weights writer then fails.
    monkeypatch.setattr(serialize, "_write_weights", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save_model(perturbed(zoo.build("digits-cnn"), seed=2), path)
    monkeypatch.undo()

    assert {f: (path / f).read_bytes() for f in os.listdir(path)} == before
    assert sorted(os.listdir(tmp_path)) == ["m"], "no temporary directory may be left behind"
    x = sample(first)
    np.testing.assert_array_equal(numpy_backend.run(load_model(path), {"input": x})["logits"],
                                  numpy_backend.run(first, {"input": x})["logits"])


def test_successful_save_replaces_previous_model(tmp_path):
    path = tmp_path / "m"
    save_model(zoo.build("lenet5"), path)
    second = zoo.build("digits-cnn", seed=3)
    save_model(second, path)
    assert load_model(path).name == "digits-cnn"
    assert sorted(os.listdir(tmp_path)) == ["m"]


# -- resolving the MODEL argument --------------------------------------------------------------------
def test_load_any_resolves_zoo_saved_and_onnx(tmp_path):
    from edgecnn.compiler import onnx_io
    from edgecnn.compiler.models import load_any

    graph = perturbed(zoo.build("lenet5"))
    save_model(graph, tmp_path / "saved")
    onnx_io.save_onnx(graph, tmp_path / "model.onnx")
    x = sample(graph)
    expected = numpy_backend.run(graph, {"input": x})["logits"]
    assert load_any("lenet5").to_dict() == zoo.build("lenet5").to_dict()
    for spec in (tmp_path / "saved", tmp_path / "saved" / "graph.json", tmp_path / "model.onnx"):
        got = numpy_backend.run(load_any(str(spec)), {"input": x})["logits"]
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, err_msg=str(spec))


@pytest.mark.parametrize("make, why", [
    (lambda p: p / "absent", "no such zoo model, directory or file"),
    (lambda p: p, "a directory without graph.json"),
    (lambda p: p / "missing.onnx", "no such file"),
    (lambda p: (p / "notes.txt").write_text("hi") and p / "notes.txt", "neither graph.json nor .onnx"),
])
def test_load_any_errors_list_the_zoo(tmp_path, make, why):
    from edgecnn.compiler.models import load_any

    spec = str(make(tmp_path))
    with pytest.raises(InputError) as info:
        load_any(spec)
    msg = str(info.value)
    assert msg.startswith("not a zoo model, saved model directory or .onnx file")
    assert why in msg and f"Received: {spec!r}" in msg and all(name in msg for name in zoo.NAMES)
