"""analysis/offset.py: the first layer's DC gain and the response to a constant input offset (CPU, synthetic)."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

import lenet_utils as L
from analysis.offset import first_layer_dc_gain, offset_response
from conftest import MNIST_ROOT, ROOT, needs_mnist

STUDY = ROOT / "results" / "study" / "mnist"


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _lenet(seed=0):
    torch.manual_seed(seed)
    return L.LeNet5()


def _zero_sum_conv1(model):
    """Make every conv1 filter sum to zero (subtract its mean); returns the model."""
    with torch.no_grad():
        w = model.features[0].weight
        w -= w.mean(dim=(1, 2, 3), keepdim=True)
    return model


def test_zero_sum_filters_have_zero_dc_gain():
    gain = first_layer_dc_gain(_zero_sum_conv1(_lenet()))
    assert len(gain["relative_dc_gain"]) == 6
    assert max(abs(s) for s in gain["weight_sum"]) < 1e-6
    assert gain["mean_relative_dc_gain"] < 1e-6


def test_box_filter_has_relative_dc_gain_one_and_random_filters_less():
    model = _lenet()
    gain = first_layer_dc_gain(model)
    assert all(0 < r < 1 for r in gain["relative_dc_gain"])
    with torch.no_grad():
        model.features[0].weight.fill_(-0.3)
    assert first_layer_dc_gain(model)["relative_dc_gain"] == pytest.approx([1.0] * 6)


def test_scaling_conv1_leaves_relative_dc_gain_unchanged():
    model = _lenet(1)
    before = first_layer_dc_gain(model)
    with torch.no_grad():
        model.features[0].weight.mul_(3)
    after = first_layer_dc_gain(model)
    assert after["relative_dc_gain"] == pytest.approx(before["relative_dc_gain"], rel=1e-6)
    assert after["weight_sum"] == pytest.approx([3 * s for s in before["weight_sum"]], rel=1e-6)


def test_interior_response_to_an_offset_is_c_times_the_filter_sum():
    model, (images, _) = _lenet(2), _data(4)
    conv, c = model.features[0], 0.25
    with torch.no_grad():
        change = conv(images + c) - conv(images)
    sums = torch.tensor(first_layer_dc_gain(model)["weight_sum"], dtype=change.dtype)
    interior = change[:, :, 2:-2, 2:-2]  # kernel 5, padding 2: these outputs never touch the padding
    assert torch.allclose(interior, c * sums.view(1, -1, 1, 1).expand_as(interior), atol=1e-5)
    assert not torch.allclose(change[:, :, 0, 0], c * sums.view(1, -1).expand(4, -1), atol=1e-3)  # the border


def test_zero_sum_first_layer_without_padding_is_blind_to_offsets():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 5), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 24 * 24, 10))
    with torch.no_grad():
        model[0].weight -= model[0].weight.mean(dim=(1, 2, 3), keepdim=True)
    images, labels = _data()
    result = offset_response(model, images, labels, [-0.3, 0.3, 0.5])
    assert max(result["conv1_relative_change"]) < 1e-5
    assert max(result["logit_relative_change"]) < 1e-5
    assert result["accuracy"] == [result["clean_accuracy"]] * 3


def test_offset_zero_gives_no_change_and_the_clean_accuracy():
    model, (images, labels) = _lenet(4), _data()
    result = offset_response(model, images, labels, [0.0, 0.3], batch_size=16)
    assert result["conv1_relative_change"][0] == 0 and result["logit_relative_change"][0] == 0
    assert result["accuracy"][0] == result["clean_accuracy"] == pytest.approx(L.accuracy(model, images, labels))
    assert result["conv1_relative_change"][1] > 0 and result["logit_relative_change"][1] > 0
    assert result["n"] == 64 and result["offsets"] == [0.0, 0.3]


def test_conv1_change_is_linear_in_the_offset():
    model, (images, labels) = _lenet(5), _data()
    result = offset_response(model, images, labels, [0.1, -0.2, 0.4])
    a, b, c = result["conv1_relative_change"]
    assert b == pytest.approx(2 * a, rel=1e-4) and c == pytest.approx(4 * a, rel=1e-4)


def test_offset_response_restores_training_mode():
    model, (images, labels) = _lenet(), _data(8)
    model.train()
    offset_response(model, images, labels, [0.1])
    assert model.training


@pytest.mark.parametrize("offsets, error", [
    ([math.nan], ValueError), ([math.inf], ValueError), ([1.5], ValueError), ([-2], ValueError),
    ([], ValueError), (["0.1"], TypeError), ([True], TypeError), ([None], TypeError),
    (0.1, TypeError), ("0.1", TypeError), (None, TypeError),
])
def test_bad_offsets_raise(offsets, error):
    images, labels = _data(4)
    with pytest.raises(error, match="offset"):
        offset_response(_lenet(), images, labels, offsets)


def test_bad_images_labels_and_models_raise():
    images, labels = _data(4)
    with pytest.raises(TypeError, match="images"):
        offset_response(_lenet(), (images * 255).to(torch.uint8), labels, [0.1])
    with pytest.raises(ValueError, match="labels"):
        offset_response(_lenet(), images, labels[:3], [0.1])
    with pytest.raises(TypeError, match="labels"):
        offset_response(_lenet(), images, labels.float(), [0.1])
    with pytest.raises(ValueError, match="Conv2d"):
        first_layer_dc_gain(nn.Linear(3, 2))
    with pytest.raises(TypeError, match="model"):
        first_layer_dc_gain("not a model")


@needs_mnist
def test_the_script_runs_on_a_few_stored_models(tmp_path):
    """scripts/offset_response.py end to end on 3 seeds of asam and sgd and 200 test images (a quick mode)."""
    records = tmp_path / "records"
    (records / "weights").mkdir(parents=True)
    for config in ("asam", "sgd"):
        for seed in (3, 4, 5):
            name = f"{config}_seed{seed}"
            shutil.copy(STUDY / f"{name}.json", records)
            shutil.copy(STUDY / "weights" / f"{name}.pt", records / "weights")
    out = tmp_path / "offset.json"
    env = {**os.environ, "MNIST_ROOT": str(MNIST_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "scripts/offset_response.py", "--records", str(records), "--out", str(out),
                           "--figure", str(tmp_path / "offset.png"), "--n-images", "200"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert len(result["models"]) == 6 and result["n_images"] == 200
    assert (tmp_path / "offset.png").is_file() and "asam - sgd" in out.with_suffix(".txt").read_text()
