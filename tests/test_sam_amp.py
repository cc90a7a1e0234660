"""SAM with mixed precision: torch.amp.GradScaler on CPU, with float16 autocast."""

import copy
import warnings
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from lenet_utils import SAM, LeNet5, train


def make_problem(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.rand(16, 1, 28, 28, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    torch.manual_seed(seed)
    return LeNet5(), x, y


def loss_fn(model, x, y, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    with torch.autocast("cpu", dtype=dtype):
        return F.cross_entropy(model(x).float(), y)


def weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def sam_step(model, opt, x, y, scaler=None, inject: str | None = None, hook=None,
             dtype: torch.dtype = torch.float16) -> None:
    """One SAM step as the README writes it; ``inject`` puts an inf into the gradient of the
    "first" or "second" pass; ``hook`` sees the model just before the second forward pass."""
    def backward(loss, pass_):
        (loss if scaler is None else scaler.scale(loss)).backward()
        if inject == pass_:
            model.classifier[-1].weight.grad[0, 0] = float("inf")

    backward(loss_fn(model, x, y, dtype), "first")
    opt.first_step(zero_grad=True, scaler=scaler)
    if hook is not None:
        hook(model)
    backward(loss_fn(model, x, y, dtype), "second")
    opt.second_step(zero_grad=True, scaler=scaler)


def twins(base=torch.optim.SGD, **sam_kwargs):
    """One problem, two identical models, each with its own SAM (same arguments): one side runs with a scaler,
    the other without, and the test compares them."""
    model, x, y = make_problem()
    twin = copy.deepcopy(model)
    return model, twin, SAM(model.parameters(), base, **sam_kwargs), SAM(twin.parameters(), base, **sam_kwargs), x, y


def momentum_buffers(opt) -> list[torch.Tensor]:
    return [s["momentum_buffer"].clone() for s in opt.base_optimizer.state.values()]


SGD, ADAM = (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}), (torch.optim.Adam, {"lr": 1e-3})


@pytest.mark.parametrize("base, kwargs, adaptive, dtype", [(*SGD, False, torch.float16), (*SGD, False, torch.bfloat16),
                                                           (*ADAM, True, torch.bfloat16)],
                         ids=["SGD-float16", "SGD-bfloat16", "ASAM-Adam-bfloat16"])
def test_scaler_without_overflow_gives_the_weights_of_unscaled_sam(base, kwargs, adaptive, dtype):
    """Scaling by a power of two is exact unless something over- or underflows, so in bfloat16
    (float32's range) the weights agree bit for bit; in float16 unscaled gradients underflow a
    little (what the scaler is for), so there they agree to float tolerance."""
    model, twin, opt, twin_opt, x, y = twins(base, rho=0.1, adaptive=adaptive, **kwargs)
    start = weights(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)
    for _ in range(5):
        sam_step(model, opt, x, y, scaler, dtype=dtype)
        sam_step(twin, twin_opt, x, y, dtype=dtype)
        torch.testing.assert_close(opt.perturbation_norm, twin_opt.perturbation_norm, rtol=1e-5, atol=0)
    assert scaler.get_scale() == 2.0 ** 12  # grew twice: no step was skipped
    for p, q, w in zip(model.parameters(), twin.parameters(), start):
        assert not torch.equal(p, w)
        if dtype == torch.bfloat16:
            assert torch.equal(p, q)
        else:
            torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("inject", ["first", "second"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_overflow_in_either_pass_keeps_the_weights_and_lowers_the_scale(inject, adaptive):
    model, x, y = make_problem()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, adaptive=adaptive, lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    sam_step(model, opt, x, y, scaler)  # a momentum buffer: a wrongly taken step would move w
    w, buffers = weights(model), momentum_buffers(opt)
    at_second_pass = []

    sam_step(model, opt, x, y, scaler, inject=inject, hook=lambda m: at_second_pass.append(weights(m)))

    for p, w0 in zip(model.parameters(), w):
        assert torch.equal(p, w0)
    for b, b0 in zip(momentum_buffers(opt), buffers):
        assert torch.equal(b, b0)
    assert scaler.get_scale() == 2.0 ** 7
    if inject == "first":  # nothing perturbed
        assert all(torch.equal(a, b) for a, b in zip(at_second_pass[0], w))
        assert opt.perturbation_norm.item() == 0
    else:
        assert not torch.equal(at_second_pass[0][0], w[0])
    sam_step(model, opt, x, y, scaler)  # and training goes on
    assert not torch.equal(model.classifier[-1].weight, w[-2])
    assert scaler.get_scale() == 2.0 ** 7


def test_real_overflow_backs_off_until_steps_are_taken():
    """A scale so large that the float16 backward overflows: steps are skipped (weights exact, no
    NaN) while the scale halves, then training proceeds; no "unscale_() has already been called"."""
    model, x, y = make_problem()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40)
    w, skipped = weights(model), 0
    for _ in range(40):
        sam_step(model, opt, x, y, scaler)
        if all(torch.equal(p, w0) for p, w0 in zip(model.parameters(), w)):
            skipped += 1
        else:
            break
    assert 0 < skipped < 40
    assert scaler.get_scale() == 2.0 ** (40 - skipped)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_clipping_applies_to_the_unscaled_gradient():
    model, twin, opt, twin_opt, x, y = twins(rho=0.1, lr=0.1, max_grad_norm=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    w = weights(model)
    for _ in range(2):
        sam_step(model, opt, x, y, scaler)
        sam_step(twin, twin_opt, x, y)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)
    moved = torch.cat([(p.detach() - w0).flatten() for p, w0 in zip(model.parameters(), w)]).norm()
    assert moved.item() <= 2 * 0.1 * 0.05 * (1 + 1e-4)  # two steps of at most lr * max_grad_norm


def test_disabled_scaler_is_bitwise_no_scaler():
    model, twin, opt, twin_opt, x, y = twins(lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(2):
        sam_step(model, opt, x, y, scaler)
        sam_step(twin, twin_opt, x, y)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("first, second", [(True, False), (False, True)])
def test_second_step_needs_the_scaler_of_first_step(first, second):
    model, x, y = make_problem()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    (scaler.scale(loss_fn(model, x, y)) if first else loss_fn(model, x, y)).backward()
    opt.first_step(zero_grad=True, scaler=scaler if first else None)
    loss_fn(model, x, y).backward()
    with pytest.raises(ValueError, match="same scaler"):
        opt.second_step(scaler=scaler if second else None)


@pytest.mark.parametrize("scaler", ["cpu", 1.0, torch.optim.SGD])
def test_a_scaler_that_is_not_a_grad_scaler_is_refused(scaler):
    model, x, y = make_problem()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    loss_fn(model, x, y).backward()
    with pytest.raises(TypeError, match="torch.amp.GradScaler"):
        opt.first_step(scaler=scaler)
    opt.first_step()
    with pytest.raises(TypeError, match="torch.amp.GradScaler"):
        opt.second_step(scaler=scaler)


# ----------------------------------------------------------------------------- train()


class RecordingScaler(torch.amp.GradScaler):
    made: ClassVar[list] = []  # every instance, in order

    def __init__(self, device: str = "cuda", *args, **kwargs) -> None:
        super().__init__(device, *args, **kwargs)
        self.device, self.scaled, self.updates = device, 0, 0
        RecordingScaler.made.append(self)

    def scale(self, outputs):
        self.scaled += 1
        return super().scale(outputs)

    def update(self, new_scale=None) -> None:
        self.updates += 1
        super().update(new_scale)


@pytest.mark.parametrize("use_sam", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, None])
def test_train_scales_float16_losses_only(tiny_digits, monkeypatch, use_sam, dtype):
    monkeypatch.setattr(torch.amp, "GradScaler", RecordingScaler)
    monkeypatch.setattr(RecordingScaler, "made", [])
    images, labels = tiny_digits
    torch.manual_seed(0)
    model = LeNet5()
    opt = (SAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9) if use_sam
           else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    history = train(model, opt, images, labels, epochs=2, batch_size=16, autocast_dtype=dtype, progress=False)
    if dtype != torch.float16:
        assert RecordingScaler.made == []
        return
    [scaler] = RecordingScaler.made
    steps = 2 * len(images) // 16
    assert scaler.device == "cpu"
    assert (scaler.scaled, scaler.updates) == ((2 if use_sam else 1) * steps, steps)
    assert scaler.get_scale() == 2.0 ** 16  # no overflow on this problem: every step taken
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_readme_loop_with_scaler_clipping_and_scheduler_runs_clean():
    """The README's loop, on CPU: a scale large enough to overflow at first, OneCycleLR, clipping;
    no error ("unscale_() has already been called ...") and no warning."""
    model, x, y = make_problem()
    w = weights(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, max_grad_norm=1.0, lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=30)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(30):
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            opt.first_step(zero_grad=True, scaler=scaler)
            with torch.autocast("cpu", dtype=torch.float16):
                loss2 = F.cross_entropy(model(x), y)
            scaler.scale(loss2).backward()
            opt.second_step(zero_grad=True, scaler=scaler)
            sched.step()
    assert scaler.get_scale() < 2.0 ** 30  # it did overflow
    assert all(torch.isfinite(p).all() and not torch.equal(p, w0) for p, w0 in zip(model.parameters(), w))
    assert opt.base_optimizer.param_groups[0]["lr"] == sched.get_last_lr()[0]


def test_step_closure_with_scaler_equals_explicit_steps():
    """``step(closure, scaler=...)``: the closure scales its loss, SAM unscales both passes."""
    model, twin, opt, twin_opt, x, y = twins(rho=0.1, lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    twin_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)

    def closure():
        scaler.scale(loss_fn(model, x, y)).backward()

    for _ in range(3):
        opt.step(closure, scaler=scaler)
        sam_step(twin, twin_opt, x, y, twin_scaler)
    assert scaler.get_scale() == twin_scaler.get_scale()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
