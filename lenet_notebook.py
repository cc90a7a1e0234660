"""What only the notebooks show: set-up, tables, figures, the noise report and the notebook's run file.

Kept apart from ``lenet_utils`` (the model, SAM, data, training, noise, checkpoints) so that the
module both notebooks train with stays small; nothing here changes a number, it presents them.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torchvision
from torch import Tensor, nn

import lenet_utils as L


def confusion_matrix(predicted: Tensor, labels: Tensor, num_classes: int = 10) -> Tensor:
    """Counts (num_classes x num_classes), rows = true label, columns = prediction."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat.cpu(), minlength=num_classes ** 2).view(num_classes, num_classes)


def show_digits(images: Tensor, titles: Sequence[str], ncols: int = 12, title: str | None = None,
                vmin: float = 0.0, vmax: float = 1.0):
    """A grid of digits on one grey scale [vmin, vmax], each with its title; returns the figure."""
    nrows = max(1, math.ceil(len(images) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.1 * ncols, 1.3 * nrows + (0.4 if title else 0)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, text in zip(axes.flat, images.detach().float().cpu(), titles):
        ax.imshow(image.squeeze(0).numpy(), cmap="gray", vmin=vmin, vmax=vmax)
        ax.set_title(text, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_history(history: Sequence[dict]):
    """Loss, accuracy (train and, when present, validation) and learning rate per epoch."""
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, metric in zip(axes, ("loss", "acc")):
        for split in ("train", "val"):
            if f"{split}_{metric}" in history[0]:
                ax.plot(epochs, [row[f"{split}_{metric}"] for row in history], label=split)
        ax.set(xlabel="epoch", ylabel="accuracy (%)" if metric == "acc" else "loss",
               title="accuracy" if metric == "acc" else "loss")
        ax.legend()
        ax.grid(alpha=0.3)
    axes[2].plot(epochs, [row["lr"] for row in history])
    axes[2].set(xlabel="epoch", ylabel="learning rate", title="learning rate", yscale="log")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(matrix: Tensor, title: str = "confusion matrix"):
    """Heat map of a :func:`confusion_matrix`, counts written in the cells."""
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    image = ax.imshow(matrix.log1p(), cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix.numpy()):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                color="white" if image.norm(math.log1p(count)) > 0.6 else "black")
    ax.set(xticks=range(len(matrix)), yticks=range(len(matrix)), xlabel="predicted", ylabel="true",
           title=title)
    fig.tight_layout()
    return fig


# The original study's single runs (%), as it reported them: clean test accuracy and its noise test
# (the fixed-pattern protocol at sigma 0.6), for its baseline and its ASAM recipe.
ORIGINAL_STUDY = {
    "baseline": {"clean": 98.75, "fixed-pattern σ=0.6": 92.31},
    "asam": {"clean": 99.00, "fixed-pattern σ=0.6": 97.86},
}


@dataclass(frozen=True)
class NotebookSetup:
    """What a notebook runs on and where its outputs go (made by :func:`notebook_setup`)."""

    quick: bool  # a smoke run on a subset (LENET_QUICK=1)
    output_dir: Path  # checkpoints/ and results/ go here
    device: torch.device
    seed: int

    @property
    def figures(self) -> Path:
        return self.output_dir / "results" / "figures"

    def save_figure(self, fig, name: str) -> Path:
        """Save ``fig`` as ``results/figures/<name>.png`` under the output folder (atomically); return the path."""
        path = self.figures / f"{name}.png"
        with L.atomic_write(path, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
        return path


def notebook_setup(seed: int = 0, threads: int = 1) -> NotebookSetup:
    """Start a notebook: read ``LENET_QUICK`` (``1``: a smoke run whose outputs go to ``quick_output/``)
    and ``LENET_OUTPUT_DIR``, limit torch to ``threads`` CPU threads, seed every generator with
    ``seed`` and print the environment.

    One thread by default: float sums then run in one fixed order, so a CPU run repeats its
    numbers bit for bit whatever the machine's core count (with the same torch and CPU type).
    """
    L.check_number("threads", threads, low=1, integer=True)
    quick = os.environ.get("LENET_QUICK") == "1"
    setup = NotebookSetup(quick=quick, output_dir=Path(os.environ.get("LENET_OUTPUT_DIR",
                                                                       "quick_output" if quick else ".")),
                          device=L.default_device(), seed=seed)
    torch.set_num_threads(threads)
    L.set_seed(seed)
    where = (torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda"
             else f"{torch.get_num_threads()} CPU thread{'s' if threads > 1 else ''}")
    print(f"device: {setup.device} ({where})")
    print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"quick mode: {quick}; checkpoints and results go to {setup.output_dir}/")
    return setup


@dataclass(frozen=True)
class NoiseReport:
    """A model's test accuracy (%) under both noise protocols (see :func:`lenet_utils.evaluate_noise`)."""

    fixed_pattern: dict[float, float]  # fixed-pattern protocol (sigma in normalized units); 0 = normalized, noise-free
    pixel: dict[float, float]  # pixel protocol; sigma 0 = the clean test accuracy
    pattern_spread: dict[int, float]  # fixed-pattern protocol at ``spread_sigma``, one entry per pattern's seed
    spread_sigma: float
    std: float = L.MNIST_STD  # the normalization's std: fixed-pattern sigma * std = sigma in pixel units

    @property
    def clean(self) -> float:
        return self.pixel[0.0]


def noise_report(model: nn.Module, images: Tensor, labels: Tensor, *,
                 fixed_pattern_sigmas: Sequence[float] = L.FIXED_PATTERN_SIGMAS,
                 pixel_sigmas: Sequence[float] = L.PIXEL_SIGMAS,
                 pattern_seeds: Sequence[int] = range(5), spread_sigma: float = 0.6) -> NoiseReport:
    """Evaluate ``model`` under both protocols, each at sigma 0, ``spread_sigma`` and the given sigmas,
    and under the fixed-pattern protocol at ``spread_sigma`` with each of ``pattern_seeds``' single patterns."""
    fixed_pattern_sigmas = sorted({0.0, float(spread_sigma), *map(float, fixed_pattern_sigmas)})
    pixel_sigmas = sorted({0.0, float(spread_sigma), *map(float, pixel_sigmas)})
    if not pattern_seeds:
        raise ValueError("pattern_seeds must name at least one seed")
    spread = {int(s): L.evaluate_noise(model, images, labels, [spread_sigma], protocol="fixed-pattern", seed=s)
              [spread_sigma] for s in pattern_seeds}
    return NoiseReport(fixed_pattern=L.evaluate_noise(model, images, labels, fixed_pattern_sigmas,
                                                      protocol="fixed-pattern"),
                       pixel=L.evaluate_noise(model, images, labels, pixel_sigmas, protocol="pixel"),
                       pattern_spread=spread, spread_sigma=float(spread_sigma))


def pixel_units(report: NoiseReport) -> dict[float, float]:
    """The fixed-pattern protocol's accuracies keyed by its sigma in pixel units (sigma * std)."""
    return {round(s * report.std, 3): acc for s, acc in report.fixed_pattern.items()}


def noise_tables(report: NoiseReport) -> str:
    """Markdown: one table per protocol, accuracy (%) per sigma (the fixed-pattern protocol's sigma
    in its own normalized units and, below it, in pixel units)."""
    fixed, std = report.fixed_pattern, report.std
    return ("**Fixed-pattern protocol** (the original study's test: normalized images plus one fixed noise "
            "pattern; σ 0 = normalized, noise-free)\n\n"
            + L.markdown_table(["σ (normalized units)", *map(str, fixed)],
                               [[f"σ in pixel units (× {std:.4g})", *(f"{s * std:.3f}" for s in fixed)],
                                ["accuracy (%)", *fixed.values()]])
            + "\n\n**Pixel protocol** (independent noise on the [0, 1] images; σ in pixel units)\n\n"
            + L.markdown_table(["σ (pixel units)", *map(str, report.pixel)],
                               [["accuracy (%)", *report.pixel.values()]]))


def describe_noise(report: NoiseReport) -> str:
    """Three sentences on what the fixed-pattern protocol measures for this model: the normalization
    shift, both protocols at ``spread_sigma``, and the spread over single noise patterns."""
    sigma, spread, fixed = report.spread_sigma, report.pattern_spread, report.fixed_pattern
    normalized = fixed[0.0]
    return (f"Clean [0, 1] images: {report.clean:.2f} %. The same images normalized, with no noise at all: "
            f"{normalized:.2f} % ({normalized - report.clean:+.2f} points): that part of the fixed-pattern protocol "
            f"is a distribution shift, not noise.\n"
            f"At sigma {sigma} (normalized units, {sigma * report.std:.2f} in pixel units) the fixed-pattern protocol "
            f"gives {fixed[sigma]:.2f} %; the pixel protocol gives {report.pixel[sigma]:.2f} % at pixel sigma {sigma}, "
            f"a noise {1 / report.std:.1f} times as large.\n"
            f"Fixed-pattern protocol at sigma {sigma} with {len(spread)} single noise patterns (pattern seed: "
            "accuracy; seed 0 is the protocol's own): " + ", ".join(f"{s}: {a:.2f} %" for s, a in spread.items())
            + f" -> a spread of {max(spread.values()) - min(spread.values()):.2f} points from the pattern alone.")


def plot_noise(reports: dict[str, NoiseReport], title: str):
    """Accuracy vs noise sigma in pixel units under both protocols (pixel: solid, fixed-pattern:
    dashed, its sigma converted to pixel units), one colour per model."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, report in reports.items():
        prefix = f"{name}, " if len(reports) > 1 else ""
        line, = ax.plot(list(report.pixel), list(report.pixel.values()), "o-", label=f"{prefix}pixel protocol")
        fixed = pixel_units(report)
        ax.plot(list(fixed), list(fixed.values()), "s--", color=line.get_color(),
                label=f"{prefix}fixed-pattern protocol (the original study's)")
    std = next(iter(reports.values())).std
    ax.set(xlabel=f"noise σ in pixel units (fixed-pattern σ × {std:.4g})", ylabel="test accuracy (%)", title=title,
           ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8 if len(reports) > 1 else None)
    fig.tight_layout()
    return fig


def comparison_table(reports: dict[str, NoiseReport]) -> str:
    """Markdown: one row per model (clean, the fixed-pattern protocol's sigmas, the pixel protocol at
    0.2, 0.4, ...); with exactly two models a last row holds the second minus the first, in points."""
    if not reports:
        raise ValueError("comparison_table needs at least one model's NoiseReport")
    first = next(iter(reports.values()))
    pixel_sigmas = [s for s in first.pixel if s > 0][1::2]
    header = ["model", "clean", *(f"fixed-pattern σ={s} ({s * first.std:.2f} px)" for s in first.fixed_pattern),
              *(f"pixel σ={s}" for s in pixel_sigmas)]
    rows = [[name, r.clean, *r.fixed_pattern.values(), *(r.pixel[s] for s in pixel_sigmas)]
            for name, r in reports.items()]
    title = ("Accuracy (%); fixed-pattern σ is in normalized units (px: the same σ in pixel units), "
             "fixed-pattern σ=0.0 is normalized, noise-free")
    if len(rows) == 2:
        rows.append([f"{rows[1][0]} − {rows[0][0]}", *(b - a for a, b in zip(rows[0][1:], rows[1][1:]))])
        title += "; the last row is the difference in points"
    return title + "\n\n" + L.markdown_table(header, rows)


def study_comparison(recipe: str, report: NoiseReport) -> str:
    """Markdown: the original study's numbers for ``recipe`` ("baseline" or "asam") beside ours."""
    if recipe not in ORIGINAL_STUDY:
        raise ValueError(f"the original study has no {recipe!r} run; choose from {', '.join(ORIGINAL_STUDY)}")
    study = ORIGINAL_STUDY[recipe]
    ours = {"clean": report.clean, "fixed-pattern σ=0.6": report.fixed_pattern[0.6]}
    return L.markdown_table(["metric", "study (%)", "ours (%)", "difference (points)"],
                            [[k, study[k], ours[k], ours[k] - study[k]] for k in study])


def show_noise_examples(image: Tensor, pixel_sigmas: Sequence[float] = L.PIXEL_SIGMAS[::2],
                        fixed_pattern_sigmas: Sequence[float] = (0.0, *L.FIXED_PATTERN_SIGMAS)):
    """What the model sees: one digit (1x28x28) under each protocol, the pixel protocol in the first
    row and the fixed-pattern protocol in the second, on one grey scale from -1 to 3 (so the
    fixed-pattern protocol's normalization shows too)."""
    digit = image.reshape(1, 1, 28, 28)
    rows = ([L.add_gaussian_noise(digit, s) for s in pixel_sigmas]
            + [L.fixed_pattern_noise(digit, s) for s in fixed_pattern_sigmas])
    titles = [f"pixel σ={s}" for s in pixel_sigmas] + [f"fixed σ={s}" for s in fixed_pattern_sigmas]
    return show_digits(torch.cat(rows), titles, ncols=len(pixel_sigmas), vmin=-1, vmax=3,
                       title="What the model sees (grey scale -1 to 3; fixed-pattern σ in normalized units)")


def show_predictions(images: Tensor, labels: Tensor, predicted: Tensor, n: int = 24):
    """Two figures: the first ``n`` misclassified test digits and the first ``n // 2`` correct
    ones, each titled with its true and predicted label."""
    wrong = (predicted != labels).nonzero().flatten()
    right = (predicted == labels).nonzero().flatten()[: n // 2]

    def titles(idx: Tensor) -> list[str]:
        return [f"true {t} / pred {p}" for t, p in zip(labels[idx].tolist(), predicted[idx].tolist())]

    figures = []
    for idx, what in ((wrong[:n], f"Misclassified test digits ({len(wrong)} of {len(labels)})"),
                      (right, "Correctly classified test digits")):
        figures.append(show_digits(images[idx], titles(idx), ncols=8, title=what))
    return tuple(figures)


def save_notebook_run(setup: NotebookSetup, name: str, model: nn.Module, recipe: L.Recipe, history: list[dict],
                      train_seconds: float, noise: NoiseReport) -> tuple[Path, Path]:
    """Write a notebook's model (``checkpoints/lenet5_<name>.pt``) and results
    (``results/<name>.json``: recipe, noise under both protocols, history) under its output folder."""
    checkpoint = setup.output_dir / "checkpoints" / f"lenet5_{name}.pt"
    L.save_checkpoint(checkpoint, model, recipe=name, hyperparameters=recipe.as_dict(), seed=setup.seed,
                      quick=setup.quick)
    results = {"recipe": name, "hyperparameters": recipe.as_dict(), "seed": setup.seed, "quick": setup.quick,
               "device": str(setup.device), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "train_seconds": train_seconds, "clean_accuracy": noise.clean,
               "fixed_pattern_protocol": noise.fixed_pattern,
               f"fixed_pattern_protocol_pattern_spread_{noise.spread_sigma}": noise.pattern_spread,
               "pixel_protocol": noise.pixel, "history": history}
    path = setup.output_dir / "results" / f"{name}.json"
    with L.atomic_write(path) as f:
        json.dump(results, f, indent=1)
    print(f"saved {checkpoint} and {path}")
    return checkpoint, path


STUDY_LABELS = {"hessian_eigenvalue": "largest Hessian eigenvalue (the manipulation check)",
                "pixel_0.6": "pixel noise, sigma 0.6", "mnist_c_mean": "MNIST-C mean", "pgd_0.1": "PGD, epsilon 0.1",
                "clean": "clean accuracy"}


def study_answer(summary_dir: str | os.PathLike = "results/summary/mnist", contrast: str = "asam - sgd"):
    """The controlled answer, read from the committed study summary: prints the confirmatory tests of
    ``contrast`` and returns the headline figure (``headline.png``) as an image to display."""
    from IPython.display import Image

    summary_dir = Path(summary_dir)
    summary = json.loads((summary_dir / "study_summary.json").read_text())
    rows = {(r["contrast"], r["metric"]): r for r in summary["confirmatory"]}
    if not any(c == contrast for c, _ in rows):
        raise ValueError(f"no confirmatory test of {contrast!r} in {summary_dir}; "
                         f"choose from {', '.join(sorted({c for c, _ in rows}))}")
    print(f"{contrast}, paired by seed (mean difference [95 % CI], accuracy in points):")
    for metric, label in STUDY_LABELS.items():
        r = rows[contrast, metric]
        low, high = r["ci95"]
        inside = (f" (inside the ±{r['margin']:g} margin)"
                  if r["verdict"].startswith("supported") and r.get("equivalent") else "")
        print(f"  {label}: {r['verdict']}{inside}, {r['mean_difference']:+.2f} [{low:+.2f}, {high:+.2f}], n = {r['n']}")
    return Image(filename=str(summary_dir / "headline.png"))
