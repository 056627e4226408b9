"""Confidence intervals for reported metrics.

Every interval stays inside the metric's range: Wilson's interval for a
proportion, and for a mean the normal-approximation interval clipped to
``bounds`` (marked ``"clipped": true``). ``"se"`` keeps the standard error
behind the interval, so intervals derived from several metrics (an Avg) are
not narrowed by the clipping. A mean of fewer than two values has no
interval: ``ci95`` is NaN and ``note`` says ``n < 2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959964
NAN_CI = [float("nan"), float("nan")]


def _bounded(m: float, se: float, n: int, bounds: tuple[float, float] | None) -> dict[str, float]:
    lo, hi = m - Z95 * se, m + Z95 * se
    out = {"mean": m, "n": n, "ci95": [lo, hi], "se": se}
    if bounds is not None and (lo < bounds[0] or hi > bounds[1]):
        out["ci95"] = [max(lo, bounds[0]), min(hi, bounds[1])]
        out["clipped"] = True
    return out


def mean_ci(values: Sequence[float], proportion: bool | None = None, bounds: tuple[float, float] | None = None) -> dict[str, float]:
    """Mean with a 95% interval: Wilson's for a proportion (by default when every value is 0 or 1), else the normal
    approximation clipped to ``bounds`` (the metric's range)."""
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "n": 0, "ci95": list(NAN_CI)}
    m = sum(values) / n
    if proportion is None:
        proportion = all(v in (0.0, 1.0) for v in values)
    if proportion:
        denom = 1 + Z95**2 / n
        centre = (m + Z95**2 / (2 * n)) / denom
        half = Z95 * math.sqrt(m * (1 - m) / n + Z95**2 / (4 * n * n)) / denom
        return {"mean": m, "n": n, "ci95": [centre - half, centre + half], "se": math.sqrt(m * (1 - m) / n)}
    if n < 2:
        return {"mean": m, "n": n, "ci95": list(NAN_CI), "note": "n < 2"}
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return _bounded(m, math.sqrt(var / n), n, bounds)


def mean_of_means_ci(groups: Sequence[Sequence[float]], bounds: tuple[float, float] | None = (0.0, 1.0)) -> dict[str, float]:
    """The unweighted mean of group means (GenEval's overall) with a 95% interval from the groups' variances, inside
    ``bounds`` (GenEval's accuracies: 0-1)."""
    groups = [g for g in groups if len(g)]
    k = len(groups)
    if k == 0:
        return {"mean": float("nan"), "n": 0, "ci95": list(NAN_CI)}
    means = [sum(g) / len(g) for g in groups]
    var = 0.0
    for g, m in zip(groups, means):
        v = sum((x - m) ** 2 for x in g) / (len(g) - 1) if len(g) > 1 else 0.0
        var += v / len(g)
    n = sum(len(g) for g in groups)
    if n < 2:
        return {"mean": means[0], "n": n, "ci95": list(NAN_CI), "note": "n < 2"}
    return _bounded(sum(means) / k, math.sqrt(var) / k, n, bounds)


def standard_error(m: dict) -> float:
    """A metric's standard error: its ``se``, else recovered from the interval's width (older summaries)."""
    if "se" in m:
        return float(m["se"])
    lo, hi = m["ci95"]
    return (hi - lo) / (2 * Z95)
