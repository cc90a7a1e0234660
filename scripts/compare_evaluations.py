"""What a re-evaluation changed: every record's metrics now against the same record at an earlier commit.

For each record of ``--study-dir`` that exists at ``--before`` and was evaluated anew since, every number under
``metrics`` is compared with the earlier record's, grouped by measurement (clean, pixel, corruptions, adversarial,
hessian, ...): how many values are equal to the bit, how many changed, and the largest change. Then λ_max, whose
method the v3 re-evaluation changed (power iteration -> Lanczos): the ratio new / old where both converged, and the
models whose earlier value had not converged. Writes the report to ``--out`` as well as printing it.

    .venv/bin/python scripts/compare_evaluations.py --before ed018be --out results/reevaluation_check.txt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import lenet_utils as L  # noqa: E402


def leaves(value, path: str = ""):
    """(path, value) for every leaf of nested dicts and lists."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{path}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from leaves(item, f"{path}[{i}]")
    else:
        yield path, value


def record_at(repo: Path, commit: str, path: Path) -> dict | None:
    """The record at ``commit`` (None where the file did not exist there)."""
    shown = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{path.as_posix()}"], capture_output=True,
                           text=True)
    return json.loads(shown.stdout) if shown.returncode == 0 else None


def compare(repo: Path, study_dir: Path, before: str) -> str:
    equal, changed, largest = Counter(), Counter(), defaultdict(float)
    ratios, recovered, models, unchanged = [], [], 0, 0
    for path in sorted(study_dir.glob("*/*.json")):
        old = record_at(repo, before, path.resolve().relative_to(repo.resolve()))
        new = json.loads(path.read_text())
        if old is None or "metrics" not in old or "metrics" not in new:
            continue
        if old["evaluation"] == new["evaluation"]:  # not re-evaluated since
            unchanged += 1
            continue
        models += 1
        was, now = dict(leaves(old["metrics"])), dict(leaves(new["metrics"]))
        for key in sorted(was.keys() & now.keys()):
            group = key.split("/")[1]
            if was[key] == now[key]:
                equal[group] += 1
                continue
            changed[group] += 1
            if all(isinstance(v, float | int) and not isinstance(v, bool) for v in (was[key], now[key])):
                largest[group] = max(largest[group], abs(now[key] - was[key]))
        h_old, h_new = old["metrics"]["hessian"], new["metrics"]["hessian"]
        name = f"{new['dataset']} {new['config']} seed {new['seed']}"
        if h_old["converged"] and h_new["converged"]:
            ratios.append((h_new["eigenvalue"] / h_old["eigenvalue"], name))
        elif h_new["converged"]:
            recovered.append(f"{name}: {h_new['eigenvalue']:.3f}")
    if not models:
        raise ValueError(f"no record in {study_dir} was evaluated anew since {before}: nothing to compare")
    where = study_dir.relative_to(repo) if study_dir.is_relative_to(repo) else study_dir
    lines = [f"{models} records of {where} evaluated anew since {before}, compared with their record there "
             f"({unchanged} more not evaluated anew): the values under `metrics`, by measurement", ""]
    body = [[g, equal[g], changed[g], f"{largest[g]:.3g}" if changed[g] else "-"]
            for g in sorted(equal.keys() | changed.keys())]
    lines += [L.markdown_table(["measurement", "values equal", "values changed", "largest change"], body), ""]
    if ratios:
        r = np.array([x for x, _ in ratios])
        top = max(ratios)
        lines.append(f"λ_max now / before, where both converged (n = {len(r)}): median {np.median(r):.4f}, "
                     f"min {r.min():.4f}, max {r.max():.4f} ({top[1]}); above 1.01 for {int((r > 1.01).sum())}, "
                     f"below 0.99 for {int((r < 0.99).sum())}.")
    lines.append("Converged now, not before: " + ("; ".join(recovered) if recovered else "none") + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the commit whose records to compare with")
    parser.add_argument("--study-dir", type=Path, default=ROOT / "results" / "study",
                        help="records, one folder per dataset (default results/study)")
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    report = compare(ROOT, args.study_dir.resolve(), args.before)
    print(report, end="")
    if args.out:
        with L.atomic_write(args.out) as f:
            f.write(report)


if __name__ == "__main__":
    main()
