"""White-box L-infinity attacks on [0, 1] images, and the model's accuracy under them.

FGSM (Goodfellow et al., 2015) and PGD with a uniform random start (Madry et al., 2018), both on
the plain mean cross-entropy of the model in eval mode; every result is clipped to [0, 1]. Only
input gradients are taken (``torch.autograd.grad``): the parameters' ``.grad`` is never touched.
The strong attack beside PGD is AutoAttack's white-box pair, APGD-CE and APGD-T (Croce & Hein,
2020), from the maintained ``torchattacks`` library.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchattacks
from torch import Tensor, nn

import lenet_utils as L

EPSILONS = (0.05, 0.1, 0.2, 0.3)


def _check_eps(eps: float) -> None:
    L.check_number("eps", eps, low=0)


def _check_batch(images: Tensor, labels: Tensor) -> None:
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise TypeError("images must be a floating-point tensor")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or len(labels) != len(images):
        raise ValueError(f"labels must be a 1-D tensor with one label per image ({len(images)})")
    if len(images) and (images.min() < 0 or images.max() > 1):
        raise ValueError("images must be [0, 1] pixels")


def _input_gradient(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    """Gradient of the mean cross-entropy with respect to the images (model in eval mode)."""
    model.eval()
    with torch.enable_grad():
        x = images.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(F.cross_entropy(model(x), labels), x)
    return gradient


def fgsm(model: nn.Module, images: Tensor, labels: Tensor, eps: float) -> Tensor:
    """One step of size ``eps`` along the sign of the input gradient, clipped to [0, 1]."""
    _check_eps(eps)
    _check_batch(images, labels)
    return (images + eps * _input_gradient(model, images, labels).sign()).clamp(0, 1)


def _random_start(images: Tensor, eps: float, seed: int) -> Tensor:
    """``images`` plus uniform noise on [-eps, eps], from a generator on the images' device."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return (images + eps * (2 * noise - 1)).clamp(0, 1)


def _pgd_from(model: nn.Module, images: Tensor, labels: Tensor, start: Tensor, eps: float, steps: int,
              step_size: float) -> Tensor:
    x = start
    for _ in range(steps):
        x = x + step_size * _input_gradient(model, x, labels).sign()
        x = torch.clamp(x, images - eps, images + eps).clamp(0, 1)
    return x


def _check_pgd(eps: float, steps: int, step_size: float | None) -> float:
    _check_eps(eps)
    L.check_number("steps", steps, low=1, integer=True)
    if step_size is None:
        return 2.5 * eps / steps
    L.check_number("step_size", step_size, low=0, inclusive=False)
    return float(step_size)


def pgd(model: nn.Module, images: Tensor, labels: Tensor, eps: float, steps: int = 20,
        step_size: float | None = None, seed: int = 0) -> Tensor:
    """Projected gradient ascent on the cross-entropy within the L-infinity ``eps``-ball around
    ``images``, intersected with [0, 1]: a uniform random start drawn with ``seed``, then
    ``steps`` signed-gradient steps of ``step_size`` (default ``2.5 * eps / steps``)."""
    step_size = _check_pgd(eps, steps, step_size)
    _check_batch(images, labels)
    return _pgd_from(model, images, labels, _random_start(images, eps, seed), eps, steps, step_size)


@torch.no_grad()
def _correct(model: nn.Module, images: Tensor, labels: Tensor) -> int:
    model.eval()
    return (model(images).argmax(1) == labels).sum().item()


def evaluate_adversarial(model: nn.Module, images: Tensor, labels: Tensor, epsilons: Sequence[float] = EPSILONS,
                         n_pgd: int = 2000, pgd_steps: int = 20, seed: int = 0, batch_size: int = 1000) -> dict:
    """Accuracy (%) under FGSM on all ``images`` and under PGD (``pgd_steps`` steps, default step
    size, random start from ``seed``) on the first ``n_pgd``, for each epsilon, keyed by
    ``str(eps)`` (``"0.1"``). Batched by ``batch_size``; the PGD results do not depend on it (the
    random start is drawn for all ``n_pgd`` images at once, as :func:`pgd` draws it)."""
    for eps in epsilons:
        _check_eps(eps)
    epsilons = [float(eps) for eps in epsilons]
    if not epsilons or len(set(epsilons)) != len(epsilons):
        raise ValueError(f"epsilons must be distinct and non-empty, got {list(epsilons)}")
    for name, value in (("n_pgd", n_pgd), ("pgd_steps", pgd_steps), ("batch_size", batch_size)):
        L.check_number(name, value, low=1, integer=True)
    _check_batch(images, labels)
    if not len(images):
        raise ValueError("images must not be empty")
    n = min(n_pgd, len(images))
    batches = list(zip(images.split(batch_size), labels.split(batch_size)))
    result = {"fgsm": {}, "pgd": {}, "n_fgsm": len(images), "n_pgd": n, "pgd_steps": pgd_steps,
              "epsilons": epsilons}
    for eps in epsilons:
        correct = sum(_correct(model, fgsm(model, x, y, eps), y) for x, y in batches)
        result["fgsm"][str(eps)] = 100 * correct / len(images)
        correct = pgd_correct(model, images[:n], labels[:n], eps, pgd_steps, seed, batch_size)
        result["pgd"][str(eps)] = 100 * correct.sum().item() / n
    return result


@torch.no_grad()
def _correct_mask(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    model.eval()
    return model(images).argmax(1) == labels


def pgd_correct(model: nn.Module, images: Tensor, labels: Tensor, eps: float, steps: int = 20, seed: int = 0,
                batch_size: int = 1000) -> Tensor:
    """Per image, whether the model still classifies it correctly after :func:`pgd` (default step
    size, random start from ``seed`` drawn for all images at once, so batching does not matter)."""
    step_size = _check_pgd(eps, steps, None)
    _check_batch(images, labels)
    start = _random_start(images, eps, seed)
    return torch.cat([_correct_mask(model, _pgd_from(model, x, y, x0, eps, steps, step_size), y)
                      for x, y, x0 in zip(images.split(batch_size), labels.split(batch_size),
                                          start.split(batch_size))])


def apgd_correct(model: nn.Module, images: Tensor, labels: Tensor, eps: float, loss: str, steps: int = 100,
                 n_targets: int = 9, seed: int = 0) -> Tensor:
    """Per image, whether the model still classifies it correctly under torchattacks' APGD with
    ``loss`` "ce" (APGD-CE) or APGD-T ("dlr-targeted": the targeted DLR loss against each of the
    ``n_targets`` most likely wrong classes in turn), L-infinity ``eps``, one restart, in eval mode.

    torchattacks reseeds the global RNG with ``seed`` for its random start: the caller's RNG state
    is restored afterwards (``fork_rng``), so the attack neither depends on nor changes it."""
    _check_eps(eps)
    _check_batch(images, labels)
    L.check_number("steps", steps, low=1, integer=True)
    if loss not in ("ce", "dlr-targeted"):
        raise ValueError(f"loss must be 'ce' (APGD-CE) or 'dlr-targeted' (APGD-T), got {loss!r}")
    if eps == 0:  # torchattacks divides by eps in its random start
        return _correct_mask(model, images, labels)
    with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
        if loss == "ce":
            attack = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce")
        else:
            with torch.no_grad():
                n_classes = model.eval()(images[:1]).shape[1]
            L.check_number("n_targets", n_targets, low=1, high=n_classes - 1, integer=True)
            attack = torchattacks.APGDT(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed,
                                        n_classes=n_targets + 1)  # it attacks the n_classes - 1 top wrong classes
        adversarial = attack(images, labels)
    model.eval()
    return _correct_mask(model, adversarial, labels)


def evaluate_strong(model: nn.Module, images: Tensor, labels: Tensor, epsilons: Sequence[float], *, n: int = 1000,
                    steps: int = 100, n_targets: int = 9, pgd_steps: int = 20, seed: int = 0,
                    batch_size: int = 1000) -> dict:
    """Accuracy (%) on the first ``n`` images under APGD-CE and APGD-T (see :func:`apgd_correct`)
    for each epsilon, and under the per-image worst case of those two and PGD (``pgd_steps``, as
    :func:`evaluate_adversarial` runs it, so its PGD images are the same): an image counts as
    robust only if every attack fails on it. Keyed by ``str(eps)``."""
    for eps in epsilons:
        _check_eps(eps)
    epsilons = [float(eps) for eps in epsilons]
    if not epsilons or len(set(epsilons)) != len(epsilons):
        raise ValueError(f"epsilons must be distinct and non-empty, got {list(epsilons)}")
    for name, value in (("n", n), ("batch_size", batch_size)):
        L.check_number(name, value, low=1, integer=True)
    _check_batch(images, labels)
    images, labels = images[:n], labels[:n]
    result = {"apgd_ce": {}, "apgd_t": {}, "worst_case": {}, "n": len(images), "steps": steps,
              "n_targets": n_targets, "epsilons": epsilons}
    for eps in epsilons:
        masks = {key: _batched(apgd_correct, model, images, labels, batch_size, eps, loss, steps, n_targets, seed)
                 for key, loss in (("apgd_ce", "ce"), ("apgd_t", "dlr-targeted"))}
        worst = masks["apgd_ce"] & masks["apgd_t"] & pgd_correct(model, images, labels, eps, pgd_steps, seed,
                                                                 batch_size)
        for key, mask in (*masks.items(), ("worst_case", worst)):
            result[key][str(eps)] = 100 * mask.sum().item() / len(images)
    return result


def _batched(attack, model: nn.Module, images: Tensor, labels: Tensor, batch_size: int, *args) -> Tensor:
    return torch.cat([attack(model, x, y, *args) for x, y in zip(images.split(batch_size), labels.split(batch_size))])
