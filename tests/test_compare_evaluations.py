"""scripts/compare_evaluations.py on a small git repository of made-up records with known changes."""

import json
import subprocess

import pytest

from conftest import load_script

C = load_script("compare_evaluations")


def record(seed: int, pgd: float, eigenvalue: float, converged: bool, commit: str) -> dict:
    return {"dataset": "mnist", "config": "asam", "seed": seed, "evaluation": {"code": {"git_commit": commit}},
            "metrics": {"clean": 99.0, "adversarial": {"pgd": {"0.1": pgd}},
                        "hessian": {"eigenvalue": eigenvalue, "converged": converged}}}


def commit_records(repo, records, message):
    for r in records:
        path = repo / "results" / "study" / "mnist" / f"asam_seed{r['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", message], check=True)


@pytest.fixture
def repo(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    commit_records(tmp_path, [record(3, 20.0, 1.00, True, "old"), record(4, 25.0, 1e-4, False, "old"),
                              record(5, 30.0, 2.00, True, "old")], "before")
    return tmp_path


def test_known_changes_are_counted_and_untouched_records_left_out(repo):
    # seed 3: PGD moves by 0.5 and λ_max by +10 %; seed 4: λ_max converges now; seed 5: not evaluated anew
    commit_records(repo, [record(3, 20.5, 1.10, True, "new"), record(4, 25.0, 0.5, True, "new")], "after")
    report = C.compare(repo, repo / "results" / "study", "HEAD~1")
    assert report.startswith("2 records of results/study evaluated anew since HEAD~1")
    assert "(1 more not evaluated anew)" in report
    assert "| adversarial | 1 | 1 | 0.5 |" in report and "| clean | 2 | 0 | - |" in report
    assert "(n = 1): median 1.1000, min 1.1000, max 1.1000 (mnist asam seed 3); above 1.01 for 1" in report
    assert "Converged now, not before: mnist asam seed 4: 0.500." in report


def test_nothing_evaluated_anew_is_an_error(repo):
    with pytest.raises(ValueError, match="nothing to compare"):
        C.compare(repo, repo / "results" / "study", "HEAD")
