"""Remote execution over a real TVM RPC server on loopback, and aarch64 under qemu-user."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from edgecnn.runtime import emulate
from edgecnn.runtime.errors import BundleError, InputError
from edgecnn.runtime.rpc import RemoteError, open_remote, parse_address
from edgecnn.runtime.verify import verify_golden

RTOL = ATOL = 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rpc_server():
    """The documented device-side one-liner, on 127.0.0.1 and a free port."""
    port = _free_port()
    # A device has only TVM's runtime: load only that (TVM's switch), which also halves the start time.
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    # rpc_server serves from a PopenWorker child (and one process per session under that); a
    # signal to rpc_server alone orphans them, so the server gets a process group to stop whole.
    server = subprocess.Popen(
        [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
         "--port-end", str(port + 1)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        start_new_session=True)

    def stop():
        try:
            os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        server.wait(timeout=10)

    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop()
                pytest.fail(f"the RPC server did not start: {server.stdout.read().decode()[-2000:]}")
            time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    stop()


def test_rpc_round_trip_matches_onnxruntime(rpc_server, tiny_bundle, onnxruntime_reference, rng):
    bundle = open_remote(tiny_bundle, rpc_server)
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    out = bundle.run({"input": x})
    padded = np.concatenate([x, np.zeros((1, 1, 8, 8), np.float32)])
    expected = np.concatenate([onnxruntime_reference(tiny_bundle, {"input": padded[:2]})["logits"],
                               onnxruntime_reference(tiny_bundle, {"input": padded[2:]})["logits"]])[:3]
    np.testing.assert_allclose(out["logits"], expected, rtol=RTOL, atol=ATOL)
    times = bundle.time(repeat=5, warmup=1)
    assert len(times) == 5 and all(0 < t < 1.0 for t in times)
    assert verify_golden(bundle).passed


def test_rpc_unreachable_server_is_a_clear_error(tiny_bundle):
    with pytest.raises(RemoteError, match=r"cannot reach a TVM RPC server at 127.0.0.1:\d+.*tvm.exec.rpc_server"):
        open_remote(tiny_bundle, f"127.0.0.1:{_free_port()}")


@pytest.mark.parametrize("text", ["localhost", "host:port", ":9090", "h:70000"])
def test_rpc_address_must_be_host_port(text):
    with pytest.raises(InputError, match="HOST:PORT"):
        parse_address(text)


@pytest.fixture(scope="module")
def emulation():
    missing = emulate.missing_requirements()
    if missing:
        pytest.skip("aarch64 emulation unavailable: " + "; ".join(missing))


def test_emulated_aarch64_verify_against_golden(emulation, tiny_bundle_aarch64, onnxruntime_reference, rng):
    bundle = emulate.open_emulated(tiny_bundle_aarch64)
    report = verify_golden(bundle, rtol=RTOL, atol=ATOL)
    assert report.passed, report.table()
    # The golden outputs come from onnxruntime; check a fresh input too, two samples in two calls.
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    out = bundle.run({"input": x})
    expected = np.concatenate([onnxruntime_reference(tiny_bundle_aarch64, {"input": x[i:i + 1]})["logits"]
                               for i in range(2)])
    np.testing.assert_allclose(out["logits"], expected, rtol=RTOL, atol=ATOL)


def test_emulated_zoo_model_verifies_against_golden(emulation, digits_bundle_aarch64):
    """digits-cnn compiled for aarch64, run under qemu: golden outputs come from the NumPy backend."""
    bundle = emulate.open_emulated(digits_bundle_aarch64)
    assert bundle.manifest["golden"]["reference"] == "numpy"
    report = verify_golden(bundle, rtol=1e-4, atol=1e-4)
    assert report.passed, report.table()
    assert report.top1_agreement == 1.0


def test_emulate_refuses_x86_bundle(emulation, tiny_bundle):
    with pytest.raises(BundleError, match="--emulate runs aarch64 CPU bundles"):
        emulate.open_emulated(tiny_bundle)


def test_emulation_without_runtime_libraries_says_how_to_get_them(tiny_bundle_aarch64, tmp_path, monkeypatch):
    monkeypatch.setenv(emulate.ENV_RUNTIME_DIR, str(tmp_path / "absent"))
    with pytest.raises(emulate.EmulationUnavailable, match="make aarch64-runtime"):
        emulate.open_emulated(tiny_bundle_aarch64)


def _cli(capsys, *argv):
    from edgecnn.compiler.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_verify_golden_emulated(emulation, digits_bundle_aarch64, capsys):
    code, out, err = _cli(capsys, "verify", digits_bundle_aarch64, "--against", "golden", "--emulate",
                          "--rtol", "1e-4", "--atol", "1e-4", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["passed"] is True and doc["where"] == "qemu-aarch64" and doc["target"] == "aarch64"


def test_cli_run_and_bench_over_rpc(rpc_server, tiny_bundle, onnxruntime_reference, tmp_path, capsys, rng):
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, _, err = _cli(capsys, "run", tiny_bundle, "--input", tmp_path / "x.npy", "--rpc", rpc_server,
                        "-o", tmp_path / "out.npz")
    assert code == 0, err
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_allclose(out["logits"], onnxruntime_reference(tiny_bundle, {"input": x})["logits"],
                                   rtol=RTOL, atol=ATOL)
    code, out, err = _cli(capsys, "bench", tiny_bundle, "--rpc", rpc_server, "--repeat", 10, "--warmup", 2, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["where"] == f"rpc {rpc_server}" and doc["threads"] is None and doc["repeat"] == 10
    assert 0 < doc["p50_ms"] <= doc["p99_ms"]


def test_cli_compare_refused_with_rpc(tiny_bundle, capsys):
    code, _, err = _cli(capsys, "bench", tiny_bundle, "--rpc", "127.0.0.1:9", "--compare", "onnxruntime")
    assert code == 2 and "--compare onnxruntime" in err


def test_threads_over_rpc_point_to_the_server_environment(tiny_bundle, capsys):
    code, _, err = _cli(capsys, "bench", tiny_bundle, "--rpc", "127.0.0.1:9", "--threads", "2")
    assert code == 2 and "TVM_NUM_THREADS=N python -m tvm.exec.rpc_server" in err
