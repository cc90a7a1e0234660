"""Sharpness-Aware Minimization (Foret et al., 2021) and its adaptive variant ASAM (Kwon et al., 2021).

One class, torch only: copy this file into another project as it is. It follows davda54/sam's
interface (``first_step``, ``second_step``, ``step(closure)``) and adds one perturbation norm across
param groups with a ``rho`` per group, gradient clipping, a ``torch.amp.GradScaler`` and
schedulers attached to it, all through torch's public API.

    loss_fn(model(x), y).backward()
    optimizer.first_step(zero_grad=True)   # w -> w + e(w)
    loss_fn(model(x), y).backward()        # the gradient at w + e(w)
    optimizer.second_step(zero_grad=True)  # back to w, then the base optimizer's step
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor


class SAM(torch.optim.Optimizer):
    """SAM over any base optimizer; ``adaptive=True`` gives ASAM.

    ``first_step`` moves each parameter to w + e(w) with e(w) = rho * T(w)^2 g / ||T(w) g||_2
    (g the gradient, T(w) = |w| if adaptive else 1, the norm taken over all groups); ``second_step``
    restores w and runs ``base_optimizer`` with the gradient taken at w + e(w), clipped to
    ``max_grad_norm`` if set. ``state_dict`` is the base optimizer's, whose param groups this
    object shares, so an lr scheduler attached to it drives the base optimizer. After each
    ``first_step``, ``perturbation_norm`` holds ||e(w)||_2 as a tensor on the device.
    """

    def __init__(self, params, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                 adaptive: bool = False, max_grad_norm: float | None = None, **kwargs) -> None:
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer class, got {base_optimizer!r}")
        if max_grad_norm is not None:
            _check_real("max_grad_norm", max_grad_norm)
            if not max_grad_norm > 0:
                raise ValueError(f"max_grad_norm must be > 0 (None: no clipping), got {max_grad_norm}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.max_grad_norm = max_grad_norm
        self.perturbation_norm: Tensor | None = None  # ||e(w)||_2 of the last first_step
        self._saved: list[tuple[Tensor, Tensor]] | None = None  # (parameter, its w) while perturbed
        self._scaler: torch.amp.GradScaler | None = None  # the enabled scaler of the last first_step
        self._first_overflow: Tensor | None = None  # True (on the device) if that first gradient overflowed

    def add_param_group(self, param_group: dict) -> None:
        rho = param_group.get("rho", self.defaults["rho"])
        _check_real("rho", rho)
        if not math.isfinite(rho) or rho < 0:
            raise ValueError(f"rho must be finite and >= 0, got {rho}")
        super().add_param_group(param_group)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, scaler: torch.amp.GradScaler | None = None) -> None:
        """Step 1 of the paper: w -> w + e(w), the worst point of the rho-ball to first order.

        With ``scaler`` (the one that scaled the loss) the gradients are unscaled first; if they
        overflowed, nothing is perturbed and the ``second_step`` that follows is skipped. Pass the
        same scaler to ``second_step``, which also calls ``scaler.update()``."""
        self._scaler = scaler = _enabled(scaler)
        if scaler is not None:
            scaler.unscale_(self)  # it also records the overflow for scaler.update()
        norm = self._grad_norm()
        if scaler is not None:  # on overflow: a zero gradient, so a zero perturbation (no host sync)
            self._first_overflow = ~norm.isfinite()
            for p in self._params_with_grad():
                p.grad.masked_fill_(self._first_overflow, 0.0)
            norm = norm.masked_fill(self._first_overflow, 0.0)
        scale = 1.0 / norm.clamp_min(1e-12)  # zero gradients -> zero perturbation
        self._saved, norms = [], []
        # Plain loops, not torch._foreach_*: on LeNet-5 a whole SAM step costs the same either way (new/old
        # 0.99-1.01, measured side by side on one CPU thread) and gives bit-identical weights.
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = p.grad * (scale * group["rho"])  # rho g / ||T(w) g||
                if group["adaptive"]:
                    e_w.mul_(p * p)  # ASAM: times T(w)^2 = w^2
                self._saved.append((p, p.clone()))
                p.add_(e_w)
                norms.append(torch.linalg.vector_norm(e_w))
        self.perturbation_norm = _total_norm(norms) if norms else None
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, scaler: torch.amp.GradScaler | None = None) -> None:
        """Step 2 of the paper: back to w, then the base optimizer's step with the gradient taken at
        w + e(w). With ``scaler``: unscale that gradient, skip the step if either pass overflowed,
        then ``scaler.update()`` (do not call it yourself)."""
        if self._saved is None:
            raise RuntimeError("SAM.second_step() called without a preceding first_step()")
        self.step(zero_grad=zero_grad, scaler=scaler)  # through step(), so that an lr scheduler sees the update

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *, zero_grad: bool = False,
             scaler: torch.amp.GradScaler | None = None) -> None:
        """With ``closure`` (a full forward-backward pass): both steps, the closure called once at
        w + e(w), and first at w too when no gradient has been computed yet; gradients are cleared
        afterwards (with ``scaler``, the closure must scale its loss). Without one: the second step,
        after your own ``first_step`` and backward pass."""
        if closure is not None:
            closure = torch.enable_grad()(closure)
            if all(p.grad is None for group in self.param_groups for p in group["params"]):
                closure()
            self.first_step(zero_grad=True, scaler=scaler)
            closure()
            zero_grad = True
        elif self._saved is None:
            raise ValueError("SAM.step() needs a closure that runs forward and backward; "
                             "or call first_step() and second_step() yourself")
        scaler = _enabled(scaler)
        if scaler is not self._scaler:
            raise ValueError("second_step() must get the same scaler as the first_step() before it (or neither one)")
        for p, w in self._saved:
            p.copy_(w)
        self._saved = None
        if scaler is not None:
            first = next(self._params_with_grad(), None)  # an overflow of the first pass becomes one of this
            if first is not None:  # pass (an inf in one gradient), so the scaler skips the step itself
                first.grad.masked_fill_(self._first_overflow, math.inf)
            scaler.unscale_(self.base_optimizer)
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for group in self.param_groups for p in group["params"]],
                                           self.max_grad_norm)
        if scaler is None:
            self.base_optimizer.step()
        else:
            scaler.step(self.base_optimizer)
            scaler.update()
        if zero_grad:
            self.zero_grad()

    def _params_with_grad(self):
        return (p for group in self.param_groups for p in group["params"] if p.grad is not None)

    def _grad_norm(self) -> Tensor:
        """||T(w) g||_2 over every group (T(w) = |w| in adaptive groups, else 1)."""
        norms = [torch.linalg.vector_norm(p.grad * p.abs() if group["adaptive"] else p.grad)
                 for group in self.param_groups for p in group["params"] if p.grad is not None]
        return _total_norm(norms) if norms else torch.zeros(())

    def state_dict(self) -> dict:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        if not all({"rho", "adaptive"} <= group.keys() for group in state_dict.get("param_groups", [{}])):
            raise ValueError("not a SAM state_dict: its param groups lack 'rho'/'adaptive'")
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups


def _total_norm(norms: list[Tensor]) -> Tensor:
    """The 2-norm of per-tensor 2-norms (which may sit on several devices)."""
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))


def _enabled(scaler: torch.amp.GradScaler | None) -> torch.amp.GradScaler | None:
    if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")
    return scaler if scaler is not None and scaler.is_enabled() else None


def _check_real(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
