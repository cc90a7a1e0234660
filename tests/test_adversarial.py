"""FGSM and PGD: identity at eps 0, the eps-ball and [0, 1], the gradient's sign, PGD at least as
strong as FGSM; evaluate_adversarial's record; the model and the global RNG left alone."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis.adversarial import EPSILONS, apgd_correct, evaluate_adversarial, evaluate_strong, fgsm, pgd, pgd_correct


def mlp() -> nn.Module:
    """A small classifier with dropout, so train and eval mode give different outputs."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.Tanh(), nn.Dropout(0.5), nn.Linear(32, 10))


@pytest.fixture
def model():
    return mlp()


@pytest.fixture
def data():
    """Random images with some pixels exactly 0 and 1, so the [0, 1] clipping is exercised."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(40, 1, 28, 28, generator=generator)
    images[:, :, :4] = 0.0
    images[:, :, -4:] = 1.0
    return images, torch.randint(0, 10, (40,), generator=generator)


@pytest.fixture
def trained(tiny_digits):
    """An MLP fitted to the tiny digits (all correct when clean), for attacks that can succeed."""
    images, labels = tiny_digits
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model, images, labels


def input_gradient(model, images, labels):
    model.eval()
    x = images.clone().requires_grad_(True)
    F.cross_entropy(model(x), labels).backward()
    return x.grad


def test_eps_zero_is_the_identity(model, data):
    images, labels = data
    assert torch.equal(fgsm(model, images, labels, 0.0), images)
    assert torch.equal(pgd(model, images, labels, 0.0), images)


@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("attack", [fgsm, pgd])
def test_stays_in_the_eps_ball_and_in_unit_range(model, data, attack, eps):
    images, labels = data
    adversarial = attack(model, images, labels, eps)
    assert adversarial.shape == images.shape and adversarial.dtype == images.dtype
    assert (adversarial - images).abs().max() <= eps + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial - images).abs().max() >= eps - 1e-6  # it moved, all the way for some pixel


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_fgsm_moves_along_the_sign_of_the_input_gradient(model, data, eps):
    images, labels = data
    sign = input_gradient(model, images, labels).sign()
    adversarial = fgsm(model, images, labels, eps)
    torch.testing.assert_close(adversarial, (images + eps * sign).clamp(0, 1), rtol=0, atol=1e-7)
    inside = (images > eps) & (images < 1 - eps)  # where clipping cannot bite
    torch.testing.assert_close((adversarial - images)[inside], eps * sign[inside], rtol=0, atol=1e-6)
    with torch.no_grad():
        assert F.cross_entropy(model(adversarial), labels) > F.cross_entropy(model(images), labels)


def test_pgd_is_at_least_as_strong_as_fgsm(trained):
    model, images, labels = trained
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).all()
        for eps in EPSILONS:
            losses = {attack.__name__: F.cross_entropy(model(attack(model, images, labels, eps)), labels).item()
                      for attack in (fgsm, pgd)}
            assert losses["pgd"] >= losses["fgsm"] * 0.99, eps
    result = evaluate_adversarial(model, images, labels, n_pgd=len(images))
    for key in result["fgsm"]:
        assert result["pgd"][key] <= result["fgsm"][key] + 100 * 2 / len(images), key  # noise: 2 images
    assert result["pgd"]["0.3"] < 100  # the attacks do succeed on this model
    assert result["fgsm"]["0.05"] >= result["fgsm"]["0.3"]


def test_pgd_random_start_is_seeded_and_spares_the_global_rng(model, data):
    images, labels = data
    state = torch.get_rng_state()
    first = pgd(model, images, labels, 0.1, steps=1, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, pgd(model, images, labels, 0.1, steps=1, seed=3))
    assert not torch.equal(first, pgd(model, images, labels, 0.1, steps=1, seed=4))


def test_pgd_step_by_hand(model, data):
    """One step from the seeded start: start + step * sign(gradient at the start), projected."""
    images, labels = data
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(0))
    start = (images + 0.2 * (2 * noise - 1)).clamp(0, 1)
    expected = (start + 0.5 * 0.2 * input_gradient(model, start, labels).sign())
    expected = torch.min(torch.max(expected, images - 0.2), images + 0.2).clamp(0, 1)
    torch.testing.assert_close(pgd(model, images, labels, 0.2, steps=1, step_size=0.1, seed=0), expected,
                               rtol=0, atol=1e-7)


@pytest.mark.parametrize("attack", [fgsm, pgd])
def test_attacks_leave_the_model_alone(data, attack):
    images, labels = data
    model = mlp().train()
    model[1].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # works inside no_grad too
        attack(model, images, labels, 0.1)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_evaluate_adversarial_record(trained):
    model, images, labels = trained
    result = evaluate_adversarial(model, images, labels, epsilons=[0.1, 0.3], n_pgd=30, pgd_steps=3,
                                  seed=5, batch_size=7)
    assert result == evaluate_adversarial(model, images, labels, epsilons=[0.1, 0.3], n_pgd=30, pgd_steps=3,
                                          seed=5, batch_size=1000)  # batching does not matter
    assert set(result) == {"fgsm", "pgd", "n_fgsm", "n_pgd", "pgd_steps", "epsilons"}
    assert (result["n_fgsm"], result["n_pgd"], result["pgd_steps"], result["epsilons"]) == (80, 30, 3, [0.1, 0.3])
    with torch.no_grad():
        for eps in (0.1, 0.3):
            fgsm_correct = (model(fgsm(model, images, labels, eps)).argmax(1) == labels).sum().item()
            pgd_images = pgd(model, images[:30], labels[:30], eps, steps=3, seed=5)
            pgd_correct = (model(pgd_images).argmax(1) == labels[:30]).sum().item()
            assert result["fgsm"][str(eps)] == pytest.approx(100 * fgsm_correct / 80)
            assert result["pgd"][str(eps)] == pytest.approx(100 * pgd_correct / 30)
    assert evaluate_adversarial(model, images, labels, epsilons=[0.05], n_pgd=10_000)["n_pgd"] == 80


def test_evaluate_adversarial_default_keys(model, data):
    result = evaluate_adversarial(model, *data, pgd_steps=1)
    assert list(result["fgsm"]) == list(result["pgd"]) == ["0.05", "0.1", "0.2", "0.3"]
    assert result["epsilons"] == list(EPSILONS)


@pytest.mark.parametrize("eps, error", [(-0.1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                                        (True, TypeError), ("0.1", TypeError)])
@pytest.mark.parametrize("attack", [fgsm, pgd])
def test_bad_eps(model, data, attack, eps, error):
    with pytest.raises(error, match="eps"):
        attack(model, *data, eps)


def test_bad_inputs(model, data):
    images, labels = data
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fgsm(model, images * 2, labels, 0.1)
    with pytest.raises(ValueError, match="one label per image"):
        fgsm(model, images, labels[:-1], 0.1)
    with pytest.raises(TypeError, match="floating-point"):
        fgsm(model, (images * 255).to(torch.uint8), labels, 0.1)
    with pytest.raises(ValueError, match="steps"):
        pgd(model, images, labels, 0.1, steps=0)
    with pytest.raises(ValueError, match="step_size"):
        pgd(model, images, labels, 0.1, step_size=-0.01)
    for kwargs, match in (({"n_pgd": 0}, "n_pgd"), ({"batch_size": 0}, "batch_size"),
                          ({"epsilons": [0.1, 0.1]}, "distinct"), ({"epsilons": []}, "non-empty"),
                          ({"epsilons": [0.1, -1]}, "eps")):
        with pytest.raises(ValueError, match=match):
            evaluate_adversarial(model, images, labels, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu(trained):
    model, images, labels = trained
    cpu = evaluate_adversarial(model, images, labels, epsilons=[0.1], pgd_steps=5)
    cuda = evaluate_adversarial(model.cuda(), images.cuda(), labels.cuda(), epsilons=[0.1], pgd_steps=5)
    model.cpu()
    assert cuda["fgsm"] == pytest.approx(cpu["fgsm"], abs=100 * 2 / len(images))
    assert cuda["n_pgd"] == cpu["n_pgd"] and 0 <= cuda["pgd"]["0.1"] <= 100


# ----------------------------------------------------------------------------- APGD (torchattacks)


@pytest.mark.parametrize("loss", ["ce", "dlr-targeted"])
def test_apgd_is_at_least_as_strong_as_pgd_and_leaves_things_alone(trained, loss):
    model, images, labels = trained
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    mask = apgd_correct(model, images, labels, 0.3, loss, steps=20, n_targets=3)
    assert torch.equal(torch.get_rng_state(), state)  # torchattacks reseeds the global RNG: restored
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert mask.dtype == torch.bool and mask.shape == labels.shape
    assert torch.equal(mask, apgd_correct(model, images, labels, 0.3, loss, steps=20, n_targets=3))  # seeded
    clean = pgd_correct(model, images, labels, 0.0, steps=1)
    assert clean.all() and mask.sum() < clean.sum()  # the attack succeeds somewhere
    assert mask.sum() <= pgd_correct(model, images, labels, 0.3, steps=20).sum() + 2


def test_apgd_at_eps_zero_is_clean_accuracy(trained):
    model, images, labels = trained
    assert apgd_correct(model, images, labels, 0.0, "ce").all()


def test_evaluate_strong_worst_case(trained):
    model, images, labels = trained
    result = evaluate_strong(model, images, labels, [0.2, 0.1], n=30, steps=10, n_targets=2, pgd_steps=5)
    assert (result["n"], result["steps"], result["n_targets"], result["epsilons"]) == (30, 10, 2, [0.2, 0.1])
    for eps in ("0.2", "0.1"):
        ce = apgd_correct(model, images[:30], labels[:30], float(eps), "ce", steps=10)
        t = apgd_correct(model, images[:30], labels[:30], float(eps), "dlr-targeted", steps=10, n_targets=2)
        p = pgd_correct(model, images[:30], labels[:30], float(eps), steps=5)
        assert result["apgd_ce"][eps] == pytest.approx(100 * ce.sum().item() / 30)
        assert result["apgd_t"][eps] == pytest.approx(100 * t.sum().item() / 30)
        assert result["worst_case"][eps] == pytest.approx(100 * (ce & t & p).sum().item() / 30)
        assert result["worst_case"][eps] <= min(result["apgd_ce"][eps], result["apgd_t"][eps])
    assert result["worst_case"]["0.2"] <= result["worst_case"]["0.1"]


def test_pgd_correct_matches_evaluate_adversarial(trained):
    model, images, labels = trained
    record = evaluate_adversarial(model, images, labels, epsilons=[0.1], n_pgd=30, pgd_steps=3, seed=5)
    mask = pgd_correct(model, images[:30], labels[:30], 0.1, steps=3, seed=5, batch_size=7)
    assert record["pgd"]["0.1"] == pytest.approx(100 * mask.sum().item() / 30)


def test_apgd_bad_arguments(trained):
    model, images, labels = trained
    with pytest.raises(ValueError, match="loss"):
        apgd_correct(model, images, labels, 0.1, "dlr")
    with pytest.raises(ValueError, match="n_targets"):
        apgd_correct(model, images, labels, 0.1, "dlr-targeted", n_targets=10)
    with pytest.raises(ValueError, match="steps"):
        apgd_correct(model, images, labels, 0.1, "ce", steps=0)
    with pytest.raises(ValueError, match="distinct"):
        evaluate_strong(model, images, labels, [0.1, 0.1])
    with pytest.raises(ValueError, match="n must"):
        evaluate_strong(model, images, labels, [0.1], n=0)
