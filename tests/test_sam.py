"""SAM optimizer and frozen_batchnorm_stats, checked against hand computations."""

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from lenet_utils import SAM, frozen_batchnorm_stats


def param(values) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values, dtype=torch.float64))


def weights(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def assert_bitwise_equal(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- first_step


@pytest.mark.parametrize("rho_a, adaptive_a, rho_b, adaptive_b",
                         [(0.1, False, 0.5, True), (0.3, True, 0.02, False), (0.2, True, 0.7, True)])
def test_first_step_matches_hand_computation_two_groups(rho_a, adaptive_a, rho_b, adaptive_b):
    a, frozen = param([[0.5, -1.0], [2.0, 0.3]]), param([1.0, 2.0])
    b, c = param([0.7, -0.2, 1.5]), param([-2.0, 0.4])
    grads = {a: param([[0.3, -0.1], [0.2, 0.4]]).detach(), b: param([-1.0, 0.5, 0.25]).detach(),
             c: param([0.8, -0.6]).detach()}
    for p, g in grads.items():
        p.grad = g.clone()
    opt = SAM([{"params": [a, frozen], "rho": rho_a, "adaptive": adaptive_a},
               {"params": [b, c], "rho": rho_b, "adaptive": adaptive_b}], torch.optim.SGD, lr=0.1)
    w = {p: p.detach().clone() for p in (a, b, c, frozen)}

    opt.first_step()

    def t(p, adaptive):  # T(w)
        return w[p].abs() if adaptive else torch.ones_like(w[p])

    setting = {a: (rho_a, adaptive_a), b: (rho_b, adaptive_b), c: (rho_b, adaptive_b)}
    norm = math.sqrt(sum(((t(p, ad) * grads[p]) ** 2).sum().item() for p, (_, ad) in setting.items()))
    for p, (rho, adaptive) in setting.items():
        e = rho * t(p, adaptive) ** 2 * grads[p] / norm
        torch.testing.assert_close(p.detach(), w[p] + e, rtol=1e-12, atol=1e-12)
    assert torch.equal(frozen.detach(), w[frozen])  # no grad: skipped
    assert frozen.grad is None


def test_first_step_perturbation_has_norm_rho():
    params = [param([3.0, -4.0]), param([[1.0, 2.0], [0.5, -0.5]])]
    for p in params:
        p.grad = torch.randn(p.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    w = weights(params)
    SAM(params, torch.optim.SGD, rho=0.05, lr=1.0).first_step()
    e = torch.cat([(p.detach() - w0).flatten() for p, w0 in zip(params, w)])
    assert e.norm().item() == pytest.approx(0.05, rel=1e-12)
    g = torch.cat([p.grad.flatten() for p in params])
    torch.testing.assert_close(e, 0.05 * g / g.norm(), rtol=1e-12, atol=0)  # along the gradient


def test_first_step_zero_grad_clears_gradients():
    p = param([1.0, 2.0])
    p.grad = torch.ones(2, dtype=torch.float64)
    opt = SAM([p], torch.optim.SGD, lr=0.1)
    opt.first_step(zero_grad=True)
    assert p.grad is None


@pytest.mark.parametrize("adaptive", [False, True])
def test_zero_gradients_give_zero_perturbation(adaptive):
    params = [param([1.0, -2.0]), param([0.0, 3.0])]
    for p in params:
        p.grad = torch.zeros_like(p)
    w = weights(params)
    opt = SAM(params, torch.optim.SGD, rho=0.05, adaptive=adaptive, lr=0.1)
    opt.first_step()
    assert_bitwise_equal(weights(params), w)
    opt.second_step()
    assert all(torch.isfinite(p).all() for p in params)
    assert_bitwise_equal(weights(params), w)  # zero gradient, plain SGD: no move


def test_group_without_any_gradient_is_skipped():
    """A whole param group without gradients (e.g. a frozen layer) must not break first_step."""
    frozen, live = param([1.0, -2.0]), param([0.5, 0.25])
    live.grad = torch.tensor([0.3, -0.4], dtype=torch.float64)
    opt = SAM([{"params": [frozen], "rho": 0.5}, {"params": [live], "rho": 0.1}], torch.optim.SGD, lr=0.1)
    opt.first_step()
    assert torch.equal(frozen.detach(), torch.tensor([1.0, -2.0], dtype=torch.float64))
    torch.testing.assert_close(live.detach(), torch.tensor([0.5 + 0.06, 0.25 - 0.08], dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)
    opt.second_step()
    torch.testing.assert_close(live.detach(), torch.tensor([0.47, 0.29], dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)


def test_all_grads_none_is_a_no_op():
    params = [param([1.0, -2.0])]
    w = weights(params)
    opt = SAM(params, torch.optim.SGD, lr=0.1)
    opt.first_step()
    opt.second_step()
    assert_bitwise_equal(weights(params), w)


# ----------------------------------------------------------------------------- second_step

QUAD_A = {"a": torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64),
          "b": torch.tensor([[2.0, 0.2], [1.5, 4.0]], dtype=torch.float64)}
QUAD_B = {"a": torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64),
          "b": torch.tensor([[-0.4, 0.9], [0.05, -1.2]], dtype=torch.float64)}


def quadratic_loss(params: dict) -> torch.Tensor:
    """0.5 * sum(A w^2) + sum(B w); gradient A w + B."""
    return sum(0.5 * (QUAD_A[k] * p ** 2).sum() + (QUAD_B[k] * p).sum() for k, p in params.items())


def quadratic_sam_step(opt: SAM, params: dict) -> None:
    """One explicit two-pass SAM step on :func:`quadratic_loss`."""
    quadratic_loss(params).backward()
    opt.first_step(zero_grad=True)
    quadratic_loss(params).backward()
    opt.second_step(zero_grad=True)


def test_second_step_equals_manual_sgd_at_perturbed_point():
    rho = {"a": 0.2, "b": 0.05}
    adaptive = {"a": False, "b": True}
    lr, momentum, weight_decay = 0.1, 0.9, 0.01
    params = {"a": param([0.5, -1.0, 2.0]), "b": param([[1.0, -0.5], [0.25, 2.0]])}
    opt = SAM([{"params": [params[k]], "rho": rho[k], "adaptive": adaptive[k]} for k in params],
              torch.optim.SGD, lr=lr, momentum=momentum, weight_decay=weight_decay)

    w = {k: p.detach().clone() for k, p in params.items()}
    buf = {}
    for _ in range(3):
        quadratic_sam_step(opt, params)

        g = {k: QUAD_A[k] * w[k] + QUAD_B[k] for k in w}
        t = {k: w[k].abs() if adaptive[k] else torch.ones_like(w[k]) for k in w}
        norm = torch.sqrt(sum(((t[k] * g[k]) ** 2).sum() for k in w))
        e = {k: rho[k] * t[k] ** 2 * g[k] / norm for k in w}
        for k in w:
            d = QUAD_A[k] * (w[k] + e[k]) + QUAD_B[k] + weight_decay * w[k]
            buf[k] = d if k not in buf else momentum * buf[k] + d
            w[k] = w[k] - lr * buf[k]
        for k, p in params.items():
            torch.testing.assert_close(p.detach(), w[k], rtol=1e-12, atol=1e-12)


def test_second_step_restores_weights_bitwise_before_base_step():
    model = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, adaptive=True, lr=0.1)
    w = weights(model.parameters())
    seen = []
    base_step = opt.base_optimizer.step
    opt.base_optimizer.step = lambda *args, **kwargs: (seen.append(weights(model.parameters())),
                                                       base_step(*args, **kwargs))[1]
    nn.functional.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    assert not torch.equal(model.weight, w[0])  # really perturbed
    nn.functional.cross_entropy(model(x), y).backward()
    opt.second_step()
    assert len(seen) == 1
    assert_bitwise_equal(seen[0], w)
    assert not torch.equal(model.weight, w[0])  # and the base step moved it


def test_second_step_without_first_step_raises():
    p = param([1.0])
    opt = SAM([p], torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="first_step"):
        opt.second_step()
    p.grad = torch.ones(1, dtype=torch.float64)
    opt.first_step()
    opt.second_step()
    with pytest.raises(RuntimeError, match="first_step"):
        opt.second_step()  # a first_step is used up by its second_step


# ----------------------------------------------------------------------------- step(closure)


def make_problem(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 5, generator=generator), torch.randint(0, 3, (16,), generator=generator)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    return model, x, y


def explicit_iteration(model, opt, x, y, grads_ready: bool = False) -> None:
    if not grads_ready:
        nn.functional.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)


def counting_closure(model, x, y, calls: list):
    def closure():
        calls.append(1)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return closure


@pytest.mark.parametrize("grads_ready", [True, False])
def test_step_closure_equals_explicit_steps(grads_ready):
    model, x, y = make_problem()
    twin = copy.deepcopy(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9)
    twin_opt = SAM(twin.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9)
    if grads_ready:
        nn.functional.cross_entropy(model(x), y).backward()
        nn.functional.cross_entropy(twin(x), y).backward()
    calls = []
    opt.step(counting_closure(model, x, y, calls))
    explicit_iteration(twin, twin_opt, x, y, grads_ready=grads_ready)
    assert len(calls) == (1 if grads_ready else 2)
    assert_bitwise_equal(weights(model.parameters()), weights(twin.parameters()))


def test_repeated_step_closure_equals_explicit_loop():
    """A loop of step(closure) alone must take a fresh gradient at each new w, not reuse the one
    left over from the previous perturbed pass."""
    model, x, y = make_problem()
    twin = copy.deepcopy(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9)
    twin_opt = SAM(twin.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9)
    calls = []
    for _ in range(3):
        opt.step(counting_closure(model, x, y, calls))
        explicit_iteration(twin, twin_opt, x, y)
    assert len(calls) == 6
    assert_bitwise_equal(weights(model.parameters()), weights(twin.parameters()))


def test_step_closure_runs_with_grad_enabled_under_no_grad():
    model, x, y = make_problem()
    twin = copy.deepcopy(model)
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.2)
    with torch.no_grad():
        opt.step(counting_closure(model, x, y, []))
    explicit_iteration(twin, SAM(twin.parameters(), torch.optim.SGD, lr=0.2), x, y)
    assert_bitwise_equal(weights(model.parameters()), weights(twin.parameters()))


def test_step_without_closure_raises():
    model, _, _ = make_problem()
    with pytest.raises(ValueError, match="closure"):
        SAM(model.parameters(), torch.optim.SGD, lr=0.1).step()


def test_step_without_closure_after_first_step_is_the_second_step():
    """``first_step(); backward; step()`` is ``first_step(); backward; second_step()``, bit for bit; the
    first_step is used up by it, so a further step() without a closure raises again."""
    model, x, y = make_problem()
    twin = copy.deepcopy(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9)
    twin_opt = SAM(twin.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9)
    for _ in range(2):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.first_step(zero_grad=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step(zero_grad=True)
        assert all(p.grad is None for p in model.parameters())
        explicit_iteration(twin, twin_opt, x, y)
    assert_bitwise_equal(weights(model.parameters()), weights(twin.parameters()))
    assert not torch.equal(model[0].weight, make_problem()[0][0].weight)  # it did train
    with pytest.raises(ValueError, match="closure"):
        opt.step()


# ----------------------------------------------------------------------------- state_dict

BASES = [(torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3), {"momentum_buffer"}),
         (torch.optim.Adam, dict(lr=1e-2), {"step", "exp_avg", "exp_avg_sq"})]


@pytest.mark.parametrize("base, kwargs, adaptive", [(*BASES[0][:2], False), (*BASES[1][:2], True)],
                         ids=["SGD", "Adam-adaptive"])
def test_state_dict_round_trip_resumes_bitwise(base, kwargs, adaptive):
    model, x, y = make_problem()
    batches = [(x[i::2], y[i::2]) for i in range(2)]
    opt = SAM(model.parameters(), base, rho=0.1, adaptive=adaptive, **kwargs)
    for xb, yb in batches:
        explicit_iteration(model, opt, xb, yb)
    saved_opt, saved_model = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
    for xb, yb in batches:
        explicit_iteration(model, opt, xb, yb)

    fresh, _, _ = make_problem(seed=99)
    fresh_opt = SAM(fresh.parameters(), base, rho=0.1, adaptive=adaptive, **kwargs)
    fresh.load_state_dict(saved_model)
    fresh_opt.load_state_dict(saved_opt)
    assert fresh_opt.param_groups is fresh_opt.base_optimizer.param_groups
    assert fresh_opt.param_groups[0]["rho"] == 0.1 and fresh_opt.param_groups[0]["adaptive"] == adaptive
    for xb, yb in batches:
        explicit_iteration(fresh, fresh_opt, xb, yb)
    assert_bitwise_equal(weights(fresh.parameters()), weights(model.parameters()))

    # the optimizer state matters: without it the continuation differs
    stateless, _, _ = make_problem(seed=99)
    stateless.load_state_dict(saved_model)
    stateless_opt = SAM(stateless.parameters(), base, rho=0.1, adaptive=adaptive, **kwargs)
    for xb, yb in batches:
        explicit_iteration(stateless, stateless_opt, xb, yb)
    assert not torch.equal(stateless[0].weight, model[0].weight)


@pytest.mark.parametrize("base, kwargs, state_keys", BASES, ids=["SGD", "Adam"])
def test_state_dict_holds_only_base_optimizer_state(base, kwargs, state_keys):
    model, x, y = make_problem()
    opt = SAM(model.parameters(), base, rho=0.1, **kwargs)
    explicit_iteration(model, opt, x, y)
    nn.functional.cross_entropy(model(x), y).backward()
    w = weights(model.parameters())
    opt.first_step()  # mid-step: the saved w must not leak into the state dict
    for state_dict in (opt.state_dict(), opt.base_optimizer.state_dict()):
        assert set(state_dict) == {"state", "param_groups"}
        assert len(state_dict["state"]) == len(w)
        for entry in state_dict["state"].values():
            assert set(entry) == state_keys
            for value in entry.values():
                assert not any(value.shape == w0.shape and torch.equal(value, w0) for w0 in w)
    opt.second_step()


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("rho", [-0.01, float("nan"), float("inf"), -float("inf")])
def test_bad_rho_raises_value_error(rho):
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="rho"):
        SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=0.1)
    with pytest.raises(ValueError, match="rho"):
        SAM([{"params": [model.weight], "rho": rho}, {"params": [model.bias]}], torch.optim.SGD, lr=0.1)


@pytest.mark.parametrize("rho", ["0.05", None, True])
def test_non_numeric_rho_raises_type_error(rho):
    with pytest.raises(TypeError, match="rho"):
        SAM(nn.Linear(2, 1).parameters(), torch.optim.SGD, rho=rho, lr=0.1)


def test_rho_zero_is_allowed_and_does_not_perturb():
    p = param([1.0, 2.0])
    p.grad = torch.ones(2, dtype=torch.float64)
    opt = SAM([p], torch.optim.SGD, rho=0.0, lr=0.1)
    opt.first_step()
    assert torch.equal(p.detach(), torch.tensor([1.0, 2.0], dtype=torch.float64))


@pytest.mark.parametrize("base", [lambda params, **kw: torch.optim.SGD(params, **kw), int, "SGD"])
def test_base_optimizer_must_be_an_optimizer_class(base):
    with pytest.raises(TypeError, match="base_optimizer"):
        SAM(nn.Linear(2, 1).parameters(), base, lr=0.1)


def test_base_optimizer_instance_is_rejected():
    model = nn.Linear(2, 1)
    with pytest.raises(TypeError, match="base_optimizer"):
        SAM(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1), lr=0.1)


# ----------------------------------------------------------------------------- frozen_batchnorm_stats


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Tanh(),
                         nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2, momentum=0.3))


def bn_buffers(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_frozen_batchnorm_stats_keeps_running_stats():
    model = bn_model().train()
    x = torch.randn(4, 1, 8, 8) * 3 + 1
    before = bn_buffers(model)
    with frozen_batchnorm_stats(model):
        model(x).sum().backward()
    after = bn_buffers(model)
    assert before.keys() == after.keys() and len(before) == 6
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert [m.momentum for m in model if isinstance(m, nn.BatchNorm2d)] == [0.1, 0.3]
    model(x)  # outside the block the statistics move again
    assert not torch.equal(model[1].running_mean, before["1.running_mean"])
    assert not torch.equal(model[4].running_var, before["4.running_var"])


def test_frozen_batchnorm_stats_restores_momentum_after_exception():
    model = bn_model().train()
    with pytest.raises(KeyError):
        with frozen_batchnorm_stats(model):
            model(torch.randn(2, 1, 8, 8))
            raise KeyError("boom")
    assert [m.momentum for m in model if isinstance(m, nn.BatchNorm2d)] == [0.1, 0.3]


def test_frozen_batchnorm_stats_is_invisible_to_cumulative_average():
    """With momentum=None BatchNorm averages all batches seen; a frozen pass must not count."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, momentum=None)).train()
    twin = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    b1, b2, b3 = (torch.randn(3, 1, 6, 6, generator=generator) * s for s in (1, 2, 5))
    model(b1), model(b2)
    twin(b1)
    with frozen_batchnorm_stats(twin):
        twin(b3)
    twin(b2)
    assert twin[1].momentum is None
    for k, v in bn_buffers(model).items():
        torch.testing.assert_close(bn_buffers(twin)[k], v, rtol=1e-6, atol=1e-7)


def test_load_state_dict_of_a_plain_optimizer_is_refused():
    model = nn.Linear(3, 2)
    plain = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sam = SAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="not a SAM state_dict"):
        sam.load_state_dict(plain.state_dict())


@pytest.mark.parametrize("adaptive", [False, True])
def test_perturbation_norm_is_the_norm_of_the_step_first_step_takes(adaptive):
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1, rho=0.3, adaptive=adaptive)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(4, 5)).pow(2).sum().backward()
    opt.first_step()
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert opt.perturbation_norm.item() == pytest.approx(moved.norm().item(), rel=1e-5)
    if not adaptive:
        assert opt.perturbation_norm.item() == pytest.approx(0.3, rel=1e-5)


def test_scheduler_attached_to_sam_steps_without_warning():
    model = nn.Linear(2, 1)
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, [1], 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.ones(1, 2)).sum().backward()
        opt.first_step(zero_grad=True)
        model(torch.ones(1, 2)).sum().backward()
        opt.second_step(zero_grad=True)
        scheduler.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.05


# ----------------------------------------------------------------------------- gradient clipping


@pytest.mark.parametrize("max_grad_norm", [0.05, 0.3])
def test_max_grad_norm_clips_the_gradient_taken_at_the_perturbed_point(max_grad_norm):
    rho, lr = 0.2, 0.1
    params = {"a": param([0.5, -1.0, 2.0]), "b": param([[1.0, -0.5], [0.25, 2.0]])}
    opt = SAM(list(params.values()), torch.optim.SGD, rho=rho, lr=lr, max_grad_norm=max_grad_norm)
    w = {k: p.detach().clone() for k, p in params.items()}
    for _ in range(3):
        quadratic_sam_step(opt, params)

        g = {k: QUAD_A[k] * w[k] + QUAD_B[k] for k in w}
        norm = torch.sqrt(sum((g[k] ** 2).sum() for k in w))
        g2 = {k: QUAD_A[k] * (w[k] + rho * g[k] / norm) + QUAD_B[k] for k in w}
        norm2 = torch.sqrt(sum((g2[k] ** 2).sum() for k in w))
        assert norm2 > max_grad_norm  # the clipping is active
        w = {k: w[k] - lr * g2[k] * (max_grad_norm / (norm2 + 1e-6)) for k in w}  # clip_grad_norm_'s formula
        for k, p in params.items():
            torch.testing.assert_close(p.detach(), w[k], rtol=1e-12, atol=1e-12)


def test_max_grad_norm_above_the_gradient_norm_changes_nothing():
    model, x, y = make_problem()
    twin = copy.deepcopy(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9, max_grad_norm=1e6)
    twin_opt = SAM(twin.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9)
    for _ in range(2):
        explicit_iteration(model, opt, x, y)
        explicit_iteration(twin, twin_opt, x, y)
    assert_bitwise_equal(weights(model.parameters()), weights(twin.parameters()))


@pytest.mark.parametrize("max_grad_norm", [-1.0, 0.0, float("nan"), -float("inf")])
def test_bad_max_grad_norm_raises_value_error(max_grad_norm):
    with pytest.raises(ValueError, match="max_grad_norm"):
        SAM(nn.Linear(2, 1).parameters(), torch.optim.SGD, lr=0.1, max_grad_norm=max_grad_norm)


@pytest.mark.parametrize("max_grad_norm", ["1.0", True, [1.0]])
def test_non_numeric_max_grad_norm_raises_type_error(max_grad_norm):
    with pytest.raises(TypeError, match="max_grad_norm"):
        SAM(nn.Linear(2, 1).parameters(), torch.optim.SGD, lr=0.1, max_grad_norm=max_grad_norm)


# ----------------------------------------------------------------------------- lr schedulers

SCHEDULERS = {
    "MultiStepLR": lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, [2, 4], 0.5),
    "OneCycleLR": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.4, 0.2], total_steps=8),
}


def scheduled_sam(seed: int = 0, schedule: str = "MultiStepLR"):
    model, _, _ = make_problem(seed)
    opt = SAM([{"params": model[0].parameters(), "lr": 0.1}, {"params": model[2].parameters(), "lr": 0.05}],
              torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    return model, opt, SCHEDULERS[schedule](opt)


def run_scheduled(model, opt, scheduler, x, y, steps: int) -> list:
    """``steps`` SAM steps, one scheduler step each; returns, per step, the scheduler's lrs and
    the (lr, momentum) of every group as the base optimizer's step saw them."""
    seen = []
    hook = opt.base_optimizer.register_step_pre_hook(
        lambda base, args, kwargs: seen.append([(g["lr"], g["momentum"]) for g in base.param_groups]))
    expected = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for _ in range(steps):
            expected.append(scheduler.get_last_lr())
            explicit_iteration(model, opt, x, y)
            scheduler.step()
    hook.remove()
    assert [[lr for lr, _ in groups] for groups in seen] == expected
    return seen


@pytest.mark.parametrize("schedule", SCHEDULERS)
def test_scheduler_attached_to_sam_drives_the_base_optimizer(schedule):
    model, opt, scheduler = scheduled_sam(schedule=schedule)
    _, x, y = make_problem()
    seen = run_scheduled(model, opt, scheduler, x, y, steps=6)
    assert len({groups[0][0] for groups in seen}) > 2  # the lr really changes
    if schedule == "OneCycleLR":  # it cycles momentum too, in the same shared param groups
        assert len({groups[0][1] for groups in seen}) > 2


@pytest.mark.parametrize("schedule", SCHEDULERS)
def test_scheduler_and_sam_state_dicts_resume_exactly(schedule):
    model, opt, scheduler = scheduled_sam(schedule=schedule)
    _, x, y = make_problem()
    run_scheduled(model, opt, scheduler, x, y, steps=3)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), scheduler.state_dict()))
    seen = run_scheduled(model, opt, scheduler, x, y, steps=4)

    fresh, fresh_opt, fresh_scheduler = scheduled_sam(seed=99, schedule=schedule)
    fresh.load_state_dict(saved[0])
    fresh_opt.load_state_dict(saved[1])
    fresh_scheduler.load_state_dict(saved[2])
    assert run_scheduled(fresh, fresh_opt, fresh_scheduler, x, y, steps=4) == seen
    assert_bitwise_equal(weights(fresh.parameters()), weights(model.parameters()))
