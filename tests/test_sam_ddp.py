"""SAM under DistributedDataParallel: two CPU processes, gloo, loopback only.

The test runs this file as a script once per rank (``python test_sam_ddp.py RANK PORT OUT``);
each rank trains LeNet-5 with SAM in both DDP patterns and saves what it saw to OUT.
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from lenet_utils import SAM, LeNet5

ROOT = Path(__file__).resolve().parents[1]

WORLD, STEPS, BATCH = 2, 3, 16  # each rank gets BATCH // WORLD images of each step's batch
RHO, LR, MOMENTUM = 0.1, 0.05, 0.9
TIMEOUT_S = 60  # for both processes together, start-up included (about 15 s on 2 busy cores)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(STEPS, BATCH, 1, 28, 28, generator=generator),
            torch.randint(0, 10, (STEPS, BATCH), generator=generator))


def shard(rank: int) -> slice:
    return slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)


def make_model() -> LeNet5:
    torch.manual_seed(0)
    return LeNet5()


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def worker(rank: int, port: int, out: Path) -> None:
    """Both README patterns on this rank's shard; saves (weights at w + e(w), weights after the
    step) per step for each."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=30))
    try:
        x, y = data()
        result = {}
        for mode in ("synchronised", "m-sharpness"):
            model = torch.nn.parallel.DistributedDataParallel(make_model())
            opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM)
            perturbed, after = [], []
            for step in range(STEPS):
                xb, yb = x[step, shard(rank)], y[step, shard(rank)]
                with model.no_sync() if mode == "m-sharpness" else contextlib.nullcontext():
                    F.cross_entropy(model(xb), yb).backward()  # forward inside no_sync() too
                opt.first_step(zero_grad=True)
                perturbed.append(flat(model))
                F.cross_entropy(model(xb), yb).backward()
                opt.second_step(zero_grad=True)
                after.append(flat(model))
            result[mode] = torch.stack(perturbed), torch.stack(after)
        torch.save(result, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "GLOO_SOCKET_IFNAME": "lo0" if sys.platform == "darwin" else "lo"}  # loopback only
    port, procs = free_port(), []
    try:
        for rank in range(WORLD):
            with open(out / f"rank{rank}.log", "w") as log:
                procs.append(subprocess.Popen([sys.executable, __file__, str(rank), str(port), str(out)],
                                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + TIMEOUT_S
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        pytest.fail(f"DDP ranks did not finish within {TIMEOUT_S} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    logs = "\n".join((out / f"rank{rank}.log").read_text() for rank in range(WORLD))
    assert [proc.returncode for proc in procs] == [0] * WORLD, logs
    return [torch.load(out / f"rank{rank}.pt") for rank in range(WORLD)]


def test_synchronised_sam_equals_one_process_on_the_concatenated_batch(ranks):
    x, y = data()
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM)
    for step in range(STEPS):
        F.cross_entropy(model(x[step]), y[step]).backward()
        opt.first_step(zero_grad=True)
        perturbed = flat(model)
        F.cross_entropy(model(x[step]), y[step]).backward()
        opt.second_step(zero_grad=True)
        for i in (0, 1):
            assert torch.equal(ranks[0]["synchronised"][i][step], ranks[1]["synchronised"][i][step])
        for result in ranks:
            torch.testing.assert_close(result["synchronised"][0][step], perturbed, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(result["synchronised"][1][step], flat(model), rtol=1e-5, atol=1e-6)
    assert not torch.equal(flat(model), flat(make_model()))


def test_m_sharpness_keeps_ranks_identical_while_each_perturbs_with_its_own_gradient(ranks):
    """Reference written out by hand: each shard's SAM gradient at its own w + e_k(w), averaged."""
    x, y = data()
    model = make_model()
    params = list(model.parameters())
    base = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
    for step in range(STEPS):
        w = [p.detach().clone() for p in params]
        mean_grad = [torch.zeros_like(p) for p in params]
        for rank, result in enumerate(ranks):
            xb, yb = x[step, shard(rank)], y[step, shard(rank)]
            grads = torch.autograd.grad(F.cross_entropy(model(xb), yb), params)
            norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.add_(g * (RHO / norm))
            torch.testing.assert_close(result["m-sharpness"][0][step], flat(model), rtol=1e-5, atol=1e-6)
            grads = torch.autograd.grad(F.cross_entropy(model(xb), yb), params)
            with torch.no_grad():
                for p, g, w0, total in zip(params, grads, w, mean_grad):
                    total.add_(g / WORLD)
                    p.copy_(w0)
        for p, g in zip(params, mean_grad):
            p.grad = g
        base.step()
        base.zero_grad()
        assert not torch.equal(ranks[0]["m-sharpness"][0][step], ranks[1]["m-sharpness"][0][step])
        assert torch.equal(ranks[0]["m-sharpness"][1][step], ranks[1]["m-sharpness"][1][step])
        for result in ranks:
            torch.testing.assert_close(result["m-sharpness"][1][step], flat(model), rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
