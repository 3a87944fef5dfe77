"""`edgecnn run BUNDLE`, `bench` and `verify` through the command line: outputs, JSON keys, exit codes."""
import hashlib
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from edgecnn.compiler.cli import main
from edgecnn.runtime.bundle import seal_manifest

RTOL = ATOL = 1e-4


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """digits-cnn compiled for this machine at batch 2 (so runs of 1 and 3 samples are split and padded)."""
    from edgecnn.compiler.tvm.bundle import compile_model

    return compile_model("digits-cnn", "host", tmp_path_factory.mktemp("cli") / "digits", batch=2)


@pytest.fixture
def copy(bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst)
    return dst


def _onnxruntime(bundle, x):
    """The bundle's model.onnx (static batch 2) in onnxruntime, two samples at a time."""
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    padded = np.concatenate([x, np.zeros(((-len(x)) % 2,) + x.shape[1:], np.float32)])
    out = [session.run(None, {"input": padded[i:i + 2]})[0] for i in range(0, len(padded), 2)]
    return np.concatenate(out)[:len(x)]


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("n", [1, 3])
def test_run_npy_writes_outputs_matching_onnxruntime(bundle, tmp_path, capsys, rng, n):
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = _cli(capsys, "run", bundle, "--input", tmp_path / "x.npy", "-o", tmp_path / "out.npz")
    assert code == 0, err
    with np.load(tmp_path / "out.npz") as saved:
        assert list(saved.files) == ["logits"]
        np.testing.assert_allclose(saved["logits"], _onnxruntime(bundle, x), rtol=RTOL, atol=ATOL)
    assert "sample 0:" in out  # top-5 labels for a classifier with labels


def test_run_npz_json_top5(bundle, tmp_path, capsys, rng):
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", input=x)
    code, out, _ = _cli(capsys, "run", bundle, "--input", tmp_path / "x.npz", "--json")
    assert code == 0
    doc = json.loads(out)
    expected = _onnxruntime(bundle, x)
    assert doc["outputs"]["logits"]["shape"] == [2, 10]
    assert [row[0]["index"] for row in doc["top"]] == list(np.argmax(expected, axis=1))
    assert len(doc["top"][0]) == 5


def test_run_image_is_resized_and_normalised(bundle, tmp_path, capsys):
    from PIL import Image

    manifest = json.loads((bundle / "manifest.json").read_text())
    pixels = ((np.arange(16 * 16).reshape(16, 16) * 7) % 256).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "digit.png")
    code, out, err = _cli(capsys, "run", bundle, "--input", tmp_path / "digit.png", "-o", tmp_path / "out.npz")
    assert code == 0, err
    # The same preprocessing, written out independently: bilinear resize to 8x8, /255, (x-mean)/std.
    small = np.asarray(Image.fromarray(pixels).resize((8, 8), Image.Resampling.BILINEAR), np.float32) / 255
    pre = manifest.get("preprocessing") or {"mean": [0.0], "std": [1.0]}
    x = ((small - pre["mean"][0]) / pre["std"][0]).astype(np.float32)[None, None]
    with np.load(tmp_path / "out.npz") as saved:
        np.testing.assert_allclose(saved["logits"], _onnxruntime(bundle, x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("make_input, message", [
    (lambda: {"x.npy": np.zeros((1, 1, 9, 9), np.float32)}, "must have shape ['N', 1, 8, 8]"),
    (lambda: {"x.npy": np.zeros((1, 1, 8, 8), np.int64)}, "must hold floating-point values"),
    (lambda: {"x.npz": {"image": np.zeros((1, 1, 8, 8), np.float32)}}, "named after the model inputs ['input']"),
])
def test_run_bad_input_exits_2(bundle, tmp_path, capsys, make_input, message):
    (name, value), = make_input().items()
    path = tmp_path / name
    if isinstance(value, dict):
        np.savez(path, **value)
    else:
        np.save(path, value)
    code, out, err = _cli(capsys, "run", bundle, "--input", path)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["run", "bench", "verify"])
def test_missing_bundle_file_exits_2(copy, tmp_path, capsys, command):
    (copy / "golden.npz").unlink()
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    extra = ["--input", tmp_path / "x.npy"] if command == "run" else []
    code, _, err = _cli(capsys, command, copy, *extra)
    assert code == 2
    assert "missing golden.npz" in err


def test_tampered_library_exits_2(copy, capsys):
    with open(copy / "model.so", "ab") as f:
        f.write(b"\0")
    code, _, err = _cli(capsys, "verify", copy)
    assert code == 2
    assert "model.so does not match the SHA-256 in manifest.json" in err


def test_bench_json_keys_and_onnxruntime_ratio(bundle, capsys):
    code, out, err = _cli(capsys, "bench", bundle, "--repeat", 20, "--warmup", 2, "--threads", 1,
                          "--compare", "onnxruntime", "--json")
    assert code == 0, err
    doc = json.loads(out)
    for stats in (doc, doc["onnxruntime"]):
        for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_per_s", "threads"):
            assert key in stats
        assert 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
        assert stats["threads"] == 1
        assert stats["throughput_per_s"] == pytest.approx(2 * 1e3 / stats["mean_ms"])
    assert doc["ratio_p50"] == pytest.approx(doc["p50_ms"] / doc["onnxruntime"]["p50_ms"])


def test_bench_table(bundle, capsys):
    code, out, _ = _cli(capsys, "bench", bundle, "--repeat", 5, "--warmup", 1)
    assert code == 0
    assert "p50 ms" in out and "edgecnn" in out


@pytest.mark.parametrize("against", ["golden", "numpy", "onnxruntime"])
def test_verify_passes(bundle, capsys, against):
    code, out, err = _cli(capsys, "verify", bundle, "--against", against, "--json")
    assert code == 0, out + err
    doc = json.loads(out)
    assert doc["passed"] is True and doc["mismatches"] == 0
    assert 0 <= doc["max_abs_error"] < 1e-2 and doc["max_rel_error"] >= 0
    assert doc["top1_agreement"] == 1.0
    if against != "golden":
        assert doc["cases"] == ["golden", "random", "zeros", "large"]


def test_verify_mismatch_exits_1(copy, capsys):
    """Golden outputs shifted (and re-hashed, so the bundle still opens): the compiled code must disagree."""
    with np.load(copy / "golden.npz") as golden:
        arrays = {k: golden[k] for k in golden.files}
    arrays["output:logits"] = arrays["output:logits"] + np.float32(0.01)
    np.savez(copy / "golden.npz", **arrays)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["golden.npz"]["sha256"] = hashlib.sha256((copy / "golden.npz").read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    code, out, err = _cli(capsys, "verify", copy, "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["passed"] is False and doc["mismatches"] == 20
    assert doc["max_abs_error"] == pytest.approx(0.01, rel=1e-2)


def test_verify_bad_tolerance_exits_2(bundle, capsys):
    code, _, err = _cli(capsys, "verify", bundle, "--rtol", -1)
    assert code == 2 and "--rtol and --atol must be >= 0" in err


def test_device_options_on_a_model_are_refused(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    code, _, err = _cli(capsys, "run", "digits-cnn", "--input", tmp_path / "x.npy", "--emulate")
    assert code == 2 and "not a bundle directory" in err
