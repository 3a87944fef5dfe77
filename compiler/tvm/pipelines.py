"""One Relax pipeline per device kind, and ``build``: a legalized module -> the preset's
pipeline -> ``tvm.compile``.

Each pipeline is a graph stage (legalized and fused, nothing scheduled: where tuning tasks
are extracted from, so records are keyed by the very functions they are applied to) followed
by schedules. Tuning records in the current MetaSchedule database are applied inside the
schedule step.
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.s_tir import dlight

from edgecnn.runtime.errors import EdgeCNNError
from edgecnn.targets import Preset
from edgecnn.targets.isa import as_target, vector_lanes

from .errors import CompileError, tvm_failure
from .records import schedule_with_records
from .relax_helpers import prim_funcs
from .schedules.cpu import channel_block, layout_passes, schedule_rules


def cpu_graph_stage(target) -> list:
    """Blocked layouts, edgecnn's legalization, constant folding and fusion."""
    return layout_passes(channel_block(as_target(target)))


def cpu_pipeline(target):
    """The Relax pass sequence for CPU presets (x86-64 and aarch64): edgecnn's schedule rules."""
    target = as_target(target)
    rules = schedule_rules(vector_lanes(target))
    return tvm.transform.Sequential([*cpu_graph_stage(target), schedule_with_records(rules)],
                                    name="edgecnn_cpu_pipeline")


def gpu_graph_stage(target) -> list:  # pylint: disable=unused-argument
    return [relax.get_pipeline("zero")]


def gpu_pipeline(target):
    """The Relax pass sequence for CUDA presets: dlight's GPU rules, ending in Fallback.

    Without a GPU schedule a function would silently stay on the host CPU; Fallback gives
    every remaining function a thread binding, and :func:`check_gpu_scheduled` makes sure.
    """
    rules = dlight.ApplyDefaultSchedule(
        dlight.gpu.Matmul(), dlight.gpu.GEMV(), dlight.gpu.Reduction(), dlight.gpu.GeneralReduction(),
        dlight.gpu.Fallback(),
    )
    return tvm.transform.Sequential([*gpu_graph_stage(target), rules], name="edgecnn_gpu_pipeline")


PIPELINES = {"cpu": cpu_pipeline, "cuda": gpu_pipeline}
GRAPH_STAGES = {"cpu": cpu_graph_stage, "cuda": gpu_graph_stage}


def graph_stage(device: str, target):
    """The graph stage of ``device``'s pipeline ("cpu" or "cuda") as one pass."""
    return tvm.transform.Sequential(GRAPH_STAGES[device](target), name="edgecnn_graph_stage")


def lower(relax_mod, target, device: str = "cpu", *, database=None):
    """``relax_mod`` (from ``frontend.to_relax``) through ``device``'s pipeline under ``target``,
    applying ``database``'s records: the scheduled module ``tvm.compile`` takes."""
    target = as_target(target)
    pipeline = PIPELINES[device](target)
    with target:
        if database is None:
            return pipeline(relax_mod)
        with database:
            return pipeline(relax_mod)


def check_gpu_scheduled(mod, preset: Preset) -> None:
    """Every TensorIR function is bound to GPU threads, or a CompileError names those that are not."""
    left = sorted(name for name, f in prim_funcs(mod).items() if "T.thread_binding(" not in f.script())
    if left:
        raise CompileError(
            f"preset '{preset.name}': {len(left)} function(s) have no GPU schedule and would run on the "
            f"host CPU: {', '.join(left[:8])}{' ...' if len(left) > 8 else ''}")


def compile_lowered(lowered, target, preset_name: str):
    """``tvm.compile`` of a lowered module; a failure is one CompileError line."""
    try:
        return tvm.compile(lowered, target=as_target(target))
    except Exception as exc:  # TVM raises its own error types, with multi-line dumps
        raise tvm_failure("tvm.compile", preset_name, exc) from None


def build(relax_mod, preset: Preset, *, database=None):
    """Run the preset's pipeline (applying ``database`` records) and compile the result.

    Returns (executable, lowered module). This is what ``edgecnn compile`` runs.
    """
    target = preset.target()
    try:
        lowered = lower(relax_mod, target, preset.device, database=database)
    except EdgeCNNError:
        raise
    except Exception as exc:  # an InternalError deep in a pass, with TVM's whole stack dump
        raise tvm_failure(f"the {preset.device} pipeline", preset.name, exc) from None
    if preset.is_gpu:
        check_gpu_scheduled(lowered, preset)
    return compile_lowered(lowered, target, preset.name), lowered
