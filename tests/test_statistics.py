"""describe, paired_test, sign_flip_p, holm and verdict on numbers known by hand or from scipy."""

import math

import numpy as np
import pytest
from scipy import stats

from analysis.statistics import describe, holm, paired_test, sign_flip_p, verdict


def test_describe_by_hand():
    result = describe({0: 1.0, 1: 2.0, 2: 3.0, 3: 6.0})  # mean 3, sample variance 14 / 3
    assert result["n"] == 4 and result["mean"] == pytest.approx(3.0)
    assert result["std"] == pytest.approx(math.sqrt(14 / 3))
    half = 3.182446305284263 * math.sqrt(14 / 3) / 2  # t_{0.975, 3}
    assert result["ci95"] == pytest.approx([3 - half, 3 + half])
    assert describe([1.0, 2.0, 3.0, 6.0]) == result


def test_describe_small_n():
    one = describe([4.0])
    assert one["n"] == 1 and one["mean"] == 4.0
    assert math.isnan(one["std"]) and all(math.isnan(c) for c in one["ci95"])
    assert describe([])["n"] == 0 and math.isnan(describe([])["mean"])


@pytest.mark.parametrize("values, error", [([1.0, float("nan")], ValueError), ({0: math.inf}, ValueError),
                                           (["1"], TypeError), ([True, 2.0], TypeError)])
def test_describe_rejects_bad_values(values, error):
    with pytest.raises(error, match="values"):
        describe(values)


def test_paired_test_matches_scipy_and_hand():
    a = {0: 99.1, 1: 99.0, 2: 98.8, 3: 99.3, 4: 99.2, 7: 50.0}
    b = {0: 98.9, 1: 98.9, 2: 98.5, 3: 99.0, 4: 99.1, 5: 0.0}  # seeds 5 and 7 are not shared
    result = paired_test(a, b)
    assert result["n"] == 5 and result["seeds"] == [0, 1, 2, 3, 4]
    d = np.array([0.2, 0.1, 0.3, 0.3, 0.1])
    assert result["mean_difference"] == pytest.approx(0.2)
    assert result["std"] == pytest.approx(d.std(ddof=1))
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert result["ci95"] == pytest.approx([0.2 - half, 0.2 + half])
    assert result["p"] == pytest.approx(stats.ttest_rel([99.1, 99.0, 98.8, 99.3, 99.2],
                                                        [98.9, 98.9, 98.5, 99.0, 99.1]).pvalue)
    assert result["p"] == pytest.approx(2 * stats.t.sf(0.2 / (d.std(ddof=1) / math.sqrt(5)), 4))
    assert result["p_nonparametric"] == pytest.approx(2 / 32)  # all 5 differences positive
    assert "p_equivalence" not in result and "equivalent" not in result


def test_sign_flip_exact_by_hand():
    assert sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)  # only all + and all - reach |sum| = 6
    # [3, -1, 1], |sum| = 3: with +3, the flips of (-1, 1) give sums 3, 1, 5, 3 (3 of 4 reach 3),
    # and with -3 the mirror image: 6 of 8
    assert sign_flip_p([3.0, -1.0, 1.0]) == pytest.approx(6 / 8)
    assert sign_flip_p([1.0, -1.0]) == 1.0


def test_sign_flip_monte_carlo_for_many_seeds():
    d = np.random.default_rng(0).normal(0.3, 1.0, 20)
    p = sign_flip_p(d)
    assert p == sign_flip_p(d, seed=0) and p != sign_flip_p(d, seed=1)
    assert p == pytest.approx(stats.ttest_1samp(d, 0).pvalue, abs=0.03)  # close to the t test at n = 20
    assert sign_flip_p(np.full(20, 1.0)) == pytest.approx(2 / 100_001)  # two-sided 2 (0 + 1) / (draws + 1)


def test_tost_clearly_equivalent():
    a = {s: 99.0 + 0.01 * (s % 3) for s in range(10)}
    b = {s: 99.0 + 0.01 * ((s + 1) % 3) for s in range(10)}
    result = paired_test(a, b, margin=0.2)
    assert result["equivalent"] and result["p_equivalence"] < 1e-6 and result["margin"] == 0.2
    d = np.array([a[s] - b[s] for s in range(10)])
    assert result["p_equivalence"] == pytest.approx(max(stats.ttest_1samp(d, -0.2, alternative="greater").pvalue,
                                                        stats.ttest_1samp(d, 0.2, alternative="less").pvalue))
    assert verdict(result) == "no effect (equivalent within ±0.2)"


def test_tost_clearly_not_equivalent():
    result = paired_test({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.5, 2: 2.5}, margin=0.1)
    assert not result["equivalent"] and result["p_equivalence"] > 0.5
    noisy = paired_test({0: 1.0, 1: -1.0, 2: 0.9}, {0: 0.0, 1: 0.0, 2: 0.0}, margin=0.5)  # mean ~0, wide CI
    assert not noisy["equivalent"] and verdict(noisy) == "inconclusive"


@pytest.mark.parametrize("a, b, kwargs, match", [
    ({0: 1.0}, {0: 2.0}, {}, "at least 2 seeds"),
    ({0: 1.0, 1: 2.0}, {1: 2.0, 2: 3.0}, {}, "at least 2 seeds"),
    ({0: 1.0, 1: float("nan")}, {0: 1.0, 1: 2.0}, {}, "finite"),
    ({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.5}, {"margin": -0.1}, "margin"),
    ({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.5}, {"margin": 0.0}, "margin"),
    ({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.5}, {"margin": math.nan}, "margin"),
])
def test_paired_test_rejects_bad_input(a, b, kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_test(a, b, **kwargs)


def test_paired_test_needs_dicts():
    with pytest.raises(TypeError, match="dict seed -> value"):
        paired_test([1.0, 2.0], {0: 1.0, 1: 2.0})


def test_holm_textbook():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert list(adjusted) == ["a", "b", "c", "d"]
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": 0.02})
    assert holm({"x": 0.4, "y": 0.6, "z": 0.01}) == pytest.approx({"x": 0.8, "y": 0.8, "z": 0.03})
    assert holm({"x": 0.5, "y": 0.9}) == {"x": 1.0, "y": 1.0}  # capped at 1
    assert holm({"only": 0.02}) == {"only": 0.02} and holm({}) == {}


@pytest.mark.parametrize("p", [-0.1, 1.5, math.nan])
def test_holm_rejects_bad_p(p):
    with pytest.raises(ValueError, match="p-values"):
        holm({"a": 0.01, "b": p})


def test_verdict_uses_the_adjusted_p_and_names_the_direction():
    a = {s: float(s) for s in range(6)}
    result = paired_test(a, {s: s + 1.0 + 0.1 * (s % 2) for s in range(6)}, margin=0.01)
    assert result["p"] < 0.05 and result["p_nonparametric"] == pytest.approx(2 / 64) and result["mean_difference"] < 0
    assert verdict(result) == "supported (a < b)"
    assert verdict(result, names=("sam", "baseline")) == "supported (sam < baseline)"
    assert verdict({**result, "p_holm": 0.2}) == "inconclusive"
    assert verdict({**result, "mean_difference": 1.0}, names=("sam", "adam")) == "supported (sam > adam)"
    assert verdict(result, alpha=result["p"] / 2) == "inconclusive"
    with pytest.raises(ValueError, match="alpha"):
        verdict(result, alpha=1.5)


def test_verdict_needs_the_sign_flip_test_to_agree():
    """n = 4 differences of one sign: the t test is significant, the exact sign-flip test cannot be (p >= 2/16)."""
    result = paired_test({0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}, {0: 2.0, 1: 3.1, 2: 3.9, 3: 5.0})
    assert result["p"] < 0.05 and result["p_nonparametric"] == pytest.approx(2 / 16)
    assert verdict(result) == "inconclusive"
