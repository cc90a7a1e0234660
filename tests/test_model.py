"""LeNet5, set_seed, default_device."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from lenet_utils import LeNet5, default_device, set_seed


@pytest.mark.parametrize("n", [1, 5])
def test_lenet5_output_shape(n):
    model = LeNet5()
    out = model(torch.rand(n, 1, 28, 28))
    assert out.shape == (n, 10)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_lenet5_num_classes():
    assert LeNet5(num_classes=3)(torch.rand(2, 1, 28, 28)).shape == (2, 3)


def test_lenet5_parameter_count():
    assert sum(p.numel() for p in LeNet5().parameters()) == 61_706


def test_lenet5_architecture_order():
    layers = [m for m in LeNet5().modules() if not list(m.children())]
    expected = [
        (nn.Conv2d, dict(in_channels=1, out_channels=6, kernel_size=(5, 5), padding=(2, 2))),
        (nn.Tanh, {}),
        (nn.AvgPool2d, dict(kernel_size=2)),
        (nn.Conv2d, dict(in_channels=6, out_channels=16, kernel_size=(5, 5), padding=(0, 0))),
        (nn.Tanh, {}),
        (nn.AvgPool2d, dict(kernel_size=2)),
        (nn.Conv2d, dict(in_channels=16, out_channels=120, kernel_size=(5, 5), padding=(0, 0))),
        (nn.Tanh, {}),
        (nn.Flatten, {}),
        (nn.Linear, dict(in_features=120, out_features=84)),
        (nn.Tanh, {}),
        (nn.Linear, dict(in_features=84, out_features=10)),
    ]
    assert [type(m) for m in layers] == [cls for cls, _ in expected]
    for layer, (_, attributes) in zip(layers, expected):
        for name, value in attributes.items():
            assert getattr(layer, name) == value, (layer, name)
    assert all(m.bias is not None for m in layers if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_lenet5_forward_matches_layer_by_layer():
    model = LeNet5()
    x = torch.rand(3, 1, 28, 28)
    h = x
    for layer in [m for m in model.modules() if not list(m.children())]:
        h = layer(h)
    torch.testing.assert_close(model(x), h)


def test_set_seed_makes_random_reproducible():
    set_seed(123)
    a = (torch.randn(5), np.random.rand(3), random.random())
    set_seed(123)
    b = (torch.randn(5), np.random.rand(3), random.random())
    set_seed(124)
    c = torch.randn(5)
    assert torch.equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert not torch.equal(a[0], c)


def test_set_seed_makes_lenet_init_reproducible():
    set_seed(7)
    first = LeNet5().state_dict()
    set_seed(7)
    second = LeNet5().state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_default_device_is_usable_and_prefers_cuda():
    device = default_device()
    assert isinstance(device, torch.device)
    assert torch.ones(2, device=device).sum().item() == 2  # a tensor can live there
    if torch.cuda.is_available():
        assert device.type == "cuda"
