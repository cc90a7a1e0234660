"""Idle-machine cost of the study: seconds per training epoch of every study recipe, and of one
model's whole evaluation (study.evaluation.FULL), at the given thread count. Nothing is asserted.

    MNIST_ROOT=../shared/mnist .venv/bin/python benchmarks/run_costs.py --threads 1 [--epochs 1]

A run's training cost is reported as seconds per epoch times the recipe's epochs (the epochs of one
recipe cost the same, so one timed epoch extrapolates); run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import lenet_utils as L  # noqa: E402
from study import data as study_data  # noqa: E402  (the study's data, exactly as its runs get it)
from study import evaluation  # noqa: E402
from study.recipes import STUDY_RECIPES  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1, help="epochs timed per recipe")
    parser.add_argument("--configs", nargs="+", choices=list(STUDY_RECIPES), default=list(STUDY_RECIPES))
    parser.add_argument("--weights", type=Path, help="a trained model to evaluate (default: the last one timed)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2,000 training images, the quick evaluation")
    args = parser.parse_args(argv)
    size = study_data.QUICK if args.quick else study_data.FULL
    torch.set_num_threads(args.threads)
    data = study_data.load_data("mnist", torch.device("cpu"), size)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.2f}")
    model = None
    for name in args.configs:
        recipe = STUDY_RECIPES[name]
        x, y, val = data["split"] if recipe.split else data["full"]
        L.set_seed(0)
        model = L.LeNet5()
        history, _ = replace(recipe, epochs=args.epochs).fit(model, x, y, val_data=val, progress=False)
        per_epoch = sum(row["seconds"] for row in history) / len(history)
        minutes = per_epoch * recipe.epochs / 60
        print(f"{name:>10}: {per_epoch:6.1f} s per epoch x {recipe.epochs} epochs = {minutes:5.1f} min of training")
    if args.weights:
        model = L.LeNet5()
        L.load_checkpoint(args.weights, model)
    start = time.perf_counter()
    metrics = evaluation.evaluate_model(model, data["test"], data["probe"], size.evaluation,
                                        (L.MNIST_MEAN, L.MNIST_STD))
    parts = ", ".join(f"{k} {v:.1f}" for k, v in metrics["seconds"].items())
    print(f"evaluation of one model: {time.perf_counter() - start:.1f} s ({parts})")


if __name__ == "__main__":
    main()
