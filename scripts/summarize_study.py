"""Summarize the LeNet-5 + SAM study as results/ANALYSIS_PLAN.md prescribes.

Reads the records of one dataset (``results/study/<dataset>/*.json``, written by run_study.py; any
subset of configurations and seeds) and writes ``study_summary.json``, ``study_summary.csv`` and the
figures into ``--out-dir`` (default ``results/summary/<dataset>``). ``--readme README.md`` rewrites
two blocks of the README: between ``<!-- study-answer:<dataset>:begin -->`` and ``...:end -->``, the
plan's answer in words; between ``<!-- study-results:<dataset>:begin -->`` and ``...:end -->``, the
Markdown tables of this summary. So the README's numbers are the ones computed here.
``--corruption-examples results/corruption_examples.png`` draws every corruption on 3 test digits.

The plan's primary endpoints, contrasts, margins and seeds are the constants below (a test checks
them against the plan). The plan's tests come from ``analysis.statistics``: paired t with Holm's
adjustment within each family, the exact sign-flip test beside it, TOST for equivalence. Everything
else is reported as exploratory: mean and 95 % t interval per configuration and per paired
difference, without a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats as scipy_stats  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import lenet_utils as L  # noqa: E402
from analysis import corruptions, statistics  # noqa: E402

# ----------------------------------------------------------------------------- the plan (results/ANALYSIS_PLAN.md)

PRIMARY_ENDPOINTS = {"pixel_0.6": 1.0, "mnist_c_mean": 1.0, "pgd_0.1": 2.0}  # endpoint -> equivalence margin
CLEAN_MARGIN = 0.2
PRIMARY_CONTRASTS = (("asam", "sgd"),)
SECONDARY_CONTRASTS = (("sam-0.05", "sgd"), ("sam-0.5", "sgd"), ("adam-sam", "baseline"), ("asam", "sgd-2x"),
                       ("asam", "swa"))
MANIPULATION_CHECK = ("asam", "sgd", "hessian_eigenvalue")
# MNIST's seeds 0-2 informed the plan: they enter the sensitivity analysis only. No Fashion-MNIST run
# existed when the plan was written, so all its seeds are confirmatory.
CONFIRMATORY_FIRST_SEED = {"mnist": 3, "fashion-mnist": 0}
# seeds 0..n-1 of each configuration; a configuration a dataset's plan does not name has none
# The v3 configurations: seeds 3-12, written 0..12 with none below 3. sam-0.5's seeds 10-19 (v3) enter only
# the v3 test asam - sam-0.5 (V3_CONTROL_SEEDS), never the v2 families, which stop at the seeds planned here.
PLANNED_SEEDS = {"mnist": {"asam": 20, "sgd": 20, "asam-0.5": 13, "asam-1.0": 13, "asam-4.0": 13, "swa-0.02": 13,
                           "*": 10},
                 "fashion-mnist": {"asam": 8, "sgd": 8, "baseline": 5, "sam-0.05": 5, "noise-aug": 5, "*": 0}}
ALPHA = 0.05
# Amendment v3 (MNIST): the dose-response family (per-seed slope of the paired difference against log2 rho, the
# rho of each configuration below; "asam" is rho 2.0) and the controls family, each contrast on its own seeds.
V3_DOSE_CONFIGS = {"asam-0.5": 0.5, "asam-1.0": 1.0, "asam": 2.0, "asam-4.0": 4.0}
V3_DOSE_SEEDS = range(3, 13)
V3_SLOPE_MARGIN_FRACTION = 1 / 3  # slope margin per doubling of rho, as a fraction of the endpoint's margin
V3_CONTROL_CONTRASTS = (("swa-0.02", "sgd"), ("asam", "swa-0.02"), ("asam", "sam-0.5"))
V3_ADAPTIVE_SHARPNESS = "adaptive_sharpness_2.0"  # the manipulation check's second measure (radius 2.0)
V3_CONTROL_SEEDS = {("swa-0.02", "sgd"): range(3, 13), ("asam", "swa-0.02"): range(3, 13),
                    ("asam", "sam-0.5"): range(10, 20)}

# ----------------------------------------------------------------------------- exploratory

# Not in the plan, a reading aid: an accuracy endpoint where every run of both configurations is at or
# below this (%) has no room to differ, so its verdict is flagged "at the floor".
FLOOR_ACCURACY = 1.0

ORDER = ("baseline", "adam-sam", "sgd", "sgd-2x", "swa", "swa-0.02", "asam-0.5", "asam-1.0", "asam", "asam-4.0",
         "sam-0.05", "sam-0.5", "noise-aug")
# beyond the plan: what augmentation, doubled compute and weight averaging alone do to the sgd recipe
EXPLORATORY_CONTRASTS = (*PRIMARY_CONTRASTS, *SECONDARY_CONTRASTS, ("noise-aug", "sgd"), ("sgd-2x", "sgd"),
                         ("swa", "sgd"), ("asam-0.5", "sgd"), ("asam-1.0", "sgd"), ("asam-4.0", "sgd"),
                         ("swa-0.02", "sgd"), ("asam", "swa-0.02"))
REPORT_COLUMNS = {"clean": "clean", "pixel_0.6": "pixel σ=0.6", "pixel_clip_0.6": "pixel σ=0.6 clipped",
                  "mnist_c_mean": "MNIST-C mean",
                  "extended_mean": "extended corruptions", "pgd_0.1": "PGD ε=0.1",
                  "pgd_0.05": "PGD ε=0.05", "fgsm_0.1": "FGSM ε=0.1",
                  "seed_0.6": "fixed-pattern protocol σ=0.6", "hessian_eigenvalue": "λ_max (Hessian)",
                  "hessian_trace": "Hessian trace", "slice_rise": "loss-slice rise",
                  V3_ADAPTIVE_SHARPNESS: "adaptive sharpness (r = 2)"}
SHARPNESS = ("hessian_eigenvalue", "hessian_trace", "slice_rise", "perturbation_norm", V3_ADAPTIVE_SHARPNESS)


def readme_markers(dataset: str, block: str = "results") -> tuple[str, str]:
    return f"<!-- study-{block}:{dataset}:begin -->", f"<!-- study-{block}:{dataset}:end -->"


# ----------------------------------------------------------------------------- records


def flat_metrics(record: dict) -> dict[str, float]:
    """The summarized scalars of one run, by metric name."""
    m = record["metrics"]
    flat = {"clean": m["clean"], "normalized_clean": m["normalized_clean"]}
    flat |= {f"seed_{s}": v for s, v in m["seed_protocol"].items()}
    flat |= {f"pixel_{s}": v for s, v in m["pixel"].items()}
    flat |= {f"pixel_clip_{s}": v for s, v in m["pixel_clip"].items()}
    flat |= {(k if k.endswith("_mean") else f"corruption_{k}"): v for k, v in m["corruptions"].items()}
    flat |= {f"sweep_{name}": levels["mean"] for name, levels in m["corruption_sweep"].items()}
    for attack in ("fgsm", "pgd"):
        flat |= {f"{attack}_{eps}": v for eps, v in m["adversarial"][attack].items()}
    if m["hessian"]["converged"]:  # an unconverged power iteration's last estimate is not λ_max: left out
        flat["hessian_eigenvalue"] = m["hessian"]["eigenvalue"]
    flat["hessian_trace"] = m["hessian_trace"]["mean"]
    flat["slice_rise"] = m["loss_directions"]["rise"]
    if "perturbation_norm" in record:
        flat["perturbation_norm"] = record["perturbation_norm"]["mean"]
    return flat


def load_runs(study_dir: Path) -> dict[str, dict[int, dict]]:
    """{config: {seed: record}} of the evaluated records, configurations in study order."""
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(study_dir.glob("*.json")):
        record = json.loads(path.read_text())
        if "metrics" not in record:
            print(f"note: {path.name} is trained but not evaluated (run_study.py --reevaluate); left out")
            continue
        runs.setdefault(record["config"], {})[record["seed"]] = record
    rank = lambda c: (ORDER.index(c), c) if c in ORDER else (len(ORDER), c)  # noqa: E731
    return {c: dict(sorted(runs[c].items())) for c in sorted(runs, key=rank)}


def records_of(runs: dict[str, dict[int, dict]]) -> list[dict]:
    """Every record of ``runs`` (configuration -> seed -> record), in order."""
    return [r for seeds in runs.values() for r in seeds.values()]


def check_consistency(runs: dict[str, dict[int, dict]]) -> list[str]:
    """Warnings when the records come from different evaluation code or settings."""
    records = records_of(runs)
    warnings = []
    for what, get in (("evaluation code (analysis/ and lenet_utils.py)", lambda r: r["evaluation"]["code"]),
                      ("evaluation settings", lambda r: r["evaluation"]["settings"])):
        if len({json.dumps({k: v for k, v in get(r).items() if k != "git_commit"}, sort_keys=True)
                for r in records}) > 1:
            warnings.append(f"the records were evaluated with different {what}: re-evaluate them")
    return warnings


# ----------------------------------------------------------------------------- the plan's tests


def planned_seeds(dataset: str, config: str) -> int:
    plan = PLANNED_SEEDS.get(dataset, {"*": 0})
    return plan.get(config, plan["*"])


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


# ----------------------------------------------------------------------------- tables


def interval(stats: dict | None, signed: bool = False, digits: int = 2) -> str:
    """``mean [low, high]`` (just the mean where the interval is undefined)."""
    if not stats or stats.get("n", 0) == 0:
        return "-"
    spec = ("+" if signed else "") + f".{digits}f"
    low, high = stats["ci95"]
    mean = stats.get("mean_difference", stats.get("mean"))
    return f"{mean:{spec}}" + ("" if math.isnan(low) else f" [{low:{spec}}, {high:{spec}}]")


def p_value(p: float | None) -> str:
    return "-" if p is None or math.isnan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def p_clause(name: str, p: float, relation: str = "=") -> str:
    """``p < 0.001`` or ``p = 0.008`` (``relation`` in place of =), for prose and titles (``name`` in place of p)."""
    return f"{name} < 0.001" if p < 0.001 else f"{name} {relation} {p_value(p)}"


def plan_table(rows: list[dict]) -> str:
    header = ["family", "contrast", "endpoint", "n (planned)", "mean difference [95 % CI]", "p (t)", "p (Holm)",
              "p (sign-flip)", "TOST p (margin)", "verdict"]
    body = []
    for r in rows:
        digits = 3 if r["metric"] in SHARPNESS else 2
        tost = "-" if r.get("margin") is None or "p_equivalence" not in r else \
            f"{p_value(r['p_equivalence'])} (±{r['margin']:.3g})"
        flags = [*reading_aids(r), *(["interim"] if r.get("interim") else [])]
        verdict = " ".join([r["verdict"], *(f"({flag})" for flag in flags)])
        body.append([r["family"], r["contrast"], r["metric"], f"{r['n']} ({r['planned_n']})",
                     interval(r, signed=True, digits=digits) if "p" in r else "-", p_value(r.get("p")),
                     p_value(r.get("p_holm")), p_value(r.get("p_nonparametric")), tost, verdict])
    return L.markdown_table(header, body)


def inside_margin(r: dict) -> bool:
    """A supported difference that the plan's TOST also puts inside its margin: detectable, yet smaller than the
    plan's practical change (a reading aid, not a verdict)."""
    return r["verdict"].startswith("supported") and r.get("margin") is not None and r["p_equivalence"] < ALPHA


def reading_aids(r: dict) -> dict[str, str]:
    """The flags beside a row's verdict (not in the plan): the table's short name -> the prose's wording."""
    aids = {"at the floor": f"at the floor: every run <= {FLOOR_ACCURACY:g} %"} if r.get("floor") else {}
    if inside_margin(r):
        aids["inside the margin"] = f"inside the ±{r['margin']:g} margin"
    return aids


def endpoint_label(r: dict) -> str:
    label = {"clean": "clean accuracy"}.get(r["metric"], REPORT_COLUMNS[r["metric"]])
    aids = reading_aids(r)
    return label + (f" ({'; '.join(aids.values())})" if aids else "")


def endpoint_sentence(r: dict, indent: str = "") -> str:
    """One tested row of ``plan_results`` in words: verdict, interval and its tests."""
    digits = 3 if r["metric"] in SHARPNESS else 2
    p = r.get("p_holm", r["p"])
    tests = ["identical on every seed, no t test" if math.isnan(p) else
             p_clause("p (Holm)" if "p_holm" in r else "p", p), p_clause("p (sign-flip)", r["p_nonparametric"])]
    if "p_holm_bound" in r:
        tests.insert(1, p_clause("p (Holm, whole family)", r["p_holm_bound"], "≤"))
    if r.get("margin") is not None and (r["p_equivalence"] < ALPHA or not r["verdict"].startswith("supported")):
        tests.append(f"{p_clause('TOST p', r['p_equivalence'])} against ±{r['margin']:.3g}")
    return (f"{indent}- {endpoint_label(r)}: **{r['verdict']}**, {interval(r, signed=True, digits=digits)} "
            f"({'; '.join(tests)}).")


def plan_answer(dataset: str, rows: list[dict]) -> str:
    """The plan's answer in words, from its confirmatory tests (``plan_results``): the manipulation
    check, each primary endpoint and clean accuracy, the plan's rule applied to them, then the
    secondary family."""
    primary = [r for r in rows if r["family"] == "primary"]
    check, clean = (next(r for r in rows if r["family"] == f) for f in ("manipulation check", "clean accuracy"))
    a, b = PRIMARY_CONTRASTS[0]
    first = CONFIRMATORY_FIRST_SEED[dataset]
    if not all("p" in r for r in (*primary, check)):
        return f"**The plan's answer on {dataset}:** none yet (it needs at least two paired seeds >= {first})."
    n, planned = min(r["n"] for r in primary), primary[0]["planned_n"]
    status = (f"interim: n = {n} of the {planned} planned seeds, so not the study's answer" if n < planned
              else f"final: all {planned} planned seeds")
    lines = [f"**The plan's answer on {dataset}** ({status}; `{a} - {b}` paired over seeds >= {first}, "
             "results/ANALYSIS_PLAN.md):", "", *map(endpoint_sentence, (check, *primary, clean)), ""]
    named = lambda test: ", ".join(endpoint_label(r) for r in primary if test(r)) or "none"  # noqa: E731
    supported = lambda sign: lambda r: r["verdict"].startswith("supported") and sign * r["mean_difference"] > 0  # noqa: E731
    rule = (f"By the plan's rule, `{a}` is more robust than `{b}` on: {named(supported(1))}; less robust on: "
            f"{named(supported(-1))}; equivalent within the margin on: "
            f"{named(lambda r: r['verdict'].startswith('no effect'))}; inconclusive on: "
            f"{named(lambda r: r['verdict'] == 'inconclusive')}.")
    flatter = check["verdict"] == f"supported ({a} < {b})"
    rule += (" The manipulation check holds: SAM's minimum is flatter (λ_max of the plain cross-entropy on the probe "
             "set). These are the effects of SAM in this recipe; flatness is one of the things SAM changes, and "
             "this contrast alone cannot say it is the cause (the v3 amendment varies rho to ask)." if flatter else
             f" The manipulation check is not met{' so far' if n < planned else ''} ({check['verdict']}), so these "
             "results do not speak to flat minima.")
    return "\n".join([*lines, rule, *secondary_answer(dataset, rows), *v3_answer(rows)])


def v3_answer(rows: list[dict]) -> list[str]:
    """The v3 amendment's verdicts in words (no lines before any v3 test has two seeds)."""
    v3 = [r for r in rows if r["family"].startswith("v3")]
    if not any("p" in r for r in v3):
        return []
    lines = ["", "The v3 amendment (dose-response over ASAM's rho 0.5-4.0, seeds 3-12; controls `swa-0.02 - sgd`, "
             "`asam - swa-0.02` on seeds 3-12 and `asam - sam-0.5` on seeds 10-19):", ""]
    for family in ("v3 manipulation check", "v3 dose-response", "v3 controls"):
        own = [r for r in v3 if r["family"] == family and "p" in r]
        if not own:
            continue
        status = ("interim, not the study's answer" if any(r.get("interim") for r in own)
                  or len(own) < sum(r["family"] == family for r in v3) else "final")
        lines += [f"- {family} ({status}; n = {min(r['n'] for r in own)} of {own[0]['planned_n']} planned seeds):"]
        lines += [endpoint_sentence(r, indent="  ").replace(
            "- ", f"- `{r['contrast']}`, " if " - " in r["contrast"] else "- slope per doubling of rho, ", 1)
            for r in own]
    return lines


def secondary_answer(dataset: str, rows: list[dict]) -> list[str]:
    """The secondary family's verdicts in words, one bullet per contrast that has tests, and the
    contrasts still missing (no lines while none has tests)."""
    secondary = [r for r in rows if r["family"] == "secondary"]
    contrasts = list(dict.fromkeys(r["contrast"] for r in secondary))
    tested = [c for c in contrasts if any(r["contrast"] == c and "p" in r for r in secondary)]
    if not tested:
        return []
    missing = [c for c in contrasts if c not in tested]
    # plan_results marks every tested row of a family interim while any of its tests or seeds is missing
    if not any(r.get("interim") for r in secondary):
        status = "final"
    elif missing:
        status = ("interim: Holm over the tests that exist so far, not the study's answer; \"whole family\" bounds "
                  "the adjusted p once every planned test exists: the number of planned tests times the unadjusted p")
    else:
        status = "interim: every planned test exists, but not yet with all of its planned seeds; not the study's answer"
    lines = ["", f"The secondary family on {dataset} ({status}; {len(secondary)} planned tests, Holm-adjusted "
             "together):", ""]
    for c in tested:
        own = [r for r in secondary if r["contrast"] == c]
        lines += [f"- `{c}` (n = {min(r['n'] for r in own)} of {own[0]['planned_n']} planned seeds):",
                  *(endpoint_sentence(r, indent="  ") for r in own if "p" in r)]
    if missing:
        lines += ["", "Not yet run with two confirmatory seeds: " + ", ".join(f"`{c}`" for c in missing) + "."]
    return lines


def provenance(runs: dict) -> str:
    """Which commits trained and evaluated the records, and the wall time they record."""
    records = records_of(runs)

    def commits(get) -> str:
        counts = Counter((get(r).get("git_commit") or "unknown")[:7] for r in records)
        return ", ".join(f"`{commit}` ({n})" for commit, n in counts.most_common())

    hours = {k: sum(r["seconds"][k] for r in records) / 3600 for k in ("train", "evaluate")}
    unconverged = [f"{r['config']} seed {r['seed']}" for r in records if not r["metrics"]["hessian"]["converged"]]
    left_out = (f" λ_max is left out for {', '.join(unconverged)}: the power iteration did not converge (the "
                "record's `hessian.converged`)." if unconverged else "")
    return (f"Code (from the records): trained with commit {commits(lambda r: r['training_code'])}; evaluated "
            f"with {commits(lambda r: r['evaluation']['code'])}. Wall time in the records, summed over runs: "
            f"{hours['train']:.1f} h of training and {hours['evaluate']:.1f} h of (latest) evaluation, on "
            f"{'/'.join(sorted({str(r['threads']) for r in records}))} thread(s) per run.{left_out}")


def markdown_report(dataset: str, runs: dict, confirmatory: list[dict], sensitivity: list[dict],
                    configs: dict, paired: dict, flat: dict) -> str:
    """The README block: runs, the plan's results (confirmatory, then sensitivity), and the
    exploratory tables."""
    seeds = lambda s: f"seed {min(s)}" if len(s) == 1 else f"seeds {min(s)}-{max(s)}"  # noqa: E731
    finished = "; ".join(f"{c}: {len(s)} ({seeds(s)})" for c, s in runs.items())
    first = CONFIRMATORY_FIRST_SEED[dataset]
    lines = [f"Evaluated runs on {dataset} ({sum(map(len, runs.values()))}): {finished}.", "", provenance(runs), ""]
    lines += [f"**The plan's tests, confirmatory seeds (>= {first})** (results/ANALYSIS_PLAN.md; \"(interim)\": fewer "
              "seeds than planned in the row or its Holm family, not the study's answer; reading aids beside the "
              f"verdict: \"(at the floor)\", every run of both configurations at or below {FLOOR_ACCURACY:g} %; "
              "\"(inside the margin)\", supported, yet the TOST puts the difference inside the margin):", ""]
    if any("p" in r for r in confirmatory):
        lines += [plan_table(confirmatory), ""]
    else:
        lines += [f"No confirmatory runs yet: every test needs at least two paired seeds >= {first}.", ""]
    if first > 0:  # with every seed confirmatory, the sensitivity analysis is the table above
        lines += [f"**Sensitivity analysis, all seeds** (includes seeds 0-{first - 1}, which informed the plan):", "",
                  plan_table(sensitivity), ""]
    lines += ["**Exploratory: mean [95 % t CI] per configuration** (accuracies in %):", ""]
    body = [[c, len(runs[c]), *(interval(configs[c].get(m), digits=3 if m in SHARPNESS else 2)
                                 for m in REPORT_COLUMNS)] for c in configs]
    lines += [L.markdown_table(["configuration", "n", *REPORT_COLUMNS.values()], body), ""]
    if paired:
        lines += ["**Exploratory: paired differences, mean [95 % t CI]** (no test; the plan's tests are above):", ""]
        body = [[p, next(iter(v.values()))["n"], *(interval(v.get(m), True, 3 if m in SHARPNESS else 2)
                                                   for m in REPORT_COLUMNS)] for p, v in paired.items()]
        lines += [L.markdown_table(["paired difference", "n", *REPORT_COLUMNS.values()], body), ""]
        names = [n for n in {**corruptions.CORRUPTIONS, **corruptions.EXTENDED_CORRUPTIONS}
                 if f"corruption_{n}" in next(iter(paired.values()))]
        header = ["corruption (benchmark severity)", *(f"{p} (n={next(iter(v.values()))['n']})"
                                                      for p, v in paired.items())]
        body = [[n.replace("_", " ") + ("" if n in corruptions.CORRUPTIONS else " (extended)"),
                 *(interval(v.get(f"corruption_{n}"), True) for v in paired.values())] for n in names]
        lines += ["**Exploratory: paired differences under each corruption:**", "", L.markdown_table(header, body), ""]
    if any("hessian_eigenvalue" in f for seeds in flat.values() for f in seeds.values()):
        lines += ["**Exploratory: Spearman's rank correlation of λ_max with each endpoint** (one point per run; the "
                  "SGD-recipe runs share label smoothing and weight decay, which set the Hessian's scale):", "",
                  spearman_table(flat), ""]
    return "\n".join(lines).rstrip("\n")


def spearman_table(flat: dict[str, dict[int, dict]]) -> str:
    """Spearman's rank correlation of λ_max with each primary endpoint, over all runs and over the SGD-recipe runs
    alone (exploratory; the figure sharpness_vs_robustness.png draws the same points)."""
    body = []
    for subset, keep in (("all runs", lambda c: True),
                         ("SGD-recipe runs", lambda c: L.STUDY_RECIPES[c].optimizer == "sgd")):
        pairs = {e: [(f["hessian_eigenvalue"], f[e]) for c, seeds in flat.items() if keep(c)
                     for f in seeds.values() if "hessian_eigenvalue" in f] for e in PRIMARY_ENDPOINTS}
        cells = []
        for points in pairs.values():
            rho, p = scipy_stats.spearmanr(*zip(*points)) if len(points) > 2 else (math.nan, math.nan)
            cells.append(f"{rho:+.2f} ({p_clause('p', p)})")
        body.append([subset, len(next(iter(pairs.values()))), *cells])
    return L.markdown_table(["runs", "n", *(REPORT_COLUMNS[e] for e in PRIMARY_ENDPOINTS)], body)


HEADLINE_CONTRASTS = (*PRIMARY_CONTRASTS, *SECONDARY_CONTRASTS)
VERDICT_WORDS = {"supported": "", "no effect": "equivalent", "inconclusive": "inconclusive"}


def verdict_word(r: dict) -> str:
    """One word for a row's verdict: better / worse (supported, by sign), equivalent, inconclusive, missing."""
    if "p" not in r:
        return "missing"
    if r["verdict"].startswith("supported"):
        return "better" if r["mean_difference"] > 0 else "worse"
    return next(w for k, w in VERDICT_WORDS.items() if r["verdict"].startswith(k))


def headline_table(rows: list[dict]) -> str:
    """The README's answer table: contrast x endpoint, a verdict word and the mean difference with its 95 % CI."""
    endpoints = {**{m: REPORT_COLUMNS[m] for m in PRIMARY_ENDPOINTS}, "clean": "clean accuracy"}
    cell = {(r["contrast"], r["metric"]): r for r in rows
            if r["family"] in ("primary", "secondary", "clean accuracy")}
    body = []
    for a, b in HEADLINE_CONTRASTS:
        if not any(c == f"{a} - {b}" for c, _ in cell):  # a contrast this dataset's plan does not run
            continue
        row = [f"`{a} - {b}`", min((cell[f"{a} - {b}", m]["n"] for m in PRIMARY_ENDPOINTS
                                    if (f"{a} - {b}", m) in cell), default=0)]
        for m in endpoints:
            r = cell.get((f"{a} - {b}", m))
            flags = [*(reading_aids(r) if r is not None and "p" in r else ()),
                     *(["interim"] if r is not None and r.get("interim") else [])]
            row.append("-" if r is None else f"**{verdict_word(r)}**" + (
                f" {interval(r, signed=True)}" if "p" in r else "") + "".join(f" ({f})" for f in flags))
        body.append(row)
    return L.markdown_table(["contrast (paired by seed)", "n", *endpoints.values()], body)


def splice_into_readme(path: Path, blocks: dict[str, str], dataset: str) -> None:
    """Replace the text between each block's two markers in ``path`` (block -> new text); the file
    is rewritten only if every block's markers are there."""
    text = path.read_text()
    for block, report in blocks.items():
        begin_marker, end_marker = readme_markers(dataset, block)
        begin, end = text.find(begin_marker), text.find(end_marker)
        if begin < 0 or end < begin or text.count(begin_marker) != 1 or text.count(end_marker) != 1:
            raise ValueError(f"{path} needs exactly one line {begin_marker!r} followed later by exactly one "
                             f"line {end_marker!r}; the {block} block goes between them")
        text = text[:begin + len(begin_marker)] + "\n\n" + report + "\n\n" + text[end:]
    with L.atomic_write(path) as f:
        f.write(text)


def write_tables(out_dir: Path, summary: dict) -> None:
    """study_summary.json (NaN as null) and study_summary.csv (one row per statistic)."""
    def clean(value):
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    with L.atomic_write(out_dir / "study_summary.json") as f:
        json.dump(clean(summary), f, indent=1)
    rows = [{"analysis": analysis, **{k: v for k, v in r.items() if k != "seeds"}}
            for analysis in ("confirmatory", "sensitivity") for r in summary[analysis]]
    rows += [{"analysis": "exploratory", "family": "configuration", "contrast": c, "metric": m,
              **{k: v for k, v in s.items() if k != "seeds"}}
             for c, metrics in summary["configurations"].items() for m, s in metrics.items()]
    rows += [{"analysis": "exploratory", "family": "paired difference", "contrast": p, "metric": m,
              **{k: v for k, v in s.items() if k != "seeds"}}
             for p, metrics in summary["paired"].items() for m, s in metrics.items()]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with L.atomic_write(out_dir / "study_summary.csv", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: "" if clean(r.get(k)) is None else r.get(k) for k in fields} for r in rows)


# ----------------------------------------------------------------------------- figures


def save(fig: plt.Figure, path: Path) -> None:
    """Write ``fig`` as PNG with :func:`lenet_utils.atomic_write` and close it."""
    with L.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def colours(runs: dict) -> dict[str, tuple]:
    """A fixed colour per configuration (by study order): tab20, whose dark/light pairs fall on neighbours in ORDER
    (baseline/adam-sam, sgd/sgd-2x, swa/swa-0.02, ...), so that no two configurations share a colour."""
    palette = plt.get_cmap("tab20").colors
    return {c: palette[(ORDER.index(c) if c in ORDER else len(ORDER) + i) % 20] for i, c in enumerate(runs)}


def mean_and_band(ax, x: list[float], curves: np.ndarray, colour, label: str) -> None:
    """Mean accuracy curve with its 95 % t interval as a band (n >= 2), the band clipped to 0-100 %."""
    ax.plot(x, curves.mean(0), marker="o", ms=3, color=colour, label=label)
    if len(curves) >= 2:
        bands = np.array([statistics.describe(list(column))["ci95"] for column in curves.T]).clip(0, 100)
        ax.fill_between(x, bands[:, 0], bands[:, 1], color=colour, alpha=0.2)


def plot_curves(runs: dict, path: Path, title: str, panels: list[tuple[str, str, callable]]) -> None:
    """One panel per (title, x label, record -> {x: accuracy}), mean and band per configuration."""
    ncols = min(len(panels), 6)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols + 1, 2.9 * nrows + 1), sharey=True,
                             squeeze=False, layout="constrained")
    colour = colours(runs)
    for ax, (panel, xlabel, get) in zip(axes.flat, panels):
        for config, seeds in runs.items():
            curves = [get(r) for r in seeds.values()]
            keys = list(curves[0])
            mean_and_band(ax, [float(k) for k in keys], np.array([[c[k] for k in keys] for c in curves]),
                          colour[config], f"{config} (n={len(curves)})")
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside lower center", ncol=min(len(runs), 2 * ncols))
    fig.suptitle(title + "\nmean over seeds; band: 95 % t interval of the mean, clipped to 0-100 %")
    save(fig, path)


def plot_sharpness(runs: dict, flat: dict, path: Path, tag: str) -> None:
    """λ_max and Hessian trace vs each primary endpoint, one dot per run; Spearman's rho over all runs and
    over the SGD-recipe runs alone (label smoothing and weight decay move the Hessian's whole scale between
    the Adam and SGD recipes, so the pooled rho partly ranks recipes)."""
    measures = (("hessian_eigenvalue", "λ_max (Hessian)"), ("hessian_trace", "Hessian trace"))
    fig, axes = plt.subplots(len(measures), len(PRIMARY_ENDPOINTS), figsize=(14, 8.5), squeeze=False,
                             layout="constrained")
    colour = colours(runs)
    for row, (measure, label) in enumerate(measures):
        for col, endpoint in enumerate(PRIMARY_ENDPOINTS):
            ax = axes[row, col]
            points = {"all": [], "SGD recipe": []}
            for config, seeds in flat.items():
                config_points = [(f[measure], f[endpoint]) for f in seeds.values() if measure in f]
                ax.scatter(*zip(*config_points), color=colour[config], s=22, alpha=0.8, label=config)
                points["all"] += config_points
                if L.STUDY_RECIPES[config].optimizer == "sgd":
                    points["SGD recipe"] += config_points
            titles = []
            for subset, pairs in points.items():
                rho, p = scipy_stats.spearmanr(*zip(*pairs)) if len(pairs) > 2 else (math.nan, math.nan)
                titles.append(f"{subset}: ρ = {rho:+.2f} ({p_clause('p', p)}, {len(pairs)} runs)")
            ax.set(xlabel=label, ylabel=f"{REPORT_COLUMNS[endpoint]}: accuracy (%)")
            ax.set_title("Spearman " + "\n".join(titles), fontsize=10)
            ax.grid(alpha=0.3)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=min(len(runs), 9))
    fig.suptitle(f"Sharpness vs robustness, one dot per run (exploratory){tag}")
    save(fig, path)


def plot_seed_spread(flat: dict, path: Path, tag: str) -> None:
    """Every seed a dot, per configuration, for the primary endpoints: the seed lottery."""
    fig, axes = plt.subplots(1, len(PRIMARY_ENDPOINTS), figsize=(15, 4.8), layout="constrained")
    generator = np.random.default_rng(0)  # horizontal jitter only
    colour = colours(flat)
    for ax, endpoint in zip(axes, PRIMARY_ENDPOINTS):
        for i, (config, seeds) in enumerate(flat.items()):
            values = [f[endpoint] for f in seeds.values()]
            ax.scatter(i + generator.uniform(-0.15, 0.15, len(values)), values, s=16, alpha=0.7, color=colour[config])
            ax.hlines(np.mean(values), i - 0.3, i + 0.3, color="black")
        ax.set_xticks(range(len(flat)), list(flat), rotation=35, ha="right")
        ax.set(ylabel="test accuracy (%)", title=REPORT_COLUMNS[endpoint])
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Primary endpoints: every seed a dot, bar = mean{tag}")
    save(fig, path)


def plot_loss_directions(runs: dict, path: Path, tag: str) -> None:
    """Training loss along the filter-normalized directions: mean curve per configuration."""
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="tight")
    for config, seeds in runs.items():
        directions = [r["metrics"]["loss_directions"] for r in seeds.values()]
        curves = np.array([c for d in directions for c in d["losses"]])
        ax.plot(directions[0]["alphas"], curves.mean(0), color=colours(runs)[config],
                label=f"{config} ({len(curves)} curves)")
    n_probe = next(iter(next(iter(runs.values())).values()))["evaluation"]["settings"]["n_slice"]  # the slices' images
    ax.set(yscale="log", xlabel="α (weights w + α·d, d a filter-normalized random direction)",
           ylabel=f"cross-entropy on the {n_probe:,} probe images (log)",
           title=f"Loss along filter-normalized directions, mean over directions and seeds{tag}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save(fig, path)


NOISE_AXIS = "noise σ (pixel units, pixels in [0, 1])"
HEADLINE_CONFIGS = ("asam", "sam-0.05", "sam-0.5")  # each against sgd, paired by seed


def plot_headline(flat: dict, path: Path, tag: str, original_study: bool) -> None:
    """The README's figure: the paired difference (config - sgd) with its 95 % t interval, for ASAM and plain SAM,
    under pixel noise against σ (unclipped and clipped), under each MNIST-C corruption, and under PGD against ε."""
    configs = [c for c in HEADLINE_CONFIGS if c in flat and "sgd" in flat]
    if not configs:
        return
    fig, axes = plt.subplots(1, 4, figsize=(19, 5.2), layout="constrained", gridspec_kw={"width_ratios": [1, 1, 2, 1]})
    colour = dict(zip(configs, plt.get_cmap("tab10").colors))  # three clearly different colours

    def differences(config: str, key: str) -> np.ndarray:
        seeds = [s for s in flat[config] if s in flat["sgd"] and key in flat[config][s]]
        return np.array([flat[config][s][key] - flat["sgd"][s][key] for s in seeds])

    def band(ax, x, keys, config, offset=0.0, line=True):
        stats = [statistics.describe(list(differences(config, k))) for k in keys]
        mean = np.array([st["mean"] for st in stats])
        low, high = (np.array([st["ci95"][i] for st in stats]) for i in (0, 1))
        n = stats[0]["n"]
        ax.errorbar(np.asarray(x) + offset, mean, yerr=[mean - low, high - mean], fmt="o-" if line else "o",
                    ms=4, capsize=3, color=colour[config], label=f"{config} - sgd (n={n})")

    sigmas = sorted({k.split("_")[-1] for k in next(iter(flat["sgd"].values())) if k.startswith("pixel_clip_")},
                    key=float)
    for ax, prefix, title in ((axes[0], "pixel_", "Gaussian pixel noise, unclipped"),
                              (axes[1], "pixel_clip_", "Gaussian pixel noise, clipped to [0, 1]")):
        for config in configs:
            band(ax, [float(x) for x in sigmas], [prefix + x for x in sigmas], config)
        if original_study:  # its sigma 0.6 is on normalized images: 0.6 x 0.3081 in pixel units (a fixed pattern)
            ax.axvline(0.6 * L.MNIST_STD, color="grey", ls=":",
                       label=f"original study's σ 0.6 (normalized) = {0.6 * L.MNIST_STD:.2f} in pixel units")
        ax.set(title=title, xlabel=NOISE_AXIS)
    names = list(corruptions.CORRUPTIONS)
    for i, config in enumerate(configs):
        band(axes[2], range(len(names)), [f"corruption_{n}" for n in names], config, offset=0.25 * (i - 1), line=False)
    axes[2].set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=45, ha="right")
    axes[2].set(title="MNIST-C corruptions (benchmark severity)", xlabel="corruption")
    epsilons = sorted({k.split("_")[-1] for k in next(iter(flat["sgd"].values())) if k.startswith("pgd_")}, key=float)
    for config in configs:
        band(axes[3], [float(e) for e in epsilons], [f"pgd_{e}" for e in epsilons], config)
    axes[3].set(title="20-step PGD attack (L∞)", xlabel="ε (L∞ budget, pixel units)")
    for ax in axes:
        ax.axhline(0, color="black", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy difference to sgd (points)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels))
    fig.suptitle("What SAM changes, paired by seed against the same recipe without SAM (sgd): mean difference and "
                 f"95 % t interval, all seeds (exploratory beyond the plan's three endpoints){tag}")
    save(fig, path)


def figures(runs: dict, flat: dict, out_dir: Path, tag: str) -> None:
    plot_curves(runs, out_dir / "noise_curves.png", "Accuracy vs Gaussian pixel noise" + tag,
                [("no clipping", NOISE_AXIS, lambda r: r["metrics"]["pixel"]),
                 ("clipped to [0, 1]", NOISE_AXIS, lambda r: r["metrics"]["pixel_clip"])])
    names = list(next(iter(next(iter(runs.values())).values()))["metrics"]["corruption_sweep"])
    plot_curves(runs, out_dir / "corruption_severity.png", "Accuracy vs corruption severity (1-5)" + tag,
                [(n + ("" if n in corruptions.CORRUPTIONS else " (ext.)"), "severity",
                  lambda r, n=n: {k: v for k, v in r["metrics"]["corruption_sweep"][n].items() if k != "mean"})
                 for n in names])
    plot_curves(runs, out_dir / "adversarial.png", "Accuracy under attack (L∞, pixels in [0, 1])" + tag,
                [(attack.upper(), "ε (L∞ budget, pixel units)", lambda r, a=attack: r["metrics"]["adversarial"][a])
                 for attack in ("fgsm", "pgd")])
    plot_sharpness(runs, flat, out_dir / "sharpness_vs_robustness.png", tag)
    plot_seed_spread(flat, out_dir / "seed_spread.png", tag)
    plot_loss_directions(runs, out_dir / "loss_directions.png", tag)
    plot_headline(flat, out_dir / "headline.png", tag, records_of(runs)[0]["dataset"] == "mnist")


def compare_with(old_dir: Path, runs: dict[str, dict[int, dict]]) -> str:
    """A Markdown table comparing each run with the record of the same pair in ``old_dir`` (an
    earlier study's layout): is the training history the same, and how far apart are the metrics
    both measure in the same way (clean, pixel noise, seed protocol)?"""
    rows = []
    for config, seeds in runs.items():
        for seed, new in seeds.items():
            path = old_dir / f"{config}_seed{seed}.json"
            if not path.is_file():
                continue
            old = json.loads(path.read_text())
            steps = [(a["train_loss"], b["train_loss"]) for a, b in zip(old["history"], new["history"])]
            first = next((i + 1 for i, (a, b) in enumerate(steps) if a != b), None)
            gap = max(abs(a - b) / abs(a) for a, b in steps)
            m, n = old["metrics"], new["metrics"]
            rows.append([config, seed, "identical" if first is None else f"differs from epoch {first}",
                         f"{gap:.1e}", f"{n['clean'] - m['clean']:+.2f}",
                         f"{n['pixel']['0.6'] - m['pixel']['0.6']:+.2f}",
                         f"{n['seed_protocol']['0.6'] - m['seed_protocol']['0.6']:+.2f}"])
    header = ["configuration", "seed", "training history", "max relative train-loss gap", "Δ clean",
              "Δ pixel σ=0.6", "Δ seed σ=0.6"]
    return L.markdown_table(header, rows) if rows else f"no run of {old_dir} has a counterpart here"


def corruption_examples(path: Path) -> None:
    """Every corruption of both sets at the benchmark's level on the first 3 MNIST test digits."""
    images, _ = L.load_mnist(train=False)
    save(corruptions.plot_corruption_examples(images[:3]), path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=list(L.DATASETS), default="mnist")
    parser.add_argument("--study-dir", type=Path, help="records (default results/study/DATASET)")
    parser.add_argument("--out-dir", type=Path, help="summary and figures (default results/summary/DATASET)")
    parser.add_argument("--report", type=Path, help="rewrite this file's study-answer and study-results blocks "
                        "for the dataset (STUDY.md)")
    parser.add_argument("--readme", type=Path, help="rewrite this file's study-headline block for the dataset "
                        "(README.md: the answer table)")
    parser.add_argument("--corruption-examples", type=Path, metavar="PNG",
                        help="also draw every corruption on 3 test digits (results/corruption_examples.png)")
    parser.add_argument("--compare-with", type=Path, metavar="DIR",
                        help="also report how each run compares with the same pair's record in DIR")
    args = parser.parse_args(argv)
    study_dir = args.study_dir or ROOT / "results" / "study" / args.dataset
    out_dir = args.out_dir or ROOT / "results" / "summary" / args.dataset
    if args.corruption_examples:
        corruption_examples(args.corruption_examples)
    runs = load_runs(study_dir) if study_dir.is_dir() else {}
    if not runs:
        sys.exit(0 if args.corruption_examples else f"no evaluated run records in {study_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    quick = any(r.get("quick") for r in records_of(runs))
    tag = "\n[QUICK smoke-test runs: not results]" if quick else ""
    warnings = check_consistency(runs) + (["QUICK smoke-test runs: these numbers are not results"] if quick else [])
    for warning in warnings:
        print(f"WARNING: {warning}")
    flat = {c: {s: flat_metrics(r) for s, r in seeds.items()} for c, seeds in runs.items()}
    confirmatory, sensitivity = (plan_results(flat, args.dataset, confirmatory=c) for c in (True, False))
    configs, paired = exploratory(flat)
    summary = {"dataset": args.dataset, "quick_runs": quick, "warnings": warnings,
               "runs": {c: list(s) for c, s in runs.items()}, "confirmatory": confirmatory,
               "sensitivity": sensitivity, "configurations": configs, "paired": paired}
    write_tables(out_dir, summary)
    report = markdown_report(args.dataset, runs, confirmatory, sensitivity, configs, paired, flat)
    if args.compare_with:
        report += (f"\n\n**Each run against the same pair's record in `{args.compare_with.as_posix()}`** (training "
                   "history and the accuracies both measure the same way; Δ = this run - that record):\n\n"
                   + compare_with(args.compare_with, runs))
    flags = f" --compare-with {args.compare_with.as_posix()}" if args.compare_with else ""
    report += (f"\n\nWritten by `scripts/summarize_study.py --dataset {args.dataset} --report STUDY.md --readme "
               f"README.md{flags}` from `results/study/{args.dataset}/*.json`.")
    answer = plan_answer(args.dataset, confirmatory)
    headline = headline_table(confirmatory)
    print(answer, report, headline, sep="\n\n")
    for path, blocks in ((args.report, {"answer": answer, "results": report}), (args.readme, {"headline": headline})):
        if path:
            if quick:
                sys.exit(f"refusing to write QUICK smoke-test numbers into {path}")
            splice_into_readme(path, blocks, args.dataset)
            print(f"\nrewrote the {args.dataset} study-{'/'.join(blocks)} block(s) of {path}")
    figures(runs, flat, out_dir, tag)
    print(f"\nwrote {out_dir}/study_summary.csv, study_summary.json and the figures "
          f"from {sum(map(len, runs.values()))} runs of {len(runs)} configurations")


if __name__ == "__main__":
    main()
