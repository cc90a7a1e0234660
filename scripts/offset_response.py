"""Exploratory: does the response to a constant input offset explain ASAM's gain on intensity shifts?

For every stored MNIST model of the study (``results/study/mnist/<config>_seed<k>.json`` with weights in
``weights/<config>_seed<k>.pt``), from the stored weights and without training, on the first 2,000
test images: the first layer's scale-free DC gain and the relative change of conv1's pre-activation
and of the logits under x -> x + c (``analysis/offset.py``), beside the record's brightness, fog and
stripe accuracy. Writes ``results/offset_response.json`` and ``results/summary/mnist/offset_response.png``
and prints, per configuration, mean and 95 % t-interval over seeds; then, within the SGD-recipe models,
Spearman correlations with the intensity-shift accuracy, the trend with rho, and paired asam - sgd
differences. Exploratory: no test here was planned, and no p-value is adjusted.

    nice .venv/bin/python scripts/offset_response.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import lenet_utils as L  # noqa: E402
from analysis.offset import first_layer_dc_gain, offset_response  # noqa: E402
from analysis.statistics import describe, paired_test  # noqa: E402

CONFIGS = ("sgd", "sgd-2x", "asam-0.5", "asam-1.0", "asam", "asam-4.0", "sam-0.05", "sam-0.5",
           "noise-aug", "swa", "swa-0.02", "baseline", "adam-sam")
SGD_RECIPE = tuple(c for c in CONFIGS if c not in ("baseline", "adam-sam"))
RHO = {"sgd": 0.0, "asam-0.5": 0.5, "asam-1.0": 1.0, "asam": 2.0, "asam-4.0": 4.0}  # ASAM's rho ladder
RHO_SEEDS = range(3, 13)  # the seeds every rung of the ladder has
CURVE_CONFIGS = ("sgd", "asam-0.5", "asam-1.0", "asam", "asam-4.0", "swa-0.02", "noise-aug")
OFFSETS = (-0.5, -0.3, -0.15, 0.0, 0.15, 0.3, 0.5)
CLIPPED_OFFSETS = (0.15, 0.3, 0.5)  # also measured clipped to [0, 1]: +0.5 clipped is MNIST-C's brightness
INTENSITY = ("brightness", "fog", "stripe")
PROBE = 0.3  # the offset whose responses are summarized
MEASURES = {  # name -> (label, unit)
    "mean_relative_dc_gain": ("conv1 relative DC gain, mean over filters", ""),
    "conv1_change_+0.3": ("conv1 pre-activation relative change at c = +0.3", ""),
    "logit_change_+0.3": ("logit relative change at c = +0.3", ""),
    "accuracy_+0.3": ("accuracy at c = +0.3, unclipped", "%"),
    "intensity_mean": ("mean of brightness/fog/stripe accuracy (record)", "%"),
    "clean_accuracy": ("clean test accuracy (record)", "%"),
}


def find_models(records: Path) -> list[tuple[dict, Path]]:
    """(record, weights path) of every full (non-quick) MNIST record of ``CONFIGS`` that has weights."""
    found = []
    for path in sorted(records.glob("*_seed*.json")):
        record = json.loads(path.read_text())
        weights = records / "weights" / f"{record['config']}_seed{record['seed']}.pt"
        if (record.get("config") in CONFIGS and record.get("dataset") == "mnist" and not record.get("quick")
                and weights.is_file()):
            found.append((record, weights))
    return sorted(found, key=lambda item: (CONFIGS.index(item[0]["config"]), item[0]["seed"]))


def measure(record: dict, weights: Path, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """One model's entry: the record's accuracies, the DC gain, the offset responses and the scalar measures."""
    model = L.LeNet5()
    L.load_checkpoint(weights, model)
    model.eval()
    corruptions = record["metrics"]["corruptions"]
    response = offset_response(model, images, labels, OFFSETS)
    clipped = {f"{c:+g}": L.accuracy(model, (images + c).clamp(0, 1), labels) for c in CLIPPED_OFFSETS}
    at = OFFSETS.index(PROBE)
    dc = first_layer_dc_gain(model)
    entry = {"config": record["config"], "seed": record["seed"], "weights": os.path.relpath(weights, ROOT),
             "clean_accuracy": record["metrics"]["clean"],
             "corruptions": {name: corruptions[name] for name in INTENSITY},
             "intensity_mean": float(np.mean([corruptions[name] for name in INTENSITY])),
             "dc_gain": dc, "offset_response": response, "accuracy_clipped": clipped}
    entry["measures"] = {"mean_relative_dc_gain": dc["mean_relative_dc_gain"],
                         "conv1_change_+0.3": response["conv1_relative_change"][at],
                         "logit_change_+0.3": response["logit_relative_change"][at],
                         "accuracy_+0.3": response["accuracy"][at],
                         "intensity_mean": entry["intensity_mean"], "clean_accuracy": entry["clean_accuracy"]}
    return entry


def by_config(models: list[dict], name: str, configs=CONFIGS, seeds=None) -> dict[str, dict[int, float]]:
    """config -> {seed: measure ``name``} (only ``seeds`` if given)."""
    out: dict[str, dict[int, float]] = {}
    for m in models:
        if m["config"] in configs and (seeds is None or m["seed"] in seeds):
            out.setdefault(m["config"], {})[m["seed"]] = m["measures"][name]
    return out


def summarize(models: list[dict]) -> dict:
    """config -> measure -> describe() over seeds (n, mean, std, 95 % t CI)."""
    values = {name: by_config(models, name) for name in MEASURES}
    return {config: {name: describe(values[name][config]) for name in MEASURES}
            for config in CONFIGS if config in values["intensity_mean"]}


def spearman(x: list[float], y: list[float]) -> dict:
    """Spearman's rank correlation with its two-sided p and n."""
    result = stats.spearmanr(x, y)
    return {"n": len(x), "rho": float(result.statistic), "p": float(result.pvalue)}


def associations(models: list[dict]) -> dict:
    """Within the SGD recipe: each offset measure against the intensity-shift accuracy (all models pooled,
    and within sgd and within asam), and against ASAM's rho (sgd = 0) on the seeds the ladder shares."""
    out: dict = {}
    pools = {"sgd-recipe (pooled)": SGD_RECIPE, "within sgd": ("sgd",), "within asam": ("asam",)}
    for name in ("logit_change_+0.3", "mean_relative_dc_gain", "conv1_change_+0.3", "accuracy_+0.3"):
        out[name] = {}
        for pool, configs in pools.items():
            chosen = [m for m in models if m["config"] in configs]
            out[name][f"vs intensity_mean, {pool}"] = spearman([m["measures"][name] for m in chosen],
                                                               [m["intensity_mean"] for m in chosen])
        ladder = [m for m in models if m["config"] in RHO and m["seed"] in RHO_SEEDS]
        out[name]["vs rho (sgd=0, asam-0.5..4.0, seeds 3-12)"] = spearman([RHO[m["config"]] for m in ladder],
                                                                          [m["measures"][name] for m in ladder])
    ladder = [m for m in models if m["config"] in RHO and m["seed"] in RHO_SEEDS]
    out["intensity_mean"] = {"vs rho (sgd=0, asam-0.5..4.0, seeds 3-12)": spearman(
        [RHO[m["config"]] for m in ladder], [m["intensity_mean"] for m in ladder])}
    return out


def paired(models: list[dict]) -> dict:
    """asam - sgd and swa-0.02 - sgd, paired by seed, for every measure (mean difference, 95 % CI, n, p); a pair
    whose configurations are not both among ``models`` is left out."""
    out = {}
    present = {m["config"] for m in models}
    for a, b in (("asam", "sgd"), ("swa-0.02", "sgd")):
        if not {a, b} <= present:
            continue
        out[f"{a} - {b}"] = {}
        for name in MEASURES:
            values = by_config(models, name)
            result = paired_test(values[a], values[b])
            out[f"{a} - {b}"][name] = {k: result[k] for k in ("n", "mean_difference", "ci95", "p")}
    return out


def _fmt(d: dict, digits: int) -> str:
    return f"{d['mean']:.{digits}f} [{d['ci95'][0]:.{digits}f}, {d['ci95'][1]:.{digits}f}]"


def report(summary: dict, assoc: dict, pairs: dict) -> str:
    """The per-config table, the associations and the paired differences, as printed (and saved beside the JSON)."""
    lines: list[str] = []
    out = lines.append
    digits = {"mean_relative_dc_gain": 3, "conv1_change_+0.3": 3, "logit_change_+0.3": 3}
    cols = list(MEASURES)
    out("Per configuration: mean [95 % t-interval] over seeds (first 2,000 MNIST test images; "
          "record accuracies on all 10,000)")
    out(f"{'config':<10} {'n':>3}  " + "  ".join(f"{c:>24}" for c in cols))
    for config, row in summary.items():
        out(f"{config:<10} {row[cols[0]]['n']:>3}  "
              + "  ".join(f"{_fmt(row[c], digits.get(c, 2)):>24}" for c in cols))
    out("\nSpearman rank correlations (exploratory, unadjusted):")
    for name, rows in assoc.items():
        for what, r in rows.items():
            out(f"  {name:<22} {what:<48} n={r['n']:>3}  rho={r['rho']:+.3f}  p={r['p']:.3g}")
    out("\nPaired by seed (mean difference [95 % CI], n, paired-t p):")
    for pair, rows in pairs.items():
        for name, r in rows.items():
            k = digits.get(name, 2)
            out(f"  {pair:<15} {name:<22} {r['mean_difference']:+.{k}f} "
                  f"[{r['ci95'][0]:+.{k}f}, {r['ci95'][1]:+.{k}f}]  n={r['n']}  p={r['p']:.3g}")
    return "\n".join(lines)


STYLE = {  # config -> (colour, marker): the rho ladder in reds darkening with rho, SAM blue, SWA purple
    "sgd": ("black", "o"), "sgd-2x": ("#999999", "o"),
    "asam-0.5": ("#fdae61", "o"), "asam-1.0": ("#f46d43", "o"), "asam": ("#d73027", "o"), "asam-4.0": ("#7f0000", "o"),
    "sam-0.05": ("#92c5de", "s"), "sam-0.5": ("#2166ac", "s"), "noise-aug": ("#1a9850", "^"),
    "swa": ("#c2a5cf", "D"), "swa-0.02": ("#762a83", "D"), "baseline": ("#bf812d", "x"), "adam-sam": ("#e7298a", "x"),
}


def plot(models: list[dict], path: Path, n_images: int) -> None:
    """Left: intensity-shift accuracy vs logit change at +0.3 per model; right: accuracy vs offset per config."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 7.4))
    for config in CONFIGS:
        chosen = [m for m in models if m["config"] == config]
        if not chosen:
            continue
        colour, marker = STYLE[config]
        left.scatter([m["measures"]["logit_change_+0.3"] for m in chosen], [m["intensity_mean"] for m in chosen],
                     s=34, color=colour, marker=marker, alpha=0.85, linewidths=1.2 if marker == "x" else 0,
                     label=f"{config} (n={len(chosen)}){', not SGD recipe' if config not in SGD_RECIPE else ''}")
    left.set_xlabel(f"logit relative change ||z(x+0.3) - z(x)|| / ||z(x)|| (mean over {n_images:,} test images)")
    left.set_ylabel("mean of brightness, fog and stripe accuracy (%, 10,000 test images)")
    left.set_title("Intensity-shift accuracy vs logit response to a +0.3 offset\n(one point per model)")
    left.legend(fontsize=8.5, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.13), title="config (seeds)",
                title_fontsize=9, frameon=False)
    left.grid(alpha=0.3)
    for config in CURVE_CONFIGS:
        chosen = [m for m in models if m["config"] == config]
        if not chosen:
            continue
        acc = np.array([m["offset_response"]["accuracy"] for m in chosen])
        colour, marker = STYLE[config]
        mean = acc.mean(0)
        right.plot(OFFSETS, mean, marker=marker, color=colour, label=f"{config} (n={len(chosen)})")
        if len(chosen) > 1:
            half = stats.t.ppf(0.975, len(chosen) - 1) * acc.std(0, ddof=1) / np.sqrt(len(chosen))
            right.fill_between(OFFSETS, mean - half, mean + half, color=colour, alpha=0.12)
    right.set_xlabel("constant offset c added to every pixel (images in [0, 1]; x + c not clipped)")
    right.set_ylabel(f"test accuracy on x + c (%), first {n_images:,} test images")
    right.set_title("Accuracy under a constant input offset\n(mean over seeds; band: 95 % t-interval)")
    right.set_xticks(OFFSETS)
    right.legend(fontsize=8.5, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.13), title="config (seeds)",
                 title_fontsize=9, frameon=False)
    right.grid(alpha=0.3)
    fig.suptitle("LeNet-5 on MNIST: does the response to a constant intensity offset explain ASAM's gain "
                 "on brightness/fog/stripe? (exploratory, stored weights)", fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with L.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, default=ROOT / "results" / "study" / "mnist")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "offset_response.json")
    parser.add_argument("--figure", type=Path, default=ROOT / "results" / "summary" / "mnist" / "offset_response.png")
    parser.add_argument("--n-images", type=int, default=2000)
    args = parser.parse_args(argv)
    L.check_number("--n-images", args.n_images, low=1, integer=True)
    torch.set_num_threads(1)
    images, labels = L.load_mnist(train=False)
    images, labels = images[: args.n_images], labels[: args.n_images]
    found = find_models(args.records)
    if not found:
        raise SystemExit(f"no MNIST records with weights under {args.records}")
    models = [measure(record, weights, images, labels) for record, weights in found]
    summary, assoc, pairs = summarize(models), associations(models), paired(models)
    payload = {"description": __doc__.splitlines()[0], "n_images": len(images), "offsets": list(OFFSETS),
               "clipped_offsets": list(CLIPPED_OFFSETS), "probe_offset": PROBE, "intensity": list(INTENSITY),
               "sgd_recipe": list(SGD_RECIPE), "summary": summary, "associations": assoc, "paired": pairs,
               "models": models}
    with L.atomic_write(args.out) as f:
        json.dump(payload, f, indent=1)
    plot(models, args.figure, len(images))
    text = report(summary, assoc, pairs)
    with L.atomic_write(args.out.with_suffix(".txt")) as f:
        f.write(f"Written by scripts/offset_response.py (exploratory, {len(models)} models).\n\n{text}\n")
    print(text)
    print(f"\nwrote {args.out}, {args.out.with_suffix('.txt')} ({len(models)} models) and {args.figure}")


if __name__ == "__main__":
    main()
