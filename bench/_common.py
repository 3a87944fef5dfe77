"""Small helpers shared by the benchmark scripts: result JSON under bench/results/, tables, machine facts.

Timing is not here: every script times through ``edgecnn.runtime.timing``.

Import from a script in this folder with ``from _common import ...`` (Python puts the script's own
folder first on ``sys.path``).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def set_threads(threads: int):
    """Pin BLAS/OpenMP/TVM thread pools; call before NumPy (or anything loading BLAS) is imported."""
    # TVM_NUM_THREADS too: TVM's own default on x86 is half the CPUs it sees (it assumes two
    # hyperthreads per core), one thread on a 2-vCPU VM with one thread per core
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TVM_NUM_THREADS"):
        os.environ[var] = str(threads)
    # TVM peers run as a bundle does: pool workers unpinned (edgecnn.runtime.bundle.unpin_thread_pool)
    os.environ.setdefault("TVM_BIND_THREADS", "0")


def machine() -> dict:
    """What a reader needs to judge a timing: CPU, cores, load when measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average": load, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_result(name: str, doc: dict) -> Path:
    """Write ``doc`` (plus machine facts) to ``bench/results/<name>.json`` atomically; return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    doc = {"benchmark": name, "machine": machine(), **doc}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def print_table(rows: list[dict], columns: list[str] | None = None, floatfmt: str = ".3g"):
    """A plain aligned text table of dict rows (columns default to the first row's keys)."""
    if not rows:
        return
    columns = columns or list(rows[0])

    def fmt(v):
        if isinstance(v, float):
            return format(v, floatfmt)
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (benchmarks run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """Write ``fig`` as a PNG at ``path`` atomically and close it."""
    from edgecnn.compiler.fileio import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)
