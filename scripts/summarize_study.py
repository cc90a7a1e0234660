"""Summarize the LeNet-5 + SAM study: statistics per configuration, paired differences, figures.

Reads ``{study_dir}/*.json`` (written by run_study.py; any subset of configurations and seeds) and
writes ``{out_dir}/study_summary.csv`` and ``.json`` and the figures ``study_noise_curves.png``,
``study_corruptions.png``, ``study_sharpness_vs_robustness.png`` and ``study_loss_directions.png``.
``--corruption-examples`` also draws ``corruption_examples.png`` (every corruption on 3 test
digits; needs only MNIST, no runs). ``--readme README.md`` rewrites the part of that file between
the markers ``<!-- study-results:begin -->`` and ``<!-- study-results:end -->`` with the Markdown
tables of this summary, so the README's numbers are the ones this script computed.

Statistics: n, mean, sample std (ddof=1) and the 95 % confidence interval of the mean,
mean +- t_{0.975, n-1} std / sqrt(n). Paired differences (a - b over the seeds both have) get
the same on the per-seed differences. With n = 1, std and CI are undefined: empty in the CSV,
null in the JSON, and the ``note`` column says so.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lenet_utils as L  # noqa: E402
from analysis import corruptions  # noqa: E402

ORDER = ("baseline", "adam-sam", "sgd", "asam", "sam-0.05", "sam-0.5", "noise-aug")
PAIRS = (("asam", "sgd"), ("sam-0.05", "sgd"), ("sam-0.5", "sgd"), ("adam-sam", "baseline"),
         ("noise-aug", "sgd"))
HEADLINE = ("clean", "normalized_clean", "seed_0.6", "pixel_0.6", "pixel_clip_0.6",
            "corruption_mnist_c_mean", "corruption_extended_mean", "hessian_eigenvalue", "perturbation_norm")
# t_{0.975, df} for df = 1..30, from the standard table (checked to 4 decimals against numerical
# integration of the t density). Above 30 the Cornish-Fisher expansion below is accurate to 1e-4.
T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
        2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739,
        2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
NAN = float("nan")
README_BEGIN, README_END = "<!-- study-results:begin -->", "<!-- study-results:end -->"
REPORT_COLUMNS = {"clean": "clean", "normalized_clean": "normalized, no noise", "seed_0.6": "seed σ=0.6",
                  "pixel_0.6": "pixel σ=0.6", "pixel_clip_0.6": "pixel σ=0.6, clipped",
                  "corruption_mnist_c_mean": "MNIST-C (mean)", "hessian_eigenvalue": "λ_max (Hessian)"}
NOTE = ("mean, std (ddof=1) and 95 % t confidence interval of the mean over seeds; paired: of the "
        "per-seed differences config - reference over the seeds both have. n = 1: std and CI undefined "
        "(null). Accuracies in %; hessian_eigenvalue: largest Hessian eigenvalue of the mean training "
        "cross-entropy; perturbation_norm: mean ||e(w)||_2 of SAM/ASAM over the first epoch.")


def t_quantile_975(df: int) -> float:
    """Two-sided 95 % quantile t_{0.975, df} of Student's t distribution."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959963984540054
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def describe(values: list[float]) -> dict:
    """n, mean, std (ddof=1) and 95 % t confidence interval of the mean; NaN where undefined."""
    n = len(values)
    if n < 2:
        return {"n": n, "mean": values[0] if n else NAN, "std": NAN, "ci_low": NAN, "ci_high": NAN,
                "note": f"n={n}: std and CI undefined"}
    mean, std = statistics.fmean(values), statistics.stdev(values)
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "note": ""}


def paired(a: dict[int, float], b: dict[int, float]) -> dict:
    """:func:`describe` of a[seed] - b[seed] over the seeds present in both."""
    seeds = sorted(set(a) & set(b))
    return {**describe([a[s] - b[s] for s in seeds]), "seeds": " ".join(map(str, seeds))}


def flat_metrics(record: dict) -> dict[str, float]:
    """The summarized scalars of one run, by metric name."""
    m = record["metrics"]
    flat = {"clean": m["clean"], "normalized_clean": m["normalized_clean"]}
    flat |= {f"seed_{s}": v for s, v in m["seed_protocol"].items()}
    flat |= {f"pixel_{s}": v for s, v in m["pixel"].items()}
    flat |= {f"pixel_clip_{s}": v for s, v in m["pixel_clip"].items()}
    flat |= {f"corruption_{name}": v for name, v in m["corruptions"].items()}
    flat["hessian_eigenvalue"] = m["hessian"]["eigenvalue"]
    if "perturbation_norm" in m:
        flat["perturbation_norm"] = m["perturbation_norm"]["mean"]
    return flat


def load_runs(study_dir: Path) -> dict[str, dict[int, dict]]:
    """{config: {seed: record}}, configurations in study order (unknown ones last, sorted)."""
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(study_dir.glob("*.json")):
        record = json.loads(path.read_text())
        runs.setdefault(record["config"], {})[record["seed"]] = record
    rank = lambda c: (ORDER.index(c), c) if c in ORDER else (len(ORDER), c)  # noqa: E731
    return {c: dict(sorted(runs[c].items())) for c in sorted(runs, key=rank)}


def check_consistency(runs: dict[str, dict[int, dict]]) -> None:
    """Warn when runs come from different lenet_utils versions or corruption severities."""
    records = [r for seeds in runs.values() for r in seeds.values()]
    for key, what in (("lenet_utils_sha256", "versions of lenet_utils.py"),
                      ("corruption_severities", "corruption severities (corruption metrics not comparable)")):
        if len({json.dumps(r.get(key), sort_keys=True) for r in records}) > 1:
            print(f"WARNING: the runs were made with different {what}")


def summarize(runs: dict[str, dict[int, dict]]) -> list[dict]:
    """One row per (configuration, metric) and per (pair, metric)."""
    flat = {c: {s: flat_metrics(r) for s, r in seeds.items()} for c, seeds in runs.items()}
    rows = []
    for config, by_seed in flat.items():
        for metric in dict.fromkeys(k for f in by_seed.values() for k in f):
            values = {s: f[metric] for s, f in by_seed.items() if metric in f}
            rows.append({"kind": "config", "config": config, "reference": "", "metric": metric,
                         **describe(list(values.values())), "seeds": " ".join(map(str, values))})
    for a, b in PAIRS:
        if a in flat and b in flat and set(flat[a]) & set(flat[b]):
            metrics = [k for k in next(iter(flat[a].values())) if k in next(iter(flat[b].values()))]
            for metric in metrics:
                a_values, b_values = ({s: f[metric] for s, f in flat[c].items() if metric in f} for c in (a, b))
                rows.append({"kind": "paired", "config": a, "reference": b, "metric": metric,
                             **paired(a_values, b_values)})
    return rows


def write_tables(rows: list[dict], out_dir: Path, quick: bool) -> None:
    """study_summary.csv (NaN as empty cells) and study_summary.json (NaN as null)."""
    clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
    with L.atomic_write(out_dir / "study_summary.csv", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: "" if clean(v) is None else v for k, v in row.items()} for row in rows)
    summary = {"note": NOTE, "quick_runs": quick, "configs": {}, "paired": {}}
    for row in rows:
        key = row["config"] if row["kind"] == "config" else f"{row['config']} - {row['reference']}"
        stats = {k: clean(v) for k, v in row.items() if k not in ("kind", "config", "reference", "metric")}
        summary["configs" if row["kind"] == "config" else "paired"].setdefault(key, {})[row["metric"]] = stats
    with L.atomic_write(out_dir / "study_summary.json") as f:
        json.dump(summary, f, indent=1)


def print_table(rows: list[dict]) -> None:
    """The headline metrics as plain text: mean +- CI half-width (n), then paired differences."""
    cell = lambda r: (f"{r['mean']:.4g}" if math.isnan(r["ci_low"])  # noqa: E731
                      else f"{r['mean']:.4g} ± {r['ci_high'] - r['mean']:.2g}")
    width = {m: max(len(m), 15) + 1 for m in HEADLINE}
    for kind, title in (("config", "configuration"), ("paired", "paired difference")):
        table = {}
        for r in rows:
            if r["kind"] == kind and r["metric"] in HEADLINE:
                name = r["config"] + (f" - {r['reference']}" if kind == "paired" else "")
                table.setdefault(name, {"n": str(r["n"])})[r["metric"]] = cell(r)
        if table:
            print(f"\n{title:<20}{'n':>2}" + "".join(f"{m:>{width[m]}}" for m in HEADLINE))
            for name, cells in table.items():
                print(f"{name:<20}{cells['n']:>2}" + "".join(f"{cells.get(m, '-'):>{width[m]}}" for m in HEADLINE))
    print("\nmean ± 95 % CI half-width (t, ddof=1); a bare mean where n = 1 (CI undefined). Accuracies "
          "in %; hessian_eigenvalue of the mean training cross-entropy; perturbation_norm ||e(w)||_2.")


def markdown_report(rows: list[dict], runs: dict[str, dict[int, dict]]) -> str:
    """Markdown: which runs finished, the headline metrics per configuration and per pair
    (mean [95 % CI]), and the paired differences under each corruption."""
    stats: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        name = r["config"] + (f" - {r['reference']}" if r["kind"] == "paired" else "")
        stats.setdefault((r["kind"], name), {})[r["metric"]] = r

    def cell(r: dict | None, signed: bool) -> str:
        if r is None:
            return "-"
        spec = ("+" if signed else "") + (".3f" if r["metric"] == "hessian_eigenvalue" else ".2f")
        ci = "" if math.isnan(r["ci_low"]) else f" [{r['ci_low']:{spec}}, {r['ci_high']:{spec}}]"
        return f"{r['mean']:{spec}}{ci}"

    def table(first: str, names: list[str], kind: str, metrics: dict[str, str]) -> list[str]:
        rows = [[name, stats[(kind, name)]["clean"]["n"],
                 *(cell(stats[(kind, name)].get(m), kind == "paired") for m in metrics)] for name in names]
        return [L.markdown_table([first, "n", *metrics.values()], rows)]

    finished = "; ".join(f"{c}: seed{'s' if len(s) > 1 else ''} {' '.join(map(str, s))}" for c, s in runs.items())
    missing = [c for c in ORDER if c not in runs]
    lines = [f"Finished runs ({sum(map(len, runs.values()))}): {finished}."
             + (f" No runs yet: {', '.join(missing)}." if missing else ""), ""]
    lines += table("configuration", list(runs), "config", REPORT_COLUMNS) + [""]
    pairs = [name for kind, name in stats if kind == "paired"]
    if pairs:
        lines += table("paired difference", pairs, "paired", REPORT_COLUMNS) + [""]
        corruptions = [m for m in stats[("paired", pairs[0])]
                       if m.startswith("corruption_") and not m.endswith("_mean")]
        header = ["corruption", *(f"{p} (n={stats[('paired', p)]['clean']['n']})" for p in pairs)]
        rows = [[m.removeprefix("corruption_").replace("_", " "),
                 *(cell(stats[("paired", p)].get(m), True) for p in pairs)] for m in corruptions]
        lines += [L.markdown_table(header, rows), ""]
    lines.append("Accuracies in %, mean over seeds with the 95 % t confidence interval in brackets (none where "
                 "n = 1); paired rows are the per-seed differences over the seeds both configurations have. "
                 "Written by `scripts/summarize_study.py --readme README.md` from `results/study/*.json`.")
    return "\n".join(lines)


def splice_into_readme(path: Path, report: str) -> None:
    """Replace the text between README_BEGIN and README_END in ``path`` with ``report``."""
    text = path.read_text()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin or text.count(README_BEGIN) != 1 or text.count(README_END) != 1:
        raise ValueError(f"{path} needs exactly one line {README_BEGIN!r} followed later by exactly one "
                         f"line {README_END!r}; the summary goes between them")
    with L.atomic_write(path) as f:
        f.write(text[:begin + len(README_BEGIN)] + "\n\n" + report + "\n\n" + text[end:])


def save(fig: plt.Figure, path: Path) -> None:
    """Write ``fig`` as PNG with :func:`lenet_utils.atomic_write` and close it."""
    with L.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def colours(runs: dict) -> dict[str, tuple]:
    """A fixed tab10 colour per configuration (by study order)."""
    palette = plt.get_cmap("tab10").colors
    return {c: palette[(ORDER.index(c) if c in ORDER else len(ORDER) + i) % 10] for i, c in enumerate(runs)}


def plot_noise_curves(runs: dict, path: Path, tag: str) -> None:
    """Pixel-protocol accuracy vs sigma (without / with clipping): mean and band per configuration."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True, layout="constrained")
    colour = colours(runs)
    for ax, key, title in zip(axes, ("pixel", "pixel_clip"), ("no clipping", "clipped to [0, 1]")):
        for config, seeds in runs.items():
            curves = [r["metrics"][key] for r in seeds.values()]
            sigmas = sorted(curves[0], key=float)
            acc = np.array([[c[s] for s in sigmas] for c in curves])
            x = [float(s) for s in sigmas]
            ax.plot(x, acc.mean(0), marker="o", ms=3, color=colour[config], label=f"{config} (n={len(acc)})")
            if len(acc) >= 3:
                stats = [describe(list(col)) for col in acc.T]
                ax.fill_between(x, np.clip([s["ci_low"] for s in stats], 0, None),
                                np.clip([s["ci_high"] for s in stats], None, 100), color=colour[config], alpha=0.2)
            elif len(acc) == 2:
                ax.fill_between(x, acc.min(0), acc.max(0), color=colour[config], alpha=0.2)
        ax.set(title=f"Gaussian pixel noise, {title}", xlabel="noise σ (pixels in [0, 1])")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=min(len(runs), 7))
    fig.suptitle("Accuracy vs pixel-noise σ: mean over seeds; band = 95 % CI (n ≥ 3, clipped to 0–100) "
                 "or min–max (n = 2)" + tag)
    save(fig, path)


def plot_corruptions(runs: dict, path: Path, tag: str) -> None:
    """Heat map configuration x corruption of the mean accuracy, numbers in the cells."""
    names = [n for n in next(iter(next(iter(runs.values())).values()))["metrics"]["corruptions"]
             if not n.endswith("_mean")]
    grid = np.array([[np.mean([r["metrics"]["corruptions"][n] for r in seeds.values()]) for n in names]
                     for seeds in runs.values()])
    fig, ax = plt.subplots(figsize=(0.75 * len(names) + 3, 0.55 * len(runs) + 2.2), layout="tight")
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        dark = v < grid.min() + 0.6 * (grid.max() - grid.min())
        ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=40, ha="right")
    ax.set_yticks(range(len(runs)), [f"{c} (n={len(s)})" for c, s in runs.items()])
    fig.colorbar(image, ax=ax, label="test accuracy (%)")
    ax.set_title(f"Mean accuracy under each corruption at MNIST-C's severity{tag}")
    save(fig, path)


def plot_sharpness(runs: dict, path: Path, tag: str) -> None:
    """Hessian max eigenvalue (log x) vs noise and corruption accuracy, one point per run."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), layout="tight")
    colour = colours(runs)
    for config, seeds in runs.items():
        if any(r["metrics"]["hessian"]["eigenvalue"] <= 0 for r in seeds.values()):
            print(f"note: non-positive Hessian eigenvalue(s) of {config} left off the log axis")
    for ax, ylabel, key in zip(axes, ("accuracy, pixel noise σ = 0.6, no clip (%)", "MNIST-C mean accuracy (%)"),
                               (("pixel", "0.6"), ("corruptions", "mnist_c_mean"))):
        for config, seeds in runs.items():
            points = [(r["metrics"]["hessian"]["eigenvalue"], r["metrics"][key[0]][key[1]])
                      for r in seeds.values()]
            kept = [p for p in points if p[0] > 0]
            if kept:
                ax.scatter(*zip(*kept), color=colour[config], label=config, s=40, alpha=0.8)
        ax.set(xscale="log", xlabel="Hessian max eigenvalue (training loss, log scale)", ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend()
    fig.suptitle(f"Sharpness vs robustness: one point per run{tag}")
    save(fig, path)


def plot_loss_directions(runs: dict, path: Path, tag: str) -> None:
    """Training loss along the filter-normalized directions: mean curve per configuration."""
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="tight")
    for config, seeds in runs.items():
        directions = [r["metrics"]["loss_directions"] for r in seeds.values()]
        curves = np.array([c for d in directions for c in d["losses"]])
        ax.plot(directions[0]["alphas"], curves.mean(0), color=colours(runs)[config],
                label=f"{config} ({len(curves)} curves)")
    n_images = next(iter(next(iter(runs.values())).values()))["metrics"]["loss_directions"]["n_images"]
    ax.set(yscale="log", xlabel="α (weights w + α·d, d a filter-normalized random direction)",
           ylabel=f"cross-entropy on {n_images:,} training images (log)",
           title=f"Loss along random filter-normalized directions, mean over directions and seeds{tag}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save(fig, path)


def corruption_examples(path: Path) -> None:
    """Every corruption of both sets (seed 0, the benchmark's level) on the first 3 test digits."""
    images, _ = L.load_mnist(train=False)
    save(corruptions.plot_corruption_examples(images[:3]), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study-dir", type=Path, default=Path("results/study"))
    parser.add_argument("--out-dir", type=Path, default=Path("results"))
    parser.add_argument("--corruption-examples", action="store_true", help="also draw corruption_examples.png")
    parser.add_argument("--readme", type=Path, help="rewrite this file's study-results block with the tables")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.corruption_examples:
        corruption_examples(args.out_dir / "corruption_examples.png")
    runs = load_runs(args.study_dir) if args.study_dir.is_dir() else {}
    if not runs:
        sys.exit(0 if args.corruption_examples else f"no run JSON files in {args.study_dir}")
    quick = any(r.get("quick") for seeds in runs.values() for r in seeds.values())
    tag = "\n[QUICK smoke-test runs: not results]" if quick else ""
    if quick:
        print(f"WARNING: QUICK smoke-test runs in {args.study_dir}: these numbers are not results")
    check_consistency(runs)
    rows = summarize(runs)
    write_tables(rows, args.out_dir, quick)
    print_table(rows)
    if args.readme:
        if quick:
            sys.exit(f"refusing to write QUICK smoke-test numbers into {args.readme}")
        splice_into_readme(args.readme, markdown_report(rows, runs))
        print(f"\nrewrote the study-results block of {args.readme}")
    for name, plot in (("noise_curves", plot_noise_curves), ("corruptions", plot_corruptions),
                       ("sharpness_vs_robustness", plot_sharpness), ("loss_directions", plot_loss_directions)):
        plot(runs, args.out_dir / f"study_{name}.png", tag)
    print(f"\nwrote {args.out_dir}/study_summary.csv, study_summary.json and study_*.png "
          f"from {sum(map(len, runs.values()))} runs of {len(runs)} configurations")


if __name__ == "__main__":
    main()
