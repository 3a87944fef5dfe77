"""Vector widths: what a target's code uses and what this CPU runs.

The compiler sizes its blocked layouts and register tiles from ``vector_lanes(target)``; where
it times two schedules against each other it first asks ``runs_here(target)``. Host features
come from ``presets.host_cpu_features`` (``/proc/cpuinfo``), the one place that reads them.
"""
from __future__ import annotations

from edgecnn.runtime.host import host_arch

from .presets import host_cpu_features

# CPU names whose widest vector unit is AVX-512 or AVX2, for targets LLVM cannot describe here.
_AVX512_CPUS = ("skylake-avx512", "cascadelake", "cooperlake", "icelake", "tigerlake",
                "sapphirerapids", "emeraldrapids", "graniterapids", "rocketlake",
                "cannonlake", "znver4", "znver5", "x86-64-v4", "knl", "knm")
_AVX2_CPUS = ("haswell", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake",
              "znver1", "znver2", "znver3", "x86-64-v3", "core-avx2", "arrowlake", "lunarlake")


def as_target(target):
    """A ``tvm.target.Target`` from a Target, a JSON dict or a tag."""
    from tvm.target import Target

    return target if isinstance(target, Target) else Target(target)


def vector_lanes(target) -> int:
    """fp32 lanes of the target's widest vector unit: 16 (AVX-512), 8 (AVX2), 4 (NEON, SSE)."""
    from tvm.target import codegen

    target = as_target(target)
    attrs = target.attrs
    mcpu = str(attrs.get("mcpu", "") or "").lower()
    mattr = [str(a).lower() for a in (attrs.get("mattr", None) or [])]
    mtriple = str(attrs.get("mtriple", "") or "").lower()
    if mtriple.startswith(("aarch64", "arm")) or "+neon" in mattr:
        return 4
    try:  # LLVM's own view of the mcpu/mattr pair: covers every CPU name it knows
        features = {str(f) for f in codegen.llvm_get_cpu_features(target)}
    except Exception:  # pylint: disable=broad-except
        features = set()
    if "avx512f" in features or "+avx512f" in mattr or any(mcpu.startswith(c) for c in _AVX512_CPUS):
        return 16
    if "avx2" in features or "+avx2" in mattr or any(mcpu.startswith(c) for c in _AVX2_CPUS):
        return 8
    return 4


def target_features(target) -> frozenset[str]:
    """The LLVM features ``target`` turns on (its mcpu's and its mattr's), e.g. "avx512vnni"."""
    from tvm.target import codegen

    target = as_target(target)
    try:
        features = {str(f) for f in codegen.llvm_get_cpu_features(target)}
    except Exception:  # pylint: disable=broad-except  # not an LLVM target, or an unknown CPU
        features = set()
    for attr in target.attrs.get("mattr", None) or []:
        attr = str(attr)
        if attr.startswith("+"):
            features.add(attr[1:])
        elif attr.startswith("-"):
            features.discard(attr[1:])
    return frozenset(features)


def has_vnni(target) -> bool:
    """Whether ``target``'s code may use AVX-512 VNNI (``vpdpbusd`` on 512- and 256-bit registers)."""
    return target is not None and {"avx512vnni", "avx512bw", "avx512vl"} <= target_features(target)


def is_aarch64(target) -> bool:
    return target is not None and str(as_target(target).attrs.get("mtriple", "") or "").startswith("aarch64")


def has_arm_dot_product(target) -> bool:
    """Whether ``target``'s code may use ARMv8.2's dot product (``sdot``; ``+dotprod``)."""
    return is_aarch64(target) and "dotprod" in target_features(target)


def host_vector_lanes() -> int:
    """fp32 lanes this machine's CPU offers."""
    features = host_cpu_features()
    if "avx512f" in features:
        return 16
    if "avx2" in features:
        return 8
    return 4


def runs_here(target) -> bool:
    """Whether code for ``target`` runs on this machine (so two schedules can be timed here)."""
    target = as_target(target)
    triple = str(target.attrs.get("mtriple", "") or "")
    if triple and not triple.startswith(host_arch()):
        return False
    return host_vector_lanes() >= vector_lanes(target)
