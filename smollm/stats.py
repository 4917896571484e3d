"""The statistics of the tables: Student-t intervals, the paired t test, Holm's correction and the
minimum detectable effect (quantiles from scipy). Pure functions of numbers, no files."""

from __future__ import annotations

import math
import statistics


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and half-width of the 95% Student-t interval (None with one value)."""
    from scipy import stats

    if not values:
        return math.nan, None
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, None
    t = float(stats.t.ppf(0.975, len(values) - 1))
    return m, t * statistics.stdev(values) / math.sqrt(len(values))


def paired_test(deltas: list[float]) -> tuple[float, float | None, float | None, float | None]:
    """Paired differences -> (mean, sd, 95% CI half-width, two-sided p of a one-sample t test)."""
    from scipy import stats

    mean, half = mean_ci(deltas)
    if half is None:
        return mean, None, None, None
    sd = statistics.stdev(deltas)
    if sd == 0:
        return mean, sd, half, (1.0 if mean == 0 else 0.0)
    p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(len(deltas))), len(deltas) - 1))
    return mean, sd, half, p


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm-Bonferroni adjusted p-values (family-wise error over the tests given)."""
    tested = sorted((p, k) for k, p in pvalues.items() if p is not None)
    m, running, out = len(tested), 0.0, dict.fromkeys(pvalues)
    for i, (p, k) in enumerate(tested):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def min_detectable(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """Smallest true paired difference a two-sided t test at `alpha` finds with `power`, n pairs."""
    from scipy import stats

    df = n - 1
    return (
        (float(stats.t.ppf(1 - alpha / 2, df)) + float(stats.t.ppf(power, df))) * sd / math.sqrt(n)
    )
