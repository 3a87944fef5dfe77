"""Run a bundle on a remote device through TVM RPC.

On the device (anything with TVM's Python package, or its runtime built from source)::

    python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090

Here, ``--rpc HOST:PORT`` checks the bundle locally (manifest, hashes), uploads ``model.so``,
loads it remotely on the Relax VM, runs inputs there and times calls with TVM's remote time
evaluator, so the latency is measured on the device without network round trips. Devices
lent by an RPC tracker (``--tracker``, :mod:`.fleet`) run through the same executor.
"""
from __future__ import annotations

from pathlib import Path

from .bundle import Bundle, Executor, _as_arrays, _check_signature
from .errors import EdgeCNNError, InputError, received

SERVER_COMMAND = "python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090"


class RemoteError(EdgeCNNError):
    """The RPC server could not be reached, refused the bundle or dropped (exit code 2)."""


def parse_address(text: str, *, flag: str = "--rpc") -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        example = "192.168.1.2:9190" if flag == "--tracker" else "192.168.1.20:9090"
        raise InputError(f"{flag} takes HOST:PORT, e.g. {example}. {received(**{flag.lstrip('-'): text})}")
    return host.strip("[]"), int(port)


def last_line(exc: Exception) -> str:
    """TVM's errors carry a C++ back trace; the last line says what happened."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else exc}"


def connect(address: str, *, session_timeout: float = 0):
    """An RPC session with the server at ``HOST:PORT``."""
    from tvm import rpc

    host, port = parse_address(address)
    try:
        return rpc.connect(host, port, session_timeout=session_timeout)
    except Exception as exc:  # socket errors arrive wrapped in TVM's own error types
        raise RemoteError(f"cannot reach a TVM RPC server at {host}:{port} ({last_line(exc)}). "
                          f"Start one on the device with: {SERVER_COMMAND}") from None


def refuse_remote_threads(threads: int | None) -> None:
    if threads is not None:
        # The remote pool is sized by TVM_NUM_THREADS where the server starts; 0.27's
        # runtime.config_threadpool does not resize it, so a remote --threads would be a lie.
        raise InputError("--threads cannot be set over RPC: start the server on the device with "
                         f"TVM_NUM_THREADS=N {SERVER_COMMAND}")


class RemoteExecutor(Executor):
    """``model.so`` uploaded through an RPC ``session`` to the server at ``address`` and run there."""

    def __init__(self, library: Path, session, address: str, *, device_kind: str, input_names: list[str]):
        import tvm
        from tvm.runtime.vm import VirtualMachine

        self._tvm = tvm
        self.address = address
        self.session = session
        remote_name = f"edgecnn-{library.parent.name}-{library.name}"
        try:
            self.session.upload(str(library), target=remote_name)
            module = self.session.load_module(remote_name)
            self.device = self.session.cuda(0) if device_kind == "cuda" else self.session.cpu(0)
            self.vm = VirtualMachine(module, self.device)
        except EdgeCNNError:
            raise
        except Exception as exc:
            raise RemoteError(f"the RPC server at {self.address} could not load {library} "
                              f"(built for another architecture or TVM version?): {last_line(exc)}") from None
        _check_signature(self.vm.module, input_names, f"{library} on {self.address}")
        self.description = f"tvm rpc {self.address} ({device_kind})"

    def _tensors(self, arrays):
        return [self._tvm.runtime.tensor(a, device=self.device) for a in arrays]

    def run(self, arrays):
        return _as_arrays(self.vm["main"](*self._tensors(arrays)))

    def time(self, arrays, *, repeat, warmup):
        self.vm.set_input("main", *self._tensors(arrays))
        for _ in range(warmup):
            self.vm.invoke_stateful("main")
        # One call per repeat so that percentiles describe single calls; timed on the device.
        evaluator = self.vm.time_evaluator("invoke_stateful", self.device, number=1, repeat=repeat)
        return [float(t) for t in evaluator("main").results]

    def close(self):
        # the session ends (and a tracker's device is free again) when nothing refers to it:
        # the VM, its module and the remote device handle all do
        self.session = self.vm = self.device = None


def open_remote(path, address: str, *, threads: int | None = None) -> Bundle:
    """Check the bundle here, then upload and load its code on the RPC server at ``address``."""
    refuse_remote_threads(threads)
    bundle = Bundle.check(path)
    host, port = parse_address(address)
    bundle.executor = RemoteExecutor(Path(bundle.path) / "model.so", connect(address), f"{host}:{port}",
                                     device_kind=bundle.device_kind, input_names=bundle.input_names)
    return bundle
