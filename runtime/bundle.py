"""Open a compiled bundle, check it, and run it.

A bundle is a directory holding ``model.so``, ``manifest.json``, ``golden.npz`` and
``model.onnx``. :meth:`Bundle.open` reads the manifest, checks its format version and schema,
checks the SHA-256 of every file the manifest lists and that the golden arrays have the shapes
the manifest promises, and only then loads any code. Inputs are checked by name, shape and
dtype; a batch of any size runs in chunks of the batch the bundle was compiled for (the last
chunk is zero-padded and its padding dropped from the outputs).

Where the code runs is an :class:`Executor`: the local TVM Relax VM here, a remote VM over RPC
(:mod:`edgecnn.runtime.rpc`) or an aarch64 runner under qemu (:mod:`edgecnn.runtime.emulate`).

Imports only numpy and the standard library at module level; TVM is imported when a bundle's
code is loaded.
"""
from __future__ import annotations

import abc
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .errors import BundleError, InputError, received
from .host import host_arch
from .timing import time_calls

FORMAT_VERSION = 1
REQUIRED_FILES = ("manifest.json", "model.so", "golden.npz", "model.onnx")
# Files whose hash must be listed in the manifest: loading unverified code is what we refuse.
HASHED_FILES = ("model.so", "model.onnx", "golden.npz")


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as the manifest describes it (batch dimension first)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def describe(self) -> str:
        return f"'{self.name}' {self.dtype}{list(self.shape)}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- manifest -------------------------------------------------------------------------------------
def _tensor_infos(manifest: dict, key: str, batch: int) -> list[TensorInfo]:
    entries = manifest.get(key)
    if not isinstance(entries, list) or not entries:
        raise BundleError(f"manifest.json: '{key}' must be a non-empty list. {received(**{key: entries})}")
    infos = []
    for entry in entries:
        try:
            name, shape, dtype = entry["name"], entry["shape"], entry["dtype"]
            shape = tuple(int(d) for d in shape)
        except (KeyError, TypeError, ValueError):
            raise BundleError(f"manifest.json: each of '{key}' needs name, integer shape and dtype. "
                              f"{received(entry=entry)}") from None
        if not shape or shape[0] != batch or any(d <= 0 for d in shape):
            raise BundleError(f"manifest.json: {key[:-1]} '{name}' must have positive dimensions with the "
                              f"batch ({batch}) first. {received(shape=list(shape))}")
        infos.append(TensorInfo(str(name), shape, str(dtype)))
    names = [i.name for i in infos]
    if len(set(names)) != len(names):
        raise BundleError(f"manifest.json: {key} names must be unique. {received(names=names)}")
    return infos


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of the manifest's canonical JSON, its own ``manifest_sha256`` entry left out."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal_manifest(manifest: dict) -> dict:
    """Record the manifest's own digest in it, so an edit to any field (labels, preprocessing,
    target) is refused like a modified file. A checksum against mistakes, not a signature."""
    return {**manifest, "manifest_sha256": manifest_digest(manifest)}


def read_manifest(bundle_dir: Path) -> dict:
    """Parse and check ``manifest.json``: format version, tensors, batch, target, file hashes."""
    path = bundle_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{bundle_dir} is not a bundle: manifest.json is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: must hold a JSON object. {received(type=type(manifest).__name__)}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: unsupported bundle format version (this runtime reads version "
                          f"{FORMAT_VERSION}). {received(format_version=version)}")
    recorded, actual = manifest.get("manifest_sha256"), manifest_digest(manifest)
    if recorded != actual:
        raise BundleError(f"{path} was modified after compilation (its content does not match its own "
                          f"manifest_sha256; refusing to load the bundle). {received(sha256=actual, expected=recorded)}")
    batch = manifest.get("batch")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise BundleError(f"{path}: 'batch' must be a positive integer. {received(batch=batch)}")
    _tensor_infos(manifest, "inputs", batch)
    _tensor_infos(manifest, "outputs", batch)
    target = manifest.get("target")
    if not isinstance(target, dict) or target.get("device") not in ("cpu", "cuda") or not target.get("arch"):
        raise BundleError(f"{path}: 'target' needs device ('cpu' or 'cuda') and arch. {received(target=target)}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{path}: 'files' must map file names to their sha256. {received(files=files)}")
    for name in HASHED_FILES:
        entry = files.get(name)
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or len(digest) != 64:
            raise BundleError(f"{path}: 'files' lacks the sha256 of {name}. {received(**{name: entry})}")
    return manifest


def check_files(bundle_dir: Path, manifest: dict) -> None:
    """Every required file exists and every listed file has the hash the manifest records."""
    missing = [name for name in REQUIRED_FILES if not (bundle_dir / name).is_file()]
    if missing:
        raise BundleError(f"bundle {bundle_dir} is incomplete: missing {', '.join(missing)}")
    for name, entry in sorted(manifest["files"].items()):
        file = bundle_dir / name
        if Path(name).name != name or not file.is_file():
            raise BundleError(f"bundle {bundle_dir}: manifest lists '{name}', which is not a file in the bundle")
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        actual = sha256_file(file)
        if actual != expected:
            raise BundleError(f"bundle {bundle_dir}: {name} does not match the SHA-256 in manifest.json "
                              f"(modified or corrupted; refusing to load it). "
                              f"{received(sha256=actual, expected=expected)}")


def load_golden(path: Path, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo]):
    """``golden.npz`` as ``({input: array}, {output: array})``; its shapes must match the manifest."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: not a readable .npz without pickles ({exc})") from None
    found = {}
    for kind, infos in (("input", inputs), ("output", outputs)):
        found[kind] = {}
        for info in infos:
            key = f"{kind}:{info.name}"
            if key not in arrays:
                raise BundleError(f"{path}: no array '{key}' for the manifest's {kind} {info.describe()}. "
                                  f"{received(arrays=sorted(arrays))}")
            array = arrays[key]
            if tuple(array.shape) != info.shape or array.dtype != np.dtype(info.dtype):
                raise BundleError(f"{path}: '{key}' disagrees with manifest.json, which says "
                                  f"{info.dtype}{list(info.shape)}. "
                                  f"{received(shape=list(array.shape), dtype=str(array.dtype))}")
            found[kind][info.name] = array
    return found["input"], found["output"]


# -- inputs and batching --------------------------------------------------------------------------
def check_feeds(inputs: Sequence[TensorInfo], feeds: dict) -> tuple[dict[str, np.ndarray], int]:
    """Match feeds to the model inputs by name, dtype and shape (any batch size); return them and N."""
    names = [info.name for info in inputs]
    if not isinstance(feeds, dict):
        raise InputError(f"inputs must be a mapping from input name to array; the model's inputs are {names}. "
                         f"{received(type=type(feeds).__name__)}")
    missing = [n for n in names if n not in feeds]
    extra = [n for n in feeds if n not in names]
    if missing or extra:
        raise InputError(f"the model's inputs are {names}; missing {missing}, unexpected {extra}. "
                         f"{received(names=sorted(feeds))}")
    checked: dict[str, np.ndarray] = {}
    batch_sizes = {}
    for info in inputs:
        x = feeds[info.name]
        x = x if isinstance(x, np.ndarray) else np.asarray(x)
        if x.dtype != np.dtype(info.dtype):
            raise InputError(f"input '{info.name}' must be {info.dtype}. {received(dtype=str(x.dtype))}")
        expected = ("N",) + info.shape[1:]
        if x.ndim != len(info.shape) or tuple(x.shape[1:]) != info.shape[1:] or x.shape[0] < 1:
            raise InputError(f"input '{info.name}' must have shape {list(expected)} (N >= 1 samples). "
                             f"{received(shape=list(x.shape))}")
        checked[info.name] = np.ascontiguousarray(x)
        batch_sizes[info.name] = x.shape[0]
    if len(set(batch_sizes.values())) > 1:
        raise InputError(f"all inputs must hold the same number of samples. {received(batch_sizes=batch_sizes)}")
    return checked, next(iter(batch_sizes.values()))


def chunks(feeds: dict[str, np.ndarray], n: int, batch: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Split N samples into batches of the compiled size; yield (batch feeds, real samples in it)."""
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        part = {}
        for name, x in feeds.items():
            piece = x[start:stop]
            if stop - start < batch:
                pad = np.zeros((batch - (stop - start),) + x.shape[1:], dtype=x.dtype)
                piece = np.concatenate([piece, pad])
            part[name] = np.ascontiguousarray(piece)
        yield part, stop - start


# -- executors ------------------------------------------------------------------------------------
class Executor(abc.ABC):
    """Runs the compiled ``main`` on one batch of the compiled size."""

    description = "executor"

    @abc.abstractmethod
    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs of one call, in the manifest's output order."""

    @abc.abstractmethod
    def time(self, arrays: list[np.ndarray], *, repeat: int, warmup: int) -> list[float]:
        """Seconds per call, ``repeat`` samples after ``warmup`` untimed calls."""

    def prepared_call(self, arrays: list[np.ndarray]) -> Callable[[], None]:
        """One call of ``main`` on ``arrays`` already on the device, returning when it is done:
        what :mod:`edgecnn.runtime.timing` times when this executor is compared with a peer."""
        raise BundleError(f"{self.description} times itself (time()); only a bundle run in this process "
                          f"can be timed call by call against another runtime")

    def close(self) -> None:
        """Release what the executor holds (remote sessions, temporary files)."""


def _as_arrays(result) -> list[np.ndarray]:
    """The VM returns one tensor or a tuple of them; give numpy arrays in output order."""
    if hasattr(result, "numpy"):
        return [result.numpy()]
    return [item.numpy() for item in result]


THREADS_ENV = "TVM_NUM_THREADS"
BIND_THREADS_ENV = "TVM_BIND_THREADS"


def unpin_thread_pool() -> None:
    """Leave TVM's workers unpinned unless the user asked otherwise (``TVM_BIND_THREADS=1``).

    TVM pins each pool worker to a core but leaves the calling thread free, so the kernel can put
    the caller on the same core as a worker: both then share it and a 2-thread model runs at
    one-thread speed until the scheduler moves the caller (tens of ms on these VMs). Measured here
    with vgg-small on 2 threads, alternating with onnxruntime in one process: pinned 0.35 or 0.65 ms
    depending on where the caller last ran, unpinned 0.35 ms throughout. Must run before the pool
    starts (the first parallel kernel of the process).
    """
    os.environ.setdefault(BIND_THREADS_ENV, "0")


def set_threads(count: int | None) -> None:
    """Size TVM's CPU thread pool for this process; None leaves TVM's default.

    TVM 0.27's runtime sizes its pool from ``TVM_NUM_THREADS`` when the pool starts (the first
    parallel kernel of the process); ``runtime.config_threadpool`` measurably changes nothing
    here afterwards. So the variable is set, and takes effect when no bundle has run yet in this
    process, which is the case for every ``edgecnn`` command that runs bundles.
    """
    if count is None:
        return
    if count < 1:
        raise InputError(f"--threads must be at least 1. {received(threads=count)}")
    os.environ[THREADS_ENV] = str(int(count))


class LocalExecutor(Executor):
    """The bundle's ``model.so`` in this process, on the Relax VM."""

    def __init__(self, library: Path, device_kind: str, input_names: list[str]):
        import tvm
        from tvm.runtime.vm import VirtualMachine

        unpin_thread_pool()
        self._tvm = tvm
        self.device = tvm.cuda(0) if device_kind == "cuda" else tvm.cpu(0)
        if device_kind == "cuda" and not self.device.exist:
            raise BundleError("the bundle targets a CUDA GPU and this machine has none; use --rpc HOST:PORT")
        try:
            module = tvm.runtime.load_module(str(library))
            self.vm = VirtualMachine(module, self.device)
        except Exception as exc:  # TVM raises its own error types for a bad library
            raise BundleError(f"{library}: TVM could not load it ({type(exc).__name__}: {exc})") from None
        _check_signature(self.vm.module, input_names, str(library))
        self.main = self.vm["main"]
        self.description = f"tvm {tvm.__version__} ({self.device})"

    def _tensors(self, arrays):
        return [self._tvm.runtime.tensor(a, device=self.device) for a in arrays]

    def run(self, arrays):
        return _as_arrays(self.main(*self._tensors(arrays)))

    def prepared_call(self, arrays):
        # Inputs go to the device once, outside the timed call; the sync makes a GPU call's
        # time its kernels' time rather than their launch.
        tensors = self._tensors(arrays)
        main, device = self.main, self.device

        def call():
            main(*tensors)
            device.sync()

        return call

    def time(self, arrays, *, repeat, warmup):
        # Executables have no time_evaluator in 0.27 locally: time whole calls with perf_counter.
        call = self.prepared_call(arrays)
        for _ in range(warmup):
            call()
        return time_calls(call, repeat)


def _check_signature(vm_module, input_names: list[str], where: str) -> None:
    """The compiled ``main`` takes exactly the manifest's inputs, in order."""
    try:
        arity = int(vm_module["get_function_arity"]("main"))
        params = [str(vm_module["get_function_param_name"]("main", i)) for i in range(arity)]
    except Exception as exc:
        raise BundleError(f"{where}: has no Relax VM function 'main' ({type(exc).__name__}: {exc})") from None
    if params != list(input_names):
        raise BundleError(f"{where}: compiled 'main' takes {params}, manifest.json promises {list(input_names)}")


# -- the bundle -----------------------------------------------------------------------------------
class Bundle:
    """A checked bundle. ``run(feeds)`` takes ``{input name: float32 array}`` with any batch size."""

    def __init__(self, path: Path, manifest: dict, executor: Executor | None):
        self.path = path
        self.manifest = manifest
        self.batch: int = manifest["batch"]
        self.inputs = _tensor_infos(manifest, "inputs", self.batch)
        self.outputs = _tensor_infos(manifest, "outputs", self.batch)
        self.executor = executor

    @classmethod
    def open(cls, path, *, executor: str | Executor | None = "local") -> "Bundle":
        """Check the bundle, then load its code.

        executor: ``"local"`` (this process), an :class:`Executor` built by the caller
        (RPC, emulation) via :meth:`check` + ``attach``, or None to check without loading code.
        """
        bundle = cls.check(path)
        if executor == "local":
            bundle.executor = bundle._local_executor()
        elif isinstance(executor, Executor):
            bundle.executor = executor
        elif executor is not None:
            raise ValueError(f"unknown executor {executor!r}")
        return bundle

    @classmethod
    def check(cls, path) -> "Bundle":
        """Everything but loading code: manifest, file hashes, golden shapes."""
        path = Path(path)
        if not path.exists():
            raise BundleError(f"bundle not found: {path}")
        if not path.is_dir():
            raise BundleError(f"a bundle is a directory (model.so, manifest.json, golden.npz, model.onnx). "
                              f"{received(path=str(path))}")
        manifest = read_manifest(path)
        check_files(path, manifest)
        bundle = cls(path, manifest, None)
        bundle.golden_inputs, bundle.golden_outputs = load_golden(path / "golden.npz", bundle.inputs,
                                                                  bundle.outputs)
        return bundle

    def _local_executor(self) -> LocalExecutor:
        arch = self.arch
        if arch != host_arch():
            remote = "--rpc HOST:PORT, or --tracker HOST:PORT --key KEY for a device pool"
            hint = f" use --emulate (qemu), {remote}" if arch == "aarch64" else f" use {remote}"
            raise BundleError(f"bundle {self.path} is built for {arch} and this machine is {host_arch()}:{hint}")
        return LocalExecutor(self.path / "model.so", self.device_kind, self.input_names)

    # -- descriptions ------------------------------------------------------------------------------
    @property
    def arch(self) -> str:
        return self.manifest["target"]["arch"]

    @property
    def device_kind(self) -> str:
        return self.manifest["target"]["device"]

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def labels(self) -> list[str] | None:
        return self.manifest.get("labels") or None

    @property
    def preprocessing(self) -> dict | None:
        return self.manifest.get("preprocessing") or None

    @property
    def golden_tolerances(self) -> tuple[float, float]:
        golden = self.manifest.get("golden") or {}
        return float(golden.get("rtol", 1e-4)), float(golden.get("atol", 1e-4))

    @property
    def model_name(self) -> str:
        return str(self.manifest.get("model_name") or self.path.name)

    # -- running -----------------------------------------------------------------------------------
    def _require_executor(self) -> Executor:
        if self.executor is None:
            raise BundleError(f"bundle {self.path} was opened without loading its code")
        return self.executor

    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        """``{output name: array}`` for N samples, run ``batch`` at a time."""
        executor = self._require_executor()
        checked, n = check_feeds(self.inputs, feeds)
        parts: list[list[np.ndarray]] = []
        for part, real in chunks(checked, n, self.batch):
            outs = executor.run([part[name] for name in self.input_names])
            if len(outs) != len(self.outputs):
                raise BundleError(f"model.so returned {len(outs)} outputs, manifest.json lists "
                                  f"{len(self.outputs)} ({self.output_names})")
            for out, info in zip(outs, self.outputs):
                if tuple(out.shape) != info.shape:
                    raise BundleError(f"model.so output '{info.name}' has shape {list(out.shape)}, "
                                      f"manifest.json says {list(info.shape)}")
            parts.append([out[:real] for out in outs])
        return {info.name: np.concatenate([p[i] for p in parts]) for i, info in enumerate(self.outputs)}

    def _first_batch(self, feeds: dict | None) -> list[np.ndarray]:
        checked, n = check_feeds(self.inputs, self.golden_inputs if feeds is None else feeds)
        part, _ = next(chunks(checked, n, self.batch))
        return [part[name] for name in self.input_names]

    def time(self, *, repeat: int, warmup: int, feeds: dict | None = None) -> list[float]:
        """Per-call latency in seconds of one compiled batch (golden inputs unless ``feeds``)."""
        executor = self._require_executor()
        return executor.time(self._first_batch(feeds), repeat=repeat, warmup=warmup)

    def prepared_call(self, feeds: dict | None = None) -> Callable[[], None]:
        """A zero-argument function making one call of one compiled batch (golden inputs unless
        ``feeds``), as :meth:`time` times it: the peer to hand :func:`edgecnn.runtime.timing.interleaved`."""
        executor = self._require_executor()
        return executor.prepared_call(self._first_batch(feeds))

    def close(self) -> None:
        if self.executor is not None:
            self.executor.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
