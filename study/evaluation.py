"""The study's record of one trained model: every metric a record holds, on fixed data.

Every recipe is measured on the same images: the whole test set (or its first ``n_test`` images)
and one sharpness probe set of ``n_probe`` images drawn with ``probe_seed`` from the 48,000
images of the seed-42 split, which every recipe trains on.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

import lenet_utils as L
from analysis import adversarial, corruptions, sharpness


@dataclass(frozen=True)
class EvalSettings:
    """Sample counts and subset sizes of one evaluation (recorded in every record). Test subsets
    are the first images of the test set; sharpness subsets the first images of the probe set."""

    n_test: int | None = None  # None: the whole test set
    n_sweep: int = 1000  # images per corruption severity in the severity sweeps
    n_pgd: int = 1000
    pgd_steps: int = 20
    epsilons: tuple[float, ...] = adversarial.EPSILONS
    n_probe: int = 2048  # sharpness probe images, drawn from the split's training images
    probe_seed: int = 0
    lanczos_tol: float = 1e-3  # eigsh's relative accuracy of each extreme eigenvalue
    lanczos_maxiter: int = 3  # ARPACK restarts (~19 products each) per eigenvalue: lambda_min, near the
    # bulk of the spectrum, rarely converges within the budget and is then recorded as not converged
    adaptive_radii: tuple[float, ...] = (0.5, 2.0)  # fixed by ANALYSIS_PLAN.md, amendment v3
    adaptive_steps: int = 10
    # APGD-CE and APGD-T on the first n_pgd images, at eps 0.1 only: with 0.05 too one asam model took
    # 205 s on one idle thread (strong_attack 60 s of it; benchmarks/run_costs.py), over the ~3 min budget
    strong_epsilons: tuple[float, ...] = (0.1,)
    apgd_steps: int = 50  # AutoAttack standard runs 100: halved, and 3 targets not 9, to fit ~3 min a model
    apgd_targets: int = 3  # the most likely wrong classes, where APGD-T finds nearly all its successes
    n_trace: int = 512  # probe images for the Hessian trace
    trace_samples: int = 100
    n_slice: int = 512  # probe images for the loss slices
    direction_seeds: tuple[int, ...] = (0, 1, 2)

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


FULL = EvalSettings()
QUICK = EvalSettings(n_test=1000, n_sweep=100, n_pgd=100, pgd_steps=3, n_probe=128, lanczos_maxiter=1,
                     adaptive_steps=2, strong_epsilons=(0.1,), apgd_steps=3, apgd_targets=1,
                     n_trace=64, trace_samples=4, n_slice=64, direction_seeds=(0,))


def probe_set(split_images: Tensor, split_labels: Tensor, settings: EvalSettings) -> tuple[Tensor, Tensor]:
    """The fixed sharpness probe: ``n_probe`` images drawn with ``probe_seed`` from the split."""
    if not 0 < settings.n_probe <= len(split_images):
        raise ValueError(f"n_probe must lie in 1..{len(split_images)}, got {settings.n_probe}")
    order = torch.randperm(len(split_images), generator=torch.Generator().manual_seed(settings.probe_seed))
    idx = order[: settings.n_probe].to(split_images.device)
    return split_images[idx], split_labels[idx]


def evaluate_model(model: nn.Module, test: tuple[Tensor, Tensor], probe: tuple[Tensor, Tensor],
                   settings: EvalSettings, normalization: tuple[float, float]) -> dict:
    """Every metric of a record, with the time each group took (``seconds``).

    On ``test``: accuracy (%) clean, normalized (fixed-pattern protocol at sigma 0), under the
    fixed-pattern protocol (record key ``fixed_pattern_protocol``), under pixel noise without and with
    clipping, under every corruption at the benchmark's severity (and the MNIST-C and extended
    means), per severity on the first ``n_sweep`` images, under FGSM (all images) and PGD (first
    ``n_pgd``), and on those ``n_pgd`` under APGD-CE, APGD-T and their per-image worst case with PGD.
    On ``probe`` (plain mean cross-entropy): the Hessian's largest and smallest eigenvalues
    (Lanczos), the adaptive sharpness at each radius, the Hessian trace (Hutchinson) and 1-D loss
    slices along filter-normalized directions with their mean rise at alpha = +-1.
    """
    test = tuple(t[: settings.n_test] for t in test)
    seconds: dict[str, float] = {}

    def timed(name: str, compute):
        start = time.perf_counter()
        result = compute()
        seconds[name] = time.perf_counter() - start
        return result

    def keyed(results: dict[float, float]) -> dict[str, float]:
        return {f"{sigma:.1f}": accuracy for sigma, accuracy in results.items()}

    def noise() -> dict:
        return {"clean": L.accuracy(model, *test),
                "normalized_clean": L.evaluate_noise(model, *test, [0.0], protocol="fixed-pattern",
                                                     normalization=normalization)[0.0],
                "fixed_pattern_protocol": keyed(L.evaluate_noise(model, *test, L.FIXED_PATTERN_SIGMAS,
                                                        protocol="fixed-pattern", normalization=normalization)),
                "pixel": keyed(L.evaluate_noise(model, *test, L.PIXEL_SIGMAS, protocol="pixel")),
                "pixel_clip": keyed(L.evaluate_noise(model, *test, L.PIXEL_SIGMAS, protocol="pixel", clip=True))}

    def hessian() -> dict:
        extremes = sharpness.hessian_extremes(model, *probe, tol=settings.lanczos_tol,
                                              maxiter=settings.lanczos_maxiter)
        return {"eigenvalue": extremes["max"], "converged": extremes["max_converged"],
                "min_eigenvalue": extremes["min"], "min_converged": extremes["min_converged"],
                "matvecs": extremes["matvecs"], "method": "lanczos"}

    def adaptive() -> dict:
        result = sharpness.adaptive_sharpness(model, *probe, settings.adaptive_radii, steps=settings.adaptive_steps)
        return {**result, "radii": list(settings.adaptive_radii), "steps": settings.adaptive_steps}

    def trace() -> dict:
        mean, stderr = sharpness.hessian_trace(model, probe[0][: settings.n_trace], probe[1][: settings.n_trace],
                                               samples=settings.trace_samples)
        return {"mean": mean, "stderr": stderr}

    def slices() -> dict:
        images, labels = probe[0][: settings.n_slice], probe[1][: settings.n_slice]
        losses = [sharpness.loss_along_direction(model, images, labels, sharpness.ALPHAS,
                                                 sharpness.filter_normalized_direction(model, seed=s))
                  for s in settings.direction_seeds]
        return {"alphas": list(sharpness.ALPHAS), "losses": losses,
                "rise": sharpness.slice_rise(losses, sharpness.ALPHAS)}

    sweep = tuple(t[: settings.n_sweep] for t in test)
    metrics = timed("noise", noise)
    metrics |= {
        "corruptions": timed("corruptions", lambda: corruptions.evaluate_corruptions(model, *test)),
        "corruption_sweep": timed("corruption_sweep", lambda: corruptions.evaluate_corruption_sweep(model, *sweep)),
        "adversarial": timed("adversarial", lambda: adversarial.evaluate_adversarial(
            model, *test, settings.epsilons, n_pgd=settings.n_pgd, pgd_steps=settings.pgd_steps)),
        "strong_attack": timed("strong_attack", lambda: adversarial.evaluate_strong(
            model, *test, settings.strong_epsilons, n=settings.n_pgd, steps=settings.apgd_steps,
            n_targets=settings.apgd_targets, pgd_steps=settings.pgd_steps)),
        "hessian": timed("hessian", hessian),
        "adaptive_sharpness": timed("adaptive_sharpness", adaptive),
        "hessian_trace": timed("hessian_trace", trace),
        "loss_directions": timed("loss_directions", slices),
    }
    return {**metrics, "seconds": seconds}
