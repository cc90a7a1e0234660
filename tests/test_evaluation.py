"""predict, evaluate, accuracy; markdown_table, epoch_logger; lenet_notebook's confusion_matrix, the notebooks'
set-up and outputs."""

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lenet_notebook import (
    NoiseReport,
    NotebookSetup,
    confusion_matrix,
    notebook_setup,
    save_notebook_run,
    show_predictions,
)
from lenet_utils import ASAM, LeNet5, accuracy, epoch_logger, evaluate, load_checkpoint, markdown_table, predict


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


# ----------------------------------------------------------------------------- notebook helpers


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("quick, output_dir", [("1", None), ("0", None), ("1", "elsewhere")])
def test_notebook_setup(monkeypatch, tmp_path, capsys, restore_threads, quick, output_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LENET_QUICK", quick)
    if output_dir:
        monkeypatch.setenv("LENET_OUTPUT_DIR", output_dir)
    else:
        monkeypatch.delenv("LENET_OUTPUT_DIR", raising=False)
    torch.set_num_threads(2)
    setup = notebook_setup(seed=3)
    assert setup.quick == (quick == "1") and setup.seed == 3
    assert setup.output_dir == Path(output_dir or ("quick_output" if quick == "1" else "."))
    assert torch.get_num_threads() == 1
    assert f"quick mode: {quick == '1'}" in capsys.readouterr().out


def test_notebook_setup_seeds_and_saves_figures(monkeypatch, tmp_path, restore_threads):
    import matplotlib.pyplot as plt

    monkeypatch.setenv("LENET_OUTPUT_DIR", str(tmp_path))
    setup = notebook_setup(seed=3)
    assert torch.equal(torch.rand(4), torch.rand(4, generator=torch.Generator().manual_seed(3)))
    fig = plt.figure()
    assert setup.save_figure(fig, "x") == tmp_path / "results" / "figures" / "x.png"
    assert (tmp_path / "results" / "figures" / "x.png").stat().st_size > 0
    plt.close(fig)


@pytest.mark.parametrize("threads, error", [(0, ValueError), (1.5, TypeError), (True, TypeError), ("1", TypeError)])
def test_notebook_setup_rejects_bad_threads(threads, error):
    with pytest.raises(error, match="threads"):
        notebook_setup(threads=threads)


def test_epoch_logger_prints_first_every_and_last(capsys):
    log = epoch_logger(12, every=5)
    for epoch in range(1, 13):
        log({"epoch": epoch, "lr": 0.1, "train_loss": 0.5, "train_acc": 90.0, "seconds": 1.25})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch  1/12", "epoch  5/12", "epoch 10/12", "epoch 12/12"]
    assert lines[0] == "epoch  1/12: lr 0.1, train loss 0.5000, train acc 90.00 % (1.2 s)"
    log({"epoch": 5, "lr": 0.1, "train_loss": 0.5, "train_acc": 90.0, "val_loss": 0.25, "val_acc": 95.0, "seconds": 1})
    assert "val loss 0.2500, val acc 95.00 %" in capsys.readouterr().out
    with pytest.raises(ValueError, match=re.escape("every must be finite and >= 1, got 0")):
        epoch_logger(10, every=0)
    with pytest.raises(TypeError, match="every must be an int"):
        epoch_logger(10, every=2.5)


def test_epoch_logger_prefix_starts_each_line(capsys):
    log = epoch_logger(3, prefix="    sgd seed 0 ")
    for epoch in (1, 2, 3):
        log({"epoch": epoch, "lr": 0.004, "train_loss": 0.25, "train_acc": 99.5, "val_loss": 0.125, "val_acc": 98.0,
             "seconds": 2.0})
    assert capsys.readouterr().out.splitlines() == [
        f"    sgd seed 0 epoch {e}/3: lr 0.004, train loss 0.2500, train acc 99.50 %, val loss 0.1250, "
        "val acc 98.00 % (2.0 s)" for e in (1, 2, 3)]


def test_show_predictions():
    import matplotlib.pyplot as plt

    images = torch.rand(30, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(30) % 10
    predicted = labels.clone()
    predicted[[3, 7, 21]] = 0
    wrong, right = show_predictions(images, labels, predicted, n=4)
    assert wrong._suptitle.get_text() == "Misclassified test digits (3 of 30)"
    assert [ax.get_title() for ax in wrong.axes if ax.images] == ["true 3 / pred 0", "true 7 / pred 0",
                                                                  "true 1 / pred 0"]
    assert len([ax for ax in right.axes if ax.images]) == 2
    plt.close("all")


def test_save_notebook_run(tmp_path, capsys):
    setup = NotebookSetup(quick=True, output_dir=tmp_path, device=torch.device("cpu"), seed=0)
    model = LeNet5()
    noise = NoiseReport(fixed_pattern={0.0: 90.0, 0.6: 80.0}, pixel={0.0: 99.0, 0.6: 70.0},
                        pattern_spread={0: 80.0, 1: 85.0}, spread_sigma=0.6)
    checkpoint, results = save_notebook_run(setup, "asam", model, ASAM, [{"epoch": 1}], 12.5, noise)
    assert checkpoint == tmp_path / "checkpoints" / "lenet5_asam.pt" and results == tmp_path / "results" / "asam.json"
    saved = json.loads(results.read_text())
    assert saved["hyperparameters"] == ASAM.as_dict() and saved["clean_accuracy"] == 99.0
    assert saved["fixed_pattern_protocol"] == {"0.0": 90.0, "0.6": 80.0}
    assert saved["fixed_pattern_protocol_pattern_spread_0.6"] == {"0": 80.0, "1": 85.0}
    assert saved["pixel_protocol"] == {"0.0": 99.0, "0.6": 70.0} and saved["history"] == [{"epoch": 1}]
    assert not [key for key in saved if key.startswith("seed_protocol")]  # the old names are gone
    fresh = LeNet5()
    meta = load_checkpoint(checkpoint, fresh)
    assert (meta["recipe"], meta["hyperparameters"], meta["seed"], meta["quick"]) == ("asam", ASAM.as_dict(), 0, True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
