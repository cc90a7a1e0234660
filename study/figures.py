"""The LeNet-5 + SAM study's figures, drawn from the runs' records and flat metrics: accuracy curves against
noise, corruption severity and attack budget, sharpness against robustness, the seed spread, the loss along
random directions, the README's headline figure, and the corruption examples.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats as scipy_stats  # noqa: E402

import lenet_utils as L  # noqa: E402
from analysis import corruptions, statistics  # noqa: E402
from study.plan import (  # noqa: E402
    HEADLINE_CONFIGS,
    ORDER,
    PRIMARY_ENDPOINTS,
    REPORT_COLUMNS,
    V3_ADAPTIVE_SHARPNESS,
    measured,
    records_of,
)
from study.recipes import STUDY_RECIPES  # noqa: E402
from study.report import p_clause  # noqa: E402


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
    """λ_max, Hessian trace and (where the records have it) adaptive sharpness vs each primary endpoint, one dot
    per run; Spearman's rho over all runs and over the SGD-recipe runs alone (label smoothing and weight decay move
    the Hessian's whole scale between the Adam and SGD recipes, so the pooled rho partly ranks recipes)."""
    measures = [("hessian_eigenvalue", "λ_max (Hessian)", "linear"), ("hessian_trace", "Hessian trace", "linear")]
    if measured(flat, V3_ADAPTIVE_SHARPNESS):
        # spans two decades across configurations: a log axis keeps the flat ones apart
        measures.append((V3_ADAPTIVE_SHARPNESS, "adaptive sharpness, r = 2 (loss increase, log scale)", "log"))
    fig, axes = plt.subplots(len(measures), len(PRIMARY_ENDPOINTS), figsize=(14, 4.25 * len(measures)),
                             squeeze=False, layout="constrained")
    colour = colours(runs)
    for row, (measure, label, scale) in enumerate(measures):
        for col, endpoint in enumerate(PRIMARY_ENDPOINTS):
            ax = axes[row, col]
            points = {"all": [], "SGD recipe": []}
            for config, seeds in flat.items():
                config_points = [(f[measure], f[endpoint]) for f in seeds.values() if measure in f]
                ax.scatter(*zip(*config_points), color=colour[config], s=22, alpha=0.8, label=config)
                points["all"] += config_points
                if STUDY_RECIPES[config].optimizer == "sgd":
                    points["SGD recipe"] += config_points
            titles = []
            for subset, pairs in points.items():
                rho, p = scipy_stats.spearmanr(*zip(*pairs)) if len(pairs) > 2 else (math.nan, math.nan)
                titles.append(f"{subset}: ρ = {rho:+.2f} ({p_clause('p', p)}, {len(pairs)} runs)")
            ax.set(xlabel=label, ylabel=f"{REPORT_COLUMNS[endpoint]}: accuracy (%)", xscale=scale)
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


def corruption_examples(path: Path) -> None:
    """Every corruption of both sets at the benchmark's level on the first 3 MNIST test digits."""
    images, _ = L.load_mnist(train=False)
    save(corruptions.plot_corruption_examples(images[:3]), path)

