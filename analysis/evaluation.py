"""The study's evaluation of one trained model: every metric a record holds, on fixed data.

Every recipe is measured on the same images: the whole test set (or its first ``n_test`` images)
and one sharpness probe set of ``n_probe`` images drawn with ``probe_seed`` from the 48,000
images of the seed-42 split, which every recipe trains on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

import lenet_utils as L
from analysis import corruptions, sharpness


@dataclass(frozen=True)
class EvalSettings:
    """Sample counts and subset sizes of one evaluation (recorded in every record)."""

    n_test: int | None = None  # None: the whole test set
    n_probe: int = 2048  # sharpness probe images, drawn from the split's training images
    probe_seed: int = 0
    hessian_iters: int = 100
    hessian_tol: float = 1e-3
    direction_seeds: tuple[int, ...] = (0, 1, 2)

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


FULL = EvalSettings()
QUICK = EvalSettings(n_test=1000, n_probe=128, hessian_iters=3, direction_seeds=(0,))


def probe_set(split_images: Tensor, split_labels: Tensor, settings: EvalSettings) -> tuple[Tensor, Tensor]:
    """The fixed sharpness probe: ``n_probe`` images drawn with ``probe_seed`` from the split."""
    if not 0 < settings.n_probe <= len(split_images):
        raise ValueError(f"n_probe must lie in 1..{len(split_images)}, got {settings.n_probe}")
    order = torch.randperm(len(split_images), generator=torch.Generator().manual_seed(settings.probe_seed))
    idx = order[: settings.n_probe].to(split_images.device)
    return split_images[idx], split_labels[idx]


def evaluate_model(model: nn.Module, test: tuple[Tensor, Tensor], probe: tuple[Tensor, Tensor],
                   settings: EvalSettings, normalization: tuple[float, float]) -> dict:
    """Accuracies (%) on ``test``: clean, normalized (seed protocol at sigma 0), seed protocol,
    pixel noise without and with clipping, corruptions; sharpness on ``probe`` (plain mean
    cross-entropy): the Hessian eigenvalue of largest magnitude and 1-D loss slices along
    filter-normalized directions."""
    test = tuple(t[: settings.n_test] for t in test)

    def keyed(results: dict[float, float]) -> dict[str, float]:
        return {f"{sigma:.1f}": accuracy for sigma, accuracy in results.items()}

    eigenvalue, estimates = sharpness.hessian_max_eigenvalue(
        model, *probe, iters=settings.hessian_iters, tol=settings.hessian_tol)
    return {
        "clean": L.accuracy(model, *test),
        "normalized_clean": L.evaluate_noise(model, *test, [0.0], protocol="seed",
                                             normalization=normalization)[0.0],
        "seed_protocol": keyed(L.evaluate_noise(model, *test, L.SEED_SIGMAS, protocol="seed",
                                                normalization=normalization)),
        "pixel": keyed(L.evaluate_noise(model, *test, L.PIXEL_SIGMAS, protocol="pixel")),
        "pixel_clip": keyed(L.evaluate_noise(model, *test, L.PIXEL_SIGMAS, protocol="pixel", clip=True)),
        "corruptions": corruptions.evaluate_corruptions(model, *test),
        "hessian": {"eigenvalue": eigenvalue, "estimates": estimates, "iterations": len(estimates),
                    "converged": len(estimates) > 1 and abs(estimates[-1] - estimates[-2])
                    <= settings.hessian_tol * abs(estimates[-1])},
        "loss_directions": {"alphas": list(sharpness.ALPHAS), "losses": [
            sharpness.loss_along_direction(model, *probe, sharpness.ALPHAS,
                                           sharpness.filter_normalized_direction(model, seed=s))
            for s in settings.direction_seeds]},
    }
