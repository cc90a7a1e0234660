"""CORRUPTIONS (MNIST-C), EXTENDED_CORRUPTIONS, corrupt, evaluate_corruptions, evaluate_corruption_sweep."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from analysis.corruptions import (
    CORRUPTIONS,
    EXTENDED_CORRUPTIONS,
    Corruption,
    corrupt,
    evaluate_corruption_sweep,
    evaluate_corruptions,
)
from lenet_utils import accuracy

MNIST_C = ["shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate", "brightness",
           "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag", "canny_edges"]
ALL = {**CORRUPTIONS, **EXTENDED_CORRUPTIONS}
NOT_RANDOM = {"scale", "brightness", "stripe", "canny_edges", "contrast", "gaussian_blur", "edge_map"}
# MNIST-C's published parameter per corruption (google-research/mnist-c, corruptions.py: the default severity
# of each function; levels given as the table index where the parameter is a tuple).
BENCHMARK = {"shot_noise": 3.0, "impulse_noise": 0.17, "glass_blur": 1.0, "motion_blur": 1.0, "shear": 0.4,
             "scale": 1 / 0.7, "rotate": 0.4, "brightness": 0.5, "translate": 3.0, "stripe": 7.0, "fog": 5.0,
             "spatter": 4.0, "dotted_line": 1.0, "zigzag": 1.0, "canny_edges": 1.0}


@pytest.fixture(scope="module")
def digits():
    """8 digit-like images: dark background, a bright irregular stroke area in the centre, values in [0, 1]."""
    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(8, 1, 28, 28)
    images[:, :, 6:22, 10:18] = torch.rand(8, 1, 16, 8, generator=generator)
    images[:, :, 8:20, 12:16] = 1.0
    return images


def blob(n=6):
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    return torch.exp(-((yy - 13.5) ** 2 + (xx - 13.5) ** 2) / 8).expand(n, 1, 28, 28).clone()


def centre(images):
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = images.sum(dim=(1, 2, 3))
    return torch.stack([(images * xx).sum(dim=(1, 2, 3)) / mass, (images * yy).sum(dim=(1, 2, 3)) / mass], 1)


def at(images, name, parameter, seed=0):
    """The corruption function at an arbitrary parameter (outside the five levels), clipped like corrupt()."""
    return ALL[name].function(images, parameter, torch.Generator().manual_seed(seed)).clamp(0, 1)


def test_registries():
    assert list(CORRUPTIONS) == MNIST_C
    assert {"contrast", "gaussian_blur", "edge_map"} <= set(EXTENDED_CORRUPTIONS)
    assert not set(CORRUPTIONS) & set(EXTENDED_CORRUPTIONS)
    for name, c in ALL.items():
        assert isinstance(c, Corruption) and callable(c.function), name
        assert len(c.levels) == 5 and all(isinstance(v, float) for v in c.levels), name
        assert 1 <= c.benchmark_level <= 5 and c.description, name
    for name, value in BENCHMARK.items():
        assert CORRUPTIONS[name].levels[CORRUPTIONS[name].benchmark_level - 1] == pytest.approx(value), name


@pytest.mark.parametrize("name", list(ALL))
def test_contract(digits, name):
    original, rng_state = digits.clone(), torch.get_rng_state()
    out = corrupt(digits, name)
    assert torch.equal(torch.get_rng_state(), rng_state)  # own generator only
    assert torch.equal(digits, original)  # input untouched
    assert out.shape == digits.shape and out.dtype == digits.dtype
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    assert (out - digits).abs().mean() > 1e-3  # it does something at the benchmark's level
    assert torch.equal(out, corrupt(digits, name, seed=0))  # deterministic
    assert torch.equal(out, corrupt(digits, name, severity=ALL[name].benchmark_level))
    assert torch.equal(out, corrupt(digits, name, seed=1)) == (name in NOT_RANDOM)


@pytest.mark.parametrize("name", list(ALL))
def test_every_level_in_range_and_float64(digits, name):
    for severity in range(1, 6):
        out = corrupt(digits, name, severity)
        assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    out = corrupt(digits.double(), name)
    assert out.dtype == torch.float64 and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", [n for n in ALL if n != "canny_edges"])
def test_severity_5_changes_more_than_1(digits, name):
    change = [(corrupt(digits, name, s) - digits).abs().mean() for s in (1, 5)]
    assert change[0] < change[1]


@pytest.mark.parametrize("name, identity", [("impulse_noise", 0.0), ("shear", 0.0), ("scale", 1.0), ("rotate", 0.0),
                                            ("brightness", 0.0), ("translate", 0.0), ("stripe", 0.0),
                                            ("dotted_line", 0.0), ("zigzag", 0.0), ("contrast", 0.0),
                                            ("gaussian_blur", 0.0), ("edge_map", 0.0)])
def test_identity_parameter(digits, name, identity):
    torch.testing.assert_close(at(digits, name, identity), digits, rtol=0, atol=1e-5)


def test_shot_noise_many_photons_is_near_identity_and_variance_grows_with_intensity():
    torch.testing.assert_close(at(blob(), "shot_noise", 1e6), blob(), rtol=0, atol=0.01)
    grey = torch.cat([torch.full((64, 1, 28, 28), v) for v in (0.2, 0.8)])
    noise = corrupt(grey, "shot_noise", severity=1) - grey  # 60 photons: nothing clipped at 0.8
    dim, bright = noise[:64].var().item(), noise[64:].var().item()
    assert bright / dim == pytest.approx(4, rel=0.1)  # Poisson: variance x / c
    assert dim == pytest.approx(0.2 / 60, rel=0.1)


def test_impulse_noise_hits_the_given_fraction():
    grey = torch.full((16, 1, 28, 28), 0.5)
    out = corrupt(grey, "impulse_noise")  # 0.17
    hit = out != 0.5
    assert hit.float().mean().item() == pytest.approx(0.17, abs=0.01)
    assert set(out[hit].unique().tolist()) == {0.0, 1.0}
    assert (out[hit] == 1).float().mean().item() == pytest.approx(0.5, abs=0.03)


def test_glass_blur_keeps_mass_and_blurs_only_vertically():
    line = torch.zeros(4, 1, 28, 28)
    line[:, :, 13, 4:24] = 1.0  # a horizontal line
    out = corrupt(line, "glass_blur")
    assert out.sum().item() == pytest.approx(line.sum().item(), rel=0.05)
    column = torch.zeros(4, 1, 28, 28)
    column[:, :, 4:24, 13] = 1.0  # a vertical line: the blur leaves it sharp, only swaps move it
    unswapped = corrupt(column, "glass_blur")
    assert (unswapped[..., 6:22, 13] > 0.5).float().mean() > 0.5


def test_glass_blur_shuffle_is_a_permutation(monkeypatch):
    import analysis.corruptions as module

    monkeypatch.setattr(module, "_gaussian_1d", lambda images, sigma, dim: images)  # only the 8-bit cast and swaps
    noise = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    out = corrupt(noise, "glass_blur", severity=5)  # swaps within 4 pixels
    quantized = torch.floor(noise * 255) / 255
    assert (out != quantized).float().mean() > 0.5
    torch.testing.assert_close(out.flatten(1).sort(1).values, quantized.flatten(1).sort(1).values)
    assert torch.equal(out[..., 0, :], quantized[..., 0, :]) and torch.equal(out[..., 0], quantized[..., 0])


def test_motion_blur_is_one_sided_within_45_degrees():
    dot = torch.zeros(16, 1, 28, 28)
    dot[:, :, 13, 20] = 1.0
    out = corrupt(dot, "motion_blur")
    assert out.sum(dim=(1, 2, 3)).allclose(torch.ones(16), atol=1e-5)  # normalized kernel, nothing at the edge
    ys, xs = torch.meshgrid(torch.arange(28) - 13, torch.arange(28) - 20, indexing="ij")
    support = out[:, 0] > 1e-6
    assert (xs.expand_as(support)[support] <= 0).all()  # the dot smears to one side
    assert (ys.abs().expand_as(support)[support] <= xs.abs().expand_as(support)[support] + 1).all()
    assert (support.sum(dim=(1, 2)) > 3).all()


def test_shear_stretches_vertically_by_one_over_cos():
    out = corrupt(blob(), "shear")
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), blob().sum(dim=(1, 2, 3)) / math.cos(0.4), rtol=0.01, atol=0)
    torch.testing.assert_close(centre(out), centre(blob()), rtol=0, atol=0.05)


def test_scale_shrinks_the_digit_about_the_centre():
    out = corrupt(blob(), "scale")  # 1 / 0.7: mass times 0.49
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), blob().sum(dim=(1, 2, 3)) * 0.7**2, rtol=0.02, atol=0)
    torch.testing.assert_close(centre(out), centre(blob()), rtol=0, atol=0.05)


def test_rotate_preserves_the_mass_of_a_centred_digit(digits):
    out = corrupt(digits, "rotate", severity=5)  # 1 radian
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), digits.sum(dim=(1, 2, 3)), rtol=0.02, atol=0)
    quarter = at(digits, "rotate", math.pi / 2)
    for image, rotated in zip(digits, quarter):
        assert any(torch.allclose(rotated, torch.rot90(image, k, dims=(1, 2)), atol=1e-5) for k in (1, -1))


def test_brightness_formula(digits):
    torch.testing.assert_close(corrupt(digits, "brightness"), (digits + 0.5).clamp(0, 1))


def test_translate_moves_by_three_pixels_in_x_and_y():
    shift = centre(corrupt(blob(16), "translate")) - centre(blob(16))
    torch.testing.assert_close(shift.abs(), torch.full((16, 2), 3.0), rtol=0, atol=0.05)
    assert len({tuple(s.sign().tolist()) for s in shift}) > 1


def test_stripe_inverts_the_documented_columns(digits):
    out = corrupt(digits, "stripe")
    columns = torch.tensor([c < 7 or c >= 21 for c in range(28)])
    torch.testing.assert_close(out[..., columns], 1 - digits[..., columns])
    torch.testing.assert_close(out[..., ~columns], digits[..., ~columns])


def test_fog_adds_a_smooth_haze_in_the_documented_range(digits):
    out = corrupt(digits, "fog")  # strength 3: out = (x + 3 fog) / 4 for images with max 1
    fog = (out * 4 - digits) / 3
    assert fog.min() >= -1e-5 and fog.max() <= 1 + 1e-5 and fog.mean() > 0.1
    roughness = (fog[..., 1:] - fog[..., :-1]).abs().mean()
    assert roughness < 0.1 * (torch.rand_like(fog)[..., 1:] - torch.rand_like(fog)[..., :-1]).abs().mean()
    assert torch.equal(corrupt(torch.zeros(2, 1, 28, 28), "fog"), torch.zeros(2, 1, 28, 28))  # scaled by max(x)


def test_spatter_blends_pixels_towards_mud():
    grey = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    out = corrupt(grey, "spatter")
    changed = out != grey
    assert 0.01 < changed.float().mean() < 0.9
    mud = 63 / 255
    assert ((out - mud).abs() <= 0.2 * (grey - mud).abs() + 1e-6)[changed].all()  # mask >= 0.8 where it acts


@pytest.mark.parametrize("name", ["dotted_line", "zigzag"])
def test_lines_only_brighten(digits, name):
    out = corrupt(digits, name)
    assert (out >= digits).all()
    black = torch.zeros(8, 1, 28, 28)
    drawn = corrupt(black, name)
    assert (drawn.flatten(1).amax(1) > 0.9).all()  # every image got a line
    assert (corrupt(black, name, severity=3).sum() > drawn.sum())


def test_dotted_line_is_dashed_in_the_documented_columns():
    drawn = corrupt(torch.zeros(32, 1, 28, 28), "dotted_line").sum(dim=(0, 1, 2))
    blank = [c for c in range(28) if (c // 2) % 2 == 0 or c == 27]
    assert (drawn[blank] == 0).all() and (drawn[[2, 3, 6, 7, 26]] > 0).all()


def test_canny_edges_yield_a_binary_map(digits):
    out = corrupt(digits, "canny_edges")
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert (out[..., 0, :] == 0).all() and (out[..., :, 0] == 0).all()  # skimage drops the border
    assert corrupt(torch.zeros(2, 1, 28, 28), "canny_edges").sum() == 0
    edges = corrupt(blob(2), "canny_edges")
    assert edges[:, 0, 13, 13] .sum() == 0 and edges.sum() > 0  # a ring, not the centre


def test_canny_edges_equal_scikit_image(digits):
    feature = pytest.importorskip("skimage.feature")
    images = torch.cat([digits, blob(2), at(digits, "rotate", 0.3)])
    for severity, sigma in enumerate(CORRUPTIONS["canny_edges"].levels, start=1):
        expected = np.stack([feature.canny(image, sigma=sigma) for image in images[:, 0].double().numpy()])
        assert torch.equal(corrupt(images, "canny_edges", severity)[:, 0].bool(), torch.from_numpy(expected)), sigma


def test_contrast_formula(digits):
    mean = digits.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(corrupt(digits, "contrast"), (digits - mean) * 0.3 + mean)


def test_gaussian_blur_keeps_mass_of_a_centred_digit(digits):
    torch.testing.assert_close(corrupt(digits, "gaussian_blur").sum(dim=(1, 2, 3)), digits.sum(dim=(1, 2, 3)),
                               rtol=1e-3, atol=0)


def test_plot_corruption_examples(digits):
    import matplotlib

    matplotlib.use("Agg")
    from analysis.corruptions import plot_corruption_examples

    fig = plot_corruption_examples(digits[:2])
    titles = [ax.get_title() for ax in fig.axes[: 1 + len(ALL)]]
    assert len(fig.axes) == 2 * (1 + len(ALL)) and titles[0] == "clean" and titles[-1].startswith("+")
    assert len(plot_corruption_examples(digits[0], severity=5).axes) == 1 + len(ALL)


# ----------------------------------------------------------------------------- errors


def test_unknown_name_lists_the_names(digits):
    with pytest.raises(ValueError) as info:
        corrupt(digits, "snow")
    assert "snow" in str(info.value) and all(name in str(info.value) for name in ALL)


@pytest.mark.parametrize("severity", [0, 6, -1])
def test_severity_out_of_range(digits, severity):
    with pytest.raises(ValueError, match="severity"):
        corrupt(digits, "rotate", severity=severity)


@pytest.mark.parametrize("severity", ["x", True, 2.0, [1]])
def test_severity_not_an_int(digits, severity):
    with pytest.raises(TypeError, match="severity"):
        corrupt(digits, "rotate", severity=severity)


def test_bad_images(digits):
    with pytest.raises(TypeError, match="floating"):
        corrupt((digits * 255).to(torch.uint8), "rotate")
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        corrupt(digits[:, 0], "rotate")
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        corrupt(digits.expand(-1, 3, -1, -1), "rotate")


# ----------------------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def classifier_and_labels(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    with torch.no_grad():
        return model, model(digits).argmax(1)


def test_evaluate_corruptions_reports_both_means(digits, classifier_and_labels):
    model, labels = classifier_and_labels
    results = evaluate_corruptions(model, digits, labels, seed=2)
    assert list(results) == [*ALL, "mnist_c_mean", "extended_mean"]
    for name in ALL:
        assert results[name] == accuracy(model, corrupt(digits, name, seed=2), labels)
    assert results["mnist_c_mean"] == pytest.approx(sum(results[n] for n in CORRUPTIONS) / 15)
    extended = [results[n] for n in EXTENDED_CORRUPTIONS]
    assert results["extended_mean"] == pytest.approx(sum(extended) / len(extended))
    assert not model.training


def test_evaluate_corruptions_subset(digits, classifier_and_labels):
    model, labels = classifier_and_labels
    results = evaluate_corruptions(model, digits, labels, names=["rotate", "fog"])
    assert list(results) == ["rotate", "fog", "mnist_c_mean"]
    assert results["mnist_c_mean"] == pytest.approx((results["rotate"] + results["fog"]) / 2)
    assert all(0 <= v <= 100 and not math.isnan(v) for v in results.values())
    with pytest.raises(ValueError, match="snow"):
        evaluate_corruptions(model, digits, labels, names=["snow"])


def test_evaluate_corruption_sweep(digits, classifier_and_labels):
    model, labels = classifier_and_labels
    sweep = evaluate_corruption_sweep(model, digits, labels, names=["rotate", "contrast"], seed=1)
    assert list(sweep) == ["rotate", "contrast"]
    for name, levels in sweep.items():
        assert list(levels) == ["1", "2", "3", "4", "5", "mean"]
        assert levels["2"] == accuracy(model, corrupt(digits, name, 2, seed=1), labels)
        assert levels["mean"] == pytest.approx(sum(levels[str(s)] for s in range(1, 6)) / 5)
