"""The fits of a ladder: loss against compute, compute multipliers and the trend of a gap with
scale. Pure functions of numbers (no files), fitted with scipy, testable on synthetic runs.

Law (Hoffmann et al. 2022's form, in compute alone): L(C) = E + A * (C / c0) ** -alpha, with c0 a
stated reference compute (the ladder's smallest), so that A is the reducible loss there.

Uncertainty is seed-level: every statistic is recomputed on bootstrap resamples of the seeds, drawn
independently at each rung and shared by the variants there (they are paired by seed). Intervals
are estimate +- t(n-1) * bootstrap sd * sqrt(n / (n-1)) (on a log scale for multipliers): the
bootstrap's spread of a mean over n seeds is (n-1)/n of the unbiased one, and with 3-5 seeds the
t quantile matters. A percentile interval of so few seeds covers far less than it claims.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

ALPHA_BOUNDS = (1e-3, 4.0)  # exponents outside this are not a power law a ladder can tell apart


@dataclass(frozen=True)
class Law:
    """Fitted L(C) = E + A * (C / c0) ** -alpha; each field an array (one value per resample)."""

    E: np.ndarray
    A: np.ndarray
    alpha: np.ndarray
    c0: float

    def loss(self, compute: np.ndarray | float) -> np.ndarray:
        """Loss at `compute` (broadcast against the resamples)."""
        return self.E + self.A * (np.asarray(compute, float) / self.c0) ** -self.alpha

    def compute_for(self, loss: np.ndarray | float) -> np.ndarray:
        """The compute at which this law reaches `loss`; inf at or below its floor E."""
        loss = np.asarray(loss, float)
        gap = loss - self.E
        with np.errstate(divide="ignore", invalid="ignore"):
            out = self.c0 * (self.A / gap) ** (1.0 / self.alpha)
        return np.where(gap > 0, out, np.inf)


def _profile(x: np.ndarray, y: np.ndarray, alpha: np.ndarray):
    """For each row's exponent, the least-squares E and A (linear once alpha is fixed) and the
    residuals: E (B,), A (B,), residuals (B, R)."""
    basis = x[None, :] ** -alpha[:, None]  # (B, R)
    bc = basis - basis.mean(1, keepdims=True)
    A = (bc * (y - y.mean(1, keepdims=True))).sum(1) / (bc**2).sum(1)
    E = y.mean(1) - A * basis.mean(1)
    return E, A, E[:, None] + A[:, None] * basis - y


def _grid(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the (alpha, E, A) on a fine grid of exponents with E, A >= 0 and the least
    squared error."""
    grid = np.geomspace(*ALPHA_BOUNDS, 240)
    basis = x[None, :] ** -grid[:, None]  # (G, R)
    bm = basis.mean(1)
    bc = basis - bm[:, None]
    A = np.clip(((y - y.mean(1, keepdims=True)) @ bc.T) / (bc**2).sum(1), 0, None)  # (B, G)
    E = np.clip(y.mean(1)[:, None] - A * bm[None, :], 0, None)
    sse = ((E[:, :, None] + A[:, :, None] * basis[None] - y[:, None, :]) ** 2).sum(-1)
    best, rows = sse.argmin(1), np.arange(len(y))
    return grid[best], E[rows, best], A[rows, best]


def fit_laws(compute: np.ndarray, losses: np.ndarray, c0: float) -> Law:
    """Least-squares fits of the law to each row of `losses` (resamples x points) at `compute`
    (points), all rows at once. Once alpha is fixed E and A are linear (variable projection), so
    the fit is a root of d(squared error)/d(alpha) = -2 A sum(r x^-alpha ln x) (envelope theorem),
    found by scipy's vectorised secant method from the best exponent on a grid; a row whose root
    leaves the bounds, or has E or A < 0, keeps the grid's fit."""
    from scipy.optimize import newton

    x = np.asarray(compute, float) / c0
    y = np.atleast_2d(np.asarray(losses, float))
    logx = np.log(x)
    start, E0, A0 = _grid(x, y)

    def slope(alpha: np.ndarray) -> np.ndarray:
        _, A, r = _profile(x, y, alpha)
        return -2 * A * (r * x[None] ** -alpha[:, None] * logx[None]).sum(1)

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row that does not converge: the grid's
        root = np.asarray(newton(slope, start, maxiter=100, tol=1e-12, disp=False), float)
        E, A, r = _profile(x, y, root)
        r0 = E0[:, None] + A0[:, None] * x[None] ** -start[:, None] - y
        ok = (np.isfinite(root) & (root >= ALPHA_BOUNDS[0]) & (root <= ALPHA_BOUNDS[1])
              & (E >= 0) & (A >= 0) & ((r**2).sum(1) <= (r0**2).sum(1)))  # fmt: skip
    alpha = np.where(ok, root, start)
    return Law(np.where(ok, E, E0), np.where(ok, A, A0), alpha, c0)


def resample_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap means over seeds: values (variants, rungs, seeds) -> (n_boot, variants, rungs),
    the seeds drawn with replacement independently per rung and shared across variants (paired).
    Row 0 is the sample itself."""
    n_var, n_rungs, n_seeds = values.shape
    draws = rng.integers(0, n_seeds, size=(n_boot, n_rungs, n_seeds))
    draws[0] = np.arange(n_seeds)
    picked = np.take_along_axis(
        values[None], np.broadcast_to(draws[:, None], (n_boot, n_var, n_rungs, n_seeds)), axis=-1
    )
    return picked.mean(-1)


def interval(
    estimate: float, resampled: np.ndarray, n_seeds: int, log: bool = False, df: float | None = None
) -> tuple[float, float]:
    """95% interval: estimate +- t(df) * bootstrap sd * sqrt(n/(n-1)) (see the module's note), df
    n-1 unless given; on the log scale for a ratio. NaN bounds when a resample is not finite."""
    from scipy import stats

    values = np.log(resampled) if log else np.asarray(resampled, float)
    centre = math.log(estimate) if log else estimate
    if n_seeds < 2 or not np.all(np.isfinite(values)) or not math.isfinite(centre):
        return math.nan, math.nan
    t = float(stats.t.ppf(0.975, df or n_seeds - 1))
    half = t * values.std() * math.sqrt(n_seeds / (n_seeds - 1))
    lo, hi = centre - half, centre + half
    return (math.exp(lo), math.exp(hi)) if log else (lo, hi)


def slope(log_compute: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of `deltas` against log10 compute (one x per column)."""
    xc = log_compute - log_compute.mean()
    return ((deltas - deltas.mean(-1, keepdims=True)) * xc).sum(-1) / (xc**2).sum()


def slope_df(log_compute: np.ndarray, deltas: np.ndarray) -> float:
    """Welch-Satterthwaite degrees of freedom of the slope: it sums the rungs' mean deltas (rungs,
    seeds), each over independent seeds, so it has more than one rung's n-1."""
    n = deltas.shape[-1]
    xc = log_compute - log_compute.mean()
    parts = (xc / (xc**2).sum()) ** 2 * deltas.var(-1, ddof=1) / n  # each rung's share of var
    if not parts.sum() > 0:
        return n - 1.0
    return float(parts.sum() ** 2 / ((parts**2) / (n - 1)).sum())


def trend_verdict(mean_delta: float, lo: float, hi: float) -> str:
    """'resolved: grows' when the slope's interval excludes 0 and the gap widens with compute,
    'resolved: shrinks' when it closes (or crosses), else 'not resolved'."""
    if not (lo > 0 or hi < 0):
        return "not resolved"
    widens = (lo > 0) == (mean_delta > 0)
    return "resolved: grows" if widens else "resolved: shrinks"


def multiplier_verdict(lo: float, hi: float) -> str:
    """'resolved: saves compute' (interval above 1: the variant reaches the baseline's loss with
    less compute), 'resolved: costs compute' (below 1), else 'not resolved'."""
    if math.isnan(lo) or math.isnan(hi) or lo <= 1 <= hi:
        return "not resolved"
    return "resolved: saves compute" if lo > 1 else "resolved: costs compute"


def _point_and_interval(
    resampled: np.ndarray, n_seeds: int, log: bool = False, df: float | None = None
) -> dict:
    """{value, lo, hi} from resamples whose row 0 is the sample itself."""
    value = float(resampled[0])
    lo, hi = interval(value, resampled, n_seeds, log, df)
    return {"value": value, "lo": lo, "hi": hi}


def analyse(
    compute: np.ndarray,
    values: np.ndarray,
    baseline: int,
    target: np.ndarray | None = None,
    n_boot: int = 400,
    seed: int = 0,
) -> dict:
    """A ladder's answers from its final losses.

    compute: (variants, rungs) training FLOPs of each run; values: (variants, rungs, seeds) final
    losses (or bpb), seeds paired across variants at a rung; target: (variants,) compute of each
    variant at an extrapolation target. Returns {"c0", "laws": [per variant {E, A, alpha}], and per
    non-baseline variant "vs": {index: {delta, multiplier (per rung), fit_multiplier (at the
    largest rung), slope, trend, target_delta, target_multiplier}}}, each a {value, lo, hi}.
    """
    n_var, n_rungs, n_seeds = values.shape
    rng = np.random.default_rng(seed)
    means = resample_means(values, n_boot, rng)  # (B, V, R)
    c0 = float(compute[baseline].min())
    laws = [fit_laws(compute[v], means[:, v], c0) for v in range(n_var)]
    out: dict = {"c0": c0, "n_seeds": n_seeds, "n_boot": n_boot, "laws": [], "vs": {}}
    for law in laws:
        out["laws"].append({k: _point_and_interval(getattr(law, k), n_seeds, log=k == "A")
                            for k in ("E", "A", "alpha")})  # fmt: skip
    base = laws[baseline]
    top = int(np.argmax(compute[baseline]))
    log_c = np.log10(compute[baseline])
    for v in range(n_var):
        if v == baseline:
            continue
        law = laws[v]
        deltas = means[:, v] - means[:, baseline]  # (B, R)
        trend = slope(log_c, deltas)
        per_rung = base.compute_for(means[:, v].T).T / compute[v]  # (B, R)
        at_top = base.compute_for(law.loss(compute[v, top])) / compute[v, top]
        answer = {
            "delta": [_point_and_interval(deltas[:, r], n_seeds) for r in range(n_rungs)],
            "multiplier": [_point_and_interval(per_rung[:, r], n_seeds, log=True) for r in range(n_rungs)],
            "fit_multiplier": _point_and_interval(at_top, n_seeds, log=True),
            "slope": _point_and_interval(
                trend, n_seeds, df=slope_df(log_c, values[v] - values[baseline])
            ),
        }  # fmt: skip
        s = answer["slope"]
        answer["trend"] = trend_verdict(float(np.mean(deltas[0])), s["lo"], s["hi"])
        m = answer["fit_multiplier"]
        answer["verdict"] = multiplier_verdict(m["lo"], m["hi"])
        if target is not None:
            answer["target_delta"] = _point_and_interval(
                law.loss(target[v]) - base.loss(target[baseline]), n_seeds
            )
            answer["target_multiplier"] = _point_and_interval(
                base.compute_for(law.loss(target[v])) / target[v], n_seeds, log=True
            )
        out["vs"][v] = answer
    return out
