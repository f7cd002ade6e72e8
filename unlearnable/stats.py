"""Intervals for the rates the toolkit reports."""

from __future__ import annotations

import math
import random
from typing import Sequence


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval for a rate of ``successes`` in ``n`` (95 % by default); (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def weighted_rate(hits: Sequence[bool], weights: Sequence[float]) -> tuple[float, list[float]]:
    """A rate whose items count by ``weights`` (e.g. a stratified sample weighted back to its population), with
    the Wilson 95 % interval at Kish's effective sample size ``(sum w)^2 / sum w^2``."""
    total = sum(weights)
    if not hits or total <= 0:
        return float("nan"), [0.0, 1.0]
    rate = sum(w for h, w in zip(hits, weights) if h) / total
    n_eff = total * total / sum(w * w for w in weights)
    return rate, [round(x, 4) for x in wilson_interval(rate * n_eff, n_eff)]


def rate_interval(rate: float, n: int) -> list[float]:
    """The Wilson 95 % interval of a rate measured on ``n`` items, as a JSON-ready ``[low, high]``."""
    return [round(x, 4) for x in wilson_interval(round(rate * n), n)]


def difference_interval(rate_a: float, n_a: int, rate_b: float, n_b: int, z: float = 1.959964) -> tuple[float, float]:
    """A 95 % interval for ``rate_a - rate_b`` (Newcombe's hybrid score method, from the two Wilson intervals)."""
    la, ua = wilson_interval(round(rate_a * n_a), n_a, z)
    lb, ub = wilson_interval(round(rate_b * n_b), n_b, z)
    d = rate_a - rate_b
    low = d - math.sqrt((rate_a - la) ** 2 + (ub - rate_b) ** 2)
    high = d + math.sqrt((ua - rate_a) ** 2 + (rate_b - lb) ** 2)
    return max(-1.0, low), min(1.0, high)


def within_noise(rate_a: float, n_a: int, rate_b: float, n_b: int) -> bool:
    """True when the 95 % interval of the difference of two rates contains 0 (the difference is noise)."""
    low, high = difference_interval(rate_a, n_a, rate_b, n_b)
    return low <= 0.0 <= high


def bootstrap_interval(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval for the mean of ``values`` (over prompts or seeds)."""
    vals = list(values)
    if len(vals) < 2:
        return (vals[0], vals[0]) if vals else (float("nan"), float("nan"))
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(vals, k=len(vals))) / len(vals) for _ in range(n_boot))
    lo = means[int((1 - level) / 2 * n_boot)]
    hi = means[min(n_boot - 1, int((1 + level) / 2 * n_boot))]
    return lo, hi


def quantile(values, q: float) -> float:
    """The ``q`` quantile of ``values`` (linear interpolation between order statistics), for any q in [0, 1]."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (pos - lo) * (ordered[hi] - ordered[lo]))
