"""Summarize the LeNet-5 + SAM study as results/ANALYSIS_PLAN.md prescribes.

Reads the records of one dataset (``results/study/<dataset>/*.json``, written by run_study.py; any
subset of configurations and seeds) and writes ``study_summary.json``, ``study_summary.csv`` and the
figures into ``--out-dir`` (default ``results/summary/<dataset>``). ``--readme README.md`` rewrites
two blocks of the README: between ``<!-- study-answer:<dataset>:begin -->`` and ``...:end -->``, the
plan's answer in words; between ``<!-- study-results:<dataset>:begin -->`` and ``...:end -->``, the
Markdown tables of this summary. So the README's numbers are the ones computed here.
``--corruption-examples results/corruption_examples.png`` draws every corruption on 3 test digits.

The pieces live in ``study/``: the plan's constants and the record readers in ``study/plan.py`` (a test
checks them against the plan); the plan's tests (paired t with Holm's adjustment within each family, the
exact sign-flip test beside it, TOST for equivalence) and the exploratory statistics in ``study/verdicts.py``;
the words, tables, README/STUDY blocks, CSV and JSON in ``study/report.py``; the figures in
``study/figures.py``. This script parses the command line and runs them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import lenet_utils as L  # noqa: E402
from study.figures import corruption_examples, figures  # noqa: E402
from study.plan import check_consistency, flat_metrics, load_runs, records_of  # noqa: E402
from study.report import (  # noqa: E402
    compare_with,
    headline_table,
    markdown_report,
    plan_answer,
    splice_into_readme,
    write_tables,
)
from study.verdicts import exploratory, plan_results  # noqa: E402


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
