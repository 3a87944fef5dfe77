"""The command line: `edgecnn summary` (text, --json, --input-shape, errors)."""
import json
import subprocess
import sys

import pytest

from edgecnn.compiler import onnx_io, zoo
from edgecnn.compiler.cli import main
from edgecnn.compiler.serialize import save_model


def edgecnn(*args):
    """The installed command, in a fresh interpreter (as a user runs it)."""
    return subprocess.run([sys.executable, "-m", "edgecnn.compiler", *args], capture_output=True, text=True,
                          timeout=120)


def test_summary_text_in_a_subprocess():
    proc = edgecnn("summary", "lenet5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Model: lenet5")
    header = next(line for line in lines if line.startswith("Layer"))
    for column in ("Op", "Output shape", "Params", "MACs", "RF", "Jump", "Act. mem", "Dense-equiv params"):
        assert column in header
    conv1 = next(line for line in lines if line.startswith("conv1 "))
    # 6*1*5*5 + 6 parameters, 6*28*28*25 MACs, receptive field 5.
    assert conv1.split()[1:3] == ["Conv", "(N,"] and "156" in conv1 and "117,600" in conv1
    assert "Parameters: 61,706" in proc.stdout


def test_summary_json_in_a_subprocess():
    proc = edgecnn("summary", "lenet5", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # exactly one JSON document, nothing else on stdout
    assert doc["model"] == "lenet5"
    assert doc["totals"]["params"] == 61706 and doc["totals"]["macs"] == 416520
    assert doc["layers"][0]["name"] == "conv1" and doc["layers"][0]["receptive_field"] == [5, 5]


def test_unknown_model_is_one_line_and_exit_2():
    proc = edgecnn("summary", "no-such-model")
    assert proc.returncode == 2
    assert proc.stdout == ""
    err = proc.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("edgecnn summary: error: not a zoo model, saved model directory or .onnx file")
    assert "Received: 'no-such-model'" in err
    assert all(name in err for name in zoo.NAMES)


def run_main(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_input_shape_override(capsys):
    code, out, err = run_main(capsys, "summary", "resnet8", "--input-shape", "3,64,64", "--json")
    assert code == 0, err
    layers = {layer["name"]: layer for layer in json.loads(out)["layers"]}
    assert layers["stage3.add"]["output_shape"] == ["N", 64, 16, 16]
    assert layers["stem.conv"]["macs"] == 16 * 64 * 64 * 3 * 3 * 3


@pytest.mark.parametrize("shape, message", [
    ("1,32,32", "does not accept input shape (1, 32, 32)"),  # Flatten -> Dense fixes the size
    ("1,zero,8", "--input-shape must be positive integers"),
    ("1,0,28", "--input-shape must be positive integers"),
])
def test_bad_input_shape(capsys, shape, message):
    code, out, err = run_main(capsys, "summary", "lenet5", "--input-shape", shape)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_summary_of_saved_model_and_onnx_file(capsys, tmp_path):
    graph = zoo.build("resnet8")
    save_model(graph, tmp_path / "saved")
    onnx_io.save_onnx(graph, tmp_path / "resnet8.onnx")
    code, out, err = run_main(capsys, "summary", "resnet8", "--json")
    assert code == 0, err
    reference = json.loads(out)
    for spec in (tmp_path / "saved", tmp_path / "resnet8.onnx"):
        code, out, err = run_main(capsys, "summary", str(spec), "--json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["totals"] == reference["totals"], spec
        by_name = {layer["name"]: layer for layer in doc["layers"]}
        for layer in reference["layers"]:
            assert by_name[layer["name"]] == layer, (spec, layer["name"])
