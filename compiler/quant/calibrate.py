"""Calibration: activation ranges from running the NumPy backend over sample images.

Three ways to pick the range [lo, hi] a tensor is quantized over:

- ``minmax``: the smallest and largest value seen (no value clips; outliers cost resolution);
- ``percentile``: the 0.01th and 99.99th percentiles of the values seen (from a histogram);
- ``entropy``: the range whose quantized histogram is closest to the real one in KL divergence
  (the method TensorRT made common), searched on the histogram of absolute values.
"""
from __future__ import annotations

import numpy as np

from edgecnn.runtime.errors import InputError

from .. import numpy_backend
from ..ir import Graph

METHODS = ("minmax", "percentile", "entropy")
BINS = 2048
PERCENTILE = 99.99
_LEVELS = 128  # quantization levels the entropy search compares against (one side of int8)


def collect(graph: Graph, batches, tensors: list[str], method: str, progress=None) -> dict[str, tuple[float, float]]:
    """``{tensor: (lo, hi)}`` over ``batches`` (a list of float32 input arrays)."""
    if method not in METHODS:
        raise InputError(f"calibration method must be one of {', '.join(METHODS)}. Received: --method={method}")
    input_name = graph.inputs[0].name
    lows = {t: np.inf for t in tensors}
    highs = {t: -np.inf for t in tensors}

    def values(batch):
        return numpy_backend.forward(graph, {input_name: batch}, keep="all")

    total = len(batches) * (1 if method == "minmax" else 2)
    done = 0
    for batch in batches:
        seen = values(batch)
        for t in tensors:
            v = seen[t]
            if not np.all(np.isfinite(v)):
                raise InputError(f"calibration: tensor '{t}' holds NaN or infinite values on the calibration data "
                                 f"(check the inputs and the model)")
            lows[t] = min(lows[t], float(v.min()))
            highs[t] = max(highs[t], float(v.max()))
        done += 1
        if progress:
            progress(done, total)
    if method == "minmax":
        return {t: (lows[t], highs[t]) for t in tensors}
    # second pass: histograms of the values over the range found (signed) and of |values|
    limit = {t: max(abs(lows[t]), abs(highs[t]), 1e-12) for t in tensors}
    hists = {t: np.zeros(2 * BINS, np.float64) for t in tensors}
    for batch in batches:
        seen = values(batch)
        for t in tensors:
            hists[t] += np.histogram(seen[t], bins=2 * BINS, range=(-limit[t], limit[t]))[0]
        done += 1
        if progress:
            progress(done, total)
    ranges = {}
    for t in tensors:
        edges = np.linspace(-limit[t], limit[t], 2 * BINS + 1)
        if method == "percentile":
            cdf = np.cumsum(hists[t]) / max(hists[t].sum(), 1)
            lo = edges[int(np.searchsorted(cdf, 1 - PERCENTILE / 100))]
            hi = edges[int(np.searchsorted(cdf, PERCENTILE / 100)) + 1]
            ranges[t] = (max(lo, lows[t]), min(hi, highs[t]))
        else:
            absolute = hists[t][BINS:] + hists[t][:BINS][::-1]
            absolute[0] = 0  # exact zeros (a ReLU's, padding's) say nothing about where to clip
            # a tensor that is never negative gets all 256 levels over [0, threshold]
            levels = 2 * _LEVELS if lows[t] >= 0 else _LEVELS
            threshold = entropy_threshold(absolute, levels) * limit[t]
            ranges[t] = (max(-threshold, lows[t]), min(threshold, highs[t]))
    return ranges


def entropy_threshold(hist: np.ndarray, levels: int = _LEVELS) -> float:
    """The clipping threshold, as a fraction of the histogram's range, that minimises the KL
    divergence between the clipped distribution and its quantization to ``levels`` levels."""
    hist = np.asarray(hist, np.float64)
    bins = hist.size
    if hist.sum() == 0:
        return 1.0
    best, best_i = np.inf, bins
    for i in range(levels, bins + 1, max(1, (bins - levels) // 256)):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()  # what the threshold clips lands in the last bin
        # Q: the histogram inside the threshold only, merged into ``levels`` groups and spread
        # back over each group's non-empty bins; P also holds the clipped mass, so a threshold
        # that clips much is penalised there
        inside = hist[:i]
        q = np.zeros(i)
        for g in np.array_split(np.arange(i), levels):
            nonzero = inside[g] > 0
            if nonzero.any():
                q[g[nonzero]] = inside[g].sum() / nonzero.sum()
        mask = p > 0
        pn, qn = p[mask] / p.sum(), q[mask] / q.sum()
        kl = float(np.sum(pn * np.log(pn / np.maximum(qn, 1e-30))))
        if kl < best:
            best, best_i = kl, i
    return best_i / bins
