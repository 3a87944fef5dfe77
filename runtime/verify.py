"""Numerical agreement between a run and a reference: the device side of ``edgecnn verify``.

Error metrics follow ``numpy.testing.assert_allclose``: an element mismatches when
``|actual - expected| > atol + rtol * |expected|``. The relative error reported is
``|actual - expected| / |expected|`` over elements whose expected magnitude exceeds ``atol``
(relative error near zero means nothing). Top-1 agreement is reported for classifier outputs
(rank 2, more than one class).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import received


@dataclass
class TensorReport:
    name: str
    shape: list[int]
    max_abs_error: float
    max_rel_error: float
    mismatches: int
    elements: int
    top1_agreement: float | None = None

    @property
    def passed(self) -> bool:
        return self.mismatches == 0


@dataclass
class Report:
    """The comparison of every output over every input case."""

    against: str
    rtol: float
    atol: float
    cases: list[str] = field(default_factory=list)
    tensors: list[TensorReport] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.tensors)

    @property
    def max_abs_error(self) -> float:
        return max((t.max_abs_error for t in self.tensors), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((t.max_rel_error for t in self.tensors), default=0.0)

    @property
    def mismatches(self) -> int:
        return sum(t.mismatches for t in self.tensors)

    @property
    def top1_agreement(self) -> float | None:
        values = [t.top1_agreement for t in self.tensors if t.top1_agreement is not None]
        return min(values) if values else None

    def to_dict(self) -> dict:
        return {"passed": self.passed, "against": self.against, "rtol": self.rtol, "atol": self.atol,
                "max_abs_error": self.max_abs_error, "max_rel_error": self.max_rel_error,
                "mismatches": self.mismatches, "top1_agreement": self.top1_agreement,
                "cases": list(self.cases), "outputs": [asdict(t) for t in self.tensors]}

    def table(self) -> str:
        lines = [f"{'case:output':<36} {'shape':<14} {'max abs err':>12} {'max rel err':>12} "
                 f"{'mismatches':>11} {'top-1':>7}"]
        for t in self.tensors:
            top1 = "-" if t.top1_agreement is None else f"{t.top1_agreement:.1%}"
            lines.append(f"{t.name:<36} {str(t.shape):<14} {t.max_abs_error:>12.3e} {t.max_rel_error:>12.3e} "
                         f"{t.mismatches:>7}/{t.elements:<4} {top1:>6}")
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"{verdict}: against {self.against}, rtol={self.rtol:g} atol={self.atol:g}, "
                     f"max abs error {self.max_abs_error:.3e}, {self.mismatches} mismatching elements")
        return "\n".join(lines)


def compare(name: str, actual: np.ndarray, expected: np.ndarray, *, rtol: float, atol: float) -> TensorReport:
    """Error metrics of one tensor. Shapes must agree; NaN or Inf where the reference is finite mismatches."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        raise ValueError(f"'{name}': output shape differs from the reference. "
                         + received(shape=list(actual.shape), expected=list(expected.shape)))
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - e)
        bad = ~(diff <= atol + rtol * np.abs(e))
    # Both non-finite in the same way (e.g. +inf and +inf) agree.
    same_special = ~np.isfinite(e) & (a == e) | (np.isnan(a) & np.isnan(e))
    bad &= ~same_special
    finite = np.isfinite(diff)
    max_abs = float(diff[finite].max()) if finite.any() else 0.0
    if (~finite & ~same_special).any():
        max_abs = float("inf")
    significant = finite & (np.abs(e) > atol)
    max_rel = float((diff[significant] / np.abs(e[significant])).max()) if significant.any() else 0.0
    top1 = None
    if actual.ndim == 2 and actual.shape[1] > 1 and actual.shape[0] > 0:
        top1 = float(np.mean(np.argmax(actual, axis=1) == np.argmax(expected, axis=1)))
    return TensorReport(name=name, shape=list(actual.shape), max_abs_error=max_abs, max_rel_error=max_rel,
                        mismatches=int(bad.sum()), elements=int(bad.size), top1_agreement=top1)


def compare_outputs(report: Report, case: str, actual: dict, expected: dict, *, scale_atol: bool = False) -> None:
    """Add one input case's outputs to ``report`` (outputs matched by name).

    ``scale_atol`` multiplies atol by the largest reference magnitude of each output (at least 1):
    for inputs of large magnitude float32 rounding grows with the values summed, so an absolute
    tolerance meant for unit-scale outputs would flag outputs that merely sit near zero.
    """
    report.cases.append(case)
    for name in expected:
        if name not in actual:
            raise ValueError(f"case '{case}': output '{name}' is missing. {received(outputs=sorted(actual))}")
        atol = report.atol
        if scale_atol:
            finite = np.abs(np.asarray(expected[name], dtype=np.float64))
            finite = finite[np.isfinite(finite)]
            atol *= max(1.0, float(finite.max()) if finite.size else 1.0)
        report.tensors.append(compare(f"{case}:{name}", actual[name], expected[name],
                                      rtol=report.rtol, atol=atol))


def verify_golden(bundle, *, rtol: float | None = None, atol: float | None = None) -> Report:
    """Run the bundle on its golden inputs and compare with its golden outputs: needs only the runtime."""
    default_rtol, default_atol = bundle.golden_tolerances
    report = Report(against="golden", rtol=default_rtol if rtol is None else rtol,
                    atol=default_atol if atol is None else atol)
    outputs = bundle.run(bundle.golden_inputs)
    compare_outputs(report, "golden", outputs, bundle.golden_outputs)
    return report
