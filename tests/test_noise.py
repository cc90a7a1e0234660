"""add_gaussian_noise, seed_protocol_noise, evaluate_noise."""

import pytest
import torch
from torch import nn

from lenet_utils import MNIST_MEAN, MNIST_STD, accuracy, add_gaussian_noise, evaluate_noise, seed_protocol_noise


@pytest.fixture
def images():
    return torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- add_gaussian_noise


def test_add_gaussian_noise_deterministic_per_seed(images):
    a = add_gaussian_noise(images, 0.3, seed=1)
    b = add_gaussian_noise(images, 0.3, seed=1)
    c = add_gaussian_noise(images, 0.3, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == images.shape and a.dtype == images.dtype


def test_add_gaussian_noise_independent_per_image():
    same = torch.full((2, 1, 28, 28), 0.5)
    noisy = add_gaussian_noise(same, 0.2, seed=0)
    assert not torch.equal(noisy[0], noisy[1])
    correlation = torch.corrcoef(torch.stack([noisy[0].flatten(), noisy[1].flatten()]))[0, 1]
    assert abs(correlation.item()) < 0.15


def test_add_gaussian_noise_sigma_zero_is_identity(images):
    assert torch.equal(add_gaussian_noise(images, 0.0), images)
    assert torch.equal(add_gaussian_noise(images, 0), images)


def test_add_gaussian_noise_has_std_sigma():
    zeros = torch.zeros(32, 1, 28, 28)
    for sigma in (0.1, 0.5, 2.0):
        noise = add_gaussian_noise(zeros, sigma, seed=3)
        assert noise.std().item() == pytest.approx(sigma, rel=0.02)
        assert abs(noise.mean().item()) < 0.02 * sigma


def test_add_gaussian_noise_is_additive(images):
    """Same seed, other sigma: the same standard-normal draw, scaled."""
    n1 = add_gaussian_noise(images, 0.1, seed=4) - images
    n2 = add_gaussian_noise(images, 0.3, seed=4) - images
    torch.testing.assert_close(n2, 3 * n1, rtol=1e-4, atol=1e-5)


def test_add_gaussian_noise_clip(images):
    clipped = add_gaussian_noise(images, 0.8, seed=0, clip=True)
    raw = add_gaussian_noise(images, 0.8, seed=0)
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert raw.min() < 0 and raw.max() > 1
    assert torch.equal(clipped, raw.clamp(0, 1))


def test_add_gaussian_noise_does_not_modify_input_or_global_rng(images):
    original = images.clone()
    state = torch.get_rng_state()
    add_gaussian_noise(images, 0.5, seed=0, clip=True)
    assert torch.equal(images, original)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("sigma", [-0.1, float("nan"), float("inf"), -float("inf")])
def test_add_gaussian_noise_bad_sigma_value(images, sigma):
    with pytest.raises(ValueError, match="sigma"):
        add_gaussian_noise(images, sigma)
    with pytest.raises(ValueError, match="sigma"):
        seed_protocol_noise(images, sigma)


@pytest.mark.parametrize("sigma", ["a", None, True, [0.1]])
def test_add_gaussian_noise_bad_sigma_type(images, sigma):
    with pytest.raises(TypeError, match="sigma"):
        add_gaussian_noise(images, sigma)
    with pytest.raises(TypeError, match="sigma"):
        seed_protocol_noise(images, sigma)


# ----------------------------------------------------------------------------- seed protocol


def reference_pattern(seed: int = 0) -> torch.Tensor:
    """What the original study did before each image: torch.manual_seed(seed); torch.randn(1, 28, 28)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.randn(1, 28, 28)


@pytest.mark.parametrize("sigma, seed", [(0.5, 0), (1.0, 0), (0.3, 7)])
def test_seed_protocol_noise_matches_study(images, sigma, seed):
    out = seed_protocol_noise(images, sigma, seed=seed)
    expected = (images - 0.1307) / 0.3081 + sigma * reference_pattern(seed)
    assert torch.equal(out, expected)
    assert out.shape == images.shape and out.dtype == images.dtype


def test_seed_protocol_noise_same_pattern_for_every_image(images):
    noise = seed_protocol_noise(images, 0.7) - seed_protocol_noise(images, 0.0)
    for i in range(1, len(images)):
        torch.testing.assert_close(noise[i], noise[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(noise[0], 0.7 * reference_pattern(0), rtol=0, atol=1e-5)


def test_seed_protocol_noise_sigma_zero_is_normalization(images):
    assert torch.equal(seed_protocol_noise(images, 0.0), (images - MNIST_MEAN) / MNIST_STD)


def test_seed_protocol_noise_leaves_global_rng_alone(images):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    seed_protocol_noise(images, 1.0)
    assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------- evaluate_noise


@pytest.fixture
def classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


@pytest.fixture
def labelled(classifier):
    """40 images labelled with the classifier's own clean predictions (clean accuracy 100%)."""
    images = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return images, classifier(images).argmax(1)


def test_evaluate_noise_pixel_protocol(classifier, labelled):
    images, labels = labelled
    result = evaluate_noise(classifier, images, labels, [0, 0.5, 1], protocol="pixel", seed=3)
    assert list(result) == [0.0, 0.5, 1.0] and all(isinstance(k, float) for k in result)
    assert result[0.0] == accuracy(classifier, images, labels) == 100
    assert result[1.0] < 100
    for sigma in (0.5, 1.0):
        assert result[sigma] == accuracy(classifier, add_gaussian_noise(images, sigma, seed=3), labels)


def test_evaluate_noise_pixel_protocol_clip(classifier, labelled):
    images, labels = labelled
    result = evaluate_noise(classifier, images, labels, [2.0], seed=1, clip=True)
    assert result[2.0] == accuracy(classifier, add_gaussian_noise(images, 2.0, seed=1, clip=True), labels)


def test_evaluate_noise_seed_protocol(classifier, labelled):
    images, labels = labelled
    result = evaluate_noise(classifier, images, labels, [0.0, 1.0], protocol="seed")
    assert result[0.0] == accuracy(classifier, (images - MNIST_MEAN) / MNIST_STD, labels)
    assert result[1.0] == accuracy(classifier, seed_protocol_noise(images, 1.0), labels)


def test_evaluate_noise_unknown_protocol(classifier, labelled):
    with pytest.raises(ValueError, match="protocol"):
        evaluate_noise(classifier, *labelled, [0.1], protocol="gaussian")
