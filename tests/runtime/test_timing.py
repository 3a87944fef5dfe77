"""runtime/timing.py: the interleaved harness, on a fake clock (no assertion on real speed)."""
import pytest

from edgecnn.runtime import timing


class FakeTime:
    """Stands in for the ``time`` module inside timing.py: the clock moves only when a peer
    "runs" (by the seconds it declares) or when the harness sleeps."""

    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def perf_counter(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(timing, "time", fake)
    return fake


def peer(clock, name, seconds, log):
    """A peer taking ``seconds`` per call (a number, or a function of the call's index) that
    records its name in ``log`` at each call."""
    calls = [0]

    def call():
        log.append(name)
        clock.now += seconds(calls[0]) if callable(seconds) else seconds
        calls[0] += 1

    return call


def blocks(log):
    """Runs of the same name in a call log: [(name, length), ...]."""
    runs = []
    for name in log:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    return [tuple(r) for r in runs]


# Durations are powers of two, so the fake clock's sums and differences are exact.
U = 2.0 ** -10  # about 1 ms


def test_rounds_alternate_which_peer_goes_first(clock):
    log = []
    result = timing.interleaved({"a": peer(clock, "a", U, log), "b": peer(clock, "b", U, log)},
                                rounds=4, calls=2, round_seconds=0, warm_seconds=0, warmup=0)
    # calibration times one call of each (warm_seconds=0 ends it at once), then the blocks:
    # a b | b a | a b | b a, two calls each
    assert log[:2] == ["a", "b"]
    assert blocks(log[2:]) == [("a", 2), ("b", 4), ("a", 4), ("b", 4), ("a", 2)]
    assert [len(r) for r in result["a"]] == [2, 2, 2, 2]


def test_every_block_settles_first_and_warms_up(clock):
    log = []
    timing.interleaved({"a": peer(clock, "a", 4 * U, log)}, rounds=3, calls=2, round_seconds=0, warmup=0)
    assert clock.sleeps == [timing.SETTLE_SECONDS] * 3
    # calibration: 3 timed calls (12 U < 20 ms); each round ceil(20 ms / 4 U) = 6 warm-up calls, then 2
    assert len(log) == 3 + 3 * (6 + 2)


def test_settle_seconds_zero_sleeps_never(clock):
    timing.interleaved({"a": peer(clock, "a", U, [])}, rounds=2, settle_seconds=0)
    assert clock.sleeps == []


def test_a_fast_peer_makes_as_many_calls_as_fill_the_round(clock):
    result = timing.interleaved({"fast": peer(clock, "fast", U / 8, []), "slow": peer(clock, "slow", 64 * U, [])},
                                rounds=2, calls=6, round_seconds=0.02)
    assert [len(r) for r in result["fast"]] == [164, 164]  # ceil(20 ms / (U / 8))
    assert [len(r) for r in result["slow"]] == [6, 6]  # never fewer than `calls`


def test_exact_counts_per_round_with_round_seconds_zero(clock):
    result = timing.interleaved({"a": peer(clock, "a", U / 8, [])}, rounds=3, calls=[3, 2, 2], round_seconds=0)
    assert [len(r) for r in result["a"]] == [3, 2, 2]
    with pytest.raises(ValueError):
        timing.interleaved({"a": peer(clock, "a", U, [])}, rounds=2, calls=[3, 2, 2])
    with pytest.raises(ValueError):
        timing.interleaved({"a": peer(clock, "a", U, [])}, rounds=0)


def test_result_keeps_rounds_apart_in_peer_order_with_each_calls_seconds(clock):
    # b's calls 0 (warm-up) and 1 (calibration) take U, then each round's two calls take
    # U, 2 U, 3 U: the machine slowing down round by round
    b = peer(clock, "b", lambda i: U * (1 + max(0, (i - 2) // 2)), [])
    result = timing.interleaved({"b": b, "a": peer(clock, "a", U, [])}, rounds=3, calls=2,
                                round_seconds=0, warm_seconds=0, warmup=1)
    assert list(result) == ["b", "a"]
    assert result["a"] == [[U, U]] * 3
    assert result["b"] == [[U, U], [2 * U, 2 * U], [3 * U, 3 * U]]
    assert timing.flatten(result["b"]) == [U, U, 2 * U, 2 * U, 3 * U, 3 * U]
    assert timing.paired_ratio(result["b"], result["a"]) == 2.0


def test_progress_reports_each_block(clock):
    seen = []
    timing.interleaved({"a": peer(clock, "a", 8 * U, []), "b": peer(clock, "b", 8 * U, [])}, rounds=2, calls=1,
                       progress=lambda r, name, block: seen.append((r, name, len(block))))
    # 8 U per call: ceil(20 ms / 8 U) = 3 calls fill a round
    assert seen == [(0, "a", 3), (0, "b", 3), (1, "b", 3), (1, "a", 3)]


def test_a_peer_that_raises_stops_the_run(clock):
    log = []

    def broken():
        log.append("broken")
        if len(log) == 4:
            raise RuntimeError("peer failed")

    with pytest.raises(RuntimeError, match="peer failed"):
        timing.interleaved({"ok": peer(clock, "ok", U, []), "broken": broken}, rounds=3, warm_seconds=0)
    # warm-up, calibration, round 0, then round 1 (broken goes first) raised: nothing after
    assert len(log) == 4


def test_paired_ratio_compares_within_rounds():
    import statistics

    # the machine runs at half speed in round 2: both peers slow down together, b stays 2x a
    a = [[1.0, 1.0, 9.0], [2.0, 2.0], [1.0]]
    b = [[2.0, 2.0], [4.0, 4.0, 4.0], [2.0, 0.1, 2.0]]
    assert timing.round_medians(a) == [1.0, 2.0, 1.0]
    assert timing.paired_ratio(b, a) == 2.0
    assert timing.paired_ratio(a, b) == 0.5
    # which whole-run medians do not see
    assert statistics.median(timing.flatten(b)) / statistics.median(timing.flatten(a)) != 2.0


def test_paired_ratio_takes_the_median_over_rounds():
    ref = [[1.0]] * 5
    assert timing.paired_ratio([[0.5], [3.0], [1.0], [1.2], [0.9]], ref) == 1.0
    with pytest.raises(ValueError):
        timing.paired_ratio([[1.0]], [[1.0], [1.0]])


def test_ratios_to_the_reference():
    timings = {"default": [[2.0], [4.0]], "tuned": [[1.0], [2.0]], "worse": [[6.0], [12.0]]}
    assert timing.ratios_to(timings, "default") == {"default": 1.0, "tuned": 0.5, "worse": 3.0}


@pytest.mark.parametrize("seconds_per_call, calls", [(0.001, 20), (0.003, 7), (0.5, 1), (0.0, 1), (1e-9, 10_000)])
def test_warmup_calls_fill_about_twenty_milliseconds(seconds_per_call, calls):
    assert timing.warmup_calls(seconds_per_call) == calls


def test_a_local_bundle_times_the_call_the_harness_gets(monkeypatch, clock):
    from edgecnn.runtime.bundle import LocalExecutor

    # LocalExecutor.time loops over its own prepared_call, so `edgecnn bench` alone and
    # `edgecnn bench --compare` (the harness) time the same call
    calls = []
    monkeypatch.setattr(LocalExecutor, "prepared_call", lambda self, arrays: lambda: calls.append(arrays))
    executor = LocalExecutor.__new__(LocalExecutor)
    assert len(executor.time(["x"], repeat=4, warmup=2)) == 4 and calls == [["x"]] * 6


def test_an_executor_that_times_itself_refuses_call_by_call_timing():
    from edgecnn.runtime.bundle import Executor
    from edgecnn.runtime.errors import BundleError

    class Remote(Executor):
        description = "remote vm"

        def run(self, arrays):
            return arrays

        def time(self, arrays, *, repeat, warmup):
            return [1.0] * repeat

    with pytest.raises(BundleError, match="remote vm times itself"):
        Remote().prepared_call([])
