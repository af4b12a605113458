"""Small statistics for comparing runs: paired differences over seeds with a t confidence interval.

An ablation trains every mask at the same seeds, and at a seed every shared weight, the data order
and the augmentation are the same (paired design), so the question "does mask A beat mask B" is
answered by the per-seed differences ``a[s] - b[s]``, not by two unpaired means and stds: the seed's
own luck cancels in the difference.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["PairedDifference", "paired_difference", "summarize"]


@dataclass(frozen=True)
class PairedDifference:
    """``mean(a[s] - b[s])`` over the common seeds with its two-sided confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    def __str__(self) -> str:
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}] (n={self.n})"

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely on one side of zero."""
        return self.low > 0 or self.high < 0


def _t_quantile(p: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, dof))


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95) -> PairedDifference:
    """The paired difference ``a - b`` over the seeds both hold, with a Student-t interval.

    Args:
        a, b: value per seed (e.g. top-1 per seed for two masks).
        confidence: coverage of the interval, in (0, 1).

    Raises:
        ValueError: fewer than two common seeds (an interval needs a spread), or a bad confidence.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a value in (0, 1), got {confidence}")
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        raise ValueError(
            f"seeds: a confidence interval needs at least two seeds run for both masks, got {len(seeds)} "
            f"({', '.join(map(str, seeds)) or 'none'}); pass more seeds (e.g. --seeds 0,1,2)"
        )
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(diffs)
    half = _t_quantile(0.5 + confidence / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return PairedDifference(mean, mean - half, mean + half, len(diffs), confidence)


def summarize(values: list[float]) -> dict[str, float]:
    """Median and spread (min, max, and the interquartile range where there are four or more values)."""
    if not values:
        raise ValueError("values: nothing to summarize")
    ordered = sorted(values)
    out = {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1], "n": len(ordered)}
    if len(ordered) >= 4:
        q1, _, q3 = statistics.quantiles(ordered, n=4)
        out["iqr"] = q3 - q1
    return out
