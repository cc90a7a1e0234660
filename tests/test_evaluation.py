"""predict, evaluate, accuracy; markdown_table, confusion_matrix."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lenet_utils import accuracy, confusion_matrix, evaluate, markdown_table, predict


@pytest.fixture
def model():
    """A classifier with dropout, so train and eval mode give different outputs."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.Tanh(), nn.Dropout(0.5), nn.Linear(32, 10))


@pytest.fixture
def data():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(23, 1, 28, 28, generator=generator), torch.randint(0, 10, (23,), generator=generator)


def reference(model, images, labels, label_smoothing=0.0):
    model.eval()
    with torch.no_grad():
        logits = model(images)
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing).item()
    return logits.argmax(1), loss, 100 * (logits.argmax(1) == labels).float().mean().item()


def grad_modes(model) -> list:
    modes = []
    model.register_forward_pre_hook(lambda module, args: modes.append(torch.is_grad_enabled()))
    return modes


@pytest.mark.parametrize("batch_size", [5, 23, 2000])
def test_predict(model, data, batch_size):
    images, labels = data
    expected, _, _ = reference(model, images, labels)
    model.train()
    modes = grad_modes(model)
    predicted = predict(model, images, batch_size=batch_size)
    assert torch.equal(predicted, expected) and predicted.dtype == torch.int64
    assert not model.training and not predicted.requires_grad
    assert modes == [False] * -(-len(images) // batch_size)  # batched, no grad


@pytest.mark.parametrize("batch_size", [5, 2000])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_evaluate(model, data, batch_size, label_smoothing):
    images, labels = data
    _, expected_loss, expected_acc = reference(model, images, labels, label_smoothing)
    model.train()
    modes = grad_modes(model)
    loss, acc = evaluate(model, images, labels, batch_size=batch_size, label_smoothing=label_smoothing)
    assert isinstance(loss, float) and isinstance(acc, float)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    assert acc == pytest.approx(expected_acc)
    assert not model.training
    assert modes and not any(modes)
    assert all(p.grad is None for p in model.parameters())


def test_accuracy(model, data):
    images, labels = data
    predicted, _, _ = reference(model, images, labels)
    model.train()
    assert accuracy(model, images, predicted) == 100.0
    wrong = (predicted + 1) % 10
    assert accuracy(model, images, wrong) == 0.0
    half = torch.where(torch.arange(len(labels)) < 10, predicted, wrong)
    assert accuracy(model, images, half, batch_size=4) == pytest.approx(100 * 10 / 23)
    assert accuracy(model, images, labels) == evaluate(model, images, labels)[1]
    assert not model.training


def test_markdown_table():
    table = markdown_table(["model", "acc", "n"], [["SAM", 98.765, 3], ["SGD", 97.0, None]], digits=1)
    assert table.splitlines() == ["| model | acc | n |", "| --- | --- | --- |",
                                  "| SAM | 98.8 | 3 |", "| SGD | 97.0 | None |"]


def test_confusion_matrix():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    predicted = torch.tensor([0, 1, 1, 2, 0, 2])
    matrix = confusion_matrix(predicted, labels, num_classes=3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert matrix.sum() == len(labels) and matrix.trace() == 4
    assert confusion_matrix(predicted, labels).shape == (10, 10)
