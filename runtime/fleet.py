"""Pools of devices behind TVM's RPC tracker.

A tracker queues requests for devices by key; each board runs an RPC server that registers
with it under a key (its kind: ``rpi5``, ``jetson``, ``xeon``)::

    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190          # one machine, needs tornado
    python -m tvm.exec.rpc_server --tracker TRACKER:9190 --key rpi5     # on every board

``Tracker`` is the client side of the tracker's protocol (a length-prefixed JSON message per
request), written here rather than through ``tvm.rpc.connect_tracker`` for two reasons: TVM's
client retries a refused connection for 60 s and waits for a free device without limit, and a
fleet check has to say which board answered, which TVM's client does not return. Every wait
here is bounded; a request abandoned at its deadline is withdrawn by closing its connection
(the tracker hands a device only to a connection that is still open).

``LocalPool`` starts a real tracker and servers on 127.0.0.1, each in its own process group,
and stops them all on exit: the tests, the fleet benchmark and anyone trying the fleet commands
on one machine use it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .bundle import Bundle, Executor
from .errors import EdgeCNNError, InputError, received
from .rpc import RemoteError, RemoteExecutor, last_line, parse_address, refuse_remote_threads

TRACKER_COMMAND = "python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190"
DEFAULT_WAIT_S = 60.0
CONNECT_TIMEOUT_S = 5.0

# the tracker's protocol (tvm.rpc.base): a magic number on connect, then [code, ...] messages
_TRACKER_MAGIC = 0x2F271
_SUCCESS, _REQUEST, _SUMMARY = 0, 4, 6


def server_command(tracker: str, key: str) -> str:
    return f"python -m tvm.exec.rpc_server --tracker {tracker} --key {key}"


class TrackerError(RemoteError):
    """No tracker at the address, no device under the key, or none free in time (exit code 2)."""


@dataclass
class PoolStatus:
    """One key's devices as the tracker sees them."""

    key: str
    total: int
    free: int
    pending: int
    servers: list[str] = field(default_factory=list)

    @property
    def busy(self) -> int:
        return max(0, self.total - self.free)

    def to_dict(self) -> dict:
        return {"key": self.key, "total": self.total, "free": self.free, "busy": self.busy,
                "pending": self.pending, "servers": list(self.servers)}


@dataclass
class Device:
    """A device lent by the tracker: its RPC session and the server address that answered."""

    key: str
    address: str
    session: object


class Tracker:
    """A connection to an RPC tracker at ``HOST:PORT``."""

    def __init__(self, address: str, *, timeout: float = CONNECT_TIMEOUT_S):
        host, port = parse_address(address, flag="--tracker")
        self.address = f"{host}:{port}"
        self._timeout = timeout
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout)
            self._sock.sendall(struct.pack("<i", _TRACKER_MAGIC))
            magic = self._recv_exact(4)
        except OSError as exc:
            raise TrackerError(f"no RPC tracker answers at {self.address} ({type(exc).__name__}: {exc}). "
                               f"Start one with: {TRACKER_COMMAND}") from None
        if struct.unpack("<i", magic)[0] != _TRACKER_MAGIC:
            self.close()
            raise TrackerError(f"{self.address} answered, but it is not a TVM RPC tracker")

    def _recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise ConnectionResetError("the tracker closed the connection")
            data += chunk
        return data

    def _send(self, message) -> None:
        data = json.dumps(message).encode()
        self._sock.sendall(struct.pack("<i", len(data)) + data)

    def _receive(self, timeout: float):
        self._sock.settimeout(timeout)
        size = struct.unpack("<i", self._recv_exact(4))[0]
        return json.loads(self._recv_exact(size).decode())

    def status(self) -> dict[str, PoolStatus]:
        """Every key the tracker knows: servers registered, free, busy and pending requests."""
        try:
            self._send([_SUMMARY])
            reply = self._receive(self._timeout)
        except (OSError, ValueError) as exc:
            raise TrackerError(f"the tracker at {self.address} did not answer a summary request "
                               f"({type(exc).__name__}: {exc})") from None
        if not isinstance(reply, list) or len(reply) != 2 or reply[0] != _SUCCESS:
            raise TrackerError(f"the tracker at {self.address} sent an unexpected summary: {reply!r}")
        queues, servers = reply[1].get("queue_info", {}), reply[1].get("server_info", [])
        addresses: dict[str, list[str]] = {}
        for server in servers:
            # servers register as 'server:KEY'; clients asking for a device carry no key
            kind, _, key = str(server.get("key", "")).partition(":")
            if kind == "server" and key:
                host, port = server.get("addr", [None, None])
                addresses.setdefault(key, []).append(f"{host}:{port}")
        keys = set(addresses) | set(queues)
        return {key: PoolStatus(key, total=len(addresses.get(key, [])), free=int(queues.get(key, {}).get("free", 0)),
                                pending=int(queues.get(key, {}).get("pending", 0)),
                                servers=sorted(addresses.get(key, [])))
                for key in sorted(keys)}

    def pool(self, key: str) -> PoolStatus:
        """``key``'s pool; an error naming the keys there are when no server registered under it."""
        pools = self.status()
        pool = pools.get(key)
        if pool is None or pool.total == 0:
            known = ", ".join(f"{k} ({p.total})" for k, p in pools.items() if p.total) or "none"
            raise TrackerError(f"no device is registered under key '{key}' at the tracker {self.address} "
                               f"(keys there: {known}). Register one on the device with: "
                               f"{server_command(self.address, key)}")
        return pool

    def request(self, key: str, *, wait_s: float = DEFAULT_WAIT_S, session_timeout: float = 0,
                priority: int = 1) -> Device:
        """A session on a free device of ``key``'s pool, waiting at most ``wait_s`` for one."""
        import tvm.rpc

        pool = self.pool(key)
        try:
            self._send([_REQUEST, key, "", priority])
            reply = self._receive(wait_s)
        except socket.timeout:
            self.close()  # withdraws the request: the tracker skips closed connections
            raise TrackerError(f"no device under key '{key}' became free within {wait_s:g} s (pool at "
                               f"{self.address}: {pool.total} device(s), {pool.busy} busy, {pool.pending} "
                               f"request(s) waiting); raise --wait or free a device") from None
        except (OSError, ValueError) as exc:
            raise TrackerError(f"the tracker at {self.address} dropped a request for '{key}' "
                               f"({type(exc).__name__}: {exc})") from None
        if not isinstance(reply, list) or len(reply) != 2 or reply[0] != _SUCCESS:
            raise TrackerError(f"the tracker at {self.address} refused a request for '{key}': {reply!r}")
        host, port, match_key = reply[1]
        address = f"{host}:{port}"
        try:
            session = tvm.rpc.connect(host, int(port), match_key, session_timeout=session_timeout)
        except Exception as exc:  # socket errors arrive wrapped in TVM's own error types
            raise RemoteError(f"the tracker lent device {address} (key '{key}'), but it could not be reached "
                              f"({last_line(exc)})") from None
        return Device(key=key, address=address, session=session)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def request_devices(tracker: str, key: str, count: int, *, wait_s: float = DEFAULT_WAIT_S,
                    session_timeout: float = 0) -> list[Device]:
    """``count`` distinct devices of ``key``'s pool, all held at once (a fleet check)."""
    if count < 1:
        raise InputError(f"--devices must be at least 1. {received(devices=count)}")
    with Tracker(tracker) as client:
        pool = client.pool(key)
        if count > pool.total:
            raise TrackerError(f"--devices {count} asks for more devices than the pool '{key}' at {client.address} "
                               f"has ({pool.total}: {', '.join(pool.servers)})")
        # each held device leaves the pool until its session closes, so the requests get distinct ones
        return [client.request(key, wait_s=wait_s, session_timeout=session_timeout) for _ in range(count)]


def measuring_session(log_path: str, wait_s: float, rpc_config):
    """MetaSchedule's RPC runner calls this (``f_create_session``) in its worker processes: a
    session on a device of the pool, requested with a bounded wait, and the device's address
    appended to ``log_path`` (one short line per candidate: appends of that size do not
    interleave)."""
    with Tracker(f"{rpc_config.tracker_host}:{rpc_config.tracker_port}") as client:
        device = client.request(rpc_config.tracker_key, wait_s=wait_s,
                                session_timeout=rpc_config.session_timeout_sec or 0)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(device.address + "\n")
    return device.session


def pool_threads(tracker: str, key: str, *, wait_s: float = DEFAULT_WAIT_S) -> int:
    """Threads of TVM's pool on a device of ``key`` (its cores, or the server's TVM_NUM_THREADS)."""
    with Tracker(tracker) as client:
        device = client.request(key, wait_s=wait_s)
    try:
        return int(device.session.get_function("runtime.NumThreads")())
    except Exception as exc:  # TVM's error types
        raise RemoteError(f"device {device.address} of '{key}' did not tell its thread count "
                          f"({last_line(exc)})") from None


def measuring_arguments(session, device, args_info, alloc_repeat: int) -> list[list]:
    """MetaSchedule's RPC runner calls this (``f_alloc_argument``): the candidate's arguments on
    the device. TVM's default fills them with a random-number function that a runtime-only
    server (a board with ``libtvm_runtime`` alone, or ``TVM_USE_RUNTIME_LIB=1``) does not have;
    where it is missing, random data made here is copied over."""
    import numpy as np
    import tvm

    try:
        fill = session.get_function("tvm.contrib.random.random_fill_for_measure")
    except Exception:  # TVM raises its own error type for a function the server lacks
        fill = None
    rng = np.random.default_rng(0)

    def tensor(kind, dtype, shape):
        if kind != "TENSOR":
            # MetaSchedule's CPU and GPU workloads take tensors only; anything else is a new kind
            # of candidate this runner was not written for, reported as that candidate's failure
            raise RemoteError(f"a tuning candidate takes an argument of kind {kind!r}; only tensors can be "
                              f"made on a pool device")
        if fill is not None:
            arg = tvm.runtime.empty(shape=shape, dtype=dtype, device=device)
            fill(arg)
            return arg
        if "float" in dtype:
            host = rng.standard_normal(shape).astype(dtype)
        elif dtype == "bool":
            host = rng.integers(0, 2, shape).astype(bool)
        else:  # small non-negative integers are valid indices and shapes
            host = rng.integers(0, 4, shape).astype(dtype)
        return tvm.runtime.tensor(host, device=device)

    return [[tensor(*info) for info in args_info] for _ in range(alloc_repeat)]


# -- bundles on pool devices ----------------------------------------------------------------------
class PoolExecutor(Executor):
    """A bundle on a device lent by the tracker. A call that fails there (the board dropped off
    the network, its server died) is retried once on another device of the pool; a second
    failure is a :class:`RemoteError` naming both devices."""

    def __init__(self, library: Path, tracker: str, key: str, *, device_kind: str, input_names: list[str],
                 wait_s: float = DEFAULT_WAIT_S, log=None):
        self._library, self._tracker, self._key = library, tracker, key
        self._kind, self._input_names, self._wait_s = device_kind, input_names, wait_s
        self._log = log or (lambda message: None)
        self.lost: list[str] = []
        self._open()

    def _open(self) -> None:
        with Tracker(self._tracker) as client:
            device = client.request(self._key, wait_s=self._wait_s)
        self.address = device.address
        self.remote = RemoteExecutor(self._library, device.session, device.address, device_kind=self._kind,
                                     input_names=self._input_names)
        self.description = f"tvm rpc {device.address}, key '{self._key}' of tracker {self._tracker} ({self._kind})"

    def _retrying(self, call):
        try:
            return call(self.remote)
        except EdgeCNNError:
            raise
        except Exception as exc:  # TVM's error types: the session broke on the device's side
            self.lost.append(self.address)
            self._log(f"device {self.address} failed ({last_line(exc)}); retrying once on another device "
                      f"of '{self._key}'")
        self._open()
        try:
            return call(self.remote)
        except EdgeCNNError:
            raise
        except Exception as exc:
            self.lost.append(self.address)
            raise RemoteError(f"devices {' and '.join(self.lost)} of '{self._key}' both failed; the last: "
                              f"{last_line(exc)}") from None

    def run(self, arrays):
        return self._retrying(lambda remote: remote.run(arrays))

    def time(self, arrays, *, repeat, warmup):
        return self._retrying(lambda remote: remote.time(arrays, repeat=repeat, warmup=warmup))

    def close(self):
        self.remote.close()


def open_pooled(path, tracker: str, key: str, *, threads: int | None = None, wait_s: float = DEFAULT_WAIT_S,
                log=None) -> Bundle:
    """Check the bundle here, then run it on one device of ``key``'s pool."""
    refuse_remote_threads(threads)
    bundle = Bundle.check(path)
    bundle.executor = PoolExecutor(Path(bundle.path) / "model.so", tracker, key, device_kind=bundle.device_kind,
                                   input_names=bundle.input_names, wait_s=wait_s, log=log)
    return bundle


def open_fleet(path, tracker: str, key: str, count: int, *, threads: int | None = None,
               wait_s: float = DEFAULT_WAIT_S) -> list[Bundle]:
    """The bundle, checked once here, loaded on ``count`` devices of the pool held at once;
    ``bundle.executor.address`` names each device. Nothing is retried: a fleet check reports
    the device that fails."""
    import copy

    refuse_remote_threads(threads)
    checked = Bundle.check(path)
    bundles = []
    try:
        for device in request_devices(tracker, key, count, wait_s=wait_s):
            bundle = copy.copy(checked)
            bundle.executor = RemoteExecutor(Path(checked.path) / "model.so", device.session, device.address,
                                             device_kind=checked.device_kind, input_names=checked.input_names)
            bundles.append(bundle)
    except BaseException:
        for bundle in bundles:
            bundle.close()
        raise
    return bundles


@dataclass
class DeviceOutcome:
    """What one device of a fleet run gave: a result, or the error that ended its run."""

    address: str
    result: object = None
    error: str | None = None

    def to_dict(self) -> dict:
        """The device and its result's JSON keys, or its error."""
        return {"device": self.address, **(self.result.to_dict() if self.error is None else {"error": self.error})}


def address_width(outcomes: list[DeviceOutcome]) -> int:
    """A table column wide enough for every device address."""
    return max(22, *(len(o.address) + 1 for o in outcomes))


def on_each(bundles: list[Bundle], work) -> list[DeviceOutcome]:
    """``work(bundle)`` on every device at once, in threads (TVM releases the GIL while a remote
    call runs, so the devices work in parallel). A device that fails gives its error; the
    others finish."""
    from concurrent.futures import ThreadPoolExecutor

    def attempt(bundle) -> DeviceOutcome:
        address = bundle.executor.address
        try:
            return DeviceOutcome(address, result=work(bundle))
        except EdgeCNNError as exc:
            return DeviceOutcome(address, error=str(exc))
        except Exception as exc:  # TVM's error types: the session broke on the device's side
            return DeviceOutcome(address, error=f"device {address} failed: {last_line(exc)}")

    with ThreadPoolExecutor(max_workers=max(1, len(bundles))) as pool:
        return list(pool.map(attempt, bundles))


# -- a pool on this machine ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(process: subprocess.Popen, sig=signal.SIGTERM) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class LocalPool:
    """A TVM RPC tracker and ``servers`` RPC servers under ``key``, all on 127.0.0.1.

    Each process gets its own process group (an RPC server serves every session from child
    processes, which a signal to the server alone would orphan); ``stop`` ends every group.
    Server output goes to ``log_dir`` when given, one file per server; ``threads`` sets each
    server's TVM thread pool (default: TVM's, every CPU).
    """

    def __init__(self, servers: int = 3, key: str = "local", *, log_dir: Path | None = None,
                 threads: int | None = None, start_timeout: float = 120.0):
        self.key = key
        self.count = servers
        self.log_dir = Path(log_dir) if log_dir else None
        self.start_timeout = start_timeout
        self.tracker_process: subprocess.Popen | None = None
        self.servers: list[subprocess.Popen] = []
        self.server_addresses: list[str] = []
        self.address = ""
        # servers need only TVM's runtime, as a board has; TVM's switch for that also halves start-up
        self._env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
        if threads is not None:  # each server's pool, as TVM_NUM_THREADS sets it on a board
            self._env["TVM_NUM_THREADS"] = str(threads)

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        out = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / log_name, "ab")  # noqa: SIM115 - the child holds it; closed below
        try:
            return subprocess.Popen([sys.executable, "-m", *args], stdout=out, stderr=subprocess.STDOUT,
                                    env=self._env, start_new_session=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()

    def start(self) -> "LocalPool":
        try:
            import tornado  # noqa: F401 - TVM's tracker imports it and the wheel does not declare it
        except ImportError:
            raise TrackerError("TVM's RPC tracker needs tornado, which the TVM wheel does not install: "
                               "pip install 'edgecnn[fleet]' (or pip install tornado)") from None
        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        self.tracker_process = self._spawn(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                                            "--port-end", str(port + 1)], "tracker.log")
        try:
            self._wait_for(lambda pools: True, "the tracker to answer")
            for _ in range(self.count):
                self.add_server()
            self._wait_for(lambda pools: self.key in pools and pools[self.key].free >= self.count,
                           f"{self.count} server(s) to register under '{self.key}'")
        except BaseException:
            self.stop()
            raise
        return self

    def add_server(self) -> str:
        """One more server under the pool's key; returns the address it listens on."""
        port = _free_port()
        index = len(self.servers)
        self.servers.append(self._spawn(["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                                         "--port-end", str(port + 1), "--tracker", self.address, "--key", self.key],
                                        f"server{index}.log"))
        self.server_addresses.append(f"127.0.0.1:{port}")
        return self.server_addresses[-1]

    def _wait_for(self, ready, what: str, *, starting: bool = True) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            # while starting, any process that exits is a failure; later, killed servers are expected
            for process in [self.tracker_process, *(self.servers if starting else [])]:
                if process.poll() is not None:
                    raise TrackerError(f"a process of the local pool exited ({process.args[2]}, code "
                                       f"{process.returncode}) while waiting for {what}")
            try:
                with Tracker(self.address, timeout=2) as client:
                    if ready(client.status()):
                        return
            except TrackerError:
                pass
            if time.monotonic() > deadline:
                raise TrackerError(f"timed out after {self.start_timeout:g} s waiting for {what}")
            time.sleep(0.2)

    def wait_free(self, count: int | None = None) -> None:
        """Until ``count`` (default: every live server) devices are free again."""
        count = sum(p.poll() is None for p in self.servers) if count is None else count
        self._wait_for(lambda pools: self.key in pools and pools[self.key].free >= count,
                       f"{count} free device(s) under '{self.key}'", starting=False)

    def kill_server(self, index: int) -> str:
        """SIGKILL one server and its sessions, as a board losing power; returns its address."""
        _stop_group(self.servers[index], signal.SIGKILL)
        return self.server_addresses[index]

    def stop(self) -> None:
        for process in self.servers:
            _stop_group(process)
        if self.tracker_process is not None:
            _stop_group(self.tracker_process)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
