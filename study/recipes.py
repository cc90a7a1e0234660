"""The study's configurations: the notebooks' two recipes (``lenet_utils.BASELINE``, ``lenet_utils.ASAM``)
and the controlled variations of them that ``scripts/run_study.py`` trains (results/ANALYSIS_PLAN.md)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import partial

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

import lenet_utils as L

# SWALR's anneal into the averaged epochs, as in torch's SWA documentation (``SWALR(optimizer,
# anneal_strategy="linear", anneal_epochs=5, swa_lr=...)``): 5 epochs from the lr MultiStepLR left to
# ``swa_lr``, then constant, the constant-lr SWA of Izmailov et al. (2018). In the study's ``swa``
# recipe the lr at swa_start already equals swa_lr, so the anneal changes nothing there.
SWA_ANNEAL_EPOCHS = 5
SWA_ANNEAL_STRATEGY = "linear"


@dataclass(frozen=True, kw_only=True)
class SWARecipe(L.Recipe):
    """A :class:`lenet_utils.Recipe` whose last epochs average the weights (stochastic weight
    averaging, Izmailov et al., 2018): after ``round(swa_start * epochs)`` epochs (at least one
    epoch is averaged) the lr follows ``SWALR`` to ``swa_lr`` and an ``AveragedModel`` takes the
    weights after each epoch; the model ends with the averaged weights."""

    swa_start: float  # fraction of epochs after which weights are averaged, in (0, 1)
    swa_lr: float  # the lr SWALR anneals to for the averaged epochs

    def __post_init__(self) -> None:
        super().__post_init__()
        L.check_number("swa_start", self.swa_start, low=0, high=1, inclusive=False)
        L.check_number("swa_lr", self.swa_lr, low=0, inclusive=False)

    def swa_epochs(self) -> int:
        """The number of averaged epochs: those after ``round(swa_start * epochs)``, at least one
        (so a 2-epoch quick run still averages)."""
        return self.epochs - min(round(self.swa_start * self.epochs), self.epochs - 1)

    def fit(self, model: nn.Module, images: Tensor, labels: Tensor, *, seed: int | torch.Generator = 0,
            optimizer: torch.optim.Optimizer | None = None, on_epoch=None, on_step=None,
            **train_options) -> tuple[list[dict], torch.optim.Optimizer]:
        """As :meth:`lenet_utils.Recipe.fit`; one generator runs through both phases, and history
        rows, ``on_epoch`` and ``on_step`` count across them. A row's ``val_*`` are those of the
        running, not the averaged, weights."""
        optimizer = optimizer or self.make_optimizer(model.parameters())
        generator = L.as_generator(seed, images.device)
        settings = {**self.train_settings(), **train_options}
        start = self.epochs - self.swa_epochs()
        steps_per_epoch = -(-len(images) // self.batch_size)
        # Phase 1: the recipe's own MultiStepLR, no averaging.
        history = L.train(model, optimizer, images, labels, epochs=start, scheduler=self.make_scheduler(optimizer),
                          seed=generator, on_epoch=on_epoch, on_step=on_step, **settings) if start else []
        # Phase 2: SWALR, and the average taken after each epoch.
        average = AveragedModel(model)
        swa_scheduler = SWALR(optimizer, swa_lr=self.swa_lr, anneal_epochs=SWA_ANNEAL_EPOCHS,
                              anneal_strategy=SWA_ANNEAL_STRATEGY)
        for epoch in range(start, self.epochs):
            count = None if on_step is None else partial(lambda offset, step: on_step(offset + step),
                                                         epoch * steps_per_epoch)
            rows = L.train(model, optimizer, images, labels, epochs=1, scheduler=swa_scheduler, seed=generator,
                           on_step=count, **settings)
            average.update_parameters(model)
            history.append({**rows[0], "epoch": epoch + 1})
            if on_epoch is not None:
                on_epoch(history[-1])
        with torch.no_grad():  # the model ends with the averaged weights
            for p, q in zip(model.parameters(), average.module.parameters()):
                p.copy_(q)
        if L.has_batchnorm(model):
            update_bn(images.split(self.batch_size), model)
        return history, optimizer


def with_swa(recipe: L.Recipe, swa_start: float, swa_lr: float) -> SWARecipe:
    """``recipe`` with its last ``1 - swa_start`` of training averaged at ``swa_lr``."""
    return SWARecipe(**{f.name: getattr(recipe, f.name) for f in fields(L.Recipe)}, swa_start=swa_start, swa_lr=swa_lr)


SGD = replace(L.ASAM, sam_rho=None, sam_adaptive=False)  # the controlled ablation: ASAM with SAM switched off
STUDY_RECIPES: dict[str, L.Recipe] = {
    "baseline": L.BASELINE,
    "asam": L.ASAM,
    "sgd": SGD,
    "sam-0.05": replace(L.ASAM, sam_rho=0.05, sam_adaptive=False),  # Foret et al.'s CIFAR default
    "sam-0.5": replace(L.ASAM, sam_rho=0.5, sam_adaptive=False),  # about ASAM's measured ||e(w)||
    "noise-aug": replace(SGD, noise_max_sigma=0.6),
    "adam-sam": replace(L.BASELINE, sam_rho=0.05),
    # Controls for SAM's extra cost and for the other route to flat minima (Kaddour et al., 2022).
    # sgd-2x: SGD with SAM's number of gradient evaluations (2 x 80 epochs, milestones at the same fractions).
    "sgd-2x": replace(SGD, epochs=160),
    # swa: the sgd run, its weights averaged after each of its last 20 epochs (swa_start 0.75) at a constant lr
    # of 0.004, the lr sgd itself has at 75 % of training (0.1 * 0.2 ** 2): averaging starts without a jump in
    # lr, and SWALR holds it there instead of the final drop to 0.0008 (constant-lr SWA, Izmailov et al., 2018).
    "swa": with_swa(SGD, swa_start=0.75, swa_lr=0.004),
    # Study v3 (results/ANALYSIS_PLAN.md, amendment v3): ASAM's perturbation size swept around its 2.0 ...
    "asam-0.5": replace(L.ASAM, sam_rho=0.5),
    "asam-1.0": replace(L.ASAM, sam_rho=1.0),
    "asam-4.0": replace(L.ASAM, sam_rho=4.0),
    # ... and SWA that really averages: the same last-quarter averaging as swa, at a constant lr of 0.02 (a
    # fifth of the initial lr, as Izmailov et al. average), reached from 0.004 by SWALR's 5-epoch linear anneal.
    "swa-0.02": with_swa(SGD, swa_start=0.75, swa_lr=0.02),
}
