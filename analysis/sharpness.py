"""Sharpness of the loss at a model's weights: the Hessian's extreme eigenvalues (Lanczos, and the
older power iteration) and trace (Hutchinson) from Hessian-vector products, the adaptive sharpness
(worst loss increase in ASAM's |w|-scaled ball), and 1-D loss slices along filter-normalized
random directions."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import Tensor, nn
from torch.func import functional_call

import lenet_utils as L

ALPHAS = tuple(round(-1 + 0.1 * i, 1) for i in range(21))  # the loss slices' steps, -1 to 1

def _functional_loss(model: nn.Module, images: Tensor, labels: Tensor,
                     loss_fn: Callable[[Tensor, Tensor], Tensor]) -> tuple[Callable, dict[str, Tensor]]:
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    model.eval()

    def loss(p: dict[str, Tensor], x: Tensor = images, y: Tensor = labels) -> Tensor:
        return loss_fn(functional_call(model, (p, buffers), (x,)), y)

    return loss, params


def _hvp(model: nn.Module, images: Tensor, labels: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor],
         batch_size: int | None) -> tuple[Callable, dict[str, Tensor]]:
    """(v -> H v, the weights) for the Hessian H of ``loss_fn`` at the model's weights, in eval mode.

    The images are taken in chunks of ``batch_size`` (None: all at once), H being the chunk
    Hessians' mean weighted by chunk size (exact for a ``loss_fn`` that averages over images). Each
    chunk's gradient graph is built once and kept, so a product costs one double-backward pass;
    chunks of 256-512 LeNet-5 images run ~1.6x faster than one of 2,048 (cache), and the kept graph
    ~1.3x faster than ``jvp(grad(loss))``, which redoes the forward and backward passes."""
    if batch_size is not None:
        L.check_number("batch_size", batch_size, low=1, integer=True)
    loss, params = _functional_loss(model, images, labels, loss_fn)
    leaves = [p.requires_grad_(True) for p in params.values()]  # detached from the model: its .grad stays
    chunks = []
    for x, y in zip(images.split(batch_size or len(images)), labels.split(batch_size or len(images))):
        with torch.enable_grad():
            gradient = torch.autograd.grad(loss(params, x, y), leaves, create_graph=True)
        curved = [(i, g) for i, g in enumerate(gradient) if g.requires_grad]  # others: a zero Hessian row
        chunks.append((len(x) / len(images), curved))

    def hvp(v: dict[str, Tensor]) -> dict[str, Tensor]:
        vs = list(v.values())
        total = [torch.zeros_like(p) for p in leaves]
        for weight, curved in chunks:
            if curved:
                hv = torch.autograd.grad([g for _, g in curved], leaves, [vs[i] for i, _ in curved],
                                         retain_graph=True, allow_unused=True)
                for t, h in zip(total, hv):
                    if h is not None:
                        t.add_(h, alpha=weight)
        return dict(zip(params, total))

    return hvp, params


def _dot(a: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def _power_iteration(hvp: Callable, params: dict[str, Tensor], iters: int, tol: float, seed: int,
                     shift: float = 0.0) -> list[float]:
    """Rayleigh quotients of H - shift * I along its power iteration, until two successive ones
    differ by at most ``tol`` relative, or for ``iters`` iterations."""
    generator = torch.Generator().manual_seed(seed)
    v = {k: torch.randn(p.shape, generator=generator).to(p) for k, p in params.items()}
    estimates: list[float] = []
    for _ in range(iters):
        norm = _dot(v, v).sqrt()
        v = {k: x / norm for k, x in v.items()}
        hv = {k: x - shift * v[k] for k, x in hvp(v).items()}
        estimates.append(_dot(hv, v).item())
        v = hv
        if len(estimates) > 1 and abs(estimates[-1] - estimates[-2]) <= tol * abs(estimates[-1]):
            break
    return estimates


def hessian_max_eigenvalue(model: nn.Module, images: Tensor, labels: Tensor, *,
                           loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                           iters: int = 100, tol: float = 1e-4, seed: int = 0,
                           batch_size: int | None = 512) -> tuple[float, list[float]]:
    """Largest (algebraic) eigenvalue of the Hessian of ``loss_fn`` at the model's weights, by power
    iteration on Hessian-vector products.

    Power iteration finds the eigenvalue of largest magnitude, lambda_1. If lambda_1 < 0, a second
    power iteration on H - lambda_1 * I (positive semi-definite, dominated by lambda_max - lambda_1)
    gives lambda_max. Each run stops when two successive Rayleigh quotients differ by at most ``tol``
    relative, or after ``iters`` iterations (so the shifted run tests convergence relative to
    lambda_max - lambda_1).

    Returns (lambda_max, the estimates after each iteration: lambda_1's, then, if shifted, those
    of lambda_max). Each iteration is one Hessian-vector product over the images in chunks of
    ``batch_size`` (exact for a ``loss_fn`` that averages over images; None: one chunk). Leaves
    the model's weights as they were and the model in eval mode.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    hvp, params = _hvp(model, images, labels, loss_fn, batch_size)
    estimates = _power_iteration(hvp, params, iters, tol, seed)
    if estimates[-1] < 0:
        shift = estimates[-1]
        estimates += [e + shift for e in _power_iteration(hvp, params, iters, tol, seed, shift)]
    return estimates[-1], estimates


def _eigsh_one(operator: LinearOperator, which: str, v0: np.ndarray, tol: float,
               maxiter: int) -> tuple[float | None, bool]:
    """One extreme eigenvalue (``which`` "LA" or "SA") by ARPACK's implicitly restarted Lanczos.
    Non-convergence is a result, not an error: ARPACK's converged value if it has one, else None."""
    try:
        return float(eigsh(operator, k=1, which=which, v0=v0, tol=tol, maxiter=maxiter,
                           return_eigenvectors=False)[0]), True
    except ArpackNoConvergence as error:
        values = error.eigenvalues
        return (float(values[0]) if len(values) else None), False


def hessian_extremes(model: nn.Module, images: Tensor, labels: Tensor, *,
                     loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                     tol: float = 1e-4, maxiter: int = 100, seed: int = 0,
                     batch_size: int | None = 512) -> dict:
    """Largest and smallest (algebraic) eigenvalues of the Hessian of ``loss_fn`` at the model's
    weights, by ``scipy.sparse.linalg.eigsh`` (Lanczos) on a LinearOperator over the
    Hessian-vector product, in float64 on scipy's side.

    Unlike power iteration, Lanczos finds either end of the spectrum whatever the signs and
    magnitudes (power iteration fails when |lambda_min| > lambda_max), and its ``tol`` bounds the
    Ritz value's relative error instead of the change between iterates. ``maxiter`` caps ARPACK's
    restarts; both runs start from one vector drawn with ``seed``. Returns {"max", "min": the
    eigenvalue (None if ARPACK converged to nothing), "max_converged", "min_converged",
    "matvecs": Hessian-vector products over both runs}. ``batch_size`` as in
    :func:`hessian_max_eigenvalue`; the model's weights are left as they were, in eval mode.
    """
    L.check_number("tol", tol, low=0)  # 0: machine precision
    L.check_number("maxiter", maxiter, low=1, integer=True)
    hvp, params = _hvp(model, images, labels, loss_fn, batch_size)
    template = next(iter(params.values()))
    sizes = [p.numel() for p in params.values()]
    calls = [0]

    def matvec(vector: np.ndarray) -> np.ndarray:
        calls[0] += 1
        flat = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float64).ravel()).to(template)
        v = {k: x.view_as(p) for (k, p), x in zip(params.items(), flat.split(sizes))}
        return torch.cat([h.flatten() for h in hvp(v).values()]).double().cpu().numpy()

    n = sum(sizes)
    operator = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(n)
    largest, max_converged = _eigsh_one(operator, "LA", v0, tol, maxiter)
    smallest, min_converged = _eigsh_one(operator, "SA", v0, tol, maxiter)
    return {"max": largest, "min": smallest, "max_converged": max_converged, "min_converged": min_converged,
            "matvecs": calls[0]}


def _check_radii(radii: Sequence[float], steps: int) -> list[float]:
    L.check_number("steps", steps, low=1, integer=True)
    if isinstance(radii, (str, bytes)) or not isinstance(radii, Sequence) or not radii:
        raise TypeError(f"radii must be a non-empty sequence of real numbers, got {radii!r}")
    for r in radii:
        L.check_number("radii", r, low=0, inclusive=False)
    return [float(r) for r in radii]


def _ascend(loss_of_u: Callable, shapes: dict[str, Tensor], radius: float, steps: int) -> float:
    """Normalized gradient ascent on u within ||u||_2 <= radius, projected after each step; the
    first step goes to the sphere along the gradient (ASAM's own first-order maximizer), later ones
    are radius / 4 long. Returns the largest loss seen (a lower bound on the maximum)."""
    gradient_of = torch.func.grad_and_value(loss_of_u)
    u = {k: torch.zeros_like(p) for k, p in shapes.items()}
    best = -float("inf")
    for step in range(steps + 1):
        g, value = gradient_of(u)
        best = max(best, value.item())
        if step == steps:
            break
        g_norm = _dot(g, g).sqrt()
        if g_norm == 0:  # a stationary point of the scaled loss: nothing to ascend along
            break
        length = radius if step == 0 else radius / 4
        u = {k: u[k] + length * g[k] / g_norm for k in u}
        u_norm = _dot(u, u).sqrt()
        u = {k: x * min(1.0, radius / u_norm.item()) for k, x in u.items()}
    return best


def adaptive_sharpness(model: nn.Module, images: Tensor, labels: Tensor, radii: Sequence[float], *,
                       steps: int = 10, loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> dict:
    """Adaptive sharpness (Andriushchenko et al., 2023, in ASAM's ball): for each radius r,
    max over ||delta / |w| ||_2 <= r of L(w + delta) - L(w), all parameters jointly.

    Written as delta = |w| * u, the ball is ||u||_2 <= r, and rescaling that leaves the network's
    function unchanged (layer 1 times c, layer 2 over c, for a ReLU net) leaves the value unchanged
    too, which lambda_max is not. The maximum is sought by ``steps`` steps of projected normalized
    gradient ascent in u (see :func:`_ascend`); the value is the largest increase seen, a lower
    bound on the true maximum. Returns {"loss": L(w), "increase": {str(r): value}}, in eval mode,
    the model's weights left as they were.
    """
    radii = _check_radii(radii, steps)
    loss, params = _functional_loss(model, images, labels, loss_fn)
    scale = {k: p.abs() for k, p in params.items()}

    def loss_of_u(u: dict[str, Tensor]) -> Tensor:
        return loss({k: p + scale[k] * u[k] for k, p in params.items()})

    with torch.no_grad():
        base = loss(params).item()
    with torch.enable_grad():
        increase = {str(r): _ascend(loss_of_u, params, r, steps) - base for r in radii}
    return {"loss": base, "increase": increase}


def hessian_trace(model: nn.Module, images: Tensor, labels: Tensor, *, samples: int = 100, seed: int = 0,
                  loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                  batch_size: int | None = 512) -> tuple[float, float]:
    """Trace of the Hessian of ``loss_fn`` at the model's weights by Hutchinson's estimator:
    the mean of v^T H v over ``samples`` Rademacher vectors v drawn with ``seed`` (as PyHessian).

    Returns (mean, standard error of the mean). Exact, with zero error, for a diagonal Hessian.
    ``batch_size`` as in :func:`hessian_max_eigenvalue`. Leaves the model's weights as they were
    and the model in eval mode.
    """
    L.check_number("samples", samples, low=2, integer=True)  # 2: for a standard error
    hvp, params = _hvp(model, images, labels, loss_fn, batch_size)
    generator = torch.Generator().manual_seed(seed)
    quadratic_forms = []
    for _ in range(samples):
        v = {k: (2 * torch.randint(0, 2, p.shape, generator=generator) - 1).to(p) for k, p in params.items()}
        quadratic_forms.append(_dot(hvp(v), v).item())
    values = torch.tensor(quadratic_forms, dtype=torch.float64)
    return values.mean().item(), (values.std() / samples ** 0.5).item()


def slice_rise(losses: Sequence[Sequence[float]], alphas: Sequence[float]) -> float:
    """One number for the loss slices of :func:`loss_along_direction` (one row per direction):
    the mean over directions of (L(+1) + L(-1)) / 2 - L(0)."""
    alphas = [float(a) for a in alphas]
    missing = [a for a in (-1.0, 0.0, 1.0) if a not in alphas]
    if missing:
        raise ValueError(f"alphas must contain -1, 0 and 1; missing {missing}")
    if not losses or any(len(row) != len(alphas) for row in losses):
        raise ValueError(f"losses must be a non-empty list of rows of {len(alphas)} losses, one per alpha")
    minus, zero, plus = (alphas.index(a) for a in (-1.0, 0.0, 1.0))
    return sum((row[plus] + row[minus]) / 2 - row[zero] for row in losses) / len(losses)


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
            weight_norm, d_norm = (torch.linalg.vector_norm(t, dim=tuple(range(1, p.dim())), keepdim=True)
                                   for t in (p.detach(), d))
            d *= weight_norm / d_norm
        direction[name] = d
    return direction


@torch.no_grad()
def loss_along_direction(model: nn.Module, images: Tensor, labels: Tensor, alphas: Sequence[float],
                         direction: dict[str, Tensor], *,
                         loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> list[float]:
    """Loss at w + alpha * direction for each alpha (a 1-D slice of the loss landscape), in eval mode."""
    loss, params = _functional_loss(model, images, labels, loss_fn)
    return [loss({k: p + alpha * direction[k] for k, p in params.items()}).item() for alpha in alphas]
