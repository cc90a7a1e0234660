"""Sharpness of the loss at a model's weights: Hessian eigenvalues (power iteration on
Hessian-vector products) and 1-D loss slices along filter-normalized random directions."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

ALPHAS = tuple(round(-1 + 0.1 * i, 1) for i in range(21))  # the loss slices' steps, -1 to 1

def _functional_loss(model: nn.Module, images: Tensor, labels: Tensor,
                     loss_fn: Callable[[Tensor, Tensor], Tensor]) -> tuple[Callable, dict[str, Tensor]]:
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    model.eval()

    def loss(p: dict[str, Tensor]) -> Tensor:
        return loss_fn(functional_call(model, (p, buffers), (images,)), labels)

    return loss, params


def hessian_max_eigenvalue(model: nn.Module, images: Tensor, labels: Tensor, *,
                           loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                           iters: int = 100, tol: float = 1e-4, seed: int = 0) -> tuple[float, list[float]]:
    """Largest-magnitude eigenvalue of the Hessian of ``loss_fn`` at the model's weights, by power
    iteration on Hessian-vector products (``torch.func``, forward-over-reverse).

    Returns (eigenvalue, the estimate after each iteration); stops when two successive estimates
    differ by less than ``tol`` relative, or after ``iters``. Leaves the model in eval mode, like
    :func:`evaluate`.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    loss, params = _functional_loss(model, images, labels, loss_fn)
    generator = torch.Generator().manual_seed(seed)
    v = {k: torch.randn(p.shape, generator=generator).to(p) for k, p in params.items()}
    estimates: list[float] = []
    for _ in range(iters):
        norm = torch.sqrt(sum((x * x).sum() for x in v.values()))
        v = {k: x / norm for k, x in v.items()}
        with warnings.catch_warnings():  # torch's jvp decompositions still use torch.jit.script
            warnings.filterwarnings("ignore", message=".*torch.jit.script", category=FutureWarning)
            _, hv = jvp(grad(loss), (params,), (v,))
        estimates.append(sum((hv[k] * v[k]).sum() for k in v).item())  # Rayleigh quotient
        v = hv
        if len(estimates) > 1 and abs(estimates[-1] - estimates[-2]) <= tol * abs(estimates[-1]):
            break
    return estimates[-1], estimates


def filter_normalized_direction(model: nn.Module, seed: int = 0) -> dict[str, Tensor]:
    """A random direction scaled filter by filter to the weights' norms (Li et al., 2018);
    zero for biases and other 1-D parameters."""
    generator = torch.Generator().manual_seed(seed)
    direction = {}
    for name, p in model.named_parameters():
        d = torch.randn(p.shape, generator=generator).to(p)
        if p.dim() <= 1:
            d.zero_()
        else:
            dims = tuple(range(1, p.dim()))
            norm = lambda t: torch.linalg.vector_norm(t, dim=dims, keepdim=True)  # noqa: E731
            d *= norm(p.detach()) / norm(d)
        direction[name] = d
    return direction


@torch.no_grad()
def loss_along_direction(model: nn.Module, images: Tensor, labels: Tensor, alphas: Sequence[float],
                         direction: dict[str, Tensor], *,
                         loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> list[float]:
    """Loss at w + alpha * direction for each alpha (a 1-D slice of the loss landscape), in eval mode."""
    loss, params = _functional_loss(model, images, labels, loss_fn)
    return [loss({k: p + alpha * direction[k] for k, p in params.items()}).item() for alpha in alphas]
