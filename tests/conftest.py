"""Shared test set-up: the project root on ``sys.path``, no network, tiny synthetic data."""

import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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
