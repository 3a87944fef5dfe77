"""MetaSchedule tuning: budget split, database keyed by target, and reuse without tuning."""
import json
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.compiler.tvm.bundle import compile_bundle
from edgecnn.compiler.tvm import frontend, pipelines, records, tuning
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
    first = compile_bundle(model, "host", tmp_path / "b1", tune=2, tuning_db=db)
    assert first.manifest["tuning"]["trials"] == 2
    assert first.manifest["tuning"]["records"] >= 1
    _ships_what_it_says(first)
    _matches_onnxruntime(first.path)

    messages = []
    second = compile_bundle(model, "host", tmp_path / "b2", tune=2, tuning_db=db, log=messages.append)
    manifest = json.loads((second.path / "manifest.json").read_text())
    assert manifest["tuning"]["trials"] == 0, "the second compile tuned again"
    assert manifest["tuning"]["records"] >= 1
    assert not any(m.startswith("tuning task") for m in messages)
    _ships_what_it_says(second)
    _matches_onnxruntime(second.path)


def _ships_what_it_says(result):
    """The manifest says which build shipped, and the bundle holds that one: functions
    scheduled by a record (by none of our rules) exactly when the tuned build was kept."""
    kept = result.manifest["tuning"]["kept"]
    assert kept in ("tuned", "default")
    assert result.manifest["tuning"]["applied"] is (kept == "tuned")
    assert bool(records.record_scheduled(result.relax_module)) is (kept == "tuned")


def _conv_model(channels=32, size=32):
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])],
        [numpy_helper.from_array((rng.standard_normal((channels, channels, 3, 3)) * 0.1).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _feeds(channels=32, size=32):
    return {"x": np.random.default_rng(2).standard_normal((1, channels, size, size)).astype(np.float32)}


def test_compare_builds_ranks_a_slow_build_as_slow_in_either_order():
    import tvm
    from tvm import relax

    relax_mod = frontend.to_relax(_conv_model())
    fast, _ = pipelines.build(relax_mod, get_preset("host"))
    target = get_preset("host").target()
    with target:  # TVM's own untuned pipeline: scalar loops, one thread (about 10-50x slower)
        slow = tvm.compile(relax.get_pipeline("zero")(relax_mod), target=target)
    ratios = tuning.compare_builds({"fast": fast, "slow": slow}, _feeds(), rounds=2)
    assert ratios["fast"] == 1.0 and ratios["slow"] > 2.0, ratios
    ratios = tuning.compare_builds({"slow": slow, "fast": fast}, _feeds(), rounds=2)
    assert ratios["fast"] < 0.5, ratios


def _commit_unscheduled_records(relax_mod, preset, directory):
    """A record for every task whose schedule is the workload as written (scalar loops, one
    thread): a real record, far slower than the default rules."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    target = tuning.tuning_target(preset)
    database = tuning.open_database(directory)
    tasks = tuning.extract_tasks(relax_mod, preset, target)
    for task in tasks:
        sch = s_tir.Schedule(task.workload)
        # a record needs one instruction to be valid; an annotation leaves the loops as written
        sch.annotate(sch.get_sblock("root"), "edgecnn.test_record", 1)
        trace = sch.trace
        database.commit_tuning_record(ms.database.TuningRecord(
            trace, database.commit_workload(task.workload), run_secs=[1e-6], target=target))
    return database, len(tasks)


def test_a_slower_tuned_build_is_not_shipped(tmp_path, monkeypatch):
    # Records pass the per-function check in ways a whole model does not bear out (functions
    # timed alone, in their own caches): with that check let through, the whole-model
    # comparison alone must keep the default build.
    monkeypatch.setattr(records, "keep_faster", lambda default, tuned, target, names: tuned)
    preset = get_preset("host")
    relax_mod = frontend.to_relax(_conv_model())
    database, count = _commit_unscheduled_records(relax_mod, preset, tmp_path / "db")
    assert count >= 1
    messages = []
    executable, lowered, verdict = tuning.build_with_records(relax_mod, preset, database, _feeds(),
                                                            log=messages.append)
    assert verdict["kept"] == "default", verdict
    assert verdict["tuned_over_default"] > 1.5, verdict
    assert not records.record_scheduled(lowered), "the shipped module holds the slow records"
    assert any("dropped" in m for m in messages)
    # with the check in place as well, nothing of the slow records survives either
    monkeypatch.undo()
    _, lowered, verdict = tuning.build_with_records(relax_mod, preset, database, _feeds())
    assert verdict == {"kept": "default", "tuned_over_default": None}
    assert not records.record_scheduled(lowered)


def test_compile_with_slow_records_ships_the_default_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "keep_faster", lambda default, tuned, target, names: tuned)
    model_path = tmp_path / "conv.onnx"
    onnx.save(_conv_model(), str(model_path))
    root = tmp_path / "db"
    preset = get_preset("host")
    _commit_unscheduled_records(frontend.to_relax(_conv_model()), preset, tuning.database_dir(root, preset))
    result = compile_bundle(model_path, "host", tmp_path / "bundle", tuning_db=root)
    info = result.manifest["tuning"]
    assert info["records"] >= 1 and info["trials"] == 0
    assert info["kept"] == "default" and info["applied"] is False and info["tuned_over_default"] > 1.5
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    with Bundle.open(result.path) as bundle:
        np.testing.assert_allclose(bundle.run(_feeds())["y"], session.run(["y"], _feeds())[0], rtol=1e-4, atol=1e-4)
