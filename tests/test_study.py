"""scripts/summarize_study.py on synthetic records: the plan's constants against
results/ANALYSIS_PLAN.md, the plan's tests on numbers with known answers, and the summary, README
block and figures end to end."""

import csv
import json
import math
import re

import pytest
from scipy import stats

import lenet_utils as L
from analysis.corruptions import CORRUPTIONS, EXTENDED_CORRUPTIONS
from conftest import MNIST_ROOT, ROOT, load_script, needs_mnist
from study import plan, report, verdicts

S = load_script("summarize_study")

PLAN = (ROOT / "results" / "ANALYSIS_PLAN.md").read_text()
SIGMAS = [f"{0.1 * i:.1f}" for i in range(11)]
EPSILONS = ["0.05", "0.1", "0.2", "0.3"]


def wiggle(seed: int, salt: int = 0) -> float:
    """Deterministic seed-to-seed noise in [-1, 1]."""
    return math.sin(1.7 * seed + 0.9 * salt)


def fake_record(config: str, seed: int, accuracy: float = 97.0, shifts: dict | None = None, *,
                quick: bool = False, code: str = "abc") -> dict:
    """A full evaluated record (run_study.py's layout) with made-up numbers that vary by seed;
    ``shifts`` adds to the primary endpoints and ``clean`` (by flat metric name)."""
    shifts = shifts or {}
    acc = accuracy + wiggle(seed)
    pixel = {s: acc - 60 * float(s) ** 2 + (shifts.get("pixel_0.6", 0) if s == "0.6" else 0) for s in SIGMAS}
    names = [*CORRUPTIONS, *EXTENDED_CORRUPTIONS]
    corr = {n: acc - 5 - i % 7 + wiggle(seed, i) for i, n in enumerate(names)}
    corr["mnist_c_mean"] = sum(corr[n] for n in CORRUPTIONS) / len(CORRUPTIONS) + shifts.get("mnist_c_mean", 0)
    corr["extended_mean"] = sum(corr[n] for n in EXTENDED_CORRUPTIONS) / len(EXTENDED_CORRUPTIONS)
    sweep = {n: {**{str(k): corr[n] + 2 - k for k in range(1, 6)}, "mean": corr[n] - 1} for n in names}
    pgd = {e: acc - 300 * float(e) + (shifts.get("pgd_0.1", 0) if e == "0.1" else 0) for e in EPSILONS}
    sharp = 30.0 if "sam" in config else 50.0
    record = {
        "config": config, "seed": seed, "dataset": "mnist", "quick": quick, "hyperparameters": {"lr": 0.1},
        "sizes": {"train": 55000, "val": 5000, "test": 10000, "probe": 1000}, "history": [],
        "training_code": {"git_commit": "x"}, "seconds": {"train": 3600.0, "evaluate": 60.0}, "threads": 1,
        "metrics": {
            "clean": acc + 2 + shifts.get("clean", 0), "normalized_clean": acc + 1.9,
            "fixed_pattern_protocol": {s: acc - 20 * float(s) for s in ("0.4", "0.6", "0.8")},
            "pixel": pixel, "pixel_clip": {s: v + 5 * float(s) for s, v in pixel.items()},
            "corruptions": corr, "corruption_sweep": sweep,
            "adversarial": {"fgsm": {e: v + 5 for e, v in pgd.items()}, "pgd": pgd, "n_fgsm": 10000,
                            "n_pgd": 1000, "pgd_steps": 20, "epsilons": [float(e) for e in EPSILONS]},
            "hessian": {"eigenvalue": sharp + wiggle(seed, len(config)), "estimates": [sharp], "iterations": 1,
                        "converged": True},
            "hessian_trace": {"mean": 10 * sharp + wiggle(seed, 2), "stderr": 1.0},
            "loss_directions": {"alphas": [-1.0, 0.0, 1.0], "rise": sharp / 10,
                                "losses": [[0.5, 0.05, 0.6], [0.4, 0.05, 0.5]]}},
        "evaluation": {"settings": {"n_pgd": 1000, "n_slice": 512},
                       "code": {"git_commit": f"c{seed}", "analysis": code}, "threads": 1}}
    if "sam" in config:
        record["perturbation_norm"] = {"mean": 0.05, "min": 0.04, "max": 0.06}
    return record


def blocks(dataset: str, text: str = "old") -> str:
    """A README's two study blocks of ``dataset`` (answer, then results), each holding ``text``."""
    return "\n\n".join(f"{begin}\n{text}\n{end}"
                       for begin, end in (report.readme_markers(dataset, b) for b in ("answer", "results")))


def flat_of(records: list[dict]) -> dict[str, dict[int, dict]]:
    flat: dict[str, dict[int, dict]] = {}
    for r in records:
        flat.setdefault(r["config"], {})[r["seed"]] = plan.flat_metrics(r)
    return flat


# asam - sgd: +2 on pixel_0.6, ~0 on mnist_c_mean (tiny spread), +-6 on pgd_0.1 (noisy)
KNOWN = {"pixel_0.6": lambda s: 2 + 0.1 * wiggle(s, 3), "mnist_c_mean": lambda s: 0.02 * wiggle(s, 4),
         "pgd_0.1": lambda s: 6.0 * (-1) ** s + 0.1 * wiggle(s, 5), "clean": lambda s: 0.05 * wiggle(s, 6)}


def study(seeds) -> list[dict]:
    return [r for s in seeds for r in (fake_record("sgd", s),
                                       fake_record("asam", s, shifts={m: f(s) for m, f in KNOWN.items()}))]


def rows_by(rows: list[dict], family: str) -> dict[tuple[str, str], dict]:
    return {(r["contrast"], r["metric"]): r for r in rows if r["family"] == family}


# ----------------------------------------------------------------------------- the plan


def test_plan_constants_match_the_plan():
    section = PLAN.split("## Primary endpoints")[1].split("\n## ")[0]
    assert re.findall(r"^\| `([^`]+)` \|", section, re.M) == list(plan.PRIMARY_ENDPOINTS)
    margins = {m: float(v) for m, v in re.findall(r"^\| `([^`]+)` \| ([\d.]+) \|$", PLAN, re.M)}
    assert margins == {**plan.PRIMARY_ENDPOINTS, "clean": plan.CLEAN_MARGIN}
    contrasts = lambda text: [tuple(c.split(" - ")) for c in re.findall(r"`([\w.-]+ - [\w.-]+)`", text)]  # noqa: E731
    primary = re.search(r"\*\*Primary family.*?(?=\n- \*\*)", PLAN, re.S).group()
    secondary = re.search(r"\*\*Secondary family.*?(?=\n- \*\*)", PLAN, re.S).group()
    assert contrasts(primary) == list(plan.PRIMARY_CONTRASTS)
    assert contrasts(secondary) == list(plan.SECONDARY_CONTRASTS)
    assert re.search(r"lower for `(\w+)` than for `(\w+)`", PLAN).groups() == plan.MANIPULATION_CHECK[:2]
    seeds = PLAN.split("## Seeds")[1].split("\n## ")[0]
    ranges = re.findall(r"seeds (\d+)-(\d+) for", seeds)
    assert {int(a) for a, _ in ranges} == {plan.CONFIRMATORY_FIRST_SEED["mnist"]}
    assert [int(b) + 1 for _, b in ranges] == [plan.PLANNED_SEEDS["mnist"]["asam"], plan.PLANNED_SEEDS["mnist"]["*"]]
    assert plan.PLANNED_SEEDS["mnist"]["asam"] == plan.PLANNED_SEEDS["mnist"]["sgd"]
    fashion = PLAN.split("## Replication on Fashion-MNIST")[1].split("\n## ")[0]
    last, configs, pair_last, *pair = re.search(
        r"\(seeds 0-(\d+), configurations ([\w.,\s-]+); seeds 0-(\d+) for (\w+) and (\w+)\)", fashion).groups()
    planned = {**{c.strip(): int(last) + 1 for c in configs.split(",")}, **{c: int(pair_last) + 1 for c in pair}}
    assert plan.PLANNED_SEEDS["fashion-mnist"] == {**planned, "*": 0}
    assert int(re.search(r"first confirmatory seed (\d+)", fashion).group(1)) == plan.CONFIRMATORY_FIRST_SEED[
        "fashion-mnist"]
    assert {float(a) for a in re.findall(r"alpha (0\.\d+)", PLAN)} == {plan.ALPHA}


# ----------------------------------------------------------------------------- the plan's tests


def test_plan_results_known_answers():
    records = study(range(20))  # seeds 3-19 confirmatory: n = 17 = planned
    rows = verdicts.plan_results(flat_of(records), "mnist", confirmatory=True)
    primary = rows_by(rows, "primary")
    assert set(primary) == {("asam - sgd", m) for m in plan.PRIMARY_ENDPOINTS}
    assert all(r["n"] == r["planned_n"] == 17 and not r["interim"] for r in primary.values())
    pixel, corr, pgd = (primary["asam - sgd", m] for m in plan.PRIMARY_ENDPOINTS)
    differences = [KNOWN["pixel_0.6"](s) for s in range(3, 20)]
    assert pixel["mean_difference"] == pytest.approx(sum(differences) / 17)
    assert pixel["verdict"] == "supported (asam > sgd)"
    assert corr["verdict"] == "no effect (equivalent within ±1)"
    assert pgd["verdict"] == "inconclusive"
    # Holm by hand over the family's three paired-t p-values
    flat = flat_of([r for r in records if r["seed"] >= 3])
    p = {m: stats.ttest_rel([flat["asam"][s][m] for s in range(3, 20)],
                            [flat["sgd"][s][m] for s in range(3, 20)]).pvalue for m in plan.PRIMARY_ENDPOINTS}
    order = sorted(p, key=p.get)
    holm, running = {}, 0.0
    for i, m in enumerate(order):
        running = max(running, min(1.0, (3 - i) * p[m]))
        holm[m] = running
    for m in plan.PRIMARY_ENDPOINTS:
        assert primary["asam - sgd", m]["p"] == pytest.approx(p[m])
        assert primary["asam - sgd", m]["p_holm"] == pytest.approx(holm[m])
    assert pixel["p_holm"] == pytest.approx(3 * p["pixel_0.6"])  # the smallest of three
    # configurations without runs: missing, outside the Holm family
    secondary = rows_by(rows, "secondary")
    assert len(secondary) == 3 * len(plan.SECONDARY_CONTRASTS)
    assert all(r["verdict"].startswith("missing") and "p" not in r for r in secondary.values())
    check = rows_by(rows, "manipulation check")["asam - sgd", "hessian_eigenvalue"]
    assert check["verdict"] == "supported (asam < sgd)" and "p_holm" not in check
    assert rows_by(rows, "clean accuracy")["asam - sgd", "clean"]["margin"] == plan.CLEAN_MARGIN


def test_v3_constants_match_the_amendment():
    v3 = PLAN.split("## Amendment v3")[1]
    runs = v3.split("### New runs")[1].split("\n### ")[0]
    rhos = re.search(r"`asam` recipe with rho ([\d.]+), ([\d.]+) and ([\d.]+) \(rho ([\d.]+) is `asam`", runs)
    assert sorted(map(float, rhos.groups())) == sorted(plan.V3_DOSE_CONFIGS.values())
    assert plan.V3_DOSE_CONFIGS["asam"] == 2.0 and all(plan.V3_DOSE_CONFIGS[f"asam-{r}"] == float(r)
                                                       for r in ("0.5", "1.0", "4.0"))
    assert re.search(r"Seeds (\d+)-(\d+)\.", runs).groups() == ("3", "12")
    assert plan.V3_DOSE_SEEDS == range(3, 13)
    assert "one third of the endpoint's margin" in v3 and plan.V3_SLOPE_MARGIN_FRACTION == pytest.approx(1 / 3)
    controls = v3.split("### Controls family")[1].split("\n### ")[0]
    found = re.findall(r"^- `([\w.-]+) - ([\w.-]+)`, seeds (\d+)-(\d+)", controls, re.M)
    assert [(a, b) for a, b, _, _ in found] == list(plan.V3_CONTROL_CONTRASTS)
    assert {(a, b): range(int(lo), int(hi) + 1) for a, b, lo, hi in found} == plan.V3_CONTROL_SEEDS
    for config in ("asam-0.5", "asam-1.0", "asam-4.0", "swa-0.02"):  # seeds 3-12 as "0..12" with none below 3
        assert plan.planned_seeds("mnist", config) == 13
    assert plan.planned_seeds("mnist", "sam-0.5") == 10 and "radii r 0.5 and 2.0" in v3  # v2's seeds; 10-19 are v3's
    assert plan.V3_ADAPTIVE_SHARPNESS == "adaptive_sharpness_2.0"


def v3_study(seeds, slope: dict[str, float]) -> list[dict]:
    """sgd, and asam at each rho with endpoint = sgd's + slope * log2(rho) + seed noise (so asam - sgd at rho 2
    is about +slope); lambda_max falls by half per doubling of rho."""
    records = []
    for s in seeds:
        records.append(fake_record("sgd", s))
        for config, rho in plan.V3_DOSE_CONFIGS.items():
            shifts = {m: k * math.log2(rho) + 0.05 * wiggle(s, int(4 * rho)) for m, k in slope.items()}
            r = fake_record(config, s, shifts=shifts)
            r["metrics"]["hessian"]["eigenvalue"] = 40 / rho * (1 + 0.01 * wiggle(s, 9))
            records.append(r)
    return records


def test_v3_dose_response_known_slopes():
    slope = {"pixel_0.6": 1.5, "mnist_c_mean": 0.0, "pgd_0.1": -3.0}  # pgd: asam - sgd at rho 2 is -3
    records = v3_study(range(3, 13), slope)
    rows = verdicts.plan_results(flat_of(records), "mnist", confirmatory=True)
    dose = {r["metric"]: r for r in rows if r["family"] == "v3 dose-response"}
    assert set(dose) == set(plan.PRIMARY_ENDPOINTS)
    for m, k in slope.items():
        assert dose[m]["n"] == 10 and not dose[m]["interim"]
        assert dose[m]["mean_difference"] == pytest.approx(k, abs=0.05)
        assert dose[m]["margin"] == pytest.approx(plan.PRIMARY_ENDPOINTS[m] / 3)
    # pixel: asam - sgd > 0 and the slope > 0; pgd: asam - sgd < 0 and the slope < 0: both effects grow with rho
    assert dose["pixel_0.6"]["verdict"] == dose["pgd_0.1"]["verdict"] == "supported (grows with rho)"
    assert dose["mnist_c_mean"]["verdict"].startswith("no effect")
    # the slope is the least-squares slope of the per-seed differences, tested against 0 (Holm over the family)
    x = [math.log2(r) for r in plan.V3_DOSE_CONFIGS.values()]
    flat = flat_of(records)
    per_seed = [stats.linregress(x, [flat[c][s]["pixel_0.6"] - flat["sgd"][s]["pixel_0.6"]
                                     for c in plan.V3_DOSE_CONFIGS]).slope for s in range(3, 13)]
    assert dose["pixel_0.6"]["p"] == pytest.approx(stats.ttest_1samp(per_seed, 0).pvalue)
    assert dose["pixel_0.6"]["p_holm"] >= dose["pixel_0.6"]["p"]
    check = next(r for r in rows if r["family"] == "v3 manipulation check" and r["metric"] == "hessian_eigenvalue")
    assert check["mean_difference"] == pytest.approx(-math.log(2), abs=0.01)
    assert check["verdict"] == "supported (flatter with rho)" and "p_holm" not in check
    # the controls are missing without their configurations; a seed without every rho leaves the slope test
    assert all(r["verdict"].startswith("missing") for r in rows if r["family"] == "v3 controls")
    fewer = [r for r in records if not (r["config"] == "asam-4.0" and r["seed"] == 3)]
    dose = {r["metric"]: r for r in verdicts.plan_results(flat_of(fewer), "mnist", True)
            if r["family"] == "v3 dose-response"}
    assert dose["pixel_0.6"]["n"] == 9 and dose["pixel_0.6"]["interim"]
    assert "The v3 amendment" in report.plan_answer("mnist", verdicts.plan_results(flat_of(fewer), "mnist", True))


def test_v3_controls_use_their_own_seeds():
    records = [fake_record(c, s, shifts={"pixel_0.6": 3.0 * (c == "asam") + 0.3 * wiggle(s, 7)})
               for s in range(0, 20) for c in ("sgd", "asam", "sam-0.5", "swa-0.02")]
    rows = [r for r in verdicts.plan_results(flat_of(records), "mnist", True) if r["family"] == "v3 controls"]
    by = {(r["contrast"], r["metric"]): r for r in rows}
    assert len(rows) == 9 and all(not r["interim"] for r in rows)
    assert by["asam - sam-0.5", "pixel_0.6"]["seeds"] == list(range(10, 20))
    assert by["swa-0.02 - sgd", "pixel_0.6"]["seeds"] == list(range(3, 13))
    assert by["asam - swa-0.02", "pixel_0.6"]["seeds"] == list(range(3, 13))
    assert by["asam - sam-0.5", "pixel_0.6"]["verdict"] == "supported (asam > sam-0.5)"
    assert all("p_holm" in r for r in rows)
    v2 = rows_by(verdicts.plan_results(flat_of(records), "mnist", True), "secondary")["sam-0.5 - sgd", "pixel_0.6"]
    assert v2["seeds"] == list(range(3, 10))  # the v2 family keeps its planned seeds
    sensitivity = verdicts.plan_results(flat_of(records), "mnist", confirmatory=False)
    assert not any(r["family"].startswith("v3") for r in sensitivity)


def test_seeds_0_to_2_are_sensitivity_only_and_interim():
    flat = flat_of(study(range(3)))
    confirmatory = verdicts.plan_results(flat, "mnist", confirmatory=True)
    assert confirmatory and all(r["verdict"].startswith("missing") for r in confirmatory)
    assert all(r["n"] == 0 for r in confirmatory)
    tested = [r for r in verdicts.plan_results(flat, "mnist", confirmatory=False) if "p" in r]
    assert {(r["family"], r["metric"]) for r in tested} >= {("primary", m) for m in plan.PRIMARY_ENDPOINTS}
    assert all(r["n"] == 3 and r["planned_n"] == 20 and r["interim"] for r in tested)
    assert "(interim)" in report.plan_table(tested)


def test_a_holm_family_stays_interim_until_every_test_in_it_is_complete():
    """Holm over part of a family understates the adjusted p-values: complete contrasts inside an
    incomplete family are interim; they are final once every planned contrast has its seeds."""
    controls = [fake_record(c, s) for c in ("sgd-2x", "swa") for s in range(10)]
    rows = verdicts.plan_results(flat_of(study(range(20)) + controls), "mnist", confirmatory=True)
    secondary = rows_by(rows, "secondary")
    tested = [r for r in secondary.values() if "p" in r]
    assert {r["contrast"] for r in tested} == {"asam - sgd-2x", "asam - swa"}
    assert all(r["n"] == r["planned_n"] == 7 and r["interim"] for r in tested)
    assert not any(r["interim"] for r in rows_by(rows, "primary").values())  # the primary family is complete
    answer = report.plan_answer("mnist", rows)
    assert answer.count("The secondary family on mnist (interim: Holm over the tests that exist so far") == 1
    assert "15 planned tests, Holm-adjusted together):" in answer
    assert "- `asam - sgd-2x` (n = 7 of 7 planned seeds):\n  - pixel σ=0.6: **" in answer
    for r in tested:  # Holm over all 15 planned tests can reach at most 15 times the unadjusted p
        assert r["p_holm_bound"] == pytest.approx(min(1.0, 15 * r["p"])) and r["p_holm"] <= r["p_holm_bound"]
    assert "p (Holm, whole family) " in answer
    assert ("Not yet run with two confirmatory seeds: `sam-0.05 - sgd`, `sam-0.5 - sgd`, "
            "`adam-sam - baseline`.") in answer
    others = [fake_record(c, s) for c in ("baseline", "adam-sam", "sam-0.05", "sam-0.5") for s in range(10)]
    # sam-0.5 lacks seed 9
    rows = verdicts.plan_results(flat_of(study(range(20)) + controls + others[:-1]), "mnist", True)
    assert all("p" in r and r["interim"] and "p_holm_bound" not in r for r in rows_by(rows, "secondary").values())
    assert ("The secondary family on mnist (interim: every planned test exists, but not yet with all of its planned "
            "seeds") in report.plan_answer("mnist", rows)
    rows = verdicts.plan_results(flat_of(study(range(20)) + controls + others), "mnist", True)
    complete = rows_by(rows, "secondary")
    assert len(complete) == 3 * len(plan.SECONDARY_CONTRASTS)
    assert all("p" in r and not r["interim"] and "p_holm_bound" not in r for r in complete.values())
    answer = report.plan_answer("mnist", rows)
    assert "The secondary family on mnist (final; 15 planned tests" in answer and "Not yet run" not in answer
    assert answer.count("  - MNIST-C mean: **") == len(plan.SECONDARY_CONTRASTS)


def test_plan_answer_states_each_verdict_and_the_rule():
    flat = flat_of(study(range(20)))
    answer = report.plan_answer("mnist", verdicts.plan_results(flat, "mnist", confirmatory=True))
    assert answer.startswith("**The plan's answer on mnist** (final: all 17 planned seeds;")
    assert "- pixel σ=0.6: **supported (asam > sgd)**, +2.0" in answer
    assert "- MNIST-C mean: **no effect (equivalent within ±1)**" in answer
    assert "- PGD ε=0.1: **inconclusive**" in answer and "- λ_max (Hessian): **supported (asam < sgd)**" in answer
    assert ("`asam` is more robust than `sgd` on: pixel σ=0.6; less robust on: none; equivalent within the margin "
            "on: MNIST-C mean; inconclusive on: PGD ε=0.1.") in answer
    assert "The manipulation check holds" in answer
    for s in range(3, 20):  # asam now as sharp as sgd, plus a little: the check fails
        flat["asam"][s]["hessian_eigenvalue"] = flat["sgd"][s]["hessian_eigenvalue"] + 1 + 0.1 * wiggle(s)
    answer = report.plan_answer("mnist", verdicts.plan_results(flat, "mnist", confirmatory=True))
    assert "- λ_max (Hessian): **supported (asam > sgd)**" in answer
    assert "check is not met (supported (asam > sgd))" in answer
    interim = report.plan_answer("mnist", verdicts.plan_results(flat_of(study(range(6))), "mnist", confirmatory=True))
    assert interim.startswith("**The plan's answer on mnist** (interim: n = 3 of the 17 planned seeds")
    assert "none yet" in report.plan_answer("mnist", verdicts.plan_results(flat_of(study(range(3))), "mnist",
                                                                           confirmatory=True))


def test_fashion_mnist_seeds_are_all_confirmatory_and_unplanned_contrasts_left_out(tmp_path):
    records = study(range(5)) + [fake_record(c, s) for c in ("sam-0.05", "adam-sam", "baseline") for s in range(5)]
    rows = verdicts.plan_results(flat_of(records), "fashion-mnist", confirmatory=True)
    primary = rows_by(rows, "primary")
    assert all(r["n"] == 5 and r["planned_n"] == 8 and r["interim"] for r in primary.values())
    assert not any("p_holm_bound" in r for r in primary.values())  # every test exists: only seeds are missing
    assert {c for c, _ in rows_by(rows, "secondary")} == {"sam-0.05 - sgd"}  # adam-sam is not in its plan
    assert all(r["planned_n"] == 5 for r in rows_by(rows, "secondary").values())
    readme = tmp_path / "README.md"
    readme.write_text(blocks("fashion-mnist"))
    S.main(["--dataset", "fashion-mnist", "--study-dir", str(write(tmp_path / "study", records)),
            "--out-dir", str(tmp_path / "out"), "--report", str(readme)])
    block = readme.read_text()
    assert "**The plan's answer on fashion-mnist** (interim: n = 5 of the 8 planned seeds" in block
    assert "whole family" not in block.split("<!-- study-results")[0]
    assert "**The plan's tests, confirmatory seeds (>= 0)**" in block
    assert "Sensitivity analysis" not in block  # every seed is confirmatory: it would repeat the table


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
def test_identical_paired_values_stay_out_of_holm():
    records = [fake_record("sgd", s) for s in range(3, 8)]
    records += [fake_record("asam", s, shifts={"pgd_0.1": KNOWN["pgd_0.1"](s)}) for s in range(3, 8)]
    primary = rows_by(verdicts.plan_results(flat_of(records), "mnist", confirmatory=True), "primary")
    pgd, pixel = primary["asam - sgd", "pgd_0.1"], primary["asam - sgd", "pixel_0.6"]
    assert math.isnan(pixel["p"]) and math.isnan(pixel["p_holm"]) and pixel["verdict"].startswith("no effect")
    assert pgd["p_holm"] == pgd["p"] and pgd["verdict"] == "inconclusive"  # a family of one test
    assert "| nan" not in report.plan_table(list(primary.values()))


def test_an_endpoint_at_the_floor_is_flagged_and_identical_values_read_as_such():
    """PGD at 0 % for both configurations (as on Fashion-MNIST): the plan's TOST calls it equivalent,
    and the summary flags that the endpoint had no room to differ, with no p = '-' in the prose."""
    records = [fake_record(c, s) for c in ("sgd", "asam") for s in range(3, 8)]
    for r in records:
        r["metrics"]["adversarial"]["pgd"]["0.1"] = 0.0
    rows = verdicts.plan_results(flat_of(records), "mnist", confirmatory=True)
    primary = rows_by(rows, "primary")
    pgd = primary["asam - sgd", "pgd_0.1"]
    assert pgd["floor"] and pgd["verdict"] == "no effect (equivalent within ±2)" and math.isnan(pgd["p"])
    assert not any(r["floor"] for (_, m), r in primary.items() if m != "pgd_0.1")
    assert "no effect (equivalent within ±2) (at the floor) (interim)" in report.plan_table(list(primary.values()))
    answer = report.plan_answer("mnist", rows)
    assert ("- PGD ε=0.1 (at the floor: every run <= 1 %): **no effect (equivalent within ±2)**, +0.00 [+0.00, +0.00] "
            "(identical on every seed, no t test; p (sign-flip) = 1.000; TOST p < 0.001 against ±2).") in answer
    assert "= -" not in answer


def test_a_supported_difference_inside_the_margin_is_flagged():
    """asam above sgd by 0.2 points under PGD on every seed: the plan calls it supported, and its TOST puts it
    inside the ±2 margin; the summary says both (as for Fashion-MNIST's PGD and MNIST's clean accuracy)."""
    records = [fake_record("sgd", s) for s in range(3, 10)]
    records += [fake_record("asam", s, shifts={"pgd_0.1": 0.2 + 0.01 * wiggle(s, 7)}) for s in range(3, 10)]
    rows = verdicts.plan_results(flat_of(records), "mnist", confirmatory=True)
    primary = rows_by(rows, "primary")
    pgd = primary["asam - sgd", "pgd_0.1"]
    assert pgd["verdict"] == "supported (asam > sgd)" and pgd["p_equivalence"] < plan.ALPHA
    assert not any(report.inside_margin(r) for (_, m), r in primary.items() if m != "pgd_0.1")
    assert "supported (asam > sgd) (inside the margin) (interim)" in report.plan_table(list(primary.values()))
    answer = report.plan_answer("mnist", rows)
    assert "- PGD ε=0.1 (inside the ±2 margin): **supported (asam > sgd)**, +0.20 [" in answer
    assert "more robust than `sgd` on: PGD ε=0.1 (inside the ±2 margin);" in answer
    assert "TOST p < 0.001 against ±2)." in answer


def test_an_unconverged_eigenvalue_is_left_out_and_named():
    """A power iteration that stopped without converging (as the Adam baseline's seed 3 on MNIST did) records
    its last estimate, which is not λ_max: the summary leaves that value out, says so, and keeps the rest."""
    records = study(range(3, 9))
    sgd = next(r for r in records if (r["config"], r["seed"]) == ("sgd", 4))
    sgd["metrics"]["hessian"] |= {"eigenvalue": 1e-4, "converged": False}
    flat = flat_of(records)
    assert "hessian_eigenvalue" not in flat["sgd"][4] and "clean" in flat["sgd"][4]
    check = next(r for r in verdicts.plan_results(flat, "mnist", confirmatory=True)
                 if r["family"] == "manipulation check")
    assert check["n"] == 5 and check["planned_n"] == 17
    configs, paired = verdicts.exploratory(flat)
    assert configs["sgd"]["hessian_eigenvalue"]["seeds"] == [3, 5, 6, 7, 8]
    assert paired["asam - sgd"]["hessian_eigenvalue"]["seeds"] == [3, 5, 6, 7, 8]
    assert paired["asam - sgd"]["clean"]["n"] == 6
    runs = {c: {r["seed"]: r for r in records if r["config"] == c} for c in ("sgd", "asam")}
    assert "λ_max is left out for sgd seed 4: the power iteration did not converge" in report.provenance(runs)
    assert "left out" not in report.provenance({"asam": runs["asam"]})


def test_the_strong_attack_tables_pair_pgd_with_the_strong_attack_on_the_same_runs():
    """Known answers: the strong attack takes 3 points more than PGD-20 from sgd and 4 from asam, so asam - sgd is
    1 point lower under the worst case than under PGD-20; a run without the strong attack (evaluated before v3)
    leaves both columns, not only the strong attack's."""
    records = study(range(3, 9))
    for r in records:
        pgd, drop = r["metrics"]["adversarial"]["pgd"]["0.1"], 4.0 if r["config"] == "asam" else 3.0
        r["metrics"]["strong_attack"] = {"apgd_ce": {"0.1": pgd - 1}, "apgd_t": {"0.1": pgd - 2},
                                         "worst_case": {"0.1": pgd - drop}, "n": 1000, "steps": 50, "n_targets": 3,
                                         "epsilons": [0.1]}
    old = next(r for r in records if (r["config"], r["seed"]) == ("sgd", 8))
    del old["metrics"]["strong_attack"]
    flat = flat_of(records)
    runs = {c: {r["seed"]: r for r in records if r["config"] == c} for c in ("sgd", "asam")}
    table = report.strong_attack_tables(runs, flat)
    sgd_row = next(line for line in table.splitlines() if line.startswith("| sgd |"))
    assert sgd_row.startswith("| sgd | 5 |") and sgd_row.endswith("| -3.00 [-3.00, -3.00] |")
    assert next(line for line in table.splitlines() if line.startswith("| asam |")).endswith("| -4.00 [-4.00, -4.00] |")
    pgd = [flat["asam"][s]["pgd_0.1"] - flat["sgd"][s]["pgd_0.1"] for s in range(3, 8)]
    paired = next(line for line in table.splitlines() if line.startswith("| asam - sgd |")).split(" | ")
    assert paired[1] == "5" and paired[2].startswith(f"{sum(pgd) / 5:+.2f} [")
    assert paired[5].startswith(f"{sum(pgd) / 5 - 1:+.2f} [")
    assert "50 steps" in table and "3 most likely wrong classes" in table


# ----------------------------------------------------------------------------- records


def write(folder, records):
    folder.mkdir(parents=True, exist_ok=True)
    for r in records:
        (folder / f"{r['config']}-seed{r['seed']}.json").write_text(json.dumps(r))
    return folder


def test_unevaluated_records_are_left_out_with_a_note(tmp_path, capsys):
    trained = {k: v for k, v in fake_record("sgd", 4).items() if k not in ("metrics", "evaluation")}
    runs = plan.load_runs(write(tmp_path, [fake_record("asam", 3), fake_record("sgd", 3), trained]))
    assert {c: list(s) for c, s in runs.items()} == {"sgd": [3], "asam": [3]}  # study order
    assert "sgd-seed4.json is trained but not evaluated" in capsys.readouterr().out


def test_different_evaluation_code_warns(tmp_path, capsys):
    same = plan.load_runs(write(tmp_path / "a", [fake_record("asam", 3), fake_record("sgd", 3)]))
    assert plan.check_consistency(same) == []  # the git commit alone may differ
    mixed = write(tmp_path / "b", [fake_record("asam", 3), fake_record("sgd", 3, code="other")])
    assert any("different evaluation code" in w for w in plan.check_consistency(plan.load_runs(mixed)))
    S.main(["--study-dir", str(mixed), "--out-dir", str(tmp_path / "out")])
    assert "WARNING: the records were evaluated with different evaluation code" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "study_summary.json").read_text())["warnings"]


# ----------------------------------------------------------------------------- end to end

FIGURES = ("noise_curves.png", "corruption_severity.png", "adversarial.png", "sharpness_vs_robustness.png",
           "seed_spread.png", "loss_directions.png")


def test_main_end_to_end(tmp_path):
    # swa only has seeds 0-1: "asam - swa" shares no seeds with asam's 3-6
    records = study(range(3, 7)) + [fake_record("swa", s) for s in (0, 1)]
    study_dir, out = write(tmp_path / "study", records), tmp_path / "out"
    (answer_begin, answer_end), (begin, end) = (report.readme_markers("mnist", b) for b in ("answer", "results"))
    other = blocks("fashion-mnist", "keep")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{answer_begin}\nold answer\n{answer_end}\n\nbefore\n\n"
                      f"{begin}\nold numbers\n{end}\n\nafter\n{other}\n")
    argv = ["--study-dir", str(study_dir), "--out-dir", str(out), "--report", str(readme)]
    S.main(argv)
    text = readme.read_text()
    head, rest = text.split(begin)
    block, tail = rest.split(end)
    assert head.endswith(f"{answer_end}\n\nbefore\n\n") and tail == f"\n\nafter\n{other}\n"
    answer = head.split(answer_begin)[1].split(answer_end)[0]
    assert answer.startswith("\n\n**The plan's answer on mnist** (interim: n = 4 of the 17 planned seeds")
    # asam is flatter in every made-up record, but 4 seeds cannot reach sign-flip p < 0.05
    assert answer.endswith("The manipulation check is not met so far (inconclusive), so these results do not speak "
                           "to flat minima.\n\n")
    assert block.startswith("\n\nEvaluated runs on mnist (10): sgd: 4 (seeds 3-6); swa: 2 (seeds 0-1)")
    assert block.endswith("from `results/study/mnist/*.json`.\n\n") and "old numbers" not in block
    assert ("Code (from the records): trained with commit `x` (10); evaluated with `c3` (2), `c4` (2), `c5` (2), "
            "`c6` (2), `c0` (1), `c1` (1). Wall time in the records, summed over runs: 10.0 h of training and 0.2 h "
            "of (latest) evaluation, on 1 thread(s) per run.") in block
    assert "**The plan's tests, confirmatory seeds (>= 3)**" in block
    assert "| primary | asam - sgd | pixel_0.6 | 4 (17) |" in block
    assert "**Exploratory: mean [95 % t CI] per configuration**" in block
    assert "**Exploratory: paired differences under each corruption:**" in block and "| shot noise |" in block
    S.main(argv)
    assert readme.read_text() == text  # idempotent

    summary = json.loads((out / "study_summary.json").read_text())
    assert {"confirmatory", "sensitivity", "configurations", "paired"} <= set(summary)
    assert summary["runs"] == {"sgd": [3, 4, 5, 6], "swa": [0, 1], "asam": [3, 4, 5, 6]}
    assert summary["paired"]["asam - sgd"]["pixel_0.6"]["n"] == 4
    assert "asam - swa" not in summary["paired"]
    assert summary["configurations"]["asam"]["clean"]["ci95"][0] is not None
    with open(out / "study_summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["analysis"] for r in rows} == {"confirmatory", "sensitivity", "exploratory"}
    assert any(r["metric"] == "pixel_0.6" and r["contrast"] == "asam - sgd" and r["verdict"] for r in rows)
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


@pytest.mark.parametrize("present, missing", [("answer", "results"), ("results", "answer"), (None, "answer")])
def test_readme_without_markers_is_refused_and_untouched(tmp_path, present, missing):
    study_dir = write(tmp_path / "study", study(range(3, 5)))
    readme = tmp_path / "README.md"
    text = "# one block only\n" + ("\n".join(report.readme_markers("mnist", present)) if present else "")
    readme.write_text(text)
    with pytest.raises(ValueError, match=f"study-{missing}:mnist:begin"):
        S.main(["--study-dir", str(study_dir), "--out-dir", str(tmp_path / "out"), "--report", str(readme)])
    assert readme.read_text() == text


def test_quick_records_are_refused_for_the_readme(tmp_path):
    study_dir = write(tmp_path / "study", study(range(3, 5)) + [fake_record("sgd", 5, quick=True)])
    begin, end = report.readme_markers("mnist")
    readme = tmp_path / "README.md"
    readme.write_text(f"{begin}\nold\n{end}\n")
    with pytest.raises(SystemExit, match="QUICK"):
        S.main(["--study-dir", str(study_dir), "--out-dir", str(tmp_path / "out"), "--report", str(readme)])
    assert readme.read_text() == f"{begin}\nold\n{end}\n"
    assert json.loads((tmp_path / "out" / "study_summary.json").read_text())["quick_runs"] is True


def test_compare_with_an_earlier_study(tmp_path):
    """Same history and +0.5 clean: 'identical'; a changed epoch-2 loss: where it starts to differ."""
    history = [{"epoch": e, "train_loss": 1.0 / e} for e in (1, 2, 3)]
    new = {"asam": {0: {**fake_record("asam", 0), "history": history}},
           "sgd": {0: {**fake_record("sgd", 0), "history": history}}}
    for config, loss in (("asam", 0.5), ("sgd", 0.6)):
        old = json.loads(json.dumps(new[config][0]))
        old["history"][1]["train_loss"] = loss
        old["metrics"]["clean"] -= 0.5
        (tmp_path / f"{config}_seed0.json").write_text(json.dumps(old))
    table = report.compare_with(tmp_path, new)
    assert "| asam | 0 | identical | 0.0e+00 | +0.50 | +0.00 | +0.00 |" in table
    assert "| sgd | 0 | differs from epoch 2 | 1.7e-01 |" in table
    assert "no run" in report.compare_with(tmp_path / "empty", new)


@needs_mnist
def test_corruption_examples_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_ROOT", str(MNIST_ROOT))
    with pytest.raises(SystemExit) as exit_info:  # no records: drawing the figure alone is a success
        S.main(["--study-dir", str(tmp_path / "none"), "--corruption-examples", str(tmp_path / "examples.png")])
    assert exit_info.value.code == 0
    assert (tmp_path / "examples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "examples.png").stat().st_size > 50_000


# ----------------------------------------------------------------------------- the committed README and STUDY.md

README = (ROOT / "README.md").read_text()
STUDY = (ROOT / "STUDY.md").read_text()
NUMBER = re.compile(r"(?<![\w.])[+-]?\d+\.\d+")


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_the_blocks_are_the_summary_of_the_committed_records(tmp_path, monkeypatch, capsys, dataset):
    """Rerun the command each results block says wrote it, on the committed records: STUDY.md's blocks and README's
    answer table come out unchanged (a record added or changed without rerunning the summarizer fails here)."""
    study_md, readme = tmp_path / "STUDY.md", tmp_path / "README.md"
    study_md.write_text(STUDY)
    readme.write_text(README)
    written_by = re.search(rf"Written by `scripts/summarize_study.py --dataset {dataset} --report STUDY.md "
                           rf"--readme README.md(.*?)`", STUDY)
    assert written_by, f"the {dataset} results block does not say which command wrote it"
    monkeypatch.chdir(ROOT)  # the command's paths (--compare-with) are relative to the project root
    S.main(["--dataset", dataset, "--report", str(study_md), "--readme", str(readme),
            "--out-dir", str(tmp_path / "out"), *written_by.group(1).split()])
    capsys.readouterr()
    assert study_md.read_text() == STUDY, f"rerun the summarizer for {dataset}: STUDY.md's blocks are out of date"
    assert readme.read_text() == README, f"rerun the summarizer for {dataset}: README.md's table is out of date"


def generated(text: str, blocks: tuple[str, ...]) -> str:
    return "".join(text.split(begin)[1].split(end)[0] for dataset in L.DATASETS
                   for begin, end in (report.readme_markers(dataset, block) for block in blocks))


def hand_written(text: str, blocks: tuple[str, ...]) -> str:
    """``text`` without its generated blocks and without the notebooks' reproduction section (its numbers are
    the notebooks' own, checked by the notebooks' committed outputs)."""
    for dataset in L.DATASETS:
        for block in blocks:
            begin, end = report.readme_markers(dataset, block)
            text = text.split(begin)[0] + text.split(end)[1]
    return text


def test_every_number_of_the_hand_written_text_has_a_source():
    """README's answer and STUDY.md's hand-written sections quote the study's numbers: each must appear in a
    generated block (its sign aside: "drops by 0.12" quotes -0.12), in the plan, in a notebook (the original
    study's numbers) or in the offset analysis's printed report; only a rounded number after "about" needs none."""
    sources = generated(STUDY, ("answer", "results")) + generated(README, ("headline",))
    sources += (ROOT / "results" / "ANALYSIS_PLAN.md").read_text()
    sources += "".join((ROOT / nb).read_text() for nb in ("LeNet-5.ipynb", "LeNet-5_sam_optim.ipynb"))
    sources += (ROOT / "results" / "comparison.json").read_text() + (ROOT / "results" / "asam.json").read_text()
    sources += (ROOT / "results" / "baseline.json").read_text()
    sources += (ROOT / "results" / "offset_response.txt").read_text()  # the exploratory offset analysis, as printed
    known = {n.lstrip("+-") for n in NUMBER.findall(sources)}
    answer = README[README.index("## The answer"):README.index("## Quick start")]
    full = hand_written(STUDY, ("answer", "results"))
    # the first study's section quotes its own summary (results/study_v1/), the rest this study's blocks
    study = (full[:full.index("## Design")] + full[full.index("## The controls"):full.index("### The first study")]
             + full[full.index("## Limitations"):full.index("## Provenance")])
    quoted = NUMBER.findall(re.sub(r"about \d+\.\d+", "", hand_written(answer, ("headline",)) + study))
    assert len(quoted) > 50, "the hand-written sections were not found where expected"
    assert sorted({n for n in quoted if n.lstrip("+-") not in known}) == []


def test_the_readme_answer_table_has_a_verdict_per_cell(tmp_path):
    study_dir = write(tmp_path / "study", study(range(20)))
    readme = tmp_path / "README.md"
    begin, end = report.readme_markers("mnist", "headline")
    readme.write_text(f"{begin}\nold\n{end}\n")
    S.main(["--study-dir", str(study_dir), "--out-dir", str(tmp_path / "out"), "--readme", str(readme)])
    table = readme.read_text()
    assert "| `asam - sgd` | 17 | **better** +2." in table and "**equivalent**" in table and "**inconclusive**" in table
    assert "| `sam-0.05 - sgd` | 0 | **missing** |" in table  # planned, without runs
