"""MetaSchedule tuning with a persistent database, keyed by workload and target.

The database lives in one directory per target (``<root>/<preset>-<hash of the full target>``),
so records tuned for one CPU never leak into another's build; inside it MetaSchedule's JSON
database keys records by the structural hash of each TensorIR workload. Compiling a model
whose tasks were all tuned before therefore applies the records and runs no trial (a task whose
candidates all failed is not retried either: delete its database directory to start again).

Trials are spread over the tasks that lack records in proportion to their weight (how often
the workload runs per inference times its FLOPs), each task tuned on its own so progress can
be shown task by task. Records are appended to the database as they are measured, so Ctrl-C
keeps everything gathered so far; the task it cut short is noted (``interrupted.json``) and
tuned again by the next ``--tune``.

With ``tracker``/``key`` the candidates are built here (cross-compiled for ARM presets, as
shared libraries a board loads without a compiler) and measured on the devices of the pool
through MetaSchedule's RPC runner, one runner worker per device, so the pool measures in
parallel. Which device measured each candidate is logged (``devices.log`` in the database
directory) and summed up in the manifest.

Tuning can only make a bundle faster: when records apply, ``compare_builds`` times the
default and the tuned executables whole, in interleaved rounds on the bundle's own inputs,
and the tuned one is kept only if it is clearly faster (``KEEP_MARGIN``).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm import relax

from edgecnn.runtime import timing
from edgecnn.runtime.errors import EdgeCNNError, InputError, received
from edgecnn.runtime.host import cache_root
from edgecnn.targets import Preset, TargetError

from .pipelines import build, graph_stage
from .records import record_scheduled

# Measurement settings for the local runner: a few repeats, short enough for 2-core machines.
EVALUATOR = {"number": 3, "repeat": 1, "min_repeat_ms": 40, "enable_cpu_cache_flush": False}
RUN_TIMEOUT_S = 60.0

# A tuned build replaces the default one only when the whole model runs at least 2% faster
# (median over rounds of tuned / default): records are measured function by function, alone
# and in their own caches, and in a model such functions ran slower than the defaults they
# replaced (3conv-224 and vgg-small tuned with 48 trials: 1.04-1.08x the default's latency,
# Zen 4, 2026-12-02). Within 2% the two are level on these machines and the default is kept.
KEEP_MARGIN = 0.98
COMPARE_ROUNDS = 8
# timed calls per build per round: enough for about this long, at least 3
COMPARE_ROUND_SECONDS = 0.03


def default_db_root() -> Path:
    return cache_root() / "tuning"


def tuning_target(preset: Preset, cores: int | None = None):
    """The preset's target, with ``num-cores`` set when absent (MetaSchedule sizes its parallel
    loops by it): ``cores``, the measuring device's threads, else this machine's CPUs."""
    from tvm.target import Target

    spec = preset.target_json()
    if spec.get("kind") == "llvm" and (cores or "num-cores" not in spec):
        spec["num-cores"] = cores or os.cpu_count() or 1
    return Target(spec)


def database_dir(root, preset: Preset) -> Path:
    """One directory per target: the preset name (for people) and a hash of the full target (for safety)."""
    key = json.dumps(preset.target_json(), sort_keys=True)
    return Path(root) / f"{preset.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def open_database(directory: Path):
    from tvm.s_tir import meta_schedule as ms

    directory.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(directory), module_equality="structural")


@dataclass
class Task:
    name: str
    weight: int
    flops: float
    extracted: object  # ms ExtractedTask

    @property
    def workload(self):
        return self.extracted.dispatched[0]


def extract_tasks(relax_mod, preset: Preset, target) -> list[Task]:
    """The TensorIR workloads of the fused module, before any schedule."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    with target:
        fused = graph_stage(preset.device, target)(relax_mod)
    tasks = []
    for t in ms.relax_integration.extract_tasks(fused, target):
        if t.mod.attrs is not None and t.mod.attrs.get("tirx.is_scheduled", False):
            continue
        try:
            flops = float(estimate_tir_flops(t.dispatched[0]))
        except Exception:  # data movement only: nothing to count
            flops = 0.0
        if flops == 0.0:
            # layout transforms and reshapes: copies the default rule already runs at memory
            # speed; trials spent there are taken from the convolutions
            continue
        tasks.append(Task(str(t.task_name), int(t.weight), flops, t))
    return tasks


def has_record(database, task: Task, target) -> bool:
    """A measured, valid schedule for this workload exists (it will be applied)."""
    if not database.has_workload(task.workload):
        return False
    return database.query_tuning_record(task.workload, target, task.name) is not None


def was_tuned(database, task: Task) -> bool:
    """The workload has been measured before, even if every candidate failed: it is not tuned again."""
    if not database.has_workload(task.workload):
        return False
    key = database.commit_workload(task.workload).as_json()[0]
    return any(r.workload.as_json()[0] == key for r in database.get_all_tuning_records())


# workloads whose tuning Ctrl-C cut short: their records stay, and the next --tune tunes them again
INTERRUPTED_FILE = "interrupted.json"


def _workload_key(database, task: Task) -> str:
    return database.commit_workload(task.workload).as_json()[0]


def _interrupted(directory: Path) -> set[str]:
    try:
        keys = json.loads((directory / INTERRUPTED_FILE).read_text())
    except (OSError, ValueError):
        return set()
    return {k for k in keys if isinstance(k, str)} if isinstance(keys, list) else set()


def _mark_interrupted(directory: Path, database, task: Task, interrupted: bool) -> None:
    from ..fileio import write_text

    keys = _interrupted(directory)
    key = _workload_key(database, task)
    if (key in keys) == interrupted:
        return
    keys = keys | {key} if interrupted else keys - {key}
    write_text(directory / INTERRUPTED_FILE, json.dumps(sorted(keys)))


def split_budget(trials: int, tasks: list[Task]) -> list[int]:
    """Trials per task, proportional to weight x FLOPs (at least one each while the budget lasts).

    With fewer trials than tasks, the heaviest tasks get one trial each and the rest wait for
    a later compile (their records are still missing then, so they are tuned next time).
    """
    if not tasks or trials <= 0:
        return [0] * len(tasks)
    cost = [max(t.weight * t.flops, 1.0) for t in tasks]
    order = sorted(range(len(tasks)), key=lambda i: -cost[i])
    budget = [0] * len(tasks)
    for i in order[:trials]:
        budget[i] = 1
    left = trials - sum(budget)
    if left > 0:
        total = sum(cost)
        shares = [left * c / total for c in cost]
        for i in range(len(tasks)):
            budget[i] += int(shares[i])
        remainder = trials - sum(budget)
        for i in sorted(order, key=lambda i: -(shares[i] - int(shares[i])))[:remainder]:
            budget[i] += 1
    return budget


class _StopRequest:
    """Ctrl-C during tuning. MetaSchedule's C++ loop swallows a KeyboardInterrupt raised in its
    Python callbacks and carries on, so SIGINT only sets this flag: the builder then fails the
    remaining candidates at once, and the task loop stops after the current task."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop now, whatever MetaSchedule is doing
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _in_process_builder(stop: _StopRequest, export=None):
    """A MetaSchedule builder that compiles candidates in this process.

    MetaSchedule's LocalBuilder starts a fresh worker pool for every batch of candidates, and
    each worker imports TVM first: on a loaded 2-core machine that costs more than the builds.
    Candidates are plain TensorIR functions, so building them here is safe; a failing
    candidate becomes an error result, as in a worker.
    """
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export
    from tvm.ir.utils import derived_object

    export = export or default_export

    @derived_object
    class InProcessBuilder(ms.builder.PyBuilder):
        def build(self, build_inputs):
            results = []
            for item in build_inputs:
                if stop.requested:
                    results.append(ms.builder.BuilderResult(None, "tuning interrupted (Ctrl-C)"))
                    continue
                try:
                    results.append(ms.builder.BuilderResult(export(default_build(item.mod, item.target, None)), None))
                except Exception as exc:  # a candidate that does not compile is a failed trial
                    results.append(ms.builder.BuilderResult(None, f"{type(exc).__name__}: {exc}"))
            return results

    return InProcessBuilder()


def _shared_library_export(preset: Preset):
    """Candidates as shared libraries linked here with the preset's linker (the cross compiler
    for ARM): a board loads them with TVM's runtime alone, where MetaSchedule's default (a tar
    of object files) would need a compiler on the board."""
    import tempfile

    from tvm.support import cc

    def export(module) -> str:
        path = os.path.join(tempfile.mkdtemp(prefix="edgecnn-candidate-"), "candidate.so")
        module.export_library(path, fcompile=cc.cross_compiler(preset.linker()))
        return path

    return export


def _progress_callback(say, total: int, pool_status=None):
    """A MetaSchedule measure callback that reports, after each batch of candidates, the task's
    trials so far, its best time, and with a pool how many devices are busy."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.ir.utils import derived_object

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        def __init__(self):
            super().__init__()
            self.trials = 0
            self.failed = 0
            self.best = float("inf")

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            for result in runner_results:
                self.trials += 1
                if result.error_msg is not None or not result.run_secs:
                    self.failed += 1
                    if self.failed == 1:  # one line, so that a broken device or pool is visible at once
                        lines = [x for x in str(result.error_msg).strip().splitlines() if x.strip()]
                        say(f"  a candidate failed: {lines[-1][:300] if lines else 'no error message'}")
                    continue
                seconds = sum(float(t) for t in result.run_secs) / len(result.run_secs)
                self.best = min(self.best, seconds)
            best = f"best {self.best * 1e3:.4g} ms" if self.best < float("inf") else "no valid candidate yet"
            failed = f", {self.failed} failed" if self.failed else ""
            busy = ""
            if pool_status is not None:
                busy = f", devices busy {pool_status()}"
            say(f"  trials {self.trials}/{total}{failed}, {best}{busy}")

    return Progress()


def _pool_runner(tracker: str, key: str, workers: int, log_path: Path):
    """MetaSchedule's RPC runner on ``key``'s pool, one worker per device; each session is
    requested through edgecnn's tracker client, which bounds the wait and logs the device."""
    from tvm.s_tir import meta_schedule as ms

    from edgecnn.runtime.fleet import measuring_arguments, measuring_session
    from edgecnn.runtime.rpc import parse_address

    host, port = parse_address(tracker, flag="--tracker")
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                 session_timeout_sec=int(RUN_TIMEOUT_S))
    return ms.runner.RPCRunner(config, evaluator_config=ms.runner.EvaluatorConfig(**EVALUATOR),
                               f_create_session=functools.partial(measuring_session, str(log_path), RUN_TIMEOUT_S),
                               f_alloc_argument=measuring_arguments,
                               max_workers=workers)


def devices_used(log_path: Path, since: int = 0) -> dict[str, int]:
    """Candidates measured per device, from the lines of ``devices.log`` after the first ``since``."""
    if not log_path.exists():
        return {}
    counts: dict[str, int] = {}
    for line in log_path.read_text().splitlines()[since:]:
        if line.strip():
            counts[line.strip()] = counts.get(line.strip(), 0) + 1
    return dict(sorted(counts.items()))


def _search_strategy(trials: int):
    """Evolutionary search sized to the budget: the defaults (population 512, 4 generations) cost
    tens of seconds per task on 2 cores before the first candidate is measured."""
    from tvm.s_tir import meta_schedule as ms

    population = max(32, min(512, 16 * trials))
    return ms.search_strategy.EvolutionarySearch(
        population_size=population, init_min_unmeasured=min(50, population // 2),
        genetic_num_iters=1 if trials < 32 else 4)


def _tune_one(task: Task, trials: int, target, database, work_dir: Path, builder, runner, progress) -> None:
    from tvm.s_tir import meta_schedule as ms

    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        [task.extracted], work_dir=str(work_dir), strategy=_search_strategy(trials),
        num_threads=os.cpu_count() or 1)
    if not contexts:
        return
    ms.tune.tune_tasks(
        tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=trials,
        max_trials_per_task=trials, num_trials_per_iter=max(1, min(trials, 16)), builder=builder,
        runner=runner, database=database, task_scheduler="round-robin",
        measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), progress])


def prepare(relax_mod, preset: Preset, *, trials: int, db_root=None, log=None, tracker: str | None = None,
            key: str | None = None):
    """Tune what lacks records (``trials`` > 0) and return (database, manifest ``tuning`` entry).

    With ``tracker`` and ``key`` the candidates are measured on that pool's devices."""
    say = log or (lambda msg: None)
    if trials < 0:
        raise InputError(f"the number of tuning trials must be >= 0. {received(trials=trials)}")
    if bool(tracker) != bool(key):
        raise InputError(f"--tracker and --key go together. {received(tracker=tracker, key=key)}")
    caps = preset.capabilities()
    if trials > 0 and not caps.run and not tracker:
        raise TargetError(f"tuning measures candidates on the device, and preset '{preset.name}' cannot run on "
                          f"this machine ({'; '.join(caps.limits + caps.missing)}); compile without --tune, "
                          f"or tune on a pool of such devices with --tracker HOST:PORT --key KEY")
    target = tuning_target(preset)
    directory = database_dir(db_root or default_db_root(), preset)
    database = open_database(directory)
    tasks = extract_tasks(relax_mod, preset, target)
    cut_short = _interrupted(directory)
    tuned_before = [was_tuned(database, t) for t in tasks]
    resumed = [t for t, tuned in zip(tasks, tuned_before) if tuned and _workload_key(database, t) in cut_short]
    todo = [t for t, tuned in zip(tasks, tuned_before) if not tuned] + resumed
    if tracker and trials > 0 and todo:
        from edgecnn.runtime.fleet import pool_threads

        # candidates' parallel loops are sized for the board that runs them, not for this machine
        cores = pool_threads(tracker, key)
        say(f"the pool's devices run {cores} thread(s) each: candidates are parallelised for that")
        if cores != int(target.attrs.get("num-cores", 0) or 0):
            # the same workloads (num-cores does not change them), in tasks that carry the board's target
            target = tuning_target(preset, cores)
            names = {t.name for t in todo}
            todo = [t for t in extract_tasks(relax_mod, preset, target) if t.name in names]
    again = f" ({len(resumed)} interrupted by Ctrl-C, tuned again)" if resumed else ""
    say(f"tuning database {directory}: {len(tasks) - len(todo)} of {len(tasks)} task(s) tuned before{again}")
    before = len(database)
    log_path = directory / "devices.log"
    logged_before = len(log_path.read_text().splitlines()) if log_path.exists() else 0
    if trials > 0 and todo:
        budget = split_budget(trials, todo)
        start = time.perf_counter()
        runner, export, pool_status = _runner(preset, tracker, key, log_path, say)
        try:
            # MetaSchedule prints progress tables; keep stdout for the command's own output.
            with _StopRequest() as stop, contextlib.redirect_stdout(sys.stderr):
                builder = _in_process_builder(stop, export)
                for n, (task, count) in enumerate(zip(todo, budget), start=1):
                    if stop.requested:
                        break
                    if count == 0:
                        continue
                    say(f"tuning task {n}/{len(todo)} {task.name} (weight {task.weight}, {task.flops:.3g} FLOP, "
                        f"{count} trial(s); {time.perf_counter() - start:.0f} s so far)")
                    progress = _progress_callback(say, count, pool_status)
                    try:
                        _tune_one(task, count, target, database, directory / "logs", builder, runner, progress)
                    except KeyboardInterrupt:  # a second Ctrl-C
                        _mark_interrupted(directory, database, task, True)
                        raise
                    _mark_interrupted(directory, database, task, stop.requested)
            if stop.requested:
                say(f"tuning interrupted: the {len(database) - before} record(s) measured so far are kept in {directory}; "
                    f"the next --tune tunes the interrupted task again")
                raise KeyboardInterrupt
        finally:
            # its worker process would otherwise live until garbage collection (or, held by a
            # traceback's frame, longer)
            runner.pool.shutdown()
    with_records = sum(has_record(database, t, target) for t in tasks)
    info = {"applied": with_records > 0, "records": with_records, "trials": len(database) - before}
    if tracker:
        used = devices_used(log_path, logged_before)
        info["measured_on"] = {"tracker": tracker, "key": key, "devices": used}
        if used:
            say(f"candidates measured on {len(used)} device(s): "
                + ", ".join(f"{address} ({n})" for address, n in used.items()))
    return database, info


def _runner(preset: Preset, tracker: str | None, key: str | None, log_path: Path, say):
    """(runner, candidate export, pool status for progress lines or None): local, or the pool's."""
    from tvm.s_tir import meta_schedule as ms

    if not tracker:
        # One runner for all tasks: its worker processes import TVM once, which alone can exceed
        # MetaSchedule's default timeouts on a loaded 2-core machine.
        runner = ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S,
                                       evaluator_config=ms.runner.EvaluatorConfig(**EVALUATOR))
        return runner, None, None
    from edgecnn.runtime.fleet import Tracker

    with Tracker(tracker) as client:
        pool = client.pool(key)
    say(f"measuring on the pool '{key}' at {tracker}: {pool.total} device(s) ({', '.join(pool.servers)})")

    def pool_status() -> str:
        try:
            with Tracker(tracker) as client:
                now = client.pool(key)
            return f"{now.busy}/{now.total}"
        except EdgeCNNError as exc:  # the progress line must not end the tuning run
            return f"unknown ({exc})"

    return _pool_runner(tracker, key, pool.total, log_path), _shared_library_export(preset), pool_status


def compare_builds(builds: dict, feeds: dict, *, rounds: int = COMPARE_ROUNDS) -> dict[str, float]:
    """Each build's latency over the first one's (``timing.ratios_to``: median over rounds of
    the per-round median ratio), timed whole on ``feeds`` in this process.

    ``builds`` maps names to compiled Relax executables; they are timed by the project's one
    harness (``edgecnn.runtime.timing.interleaved``), as ``edgecnn bench --compare`` times its
    peers: order alternating, each block settled and warmed up, at least 3 calls a block.
    """
    runs = {}
    for name, executable in builds.items():
        main = relax.VirtualMachine(executable, tvm.cpu())["main"]
        runs[name] = functools.partial(main, *[tvm.runtime.tensor(v) for v in feeds.values()])
    timings = timing.interleaved(runs, rounds=rounds, calls=3, round_seconds=COMPARE_ROUND_SECONDS)
    return timing.ratios_to(timings, next(iter(builds)))


def build_with_records(relax_mod, preset: Preset, database, feeds: dict, *, log=None):
    """Build with ``database``'s tuning records and keep the result only if it is faster.

    Where records changed the module and the preset runs on this machine, the default build is
    made too and both are timed whole on ``feeds`` (``compare_builds``); the tuned one
    is returned only if it beats the default by ``KEEP_MARGIN``, so tuning never makes
    a bundle slower. Where the preset cannot run here the records are trusted (they were
    measured on the device). Returns (executable, lowered, verdict); the verdict holds the
    manifest's ``kept`` ("tuned" or "default") and ``tuned_over_default`` (None: not timed).
    """
    say = log or (lambda msg: None)
    tuned_executable, tuned_lowered = build(relax_mod, preset, database=database)
    if preset.device == "cpu" and not record_scheduled(tuned_lowered):
        return tuned_executable, tuned_lowered, {"kept": "default", "tuned_over_default": None}
    if preset.device != "cpu" or not preset.capabilities().run:
        return tuned_executable, tuned_lowered, {"kept": "tuned", "tuned_over_default": None}
    say("timing the tuned build against the default one")
    default_executable, default_lowered = build(relax_mod, preset)
    ratio = compare_builds({"default": default_executable, "tuned": tuned_executable}, feeds)["tuned"]
    if ratio <= KEEP_MARGIN:
        say(f"tuned build kept: {ratio:.3f}x the default's latency")
        return tuned_executable, tuned_lowered, {"kept": "tuned", "tuned_over_default": round(ratio, 4)}
    say(f"tuned build dropped: {ratio:.3f}x the default's latency (kept only at <= {KEEP_MARGIN})")
    return default_executable, default_lowered, {"kept": "default", "tuned_over_default": round(ratio, 4)}
