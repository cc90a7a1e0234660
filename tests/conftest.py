"""Shared test set-up: the project root on ``sys.path``, no network, tiny synthetic data, and the one
marker (``needs_mnist``) and fixtures (``mnist_train``, ``mnist_test``) for tests on real MNIST."""

import importlib.util
import os
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lenet_utils import MNIST_FILES, load_mnist  # noqa: E402

MNIST_ROOT = Path(os.environ.get("MNIST_ROOT", ROOT / "data"))
HAVE_MNIST = all((MNIST_ROOT / "MNIST" / "raw" / name).is_file() for name in MNIST_FILES)
needs_mnist = pytest.mark.skipif(
    not HAVE_MNIST, reason=f"real MNIST not found: set MNIST_ROOT to a folder whose MNIST/raw/ holds "
                           f"{', '.join(MNIST_FILES)} (now {MNIST_ROOT})")
"""Skip a test (``@needs_mnist``) or a module (``pytestmark = needs_mnist``) without real MNIST."""


def load_script(name: str):
    """Import ``scripts/<name>.py`` as module ``name`` (registered in sys.modules, which dataclasses need)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def mnist_train():
    """The 60,000 real MNIST training images and labels (skips without them)."""
    if not HAVE_MNIST:
        pytest.skip(needs_mnist.kwargs["reason"])
    return load_mnist(MNIST_ROOT, train=True)


@pytest.fixture(scope="session")
def mnist_test():
    """The 10,000 real MNIST test images and labels (skips without them)."""
    if not HAVE_MNIST:
        pytest.skip(needs_mnist.kwargs["reason"])
    return load_mnist(MNIST_ROOT, train=False)


@pytest.fixture(autouse=True)
def not_a_slurm_array_task(monkeypatch):
    """run_study.py takes its shard from SLURM_ARRAY_TASK_* when no --shard is given: a suite run inside an array
    job must not shard the tests' runs."""
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
                 "SLURM_ARRAY_TASK_STEP"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def no_mnist_download(monkeypatch):
    """Make every torchvision MNIST download fail at once, without touching the network.

    Returns the list of URLs a test tried to fetch."""
    import torchvision.datasets.mnist as tv_mnist

    attempts = []

    def blocked(url, *args, **kwargs):
        attempts.append(url)
        raise URLError(f"network disabled in tests: {url}")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", blocked)
    return attempts


@pytest.fixture
def tiny_digits():
    """A tiny, linearly separable 10-class problem shaped like MNIST: each class lights up its
    own 2x28 band of rows (plus a little noise), 8 images per class."""
    generator = torch.Generator().manual_seed(1234)
    labels = torch.arange(10).repeat(8)
    images = 0.1 * torch.rand(len(labels), 1, 28, 28, generator=generator)
    for i, label in enumerate(labels.tolist()):
        images[i, 0, 2 + 2 * label: 4 + 2 * label] += 0.8
    return images.clamp(0, 1), labels


def reference_step(model, optimizer, x, y) -> None:
    """One training step written out by hand: plain optimizers step once, SAM takes its two passes."""
    import torch.nn.functional as F

    from lenet_utils import SAM

    F.cross_entropy(model(x), y).backward()
    if isinstance(optimizer, SAM):
        optimizer.first_step(zero_grad=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.second_step(zero_grad=True)
    else:
        optimizer.step()
        optimizer.zero_grad()
