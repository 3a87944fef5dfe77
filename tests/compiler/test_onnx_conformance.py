"""Conformance with the onnx wheel's own test data through the NumPy backend.

Every case the importer accepts must pass at rtol = atol = 1e-4; every skip carries a reason.
The committed report (tests/compiler/data/onnx_conformance.md, regenerated with
``python -m edgecnn.compiler.conformance -o tests/compiler/data/onnx_conformance.md``) may not
claim a pass that does not pass now.
"""
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgecnn.compiler import conformance, onnx_io
from edgecnn.compiler.errors import ModelDefinitionError, UnsupportedOpError

COMMITTED = Path(__file__).parent / "data" / "onnx_conformance.md"


OPERATOR_SUITES = ("pytorch-converted", "pytorch-operator")
#: light models small enough for the default run; the others take 10-40 s each on the NumPy backend
FAST_LIGHT = ("squeezenet", "shufflenet")


@pytest.fixture(scope="module")
def results():
    return {r.case: r for r in conformance.run_all(conformance.discover(OPERATOR_SUITES))}


@pytest.fixture(scope="module")
def committed():
    assert COMMITTED.is_file(), f"generate it: python -m edgecnn.compiler.conformance -o {COMMITTED}"
    return conformance.parse_report(COMMITTED.read_text())


def test_cases_are_found_in_every_suite():
    cases = conformance.discover()
    suites = {c.suite for c in cases}
    assert suites == set(conformance.SUITES)
    assert sum(c.suite == "light" for c in cases) >= 9
    assert all(c.data_sets for c in cases)


def test_every_supported_operator_case_passes(results, tmp_path):
    failed = {k: r.reason for k, r in results.items() if r.status == "fail"}
    assert not failed, failed
    assert all(r.reason for r in results.values() if r.status == "skip")
    assert sum(r.status == "pass" for r in results.values()) >= 30
    report = tmp_path / "report.md"
    report.write_text(conformance.render_report(list(results.values())))
    assert conformance.parse_report(report.read_text()) == {k: r.status for k, r in results.items()}


def test_committed_report_claims_no_stale_passes(results, committed):
    claimed = {k for k, status in committed.items() if status == "pass" and k.split("/")[0] in OPERATOR_SUITES}
    passing = {k for k, r in results.items() if r.status == "pass"}
    stale = sorted(claimed - passing)
    assert not stale, f"the committed report claims passes that fail or skip now: {stale}"
    assert set(committed) == {c.id for c in conformance.discover()}, "regenerate the committed report"


def _export_of_import_matches(case, ort_session):
    """onnxruntime on export(import(m)) reproduces m's expected outputs."""
    graph = onnx_io.import_model(case.model_path)
    session = ort_session(onnx_io.export_model(graph))
    for ins, outs in case.data_sets:
        if ins is None:
            feeds = {s.name: conformance.light_input(s.concrete(1)) for s in graph.inputs}
        else:
            feeds = {s.name: conformance._read_tensor(p).astype(np.float32) for s, p in zip(graph.inputs, ins)}
        got = session.run(graph.outputs, feeds)
        for y, path in zip(got, outs):
            np.testing.assert_allclose(y, conformance._read_tensor(path), rtol=1e-4, atol=1e-4, err_msg=case.id)


def test_export_of_import_computes_what_the_original_computes(results, ort_session):
    checked = 0
    for case in conformance.discover(OPERATOR_SUITES):
        if results[case.id].status == "pass":
            _export_of_import_matches(case, ort_session)
            checked += 1
    assert checked == sum(r.status == "pass" for r in results.values())


LIGHT = [c for c in conformance.discover(("light",))]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=() if c.name in FAST_LIGHT else pytest.mark.slow)
                                  for c in LIGHT])
def test_light_model(case, committed, ort_session):
    result = conformance.run_case(case)
    assert result.status != "fail", result.reason
    if committed.get(case.id) == "pass":
        assert result.status == "pass", f"the committed report claims a pass: {result.reason}"
    if result.status == "skip":  # the importer refused it: say so, and why, instead of passing
        pytest.skip(f"{case.id}: {result.reason}")
    _export_of_import_matches(case, ort_session)


def test_a_wrong_expected_output_is_reported_as_a_failure(tmp_path):
    """The runner can fail: the same case with a perturbed expected output does."""
    (case,) = [c for c in conformance.discover(("pytorch-converted",)) if c.name == "test_Conv2d"]
    target = tmp_path / "test_Conv2d"
    shutil.copytree(case.model_path.parent, target)
    out_file = target / "test_data_set_0" / "output_0.pb"
    expected = conformance._read_tensor(out_file)
    out_file.write_bytes(onnx.numpy_helper.from_array(expected + 1e-3).SerializeToString())
    tampered = conformance.Case("pytorch-converted", "test_Conv2d", target / "model.onnx",
                                [(sorted((target / "test_data_set_0").glob("input_*.pb")), [out_file])])
    result = conformance.run_case(tampered)
    assert result.status == "fail" and "differs" in result.reason
    assert conformance.run_case(case).status == "pass"


def _conv2d_case():
    (case,) = [c for c in conformance.discover(("pytorch-converted",)) if c.name == "test_Conv2d"]
    return case


def test_an_importer_error_on_a_valid_model_is_a_failure(monkeypatch):
    """Only "unsupported" is a skip: any other importer error on a model onnx's checker accepts
    is edgecnn failing a model it claims to handle."""
    case = _conv2d_case()
    onnx.checker.check_model(str(case.model_path))  # the premise: a valid model

    def refuse(source, name=None):
        raise ModelDefinitionError("conv", "an invented rule")

    monkeypatch.setattr(onnx_io, "import_model", refuse)
    result = conformance.run_case(case)
    assert result.status == "fail", result
    assert "ModelDefinitionError" in result.reason and "an invented rule" in result.reason


def test_an_unsupported_op_is_a_skip_with_the_importers_reason(monkeypatch):
    def refuse(source, name=None):
        raise UnsupportedOpError("unknown op type 'Conv3000'")

    monkeypatch.setattr(onnx_io, "import_model", refuse)
    result = conformance.run_case(_conv2d_case())
    assert result.status == "skip" and "Conv3000" in result.reason, result


def test_a_model_the_onnx_checker_rejects_is_a_skip(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["missing"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])])
    path = tmp_path / "invalid.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(str(path))
    result = conformance.run_case(conformance.Case("made-up", "invalid", path, []))
    assert result.status == "skip" and result.reason.startswith("invalid model: "), result
