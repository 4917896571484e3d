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


def test_a_mixture_ablation_reports_each_source_and_scores_one_held_out_text():
    from smollm.results import _source_table, _validation_note, summary_rows

    def seeds(bpb_a, bpb_b, mixture, val_weights=None):
        def run(s):
            data = {"mixture": mixture, "val_weights": val_weights or {"a": 1, "b": 1},
                    "val_fraction": 0.05}  # fmt: skip
            bpbs = {"a": bpb_a(s), "b": bpb_b(s)}
            return {"summary": {"status": "finished", "val_loss": 1.0, "val_bpb": sum(bpbs.values()) / 2,
                                "tokens": 10, "tokens_per_s": 5.0, "config": {"data": data, "train": {"lr": 0.1}},
                                "val_sources": {n: {"bpb": v, "loss": 1.0} for n, v in bpbs.items()}}}  # fmt: skip

        return {s: run(s) for s in range(3)}

    only_a = seeds(lambda s: 1.0 + 0.01 * s, lambda s: 2.0 + 0.02 * s, {"a": 1, "b": 0})
    both = seeds(
        lambda s: 1.1 + 0.01 * s + 0.003 * s * s, lambda s: 1.9 + 0.02 * s, {"a": 0.5, "b": 0.5}
    )
    rows = summary_rows({"a": only_a, "ab": both}, "a")
    assert rows[1]["b_delta_bpb"] == pytest.approx(-0.1) and rows[1]["b_bpb"] == pytest.approx(1.92)
    assert rows[1]["a_delta_bpb"] == pytest.approx(0.1 + 0.003 * 5 / 3)
    table = _source_table(rows, "a")
    assert "| variant | a bpb | Δ a | b bpb | Δ b |" in table
    ab = next(line for line in table if line.startswith("| ab |"))
    assert ab.count("✓") == 2 and "-0.1000 ± 0.0000 ✓" in ab
    # the same sources at the same validation weights are the same held-out text for every variant
    assert _validation_note({"a": only_a, "ab": both}, "a") == []
    own = seeds(
        lambda s: 1.0, lambda s: 2.0, {"a": 0.5, "b": 0.5}, val_weights={"a": 0.5, "b": 0.5}
    )
    assert _validation_note({"a": only_a, "own": own}, "a") == []  # equal weights, any scale
    skewed = seeds(
        lambda s: 1.0, lambda s: 2.0, {"a": 0.5, "b": 0.5}, val_weights={"a": 0.9, "b": 0.1}
    )
    assert (
        "`skewed` was trained on other data"
        in _validation_note({"a": only_a, "skewed": skewed}, "a")[0]
    )
