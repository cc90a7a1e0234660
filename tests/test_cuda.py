"""The CUDA path: data and metrics on the GPU, SAM under bfloat16 autocast. Skipped without a GPU."""

import pytest
import torch
import torch.nn.functional as F

import lenet_utils as L
from analysis.corruptions import CORRUPTIONS, EXTENDED_CORRUPTIONS, corrupt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def synthetic(device, n=512):
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (n,), generator=generator)
    images = torch.rand(n, 1, 28, 28, generator=generator) * 0.3
    images[torch.arange(n), 0, 2 * labels + 3, 4:24] = 1.0  # a class-specific bright row
    return images.to(device), labels.to(device)


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16])
def test_sam_trains_on_cuda(autocast_dtype):
    images, labels = synthetic("cuda")
    L.set_seed(0)
    model = L.LeNet5().cuda()
    optimizer = L.SAM(model.parameters(), torch.optim.SGD, rho=2.0, adaptive=True, lr=0.1, momentum=0.9)
    history = L.train(model, optimizer, images, labels, epochs=5, batch_size=64, label_smoothing=0.1,
                      val_data=(images[:128], labels[:128]), autocast_dtype=autocast_dtype, progress=False)
    assert all(p.dtype == torch.float32 and p.is_cuda for p in model.parameters())  # SAM perturbs float32 weights
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert L.accuracy(model, images, labels) > 90


def test_cuda_matches_cpu_in_float32():
    images, labels = synthetic("cpu", n=256)
    results = {}
    for device in ("cpu", "cuda"):
        L.set_seed(0)
        model = L.LeNet5().to(device)
        optimizer = L.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05)
        x, y = images.to(device), labels.to(device)
        for idx in torch.arange(256).split(64):
            F.cross_entropy(model(x[idx.to(device)]), y[idx.to(device)]).backward()
            optimizer.first_step(zero_grad=True)
            F.cross_entropy(model(x[idx.to(device)]), y[idx.to(device)]).backward()
            optimizer.second_step(zero_grad=True)
        results[device] = [p.detach().cpu() for p in model.parameters()]
    for a, b in zip(results["cpu"], results["cuda"]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_noise_and_corruptions_on_cuda_are_deterministic():
    images, _ = synthetic("cuda", n=64)
    assert torch.equal(L.add_gaussian_noise(images, 0.6, seed=3), L.add_gaussian_noise(images, 0.6, seed=3))
    for name in [*CORRUPTIONS, *EXTENDED_CORRUPTIONS]:
        for severity in (1, 5):
            out = corrupt(images, name, severity, seed=1)
            assert out.is_cuda and out.dtype == images.dtype and 0 <= out.min() and out.max() <= 1, name
            assert torch.equal(out, corrupt(images, name, severity, seed=1)), name
    for name in ("stripe", "scale", "canny_edges", "contrast"):  # no random draws: CPU and CUDA agree
        torch.testing.assert_close(corrupt(images, name).cpu(), corrupt(images.cpu(), name), rtol=0, atol=1e-5)
