"""Tuning records applied function by function: a record's schedule replaces the default one
only where it measures faster on this machine.

MetaSchedule measures each candidate alone; here the default schedule and the record's are
timed against each other (``keep_faster``) before the record is used. Where the target cannot
run here the record is trusted: it was measured on the device.
"""
from __future__ import annotations

import functools
import logging

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.s_tir import dlight
from tvm.target import Target

from edgecnn.runtime import timing
from edgecnn.targets.isa import as_target, runs_here

from .relax_helpers import copy_module
from .schedules.cpu.common import rule_of

_LOG = logging.getLogger(__name__)


def prim_func_call(func, target):
    """A zero-argument call of ``func``, compiled alone, on random inputs of its shapes."""
    library = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.random([int(d) for d in p.shape]).astype(str(p.dtype))) for p in func.params]
    return functools.partial(library["main"], *args)


def record_scheduled(tuned: tvm.IRModule) -> list[str]:
    """Functions a tuning record scheduled (scheduled, but by none of our rules)."""
    return [g.name_hint for g, f in tuned.functions_items()
            if isinstance(f, tirx.PrimFunc) and f.attrs and "tirx.is_scheduled" in f.attrs
            and rule_of(f) is None]


def keep_faster(default: tvm.IRModule, tuned: tvm.IRModule, target, names) -> tvm.IRModule:
    """For each function in ``names``, the faster of ``default``'s and ``tuned``'s version,
    timed here with rounds interleaved: the result is never slower than ``default`` (up to
    timing noise). Every other function comes from ``default``."""
    target = as_target(target)
    result = default
    default_names = {g.name_hint for g in default.get_global_vars()}
    for name in names:
        func = tuned[name]
        baseline = default[name] if name in default_names else None
        if not isinstance(baseline, tirx.PrimFunc) or not isinstance(func, tirx.PrimFunc):
            continue
        timings = timing.interleaved({"default": prim_func_call(baseline, target),
                                      "tuned": prim_func_call(func, target)}, rounds=3, calls=5)
        best = {side: min(timing.round_medians(rounds)) for side, rounds in timings.items()}
        if best["tuned"] < best["default"]:
            if result is default:
                result = copy_module(default)
            result[result.get_global_var(name)] = func
            _LOG.info("tuning record kept for %s (%.3g ms < %.3g ms)", name, best["tuned"] * 1e3, best["default"] * 1e3)
    return result


def schedule_with_records(rules: list):
    """``rules`` (dlight schedule rules, first match wins) everywhere; where the current
    MetaSchedule database has a record, the record's schedule replaces the rule's only if it
    is faster on this machine (when the target cannot run here the record is trusted: it was
    measured on the device)."""
    apply_rules = dlight.ApplyDefaultSchedule(*rules)

    @tvm.transform.module_pass(opt_level=0, name="EdgecnnScheduleWithRecords")
    def _pass(mod, _ctx):
        from tvm.s_tir import meta_schedule as ms  # pylint: disable=import-outside-toplevel

        if ms.Database.current() is None:
            return apply_rules(mod)
        # dlight's ApplyDefaultSchedule, called directly, writes the scheduled functions back
        # into the module it is given: each build gets its own copy, or the records (keyed by
        # the unscheduled workloads) would find nothing to match
        tuned = apply_rules(relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(copy_module(mod)))
        default = apply_rules(copy_module(mod))
        target = Target.current(allow_none=True)
        if target is None or not runs_here(target):
            return tuned
        return keep_faster(default, tuned, target, record_scheduled(tuned))

    return _pass
