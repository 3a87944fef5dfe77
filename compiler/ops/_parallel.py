"""Worker threads for the NumPy backend: its matrix products, copies and elementwise loops.

BLAS runs a matrix product on every thread it is given, but NumPy's own loops (the copies that
build a patch matrix, ReLU, pooling) run on one, and while they run BLAS's idle threads spin
waiting for the next product, taking the cores the copies could use. So inside :func:`compute`
(the NumPy backend's forward and backward) BLAS is held to one thread and the backend splits its
work itself: an operation is cut into slices along one axis, and each thread copies and
multiplies its own slice. NumPy releases the GIL in both. On a 2-vCPU Xeon a 3x3 conv's forward
(32 channels, 32x32, batch 32) took 10.1 ms with two BLAS threads and one copying thread, and
5.1 ms as two slices each on one thread.

The thread count is the one BLAS had when :func:`compute` began (``OMP_NUM_THREADS``,
threadpoolctl's limits, ``edgecnn train --threads``), unless :func:`set_threads` chose one.
Operations smaller than ``MIN_ELEMENTS`` run inline: handing them out costs more than it saves.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MIN_ELEMENTS = 1 << 18

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_chosen: int | None = None  # set_threads
_blas_threads: int | None = None  # what BLAS was set to when compute() last began
_blas_libs = None  # threadpoolctl's controllers of the BLAS libraries loaded, found once
_modules_seen = 0
_saved: list = []
_depth = 0


def _default_threads() -> int:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads() -> int:
    """Threads the backend splits work across: ``set_threads``'s, else BLAS's own count."""
    return _chosen or _blas_threads or _default_threads()


def set_threads(count: int | None) -> None:
    """Use ``count`` threads from now on (None: follow BLAS's thread count again)."""
    global _chosen
    _chosen = None if count is None else max(1, int(count))


def _executor(count: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < count:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(max_workers=count, thread_name_prefix="edgecnn-numpy"), count
        return _pool


@contextlib.contextmanager
def compute():
    """BLAS on one thread for the duration (the backend's threads split the work); reentrant."""
    global _blas_libs, _blas_threads, _saved, _depth, _modules_seen
    with _lock:
        _depth += 1
        if _depth == 1:
            if _blas_libs is None or len(sys.modules) != _modules_seen:
                # found again after new imports: another library (PyTorch, TVM) may have brought its own BLAS
                from threadpoolctl import ThreadpoolController

                _blas_libs = ThreadpoolController().select(user_api="blas").lib_controllers
                _modules_seen = len(sys.modules)
            _saved = [(lib, lib.get_num_threads()) for lib in _blas_libs]
            _blas_threads = max((count for _, count in _saved), default=None)
            if threads() > 1:
                for lib, _ in _saved:
                    lib.set_num_threads(1)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for lib, count in _saved:
                    lib.set_num_threads(count)
                _saved = []


def for_slices(body, length: int, elements: int, start: int = 0) -> list:
    """Call ``body(first, stop)`` over ``range(start, start + length)`` cut into one slice per
    thread; returns their results in order.

    ``elements`` is the operation's total size, which decides whether splitting pays. The slices
    must write disjoint memory. Runs inline when called from a worker (no nested hand-outs).
    """
    count = min(threads(), length)
    if count < 2 or elements < MIN_ELEMENTS or threading.current_thread().name.startswith("edgecnn-numpy"):
        return [body(start, start + length)]
    bounds = [start + length * i // count for i in range(count + 1)]
    pool = _executor(threads())
    futures = [pool.submit(body, bounds[i], bounds[i + 1]) for i in range(1, count)]
    results = [body(bounds[0], bounds[1])]
    return results + [future.result() for future in futures]


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` with the columns of ``b`` (its last axis) split across the threads."""
    if out is None:
        out = np.empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]),
                       dtype=np.result_type(a, b))

    def body(first, stop):
        np.matmul(a, b[..., first:stop], out=out[..., first:stop])
    for_slices(body, b.shape[-1], a.shape[-2] * a.shape[-1] * b.shape[-1] // 8)
    return out


def assign(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` (same shape), split along the first axis."""
    def body(start, stop):
        dst[start:stop] = src[start:stop]
    for_slices(body, dst.shape[0], dst.size)


def fill(dst: np.ndarray, value) -> None:
    """``dst[...] = value``, split along the first axis."""
    def body(start, stop):
        dst[start:stop] = value
    for_slices(body, dst.shape[0], dst.size)
