"""LeNet-5 + Sharpness-Aware Minimization (SAM) on MNIST: everything the notebooks share.

Sections: reproducibility, model, SAM optimizer, data, training, evaluation, noise, files and
checkpoints, tables and figures. Data lives on the device as tensors; the training loop never
synchronises with the host inside an epoch. Corruptions and sharpness live in ``analysis/``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from tqdm.auto import trange

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_FILES = (
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
        self.to(memory_format=torch.channels_last)  # oneDNN's CPU convolutions run ~1.3x faster so

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


# ----------------------------------------------------------------------------- SAM


class SAM(torch.optim.Optimizer):
    """Sharpness-Aware Minimization (Foret et al., 2021), adaptive variant ASAM (Kwon et al., 2021).

    Same interface as davda54/sam: ``first_step`` moves each parameter to w + e(w) with
    e(w) = rho * T(w)^2 grad / ||T(w) grad||_2 (T(w) = |w| if adaptive else 1; one norm over all
    groups, each group using its own ``rho``/``adaptive``); ``second_step`` restores w and runs
    ``base_optimizer`` with the gradient taken at w + e(w). ``state_dict`` is the base optimizer's.
    """

    def __init__(self, params, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                 adaptive: bool = False, **kwargs) -> None:
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer class, got {base_optimizer!r}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self._weights_before_perturbation: list[tuple[list[Tensor], list[Tensor]]] | None = None

    def add_param_group(self, param_group: dict) -> None:
        rho = param_group.get("rho", self.defaults["rho"])
        if isinstance(rho, bool) or not isinstance(rho, numbers.Real):
            raise TypeError(f"rho must be a real number, got {type(rho).__name__}")
        if not math.isfinite(rho) or rho < 0:
            raise ValueError(f"rho must be finite and >= 0, got {rho}")
        super().add_param_group(param_group)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to the worst point w + e(w) of the rho-ball, remembering w."""
        scale = 1.0 / self._grad_norm().clamp_min(1e-12)  # zero gradients -> zero perturbation
        self._weights_before_perturbation = []
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
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore w and take the base optimizer's step with the gradient computed at w + e(w)."""
        if self._weights_before_perturbation is None:
            raise RuntimeError("SAM.second_step() called without a preceding first_step()")
        for params, saved in self._weights_before_perturbation:
            torch._foreach_copy_(params, saved)
        self._weights_before_perturbation = None
        self.base_optimizer.step()
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


def load_mnist(root: str | os.PathLike | None = None, train: bool = True,
               device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """MNIST as tensors on ``device``: images float32 (N, 1, 28, 28) in [0, 1], labels int64 (N,).

    Read through ``torchvision.datasets.MNIST(root, download=True)``; ``root`` defaults to
    ``$MNIST_ROOT``, else ``./data``. Offline, ``root/MNIST/raw`` must hold the four IDX files.
    """
    root = Path(root if root is not None else os.environ.get("MNIST_ROOT", "data"))
    raw = root / "MNIST" / "raw"
    try:
        dataset = torchvision.datasets.MNIST(root, train=train, download=True)
    except Exception as err:  # torchvision raises RuntimeError/URLError/AssertionError/OSError variously
        present = all((raw / name).is_file() for name in MNIST_FILES)
        if not present:
            raise FileNotFoundError(
                f"MNIST not found in {raw} and could not be downloaded ({err}). Put the files "
                f"{', '.join(MNIST_FILES)} there, or set MNIST_ROOT to a folder holding MNIST/raw/."
            ) from err
        raise ValueError(f"MNIST files in {raw} are truncated or corrupt: {err}") from err
    images, labels = dataset.data, dataset.targets
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"MNIST files in {raw} are inconsistent: images {tuple(images.shape)}, "
                         f"labels {tuple(labels.shape)}; expected (N, 28, 28) images and N labels")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"MNIST labels in {raw} must lie in 0..9, found {labels.min()}..{labels.max()}")
    images = images.to(device=device, dtype=torch.float32).div_(255).unsqueeze(1)
    return images, labels.to(device=device, dtype=torch.int64)


def train_val_split(images: Tensor, labels: Tensor, val_fraction: float = 0.2,
                    seed: int = 42) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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
          lr_milestones: Sequence[float] = (), lr_gamma: float = 0.2,
          batch_transform: Callable[[Tensor, torch.Generator], Tensor] | None = None,
          autocast_dtype: torch.dtype | None = None, seed: int = 0,
          progress: bool = True, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train ``model`` in place and return one history row per epoch.

    Works with any optimizer; with :class:`SAM` each step runs two forward-backward passes.
    ``lr_milestones`` are fractions of ``epochs`` at which every group's lr is multiplied by
    ``lr_gamma`` (the study's schedule is ``(0.3, 0.6, 0.8)``); the optimizer's lrs are restored
    on return, so a second call starts from them again. Shuffling (and ``batch_transform``) draw
    from a generator seeded with ``seed``. ``progress`` shows a tqdm bar; ``on_epoch`` is called
    with each history row as it is made (for logs where no bar is shown).
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    device = images.device
    generator = torch.Generator(device=device).manual_seed(seed)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    milestones = [round(fraction * epochs) for fraction in lr_milestones]
    autocast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    def loss_of(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with autocast:
            logits = model(x)
            return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing,
                                   reduction=reduction), logits

    history = []
    bar = trange(epochs, desc="train", disable=not progress)
    try:
        for epoch in bar:
            decay = lr_gamma ** sum(epoch >= m for m in milestones)
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base_lr * decay
            start = time.perf_counter()
            model.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            for idx in minibatch_indices(len(images), batch_size, generator):
                x, y = images[idx], labels[idx]
                if batch_transform is not None:
                    x = batch_transform(x, generator)
                loss, logits = loss_of(x, y)
                loss.backward()
                if isinstance(optimizer, SAM):
                    optimizer.first_step(zero_grad=True)
                    with frozen_batchnorm_stats(model):
                        loss_of(x, y)[0].backward()
                    optimizer.second_step(zero_grad=True)
                else:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                loss_sum += loss.detach() * (len(y) if reduction == "mean" else 1)
                correct += (logits.argmax(1) == y).sum()
            row = {"epoch": epoch + 1, "lr": base_lrs[0] * decay,
                   "train_loss": loss_sum.item() / len(images), "train_acc": 100 * correct.item() / len(images)}
            if val_data is not None:
                row["val_loss"], row["val_acc"] = evaluate(model, *val_data, label_smoothing=label_smoothing)
            row["seconds"] = time.perf_counter() - start
            history.append(row)
            bar.set_postfix({k: round(v, 4) for k, v in row.items() if k.endswith(("loss", "acc"))})
            if on_epoch is not None:
                on_epoch(row)
    finally:
        for group, base_lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base_lr
    return history


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


def seed_protocol_noise(images: Tensor, sigma: float, seed: int = 0) -> Tensor:
    """The original study's noise test: ``(images - 0.1307) / 0.3081 + sigma * n``.

    n is ONE 28x28 standard-normal pattern, drawn right after ``torch.manual_seed(seed)`` (the
    study re-seeded before every image), so every image gets the same pattern. Fed to a model
    trained on unnormalized [0, 1] inputs, this mixes a normalization shift with a single fixed
    noise pattern: it is not a test of robustness to random noise.
    """
    _check_sigma(sigma)
    pattern = torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(seed))
    return (images - MNIST_MEAN) / MNIST_STD + sigma * pattern.to(images.device)


def evaluate_noise(model: nn.Module, images: Tensor, labels: Tensor, sigmas: Sequence[float],
                   protocol: str = "pixel", seed: int = 0, clip: bool = False) -> dict[float, float]:
    """Accuracy (%) for each sigma under ``protocol``:

    - ``"pixel"``: :func:`add_gaussian_noise` on the [0, 1] images (``clip`` optional);
    - ``"seed"``: :func:`seed_protocol_noise`, the original study's protocol.
    """
    if protocol == "pixel":
        perturb = lambda sigma: add_gaussian_noise(images, sigma, seed=seed, clip=clip)  # noqa: E731
    elif protocol == "seed":
        perturb = lambda sigma: seed_protocol_noise(images, sigma, seed=seed)  # noqa: E731
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
        ax.imshow(image.squeeze(0), cmap="gray", vmin=vmin, vmax=vmax)
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
