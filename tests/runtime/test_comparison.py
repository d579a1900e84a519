"""The one comparison of option distributions: scipy's Jensen–Shannon distance with its
rounding guard, top-1 agreement, log-prob differences; NaN never becomes a silent 0."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from cvs_families.scores import OptionScores
from cvs_runtime.comparison import compare_scores, js_distance, js_distance_rows, top1_agrees


def _scores(logprobs: list[float]) -> OptionScores:
    return OptionScores(
        option_logprobs=np.asarray(logprobs, dtype=np.float64),
        topk_token_ids=np.arange(20, dtype=np.int64),
    )


def test_the_distance_is_scipys_on_random_distributions() -> None:
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(6), size=50)  # (rows, options)
    q = rng.dirichlet(np.ones(6), size=50)
    expected = np.array([jensenshannon(a, b) for a, b in zip(p, q, strict=True)])
    np.testing.assert_allclose(js_distance_rows(p, q), expected, rtol=0, atol=1e-15)
    assert js_distance(p[0], q[0]) == pytest.approx(float(expected[0]), abs=1e-15)


def test_scipys_nan_for_nearly_equal_distributions_is_a_distance_of_zero() -> None:
    rng = np.random.default_rng(7)
    p = rng.dirichlet(np.ones(5), size=200)
    q = p * (1 + rng.normal(0, 1e-15, p.shape))
    with np.errstate(invalid="ignore"):
        scipy = jensenshannon(p, q, axis=1)
    assert np.isnan(scipy).any(), "the fixture no longer reaches scipy's NaN case"
    distances = js_distance_rows(p, q)
    assert np.all(np.isfinite(distances)) and distances.max() < 1e-7


def test_a_non_finite_distribution_has_no_distance() -> None:
    assert math.isnan(js_distance([float("nan"), 0.5], [0.5, 0.5]))
    assert math.isnan(js_distance([0.5, 0.5], [float("inf"), 0.5]))
    rows = js_distance_rows([[0.5, 0.5], [float("nan"), 1.0]], [[0.5, 0.5], [0.5, 0.5]])
    assert rows[0] == 0.0 and math.isnan(rows[1])


def test_vectors_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(2,\) and \(3,\)"):
        js_distance([0.5, 0.5], [0.2, 0.3, 0.5])


def test_top1_compares_the_most_likely_option() -> None:
    assert top1_agrees([0.1, 0.7, 0.2], [-3.0, -0.1, -2.0])
    assert not top1_agrees([0.1, 0.7, 0.2], [0.5, 0.2, 0.3])


def test_score_lists_agree_by_the_hand_computed_figures() -> None:
    engine = [_scores([-0.5, -1.2, -3.0]), _scores([-2.0, -0.3])]
    reference = [_scores([-0.6, -1.0, -3.0]), _scores([-0.2, -2.5])]
    agreement = compare_scores(engine, reference)
    js = [
        js_distance(e.distribution, r.distribution) for e, r in zip(engine, reference, strict=True)
    ]
    assert agreement.requests == 2
    assert agreement.mean_js == pytest.approx(np.mean(js)) and agreement.max_js == max(js)
    assert agreement.top1 == 0.5  # the second request's favourite flips
    assert agreement.max_logprob_diff == pytest.approx(2.2)
    assert agreement.mean_logprob_diff == pytest.approx((0.1 + 0.2 + 0 + 1.8 + 2.2) / 5)
    assert agreement.finite


def test_a_nan_score_is_the_worst_difference_and_no_distance() -> None:
    agreement = compare_scores([_scores([float("nan"), -1.0])], [_scores([-0.5, -1.0])])
    assert not agreement.finite
    assert math.isnan(agreement.mean_js) and math.isnan(agreement.max_js)
    assert agreement.max_logprob_diff == math.inf


def test_score_lists_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="1 vs 0"):
        compare_scores([_scores([-1.0, -2.0])], [])
