"""`edgecnn demo`: the whole flow end to end, ending in the final table and a report directory."""
import json
import shutil
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "edgecnn.compiler", "demo", "-o", str(out), "--epochs", "3",
                           "--repeat", "30"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| target | status |" in proc.stdout
    assert "epoch 3/3" in proc.stderr  # the progress bar
    for name in ("report.md", "results.json", "latency.png", "train/curves.png", "digits-cnn.onnx",
                 "bundles/host/model.so", "bundles/host/manifest.json"):
        assert (out / name).is_file(), name

    doc = json.loads((out / "results.json").read_text())
    # Three epochs of digits-cnn reach well above chance; the compiled code agrees with the reference.
    assert doc["facts"]["test_accuracy"] > 0.9
    assert abs(doc["facts"]["compiled_test_accuracy"] - doc["facts"]["test_accuracy"]) < 0.01
    rows = {row["target"]: row for row in doc["targets"]}
    host = rows["host"]
    assert host["status"] == "built, run, verified"
    assert [v.split()[0] for v in host["verified_against"]] == ["golden", "numpy", "onnxruntime"]
    assert host["p50_ms"] > 0 and host["ratio_to_onnxruntime"] > 0
    # the int8 row: quantized, compiled, verified against the integer reference, accuracy kept
    int8 = rows["host int8"]
    assert int8["status"] == "built, run, verified", int8
    assert [v.split()[0] for v in int8["verified_against"]] == ["golden", "numpy", "onnxruntime"]
    assert abs(doc["facts"]["int8_test_accuracy"] - doc["facts"]["test_accuracy"]) <= 0.02
    assert abs(doc["facts"]["int8_compiled_test_accuracy"] - doc["facts"]["int8_test_accuracy"]) <= 0.01
    assert doc["facts"]["int8_onnx_bytes"] < doc["facts"]["onnx_bytes"]
    if shutil.which("aarch64-linux-gnu-g++"):
        assert rows["rpi4"]["status"].startswith("built")
    if shutil.which("nvcc"):
        assert rows["jetson-orin-nano"]["status"] == "built, kernels compiled with nvcc"
    report = (out / "report.md").read_text()
    assert "| host | built, run, verified |" in report
