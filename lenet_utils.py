"""LeNet-5 + Sharpness-Aware Minimization (SAM) on MNIST: everything the notebooks share.

Sections: reproducibility, model, SAM optimizer, data, training, recipes, evaluation, noise, files
and checkpoints, tables and figures. Data lives on the device as tensors; the training loop never
synchronises with the host inside an epoch. What the study measures about a trained model beyond
Gaussian noise (corruptions, adversarial attacks, sharpness, statistics) lives in ``analysis/``.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn
from tqdm.auto import trange

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
SEED_SIGMAS = (0.4, 0.6, 0.8)  # the original study's noise levels (seed protocol)
PIXEL_SIGMAS = tuple(round(0.1 * i, 1) for i in range(11))  # 0, 0.1, ..., 1.0 (pixel protocol)
SPLIT_SEED = 42  # the seed of the 80/20 train/validation split (48,000 / 12,000 on MNIST)
MNIST_FILES = (  # the same four names for MNIST and Fashion-MNIST
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# ----------------------------------------------------------------------------- reproducibility


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- model


class LeNet5(nn.Module):
    """Classic LeNet-5 (tanh, average pooling; 61,706 parameters) for 1x28x28 inputs in [0, 1]."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(16, 120, kernel_size=5), nn.Tanh(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, num_classes)
        )
        self.to(memory_format=torch.channels_last)  # channels-last weights make oneDNN's CPU convolutions ~1.25x faster

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


# ----------------------------------------------------------------------------- SAM


class SAM(torch.optim.Optimizer):
    """Sharpness-Aware Minimization (Foret et al., 2021), adaptive variant ASAM (Kwon et al., 2021).

    Same interface as davda54/sam: ``first_step`` moves each parameter to w + e(w) with
    e(w) = rho * T(w)^2 grad / ||T(w) grad||_2 (T(w) = |w| if adaptive else 1; one norm over all
    groups, each group using its own ``rho``/``adaptive``); ``second_step`` restores w and runs
    ``base_optimizer`` with the gradient taken at w + e(w). ``state_dict`` is the base optimizer's.
    After each ``first_step``, ``perturbation_norm`` holds ||e(w)||_2 as a tensor on the device.

    ``max_grad_norm`` clips the gradient taken at w + e(w) (total 2-norm, as
    ``torch.nn.utils.clip_grad_norm_``) before the base step. Clipping the first gradient would
    change nothing: e(w) only uses its direction. Both steps take an optional ``torch.amp.GradScaler``
    (see :meth:`first_step`); an lr scheduler attached to this object drives the base optimizer,
    whose param groups it shares.
    """

    def __init__(self, params, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                 adaptive: bool = False, max_grad_norm: float | None = None, **kwargs) -> None:
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer class, got {base_optimizer!r}")
        if max_grad_norm is not None:
            if isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, numbers.Real):
                raise TypeError(f"max_grad_norm must be None or a real number, got {type(max_grad_norm).__name__}")
            if not max_grad_norm > 0:
                raise ValueError(f"max_grad_norm must be > 0 (None: no clipping), got {max_grad_norm}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.max_grad_norm = max_grad_norm
        self._weights_before_perturbation: list[tuple[list[Tensor], list[Tensor]]] | None = None
        self._scaler: torch.amp.GradScaler | None = None  # the enabled scaler of the last first_step
        self._first_found_inf: dict[torch.device, Tensor] = {}  # the scaler's inf/NaN flags of the first gradient
        self.perturbation_norm: Tensor | None = None  # ||e(w)||_2 of the last first_step, on the device

    def add_param_group(self, param_group: dict) -> None:
        rho = param_group.get("rho", self.defaults["rho"])
        if isinstance(rho, bool) or not isinstance(rho, numbers.Real):
            raise TypeError(f"rho must be a real number, got {type(rho).__name__}")
        if not math.isfinite(rho) or rho < 0:
            raise ValueError(f"rho must be finite and >= 0, got {rho}")
        super().add_param_group(param_group)

    @staticmethod
    def _enabled(scaler: torch.amp.GradScaler | None) -> torch.amp.GradScaler | None:
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")
        return scaler if scaler is not None and scaler.is_enabled() else None

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, scaler: torch.amp.GradScaler | None = None) -> None:
        """Move to the worst point w + e(w) of the rho-ball, remembering w.

        With ``scaler`` (the one that scaled the loss) the gradients are unscaled first; if they
        hold inf/NaN, nothing is perturbed and the ``second_step`` that follows skips the base
        step. Pass the same scaler to ``second_step``, which also calls ``scaler.update()``."""
        self._scaler = scaler = self._enabled(scaler)
        if scaler is not None:
            scaler.unscale_(self)  # its inf/NaN flags, kept under id(self), also reach scaler.update()
            self._first_found_inf = scaler._found_inf_per_device(self)
            for group in self.param_groups:  # on overflow, a zero gradient: zero perturbation, no host sync
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.masked_fill_(self._first_found_inf[p.grad.device] > 0, 0.0)
        scale = 1.0 / self._grad_norm().clamp_min(1e-12)  # zero gradients -> zero perturbation
        self._weights_before_perturbation = []
        norms = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            self._weights_before_perturbation.append((params, [p.clone() for p in params]))
            e_w = torch._foreach_mul(grads, scale * group["rho"])
            if group["adaptive"]:
                torch._foreach_mul_(e_w, torch._foreach_mul(params, params))
            torch._foreach_add_(params, e_w)
            norms.extend(torch._foreach_norm(e_w))
        self.perturbation_norm = (torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))
                                  if norms else None)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, scaler: torch.amp.GradScaler | None = None) -> None:
        """Restore w and take the base optimizer's step with the gradient computed at w + e(w)
        (clipped to ``max_grad_norm`` if set). With ``scaler``: unscale that gradient, skip the
        base step if either pass overflowed, then ``scaler.update()`` (do not call it yourself)."""
        scaler = self._enabled(scaler)
        if self._weights_before_perturbation is None:
            raise RuntimeError("SAM.second_step() called without a preceding first_step()")
        if scaler is not self._scaler:
            raise ValueError("second_step() must get the same scaler as the first_step() before it (or neither one)")
        for params, saved in self._weights_before_perturbation:
            torch._foreach_copy_(params, saved)
        self._weights_before_perturbation = None
        if scaler is not None:
            scaler.unscale_(self.base_optimizer)
            for device, found_inf in scaler._found_inf_per_device(self.base_optimizer).items():
                found_inf += sum(f.to(device) for f in self._first_found_inf.values())  # skip on either pass
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for group in self.param_groups for p in group["params"]],
                                           self.max_grad_norm)
        if scaler is None:
            self.base_optimizer.step()
        else:
            scaler.step(self.base_optimizer)
            scaler.update()
        self._opt_called = True  # tells an attached torch.optim.lr_scheduler that this optimizer stepped
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> None:
        """Both steps. ``closure`` runs a full forward-backward pass; it is called once at
        w + e(w), and first at w too when no gradient has been computed yet. Gradients are
        cleared afterwards, so the next ``step(closure)`` starts from a fresh gradient at w."""
        if closure is None:
            raise ValueError("SAM.step() needs a closure that runs forward and backward; "
                             "or call first_step() and second_step() yourself")
        closure = torch.enable_grad()(closure)
        if all(p.grad is None for group in self.param_groups for p in group["params"]):
            closure()
        self.first_step(zero_grad=True)
        closure()
        self.second_step(zero_grad=True)

    def _grad_norm(self) -> Tensor:
        norms = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["adaptive"]:
                grads = torch._foreach_mul(grads, torch._foreach_abs(params))
            norms.extend(torch._foreach_norm(grads))
        if not norms:
            return torch.zeros(())
        device = norms[0].device
        return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))

    def state_dict(self) -> dict:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        if not all({"rho", "adaptive"} <= group.keys() for group in state_dict.get("param_groups", [{}])):
            raise ValueError("not a SAM state_dict: its param groups lack 'rho'/'adaptive'")
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Keep BatchNorm running statistics (and ``num_batches_tracked``, which drives the
    ``momentum=None`` cumulative average) unchanged inside the block (use for SAM's second pass)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    counts = [None if m.num_batches_tracked is None else m.num_batches_tracked.clone() for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in zip(norms, momenta, counts):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DatasetInfo:
    """Where a 28x28 grey-scale digit-shaped dataset lives and its pixel statistics."""

    torchvision_class: type
    root_env: str  # environment variable holding the root folder
    mean: float  # of the training pixels in [0, 1], for the seed protocol's normalization
    std: float

    @property
    def folder(self) -> str:
        return self.torchvision_class.__name__  # torchvision reads root/<class name>/raw


DATASETS = {
    "mnist": DatasetInfo(torchvision.datasets.MNIST, "MNIST_ROOT", MNIST_MEAN, MNIST_STD),
    "fashion-mnist": DatasetInfo(torchvision.datasets.FashionMNIST, "FASHION_MNIST_ROOT", 0.2860, 0.3530),
}


def load_dataset(name: str = "mnist", root: str | os.PathLike | None = None, train: bool = True,
                 device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """A dataset of :data:`DATASETS` as tensors on ``device``: images float32 (N, 1, 28, 28) in
    [0, 1], labels int64 (N,).

    Read through torchvision's dataset class with ``download=True``; ``root`` defaults to the
    dataset's environment variable (``$MNIST_ROOT``, ``$FASHION_MNIST_ROOT``), else ``./data``.
    Offline, ``root/MNIST/raw`` (``root/FashionMNIST/raw``) must hold the four IDX files.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    info = DATASETS[name]
    root = Path(root if root is not None else os.environ.get(info.root_env, "data"))
    raw = root / info.folder / "raw"
    try:
        dataset = info.torchvision_class(root, train=train, download=True)
    except Exception as err:  # torchvision raises RuntimeError/URLError/AssertionError/OSError variously
        present = all((raw / file).is_file() for file in MNIST_FILES)
        if not present:
            raise FileNotFoundError(
                f"{name} not found in {raw} and could not be downloaded ({err}). Put the files "
                f"{', '.join(MNIST_FILES)} there, or set {info.root_env} to a folder holding "
                f"{info.folder}/raw/."
            ) from err
        raise ValueError(f"{name} files in {raw} are truncated or corrupt: {err}") from err
    images, labels = dataset.data, dataset.targets
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"{name} files in {raw} are inconsistent: images {tuple(images.shape)}, "
                         f"labels {tuple(labels.shape)}; expected (N, 28, 28) images and N labels")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{name} labels in {raw} must lie in 0..9, found {labels.min()}..{labels.max()}")
    images = images.to(device=device, dtype=torch.float32).div_(255).unsqueeze(1)
    return images, labels.to(device=device, dtype=torch.int64)


def load_mnist(root: str | os.PathLike | None = None, train: bool = True,
               device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """MNIST through :func:`load_dataset` (``root`` defaults to ``$MNIST_ROOT``, else ``./data``)."""
    return load_dataset("mnist", root, train, device)


def train_val_split(images: Tensor, labels: Tensor, val_fraction: float = 0.2,
                    seed: int = SPLIT_SEED) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Seeded split into (train_images, train_labels, val_images, val_labels).

    Same indices as ``torch.utils.data.random_split(ds, [n - n_val, n_val],
    generator=torch.Generator().manual_seed(seed))``: 48,000 / 12,000 for MNIST's training set.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    n = len(images)
    n_val = round(n * val_fraction)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(images.device)
    train_idx, val_idx = order[: n - n_val], order[n - n_val:]
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def minibatch_indices(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Shuffled index batches covering 0..n-1 once (the last one may be smaller)."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    yield from order.split(batch_size)


# ----------------------------------------------------------------------------- training


def random_gaussian_noise(images: Tensor, generator: torch.Generator, max_sigma: float = 0.6) -> Tensor:
    """Training augmentation: add N(0, sigma^2) noise, sigma ~ U[0, max_sigma] drawn per batch."""
    sigma = torch.rand((), generator=generator, device=images.device) * max_sigma
    return images + sigma * torch.randn(images.shape, generator=generator, device=images.device)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor, *,
          epochs: int, batch_size: int, val_data: tuple[Tensor, Tensor] | None = None,
          label_smoothing: float = 0.0, reduction: str = "mean",
          scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
          batch_transform: Callable[[Tensor, torch.Generator], Tensor] | None = None,
          autocast_dtype: torch.dtype | None = None, seed: int | torch.Generator = 0,
          progress: bool = True, on_epoch: Callable[[dict], None] | None = None,
          on_step: Callable[[int], None] | None = None) -> list[dict]:
    """Train ``model`` in place for ``epochs`` epochs and return one history row per epoch.

    Works with any optimizer; with :class:`SAM` each step runs two forward-backward passes.
    ``scheduler`` (any ``torch.optim.lr_scheduler``) is stepped once at the end of every epoch.
    Shuffling (and ``batch_transform``) draw from ``seed``: an int seeds a fresh generator; a
    ``torch.Generator`` is used as it is, so a run split over several calls that share the model,
    optimizer, scheduler and generator continues exactly as one call would. ``progress`` shows a
    tqdm bar; ``on_epoch`` gets each history row as it is made (for logs where no bar is shown);
    ``on_step`` gets the 0-based step count of this call after every optimizer step.
    ``autocast_dtype=torch.float16`` also scales the losses with a fresh ``torch.amp.GradScaler``
    for the device (steps with inf/NaN gradients are skipped); bfloat16 needs no scaler.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    device = images.device
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator(device=device).manual_seed(seed)
    autocast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None

    def backward(loss: Tensor) -> None:
        (loss if scaler is None else scaler.scale(loss)).backward()

    def loss_of(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with autocast:
            logits = model(x)
            return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing,
                                   reduction=reduction), logits

    history, step = [], 0
    bar = trange(epochs, desc="train", disable=not progress)
    for epoch in bar:
        lr = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        for idx in minibatch_indices(len(images), batch_size, generator):
            x, y = images[idx], labels[idx]
            if batch_transform is not None:
                x = batch_transform(x, generator)
            loss, logits = loss_of(x, y)
            backward(loss)
            if isinstance(optimizer, SAM):
                optimizer.first_step(zero_grad=True, scaler=scaler)
                with frozen_batchnorm_stats(model):
                    backward(loss_of(x, y)[0])
                optimizer.second_step(zero_grad=True, scaler=scaler)
            else:
                if scaler is None:
                    optimizer.step()
                else:
                    scaler.step(optimizer)
                    scaler.update()
                optimizer.zero_grad(set_to_none=True)
            if on_step is not None:
                on_step(step)
            step += 1
            loss_sum += loss.detach() * (len(y) if reduction == "mean" else 1)
            correct += (logits.argmax(1) == y).sum()
        if scheduler is not None:
            scheduler.step()
        row = {"epoch": epoch + 1, "lr": lr,
               "train_loss": loss_sum.item() / len(images), "train_acc": 100 * correct.item() / len(images)}
        if val_data is not None:
            row["val_loss"], row["val_acc"] = evaluate(model, *val_data, label_smoothing=label_smoothing)
        row["seconds"] = time.perf_counter() - start
        history.append(row)
        bar.set_postfix({k: round(v, 4) for k, v in row.items() if k.endswith(("loss", "acc"))})
        if on_epoch is not None:
            on_epoch(row)
    return history


# ----------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Recipe:
    """Everything that decides how LeNet-5 is trained; the study's configurations are
    ``dataclasses.replace`` overrides of :data:`BASELINE` and :data:`ASAM`.

    ``sam_rho=None`` trains with the base optimizer alone; ``lr_milestones`` are fractions of
    ``epochs`` at which the lr is multiplied by ``lr_gamma`` (``MultiStepLR``); ``split`` trains on
    the 48,000 images of :func:`train_val_split` (seed :data:`SPLIT_SEED`) and validates on the
    other 12,000, else on all 60,000; ``noise_max_sigma`` adds :func:`random_gaussian_noise`.
    ``swa_start`` (a fraction in (0, 1), with ``swa_lr``) turns on stochastic weight averaging over
    the epochs after ``round(swa_start * epochs)`` (see :meth:`fit`); ``as_dict`` leaves the two
    SWA keys out while they are None, so recipes without SWA keep their earlier hyper-parameters.
    """

    optimizer: str  # "adam" or "sgd"
    lr: float
    batch_size: int
    epochs: int
    momentum: float = 0.0
    weight_decay: float = 0.0
    sam_rho: float | None = None
    sam_adaptive: bool = False
    reduction: str = "mean"
    label_smoothing: float = 0.0
    lr_milestones: tuple[float, ...] = field(default=())
    lr_gamma: float = 1.0
    split: bool = False
    noise_max_sigma: float | None = None
    swa_start: float | None = None  # fraction of epochs after which weights are averaged
    swa_lr: float | None = None  # the lr SWALR anneals to for the averaged epochs

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not all(0 < f <= 1 for f in self.lr_milestones):
            raise ValueError(f"lr_milestones are fractions of training in (0, 1], got {self.lr_milestones}")
        if (self.swa_start is None) != (self.swa_lr is None):
            raise ValueError(f"swa_start and swa_lr go together (both set or both None), got "
                             f"swa_start={self.swa_start!r}, swa_lr={self.swa_lr!r}")
        if self.swa_start is not None:
            if not (_is_real(self.swa_start) and 0 < self.swa_start < 1):
                raise ValueError(f"swa_start is a fraction of training in (0, 1), got {self.swa_start!r}")
            if not (_is_real(self.swa_lr) and self.swa_lr > 0):
                raise ValueError(f"swa_lr must be a number > 0, got {self.swa_lr!r}")

    def as_dict(self) -> dict:
        """Plain JSON-ready hyper-parameters (tuples as lists); the SWA keys only when SWA is on."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                if not (k in ("swa_start", "swa_lr") and v is None)}

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        """The base optimizer, wrapped in :class:`SAM` when ``sam_rho`` is set."""
        if self.optimizer == "adam":
            base, kwargs = torch.optim.Adam, dict(lr=self.lr, weight_decay=self.weight_decay)
        else:
            base, kwargs = torch.optim.SGD, dict(lr=self.lr, momentum=self.momentum,
                                                 weight_decay=self.weight_decay)
        if self.sam_rho is None:
            return base(params, **kwargs)
        return SAM(params, base, rho=self.sam_rho, adaptive=self.sam_adaptive, **kwargs)

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.MultiStepLR:
        """``MultiStepLR`` at the epochs ``round(fraction * epochs)``, stepped once per epoch."""
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, [round(f * self.epochs) for f in self.lr_milestones], self.lr_gamma)

    def swa_epochs(self) -> int:
        """The number of averaged epochs: those after ``round(swa_start * epochs)``, at least one
        (so a 2-epoch quick run still averages); 0 without SWA."""
        if self.swa_start is None:
            return 0
        return self.epochs - min(round(self.swa_start * self.epochs), self.epochs - 1)

    def fit(self, model: nn.Module, images: Tensor, labels: Tensor, *, seed: int | torch.Generator = 0,
            optimizer: torch.optim.Optimizer | None = None,
            **train_options) -> tuple[list[dict], torch.optim.Optimizer]:
        """Train ``model`` with this recipe on the given images (``val_data``, ``progress``,
        ``on_epoch``, ``on_step`` ... go through to :func:`train`); returns (history, optimizer).
        ``optimizer`` defaults to :meth:`make_optimizer` (pass one to watch it during training).

        With ``swa_start``, the first ``epochs - swa_epochs()`` epochs follow the recipe's
        ``MultiStepLR`` and the rest ``SWALR`` (:data:`SWA_ANNEAL_EPOCHS`, :data:`SWA_ANNEAL_STRATEGY`),
        an ``AveragedModel`` taking the weights after each of them; one generator runs through both
        phases, and at the end ``model`` receives the averaged weights (BatchNorm statistics
        recomputed by ``update_bn`` if it has any). History rows, ``on_epoch`` and ``on_step``
        count across both phases; a row's ``val_*`` are those of the running, not the averaged, weights."""
        optimizer = optimizer or self.make_optimizer(model.parameters())
        augment = (None if self.noise_max_sigma is None
                   else partial(random_gaussian_noise, max_sigma=self.noise_max_sigma))
        common = dict(batch_size=self.batch_size, label_smoothing=self.label_smoothing, reduction=self.reduction,
                      batch_transform=augment, **train_options)
        if self.swa_start is None:
            history = train(model, optimizer, images, labels, epochs=self.epochs,
                            scheduler=self.make_scheduler(optimizer), seed=seed, **common)
            return history, optimizer
        return self._fit_swa(model, images, labels, seed, optimizer, **common), optimizer

    def _fit_swa(self, model: nn.Module, images: Tensor, labels: Tensor, seed: int | torch.Generator,
                 optimizer: torch.optim.Optimizer, *, on_epoch: Callable[[dict], None] | None = None,
                 on_step: Callable[[int], None] | None = None, **common) -> list[dict]:
        generator = (seed if isinstance(seed, torch.Generator)
                     else torch.Generator(device=images.device).manual_seed(seed))
        averaged_epochs = self.swa_epochs()
        start = self.epochs - averaged_epochs
        steps_per_epoch = -(-len(images) // self.batch_size)

        def phase(epochs: int, scheduler, epoch_offset: int, average: AveragedModel | None) -> list[dict]:
            def epoch_done(row: dict) -> None:
                row["epoch"] += epoch_offset  # the row is also the history's: one numbering for the run
                if average is not None:
                    average.update_parameters(model)
                if on_epoch is not None:
                    on_epoch(row)

            step_done = None if on_step is None else (lambda step: on_step(step + epoch_offset * steps_per_epoch))
            return train(model, optimizer, images, labels, epochs=epochs, scheduler=scheduler, seed=generator,
                         on_epoch=epoch_done, on_step=step_done, **common)

        history = phase(start, self.make_scheduler(optimizer), 0, None) if start else []
        average = AveragedModel(model)
        swa_scheduler = SWALR(optimizer, swa_lr=self.swa_lr, anneal_epochs=SWA_ANNEAL_EPOCHS,
                              anneal_strategy=SWA_ANNEAL_STRATEGY)
        history += phase(averaged_epochs, swa_scheduler, start, average)
        with torch.no_grad():
            for p, q in zip(model.parameters(), average.module.parameters()):
                p.copy_(q)
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            update_bn(images.split(self.batch_size), model)
        return history


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


# SWALR's anneal into the averaged epochs, as in torch's SWA documentation (``SWALR(optimizer,
# anneal_strategy="linear", anneal_epochs=5, swa_lr=...)``): 5 epochs from the lr MultiStepLR left to
# ``swa_lr``, then constant, the constant-lr SWA of Izmailov et al. (2018). In the study's ``swa``
# recipe the lr at swa_start already equals swa_lr, so the anneal changes nothing there.
SWA_ANNEAL_EPOCHS = 5
SWA_ANNEAL_STRATEGY = "linear"


# The original study's two recipes: Adam (lr 1e-3, batch 32, 30 epochs, summed cross-entropy, all
# 60,000 images) and ASAM over SGD (rho 2.0, label smoothing 0.1, batch 128, 80 epochs, lr x0.2 at
# 30/60/80 % of training, 48,000 images with 12,000 for validation).
BASELINE = Recipe("adam", lr=1e-3, batch_size=32, epochs=30, reduction="sum")
ASAM = Recipe("sgd", lr=0.1, batch_size=128, epochs=80, momentum=0.9, weight_decay=5e-4, sam_rho=2.0,
              sam_adaptive=True, label_smoothing=0.1, lr_milestones=(0.3, 0.6, 0.8), lr_gamma=0.2, split=True)
SGD = replace(ASAM, sam_rho=None, sam_adaptive=False)  # the controlled ablation: ASAM with SAM switched off
STUDY_RECIPES: dict[str, Recipe] = {
    "baseline": BASELINE,
    "asam": ASAM,
    "sgd": SGD,
    "sam-0.05": replace(ASAM, sam_rho=0.05, sam_adaptive=False),  # Foret et al.'s CIFAR default
    "sam-0.5": replace(ASAM, sam_rho=0.5, sam_adaptive=False),  # about ASAM's measured ||e(w)||
    "noise-aug": replace(SGD, noise_max_sigma=0.6),
    "adam-sam": replace(BASELINE, sam_rho=0.05),
    # Controls for SAM's extra cost and for the other route to flat minima (Kaddour et al., 2022).
    # sgd-2x: SGD with SAM's number of gradient evaluations (2 x 80 epochs, milestones at the same fractions).
    "sgd-2x": replace(SGD, epochs=160),
    # swa: the sgd run, its weights averaged after each of its last 20 epochs (swa_start 0.75) at a constant lr
    # of 0.004, the lr sgd itself has at 75 % of training (0.1 * 0.2 ** 2): averaging starts without a jump in
    # lr, and SWALR holds it there instead of the final drop to 0.0008 (constant-lr SWA, Izmailov et al., 2018).
    "swa": replace(SGD, swa_start=0.75, swa_lr=0.004),
    # Study v3 (results/ANALYSIS_PLAN.md, amendment v3): ASAM's perturbation size swept around its 2.0 ...
    "asam-0.5": replace(ASAM, sam_rho=0.5),
    "asam-1.0": replace(ASAM, sam_rho=1.0),
    "asam-4.0": replace(ASAM, sam_rho=4.0),
    # ... and SWA that really averages: the same last-quarter averaging as swa, at a constant lr of 0.02 (a
    # fifth of the initial lr, as Izmailov et al. average), reached from 0.004 by SWALR's 5-epoch linear anneal.
    "swa-0.02": replace(SGD, swa_start=0.75, swa_lr=0.02),
}


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 2000) -> Tensor:
    """Predicted labels for ``images`` (eval mode, batched)."""
    model.eval()
    return torch.cat([model(x).argmax(1) for x in images.split(batch_size)])


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 2000,
             label_smoothing: float = 0.0) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in %) of ``model`` on a labelled set, in eval mode."""
    model.eval()
    loss, correct = torch.zeros((), device=images.device), torch.zeros((), device=images.device)
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        logits = model(x)
        loss += F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    return loss.item() / len(images), 100 * correct.item() / len(images)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 2000) -> float:
    """Accuracy in % (eval mode, no grad, batched)."""
    return evaluate(model, images, labels, batch_size)[1]


# ----------------------------------------------------------------------------- noise


def _check_sigma(sigma: float) -> None:
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise TypeError(f"sigma must be a real number, got {type(sigma).__name__}")
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be finite and >= 0, got {sigma}")


def add_gaussian_noise(images: Tensor, sigma: float, seed: int = 0, clip: bool = False) -> Tensor:
    """``images + sigma * n`` with independent n ~ N(0, 1) per pixel and image, from a generator
    seeded with ``seed`` (the global RNG is untouched); ``clip`` clamps to [0, 1].
    ``sigma=0`` returns ``images`` itself."""
    _check_sigma(sigma)
    if sigma == 0:
        return images
    generator = torch.Generator(device=images.device).manual_seed(seed)
    noisy = images + sigma * torch.randn(images.shape, generator=generator, device=images.device,
                                         dtype=images.dtype)
    return noisy.clamp_(0, 1) if clip else noisy


def seed_protocol_noise(images: Tensor, sigma: float, seed: int = 0, mean: float = MNIST_MEAN,
                        std: float = MNIST_STD) -> Tensor:
    """The original study's noise test: ``(images - mean) / std + sigma * n`` (MNIST's 0.1307 and
    0.3081 by default; a dataset's own from :data:`DATASETS`).

    n is ONE 28x28 standard-normal pattern, drawn right after ``torch.manual_seed(seed)`` (the
    study re-seeded before every image), so every image gets the same pattern. Fed to a model
    trained on unnormalized [0, 1] inputs, this mixes a normalization shift with a single fixed
    noise pattern: it is not a test of robustness to random noise.
    """
    _check_sigma(sigma)
    pattern = torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(seed))
    return (images - mean) / std + sigma * pattern.to(images.device)


def evaluate_noise(model: nn.Module, images: Tensor, labels: Tensor, sigmas: Sequence[float],
                   protocol: str = "pixel", seed: int = 0, clip: bool = False,
                   normalization: tuple[float, float] = (MNIST_MEAN, MNIST_STD)) -> dict[float, float]:
    """Accuracy (%) for each sigma under ``protocol``:

    - ``"pixel"``: :func:`add_gaussian_noise` on the [0, 1] images (``clip`` optional);
    - ``"seed"``: :func:`seed_protocol_noise`, the original study's protocol, normalizing with
      ``normalization`` = (mean, std).
    """
    if protocol == "pixel":
        perturb = lambda sigma: add_gaussian_noise(images, sigma, seed=seed, clip=clip)  # noqa: E731
    elif protocol == "seed":
        perturb = lambda sigma: seed_protocol_noise(images, sigma, seed, *normalization)  # noqa: E731
    else:
        raise ValueError(f"protocol must be 'pixel' or 'seed', got {protocol!r}")
    return {float(sigma): accuracy(model, perturb(sigma), labels) for sigma in sigmas}


# ----------------------------------------------------------------------------- files and checkpoints

_PLAIN_TYPES = (type(None), bool, int, float, str, Tensor)


def _check_plain(value: object, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, where)
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN_TYPES):
        raise TypeError(f"checkpoint metadata {where} is a {type(value).__name__}; use None, bool, int, "
                        "float, str, tensors, and lists/tuples/dicts of them")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; when the block ends without an error it
    replaces ``path`` (``os.replace``, mode 0644), otherwise it is deleted: readers never see a
    half-written file. ``mode`` is ``"w"`` (text) or ``"wb"``; missing parent folders are created."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates it owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, **meta) -> None:
    """Write ``{"model": state_dict, "optimizer": state_dict or None, **meta}`` atomically."""
    _check_plain(meta, "meta")
    payload = {"model": model.state_dict(),
               "optimizer": optimizer.state_dict() if optimizer is not None else None, **meta}
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)


def load_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Load a :func:`save_checkpoint` file into ``model`` (and ``optimizer``); return the whole dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable checkpoint (corrupt or truncated?): {err}") from err
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"{path} is not a checkpoint written by save_checkpoint (no 'model' entry)")
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise ValueError(f"{path} does not match the model: {err}") from err
    if optimizer is not None:
        if checkpoint.get("optimizer") is None:
            raise ValueError(f"{path} holds no optimizer state")
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise ValueError(f"{path}: optimizer state does not match the optimizer: {err}") from err
    return checkpoint


# ----------------------------------------------------------------------------- tables and figures


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 2) -> str:
    """A Markdown table (floats rounded to ``digits``); show it with ``IPython.display.Markdown``."""
    cell = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def confusion_matrix(predicted: Tensor, labels: Tensor, num_classes: int = 10) -> Tensor:
    """Counts (num_classes x num_classes), rows = true label, columns = prediction."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat.cpu(), minlength=num_classes ** 2).view(num_classes, num_classes)


def show_digits(images: Tensor, titles: Sequence[str], ncols: int = 12, title: str | None = None,
                vmin: float = 0.0, vmax: float = 1.0):
    """A grid of digits on one grey scale [vmin, vmax], each with its title; returns the figure."""
    import matplotlib.pyplot as plt

    nrows = max(1, math.ceil(len(images) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.1 * ncols, 1.3 * nrows + (0.4 if title else 0)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, text in zip(axes.flat, images.detach().float().cpu(), titles):
        ax.imshow(image.squeeze(0).numpy(), cmap="gray", vmin=vmin, vmax=vmax)
        ax.set_title(text, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_history(history: Sequence[dict]):
    """Loss, accuracy (train and, when present, validation) and learning rate per epoch."""
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, metric in zip(axes, ("loss", "acc")):
        for split in ("train", "val"):
            if f"{split}_{metric}" in history[0]:
                ax.plot(epochs, [row[f"{split}_{metric}"] for row in history], label=split)
        ax.set(xlabel="epoch", ylabel="accuracy (%)" if metric == "acc" else "loss",
               title="accuracy" if metric == "acc" else "loss")
        ax.legend()
        ax.grid(alpha=0.3)
    axes[2].plot(epochs, [row["lr"] for row in history])
    axes[2].set(xlabel="epoch", ylabel="learning rate", title="learning rate", yscale="log")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(matrix: Tensor, title: str = "confusion matrix"):
    """Heat map of a :func:`confusion_matrix`, counts written in the cells."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    image = ax.imshow(matrix.log1p(), cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix.numpy()):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                color="white" if image.norm(math.log1p(count)) > 0.6 else "black")
    ax.set(xticks=range(len(matrix)), yticks=range(len(matrix)), xlabel="predicted", ylabel="true",
           title=title)
    fig.tight_layout()
    return fig


# The original study's single runs (%), as it reported them: clean test accuracy and its noise test
# (the seed protocol at sigma 0.6), for its baseline and its ASAM recipe.
ORIGINAL_STUDY = {
    "baseline": {"clean": 98.75, "seed protocol, σ=0.6": 92.31},
    "asam": {"clean": 99.00, "seed protocol, σ=0.6": 97.86},
}


@dataclass(frozen=True)
class NotebookSetup:
    """What a notebook runs on and where its outputs go (made by :func:`notebook_setup`)."""

    quick: bool  # a smoke run on a subset (LENET_QUICK=1)
    output_dir: Path  # checkpoints/ and results/ go here
    device: torch.device
    seed: int

    @property
    def figures(self) -> Path:
        return self.output_dir / "results" / "figures"

    def save_figure(self, fig, name: str) -> Path:
        """Save ``fig`` as ``results/figures/<name>.png`` under the output folder (atomically); return the path."""
        path = self.figures / f"{name}.png"
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
        return path


def notebook_setup(seed: int = 0, threads: int = 1) -> NotebookSetup:
    """Start a notebook: read ``LENET_QUICK`` (``1``: a smoke run whose outputs go to ``quick_output/``)
    and ``LENET_OUTPUT_DIR``, limit torch to ``threads`` CPU threads, seed every generator with
    ``seed`` and print the environment.

    One thread by default: float sums then run in one fixed order, so a CPU run repeats its
    numbers bit for bit whatever the machine's core count (with the same torch and CPU type).
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    quick = os.environ.get("LENET_QUICK") == "1"
    setup = NotebookSetup(quick=quick, output_dir=Path(os.environ.get("LENET_OUTPUT_DIR",
                                                                       "quick_output" if quick else ".")),
                          device=default_device(), seed=seed)
    torch.set_num_threads(threads)
    set_seed(seed)
    where = (torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda"
             else f"{torch.get_num_threads()} CPU thread{'s' if threads > 1 else ''}")
    print(f"device: {setup.device} ({where})")
    print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"quick mode: {quick}; checkpoints and results go to {setup.output_dir}/")
    return setup


def epoch_logger(epochs: int, every: int = 1) -> Callable[[dict], None]:
    """An ``on_epoch`` callback for :func:`train`: prints the first, every ``every``-th and the last
    epoch's row as one plain line (a log that reads the same live and in a saved notebook)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")

    def log(row: dict) -> None:
        if row["epoch"] in (1, epochs) or row["epoch"] % every == 0:
            val = f", val loss {row['val_loss']:.4f}, val acc {row['val_acc']:.2f} %" if "val_acc" in row else ""
            print(f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}: lr {row['lr']:.4g}, train loss "
                  f"{row['train_loss']:.4f}, train acc {row['train_acc']:.2f} %{val} ({row['seconds']:.1f} s)",
                  flush=True)
    return log


@dataclass(frozen=True)
class NoiseReport:
    """A model's test accuracy (%) under both noise protocols (see :func:`evaluate_noise`)."""

    seed: dict[float, float]  # seed protocol; sigma 0 = normalized, noise-free images
    pixel: dict[float, float]  # pixel protocol; sigma 0 = the clean test accuracy
    pattern_spread: dict[int, float]  # seed protocol at ``spread_sigma``, one entry per noise pattern seed
    spread_sigma: float

    @property
    def clean(self) -> float:
        return self.pixel[0.0]


def noise_report(model: nn.Module, images: Tensor, labels: Tensor, *,
                 seed_sigmas: Sequence[float] = SEED_SIGMAS, pixel_sigmas: Sequence[float] = PIXEL_SIGMAS,
                 pattern_seeds: Sequence[int] = range(5), spread_sigma: float = 0.6) -> NoiseReport:
    """Evaluate ``model`` under both protocols, each at sigma 0, ``spread_sigma`` and the given sigmas,
    and under the seed protocol at ``spread_sigma`` with each of ``pattern_seeds``' single noise patterns."""
    seed_sigmas = sorted({0.0, float(spread_sigma), *map(float, seed_sigmas)})
    pixel_sigmas = sorted({0.0, float(spread_sigma), *map(float, pixel_sigmas)})
    if not pattern_seeds:
        raise ValueError("pattern_seeds must name at least one seed")
    spread = {int(s): evaluate_noise(model, images, labels, [spread_sigma], protocol="seed", seed=s)[spread_sigma]
              for s in pattern_seeds}
    return NoiseReport(seed=evaluate_noise(model, images, labels, seed_sigmas, protocol="seed"),
                       pixel=evaluate_noise(model, images, labels, pixel_sigmas, protocol="pixel"),
                       pattern_spread=spread, spread_sigma=float(spread_sigma))


def noise_tables(report: NoiseReport) -> str:
    """Markdown: one table per protocol, accuracy (%) per sigma."""
    def table(results: dict[float, float]) -> str:
        return markdown_table(["sigma", *map(str, results)], [["accuracy (%)", *results.values()]])

    return ("**Seed protocol** (the study's test; sigma 0 = normalized, noise-free)\n\n" + table(report.seed)
            + "\n\n**Pixel protocol** (independent noise on the [0, 1] images)\n\n" + table(report.pixel))


def describe_noise(report: NoiseReport) -> str:
    """Three sentences on what the seed protocol measures for this model: the normalization
    shift, both protocols at ``spread_sigma``, and the spread over single noise patterns."""
    sigma, spread = report.spread_sigma, report.pattern_spread
    normalized = report.seed[0.0]
    return (f"Clean [0, 1] images: {report.clean:.2f} %. The same images normalized, with no noise at all: "
            f"{normalized:.2f} % ({normalized - report.clean:+.2f} points): that part of the seed protocol is a "
            f"distribution shift, not noise.\n"
            f"At sigma {sigma} the seed protocol gives {report.seed[sigma]:.2f} %, the pixel protocol "
            f"{report.pixel[sigma]:.2f} %.\n"
            f"Seed protocol at sigma {sigma} with {len(spread)} single noise patterns (pattern seed: accuracy; "
            "seed 0 is the protocol's own): " + ", ".join(f"{s}: {a:.2f} %" for s, a in spread.items())
            + f" -> a spread of {max(spread.values()) - min(spread.values()):.2f} points from the pattern alone.")


def plot_noise(reports: dict[str, NoiseReport], title: str):
    """Accuracy vs sigma under both protocols (pixel: solid, seed: dashed), one colour per model."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, report in reports.items():
        prefix = f"{name}, " if len(reports) > 1 else ""
        line, = ax.plot(list(report.pixel), list(report.pixel.values()), "o-", label=f"{prefix}pixel protocol")
        ax.plot(list(report.seed), list(report.seed.values()), "s--", color=line.get_color(),
                label=f"{prefix}seed protocol (study)")
    ax.set(xlabel="noise standard deviation sigma", ylabel="test accuracy (%)", title=title, ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8 if len(reports) > 1 else None)
    fig.tight_layout()
    return fig


def comparison_table(reports: dict[str, NoiseReport]) -> str:
    """Markdown: one row per model (clean, the seed protocol's sigmas, the pixel protocol at 0.2, 0.4, ...);
    with exactly two models a last row holds the second minus the first, in points."""
    if not reports:
        raise ValueError("comparison_table needs at least one model's NoiseReport")
    first = next(iter(reports.values()))
    pixel_sigmas = [s for s in first.pixel if s > 0][1::2]  # sigma 0.6 lines up with the seed protocol's
    header = ["model", "clean", *(f"seed σ={s}" for s in first.seed), *(f"pixel σ={s}" for s in pixel_sigmas)]
    rows = [[name, r.clean, *r.seed.values(), *(r.pixel[s] for s in pixel_sigmas)] for name, r in reports.items()]
    title = "Accuracy (%); seed σ=0.0 is normalized, noise-free"
    if len(rows) == 2:
        rows.append([f"{rows[1][0]} − {rows[0][0]}", *(b - a for a, b in zip(rows[0][1:], rows[1][1:]))])
        title += "; the last row is the difference in points"
    return title + "\n\n" + markdown_table(header, rows)


def study_comparison(recipe: str, report: NoiseReport) -> str:
    """Markdown: the original study's numbers for ``recipe`` ("baseline" or "asam") beside ours."""
    if recipe not in ORIGINAL_STUDY:
        raise ValueError(f"the original study has no {recipe!r} run; choose from {', '.join(ORIGINAL_STUDY)}")
    study = ORIGINAL_STUDY[recipe]
    ours = {"clean": report.clean, "seed protocol, σ=0.6": report.seed[0.6]}
    return markdown_table(["metric", "study (%)", "ours (%)", "difference (points)"],
                          [[k, study[k], ours[k], ours[k] - study[k]] for k in study])


def show_noise_examples(image: Tensor, pixel_sigmas: Sequence[float] = PIXEL_SIGMAS[::2],
                        seed_sigmas: Sequence[float] = (0.0, *SEED_SIGMAS)):
    """What the model sees: one digit (1x28x28) under each protocol, the pixel protocol in the first
    row and the seed protocol in the second, on one grey scale from -1 to 3 (so the seed protocol's
    normalization shows too)."""
    digit = image.reshape(1, 1, 28, 28)
    rows = [add_gaussian_noise(digit, s) for s in pixel_sigmas] + [seed_protocol_noise(digit, s) for s in seed_sigmas]
    titles = [f"pixel σ={s}" for s in pixel_sigmas] + [f"seed σ={s}" for s in seed_sigmas]
    return show_digits(torch.cat(rows), titles, ncols=len(pixel_sigmas), vmin=-1, vmax=3,
                       title="What the model sees (grey scale -1 to 3)")


def show_predictions(images: Tensor, labels: Tensor, predicted: Tensor, n: int = 24):
    """Two figures: the first ``n`` misclassified test digits and the first ``n // 2`` correct
    ones, each titled with its true and predicted label."""
    wrong = (predicted != labels).nonzero().flatten()
    right = (predicted == labels).nonzero().flatten()[: n // 2]

    def titles(idx: Tensor) -> list[str]:
        return [f"true {t} / pred {p}" for t, p in zip(labels[idx].tolist(), predicted[idx].tolist())]

    figures = []
    for idx, what in ((wrong[:n], f"Misclassified test digits ({len(wrong)} of {len(labels)})"),
                      (right, "Correctly classified test digits")):
        figures.append(show_digits(images[idx], titles(idx), ncols=8, title=what))
    return tuple(figures)


def save_notebook_run(setup: NotebookSetup, name: str, model: nn.Module, recipe: Recipe, history: list[dict],
                      train_seconds: float, noise: NoiseReport) -> tuple[Path, Path]:
    """Write a notebook's model (``checkpoints/lenet5_<name>.pt``) and results
    (``results/<name>.json``: recipe, noise under both protocols, history) under its output folder."""
    checkpoint = setup.output_dir / "checkpoints" / f"lenet5_{name}.pt"
    save_checkpoint(checkpoint, model, recipe=name, hyperparameters=recipe.as_dict(), seed=setup.seed,
                    quick=setup.quick)
    results = {"recipe": name, "hyperparameters": recipe.as_dict(), "seed": setup.seed, "quick": setup.quick,
               "device": str(setup.device), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "train_seconds": train_seconds, "clean_accuracy": noise.clean, "seed_protocol": noise.seed,
               f"seed_protocol_pattern_spread_{noise.spread_sigma}": noise.pattern_spread,
               "pixel_protocol": noise.pixel, "history": history}
    path = setup.output_dir / "results" / f"{name}.json"
    with atomic_write(path) as f:
        json.dump(results, f, indent=1)
    print(f"saved {checkpoint} and {path}")
    return checkpoint, path
