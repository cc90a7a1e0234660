"""The numbers of the LeNet-5 + SAM study: the pre-registered plan's tests (``study.plan``) applied to the runs'
flat metrics, and the exploratory statistics beside them.

The plan's tests come from ``analysis.statistics``: paired t with Holm's adjustment within each family, the exact
sign-flip test beside it, TOST for equivalence. Everything else is reported as exploratory: mean and 95 % t
interval per configuration and per paired difference, without a test.
"""

from __future__ import annotations

import math

import numpy as np

from analysis import statistics
from study.plan import (
    ALPHA,
    CLEAN_MARGIN,
    CONFIRMATORY_FIRST_SEED,
    EXPLORATORY_CONTRASTS,
    FLOOR_ACCURACY,
    MANIPULATION_CHECK,
    PRIMARY_CONTRASTS,
    PRIMARY_ENDPOINTS,
    SECONDARY_CONTRASTS,
    SHARPNESS,
    V3_ADAPTIVE_SHARPNESS,
    V3_CONTROL_CONTRASTS,
    V3_CONTROL_SEEDS,
    V3_DOSE_CONFIGS,
    V3_DOSE_SEEDS,
    V3_SLOPE_MARGIN_FRACTION,
    planned_seeds,
)

# ----------------------------------------------------------------------------- the plan's tests


def plan_results(flat: dict[str, dict[int, dict]], dataset: str, confirmatory: bool) -> list[dict]:
    """Every test of the plan: one row per (family, contrast, endpoint), Holm-adjusted within each family.

    ``confirmatory`` keeps the dataset's seeds >= CONFIRMATORY_FIRST_SEED (the plan's analysis);
    otherwise all seeds (the sensitivity analysis). Contrasts of configurations the dataset's plan
    does not run are left out."""
    first = CONFIRMATORY_FIRST_SEED[dataset] if confirmatory else 0
    shared = lambda a, b: min(planned_seeds(dataset, a), planned_seeds(dataset, b))  # noqa: E731  (seeds 0..n-1)

    def test(a: str, b: str, metric: str, margin: float | None, family: str) -> dict:
        return paired_row(flat, a, b, metric, margin, family, range(first, shared(a, b)))

    rows = []
    families = (("primary", PRIMARY_CONTRASTS, PRIMARY_ENDPOINTS),
                ("secondary", SECONDARY_CONTRASTS, PRIMARY_ENDPOINTS),
                ("clean accuracy", PRIMARY_CONTRASTS, {"clean": CLEAN_MARGIN}),
                ("manipulation check", (MANIPULATION_CHECK[:2],), {MANIPULATION_CHECK[2]: None}))
    for family, contrasts, endpoints in families:
        family_rows = [test(a, b, metric, margin, family) for a, b in contrasts for metric, margin in endpoints.items()
                       if shared(a, b) > 0]
        rows += adjust_family(family_rows, holm=family in ("primary", "secondary"))
    if dataset == "mnist" and confirmatory:  # the v3 amendment's seeds are all confirmatory and MNIST's alone
        rows += v3_results(flat)
    return rows


def paired_row(flat: dict[str, dict[int, dict]], a: str, b: str, metric: str, margin: float | None, family: str,
               seeds: range) -> dict:
    """The plan's paired test of ``a - b`` on ``metric`` over the planned ``seeds`` both have (no verdict yet)."""
    row = {"family": family, "contrast": f"{a} - {b}", "metric": metric, "margin": margin, "planned_n": len(seeds)}
    values = [{s: f[metric] for s, f in flat.get(c, {}).items() if s in seeds and metric in f} for c in (a, b)]
    common = sorted(set(values[0]) & set(values[1]))
    if len(common) < 2:
        return {**row, "n": len(common), "verdict": "missing (fewer than 2 paired seeds)"}
    floor = metric not in SHARPNESS and all(v[s] <= FLOOR_ACCURACY for v in values for s in common)
    return {**row, **statistics.paired_test(*values, margin=margin), "interim": len(common) < len(seeds),
            "floor": floor}


def adjust_family(family_rows: list[dict], holm: bool) -> list[dict]:
    """Holm within the family (``holm``) and each row's verdict; the rows, updated in place."""
    # a NaN p (identical paired values: no variance) is not a test; it stays out of Holm
    tested = {i: r["p"] for i, r in enumerate(family_rows) if "p" in r and not math.isnan(r["p"])}
    adjusted = statistics.holm({str(i): p for i, p in tested.items()}) if tested else {}
    # Holm over part of a family understates every adjusted p: the whole family stays interim until it is complete
    tests_missing = any("p" not in r for r in family_rows)
    family_incomplete = tests_missing or any(r.get("interim") for r in family_rows)
    for i, r in enumerate(family_rows):
        if "p" in r:
            if holm:
                r["p_holm"] = adjusted.get(str(i), math.nan)
                r["interim"] = family_incomplete
                if tests_missing and not math.isnan(r["p"]):  # Holm over all the planned tests stays at or below
                    r["p_holm_bound"] = min(1.0, len(family_rows) * r["p"])
            names = tuple(r["contrast"].split(" - ")) if " - " in r["contrast"] else ("slope", "0")
            r["verdict"] = statistics.verdict(r, alpha=ALPHA, names=names)
    return family_rows


# ----------------------------------------------------------------------------- the plan's v3 amendment


def dose_slopes(flat: dict[str, dict[int, dict]], metric: str, log: bool = False) -> dict[int, float]:
    """Per seed of V3_DOSE_SEEDS that has every rho of V3_DOSE_CONFIGS and ``sgd``: the least-squares slope of
    the paired difference (config - sgd) against log2 rho; with ``log``, of log(metric) itself (the manipulation
    check: a slope of log lambda_max is a ratio per doubling, which sgd's value would not change)."""
    x = np.log2(list(V3_DOSE_CONFIGS.values()))
    slopes = {}
    for seed in V3_DOSE_SEEDS:
        values = [flat.get(c, {}).get(seed, {}).get(metric) for c in (*V3_DOSE_CONFIGS, "sgd")]
        if any(v is None for v in values):
            continue
        y = np.log(values[:-1]) if log else np.array(values[:-1]) - values[-1]
        slopes[seed] = float(np.polyfit(x, y, 1)[0])
    return slopes


def slope_row(family: str, metric: str, slopes: dict[int, float], margin: float | None, effect: float | None) -> dict:
    """The plan's paired test of the per-seed slopes against 0, its verdict named by the slope's direction:
    for an endpoint, "grows with rho" when it has the sign of ``effect`` (the mean asam - sgd difference),
    for the manipulation check, "flatter with rho" when negative."""
    row = {"family": family, "contrast": "slope per doubling of rho", "metric": metric, "margin": margin,
           "planned_n": len(V3_DOSE_SEEDS), "n": len(slopes)}
    if len(slopes) < 2:
        return {**row, "verdict": "missing (fewer than 2 seeds with every rho)"}
    row |= statistics.paired_test(slopes, dict.fromkeys(slopes, 0.0), margin=margin)
    row["interim"] = len(slopes) < len(V3_DOSE_SEEDS)
    row["effect"] = effect
    return row


def name_slope(row: dict) -> None:
    """Replace the verdict's "(slope ... 0)" by the direction the plan names."""
    if not row.get("verdict", "").startswith("supported"):
        return
    if row["effect"] is None:  # the manipulation check
        direction = "flatter with rho" if row["mean_difference"] < 0 else "sharper with rho"
    else:
        direction = "grows with rho" if row["mean_difference"] * row["effect"] > 0 else "shrinks with rho"
    row["verdict"] = f"supported ({direction})"


def v3_results(flat: dict[str, dict[int, dict]]) -> list[dict]:
    """The v3 amendment's tests: the dose-response family, its manipulation checks, the controls family and
    theirs (results/ANALYSIS_PLAN.md, "Amendment v3")."""
    def effect(metric: str) -> float | None:
        d = [flat["asam"][s][metric] - flat["sgd"][s][metric] for s in V3_DOSE_SEEDS
             if metric in flat.get("asam", {}).get(s, {}) and metric in flat.get("sgd", {}).get(s, {})]
        return float(np.mean(d)) if d else None

    dose = [slope_row("v3 dose-response", m, dose_slopes(flat, m), margin * V3_SLOPE_MARGIN_FRACTION, effect(m))
            for m, margin in PRIMARY_ENDPOINTS.items()]
    checks = [slope_row("v3 manipulation check", m, dose_slopes(flat, m, log=True), None, None)
              for m in ("hessian_eigenvalue", V3_ADAPTIVE_SHARPNESS)]

    def control(a: str, b: str, metric: str, margin: float | None, family: str) -> dict:
        return paired_row(flat, a, b, metric, margin, family, V3_CONTROL_SEEDS[a, b])

    controls = [control(a, b, m, margin, "v3 controls") for a, b in V3_CONTROL_CONTRASTS
                for m, margin in PRIMARY_ENDPOINTS.items()]
    swa_check = [control("swa-0.02", "sgd", "hessian_eigenvalue", None, "v3 manipulation check")]
    rows = adjust_family(dose, holm=True) + adjust_family(checks, holm=False)
    for r in rows:
        name_slope(r)
    return rows + adjust_family(controls, holm=True) + adjust_family(swa_check, holm=False)


# ----------------------------------------------------------------------------- exploratory statistics


def exploratory(flat: dict[str, dict[int, dict]]) -> tuple[dict, dict]:
    """Mean and 95 % t interval of every metric per configuration, and of the paired differences of
    the study's contrasts (no tests: exploratory)."""
    configs = {c: {m: {**statistics.describe([f[m] for f in seeds.values() if m in f]),
                       "seeds": [s for s, f in seeds.items() if m in f]}
                   for m in dict.fromkeys(k for f in seeds.values() for k in f)}
               for c, seeds in flat.items()}
    paired = {}
    for a, b in EXPLORATORY_CONTRASTS:
        common = sorted(set(flat.get(a, {})) & set(flat.get(b, {})))
        if common:  # no shared seeds: no paired differences (and no empty entry)
            metrics = [m for m in configs[a] if m in configs[b]]
            both = {m: [s for s in common if m in flat[a][s] and m in flat[b][s]] for m in metrics}
            paired[f"{a} - {b}"] = {m: {**statistics.describe([flat[a][s][m] - flat[b][s][m] for s in both[m]]),
                                        "seeds": both[m]} for m in metrics if both[m]}
    return configs, paired

