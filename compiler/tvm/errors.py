"""The compile path's own error, and how TVM's multi-line failures become one line of it."""
import re

from edgecnn.runtime.errors import EdgeCNNError


class CompileError(EdgeCNNError):
    """A model TVM cannot import or compile for the preset, named with the reason."""


def first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


# TVM's errors end in the check that failed and name the function or op it was in.
_TVM_NAMES = re.compile(r"\b(fused_\w+|relax\.[\w.]+|R\.[\w.]+)")


def tvm_failure(stage: str, preset_name: str | None, exc: Exception) -> CompileError:
    """One line for a TVM failure in ``stage`` ("tvm.compile", "the CPU pipeline", ...): a compiler
    limitation, with the function or op TVM names and the check that failed."""
    text = str(exc)
    # the first line says what failed; IR dumps and "# Metadata omitted" notes follow it
    lines = [line.strip() for line in text.strip().splitlines()
             if line.strip() and not line.strip().startswith(("#", "File ", "Traceback"))]
    check = next((line for line in lines if "Check failed" in line), lines[0] if lines else "")
    names = sorted(set(_TVM_NAMES.findall(text)))[:4]
    where = f" in {', '.join(names)}" if names else ""
    for_preset = f" for preset '{preset_name}'" if preset_name else ""
    return CompileError(f"{stage} failed{for_preset}{where}: {type(exc).__name__}: {check} "
                        f"(a limitation of the compiler, not an error in the model)")
