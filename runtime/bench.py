"""Latency statistics of a bundle: p50, p90, p99, mean and throughput.

Timing itself is done by the executor (perf_counter around whole VM calls locally, TVM's
time evaluator on a remote device) or, against another runtime, by :mod:`.timing`; this
module only turns per-call seconds into a summary.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError, received


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

    def row(self, name: str, width: int = 16) -> str:
        return (f"{name:<{width}} {self.p50_ms:>9.3f} {self.p90_ms:>9.3f} {self.p99_ms:>9.3f} {self.mean_ms:>9.3f} "
                f"{self.throughput_per_s:>12.1f}")


def header(first: str = "runtime", width: int = 16) -> str:
    return f"{first:<{width}} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'samples/s':>12}"


HEADER = header()


def spread(stats: list[LatencyStats]) -> dict:
    """How far devices of one kind differ: the extremes and median of their p50s (a fleet check
    before a rollout: a board that runs hot, throttles or has another firmware stands out)."""
    p50 = np.array([s.p50_ms for s in stats], dtype=np.float64)
    if p50.size == 0:
        return {"devices": 0}
    return {"devices": int(p50.size), "p50_min_ms": float(p50.min()), "p50_median_ms": float(np.median(p50)),
            "p50_max_ms": float(p50.max()), "p50_max_over_min": float(p50.max() / p50.min())}


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
