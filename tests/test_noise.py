"""add_gaussian_noise, fixed_pattern_noise, evaluate_noise; lenet_notebook's noise_report and the tables and
figures made from it."""

import pytest
import torch
from torch import nn

from lenet_notebook import (
    ORIGINAL_STUDY,
    NoiseReport,
    comparison_table,
    describe_noise,
    noise_report,
    noise_tables,
    pixel_units,
    plot_noise,
    show_noise_examples,
    study_comparison,
)
from lenet_utils import (
    FIXED_PATTERN_SIGMAS,
    MNIST_MEAN,
    MNIST_STD,
    PIXEL_SIGMAS,
    accuracy,
    add_gaussian_noise,
    evaluate_noise,
    fixed_pattern_noise,
)
from study.recipes import STUDY_RECIPES


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
        fixed_pattern_noise(images, sigma)


@pytest.mark.parametrize("sigma", ["a", None, True, [0.1]])
def test_add_gaussian_noise_bad_sigma_type(images, sigma):
    with pytest.raises(TypeError, match="sigma"):
        add_gaussian_noise(images, sigma)
    with pytest.raises(TypeError, match="sigma"):
        fixed_pattern_noise(images, sigma)


# ----------------------------------------------------------------------------- fixed-pattern protocol


def reference_pattern(seed: int = 0) -> torch.Tensor:
    """What the original study did before each image: torch.manual_seed(seed); torch.randn(1, 28, 28)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.randn(1, 28, 28)


@pytest.mark.parametrize("sigma, seed", [(0.5, 0), (1.0, 0), (0.3, 7)])
def test_fixed_pattern_noise_matches_study(images, sigma, seed):
    out = fixed_pattern_noise(images, sigma, seed=seed)
    expected = (images - 0.1307) / 0.3081 + sigma * reference_pattern(seed)
    assert torch.equal(out, expected)
    assert out.shape == images.shape and out.dtype == images.dtype


def test_fixed_pattern_noise_same_pattern_for_every_image(images):
    noise = fixed_pattern_noise(images, 0.7) - fixed_pattern_noise(images, 0.0)
    for i in range(1, len(images)):
        torch.testing.assert_close(noise[i], noise[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(noise[0], 0.7 * reference_pattern(0), rtol=0, atol=1e-5)


def test_fixed_pattern_noise_sigma_zero_is_normalization(images):
    assert torch.equal(fixed_pattern_noise(images, 0.0), (images - MNIST_MEAN) / MNIST_STD)


def test_fixed_pattern_noise_leaves_global_rng_alone(images):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    fixed_pattern_noise(images, 1.0)
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


def test_evaluate_noise_fixed_pattern_protocol(classifier, labelled):
    images, labels = labelled
    result = evaluate_noise(classifier, images, labels, [0.0, 1.0], protocol="fixed-pattern")
    assert result[0.0] == accuracy(classifier, (images - MNIST_MEAN) / MNIST_STD, labels)
    assert result[1.0] == accuracy(classifier, fixed_pattern_noise(images, 1.0), labels)


@pytest.mark.parametrize("protocol", ["gaussian", "seed"])  # "seed": the fixed-pattern protocol's old name
def test_evaluate_noise_unknown_protocol(classifier, labelled, protocol):
    with pytest.raises(ValueError, match="protocol must be 'pixel' or 'fixed-pattern'"):
        evaluate_noise(classifier, *labelled, [0.1], protocol=protocol)


# ----------------------------------------------------------------------------- noise_report and its tables


@pytest.fixture
def report(classifier, labelled):
    return noise_report(classifier, *labelled, fixed_pattern_sigmas=[0.6, 1.0], pixel_sigmas=[0.6, 1.0],
                        pattern_seeds=[0, 1, 2])


def test_noise_report_evaluates_both_protocols_once_each(classifier, labelled, report):
    images, labels = labelled
    assert report.fixed_pattern == evaluate_noise(classifier, images, labels, [0.0, 0.6, 1.0],
                                                  protocol="fixed-pattern")
    assert report.pixel == evaluate_noise(classifier, images, labels, [0.0, 0.6, 1.0], protocol="pixel")
    assert report.clean == accuracy(classifier, images, labels) == 100
    assert report.pattern_spread == {s: evaluate_noise(classifier, images, labels, [0.6], protocol="fixed-pattern",
                                                       seed=s)[0.6] for s in (0, 1, 2)}
    assert report.pattern_spread[0] == report.fixed_pattern[0.6]  # seed 0 is the protocol's own pattern
    assert report.std == MNIST_STD


def test_noise_report_defaults_are_the_shared_grids(classifier, labelled):
    result = noise_report(classifier, *labelled)
    assert list(result.fixed_pattern) == [0.0, *FIXED_PATTERN_SIGMAS]
    assert list(result.pixel) == list(PIXEL_SIGMAS)
    assert list(result.pattern_spread) == [0, 1, 2, 3, 4] and result.spread_sigma == 0.6


def test_noise_report_needs_a_pattern_seed(classifier, labelled):
    with pytest.raises(ValueError, match="pattern_seeds"):
        noise_report(classifier, *labelled, pattern_seeds=[])


def test_noise_tables_show_every_sigma(report):
    lines = noise_tables(report).splitlines()
    fixed = report.fixed_pattern
    start = lines.index("| σ (normalized units) | 0.0 | 0.6 | 1.0 |")  # the fixed-pattern table ...
    assert lines[start + 2:start + 4] == [  # ... its σ also in pixel units (0.6 * 0.3081 = 0.18486), then accuracy
        "| σ in pixel units (× 0.3081) | 0.000 | 0.185 | 0.308 |",
        f"| accuracy (%) | {fixed[0.0]:.2f} | {fixed[0.6]:.2f} | {fixed[1.0]:.2f} |"]
    start = lines.index("| σ (pixel units) | 0.0 | 0.6 | 1.0 |")  # the pixel table, after it
    assert start > lines.index("| σ (normalized units) | 0.0 | 0.6 | 1.0 |")
    assert lines[start + 2] == f"| accuracy (%) | 100.00 | {report.pixel[0.6]:.2f} | {report.pixel[1.0]:.2f} |"


def test_describe_noise_numbers(report):
    text = describe_noise(report)
    spread, fixed = report.pattern_spread, report.fixed_pattern
    assert f"{fixed[0.0]:.2f} % ({fixed[0.0] - report.clean:+.2f} points)" in text
    assert (f"At sigma 0.6 (normalized units, 0.18 in pixel units) the fixed-pattern protocol gives "
            f"{fixed[0.6]:.2f} %; the pixel protocol gives {report.pixel[0.6]:.2f} % at pixel sigma 0.6, a noise 3.2 "
            "times as large.") in text
    assert "with 3 single noise patterns" in text and "other" not in text
    assert ", ".join(f"{s}: {spread[s]:.2f} %" for s in (0, 1, 2)) in text
    assert f"a spread of {max(spread.values()) - min(spread.values()):.2f} points" in text


def fake_report(shift: float, std: float = MNIST_STD) -> NoiseReport:
    return NoiseReport(fixed_pattern={0.0: 90 + shift, 0.4: 80 + shift, 0.6: 70 + shift, 0.8: 60 + shift},
                       pixel={s: 99 - 40 * s + shift for s in PIXEL_SIGMAS}, pattern_spread={0: 70 + shift},
                       spread_sigma=0.6, std=std)


def test_pixel_units_scales_the_fixed_pattern_sigmas_by_the_std():
    assert pixel_units(fake_report(0.0)) == {0.0: 90, 0.123: 80, 0.185: 70, 0.246: 60}  # 0.4 * 0.3081 = 0.12324 ...
    assert pixel_units(fake_report(0.0, std=0.5)) == {0.0: 90, 0.2: 80, 0.3: 70, 0.4: 60}


def test_comparison_table_lines_up_sigma_and_adds_the_difference():
    lines = comparison_table({"a": fake_report(0.0), "b": fake_report(2.5)}).splitlines()
    header = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert header == ["model", "clean", "fixed-pattern σ=0.0 (0.00 px)", "fixed-pattern σ=0.4 (0.12 px)",
                      "fixed-pattern σ=0.6 (0.18 px)", "fixed-pattern σ=0.8 (0.25 px)", "pixel σ=0.2", "pixel σ=0.4",
                      "pixel σ=0.6", "pixel σ=0.8", "pixel σ=1.0"]
    assert lines[3:5] == ["|" + " --- |" * 11, "| a | 99.00 | 90.00 | 80.00 | 70.00 | 60.00 | "
                          + " | ".join(f"{99 - 40 * s:.2f}" for s in (0.2, 0.4, 0.6, 0.8, 1.0)) + " |"]
    assert lines[-1] == "| b − a |" + " 2.50 |" * 10 and "the last row is the difference in points" in lines[0]
    assert len(comparison_table({"a": fake_report(0.0)}).splitlines()) == 5  # title, blank, header, rule, row
    with pytest.raises(ValueError, match="at least one"):
        comparison_table({})


def test_study_comparison():
    lines = study_comparison("baseline", fake_report(0.0)).splitlines()
    assert lines[2] == "| clean | 98.75 | 99.00 | 0.25 |"
    assert lines[3] == "| fixed-pattern σ=0.6 | 92.31 | 70.00 | -22.31 |"
    assert study_comparison("asam", fake_report(0.0)).splitlines()[2:] == [
        "| clean | 99.00 | 99.00 | 0.00 |", "| fixed-pattern σ=0.6 | 97.86 | 70.00 | -27.86 |"]
    assert set(ORIGINAL_STUDY) == {"baseline", "asam"} <= set(STUDY_RECIPES)
    with pytest.raises(ValueError, match="baseline, asam"):
        study_comparison("sam", fake_report(0.0))


def test_plot_noise_draws_both_protocols_per_model():
    import matplotlib.pyplot as plt

    fig = plot_noise({"a": fake_report(0.0), "b": fake_report(1.0)}, "title")
    lines = fig.axes[0].get_lines()
    fixed = "fixed-pattern protocol (the original study's)"
    assert [line.get_label() for line in lines] == ["a, pixel protocol", f"a, {fixed}", "b, pixel protocol",
                                                    f"b, {fixed}"]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    assert list(lines[2].get_xdata()) == list(PIXEL_SIGMAS)  # the pixel protocol's σ as it is
    assert list(lines[3].get_xdata()) == pytest.approx([0.0, 0.4 * MNIST_STD, 0.6 * MNIST_STD, 0.8 * MNIST_STD],
                                                       abs=5e-4)  # the fixed-pattern σ in pixel units
    assert list(lines[3].get_ydata()) == [91.0, 81.0, 71.0, 61.0]
    assert fig.axes[0].get_xlabel() == "noise σ in pixel units (fixed-pattern σ × 0.3081)"
    plt.close(fig)


def test_show_noise_examples_pixel_row_then_fixed_pattern_row(images):
    import matplotlib.pyplot as plt

    fig = show_noise_examples(images[0])
    shown = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in shown] == [f"pixel σ={s}" for s in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)] + [
        f"fixed σ={s}" for s in (0.0, *FIXED_PATTERN_SIGMAS)]
    assert fig._suptitle.get_text() == ("What the model sees (grey scale -1 to 3; fixed-pattern σ in normalized "
                                        "units)")
    normalized = torch.from_numpy(shown[6].images[0].get_array().data)
    assert torch.equal(normalized, fixed_pattern_noise(images[:1], 0.0)[0, 0])
    plt.close(fig)
