"""What a built library holds: its runtime modules, and for CUDA presets the kernel source."""
from __future__ import annotations

import re

from .errors import CompileError

_KERNEL_RE = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\(\d+\)\s+)?(\w+)\s*\(")


def imported_modules(library, kind: str) -> list:
    """Runtime modules of ``kind`` (e.g. ``"cuda"``) anywhere in the library's import tree."""
    found, stack = [], [library]
    while stack:
        module = stack.pop()
        if module.kind == kind:
            found.append(module)
        stack.extend(module.imports)
    return found


def cuda_source(library) -> str:
    """The CUDA C source a GPU library carries (compiled on the device when loaded)."""
    modules = imported_modules(library, "cuda")
    if not modules:
        raise CompileError("the library holds no CUDA module")
    return "\n".join(m.inspect_source() for m in modules)


def cuda_kernel_names(source: str) -> set[str]:
    return set(_KERNEL_RE.findall(source))


def cpu_assembly(library) -> str:
    """The assembly of the LLVM (CPU) code a built library holds: the instructions its kernels
    use (``vpdpbusd``, ``sdot``) are read from here by tests and benchmarks."""
    module = getattr(library, "mod", library)  # a Relax executable or a runtime module
    modules = imported_modules(module, "llvm")
    if not modules:
        raise CompileError("the library holds no LLVM module")
    return "\n".join(m.inspect_source("asm") for m in modules)
