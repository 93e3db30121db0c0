"""Confidence intervals for success rates.

Why Wilson and not the normal approximation: evaluation runs have few episodes per
task (10 to 50) and success rates near 0 or 1, where ``p +- 1.96 sqrt(p(1-p)/n)``
collapses to a zero-width interval (0/10 -> [0, 0]) or leaves [0, 1]. The Wilson
score interval stays inside [0, 1] and keeps a sensible width at the extremes.
"""

from __future__ import annotations

import math
from statistics import NormalDist


def z_value(confidence: float = 0.95) -> float:
    """Two-sided standard-normal quantile (1.959964 for 95 %)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n`` Bernoulli trials.

    ``center = (p + z^2/2n) / (1 + z^2/n)`` and
    ``half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2)`` (Wilson, 1927).
    ``n == 0`` gives the uninformative ``(0, 1)``.
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"wilson_interval: need 0 <= successes <= n; got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = z_value(confidence)
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At p = 0 (p = 1) the lower (upper) bound is exactly 0 (1); float rounding leaves ~1e-17.
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi
