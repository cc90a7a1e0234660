"""LeNet-5 + Sharpness-Aware Minimization (SAM) on MNIST: the module both notebooks import.

Sections: reproducibility, model, data, training (with SAM from ``sam.py``), the notebooks' two
recipes, evaluation, Gaussian noise, files and checkpoints. Data lives on the device as tensors; the
training loop never synchronises with the host inside an epoch. The notebooks' tables and figures
are in ``lenet_notebook.py``; what the study measures beyond Gaussian noise (corruptions, attacks,
sharpness, statistics) is in ``analysis/``, and the study itself (its recipes, records, plan and
report) in ``study/``.
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
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from tqdm.auto import trange

from sam import SAM

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FIXED_PATTERN_SIGMAS = (0.4, 0.6, 0.8)  # the original study's noise levels (its fixed-pattern protocol)
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


BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)  # the lazy ones subclass these


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Keep BatchNorm running statistics (and ``num_batches_tracked``, which drives the
    ``momentum=None`` cumulative average) unchanged inside the block (use for SAM's second pass)."""
    norms = [m for m in model.modules() if isinstance(m, BATCHNORMS)]
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
    mean: float  # of the training pixels in [0, 1], for the fixed-pattern protocol's normalization
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


def check_number(name: str, value: object, low: float | None = None, high: float | None = None,
                 inclusive: bool = True, integer: bool = False) -> None:
    """Raise ``TypeError`` unless ``value`` is a real number (an int if ``integer``; never a bool),
    ``ValueError`` unless it is finite and within [low, high] (open bounds if not ``inclusive``)."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {'an int' if integer else 'a real number'}, got {type(value).__name__}")
    inside = ((low is None or (value >= low if inclusive else value > low))
              and (high is None or (value <= high if inclusive else value < high)))
    if not (math.isfinite(value) and inside):
        bounds = "".join([f" {'>=' if inclusive else '>'} {low}" if low is not None else "",
                          " and" if low is not None and high is not None else "",
                          f" {'<=' if inclusive else '<'} {high}" if high is not None else ""])
        raise ValueError(f"{name} must be finite{' and' + bounds if bounds else ''}, got {value!r}")


def as_generator(seed: int | torch.Generator, device: torch.device) -> torch.Generator:
    """``seed`` itself if it is a ``torch.Generator``, else a fresh one on ``device`` seeded with it."""
    return seed if isinstance(seed, torch.Generator) else torch.Generator(device=device).manual_seed(seed)


def random_gaussian_noise(images: Tensor, generator: torch.Generator, max_sigma: float = 0.6) -> Tensor:
    """Training augmentation: add N(0, sigma^2) noise, sigma ~ U[0, max_sigma] drawn per batch."""
    sigma = torch.rand((), generator=generator, device=images.device) * max_sigma
    return images + sigma * torch.randn(images.shape, generator=generator, device=images.device)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, BATCHNORMS) for m in model.modules())


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
    tqdm bar; ``on_epoch`` gets each history row as it is made (see :func:`epoch_logger`);
    ``on_step`` gets the 0-based step count of this call after every optimizer step.
    ``autocast_dtype=torch.float16`` also scales the losses with a fresh ``torch.amp.GradScaler``
    for the device (steps with inf/NaN gradients are skipped); bfloat16 needs no scaler.
    """
    check_number("epochs", epochs, low=1, integer=True)
    check_number("batch_size", batch_size, low=1, integer=True)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    device = images.device
    generator = as_generator(seed, device)
    autocast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None
    # SAM's second pass must not count twice in BatchNorm's running statistics (LeNet-5 has none).
    second_pass = partial(frozen_batchnorm_stats, model) if has_batchnorm(model) else contextlib.nullcontext

    def loss_of(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with autocast:
            logits = model(x)
            return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing,
                                   reduction=reduction), logits

    def backward(loss: Tensor) -> None:
        (loss if scaler is None else scaler.scale(loss)).backward()

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
                with second_pass():
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


def epoch_logger(epochs: int, every: int = 1, prefix: str = "") -> Callable[[dict], None]:
    """An ``on_epoch`` callback for :func:`train`: prints the first, every ``every``-th and the last
    epoch's row as one plain line, after ``prefix`` (a log that reads the same live, in a saved
    notebook and in a background run's log file)."""
    check_number("every", every, low=1, integer=True)

    def log(row: dict) -> None:
        if row["epoch"] in (1, epochs) or row["epoch"] % every == 0:
            val = f", val loss {row['val_loss']:.4f}, val acc {row['val_acc']:.2f} %" if "val_acc" in row else ""
            print(f"{prefix}epoch {row['epoch']:>{len(str(epochs))}}/{epochs}: lr {row['lr']:.4g}, train loss "
                  f"{row['train_loss']:.4f}, train acc {row['train_acc']:.2f} %{val} ({row['seconds']:.1f} s)",
                  flush=True)
    return log


# ----------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Recipe:
    """Everything that decides how LeNet-5 is trained: the notebooks' :data:`BASELINE` and
    :data:`ASAM`, and the study's variations of them (``study/recipes.py``).

    ``sam_rho=None`` trains with the base optimizer alone; ``lr_milestones`` are fractions of
    ``epochs`` at which the lr is multiplied by ``lr_gamma`` (``MultiStepLR``); ``split`` trains on
    the 48,000 images of :func:`train_val_split` (seed :data:`SPLIT_SEED`) and validates on the
    other 12,000, else on all 60,000; ``noise_max_sigma`` adds :func:`random_gaussian_noise`.
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

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not all(0 < f <= 1 for f in self.lr_milestones):
            raise ValueError(f"lr_milestones are fractions of training in (0, 1], got {self.lr_milestones}")

    def as_dict(self) -> dict:
        """Plain JSON-ready hyper-parameters (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

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

    def train_settings(self) -> dict:
        """The :func:`train` arguments this recipe sets (besides epochs, scheduler and seed)."""
        augment = (None if self.noise_max_sigma is None
                   else partial(random_gaussian_noise, max_sigma=self.noise_max_sigma))
        return dict(batch_size=self.batch_size, label_smoothing=self.label_smoothing, reduction=self.reduction,
                    batch_transform=augment)

    def fit(self, model: nn.Module, images: Tensor, labels: Tensor, *, seed: int | torch.Generator = 0,
            optimizer: torch.optim.Optimizer | None = None,
            **train_options) -> tuple[list[dict], torch.optim.Optimizer]:
        """Train ``model`` with this recipe on the given images (``val_data``, ``progress``,
        ``on_epoch``, ``on_step`` ... go through to :func:`train`); returns (history, optimizer).
        ``optimizer`` defaults to :meth:`make_optimizer` (pass one to watch it during training)."""
        optimizer = optimizer or self.make_optimizer(model.parameters())
        history = train(model, optimizer, images, labels, epochs=self.epochs, scheduler=self.make_scheduler(optimizer),
                        seed=seed, **self.train_settings(), **train_options)
        return history, optimizer


# The original study's two recipes: Adam (lr 1e-3, batch 32, 30 epochs, summed cross-entropy, all
# 60,000 images) and ASAM over SGD (rho 2.0, label smoothing 0.1, batch 128, 80 epochs, lr x0.2 at
# 30/60/80 % of training, 48,000 images with 12,000 for validation).
BASELINE = Recipe("adam", lr=1e-3, batch_size=32, epochs=30, reduction="sum")
ASAM = Recipe("sgd", lr=0.1, batch_size=128, epochs=80, momentum=0.9, weight_decay=5e-4, sam_rho=2.0,
              sam_adaptive=True, label_smoothing=0.1, lr_milestones=(0.3, 0.6, 0.8), lr_gamma=0.2, split=True)


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


def add_gaussian_noise(images: Tensor, sigma: float, seed: int = 0, clip: bool = False) -> Tensor:
    """``images + sigma * n`` with independent n ~ N(0, 1) per pixel and image, from a generator
    seeded with ``seed`` (the global RNG is untouched); ``clip`` clamps to [0, 1].
    ``sigma=0`` returns ``images`` itself."""
    check_number("sigma", sigma, low=0)
    if sigma == 0:
        return images
    generator = torch.Generator(device=images.device).manual_seed(seed)
    noisy = images + sigma * torch.randn(images.shape, generator=generator, device=images.device,
                                         dtype=images.dtype)
    return noisy.clamp_(0, 1) if clip else noisy


def fixed_pattern_noise(images: Tensor, sigma: float, seed: int = 0, mean: float = MNIST_MEAN,
                        std: float = MNIST_STD) -> Tensor:
    """The original study's noise test, the "fixed-pattern protocol": ``(images - mean) / std + sigma * n``
    (MNIST's 0.1307 and 0.3081 by default; a dataset's own from :data:`DATASETS`). Its sigma is in
    normalized units: ``sigma * std`` in pixel units (0.6 -> 0.18 on MNIST).

    n is ONE 28x28 standard-normal pattern, drawn right after ``torch.manual_seed(seed)`` (the
    study re-seeded before every image), so every image gets the same pattern. Fed to a model
    trained on unnormalized [0, 1] inputs, this mixes a normalization shift with a single fixed
    noise pattern: it is not a test of robustness to random noise.
    """
    check_number("sigma", sigma, low=0)
    pattern = torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(seed))
    return (images - mean) / std + sigma * pattern.to(images.device)


def evaluate_noise(model: nn.Module, images: Tensor, labels: Tensor, sigmas: Sequence[float],
                   protocol: str = "pixel", seed: int = 0, clip: bool = False,
                   normalization: tuple[float, float] = (MNIST_MEAN, MNIST_STD)) -> dict[float, float]:
    """Accuracy (%) for each sigma under ``protocol``:

    - ``"pixel"``: :func:`add_gaussian_noise` on the [0, 1] images (``clip`` optional);
    - ``"fixed-pattern"``: :func:`fixed_pattern_noise`, the original study's protocol, normalizing
      with ``normalization`` = (mean, std).
    """
    if protocol == "pixel":
        perturb = lambda sigma: add_gaussian_noise(images, sigma, seed=seed, clip=clip)  # noqa: E731
    elif protocol == "fixed-pattern":
        perturb = lambda sigma: fixed_pattern_noise(images, sigma, seed, *normalization)  # noqa: E731
    else:
        raise ValueError(f"protocol must be 'pixel' or 'fixed-pattern', got {protocol!r}")
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


# ----------------------------------------------------------------------------- tables


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 2) -> str:
    """A Markdown table (floats rounded to ``digits``); show it with ``IPython.display.Markdown``."""
    cell = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


