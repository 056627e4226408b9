"""Confidence intervals for reported metrics."""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959964


def mean_ci(values: Sequence[float], proportion: bool | None = None) -> dict[str, float]:
    """Mean with a 95% normal-approximation interval (Wilson's interval for a proportion: by default when every value is 0 or 1)."""
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "n": 0, "ci95": [float("nan"), float("nan")]}
    m = sum(values) / n
    if proportion is None:
        proportion = all(v in (0.0, 1.0) for v in values)
    if proportion:
        denom = 1 + Z95**2 / n
        centre = (m + Z95**2 / (2 * n)) / denom
        half = Z95 * math.sqrt(m * (1 - m) / n + Z95**2 / (4 * n * n)) / denom
        return {"mean": m, "n": n, "ci95": [centre - half, centre + half]}
    var = sum((v - m) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    half = Z95 * math.sqrt(var / n)
    return {"mean": m, "n": n, "ci95": [m - half, m + half]}


def mean_of_means_ci(groups: Sequence[Sequence[float]]) -> dict[str, float]:
    """The unweighted mean of group means (GenEval's overall) with a 95% interval from the groups' variances."""
    groups = [g for g in groups if len(g)]
    k = len(groups)
    if k == 0:
        return {"mean": float("nan"), "n": 0, "ci95": [float("nan"), float("nan")]}
    means = [sum(g) / len(g) for g in groups]
    var = 0.0
    for g, m in zip(groups, means):
        v = sum((x - m) ** 2 for x in g) / (len(g) - 1) if len(g) > 1 else 0.0
        var += v / len(g)
    m = sum(means) / k
    half = Z95 * math.sqrt(var) / k
    return {"mean": m, "n": sum(len(g) for g in groups), "ci95": [m - half, m + half]}
