"""Target presets: name -> TVM target, cross compiler, device kind and what this machine can do."""
from .presets import (
    Capabilities,
    Preset,
    TargetError,
    get_preset,
    host_cpu_features,
    host_llvm_target,
    list_presets,
    machine_arch,
    preset_names,
)

__all__ = [
    "Capabilities",
    "Preset",
    "TargetError",
    "get_preset",
    "host_cpu_features",
    "host_llvm_target",
    "list_presets",
    "machine_arch",
    "preset_names",
]
