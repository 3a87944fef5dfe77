"""Run an aarch64 bundle on an x86 machine under qemu-user.

The pieces: TVM's aarch64 runtime libraries ``libtvm_runtime.so`` and
``libtvm_ffi.so`` taken from the PyPI aarch64 wheels (``make aarch64-runtime`` puts them in
``.venv/aarch64-runtime/``; ``EDGECNN_AARCH64_RUNTIME`` points elsewhere), a small C++ runner
(``native/runner.cc``, tvm_ffi headers only) cross-compiled on first use with
``aarch64-linux-gnu-g++`` into a cache directory, and ``qemu-aarch64-static`` with the
Debian aarch64 sysroot.

``python -m edgecnn.runtime.emulate fetch [DIR]`` downloads the two wheels with pip and
extracts the libraries and headers; ``python -m edgecnn.runtime.emulate check`` says what
is missing.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .bundle import Bundle, Executor
from .errors import BundleError, EdgeCNNError
from .host import cache_root

ENV_RUNTIME_DIR = "EDGECNN_AARCH64_RUNTIME"
# The pair pinned in pyproject.toml: the device libraries must match the compiler that built the bundle.
WHEELS = ("apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post0")
LIBRARIES = ("libtvm_runtime.so", "libtvm_ffi.so")
CROSS_CXX = "aarch64-linux-gnu-g++"
QEMU_NAMES = ("qemu-aarch64-static", "qemu-aarch64")
SYSROOT = Path("/usr/aarch64-linux-gnu")
RUNNER_SOURCE = Path(__file__).with_name("native") / "runner.cc"


class EmulationUnavailable(EdgeCNNError):
    """A tool or library that emulation needs is not installed (exit code 2)."""


def runtime_dir() -> Path:
    configured = os.environ.get(ENV_RUNTIME_DIR)
    return Path(configured) if configured else Path(sys.prefix) / "aarch64-runtime"


def _qemu() -> str | None:
    for name in QEMU_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def missing_requirements() -> list[str]:
    """What emulation lacks on this machine, each with how to get it; empty when it can run."""
    missing = []
    libs = runtime_dir()
    absent = [name for name in LIBRARIES if not (libs / name).is_file()]
    if absent:
        missing.append(f"aarch64 TVM runtime libraries ({', '.join(absent)}) not found in {libs}: "
                       f"run `make aarch64-runtime` (needs PyPI) or set {ENV_RUNTIME_DIR}")
    if shutil.which(CROSS_CXX) is None:
        missing.append(f"{CROSS_CXX} not found: run `make system-deps` (g++-aarch64-linux-gnu)")
    if _qemu() is None:
        missing.append("qemu-aarch64-static not found: run `make system-deps` (qemu-user-static)")
    if not SYSROOT.is_dir():
        missing.append(f"aarch64 sysroot {SYSROOT} not found: run `make system-deps`")
    return missing


def require() -> None:
    missing = missing_requirements()
    if missing:
        raise EmulationUnavailable("cannot emulate aarch64: " + "; ".join(missing))


def _include_dirs(libs: Path) -> list[Path]:
    """tvm_ffi and dlpack headers: those fetched beside the libraries, else the installed tvm_ffi's."""
    candidates = [libs / "include"]
    try:
        import tvm_ffi

        candidates.append(Path(tvm_ffi.__file__).parent / "include")
    except ImportError:
        pass
    for base in candidates:
        if (base / "tvm" / "ffi" / "function.h").is_file():
            dirs = [base]
            for dlpack in (base, base.parent / "3rdparty" / "dlpack" / "include"):
                if (dlpack / "dlpack" / "dlpack.h").is_file():
                    dirs.append(dlpack)
            return dirs
    raise EmulationUnavailable(f"tvm_ffi headers not found in {', '.join(map(str, candidates))}: "
                               f"run `make aarch64-runtime`")


def _cache_dir() -> Path:
    return cache_root() / "aarch64-runner"


def runner_path() -> Path:
    """The cross-compiled runner, built on first use and cached by a hash of its source and libraries."""
    require()
    libs = runtime_dir()
    digest = hashlib.sha256(RUNNER_SOURCE.read_bytes())
    for name in LIBRARIES:
        digest.update(hashlib.sha256((libs / name).read_bytes()).digest())
    target = _cache_dir() / digest.hexdigest()[:16] / "runner"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{d}" for d in _include_dirs(libs)]
    fd, tmp = tempfile.mkstemp(prefix=".runner.", dir=target.parent)
    os.close(fd)
    command = [CROSS_CXX, "-std=c++17", "-O2", *includes, str(RUNNER_SOURCE), "-o", tmp, f"-L{libs}",
               # The VM library reaches the runtime only through dlopen'ed symbols: keep both linked.
               "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        os.unlink(tmp)
        raise EmulationUnavailable(f"building the aarch64 runner failed ({' '.join(command)}):\n"
                                   f"{result.stderr.strip()[-2000:]}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return target


class EmulatedExecutor(Executor):
    """Each call starts the aarch64 runner under qemu-user on the bundle's ``model.so``."""

    def __init__(self, library: Path, threads: int | None = None, timeout_s: float = 600):
        self.library = Path(library)
        self.runner = runner_path()
        self.qemu = _qemu()
        self.threads = threads or 0
        self.timeout_s = timeout_s
        self.description = f"aarch64 under {Path(self.qemu).name}"

    def _invoke(self, arrays, repeat: int, warmup: int):
        with tempfile.TemporaryDirectory(prefix="edgecnn-emulate-") as work:
            work = Path(work)
            lines = []
            for k, array in enumerate(arrays):
                array = np.ascontiguousarray(array, dtype="<f4")
                array.tofile(work / f"input_{k}.bin")
                lines.append(" ".join(map(str, [f"input_{k}.bin", array.ndim, *array.shape])))
            (work / "inputs.txt").write_text("\n".join(lines) + "\n")
            env = ["-E", f"LD_LIBRARY_PATH={runtime_dir()}"]
            if self.threads:
                env += ["-E", f"TVM_NUM_THREADS={self.threads}"]
            command = [self.qemu, "-L", str(SYSROOT), *env, str(self.runner), str(self.library.resolve()),
                       str(work), str(repeat), str(warmup)]
            try:
                result = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                raise BundleError(f"the emulated run of {self.library} took over {self.timeout_s:.0f} s") from None
            if result.returncode != 0:
                raise BundleError(f"the emulated run of {self.library} failed (exit {result.returncode}): "
                                  f"{(result.stderr or result.stdout).strip()[-1500:]}")
            outputs = []
            for line in (work / "outputs.txt").read_text().splitlines():
                file, ndim, *dims = line.split()
                shape = tuple(int(d) for d in dims)
                if len(shape) != int(ndim):
                    raise BundleError(f"the aarch64 runner wrote a malformed outputs.txt line: {line!r}")
                outputs.append(np.fromfile(work / file, dtype="<f4").reshape(shape).astype(np.float32))
            times = [float(t) for t in (work / "times.txt").read_text().split()]
        return outputs, times

    def run(self, arrays):
        return self._invoke(arrays, 0, 0)[0]

    def time(self, arrays, *, repeat, warmup):
        return self._invoke(arrays, repeat, warmup)[1]


def open_emulated(path, *, threads: int | None = None) -> Bundle:
    """Check an aarch64 CPU bundle and attach the qemu executor (the runner is built if needed)."""
    bundle = Bundle.check(path)
    if bundle.arch != "aarch64" or bundle.device_kind != "cpu":
        raise BundleError(f"--emulate runs aarch64 CPU bundles; {bundle.path} is built for "
                          f"{bundle.arch} ({bundle.device_kind})")
    bundle.executor = EmulatedExecutor(bundle.path / "model.so", threads=threads)
    return bundle


# -- fetching the aarch64 runtime libraries -------------------------------------------------------
def fetch(dest: Path, *, python: str = sys.executable) -> Path:
    """Download the aarch64 wheels of TVM and tvm-ffi with pip; extract the libraries and headers."""
    dest = Path(dest)
    stamp = dest / "WHEELS.txt"
    wanted = "\n".join(WHEELS) + "\n"
    if stamp.is_file() and stamp.read_text() == wanted and all((dest / n).is_file() for n in LIBRARIES):
        print(f"aarch64 TVM runtime already in {dest}", file=sys.stderr)
        return dest
    with tempfile.TemporaryDirectory(prefix="edgecnn-aarch64-wheels-") as download:
        command = [python, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11", *WHEELS, "-d", download]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise EmulationUnavailable(f"pip could not download the aarch64 wheels ({' '.join(WHEELS)}): "
                                       f"{result.stderr.strip()[-800:]}")
        staging = Path(tempfile.mkdtemp(prefix=".aarch64-runtime.", dir=dest.parent if dest.parent.exists() else None))
        try:
            for wheel in sorted(Path(download).glob("*.whl")):
                with zipfile.ZipFile(wheel) as archive:
                    for member in archive.namelist():
                        _extract_member(archive, member, staging)
            absent = [n for n in LIBRARIES if not (staging / n).is_file()]
            if absent:
                raise EmulationUnavailable(f"the aarch64 wheels lack {', '.join(absent)}")
            (staging / "WHEELS.txt").write_text(wanted)
            if dest.exists():
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    print(f"aarch64 TVM runtime libraries in {dest}", file=sys.stderr)
    return dest


def _extract_member(archive: zipfile.ZipFile, member: str, staging: Path) -> None:
    name = Path(member).name
    if member in ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so"):
        (staging / name).write_bytes(archive.read(member))
        return
    for prefix in ("tvm_ffi/include/", "tvm_ffi/3rdparty/dlpack/include/"):
        if member.startswith(prefix) and not member.endswith("/"):
            relative = Path(member[len(prefix):])
            if ".." in relative.parts:
                return
            out = staging / "include" / relative
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(archive.read(member))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fetch"] and len(argv) <= 2:
        try:
            fetch(Path(argv[1]) if len(argv) == 2 else runtime_dir())
        except EmulationUnavailable as exc:
            print(f"note: {exc}", file=sys.stderr)
            return 1
        return 0
    if argv == ["check"]:
        missing = missing_requirements()
        for line in missing:
            print(f"missing: {line}")
        print("aarch64 emulation: " + ("unavailable" if missing else f"ready ({runtime_dir()})"))
        return 1 if missing else 0
    print("usage: python -m edgecnn.runtime.emulate fetch [DIR] | check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
