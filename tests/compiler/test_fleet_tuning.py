"""Tuning on a device pool: candidates built here, measured on RPC servers registered with a
real TVM tracker on 127.0.0.1, records in the same database as local tuning."""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.compiler.tvm import tuning
from edgecnn.compiler.tvm.bundle import compile_bundle
from edgecnn.runtime.bundle import Bundle
from edgecnn.targets import get_preset

KEY = "loopback"  # tests/conftest.py's pools register under it


def _conv_relu(path: Path) -> Path:
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "conv_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _matches_onnxruntime(bundle_dir: Path) -> None:
    session = ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with Bundle.open(bundle_dir) as bundle:
        np.testing.assert_allclose(bundle.run({"x": x})["y"], session.run(["y"], {"x": x})[0], rtol=1e-4, atol=1e-4)


def _log_lines(db: Path) -> list[str]:
    [log] = db.glob("*/devices.log")
    return log.read_text().splitlines()


def _run_and_act_mid_tune(command: list[str], db: Path, measured: int, act) -> subprocess.CompletedProcess:
    """Run a tuning compile in its own process; once ``measured`` candidates are logged, ``act``
    (kill a device, press Ctrl-C) and let it finish. The process never outlives the test."""
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list(db.glob("*/devices.log")) or len(_log_lines(db)) < measured:
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "no candidate was measured"
            time.sleep(0.1)
        act(run)
        out, err = run.communicate(timeout=400)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    return subprocess.CompletedProcess(command, run.returncode, out, err)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tuning_on_a_pool_survives_a_lost_device_and_is_reused(fresh_pool, tmp_path):
    """One fleet tuning run as a user meets it: candidates spread over the pool, a board lost
    mid-run, every record kept, and a second compile that reuses them without the pool."""
    pool, model, db = fresh_pool, _conv_relu(tmp_path / "conv.onnx"), tmp_path / "db"
    command = [sys.executable, "-m", "edgecnn.compiler", "compile", str(model), "--target", "host",
               "-o", str(tmp_path / "b1"), "--tune", "16", "--tuning-db", str(db), "--tracker", pool.address,
               "--key", KEY, "--json"]
    victims = []
    first_run = _run_and_act_mid_tune(
        command, db, 1, lambda _: victims.append(pool.kill_server(pool.server_addresses.index(_log_lines(db)[0]))))
    [victim] = victims
    out, err = first_run.stdout, first_run.stderr
    assert first_run.returncode == 0, err[-3000:]
    info = json.loads(out)["tuning"]
    assert info["trials"] == 16 and info["records"] >= 1
    used = info["measured_on"]["devices"]
    assert len(used) >= 2, f"one device measured everything: {used}"
    assert set(used) <= set(pool.server_addresses) and sum(used.values()) == 16
    assert sorted(_log_lines(db)) == sorted(a for a, n in used.items() for _ in range(n))
    after_kill = _log_lines(db)[1:]
    assert after_kill and victim not in after_kill[-4:], "the lost device was still asked at the end"
    assert any(line.startswith("edgecnn compile:   trials ") and "devices busy" in line and "best" in line
               for line in err.splitlines())
    # the candidates were parallelised for the devices' one thread, not for this machine's CPUs
    assert "the pool's devices run 1 thread(s) each" in err
    [record] = [r for r in tuning.open_database(tuning.database_dir(db, get_preset("host"))).get_all_tuning_records()][:1]
    assert int(record.target.attrs["num-cores"]) == 1
    # the database survives whole: it loads, with every trial's record and valid measurements
    database = tuning.open_database(tuning.database_dir(db, get_preset("host")))
    assert len(database) == 16 and any(r.run_secs for r in database.get_all_tuning_records())
    _matches_onnxruntime(tmp_path / "b1")

    pool.stop()  # records are reused without the pool: a second compile must not need it
    messages = []
    second = compile_bundle(model, "host", tmp_path / "b2", tune=16, tuning_db=db, log=messages.append,
                            tracker=pool.address, key=KEY)
    info = second.manifest["tuning"]
    assert info["trials"] == 0 and info["records"] >= 1 and info["measured_on"]["devices"] == {}
    assert not any(m.startswith("tuning task") for m in messages)
    assert len(_log_lines(db)) == 16, "the second compile measured candidates again"
    _matches_onnxruntime(second.path)


def test_candidates_for_an_arm_pool_are_cross_compiled_shared_libraries(tmp_path):
    """What a board loads without a compiler on it: an aarch64 ELF shared library."""
    import shutil

    import tvm
    from tvm import te

    preset = get_preset("rpi5")
    if shutil.which(preset.linker()) is None:
        pytest.skip(f"{preset.linker()} not found: install it with `make system-deps`")
    a = te.placeholder((16,), name="a")
    b = te.compute((16,), lambda i: a[i] + 1.0, name="b")
    library = tvm.compile(tvm.IRModule({"main": te.create_prim_func([a, b])}), target=preset.target())
    path = Path(tuning._shared_library_export(preset)(library))
    header = path.read_bytes()[:20]
    assert path.suffix == ".so" and header[:4] == b"\x7fELF"
    assert header[16] == 3, "not a shared object (ELF e_type ET_DYN)"
    assert int.from_bytes(header[18:20], "little") == 183, "not an aarch64 (EM_AARCH64) library"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_during_pool_tuning_keeps_the_records(device_pool, tmp_path):
    import signal

    model, db = _conv_relu(tmp_path / "conv.onnx"), tmp_path / "db"
    command = [sys.executable, "-m", "edgecnn.compiler", "compile", str(model), "--target", "host",
               "-o", str(tmp_path / "bundle"), "--tune", "20", "--tuning-db", str(db), "--tracker",
               device_pool.address, "--key", KEY]
    run = _run_and_act_mid_tune(command, db, 2, lambda process: process.send_signal(signal.SIGINT))
    err = run.stderr
    assert run.returncode == 130, err[-3000:]
    assert "tuning interrupted" in err and "record(s) measured so far are kept" in err
    assert not (tmp_path / "bundle").exists()
    database = tuning.open_database(tuning.database_dir(db, get_preset("host")))
    # every candidate measured before Ctrl-C is there; the ones after it are failed trials
    assert any(r.run_secs for r in database.get_all_tuning_records())
    before = len(database)

    # the task Ctrl-C cut short is tuned again by the next --tune, its old records kept. A fresh
    # process, as a user's next command (pytest's log capture leaves unnamed handlers on
    # MetaSchedule's logger, which MetaSchedule's own logging set-up cannot take)
    command[command.index("--tune") + 1] = "4"
    again = subprocess.run(command + ["--json"], capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "interrupted by Ctrl-C, tuned again" in again.stderr
    assert "tuning task" in again.stderr
    assert json.loads(again.stdout)["tuning"]["trials"] == 4
    database = tuning.open_database(tuning.database_dir(db, get_preset("host")))
    assert len(database) == before + 4
    assert json.loads(next(db.glob("*/interrupted.json")).read_text()) == []
    _matches_onnxruntime(tmp_path / "bundle")
