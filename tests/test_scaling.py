"""The ladder's fits on synthetic runs whose losses follow a known law plus seed noise."""

import numpy as np
import pytest

from smollm.scaling import Law, analyse, fit_laws, multiplier_verdict, trend_verdict

C0 = 1e12
COMPUTE = C0 * np.array([1.0, 4.0, 16.0, 64.0])  # four rungs spanning 64x in compute
E, A, ALPHA = 1.5, 0.8, 0.3


def law(compute):
    return E + A * (compute / C0) ** -ALPHA


def runs(k: float, n_seeds: int, rng, sd: float = 0.01, shared: float = 0.01) -> np.ndarray:
    """(2, rungs, seeds) final losses: a variant worth k x the baseline's compute (its loss at C is
    the baseline's at k*C), then the baseline; a seed's noise is partly shared by both (pairing)."""
    common = rng.normal(0, shared, (len(COMPUTE), n_seeds))
    base = law(COMPUTE)[:, None] + common + rng.normal(0, sd, (len(COMPUTE), n_seeds))
    variant = law(k * COMPUTE)[:, None] + common + rng.normal(0, sd, (len(COMPUTE), n_seeds))
    return np.stack([variant, base])


def test_fit_recovers_the_law():
    compute = C0 * np.geomspace(1, 1000, 6)
    rng = np.random.default_rng(0)
    fits = fit_laws(compute, law(compute) + rng.normal(0, 0.002, (20, 6)), C0)
    assert np.abs(fits.E - E).max() < 0.01
    assert np.abs(fits.A / A - 1).max() < 0.02
    assert np.abs(fits.alpha - ALPHA).max() < 0.01
    exact = fit_laws(compute, law(compute), C0)  # noise-free: the law itself
    np.testing.assert_allclose([exact.E[0], exact.A[0], exact.alpha[0]], [E, A, ALPHA], rtol=1e-6)


def test_law_inverse():
    truth = Law(np.array([E]), np.array([A]), np.array([ALPHA]), C0)
    np.testing.assert_allclose(truth.compute_for(truth.loss(COMPUTE)), COMPUTE, rtol=1e-9)
    assert np.isinf(truth.compute_for(E - 0.1)).all()  # below the floor: no compute reaches it


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_bootstrap_interval_covers_the_true_multiplier(n_seeds):
    """200 synthetic ladders: the fitted multiplier's 95% interval covers the truth (0.6x) in
    90-99% of them; a pair with no true difference is 'not resolved', by the multiplier and by
    the trend, in 90-99%."""
    rng = np.random.default_rng(n_seeds)
    compute = np.stack([COMPUTE, COMPUTE])
    covered = null_multiplier = null_trend = 0
    reps = 200
    for rep in range(reps):
        out = analyse(compute, runs(0.6, n_seeds, rng), 1, n_boot=200, seed=rep)["vs"][0]
        covered += out["fit_multiplier"]["lo"] <= 0.6 <= out["fit_multiplier"]["hi"]
        null = analyse(compute, runs(1.0, n_seeds, rng), 1, n_boot=200, seed=rep)["vs"][0]
        null_multiplier += null["verdict"] == "not resolved"
        null_trend += null["trend"] == "not resolved"
    assert 0.90 <= covered / reps <= 0.99
    assert 0.90 <= null_multiplier / reps <= 0.99
    assert 0.90 <= null_trend / reps <= 0.99


def test_a_widening_gap_is_resolved_as_growing():
    rng = np.random.default_rng(7)
    values = runs(1.0, 5, rng, sd=0.002, shared=0.0)
    values[0] += 0.02 * np.log10(COMPUTE / C0)[:, None]  # the variant falls behind with scale
    out = analyse(np.stack([COMPUTE, COMPUTE]), values, 1, n_boot=300)["vs"][0]
    assert out["trend"] == "resolved: grows"
    assert out["slope"]["value"] == pytest.approx(0.02, abs=0.005)
    assert out["verdict"] == "resolved: costs compute"
    values[0] -= 0.04 * np.log10(COMPUTE / C0)[:, None] - 0.05  # ahead, by less and less
    assert analyse(np.stack([COMPUTE, COMPUTE]), values, 1, n_boot=300)["vs"][0]["trend"] == (
        "resolved: shrinks"
    )


def test_verdict_words():
    assert trend_verdict(0.03, 0.01, 0.02) == "resolved: grows"
    assert trend_verdict(0.03, -0.02, -0.01) == "resolved: shrinks"
    assert trend_verdict(-0.03, -0.02, -0.01) == "resolved: grows"
    assert trend_verdict(0.03, -0.01, 0.01) == "not resolved"
    assert multiplier_verdict(1.1, 1.5) == "resolved: saves compute"
    assert multiplier_verdict(0.5, 0.9) == "resolved: costs compute"
    assert multiplier_verdict(0.9, 1.2) == "not resolved"
    assert multiplier_verdict(float("nan"), float("nan")) == "not resolved"


def test_extrapolation_and_determinism():
    """The target's Δ and multiplier follow the laws; the same seed gives the same numbers."""
    rng = np.random.default_rng(3)
    values = runs(0.6, 4, rng, sd=1e-5, shared=0.0)  # nearly exact: the arithmetic, not the noise
    target = np.array([C0 * 1e4, C0 * 1e4])
    first = analyse(np.stack([COMPUTE, COMPUTE]), values, 1, target, n_boot=200, seed=5)
    again = analyse(np.stack([COMPUTE, COMPUTE]), values, 1, target, n_boot=200, seed=5)
    assert first == again
    vs = first["vs"][0]
    assert vs["target_multiplier"]["value"] == pytest.approx(0.6, rel=0.05)
    assert vs["target_multiplier"]["lo"] <= 0.6 <= vs["target_multiplier"]["hi"]
    assert vs["target_delta"]["value"] == pytest.approx(
        law(0.6 * 1e4 * C0) - law(1e4 * C0), abs=0.01
    )
