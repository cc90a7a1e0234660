"""hessian_max_eigenvalue against quadratics with known spectra; filter-normalized directions."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis.sharpness import filter_normalized_direction, hessian_max_eigenvalue, loss_along_direction
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
    model, x, _, _ = least_squares([5.0, 2.0, 1.0, 0.5])
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


def test_power_iteration_largest_magnitude_may_be_negative():
    """Per-sample curvature c_i and orthogonal inputs: the Hessian has eigenvalues c."""
    c = torch.tensor([-4.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    x = 2.0 * orthonormal(4, 4, seed=7)  # X^T X / n = I
    torch.manual_seed(0)
    model = nn.Linear(4, 1, bias=False).double()
    value, _ = hessian_max_eigenvalue(model, x, c, loss_fn=lambda out, cc: 0.5 * (cc * out.squeeze(1) ** 2).mean(),
                                      iters=300, tol=1e-10)
    assert value == pytest.approx(-4.0, rel=1e-6)


def test_power_iteration_matches_full_hessian_of_small_network():
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

    eigenvalues = torch.linalg.eigvalsh(torch.func.hessian(loss_of_flat)(flat))
    expected = eigenvalues[eigenvalues.abs().argmax()].item()
    value, _ = hessian_max_eigenvalue(model, x, y, iters=1000, tol=1e-12)
    assert value == pytest.approx(expected, rel=1e-4)


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
    mse = lambda out, y: F.mse_loss(out, F.one_hot(y, 10).float())  # noqa: E731
    losses = loss_along_direction(lenet, images, labels, [0.0, 1.0, 3.0], zero, loss_fn=mse)
    with torch.no_grad():
        expected = mse(lenet(images), labels).item()
    assert losses == pytest.approx([expected] * 3, rel=1e-6)
