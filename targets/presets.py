"""Target presets as data: a TVM target, a cross compiler, a device kind, and what this machine can do.

A preset names a TVM target (a registered tag or a JSON dict, never a CLI string: TVM 0.27 takes
those), the C++ compiler that links its ``model.so`` (a cross compiler for aarch64), the device
the code runs on (``cpu`` or ``cuda``) and the CPU architecture of the code's host part. What
this machine can do with a preset (build, run, emulate) is worked out from the tools on PATH,
the CPU's features and the TVM build, and each missing piece is reported with how to get it.

``host`` is the one preset computed at import time: TVM 0.27 rejects ``-mcpu=native``, so the
CPU is identified from ``/proc/cpuinfo`` and LLVM's name for it.
"""
from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from edgecnn.runtime.errors import EdgeCNNError, received
# machine_arch is the name targets/ has always exported for it
from edgecnn.runtime.host import host_arch as machine_arch
from edgecnn.runtime.jsonable import jsonable

AARCH64_CROSS_CXX = "aarch64-linux-gnu-g++"
AARCH64_SYSROOT = Path("/usr/aarch64-linux-gnu")
QEMU_AARCH64 = ("qemu-aarch64-static", "qemu-aarch64")

# /proc/cpuinfo flag -> LLVM feature name, for the x86 ISA extensions that change generated code.
_X86_CPUINFO_TO_LLVM = {
    "pni": "sse3", "ssse3": "ssse3", "sse4_1": "sse4.1", "sse4_2": "sse4.2", "popcnt": "popcnt",
    "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "bmi1": "bmi", "bmi2": "bmi2",
    "abm": "lzcnt", "movbe": "movbe", "avx512f": "avx512f", "avx512dq": "avx512dq",
    "avx512cd": "avx512cd", "avx512bw": "avx512bw", "avx512vl": "avx512vl",
    "avx512ifma": "avx512ifma", "avx512vbmi": "avx512vbmi", "avx512_vbmi2": "avx512vbmi2",
    "avx512_vnni": "avx512vnni", "avx512_bf16": "avx512bf16", "avx512_bitalg": "avx512bitalg",
    "avx512_vpopcntdq": "avx512vpopcntdq", "avx512_fp16": "avx512fp16", "avx_vnni": "avxvnni",
    "gfni": "gfni", "vaes": "vaes", "vpclmulqdq": "vpclmulqdq", "sha_ni": "sha",
}
# The x86-64 micro-architecture levels (psABI), as LLVM CPU names, best first.
_X86_LEVELS = (
    ("x86-64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2", "fma", "bmi2"}),
    ("x86-64-v3", {"avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe"}),
    ("x86-64-v2", {"sse3", "ssse3", "sse4.1", "sse4.2", "popcnt"}),
    ("x86-64", set()),
)
# /proc/cpuinfo "Features" on aarch64 -> LLVM feature name.
_ARM_CPUINFO_TO_LLVM = {"asimd": "neon", "asimddp": "dotprod", "asimdhp": "fullfp16", "sve": "sve",
                        "i8mm": "i8mm", "bf16": "bf16"}


class TargetError(EdgeCNNError):
    """An unknown preset, or a preset this machine cannot build for."""


@dataclass(frozen=True)
class Capabilities:
    """What this machine can do with a preset.

    ``missing`` lists tools one can install (each with how); ``limits`` lists facts of this
    machine that no install changes (another CPU architecture, no GPU).
    """

    build: bool
    run: bool
    emulate: bool
    missing: tuple[str, ...] = ()
    limits: tuple[str, ...] = ()
    build_missing: tuple[str, ...] = ()  # the part of ``missing`` that stops a build

    def to_dict(self) -> dict:
        return {"build": self.build, "run": self.run, "emulate": self.emulate,
                "missing": list(self.missing), "limits": list(self.limits)}


@dataclass(frozen=True)
class Preset:
    """One compilation target.

    ``tvm_target`` is a TVM tag (str) or a JSON dict; ``host`` optionally gives the host part
    of a GPU target. ``cross_compiler`` is the C++ driver that links the shared library (None:
    the native ``g++``). ``required_cpu_features`` are the LLVM feature names the code uses, so
    a CPU without them cannot run it.
    """

    name: str
    description: str
    tvm_target: str | dict
    device: str  # "cpu" | "cuda"
    arch: str  # CPU architecture of the host code: "x86_64" | "aarch64"
    host: dict | None = None
    cross_compiler: str | None = None
    apt_packages: tuple[str, ...] = ()
    required_cpu_features: tuple[str, ...] = ()
    cuda_arch: str | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def target(self):
        """The ``tvm.target.Target`` of this preset."""
        from tvm.target import Target

        if self.host is not None:
            return Target(self.tvm_target, host=self.host)
        return Target(self.tvm_target)

    def target_json(self) -> dict:
        """The full target as plain JSON data (``Target.export()`` with tuples as lists)."""
        return jsonable(self.target().export(), _tvm_value)

    @property
    def is_gpu(self) -> bool:
        return self.device != "cpu"

    @property
    def needs_cross_compiler(self) -> bool:
        return self.arch != machine_arch()

    def capabilities(self) -> Capabilities:
        return _capabilities(self)

    def require_buildable(self) -> None:
        """Raise a one-line TargetError naming what is missing to build for this preset."""
        caps = self.capabilities()
        if not caps.build:
            raise TargetError(f"cannot build for preset '{self.name}': " + "; ".join(caps.build_missing))

    def linker(self) -> str:
        """The C++ driver ``export_library`` links with."""
        return self.cross_compiler or os.environ.get("CXX", "g++")

    def to_dict(self) -> dict:
        caps = self.capabilities()
        return {
            "name": self.name, "description": self.description, "device": self.device, "arch": self.arch,
            "tvm_target": self.tvm_target, "host": self.host, "cross_compiler": self.cross_compiler,
            "cuda_arch": self.cuda_arch, "required_cpu_features": list(self.required_cpu_features),
            "notes": self.notes, **caps.to_dict(),
        }


def _tvm_value(value):
    """What ``jsonable`` leaves to us in an exported target: a nested Target, IntImm-likes, the rest as text."""
    if hasattr(value, "export"):  # a nested Target (the host)
        return jsonable(value.export(), _tvm_value)
    if hasattr(value, "value"):  # IntImm and friends
        return value.value
    return str(value)


# -- this machine ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _cpuinfo_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=None)
def host_cpu_features() -> frozenset[str]:
    """This CPU's ISA extensions, as LLVM feature names (only those that change generated code)."""
    table = _X86_CPUINFO_TO_LLVM if machine_arch() == "x86_64" else _ARM_CPUINFO_TO_LLVM
    return frozenset(llvm for flag, llvm in table.items() if flag in _cpuinfo_flags())


def _llvm_cpu_features(mcpu: str, triple: str) -> frozenset[str]:
    import tvm.target.codegen as codegen
    from tvm.target import Target

    return frozenset(codegen.llvm_get_cpu_features(Target({"kind": "llvm", "mtriple": triple, "mcpu": mcpu})))


@functools.lru_cache(maxsize=None)
def host_llvm_target() -> dict:
    """The LLVM target dict for this CPU.

    LLVM's own name for the CPU is used when every ISA extension it implies is really there
    (a hypervisor may hide some); otherwise the best x86-64 level the flags allow, plus the
    extra extensions found, so the code never uses an instruction the CPU lacks.
    """
    import tvm.target.codegen as codegen

    arch = machine_arch()
    detected = host_cpu_features()
    cores = os.cpu_count() or 1
    if arch == "aarch64":
        triple = "aarch64-linux-gnu"
        system_cpu = str(codegen.llvm_get_system_cpu())
        target = {"kind": "llvm", "mtriple": triple, "mattr": sorted("+" + f for f in detected), "num-cores": cores}
        if system_cpu and codegen.llvm_is_valid_cpu(system_cpu, triple):
            target["mcpu"] = system_cpu
        return target
    triple = "x86_64-linux-gnu"
    checked = set(_X86_CPUINFO_TO_LLVM.values())
    system_cpu = str(codegen.llvm_get_system_cpu())
    if (system_cpu and system_cpu != "generic" and codegen.llvm_is_valid_cpu(system_cpu, triple)
            and (_llvm_cpu_features(system_cpu, triple) & checked) <= detected):
        return {"kind": "llvm", "mtriple": triple, "mcpu": system_cpu, "num-cores": cores}
    for level, needs in _X86_LEVELS:
        if needs <= detected:
            extras = detected - (_llvm_cpu_features(level, triple) & checked)
            target = {"kind": "llvm", "mtriple": triple, "mcpu": level, "num-cores": cores}
            if extras:
                target["mattr"] = sorted("+" + f for f in extras)
            return target
    raise AssertionError("unreachable: the last level needs nothing")


# -- the presets ----------------------------------------------------------------------------------

_CUDA_LIMITS = {"max_num_threads": 1024, "thread_warp_size": 32, "max_threads_per_block": 1024,
                "max_shared_memory_per_block": 49152, "registers_per_block": 65536}


def _host_preset() -> Preset:
    target = host_llvm_target()
    arch = machine_arch()
    cpu = target.get("mcpu", "generic")
    return Preset(
        name="host", description=f"this machine's CPU ({arch}, {cpu})", tvm_target=target,
        device="cpu", arch=arch,
        notes="CPU features detected from /proc/cpuinfo: " + (", ".join(sorted(host_cpu_features())) or "none"),
    )


def _static_presets() -> list[Preset]:
    aarch64_cross = dict(cross_compiler=AARCH64_CROSS_CXX, apt_packages=("g++-aarch64-linux-gnu", "qemu-user-static"))
    return [
        Preset("x86-64-avx2", "any x86-64 CPU with AVX2 and FMA (x86-64-v3: Haswell, Zen 1 and later)",
               {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3"}, "cpu", "x86_64",
               required_cpu_features=("avx2", "fma")),
        Preset("x86-64-avx512", "x86-64 CPUs with AVX-512 F/BW/CD/DQ/VL (x86-64-v4: Skylake-SP, Zen 4 and later)",
               {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v4"}, "cpu", "x86_64",
               required_cpu_features=("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")),
        Preset("aarch64", "any 64-bit ARM Linux board (ARMv8-A, NEON)",
               {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, "cpu", "aarch64",
               **aarch64_cross),
        Preset("rpi4", "Raspberry Pi 4 (Cortex-A72, 4 cores, NEON)", "raspberry-pi/4b-aarch64", "cpu", "aarch64",
               **aarch64_cross),
        Preset("rpi5", "Raspberry Pi 5 (Cortex-A76, 4 cores, NEON, dot product, fp16)",
               {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
                "mattr": ["+neon", "+dotprod", "+fullfp16"], "num-cores": 4}, "cpu", "aarch64",
               **aarch64_cross),
        # TVM's "nvidia/jetson-orin-nano" tag gives the host as a Carmel core (Xavier's CPU);
        # Orin's CPU is a Cortex-A78AE, so the target is spelled out.
        Preset("jetson-orin-nano", "NVIDIA Jetson Orin Nano (Ampere GPU sm_87, Cortex-A78AE host)",
               {"kind": "cuda", "arch": "sm_87", **_CUDA_LIMITS}, "cuda", "aarch64",
               host={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a78ae",
                     "mattr": ["+neon"], "num-cores": 6},
               cuda_arch="sm_87", **aarch64_cross),
        Preset("cuda", "NVIDIA data-centre GPU (Hopper H100, sm_90a) on an x86-64-v3 host",
               "nvidia/nvidia-h100", "cuda", "x86_64",
               host={"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3"},
               cuda_arch="sm_90a", required_cpu_features=("avx2", "fma")),
    ]


@functools.lru_cache(maxsize=None)
def _all_presets() -> dict[str, Preset]:
    presets = [_host_preset(), *_static_presets()]
    return {p.name: p for p in presets}


def preset_names() -> list[str]:
    return list(_all_presets())


def list_presets() -> list[Preset]:
    return list(_all_presets().values())


def get_preset(name: str) -> Preset:
    presets = _all_presets()
    if name not in presets:
        raise TargetError(f"unknown target preset. Known presets: {', '.join(presets)}. {received(target=name)}")
    return presets[name]


# -- what this machine can do ---------------------------------------------------------------------

def _which_any(names) -> str | None:
    for n in names:
        if shutil.which(n):
            return n
    return None


def _tvm_has(global_func: str) -> bool:
    import tvm

    return tvm.get_global_func(global_func, allow_missing=True) is not None


def _llvm_knows(arch: str) -> bool:
    import tvm.target.codegen as codegen

    return arch in set(codegen.llvm_get_targets())


def cuda_gpu_present() -> bool:
    """A CUDA GPU this TVM build can load code onto."""
    if not _tvm_has("ffi.Module.load_from_bytes.cuda"):
        return False
    import tvm

    return bool(tvm.cuda(0).exist)


def _capabilities(p: Preset) -> Capabilities:
    missing: list[str] = []
    limits: list[str] = []
    build = True
    if not _llvm_knows(p.arch):
        build = False
        missing.append(f"TVM's LLVM lacks the {p.arch} backend: install an apache-tvm wheel built with it")
    if p.is_gpu and not _tvm_has(f"target.build.{p.device}"):
        build = False
        missing.append(f"TVM was built without the {p.device} code generator")
    linker = p.linker()
    if shutil.which(linker) is None:
        build = False
        if p.cross_compiler:
            missing.append(f"cross compiler {linker} not found: apt-get install "
                           f"{' '.join(x for x in p.apt_packages if x.startswith('g++'))} (or `make system-deps`)")
        else:
            missing.append(f"C++ compiler {linker} not found: apt-get install g++")

    build_missing = tuple(missing)
    native = p.arch == machine_arch()
    run = native
    if not native:
        limits.append(f"this machine is {machine_arch()}, the preset's code is {p.arch}")
    lacking = sorted(set(p.required_cpu_features) - host_cpu_features()) if native else []
    if lacking:
        run = False
        limits.append(f"this CPU lacks {', '.join(lacking)}")
    if p.is_gpu:
        if not cuda_gpu_present():
            run = False
            if not _tvm_has("ffi.Module.load_from_bytes.cuda"):
                limits.append("this TVM runtime cannot load CUDA code (the PyPI wheel is CPU-only): "
                              "run the bundle on the device")
            else:
                limits.append("no CUDA GPU found")

    emulate = False
    if not native and p.arch == "aarch64" and not p.is_gpu:
        qemu = _which_any(QEMU_AARCH64)
        if qemu is None:
            missing.append("emulator qemu-aarch64-static not found: apt-get install qemu-user-static "
                           "(or `make system-deps`)")
        elif not AARCH64_SYSROOT.is_dir():
            missing.append(f"aarch64 sysroot {AARCH64_SYSROOT} not found: apt-get install g++-aarch64-linux-gnu")
        else:
            emulate = True
    return Capabilities(build=build, run=run, emulate=emulate, missing=tuple(missing), limits=tuple(limits),
                        build_missing=build_missing)
