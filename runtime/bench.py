"""Latency statistics of a bundle: p50, p90, p99, mean and throughput.

Timing itself is done by the executor (perf_counter around whole VM calls locally, TVM's
time evaluator on a remote device); this module only turns per-call seconds into a summary.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .errors import InputError, received

# TVM's idle pool workers busy-wait for about 150 ms after a run (measured here), and so do
# other runtimes' pools for shorter. A peer timed in the same process right after would share
# its cores with them (measured: squeezenet in onnxruntime 3.6 ms alone, 11-15 ms 50 ms after a
# TVM run), so each timed block starts this long after the previous one.
SETTLE_SECONDS = 0.25


def settle() -> None:
    """Wait until the previous timed block's spinning threads have gone to sleep."""
    time.sleep(SETTLE_SECONDS)


# After a settle pause the first few milliseconds of calls run up to 2x slow (idle vCPUs and
# sleeping pool workers waking up): vgg-small here 0.95, 0.64, 0.56, 0.42 ms, then 0.35 ms. A
# block therefore warms up for this long before its timed calls, so each peer is timed hot.
WARM_SECONDS = 0.02


def warmup_calls(seconds_per_call: float, minimum: int = 1) -> int:
    """Untimed calls that keep a runtime busy for about WARM_SECONDS after a settle pause."""
    if seconds_per_call <= 0:
        return max(minimum, 1)
    return max(minimum, min(10_000, math.ceil(WARM_SECONDS / seconds_per_call)))


@dataclass
class LatencyStats:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput_per_s: float
    batch: int
    repeat: int
    threads: int | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def row(self, name: str) -> str:
        return (f"{name:<16} {self.p50_ms:>9.3f} {self.p90_ms:>9.3f} {self.p99_ms:>9.3f} {self.mean_ms:>9.3f} "
                f"{self.throughput_per_s:>12.1f}")


HEADER = f"{'runtime':<16} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'samples/s':>12}"


def summarize(seconds, *, batch: int, threads: int | None) -> LatencyStats:
    """Percentiles of per-call latency; throughput counts samples (batch per call) per second."""
    times = np.asarray(list(seconds), dtype=np.float64) * 1e3
    if times.size == 0:
        raise InputError("no timings to summarize: --repeat must be at least 1")
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    mean = float(times.mean())
    return LatencyStats(p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99), mean_ms=mean,
                        min_ms=float(times.min()), throughput_per_s=batch * 1e3 / mean, batch=batch,
                        repeat=int(times.size), threads=threads)


def check_counts(repeat: int, warmup: int) -> None:
    if repeat < 1 or warmup < 0:
        raise InputError(f"--repeat must be >= 1 and --warmup >= 0. {received(repeat=repeat, warmup=warmup)}")


def bench_bundle(bundle, *, repeat: int = 100, warmup: int = 10, threads: int | None = None) -> LatencyStats:
    """Time one compiled batch of the golden inputs ``repeat`` times."""
    check_counts(repeat, warmup)
    seconds = bundle.time(repeat=repeat, warmup=warmup)
    return summarize(seconds, batch=bundle.batch, threads=threads)
