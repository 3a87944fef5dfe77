"""MetaSchedule tuning: budget split, database keyed by target, and reuse without tuning."""
import json
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.compiler import lower, tuning
from edgecnn.runtime.bundle import Bundle
from edgecnn.targets import get_preset


@dataclass
class FakeTask:
    name: str
    weight: int
    flops: float


@pytest.mark.parametrize("trials,costs,expected", [
    (10, [(1, 100.0), (1, 100.0)], [5, 5]),
    (10, [(3, 100.0), (1, 100.0)], [7, 3]),  # weight counts: a workload run 3 times per inference
    (12, [(1, 1e6), (1, 1e3), (2, 0.0)], [10, 1, 1]),  # everyone gets a trial, the rest by cost
    (2, [(1, 5.0), (1, 50.0), (1, 500.0)], [0, 1, 1]),  # fewer trials than tasks: the heaviest first
    (0, [(1, 5.0)], [0]),
])
def test_split_budget(trials, costs, expected):
    tasks = [FakeTask(f"t{i}", w, f) for i, (w, f) in enumerate(costs)]
    budget = tuning.split_budget(trials, tasks)
    assert budget == expected
    assert sum(budget) == trials


def test_database_directory_is_per_target(tmp_path):
    dirs = {tuning.database_dir(tmp_path, get_preset(n)) for n in ("host", "x86-64-avx2", "x86-64-avx512", "rpi4")}
    assert len(dirs) == 4
    assert tuning.database_dir(tmp_path, get_preset("rpi4")).name.startswith("rpi4-")
    assert tuning.database_dir(tmp_path, get_preset("host")) == tuning.database_dir(tmp_path, get_preset("host"))


def test_default_database_lives_in_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tuning.default_db_root() == tmp_path / "edgecnn" / "tuning"


def _tiny_conv(path):
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _matches_onnxruntime(bundle_dir):
    session = ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((1, 1, 8, 8)).astype(np.float32)
    expected = session.run(["y"], {"x": x})[0]
    with Bundle.open(bundle_dir) as bundle:
        np.testing.assert_allclose(bundle.run({"x": x})["y"], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_second_compile_reuses_records_without_tuning(tmp_path):
    model = _tiny_conv(tmp_path / "tiny.onnx")
    db = tmp_path / "db"
    first = lower.compile_bundle(model, "host", tmp_path / "b1", tune=2, tuning_db=db)
    assert first.manifest["tuning"]["trials"] == 2
    assert first.manifest["tuning"]["applied"] and first.manifest["tuning"]["records"] >= 1
    _matches_onnxruntime(first.path)

    messages = []
    second = lower.compile_bundle(model, "host", tmp_path / "b2", tune=2, tuning_db=db, log=messages.append)
    manifest = json.loads((second.path / "manifest.json").read_text())
    assert manifest["tuning"]["trials"] == 0, "the second compile tuned again"
    assert manifest["tuning"]["applied"] is True and manifest["tuning"]["records"] >= 1
    assert not any(m.startswith("tuning task") for m in messages)
    # The records were applied: the tuned function is marked scheduled in the lowered module
    # (the untuned CPU pipeline leaves every function unscheduled).
    scheduled = [name for name, f in lower.prim_funcs(second.relax_module).items()
                 if f.attrs is not None and bool(f.attrs.get("tirx.is_scheduled", False))]
    assert scheduled, "no tuning record was applied"
    _matches_onnxruntime(second.path)
