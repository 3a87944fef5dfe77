"""The one timing harness: peers timed in interleaved rounds, each block settled and warmed up.

Everything in edgecnn that says "A is x times as fast as B" measures through :func:`interleaved`:
``edgecnn bench --compare``, the tuned-versus-default verdict of ``edgecnn compile --tune``, the
per-function choice between a tuning record and the default schedule, and every script in
``bench/`` that compares peers. A peer is a zero-argument callable making one call; the harness times each call
with ``time.perf_counter`` (a peer that runs on a device waits for it inside the call:
``Bundle.prepared_call`` does).

How a comparison runs, and what each step is for (measured on the 2-vCPU VMs this project is
developed on; the README's benchmark tables rest on it):

1. Calibration: each peer is called ``warmup`` times, then timed for a few calls; the fastest
   sets how many calls fill its warm-up and its round.
2. ``rounds`` rounds; in each, every peer runs one block in turn: a pause (:func:`settle`),
   untimed calls for about ``warm_seconds``, then its timed calls.
   - The pause: TVM's idle pool workers busy-wait for about 150 ms after a run, and other
     runtimes' pools for shorter; a peer timed right after shares its cores with them
     (squeezenet in onnxruntime: 3.6 ms alone, 11-15 ms 50 ms after a TVM run).
   - The warm-up: after the pause the first milliseconds of calls run up to 2x slow (idle vCPUs
     and sleeping workers waking up; vgg-small 0.95, 0.64, 0.56, 0.42 ms, then 0.35 ms).
   - A fast peer makes as many timed calls as fill about ``round_seconds`` (at least
     ``calls``): with 6 calls of resnet8 (0.2 ms) a round, its ratio to onnxruntime over 8
     rounds ranged 0.69-1.26 within one process; with about 100 calls, 0.99-1.13.
3. Odd rounds run the peers in reverse order: a peer timed second in a round ran 3-7% faster
   than an identical one timed first (two copies of one module).

The result keeps the rounds apart (per peer, per round, the seconds of each timed call), because
the fair ratio is :func:`paired_ratio`, which compares peers within a round: on these VMs both
peers of a round run 2x slower for seconds at a time (a vCPU's sibling busy), and a ratio of
whole-run medians swings with how those stretches fell (0.5-2x for one model).

Imports only the standard library.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Mapping, Sequence

SETTLE_SECONDS = 0.25
WARM_SECONDS = 0.02
ROUND_SECONDS = 0.02
# A bound on the calls of one block, for peers so fast the clock barely sees them.
MAX_CALLS = 10_000
# Calibration times at most this many calls of a peer (fewer once they took WARM_SECONDS).
CALIBRATION_CALLS = 3

Peer = Callable[[], object]
#: per round, the seconds of each timed call
Rounds = list[list[float]]


def settle(seconds: float = SETTLE_SECONDS) -> None:
    """Wait until the previous block's spinning threads have gone to sleep."""
    if seconds > 0:
        time.sleep(seconds)


def warmup_calls(seconds_per_call: float, minimum: int = 1, seconds: float = WARM_SECONDS) -> int:
    """Untimed calls that keep a runtime busy for about ``seconds`` after a settle pause."""
    if seconds_per_call <= 0:
        return max(minimum, 1)
    return max(minimum, min(MAX_CALLS, math.ceil(seconds / seconds_per_call)))


def time_calls(fn: Peer, calls: int) -> list[float]:
    """Seconds of each of ``calls`` consecutive calls of ``fn``."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def per_call_seconds(fn: Peer, *, warmup: int = 1, warm_seconds: float = WARM_SECONDS) -> float:
    """The fastest of a few timed calls after ``warmup`` untimed ones (the first call of a peer
    often allocates or loads code); stops early once the timed calls took ``warm_seconds``, so
    a slow peer costs one call."""
    for _ in range(warmup):
        fn()
    best, spent = math.inf, 0.0
    for _ in range(CALIBRATION_CALLS):
        (seconds,) = time_calls(fn, 1)
        best, spent = min(best, seconds), spent + seconds
        if spent >= warm_seconds:
            break
    return best


def _timed_calls(at_least: int, seconds_per_call: float, round_seconds: float) -> int:
    if round_seconds <= 0 or seconds_per_call <= 0:
        return at_least
    return max(at_least, min(MAX_CALLS, math.ceil(round_seconds / seconds_per_call)))


def interleaved(peers: Mapping[str, Peer], *, rounds: int, calls: int | Sequence[int] = 1,
                round_seconds: float = ROUND_SECONDS, warmup: int = 1,
                settle_seconds: float = SETTLE_SECONDS, warm_seconds: float = WARM_SECONDS,
                progress: Callable[[int, str, list[float]], None] | None = None) -> dict[str, Rounds]:
    """Time ``peers`` (name -> zero-argument callable) in ``rounds`` interleaved rounds.

    Returns, in the order of ``peers``, per peer one list per round of the seconds of each timed
    call. ``calls`` is the least number of timed calls of a block, or one exact count per round
    (with ``round_seconds=0`` the counts are exact: ``edgecnn bench --repeat N`` spreads N calls
    over its rounds). ``round_seconds`` fills a fast peer's block; ``warmup`` untimed calls
    precede calibration; ``settle_seconds=0`` drops the pause (a profile that wants the cores
    hot, as inside a model); ``warm_seconds=0`` drops the per-block warm-up. ``progress`` is
    called after each block with the round, the peer's name and the block's seconds. An
    exception from a peer propagates at once.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    per_round = [calls] * rounds if isinstance(calls, int) else list(calls)
    if len(per_round) != rounds or any(c < 1 for c in per_round):
        raise ValueError(f"calls must be at least 1 per round for {rounds} rounds, got {calls!r}")
    order = list(peers)
    estimate = {name: per_call_seconds(peers[name], warmup=warmup, warm_seconds=warm_seconds) for name in order}
    warm = {name: warmup_calls(estimate[name], seconds=warm_seconds) if warm_seconds > 0 else 0 for name in order}
    result: dict[str, Rounds] = {name: [] for name in order}
    for index in range(rounds):
        for name in (order if index % 2 == 0 else order[::-1]):
            fn = peers[name]
            settle(settle_seconds)
            for _ in range(warm[name]):
                fn()
            block = time_calls(fn, _timed_calls(per_round[index], estimate[name], round_seconds))
            result[name].append(block)
            if progress is not None:
                progress(index, name, block)
    return result


def flatten(rounds: Rounds) -> list[float]:
    """All timed calls of a peer, rounds one after another (for percentiles over the whole run)."""
    return [seconds for block in rounds for seconds in block]


def round_medians(rounds: Rounds) -> list[float]:
    """The median call of each round."""
    return [statistics.median(block) for block in rounds]


def paired_ratio(peer: Rounds, reference: Rounds) -> float:
    """Median over rounds of the peer's median call over the reference's in the same round:
    below 1, the peer is faster."""
    if len(peer) != len(reference) or not peer:
        raise ValueError(f"paired_ratio needs the same rounds on both sides, got {len(peer)} and {len(reference)}")
    return statistics.median(a / b for a, b in zip(round_medians(peer), round_medians(reference)))


def ratios_to(timings: Mapping[str, Rounds], reference: str) -> dict[str, float]:
    """:func:`paired_ratio` of every peer of one :func:`interleaved` run to ``reference`` (itself 1.0)."""
    return {name: 1.0 if name == reference else paired_ratio(rounds, timings[reference])
            for name, rounds in timings.items()}
