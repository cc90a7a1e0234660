"""train() and random_gaussian_noise on tiny data (a linear model keeps the CPU time small)."""

import math
import re
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import reference_step
from lenet_utils import (
    ASAM,
    BASELINE,
    SAM,
    LeNet5,
    as_generator,
    check_number,
    evaluate,
    has_batchnorm,
    minibatch_indices,
    random_gaussian_noise,
    train,
)


def linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def state(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(state(a), state(b)))


def without_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# ----------------------------------------------------------------------------- determinism, learning


def test_train_is_deterministic(tiny_digits):
    images, labels = tiny_digits
    runs = []
    for seed in (3, 3, 4):
        model = linear_model()
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        history = train(model, opt, images, labels, epochs=2, batch_size=40, val_data=(images[:20], labels[:20]),
                        batch_transform=random_gaussian_noise, seed=seed, progress=False)
        runs.append((model, history))
    (m1, h1), (m2, h2), (m3, h3) = runs
    assert without_seconds(h1) == without_seconds(h2)
    assert same_weights(m1, m2)
    assert not same_weights(m1, m3)  # another seed shuffles (and perturbs) differently


def test_train_lenet5_with_sam_is_deterministic(tiny_digits):
    images, labels = tiny_digits[0][:8], tiny_digits[1][:8]
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = LeNet5()
        train(model, SAM(model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9), images, labels,
              epochs=1, batch_size=8, seed=1, progress=False)  # one SAM step
        models.append(model)
    assert same_weights(*models)
    torch.manual_seed(0)
    assert not same_weights(models[0], LeNet5())  # and it did train


@pytest.mark.parametrize("make_optimizer", [
    lambda params: torch.optim.SGD(params, lr=0.5, momentum=0.5),
    lambda params: torch.optim.Adam(params, lr=0.02),
    lambda params: SAM(params, torch.optim.SGD, rho=0.05, lr=0.5, momentum=0.5),
    lambda params: SAM(params, torch.optim.Adam, rho=0.5, adaptive=True, lr=0.02),
], ids=["SGD", "Adam", "SAM-SGD", "ASAM-Adam"])
def test_loss_decreases_on_separable_problem(tiny_digits, make_optimizer):
    images, labels = tiny_digits
    model = linear_model()
    history = train(model, make_optimizer(model.parameters()), images, labels, epochs=3, batch_size=40,
                    progress=False)
    losses = [row["train_loss"] for row in history]
    assert losses[-1] < 0.5 * losses[0]
    assert losses[-1] < losses[-2]
    assert history[-1]["train_acc"] >= 90
    assert evaluate(model, images, labels)[1] == 100


@pytest.mark.parametrize("use_sam", [False, True])
def test_train_matches_manual_loop(tiny_digits, use_sam):
    """One epoch of train() is exactly: shuffle with a generator seeded with ``seed``, then per
    batch one optimizer step (SAM: first_step / second pass / second_step)."""
    images, labels = tiny_digits
    models, optimizers = [], []
    for _ in range(2):
        model = linear_model()
        opt = (SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9) if use_sam
               else torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9))
        models.append(model)
        optimizers.append(opt)
    train(models[0], optimizers[0], images, labels, epochs=1, batch_size=32, seed=5, progress=False)

    model, opt = models[1], optimizers[1]
    for idx in minibatch_indices(len(images), 32, torch.Generator().manual_seed(5)):
        reference_step(model, opt, images[idx], labels[idx])
    for a, b in zip(state(models[0]), state(model)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("use_sam, passes_per_step", [(False, 1), (True, 2)])
def test_forward_passes_per_step(tiny_digits, use_sam, passes_per_step):
    images, labels = tiny_digits
    model = linear_model()
    opt = (SAM(model.parameters(), torch.optim.SGD, lr=0.1) if use_sam
           else torch.optim.SGD(model.parameters(), lr=0.1))
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    train(model, opt, images, labels, epochs=1, batch_size=32,
          batch_transform=random_gaussian_noise, progress=False)
    assert len(seen) == 3 * passes_per_step  # 80 images in batches of 32
    if use_sam:  # both passes of a step see the same (transformed) batch
        assert all(torch.equal(seen[i], seen[i + 1]) for i in range(0, len(seen), 2))


# ----------------------------------------------------------------------------- history and schedule


@pytest.mark.parametrize("with_val", [False, True])
def test_history_rows(tiny_digits, with_val):
    images, labels = tiny_digits
    model = linear_model()
    val = (images[::4], labels[::4])
    history = train(model, torch.optim.SGD(model.parameters(), lr=0.3), images, labels, epochs=2,
                    batch_size=40, val_data=val if with_val else None, progress=False)
    keys = {"epoch", "lr", "train_loss", "train_acc", "seconds"} | ({"val_loss", "val_acc"} if with_val else set())
    assert [set(row) for row in history] == [keys, keys]
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(row["seconds"] > 0 and row["lr"] == 0.3 for row in history)
    assert all(0 <= row["train_acc"] <= 100 and row["train_loss"] > 0 for row in history)
    if with_val:
        assert (history[-1]["val_loss"], history[-1]["val_acc"]) == evaluate(model, *val)


def test_scheduler_is_stepped_once_per_epoch_and_drives_every_group(tiny_digits):
    images, labels = tiny_digits[0][:8], tiny_digits[1][:8]
    model = linear_model()
    opt = SAM([{"params": [model[1].weight], "lr": 0.1}, {"params": [model[1].bias], "lr": 0.5}],
              torch.optim.SGD, lr=0.1)
    used = []  # the lr the base optimizer actually has while each batch is processed

    def record(x, generator):
        used.append([group["lr"] for group in opt.base_optimizer.param_groups])
        return x

    scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, [3, 6, 8], 0.2)
    history = train(model, opt, images, labels, epochs=10, batch_size=8, scheduler=scheduler,
                    batch_transform=record, progress=False)
    factors = [1, 1, 1, 0.2, 0.2, 0.2, 0.04, 0.04, 0.008, 0.008]
    assert [row["lr"] for row in history] == pytest.approx([0.1 * f for f in factors], rel=1e-12)
    assert used == [pytest.approx([0.1 * f, 0.5 * f], rel=1e-12) for f in factors]


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler\.step\(\)`")  # no optimizer steps here
@pytest.mark.parametrize("epochs", [2, 80, 160])
def test_recipe_schedule_gives_the_hand_written_schedules_lrs_exactly(epochs):
    """MultiStepLR reproduces, bit for bit, the lr of the milestone schedule the study was first run
    with: base_lr * gamma ** (number of milestones round(f * epochs) reached)."""
    recipe = replace(ASAM, epochs=epochs)
    optimizer = recipe.make_optimizer(linear_model().parameters())
    scheduler = recipe.make_scheduler(optimizer)
    milestones = [round(f * epochs) for f in recipe.lr_milestones]
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert lrs == [recipe.lr * recipe.lr_gamma ** sum(e >= m for m in milestones) for e in range(epochs)]


@pytest.mark.parametrize("use_sam", [False, True])
def test_training_split_over_calls_continues_exactly(tiny_digits, use_sam):
    """Two calls sharing model, optimizer, scheduler and generator equal one call of both lengths."""
    images, labels = tiny_digits

    def run(splits):
        torch.manual_seed(0)
        model = linear_model()
        opt = (SAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, rho=0.1) if use_sam
               else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, [2], 0.1)
        generator = torch.Generator().manual_seed(3)
        history = []
        for epochs in splits:
            history += train(model, opt, images, labels, epochs=epochs, batch_size=16, scheduler=scheduler,
                             seed=generator, progress=False)
        return model, [(row["lr"], row["train_loss"]) for row in history]

    (one, history_one), (two, history_two) = run([4]), run([2, 2])
    assert history_one == history_two
    assert all(torch.equal(a, b) for a, b in zip(one.parameters(), two.parameters()))


def test_on_step_counts_every_optimizer_step(tiny_digits):
    images, labels = tiny_digits
    model = linear_model()
    steps = []
    train(model, torch.optim.SGD(model.parameters(), lr=0.1), images, labels, epochs=2, batch_size=30,
          progress=False, on_step=steps.append)
    assert steps == list(range(2 * 3))  # 80 images in batches of 30: 3 steps per epoch


def test_on_epoch_sees_each_row_as_it_is_made(tiny_digits):
    images, labels = tiny_digits
    model = linear_model()
    seen = []
    history = train(model, torch.optim.SGD(model.parameters(), lr=0.1), images, labels, epochs=3, batch_size=40,
                    progress=False, on_epoch=lambda row: seen.append(dict(row)))
    assert seen == history and [row["epoch"] for row in seen] == [1, 2, 3]


def test_no_milestones_keeps_lr(tiny_digits):
    images, labels = tiny_digits[0][:8], tiny_digits[1][:8]
    model = linear_model()
    history = train(model, torch.optim.SGD(model.parameters(), lr=0.05), images, labels, epochs=3,
                    batch_size=8, progress=False)
    assert [row["lr"] for row in history] == [0.05] * 3


# ----------------------------------------------------------------------------- loss reporting


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_reported_loss_is_per_sample_mean_for_both_reductions(tiny_digits, label_smoothing):
    images, labels = tiny_digits
    model = linear_model()
    before = state(model)
    with torch.no_grad():
        logits = model(images)
        expected_loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing).item()
        expected_acc = 100 * (logits.argmax(1) == labels).float().mean().item()
    rows = {}
    for reduction in ("mean", "sum"):
        # lr 0: the weights stay put, so the report is the loss of the initial model
        rows[reduction] = train(model, torch.optim.SGD(model.parameters(), lr=0.0), images, labels, epochs=1,
                                batch_size=24, reduction=reduction, label_smoothing=label_smoothing,
                                progress=False)[0]
    assert all(torch.equal(a, b) for a, b in zip(state(model), before))
    for row in rows.values():
        assert row["train_loss"] == pytest.approx(expected_loss, rel=1e-5)
        assert row["train_acc"] == pytest.approx(expected_acc)


def test_reduction_sum_scales_the_gradient(tiny_digits):
    """One full-batch SGD step with reduction='sum' at lr equals reduction='mean' at lr * n."""
    images, labels = tiny_digits
    n = len(images)
    summed, averaged = linear_model(), linear_model()
    train(summed, torch.optim.SGD(summed.parameters(), lr=1e-3), images, labels, epochs=1, batch_size=n,
          reduction="sum", progress=False)
    train(averaged, torch.optim.SGD(averaged.parameters(), lr=1e-3 * n), images, labels, epochs=1,
          batch_size=n, reduction="mean", progress=False)
    for a, b in zip(state(summed), state(averaged)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert not same_weights(summed, linear_model())


# ----------------------------------------------------------------------------- arguments, transforms


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(epochs=0), ValueError, "epochs must be finite and >= 1, got 0"),
    (dict(epochs=-1), ValueError, "epochs must be finite and >= 1, got -1"),
    (dict(batch_size=0), ValueError, "batch_size must be finite and >= 1, got 0"),
    (dict(epochs=1.5), TypeError, "epochs must be an int, got float"),
    (dict(epochs=True), TypeError, "epochs must be an int, got bool"),
    (dict(batch_size=16.0), TypeError, "batch_size must be an int, got float"),
    (dict(batch_size="16"), TypeError, "batch_size must be an int, got str"),
    (dict(reduction="max"), ValueError, "reduction must be 'mean' or 'sum'"),
    (dict(reduction="none"), ValueError, "reduction must be 'mean' or 'sum'")])
def test_bad_arguments_raise_before_training(tiny_digits, kwargs, error, message):
    images, labels = tiny_digits
    model = linear_model()
    before = state(model)
    arguments = dict(epochs=1, batch_size=16, progress=False) | kwargs
    with pytest.raises(error, match=re.escape(message)):
        train(model, torch.optim.SGD(model.parameters(), lr=0.1), images, labels, **arguments)
    assert all(torch.equal(a, b) for a, b in zip(state(model), before))


def test_batch_transform_feeds_the_model(tiny_digits):
    images, labels = tiny_digits
    model = linear_model()
    calls, seen = [], []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))

    def transform(x, generator):
        assert isinstance(generator, torch.Generator)
        calls.append(len(x))
        return torch.full_like(x, 0.5)

    train(model, torch.optim.SGD(model.parameters(), lr=0.1), images, labels, epochs=2, batch_size=32,
          batch_transform=transform, progress=False)
    assert calls == [32, 32, 16] * 2
    assert len(seen) == 6 and all((x == 0.5).all() for x in seen)


def test_random_gaussian_noise_transform_changes_training(tiny_digits):
    images, labels = tiny_digits
    plain, noisy = linear_model(), linear_model()
    for model, transform in ((plain, None), (noisy, random_gaussian_noise)):
        train(model, torch.optim.SGD(model.parameters(), lr=0.1), images, labels, epochs=1, batch_size=40,
              batch_transform=transform, progress=False)
    assert not same_weights(plain, noisy)


def test_random_gaussian_noise():
    images = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    rng_state = torch.get_rng_state()
    a = random_gaussian_noise(images, torch.Generator().manual_seed(1), max_sigma=0.6)
    b = random_gaussian_noise(images, torch.Generator().manual_seed(1), max_sigma=0.6)
    c = random_gaussian_noise(images, torch.Generator().manual_seed(2), max_sigma=0.6)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == images.shape and a.dtype == images.dtype
    noise = a - images
    assert 0 < noise.std().item() < 0.6 * 1.05
    # one sigma per batch: the noise of every image has about the same spread
    per_image = noise.flatten(1).std(1)
    assert per_image.max() / per_image.min() < 1.5
    generator = torch.Generator().manual_seed(1)
    assert torch.equal(random_gaussian_noise(images, generator, max_sigma=0.0), images)


# ----------------------------------------------------------------------------- helpers: checks, generators, recipes


@pytest.mark.parametrize("value, bounds, error, message", [
    (2, dict(low=0, high=1), ValueError, "x must be finite and >= 0 and <= 1, got 2"),
    (0, dict(low=0, inclusive=False), ValueError, "x must be finite and > 0, got 0"),
    (5, dict(high=4), ValueError, "x must be finite and <= 4, got 5"),
    (math.inf, dict(), ValueError, "x must be finite, got inf"),
    (math.nan, dict(low=0), ValueError, "x must be finite and >= 0, got nan"),
    (True, dict(), TypeError, "x must be a real number, got bool"),
    ("1", dict(), TypeError, "x must be a real number, got str"),
    (2.0, dict(integer=True), TypeError, "x must be an int, got float"),
])
def test_check_number_refuses(value, bounds, error, message):
    with pytest.raises(error, match=re.escape(message) + "$"):
        check_number("x", value, **bounds)


def test_check_number_accepts_values_inside_the_bounds():
    for value, bounds in ((0, dict(low=0, high=1)), (1, dict(low=0, high=1)),
                          (0.5, dict(low=0, high=1, inclusive=False)), (3, dict(low=1, integer=True)), (-1e9, dict())):
        assert check_number("x", value, **bounds) is None


def test_as_generator():
    generator = torch.Generator().manual_seed(5)
    assert as_generator(generator, torch.device("cpu")) is generator
    fresh = as_generator(5, torch.device("cpu"))
    assert fresh is not generator and torch.equal(torch.rand(3, generator=fresh), torch.rand(3, generator=generator))


def test_has_batchnorm():
    assert not has_batchnorm(LeNet5()) and not has_batchnorm(linear_model())
    assert has_batchnorm(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)))
    assert has_batchnorm(nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))))


def test_recipe_train_settings():
    assert BASELINE.train_settings() == dict(batch_size=32, label_smoothing=0.0, reduction="sum", batch_transform=None)
    noisy = replace(ASAM, noise_max_sigma=0.3).train_settings()
    transform = noisy.pop("batch_transform")
    assert noisy == dict(batch_size=128, label_smoothing=0.1, reduction="mean")
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.equal(transform(images, torch.Generator().manual_seed(1)),
                       random_gaussian_noise(images, torch.Generator().manual_seed(1), max_sigma=0.3))
