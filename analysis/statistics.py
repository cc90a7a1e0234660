"""Comparisons of training configurations paired by seed: summaries with t confidence intervals,
paired t and sign-flip permutation tests, TOST equivalence, Holm's adjustment, and a verdict.

A configuration's results are a dict seed -> value; two configurations are compared on the seeds
they share. Every number returned is a plain float (JSON-ready).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping

import numpy as np
from scipy import stats

import lenet_utils as L

PERMUTATIONS = 100_000  # sign flips drawn when the exact test (2^n flips) would need more: n > 16


def _finite(values: Iterable[float], what: str) -> np.ndarray:
    values = list(values)
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in values):
        raise TypeError(f"{what} must be real numbers, got {values}")
    array = np.asarray(values, dtype=float)
    if not np.isfinite(array).all():
        raise ValueError(f"{what} must be finite (no NaN or inf), got {values}")
    return array


def _mean_and_ci(x: np.ndarray) -> tuple[float, float, list[float]]:
    """(mean, std with ddof=1, 95 % t confidence interval of the mean); NaN where undefined."""
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return mean, math.nan, [math.nan, math.nan]
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return mean, std, [mean - half, mean + half]


def describe(values: Mapping[int, float] | Iterable[float]) -> dict:
    """n, mean, std (ddof=1) and the 95 % t confidence interval of the mean (``ci95``) of the
    values (of a dict seed -> value, or a sequence); std and ci95 are NaN where n < 2."""
    x = _finite(values.values() if isinstance(values, Mapping) else values, "values")
    mean, std, ci = _mean_and_ci(x)
    return {"n": len(x), "mean": mean, "std": std, "ci95": ci}


def sign_flip_p(differences: Iterable[float], seed: int = 0) -> float:
    """Two-sided p of the mean paired difference under random sign flips (H0: differences
    symmetric about 0): exact over all 2^n flips for n <= 16, else from ``PERMUTATIONS`` seeded
    random flips (scipy.stats.permutation_test)."""
    d = _finite(differences, "differences")
    result = stats.permutation_test((d,), np.mean, permutation_type="samples", vectorized=True,
                                    n_resamples=PERMUTATIONS, rng=np.random.default_rng(seed))
    return float(result.pvalue)


def paired_test(a: Mapping[int, float], b: Mapping[int, float], *, margin: float | None = None) -> dict:
    """Compare ``a`` with ``b`` over the seeds they share (at least 2).

    Returns n, seeds, the mean difference a - b with its std and 95 % t CI, ``p`` (two-sided paired
    t test, scipy.stats.ttest_rel) and ``p_nonparametric`` (:func:`sign_flip_p`). The sign-flip test
    is chosen over Wilcoxon's signed-rank test because it tests the same statistic as the t test (the
    mean difference, not ranks), exactly, and needs only symmetry under H0. With ``margin`` > 0 also
    ``p_equivalence`` (TOST: the larger p of the one-sided paired t tests of the mean difference
    against -margin and +margin) and ``equivalent`` (p_equivalence < 0.05).
    """
    for name, values in (("a", a), ("b", b)):
        if not isinstance(values, Mapping):
            raise TypeError(f"{name} must be a dict seed -> value, got {type(values).__name__}")
    if margin is not None:
        L.check_number("margin", margin, low=0, inclusive=False)
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        raise ValueError(f"a and b must share at least 2 seeds, got {seeds}")
    x, y = _finite([a[s] for s in seeds], "a's values"), _finite([b[s] for s in seeds], "b's values")
    d = x - y
    mean, std, ci = _mean_and_ci(d)
    result = {"n": len(seeds), "seeds": seeds, "mean_difference": mean, "std": std, "ci95": ci,
              "p": float(stats.ttest_rel(x, y).pvalue), "p_nonparametric": sign_flip_p(d)}
    if margin is not None:
        above = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
        below = stats.ttest_1samp(d, margin, alternative="less").pvalue
        result.update(margin=float(margin), p_equivalence=float(max(above, below)))
        result["equivalent"] = result["p_equivalence"] < 0.05
    return result


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values: the i-th smallest of m is multiplied by m - i + 1, then
    made monotone (running maximum) and capped at 1. Keys keep their order."""
    values = _finite(pvalues.values(), "p-values")
    if ((values < 0) | (values > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {dict(pvalues)}")
    m = len(values)
    order = np.argsort(values, kind="stable")
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1, np.maximum.accumulate((m - np.arange(m)) * values[order]))
    return {key: float(p) for key, p in zip(pvalues, adjusted)}


def verdict(result: Mapping, *, alpha: float = 0.05, names: tuple[str, str] = ("a", "b")) -> str:
    """The conclusion of a :func:`paired_test` result (``names`` label a and b):

    - ``"supported (a > b)"`` / ``"supported (a < b)"``: adjusted p (``p_holm`` when present,
      else ``p``) below ``alpha`` and, when present, the sign-flip ``p_nonparametric`` too (the
      analysis plan asks both tests to agree);
    - ``"no effect (equivalent within ±margin)"``: otherwise, if the TOST p is below ``alpha``;
    - ``"inconclusive"`` otherwise.
    """
    L.check_number("alpha", alpha, low=0, high=1, inclusive=False)
    p = result.get("p_holm", result["p"])
    if p < alpha and result.get("p_nonparametric", 0.0) < alpha:
        return f"supported ({names[0]} {'>' if result['mean_difference'] > 0 else '<'} {names[1]})"
    if result.get("p_equivalence", math.nan) < alpha:
        return f"no effect (equivalent within ±{result['margin']:g})"
    return "inconclusive"
