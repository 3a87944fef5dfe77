"""Device pools behind a real TVM RPC tracker, with real RPC servers, all on 127.0.0.1.

The bundle's golden outputs come from onnxruntime (see conftest), so a device that agrees with
them agrees with an independent reference.
"""
import json
import time

import numpy as np
import pytest

from edgecnn.compiler.cli import main
from edgecnn.runtime.fleet import LocalPool, Tracker, TrackerError, on_each, open_fleet, open_pooled, request_devices
from edgecnn.runtime.verify import verify_golden

KEY = "loopback"  # tests/conftest.py's pools register under it


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _pool_args(pool):
    return ["--tracker", pool.address, "--key", KEY]


def _free_again(pool, count=3, timeout=20.0):
    """Sessions end when their last reference goes; the tracker then lists the device as free."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Tracker(pool.address) as tracker:
            status = tracker.status()[KEY]
        if status.free == count and status.pending == 0:
            return status
        time.sleep(0.2)
    pytest.fail(f"devices not released: {status}")


def test_devices_lists_the_pool(device_pool, capsys):
    code, out, err = _cli(capsys, "devices", "--tracker", device_pool.address, "--json")
    assert code == 0, err
    document = json.loads(out)
    [pool] = [p for p in document["pools"] if p["key"] == KEY]
    assert (pool["total"], pool["free"], pool["busy"], pool["pending"]) == (3, 3, 0, 0)
    assert pool["servers"] == sorted(device_pool.server_addresses)

    code, out, err = _cli(capsys, "devices", "--tracker", device_pool.address)
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith(KEY))
    assert row.split()[1:5] == ["3", "3", "0", "0"]


def test_devices_counts_a_lent_device_as_busy(device_pool, capsys):
    held = request_devices(device_pool.address, KEY, 2)
    try:
        code, out, err = _cli(capsys, "devices", "--tracker", device_pool.address, "--json")
        [pool] = [p for p in json.loads(out)["pools"] if p["key"] == KEY]
        assert (pool["total"], pool["free"], pool["busy"]) == (3, 1, 2)
    finally:
        del held
    _free_again(device_pool)


def test_bench_over_the_tracker_names_the_device(device_pool, tiny_bundle, capsys):
    code, out, err = _cli(capsys, "bench", tiny_bundle, *_pool_args(device_pool), "--repeat", "20", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["device"] in device_pool.server_addresses
    assert result["device"] in result["where"] and result["key"] == KEY
    assert 0 < result["p50_ms"] < 1000 and result["repeat"] == 20


def test_bench_on_three_devices_reports_each_and_the_spread(device_pool, tiny_bundle, capsys):
    code, out, err = _cli(capsys, "bench", tiny_bundle, *_pool_args(device_pool), "--devices", "3", "--repeat", "30",
                          "--json")
    assert code == 0, err
    result = json.loads(out)
    devices = result["devices"]
    assert sorted(d["device"] for d in devices) == sorted(device_pool.server_addresses)
    assert all(d["repeat"] == 30 and d["p50_ms"] > 0 for d in devices)
    p50 = [d["p50_ms"] for d in devices]
    spread = result["spread"]
    assert spread["devices"] == 3
    assert spread["p50_min_ms"] == min(p50) and spread["p50_max_ms"] == max(p50)
    assert spread["p50_max_over_min"] == pytest.approx(max(p50) / min(p50))
    _free_again(device_pool)

    code, out, err = _cli(capsys, "bench", tiny_bundle, *_pool_args(device_pool), "--devices", "3", "--repeat", "5")
    assert code == 0, err
    assert all(address in out for address in device_pool.server_addresses)
    assert "spread of p50 over 3 device(s)" in out


def test_verify_on_three_devices_agrees_with_onnxruntime_golden(device_pool, tiny_bundle, capsys):
    code, out, err = _cli(capsys, "verify", tiny_bundle, *_pool_args(device_pool), "--devices", "3", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["passed"] and document["against"] == "golden"
    assert sorted(d["device"] for d in document["devices"]) == sorted(device_pool.server_addresses)
    assert all(d["passed"] and d["max_abs_error"] < 1e-4 for d in document["devices"])


def test_verify_on_the_fleet_fails_with_exit_1_on_a_mismatch(device_pool, tiny_bundle, capsys):
    # no tolerance at all: float32 code and onnxruntime differ in the last bits, on every device
    code, out, err = _cli(capsys, "verify", tiny_bundle, *_pool_args(device_pool), "--devices", "2",
                          "--rtol", "0", "--atol", "0")
    assert code == 1
    assert out.count("MISMATCH") == 2 and "0 of 2 device(s) agree" in out


def test_verify_against_onnxruntime_on_one_device(device_pool, tiny_bundle, capsys):
    code, out, err = _cli(capsys, "verify", tiny_bundle, *_pool_args(device_pool), "--against", "onnxruntime", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["passed"] and document["device"] in device_pool.server_addresses


def test_run_on_a_pool_device_matches_onnxruntime(device_pool, tiny_bundle, onnxruntime_reference, tmp_path, rng,
                                                  capsys):
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = _cli(capsys, "run", tiny_bundle, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npz",
                          *_pool_args(device_pool))
    assert code == 0, err
    assert any(address in err for address in device_pool.server_addresses)
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["logits"],
                               onnxruntime_reference(tiny_bundle, {"input": x})["logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("command", ["bench", "verify", "run", "devices", "compile"])
def test_a_tracker_that_is_not_there_is_exit_2_and_one_line(command, tiny_bundle, tmp_path, capsys):
    from edgecnn.runtime.fleet import _free_port

    address = f"127.0.0.1:{_free_port()}"
    argv = {"bench": ["bench", tiny_bundle, "--tracker", address, "--key", KEY],
            "verify": ["verify", tiny_bundle, "--tracker", address, "--key", KEY],
            "run": ["run", tiny_bundle, "--input", tmp_path / "none.npy", "--tracker", address, "--key", KEY],
            "devices": ["devices", "--tracker", address],
            "compile": ["compile", "lenet5", "--target", "host", "-o", tmp_path / "b", "--tune", "2",
                        "--tracker", address, "--key", KEY]}[command]
    start = time.monotonic()
    code, out, err = _cli(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and f"no RPC tracker answers at {address}" in err and "rpc_tracker" in err
    assert time.monotonic() - start < 30  # TVM's own client would retry for 60 s
    assert not (tmp_path / "b").exists()


def test_pool_mistakes_are_exit_2_with_the_reason(device_pool, tiny_bundle, capsys):
    cases = [
        (["--tracker", device_pool.address, "--key", "no-such-key"], "no device is registered under key 'no-such-key'"),
        (["--tracker", device_pool.address, "--key", KEY, "--devices", "4"], "--devices 4 asks for more devices"),
        (["--tracker", device_pool.address], "--tracker and --key go together"),
        (["--devices", "2"], "--devices N runs on N devices of a pool"),
        (["--tracker", device_pool.address, "--key", KEY, "--rpc", "127.0.0.1:1"], "exclude each other"),
        (["--tracker", device_pool.address, "--key", KEY, "--threads", "2"], "--threads cannot be set over RPC"),
        (["--tracker", "nonsense", "--key", KEY], "--tracker takes HOST:PORT"),
    ]
    for options, message in cases:
        code, out, err = _cli(capsys, "bench", tiny_bundle, *options)
        assert code == 2, (options, err)
        [error] = [line for line in err.splitlines() if line.startswith("edgecnn bench: error:")]
        assert message in error and "Traceback" not in err, (options, err)
    assert "keys there: loopback (3)" in _cli(capsys, "verify", tiny_bundle, "--tracker", device_pool.address,
                                              "--key", "other")[2]
    _free_again(device_pool)


def test_a_busy_pool_is_waited_for_only_as_long_as_asked(device_pool, tiny_bundle, capsys):
    held = request_devices(device_pool.address, KEY, 3)
    try:
        start = time.monotonic()
        code, out, err = _cli(capsys, "bench", tiny_bundle, *_pool_args(device_pool), "--wait", "1")
        assert code == 2 and "no device under key 'loopback' became free within 1 s" in err
        assert time.monotonic() - start < 20
    finally:
        del held
    # the abandoned request was withdrawn (its connection closed): the tracker skips it when a
    # device frees, so every device comes back free and nothing stays pending
    _free_again(device_pool)


# -- devices that drop ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lossy_pool(tmp_path_factory):
    """A pool of its own: these tests kill its servers."""
    pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado (the test extra installs it)")
    with LocalPool(3, key=KEY, log_dir=tmp_path_factory.mktemp("lossy-pool")) as pool:
        yield pool


@pytest.mark.timeout(180)
def test_a_device_that_drops_mid_bench_is_replaced_by_another(lossy_pool, tiny_bundle):
    messages = []
    bundle = open_pooled(tiny_bundle, lossy_pool.address, KEY, log=messages.append)
    first = bundle.executor.address
    lossy_pool.kill_server(lossy_pool.server_addresses.index(first))
    times = bundle.time(repeat=10, warmup=1)  # the session to `first` is dead: retried elsewhere
    assert len(times) == 10 and all(t > 0 for t in times)
    assert bundle.executor.lost == [first] and bundle.executor.address not in (first,)
    assert bundle.executor.address in lossy_pool.server_addresses
    assert any(f"device {first} failed" in m and "retrying once on another device" in m for m in messages)
    assert verify_golden(bundle).passed
    bundle.close()


@pytest.mark.timeout(180)
def test_a_device_that_drops_in_a_fleet_run_is_reported_and_the_rest_finish(lossy_pool, tiny_bundle):
    live = [a for a, p in zip(lossy_pool.server_addresses, lossy_pool.servers) if p.poll() is None]
    lossy_pool.wait_free(len(live))
    bundles = open_fleet(tiny_bundle, lossy_pool.address, KEY, len(live))
    victim = bundles[0].executor.address
    lossy_pool.kill_server(lossy_pool.server_addresses.index(victim))
    outcomes = on_each(bundles, lambda b: verify_golden(b))
    for b in bundles:
        b.close()
    failed = [o for o in outcomes if o.error is not None]
    assert [o.address for o in failed] == [victim] and victim in failed[0].error
    assert all(o.result.passed for o in outcomes if o.error is None) and len(outcomes) - len(failed) >= 1


def test_a_pool_whose_every_device_is_gone_is_a_clear_error(lossy_pool, tiny_bundle):
    for index, process in enumerate(lossy_pool.servers):
        if process.poll() is None:
            lossy_pool.kill_server(index)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the tracker drops a server when its connection closes
        with Tracker(lossy_pool.address) as tracker:
            status = tracker.status()
        if KEY not in status or status[KEY].total == 0:
            break
        time.sleep(0.2)
    with pytest.raises(TrackerError, match="no device is registered under key 'loopback'"):
        open_pooled(tiny_bundle, lossy_pool.address, KEY)
