"""Run a bundle on a remote device through TVM RPC.

On the device (anything with TVM's Python package, or its runtime built from source)::

    python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090

Here, ``--rpc HOST:PORT`` checks the bundle locally (manifest, hashes), uploads ``model.so``,
loads it remotely on the Relax VM, runs inputs there and times calls with TVM's remote time
evaluator, so the latency is measured on the device without network round trips.
"""
from __future__ import annotations

from pathlib import Path

from .bundle import Bundle, Executor, _as_arrays, _check_signature
from .errors import EdgeCNNError, InputError, received

SERVER_COMMAND = "python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090"


class RemoteError(EdgeCNNError):
    """The RPC server could not be reached or refused the bundle (exit code 2)."""


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--rpc takes HOST:PORT, e.g. 192.168.1.20:9090. {received(rpc=text)}")
    return host.strip("[]"), int(port)


class RemoteExecutor(Executor):
    """``model.so`` uploaded to an RPC server and run there on the Relax VM."""

    def __init__(self, library: Path, address: str, *, device_kind: str, input_names: list[str],
                 threads: int | None = None, session_timeout: float = 0):
        import tvm
        from tvm import rpc
        from tvm.runtime.vm import VirtualMachine

        self._tvm = tvm
        host, port = parse_address(address)
        if threads is not None:
            # The remote pool is sized by TVM_NUM_THREADS where the server starts; 0.27's
            # runtime.config_threadpool does not resize it, so a remote --threads would be a lie.
            raise InputError("--threads cannot be set over RPC: start the server on the device with "
                             f"TVM_NUM_THREADS=N {SERVER_COMMAND}")
        self.address = f"{host}:{port}"
        try:
            self.session = rpc.connect(host, port, session_timeout=session_timeout)
        except Exception as exc:  # socket errors arrive wrapped in TVM's own error types
            raise RemoteError(f"cannot reach a TVM RPC server at {self.address} ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}). "
                              f"Start one on the device with: {SERVER_COMMAND}") from None
        remote_name = f"edgecnn-{library.parent.name}-{library.name}"
        try:
            self.session.upload(str(library), target=remote_name)
            module = self.session.load_module(remote_name)
            self.device = self.session.cuda(0) if device_kind == "cuda" else self.session.cpu(0)
            self.vm = VirtualMachine(module, self.device)
        except EdgeCNNError:
            raise
        except Exception as exc:
            message = str(exc).strip().splitlines()
            raise RemoteError(f"the RPC server at {self.address} could not load {library} "
                              f"(built for another architecture or TVM version?): "
                              f"{type(exc).__name__}: {message[-1] if message else exc}") from None
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
        self.session = None
        self.vm = None


def open_remote(path, address: str, *, threads: int | None = None) -> Bundle:
    """Check the bundle here, then upload and load its code on the RPC server at ``address``."""
    bundle = Bundle.check(path)
    bundle.executor = RemoteExecutor(Path(bundle.path) / "model.so", address, device_kind=bundle.device_kind,
                                     input_names=bundle.input_names, threads=threads)
    return bundle
