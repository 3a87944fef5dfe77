"""Bundle: open with checks, input validation, run and batch against onnxruntime."""
import json
import os

import numpy as np
import pytest

from edgecnn.runtime.bundle import Bundle, seal_manifest
from edgecnn.runtime.errors import BundleError, InputError

RTOL = ATOL = 1e-4


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return Bundle.open(tiny_bundle)


def test_open_reads_manifest(bundle):
    assert bundle.batch == 2
    assert bundle.input_names == ["input"] and bundle.output_names == ["logits"]
    assert bundle.inputs[0].shape == (2, 1, 8, 8)
    assert bundle.labels[3] == "class-3"


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_run_any_batch_matches_onnxruntime(bundle, tiny_bundle, onnxruntime_reference, n, rng):
    """The bundle is compiled for batch 2; N samples run in chunks (the last one padded)."""
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    out = bundle.run({"input": x})
    assert list(out) == ["logits"]
    assert out["logits"].shape == (n, 10)
    assert out["logits"].dtype == np.float32
    # onnxruntime runs the static-batch model.onnx two samples at a time, padded independently here.
    padded = np.concatenate([x, np.zeros(((-n) % 2, 1, 8, 8), np.float32)])
    expected = np.concatenate([onnxruntime_reference(tiny_bundle, {"input": padded[i:i + 2]})["logits"]
                               for i in range(0, len(padded), 2)])[:n]
    np.testing.assert_allclose(out["logits"], expected, rtol=RTOL, atol=ATOL)


def test_golden_outputs_reproduced(bundle):
    out = bundle.run(bundle.golden_inputs)
    np.testing.assert_allclose(out["logits"], bundle.golden_outputs["logits"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("feeds, message", [
    ({"image": np.zeros((2, 1, 8, 8), np.float32)}, "missing ['input'], unexpected ['image']"),
    ({"input": np.zeros((2, 1, 8, 9), np.float32)}, "must have shape ['N', 1, 8, 8]"),
    ({"input": np.zeros((2, 8, 8), np.float32)}, "Received: shape=[2, 8, 8]"),
    ({"input": np.zeros((0, 1, 8, 8), np.float32)}, "N >= 1"),
    ({"input": np.zeros((2, 1, 8, 8), np.float64)}, "must be float32. Received: dtype='float64'"),
    ({"input": np.zeros((2, 1, 8, 8), np.int32)}, "must be float32. Received: dtype='int32'"),
])
def test_bad_inputs_name_the_problem(bundle, feeds, message):
    with pytest.raises(InputError) as info:
        bundle.run(feeds)
    assert message in str(info.value)
    assert info.value.exit_code == 2


def _rewrite_manifest(path, change, seal=True):
    """Change the manifest; ``seal`` re-records its digest, as someone hiding the edit would."""
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(seal_manifest(manifest) if seal else manifest))


@pytest.mark.parametrize("change", [
    lambda m: m.update(labels=["cat"] * 10),
    lambda m: m.update(preprocessing={"mean": [0.5], "std": [0.1]}),
    lambda m: m["target"].update(preset="rpi5"),
])
def test_edited_manifest_is_refused(bundle_copy, change):
    _rewrite_manifest(bundle_copy, change, seal=False)
    with pytest.raises(BundleError, match="manifest.json was modified after compilation"):
        Bundle.open(bundle_copy)


def test_tampered_library_is_refused_before_loading(bundle_copy):
    so = bundle_copy / "model.so"
    data = bytearray(so.read_bytes())
    data[len(data) // 2] ^= 0xFF
    so.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model.so does not match the SHA-256 in manifest.json"):
        Bundle.open(bundle_copy)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(format_version=2), "unsupported bundle format version"),
    (lambda m: m["inputs"][0].update(shape=[2, 1, 16, 16]), "'input:input' disagrees with manifest.json"),
    (lambda m: m["outputs"][0].update(name="probs"), "no array 'output:probs'"),
    (lambda m: m["files"]["model.onnx"].update(sha256="0" * 64), "model.onnx does not match the SHA-256"),
    (lambda m: m["files"].pop("model.so"), "lacks the sha256 of model.so"),
    (lambda m: m.update(batch=0), "'batch' must be a positive integer"),
])
def test_tampered_manifest_is_refused(bundle_copy, change, message):
    _rewrite_manifest(bundle_copy, change)
    with pytest.raises(BundleError, match=message.replace("[", r"\[").replace("(", r"\(")):
        Bundle.open(bundle_copy)


def test_manifest_not_json(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.open(bundle_copy)


@pytest.mark.parametrize("name", ["model.so", "golden.npz", "model.onnx", "manifest.json"])
def test_missing_file_is_refused(bundle_copy, name):
    (bundle_copy / name).unlink()
    with pytest.raises(BundleError, match="missing"):
        Bundle.open(bundle_copy)


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="bundle not found"):
        Bundle.open(tmp_path / "nope")


def test_aarch64_bundle_is_not_loaded_on_x86(tiny_bundle_aarch64):
    from edgecnn.runtime.bundle import host_arch

    if host_arch() == "aarch64":
        pytest.skip("this host is aarch64: the bundle is native here")
    with pytest.raises(BundleError, match="built for aarch64.*--emulate"):
        Bundle.open(tiny_bundle_aarch64)


@pytest.mark.parametrize("preset, expected", [(None, "0"), ("1", "1")])
def test_loading_a_bundle_unpins_tvm_workers_unless_the_user_pinned_them(tiny_bundle, monkeypatch,
                                                                        preset, expected):
    # TVM reads TVM_BIND_THREADS when its pool starts; the runtime must have set it by then
    if preset is None:
        monkeypatch.delenv("TVM_BIND_THREADS", raising=False)
    else:
        monkeypatch.setenv("TVM_BIND_THREADS", preset)
    with Bundle.open(tiny_bundle) as fresh:
        fresh.run({"input": fresh.golden_inputs["input"]})
    assert os.environ["TVM_BIND_THREADS"] == expected
