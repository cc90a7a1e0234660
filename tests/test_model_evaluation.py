"""analysis.evaluation.evaluate_model in QUICK settings: the v3 measurements (Lanczos Hessian
extremes, adaptive sharpness, APGD) are recorded beside the unchanged PGD-20 endpoint."""

import pytest
import torch

from analysis import adversarial, sharpness
from lenet_utils import MNIST_MEAN, MNIST_STD, LeNet5
from study import evaluation


def test_quick_evaluation_records_the_v3_measurements():
    torch.manual_seed(0)
    model = LeNet5()
    generator = torch.Generator().manual_seed(0)
    test = torch.rand(40, 1, 28, 28, generator=generator), torch.randint(0, 10, (40,), generator=generator)
    probe = torch.rand(16, 1, 28, 28, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    settings = evaluation.EvalSettings(n_test=40, n_sweep=4, n_pgd=10, pgd_steps=2, epsilons=(0.1,), n_probe=16,
                                       lanczos_maxiter=20, adaptive_steps=2, strong_epsilons=(0.1,), apgd_steps=2,
                                       apgd_targets=1, n_trace=8, trace_samples=2, n_slice=8, direction_seeds=(0,))
    metrics = evaluation.evaluate_model(model, test, probe, settings, (MNIST_MEAN, MNIST_STD))
    hessian = metrics["hessian"]
    assert hessian["method"] == "lanczos" and hessian["matvecs"] > 0 and hessian["converged"]
    assert hessian["eigenvalue"] >= hessian["min_eigenvalue"] or hessian["min_eigenvalue"] is None
    assert hessian["eigenvalue"] == pytest.approx(sharpness.hessian_extremes(model, *probe, tol=1e-3,
                                                                               maxiter=20)["max"])
    adaptive = metrics["adaptive_sharpness"]
    assert adaptive["radii"] == [0.5, 2.0] and set(adaptive["increase"]) == {"0.5", "2.0"}
    assert adaptive["increase"]["2.0"] >= adaptive["increase"]["0.5"] > 0
    strong = metrics["strong_attack"]
    assert strong["n"] == 10 and set(strong["apgd_ce"]) == set(strong["worst_case"]) == {"0.1"}
    pgd = adversarial.evaluate_adversarial(model, *test, [0.1], n_pgd=10, pgd_steps=2)
    assert metrics["adversarial"] == pgd  # the endpoint as it was
    assert strong["worst_case"]["0.1"] <= min(strong["apgd_ce"]["0.1"], strong["apgd_t"]["0.1"], pgd["pgd"]["0.1"])
    assert {"strong_attack", "adaptive_sharpness", "hessian"} <= set(metrics["seconds"])


def test_quick_settings_are_tiny():
    quick = evaluation.QUICK
    assert quick.apgd_steps <= 3 and quick.adaptive_steps <= 2 and quick.lanczos_maxiter == 1
    # the plan named APGD at eps 0.1 and 0.05; 0.05 was dropped to fit ~3 min a model (a deviation, STUDY.md)
    assert evaluation.FULL.adaptive_radii == (0.5, 2.0) and evaluation.FULL.strong_epsilons == (0.1,)
