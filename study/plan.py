"""The pre-registered plan of the LeNet-5 + SAM study (results/ANALYSIS_PLAN.md) as constants, and the readers
of the study's run records (``results/study/<dataset>/*.json``, written by scripts/run_study.py).

The plan's primary endpoints, contrasts, margins and seeds are the constants below (tests/test_study.py checks
them against the plan). ``study.verdicts`` applies them; ``study.report`` and ``study.figures`` present them.
"""

from __future__ import annotations

import json
from pathlib import Path

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
                  "fixed_pattern_0.6": "fixed-pattern protocol σ=0.6", "hessian_eigenvalue": "λ_max (Hessian)",
                  "hessian_trace": "Hessian trace", "slice_rise": "loss-slice rise",
                  V3_ADAPTIVE_SHARPNESS: "adaptive sharpness (r = 2)"}
SHARPNESS = ("hessian_eigenvalue", "hessian_trace", "slice_rise", "perturbation_norm", V3_ADAPTIVE_SHARPNESS)
# the v3 validity check of the PGD-20 endpoint (study.report.strong_attack_tables): PGD-20, the strong attack's two
# parts, and their per-image worst case, all at epsilon 0.1
STRONG_ATTACK = ("pgd_0.1", "apgd_ce_0.1", "apgd_t_0.1", "worst_case_0.1")
WORST_CASE = STRONG_ATTACK[-1]
# the README's answer table (study.report.headline_table) and figure (study.figures.plot_headline)
HEADLINE_CONTRASTS = (*PRIMARY_CONTRASTS, *SECONDARY_CONTRASTS)
HEADLINE_CONFIGS = ("asam", "sam-0.05", "sam-0.5")  # each against sgd, paired by seed


def planned_seeds(dataset: str, config: str) -> int:
    plan = PLANNED_SEEDS.get(dataset, {"*": 0})
    return plan.get(config, plan["*"])


# ----------------------------------------------------------------------------- records


def flat_metrics(record: dict) -> dict[str, float]:
    """The summarized scalars of one run, by metric name."""
    m = record["metrics"]
    flat = {"clean": m["clean"], "normalized_clean": m["normalized_clean"]}
    flat |= {f"fixed_pattern_{s}": v for s, v in m["fixed_pattern_protocol"].items()}
    flat |= {f"pixel_{s}": v for s, v in m["pixel"].items()}
    flat |= {f"pixel_clip_{s}": v for s, v in m["pixel_clip"].items()}
    flat |= {(k if k.endswith("_mean") else f"corruption_{k}"): v for k, v in m["corruptions"].items()}
    flat |= {f"sweep_{name}": levels["mean"] for name, levels in m["corruption_sweep"].items()}
    for attack in ("fgsm", "pgd"):
        flat |= {f"{attack}_{eps}": v for eps, v in m["adversarial"][attack].items()}
    if m["hessian"]["converged"]:  # an unconverged power iteration's last estimate is not λ_max: left out
        flat["hessian_eigenvalue"] = m["hessian"]["eigenvalue"]
    if m["hessian"].get("min_converged"):  # Lanczos (v3 evaluations on): λ_min too
        flat["hessian_min_eigenvalue"] = m["hessian"]["min_eigenvalue"]
    if "adaptive_sharpness" in m:
        flat |= {f"adaptive_sharpness_{r}": v for r, v in m["adaptive_sharpness"]["increase"].items()}
    if "strong_attack" in m:
        for attack in ("apgd_ce", "apgd_t", "worst_case"):
            flat |= {f"{attack}_{eps}": v for eps, v in m["strong_attack"][attack].items()}
    flat["hessian_trace"] = m["hessian_trace"]["mean"]
    flat["slice_rise"] = m["loss_directions"]["rise"]
    if "perturbation_norm" in record:
        flat["perturbation_norm"] = record["perturbation_norm"]["mean"]
    return flat


def measured(flat: dict[str, dict[int, dict]], metric: str) -> bool:
    """Whether any run of ``flat`` (configuration -> seed -> flat metrics) has ``metric``: records from before an
    evaluation added a measurement lack it, and a table or figure of it is then left out."""
    return any(metric in f for seeds in flat.values() for f in seeds.values())


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

