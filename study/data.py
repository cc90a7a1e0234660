"""What one study run gets: its size (the full study, or the quick smoke test) and its data, loaded
once per process, exactly as ``scripts/run_study.py`` and ``benchmarks/run_costs.py`` use them."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

import lenet_utils as L
from study import evaluation
from study.recipes import STUDY_RECIPES


@dataclass(frozen=True)
class Size:
    """How much data and training a run gets: the full study, or the quick smoke test."""

    epochs: int | None  # None: the recipe's own
    n_train: int | None  # None: every image
    n_val: int | None
    evaluation: evaluation.EvalSettings


FULL = Size(None, None, None, evaluation.FULL)
QUICK = Size(2, 2000, 1000, evaluation.QUICK)


def recipe_for(name: str, size: Size) -> L.Recipe:
    """The configuration's recipe, with the epochs of ``size``."""
    recipe = STUDY_RECIPES[name]
    return replace(recipe, epochs=size.epochs) if size.epochs else recipe


_DATA: dict = {}


def load_data(dataset: str, device: torch.device, size: Size) -> dict:
    """Full training set, the seed-42 80/20 split (with val data), the test set and the sharpness
    probe, cut to ``size``; loaded once per process."""
    key = (dataset, str(device), size)
    if key not in _DATA:
        images, labels = L.load_dataset(dataset, train=True, device=device)
        tr_x, tr_y, va_x, va_y = L.train_val_split(images, labels)
        n, n_val = size.n_train, size.n_val
        _DATA[key] = {"full": (images[:n], labels[:n], None),
                      "split": (tr_x[:n], tr_y[:n], (va_x[:n_val], va_y[:n_val])),
                      "test": L.load_dataset(dataset, train=False, device=device),
                      "probe": evaluation.probe_set(tr_x, tr_y, size.evaluation)}
    return _DATA[key]
