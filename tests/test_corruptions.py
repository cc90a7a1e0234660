"""CORRUPTIONS, corrupt, evaluate_corruptions."""

import math

import pytest
import torch
from torch import nn

from analysis.corruptions import CORRUPTIONS, corrupt, evaluate_corruptions
from lenet_utils import accuracy

NAMES = list(CORRUPTIONS)
IDENTITY_AT_ZERO = [name for name, (_, _, unit) in CORRUPTIONS.items() if "identity at 0" in unit]
NOT_RANDOM = {"gaussian_blur", "brightness", "contrast", "edge_map"}  # no random parameters


@pytest.fixture(scope="module")
def digits():
    """8 digit-like images: dark background, a bright irregular stroke area, values in [0, 1]."""
    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(8, 1, 28, 28)
    images[:, :, 6:22, 10:18] = torch.rand(8, 1, 16, 8, generator=generator)
    images[:, :, 8:20, 12:16] = 1.0
    return images


def test_registry_entries():
    assert len(NAMES) == 15
    for name, (function, default, unit) in CORRUPTIONS.items():
        assert callable(function), name
        assert isinstance(default, float) and default > 0, name
        assert isinstance(unit, str) and unit, name
    assert set(NAMES) - set(IDENTITY_AT_ZERO) == {"shot_noise"}


@pytest.mark.parametrize("name", NAMES)
def test_corruption_contract(digits, name):
    original = digits.clone()
    rng_state = torch.get_rng_state()
    out = corrupt(digits, name)
    assert torch.equal(torch.get_rng_state(), rng_state)  # own generator only
    assert torch.equal(digits, original)  # input untouched
    assert out.shape == digits.shape and out.dtype == digits.dtype
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    assert (out - digits).abs().mean() > 1e-3  # it does something at the default severity
    assert torch.equal(out, corrupt(digits, name, seed=0))  # deterministic
    assert torch.equal(out, corrupt(digits, name, severity=CORRUPTIONS[name][1]))  # default severity
    other_seed = corrupt(digits, name, seed=1)
    if name in NOT_RANDOM:
        assert torch.equal(out, other_seed)
    else:
        assert not torch.equal(out, other_seed)


@pytest.mark.parametrize("name", NAMES)
def test_float64_images_keep_their_dtype(digits, name):
    out = corrupt(digits.double(), name)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), corrupt(digits, name), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", IDENTITY_AT_ZERO)
def test_severity_zero_is_identity(digits, name):
    torch.testing.assert_close(corrupt(digits, name, severity=0), digits, rtol=0, atol=1e-5)
    torch.testing.assert_close(corrupt(digits, name, severity=0.0, seed=5), digits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["impulse_noise", "gaussian_blur", "rotate", "contrast", "fog", "edge_map"])
def test_higher_severity_changes_more(digits, name):
    default = CORRUPTIONS[name][1]
    change = [(corrupt(digits, name, severity=s * default) - digits).abs().mean() for s in (0.5, 1.0)]
    assert change[0] < change[1]


def test_shot_noise_fewer_photons_is_noisier(digits):
    change = [(corrupt(digits, "shot_noise", severity=p) - digits).abs().mean() for p in (100.0, 10.0, 3.0)]
    assert change[0] < change[1] < change[2]


def test_brightness_and_contrast_formulas(digits):
    torch.testing.assert_close(corrupt(digits, "brightness", 0.25), (digits + 0.25).clamp(0, 1))
    mean = digits.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(corrupt(digits, "contrast", 0.7), (digits - mean) * 0.3 + mean)


def test_rotate_90_degrees_is_a_quarter_turn(digits):
    out = corrupt(digits, "rotate", severity=90)
    for image, rotated in zip(digits, out):
        options = [torch.rot90(image, k, dims=(1, 2)) for k in (1, -1)]
        assert any(torch.allclose(rotated, option, atol=1e-5) for option in options)


def test_translate_moves_by_the_given_pixels():
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    blob = torch.exp(-((yy - 13.5) ** 2 + (xx - 13.5) ** 2) / 8).expand(6, 1, 28, 28)

    def centre(images):
        mass = images.sum(dim=(1, 2, 3))
        return torch.stack([(images * yy).sum(dim=(1, 2, 3)) / mass, (images * xx).sum(dim=(1, 2, 3)) / mass], 1)

    shift = (centre(corrupt(blob, "translate", severity=3)) - centre(blob)).norm(dim=1)
    torch.testing.assert_close(shift, torch.full((6,), 3.0), rtol=0.02, atol=0)


def test_stripe_inverts_a_band_of_the_given_width(digits):
    out = corrupt(digits, "stripe", severity=4)
    for image, striped in zip(digits, out):
        changed = (striped - image).abs().sum(dim=(0, 1)) > 0  # per column
        columns = changed.nonzero().flatten().tolist()  # every column has black pixels, so all change
        assert columns == list(range(columns[0], columns[0] + 4))
        band = slice(columns[0], columns[0] + 4)
        torch.testing.assert_close(striped[..., band], 1 - image[..., band])


def test_impulse_noise_hits_the_given_fraction():
    grey = torch.full((16, 1, 28, 28), 0.5)
    out = corrupt(grey, "impulse_noise", severity=0.15)
    hit = out != 0.5
    assert hit.float().mean().item() == pytest.approx(0.15, abs=0.01)
    assert set(out[hit].unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("name", ["dotted_line", "zigzag"])
def test_lines_only_add_white_pixels(name):
    black = torch.zeros(4, 1, 28, 28)
    out = corrupt(black, name)
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert (out.flatten(1).sum(1) > 0).all()  # every image got a line


def test_unknown_name_lists_the_names(digits):
    with pytest.raises(ValueError) as info:
        corrupt(digits, "snow")
    assert "snow" in str(info.value)
    assert all(name in str(info.value) for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("severity", [-0.5, float("nan"), float("inf")])
def test_bad_severity_value(digits, name, severity):
    with pytest.raises(ValueError, match="severity"):
        corrupt(digits, name, severity=severity)


@pytest.mark.parametrize("severity", ["x", True, [1.0]])
def test_bad_severity_type(digits, severity):
    with pytest.raises(TypeError, match="severity"):
        corrupt(digits, "rotate", severity=severity)


def test_shot_noise_needs_photons(digits):
    with pytest.raises(ValueError, match="shot_noise"):
        corrupt(digits, "shot_noise", severity=0)


# ----------------------------------------------------------------------------- evaluate_corruptions


@pytest.fixture(scope="module")
def classifier_and_labels(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    with torch.no_grad():
        return model, model(digits).argmax(1)


def test_evaluate_corruptions_all_names(digits, classifier_and_labels):
    model, labels = classifier_and_labels
    results = evaluate_corruptions(model, digits, labels, seed=2)
    assert list(results) == NAMES + ["mean"]
    for name in NAMES:
        assert results[name] == accuracy(model, corrupt(digits, name, seed=2), labels)
    assert results["mean"] == pytest.approx(sum(results[n] for n in NAMES) / len(NAMES))
    assert not model.training


def test_evaluate_corruptions_subset(digits, classifier_and_labels):
    model, labels = classifier_and_labels
    results = evaluate_corruptions(model, digits, labels, names=["rotate", "fog"])
    assert list(results) == ["rotate", "fog", "mean"]
    assert results["mean"] == pytest.approx((results["rotate"] + results["fog"]) / 2)
    assert all(0 <= v <= 100 and not math.isnan(v) for v in results.values())
