"""The LeNet-5 + SAM study's results in words and tables: the plan's answer (``study.verdicts``'s rows) in
prose, the Markdown report and the README's answer table, spliced between their markers in README.md and
STUDY.md, and the summary written as study_summary.json and study_summary.csv.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

from scipy import stats as scipy_stats

import lenet_utils as L
from analysis import corruptions, statistics
from study.plan import (
    ALPHA,
    CONFIRMATORY_FIRST_SEED,
    EXPLORATORY_CONTRASTS,
    FLOOR_ACCURACY,
    HEADLINE_CONTRASTS,
    PRIMARY_CONTRASTS,
    PRIMARY_ENDPOINTS,
    REPORT_COLUMNS,
    SHARPNESS,
    STRONG_ATTACK,
    WORST_CASE,
    measured,
    records_of,
)
from study.recipes import STUDY_RECIPES


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
    hessians = [r["metrics"]["hessian"] for r in records]
    lanczos = sum(h.get("method") == "lanczos" for h in hessians)
    method = ("Lanczos" if lanczos == len(hessians) else "the power iteration" if lanczos == 0
              else "the power iteration or Lanczos")
    unconverged = [f"{r['config']} seed {r['seed']}" for r, h in zip(records, hessians) if not h["converged"]]
    left_out = (f" λ_max is left out for {', '.join(unconverged)}: {method} did not converge (the record's "
                "`hessian.converged`)." if unconverged else f" λ_max, by {method}, converged on every run.")
    if any("min_converged" in h for h in hessians):
        left_out += (f" λ_min converged on {sum(bool(h.get('min_converged')) for h in hessians)} of {len(hessians)} "
                     "runs within the evaluation's budget and is reported nowhere else.")
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
    if measured(flat, WORST_CASE):
        lines += [strong_attack_tables(runs, flat), ""]
    if measured(flat, "hessian_eigenvalue"):
        lines += ["**Exploratory: Spearman's rank correlation of λ_max with each endpoint** (one point per run; the "
                  "SGD-recipe runs share label smoothing and weight decay, which set the Hessian's scale):", "",
                  spearman_table(flat), ""]
    return "\n".join(lines).rstrip("\n")


def strong_attack_tables(runs: dict, flat: dict[str, dict[int, dict]]) -> str:
    """PGD-20 (the plan's endpoint) beside the strong attack on the same images, per configuration and for each
    paired contrast: how much a stronger attack lowers the accuracy, and whether the contrasts keep their sign."""
    settings = next(r["metrics"]["strong_attack"] for r in records_of(runs) if "strong_attack" in r["metrics"])
    heads = ["PGD-20", "APGD-CE", "APGD-T", "worst case"]
    body = []
    for c, seeds in flat.items():
        runs_with = [f for f in seeds.values() if WORST_CASE in f]
        if runs_with:
            gap = statistics.describe([f[WORST_CASE] - f["pgd_0.1"] for f in runs_with])
            body.append([c, len(runs_with), *(interval(statistics.describe([f[m] for f in runs_with]))
                                              for m in STRONG_ATTACK), interval(gap, signed=True)])
    lines = [f"**Exploratory: PGD-20 beside a strong attack** (ε = 0.1, the first {settings['n']:,} test images; "
             f"APGD-CE and APGD-T from torchattacks, {settings['steps']} steps, APGD-T against the "
             f"{settings['n_targets']} most likely wrong classes; worst case: an image counts as robust only if "
             "PGD-20, APGD-CE and APGD-T all fail on it; the plan's endpoint stays PGD-20). Accuracy in %, mean "
             "[95 % t CI] over runs:", "",
             L.markdown_table(["configuration", "n", *heads, "worst case - PGD-20 (same runs)"], body), ""]
    body = []
    for a, b in EXPLORATORY_CONTRASTS:
        seeds = [s for s in flat.get(a, {}) if WORST_CASE in flat[a][s] and WORST_CASE in flat.get(b, {}).get(s, {})]
        if seeds:
            body.append([f"{a} - {b}", len(seeds), *(interval(statistics.describe(
                [flat[a][s][m] - flat[b][s][m] for s in seeds]), signed=True) for m in STRONG_ATTACK)])
    lines += ["Paired differences under each attack over the same seeds, mean [95 % t CI] (does a contrast keep "
              "its sign and size under the strong attack?):", "", L.markdown_table(["paired difference", "n", *heads],
                                                                                   body)]
    return "\n".join(lines)


def spearman_table(flat: dict[str, dict[int, dict]]) -> str:
    """Spearman's rank correlation of λ_max with each primary endpoint, over all runs and over the SGD-recipe runs
    alone (exploratory; the figure sharpness_vs_robustness.png draws the same points)."""
    body = []
    for subset, keep in (("all runs", lambda c: True),
                         ("SGD-recipe runs", lambda c: STUDY_RECIPES[c].optimizer == "sgd")):
        pairs = {e: [(f["hessian_eigenvalue"], f[e]) for c, seeds in flat.items() if keep(c)
                     for f in seeds.values() if "hessian_eigenvalue" in f] for e in PRIMARY_ENDPOINTS}
        cells = []
        for points in pairs.values():
            rho, p = scipy_stats.spearmanr(*zip(*points)) if len(points) > 2 else (math.nan, math.nan)
            cells.append(f"{rho:+.2f} ({p_clause('p', p)})")
        body.append([subset, len(next(iter(pairs.values()))), *cells])
    return L.markdown_table(["runs", "n", *(REPORT_COLUMNS[e] for e in PRIMARY_ENDPOINTS)], body)


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


def readme_markers(dataset: str, block: str = "results") -> tuple[str, str]:
    return f"<!-- study-{block}:{dataset}:begin -->", f"<!-- study-{block}:{dataset}:end -->"


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
                         f"{n['fixed_pattern_protocol']['0.6'] - m['fixed_pattern_protocol']['0.6']:+.2f}"])
    header = ["configuration", "seed", "training history", "max relative train-loss gap", "Δ clean",
              "Δ pixel σ=0.6", "Δ fixed-pattern σ=0.6"]
    return L.markdown_table(header, rows) if rows else f"no run of {old_dir} has a counterpart here"

