"""hessian_max_eigenvalue against quadratics with known spectra; filter-normalized directions."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis.sharpness import (
    ALPHAS,
    adaptive_sharpness,
    filter_normalized_direction,
    hessian_extremes,
    hessian_max_eigenvalue,
    hessian_trace,
    loss_along_direction,
    slice_rise,
)
from lenet_utils import LeNet5


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q


def least_squares(eigenvalues, n: int = 12):
    """(model, X, y, loss_fn) with loss 0.5 * mean((X w - y)^2), whose Hessian X^T X / n has the
    given (non-negative) eigenvalues."""
    d = len(eigenvalues)
    s = torch.tensor(eigenvalues, dtype=torch.float64).sqrt()
    x = n ** 0.5 * orthonormal(n, d, seed=1) @ torch.diag(s) @ orthonormal(d, d, seed=2).T
    torch.manual_seed(0)
    model = nn.Linear(d, 1, bias=False).double()
    y = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def loss_fn(out, target):
        return 0.5 * ((out.squeeze(1) - target) ** 2).mean()

    return model, x, y, loss_fn


def test_hessian_of_least_squares_has_the_built_spectrum():
    _, x, _, _ = least_squares([5.0, 2.0, 1.0, 0.5])
    torch.testing.assert_close(torch.linalg.eigvalsh(x.T @ x / len(x)),
                               torch.tensor([0.5, 1.0, 2.0, 5.0], dtype=torch.float64))


def test_power_iteration_finds_largest_eigenvalue():
    model, x, y, loss_fn = least_squares([5.0, 2.0, 1.0, 0.5])
    weight = model.weight.detach().clone()
    value, history = hessian_max_eigenvalue(model, x, y, loss_fn=loss_fn, iters=100, seed=0)
    assert value == pytest.approx(5.0, rel=1e-3)
    assert value == history[-1]
    assert 1 < len(history) < 100  # stopped on the tolerance
    assert abs(history[-1] - history[-2]) <= 1e-4 * abs(history[-1])
    assert abs(history[-1] - 5) < abs(history[0] - 5)
    assert all(h <= 5 + 1e-9 for h in history)  # Rayleigh quotients of a PSD matrix
    assert torch.equal(model.weight, weight)


def test_power_iteration_tight_tolerance():
    model, x, y, loss_fn = least_squares([5.0, 2.0, 1.0, 0.5])
    value, _ = hessian_max_eigenvalue(model, x, y, loss_fn=loss_fn, iters=200, tol=1e-12, seed=0)
    assert value == pytest.approx(5.0, rel=1e-9)


def test_power_iteration_deterministic_under_seed():
    model, x, y, loss_fn = least_squares([3.0, 2.5, 1.0])
    first = hessian_max_eigenvalue(model, x, y, loss_fn=loss_fn, seed=4)
    again = hessian_max_eigenvalue(model, x, y, loss_fn=loss_fn, seed=4)
    other = hessian_max_eigenvalue(model, x, y, loss_fn=loss_fn, seed=5)
    assert first == again
    assert first[1] != other[1]
    assert other[0] == pytest.approx(3.0, rel=1e-3) and first[0] == pytest.approx(3.0, rel=1e-3)


def test_power_iteration_stops_after_iters():
    model, x, y, loss_fn = least_squares([5.0, 4.9, 1.0])
    value, history = hessian_max_eigenvalue(model, x, y, loss_fn=loss_fn, iters=3, tol=0.0)
    assert len(history) == 3 and value == history[-1]


def curvature_model(c):
    """(model, X, c, loss_fn) with loss 0.5 * mean(c_i (x_i . w)^2) and orthogonal inputs: the
    Hessian is X^T diag(c) X / n, with eigenvalues c (of any sign)."""
    x = 2.0 * orthonormal(4, 4, seed=7)  # X^T X / n = I
    torch.manual_seed(0)
    model = nn.Linear(4, 1, bias=False).double()
    return model, x, torch.tensor(c, dtype=torch.float64), lambda out, cc: 0.5 * (cc * out.squeeze(1) ** 2).mean()


def test_power_iteration_largest_magnitude_negative_gives_largest_algebraic():
    model, x, c, loss_fn = curvature_model([-4.0, 2.0, 1.0, 0.5])
    value, history = hessian_max_eigenvalue(model, x, c, loss_fn=loss_fn, iters=300, tol=1e-10)
    assert value == pytest.approx(2.0, rel=1e-6)
    assert value == history[-1]
    first_run = next(i for i in range(1, len(history)) if abs(history[i] - history[i - 1]) <= 1e-10 * abs(history[i]))
    assert history[first_run] == pytest.approx(-4.0, rel=1e-6)  # the largest-magnitude eigenvalue, then the shift
    assert len(history) > first_run + 2


def test_power_iteration_all_negative_spectrum():
    model, x, c, loss_fn = curvature_model([-4.0, -3.0, -2.0, -0.5])
    value, _ = hessian_max_eigenvalue(model, x, c, loss_fn=loss_fn, iters=500, tol=1e-12)
    assert value == pytest.approx(-0.5, rel=1e-6)


def small_network():
    """(model, x, y, the exact Hessian of the mean cross-entropy) for a 3-4-3 tanh network."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 3, generator=generator, dtype=torch.float64), torch.randint(0, 3, (10,), generator=generator)
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss_of_flat(vector):
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = vector[start:start + shape.numel()].view(shape)
            start += shape.numel()
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    with warnings.catch_warnings():  # torch's jvp decompositions still use torch.jit.script
        warnings.filterwarnings("ignore", message=".*torch.jit.script", category=FutureWarning)
        return model, x, y, torch.func.hessian(loss_of_flat)(flat)


def test_power_iteration_matches_full_hessian_of_small_network():
    model, x, y, hessian = small_network()
    value, _ = hessian_max_eigenvalue(model, x, y, iters=1000, tol=1e-12)
    assert value == pytest.approx(torch.linalg.eigvalsh(hessian).max().item(), rel=1e-4)


# ----------------------------------------------------------------------------- trace


def test_trace_is_exact_for_a_diagonal_hessian():
    c = [-4.0, 2.0, 1.0, 0.5]
    x = 2.0 * torch.eye(4, dtype=torch.float64)  # Hessian diag(c): every Rademacher v^T H v = sum(c)
    model = nn.Linear(4, 1, bias=False).double()
    mean, se = hessian_trace(model, x, torch.tensor(c, dtype=torch.float64), samples=5,
                             loss_fn=lambda out, cc: 0.5 * (cc * out.squeeze(1) ** 2).mean())
    assert mean == pytest.approx(-0.5, abs=1e-12) and se == pytest.approx(0.0, abs=1e-12)


def test_trace_of_least_squares_within_standard_errors():
    model, x, y, loss_fn = least_squares([5.0, 2.0, 1.0, 0.5])  # non-diagonal Hessian, trace 8.5
    mean, se = hessian_trace(model, x, y, samples=200, seed=0, loss_fn=loss_fn)
    assert 0 < se < 1
    assert abs(mean - 8.5) < 4 * se
    assert (mean, se) == hessian_trace(model, x, y, samples=200, seed=0, loss_fn=loss_fn)
    assert mean != hessian_trace(model, x, y, samples=200, seed=1, loss_fn=loss_fn)[0]


def test_trace_standard_error_is_that_of_the_quadratic_forms():
    """With v ~ Rademacher, var(v^T H v) = 2 (||H||_F^2 - sum H_ii^2): the SE must match it."""
    model, x, y, hessian = small_network()
    mean, se = hessian_trace(model, x, y, samples=400, seed=3)
    off_diagonal = (hessian ** 2).sum() - (hessian.diagonal() ** 2).sum()
    assert se == pytest.approx((2 * off_diagonal / 400).sqrt().item(), rel=0.25)
    assert abs(mean - hessian.trace().item()) < 4 * se


def test_trace_leaves_the_model_alone(lenet, batch):
    lenet.train()
    before = {k: v.clone() for k, v in lenet.state_dict().items()}
    mean, se = hessian_trace(lenet, *batch, samples=3)
    assert not lenet.training and all(p.grad is None and p.requires_grad for p in lenet.parameters())
    assert all(torch.equal(v, before[k]) for k, v in lenet.state_dict().items())
    assert math.isfinite(mean) and se > 0  # a number, with sampling error for this non-diagonal Hessian


@pytest.mark.parametrize("batch_size", [1, 5, 12, None])
def test_chunked_hessian_is_exact(batch_size):
    """Chunks of 5, 5 and 2 of the 12 images, weighted by size, give the same Hessian."""
    model, x, y, loss_fn = least_squares([5.0, 2.0, 1.0, 0.5])
    value, _ = hessian_max_eigenvalue(model, x, y, loss_fn=loss_fn, iters=300, tol=1e-12, batch_size=batch_size)
    assert value == pytest.approx(5.0, rel=1e-9)
    whole = hessian_trace(model, x, y, samples=20, loss_fn=loss_fn, batch_size=None)
    assert hessian_trace(model, x, y, samples=20, loss_fn=loss_fn, batch_size=batch_size) == pytest.approx(whole)


def test_chunked_trace_of_a_network(lenet, batch):
    whole = hessian_trace(lenet, *batch, samples=4, batch_size=None)
    assert hessian_trace(lenet, *batch, samples=4, batch_size=3) == pytest.approx(whole, rel=1e-4)


@pytest.mark.parametrize("batch_size, error", [(0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)])
def test_bad_batch_size(batch_size, error):
    model, x, y, loss_fn = least_squares([1.0, 2.0])
    for measure in (hessian_trace, hessian_max_eigenvalue):
        with pytest.raises(error, match="batch_size"):
            measure(model, x, y, loss_fn=loss_fn, batch_size=batch_size)


@pytest.mark.parametrize("samples, error", [(1, ValueError), (0, ValueError), (2.5, TypeError), (True, TypeError)])
def test_trace_rejects_too_few_samples(samples, error):
    model, x, y, loss_fn = least_squares([1.0, 2.0])
    with pytest.raises(error, match="samples"):
        hessian_trace(model, x, y, samples=samples, loss_fn=loss_fn)


# ----------------------------------------------------------------------------- directions


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    return LeNet5()


def test_filter_normalized_direction_norms(lenet):
    direction = filter_normalized_direction(lenet, seed=0)
    params = dict(lenet.named_parameters())
    assert list(direction) == list(params)
    for name, d in direction.items():
        p = params[name]
        assert d.shape == p.shape and d.dtype == p.dtype and not d.requires_grad
        if p.dim() <= 1:
            assert torch.equal(d, torch.zeros_like(p)), name
        else:
            dims = tuple(range(1, p.dim()))
            torch.testing.assert_close(torch.linalg.vector_norm(d, dim=dims),
                                       torch.linalg.vector_norm(p.detach(), dim=dims), rtol=1e-5, atol=1e-7)
            assert not torch.allclose(d, p.detach())  # a random direction, not the weights


def test_filter_normalized_direction_deterministic(lenet):
    a, b, c = (filter_normalized_direction(lenet, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])


def test_filter_normalized_direction_leaves_global_rng(lenet):
    state = torch.get_rng_state()
    filter_normalized_direction(lenet)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(8, 1, 28, 28, generator=generator), torch.randint(0, 10, (8,), generator=generator)


def test_loss_along_direction(lenet, batch):
    images, labels = batch
    direction = filter_normalized_direction(lenet, seed=0)
    before = {k: v.clone() for k, v in lenet.state_dict().items()}
    losses = loss_along_direction(lenet, images, labels, [0.0, 0.5, -0.25], direction)
    assert all(torch.equal(v, before[k]) for k, v in lenet.state_dict().items())
    assert losses == loss_along_direction(lenet, images, labels, [0.0, 0.5, -0.25], direction)
    with torch.no_grad():
        assert losses[0] == pytest.approx(F.cross_entropy(lenet(images), labels).item(), rel=1e-6)
        moved = copy.deepcopy(lenet)
        for name, p in moved.named_parameters():
            p.add_(0.5 * direction[name])
        assert losses[1] == pytest.approx(F.cross_entropy(moved(images), labels).item(), rel=1e-5)
    assert losses[1] != losses[0]


def test_loss_along_direction_custom_loss(lenet, batch):
    images, labels = batch
    zero = {k: torch.zeros_like(p) for k, p in lenet.named_parameters()}

    def mse(out, y):
        return F.mse_loss(out, F.one_hot(y, 10).float())

    losses = loss_along_direction(lenet, images, labels, [0.0, 1.0, 3.0], zero, loss_fn=mse)
    with torch.no_grad():
        expected = mse(lenet(images), labels).item()
    assert losses == pytest.approx([expected] * 3, rel=1e-6)


# ----------------------------------------------------------------------------- slice rise


def test_slice_rise_by_hand():
    alphas = [1.0, -1.0, 0.5, 0.0]  # any order
    losses = [[3.0, 1.0, 9.0, 0.5],  # (3 + 1) / 2 - 0.5 = 1.5
              [2.0, 2.0, 9.0, 2.5]]  # 2 - 2.5 = -0.5
    assert slice_rise(losses, alphas) == pytest.approx(0.5)


def test_slice_rise_of_a_parabola_on_the_default_alphas():
    losses = [[0.3 + 2.0 * a * a + 0.1 * a for a in ALPHAS], [0.3 + 4.0 * a * a for a in ALPHAS]]
    assert slice_rise(losses, ALPHAS) == pytest.approx(3.0)


@pytest.mark.parametrize("alphas", [[-1.0, 0.0, 0.5], [-0.5, 0.0, 1.0], [-1.0, 0.1, 1.0]])
def test_slice_rise_needs_minus_one_zero_and_one(alphas):
    with pytest.raises(ValueError, match="alphas must contain -1, 0 and 1"):
        slice_rise([[1.0, 2.0, 3.0]], alphas)


@pytest.mark.parametrize("losses", [[], [[1.0, 2.0]], [[1.0, 2.0, 3.0], [1.0]]])
def test_slice_rise_needs_one_loss_per_alpha(losses):
    with pytest.raises(ValueError, match="one per alpha"):
        slice_rise(losses, [-1, 0, 1])


# ----------------------------------------------------------------------------- Lanczos


def test_lanczos_extremes_match_the_dense_hessian_of_a_small_network():
    model, x, y, hessian = small_network()
    eigenvalues = torch.linalg.eigvalsh(hessian)
    result = hessian_extremes(model, x, y, tol=1e-10, maxiter=1000, batch_size=None)
    assert result["max_converged"] and result["min_converged"] and result["matvecs"] > 0
    assert result["max"] == pytest.approx(eigenvalues.max().item(), rel=1e-6)
    assert result["min"] == pytest.approx(eigenvalues.min().item(), rel=1e-6)


def test_lanczos_where_power_iteration_needs_a_shift():
    model, x, c, loss_fn = curvature_model([-4.0, 2.0, 1.0, 0.5])  # |lambda_min| > lambda_max
    result = hessian_extremes(model, x, c, loss_fn=loss_fn, tol=1e-10, maxiter=1000)
    assert result["max"] == pytest.approx(2.0, rel=1e-8) and result["min"] == pytest.approx(-4.0, rel=1e-8)


def test_lanczos_non_convergence_is_recorded(monkeypatch):
    """ARPACK's failure is a result: not converged, with whatever ARPACK had converged."""
    from scipy.sparse.linalg import ArpackNoConvergence

    import analysis.sharpness as S

    def failing(*args, **kwargs):
        raise ArpackNoConvergence("no convergence", eigenvalues=[], eigenvectors=[])

    monkeypatch.setattr(S, "eigsh", failing)
    model, x, y, loss_fn = least_squares([5.0, 2.0, 1.0])
    result = hessian_extremes(model, x, y, loss_fn=loss_fn)
    assert result["max"] is None and not result["max_converged"] and not result["min_converged"]


def test_lanczos_on_lenet_float32_leaves_the_model_alone(lenet, batch):
    before = {k: v.clone() for k, v in lenet.state_dict().items()}
    result = hessian_extremes(lenet, *batch, tol=1e-3, maxiter=50)
    power, _ = hessian_max_eigenvalue(lenet, *batch, iters=500, tol=1e-7)
    assert result["max_converged"] and result["max"] >= result["min"]
    assert result["max"] == pytest.approx(power, rel=1e-2) or result["max"] > power  # power iteration stops low
    assert all(torch.equal(v, before[k]) for k, v in lenet.state_dict().items())
    assert all(p.grad is None for p in lenet.parameters())


@pytest.mark.parametrize("kwargs, error", [({"tol": -1.0}, ValueError), ({"tol": "1e-3"}, TypeError),
                                           ({"maxiter": 0}, ValueError), ({"maxiter": 2.0}, TypeError)])
def test_lanczos_bad_arguments(kwargs, error):
    model, x, y, loss_fn = least_squares([1.0, 2.0])
    with pytest.raises(error, match=next(iter(kwargs))):
        hessian_extremes(model, x, y, loss_fn=loss_fn, **kwargs)


# ----------------------------------------------------------------------------- adaptive sharpness


def relu_net(c: float = 1.0):
    """A 2-4-3 ReLU net whose first layer is scaled by c and second layer's weight by 1 / c: the
    same function for every c > 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        model[0].weight.mul_(c)
        model[0].bias.mul_(c)
        model[2].weight.div_(c)
    generator = torch.Generator().manual_seed(1)
    return model, torch.randn(16, 2, generator=generator, dtype=torch.float64), torch.randint(0, 3, (16,),
                                                                                              generator=generator)


def test_adaptive_sharpness_is_invariant_to_rescaling_unlike_lambda_max():
    model, x, y = relu_net(1.0)
    scaled, _, _ = relu_net(5.0)
    with torch.no_grad():
        torch.testing.assert_close(scaled(x), model(x))  # the same function
    a = adaptive_sharpness(model, x, y, [0.1, 0.5], steps=10)
    b = adaptive_sharpness(scaled, x, y, [0.1, 0.5], steps=10)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-10)
    assert a["increase"] == pytest.approx(b["increase"], rel=1e-8)
    assert a["increase"]["0.5"] > a["increase"]["0.1"] > 0
    lam = [hessian_extremes(m, x, y, tol=1e-8, maxiter=500)["max"] for m in (model, scaled)]
    assert abs(lam[0] - lam[1]) > 0.1 * abs(lam[0])  # the scale-dependent measure moves


def test_adaptive_sharpness_matches_brute_force_on_two_weights():
    """Loss of a 2-weight linear model: a dense search of the scaled disc bounds the ascent's value
    from above (it is a maximum over the ball) and nearly equals it."""
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.7, -1.3]], dtype=torch.float64))
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(20, 2, generator=generator, dtype=torch.float64), torch.randn(20, generator=generator,
                                                                                       dtype=torch.float64)

    def loss_fn(out, target):
        return ((out.squeeze(1) - target) ** 2).mean()

    radius = 0.8
    value = adaptive_sharpness(model, x, y, [radius], steps=20, loss_fn=loss_fn)["increase"][str(radius)]
    w = model.weight.detach()[0]
    angles = torch.linspace(0, 2 * math.pi, 4001, dtype=torch.float64)
    best = -float("inf")
    for r in torch.linspace(0, radius, 81, dtype=torch.float64):
        u = torch.stack([r * angles.cos(), r * angles.sin()], 1)
        losses = (((x @ (w * (1 + u)).T) - y[:, None]) ** 2).mean(0)
        best = max(best, losses.max().item())
    base = loss_fn(model(x), y).item()
    assert value <= best - base + 1e-9
    assert value == pytest.approx(best - base, rel=1e-3)


def test_adaptive_sharpness_beats_random_points_in_the_ball(lenet, batch):
    before = {k: v.clone() for k, v in lenet.state_dict().items()}
    result = adaptive_sharpness(lenet, *batch, [0.5], steps=5)
    assert all(torch.equal(v, before[k]) for k, v in lenet.state_dict().items())
    assert all(p.grad is None for p in lenet.parameters()) and not lenet.training
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(5):
            moved = copy.deepcopy(lenet)
            u = [torch.randn(p.shape, generator=generator) for p in moved.parameters()]
            norm = torch.sqrt(sum((t ** 2).sum() for t in u))
            for p, t in zip(moved.parameters(), u):
                p.add_(p.abs() * t * 0.5 / norm)  # on the sphere of radius 0.5
            random_increase = F.cross_entropy(moved(batch[0]), batch[1]).item() - result["loss"]
            assert result["increase"]["0.5"] > random_increase


@pytest.mark.parametrize("radii, steps, error", [([], 5, TypeError), ("0.5", 5, TypeError), ([0.0], 5, ValueError),
                                                 ([float("inf")], 5, ValueError), ([0.5], 0, ValueError)])
def test_adaptive_sharpness_bad_arguments(radii, steps, error):
    model, x, y = relu_net()
    with pytest.raises(error, match="radii|steps"):
        adaptive_sharpness(model, x, y, radii, steps=steps)
