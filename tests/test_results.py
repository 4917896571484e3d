"""The statistics of the ablation tables, against scipy and hand-computed values."""

import math

import pytest
from scipy import stats

from smollm.stats import holm, mean_ci, min_detectable, paired_test


def test_paired_test_matches_a_hand_computed_example_and_scipy():
    deltas = [0.1, 0.2, 0.3, 0.4]
    mean, sd, half, p = paired_test(deltas)
    assert mean == pytest.approx(0.25)
    assert sd == pytest.approx(math.sqrt(0.05 / 3))  # sum of squared deviations 0.05, n - 1 = 3
    assert half == pytest.approx(3.182446 * sd / 2, rel=1e-6)  # t(0.975, 3) * sd / sqrt(4)
    assert p == pytest.approx(stats.ttest_1samp(deltas, 0.0).pvalue, rel=1e-9)
    assert p == pytest.approx(0.030466, abs=1e-6)
    assert paired_test([0.5]) == (0.5, None, None, None)


def test_holm_adjusts_in_order_and_keeps_monotone():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "base": None})
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06, "base": None})
    assert holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}


def test_minimum_detectable_effect_and_ci():
    assert min_detectable(1.0, 10) == pytest.approx((2.262157 + 0.883404) / math.sqrt(10), rel=1e-5)
    m, ci = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert m == 3.0 and ci == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)


def test_a_variant_scored_on_other_validation_text_is_flagged():
    from smollm.results import _validation_note

    def runs(corpus):
        return {0: {"summary": {"config": {"data": {"corpus": corpus, "val_fraction": 0.05}}}}}

    assert _validation_note({"full": runs("sotu"), "v1": runs("sotu")}, "full") == []
    note = _validation_note({"full": runs("sotu"), "chat": runs("chitchat")}, "full")
    assert "`chat` was trained on other data" in note[0] and "not `full`'s" in note[0]
