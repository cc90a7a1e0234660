"""Resumable runner for the LeNet-5 + SAM study on MNIST.

Trains every (configuration, seed) pair, evaluates it and writes ``{out}/{config}_seed{seed}.json``
atomically. A run whose JSON already exists and parses is skipped, so the study can be stopped
and resumed across sessions. All training and evaluation logic comes from ``lenet_utils``.

``seed`` seeds the model initialisation (``set_seed``) and train()'s shuffling; the seeds are the
same in every configuration, so configurations can be compared run by run (paired). The 80/20
train/validation split always uses the fixed split seed 42.

Configurations:

- baseline: Adam lr 1e-3, batch 32, 30 epochs, summed cross-entropy, all 60,000 images, no val.
- asam: SAM over SGD (lr 0.1, momentum 0.9, weight decay 5e-4), adaptive (ASAM), rho 2.0; label
  smoothing 0.1, batch 128, 80 epochs, lr x0.2 at 30/60/80 % of training; trained on the 48,000
  split images with the 12,000 others as validation data.
- sgd: asam with plain SGD instead of SAM (everything else equal): the controlled ablation.
- sam-0.05: asam with non-adaptive SAM, rho 0.05 (Foret et al.'s default on CIFAR).
- sam-0.5: asam with non-adaptive SAM, rho 0.5, the top of Foret et al.'s rho grid (0.05 is their
  CIFAR default). ASAM's rho is not on SAM's scale: ASAM's ball is stretched by |w|, so its step
  in weight space is ||e(w)||_2 = rho ||T(w)^2 g||_2 / ||T(w) g||_2 with T(w) = |w|, not rho (for
  SAM it is exactly rho). Measured over asam's first epoch (seed 0, 375 steps) it averages 0.42
  (0.15 to 0.60): about 8x SAM's 0.05, close to 0.5. Every SAM/ASAM run records this norm over
  its first epoch (``metrics.perturbation_norm``), so the comparison can be checked per run.
- noise-aug: sgd with Gaussian-noise augmentation (sigma ~ U[0, 0.6] per batch).
- adam-sam: baseline with SAM over Adam (lr 1e-3), non-adaptive, rho 0.05.

Example: ``python scripts/run_study.py --configs asam sgd --seeds 0 1 2``.
``--quick`` (2 epochs on 2,000 images, 1,000 test images, small sharpness probes) is a smoke test
and must write elsewhere than the study, e.g. ``--out /tmp/study_quick``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import lenet_utils as L  # noqa: E402
from analysis import corruptions, sharpness  # noqa: E402

ADAM = dict(optimizer="adam", lr=1e-3, momentum=None, weight_decay=0.0, sam=None, batch_size=32,
            epochs=30, reduction="sum", label_smoothing=0.0, lr_milestones=[], lr_gamma=1.0,
            split=False, noise_max_sigma=None)
SGD = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, sam=None, batch_size=128,
           epochs=80, reduction="mean", label_smoothing=0.1, lr_milestones=[0.3, 0.6, 0.8],
           lr_gamma=0.2, split=True, noise_max_sigma=None)
CONFIGS: dict[str, dict] = {
    "baseline": ADAM,
    "asam": {**SGD, "sam": {"rho": 2.0, "adaptive": True}},
    "sgd": SGD,
    "sam-0.05": {**SGD, "sam": {"rho": 0.05, "adaptive": False}},
    "sam-0.5": {**SGD, "sam": {"rho": 0.5, "adaptive": False}},
    "noise-aug": {**SGD, "noise_max_sigma": 0.6},
    "adam-sam": {**ADAM, "sam": {"rho": 0.05, "adaptive": False}},
}
SPLIT_SEED = 42
LENET_UTILS_SHA256 = hashlib.sha256(Path(L.__file__).read_bytes()).hexdigest()  # the code this run imported
FULL = dict(epochs=None, n_train=None, n_val=None, n_test=None, n_sharpness=2048, hessian_iters=100)
QUICK = dict(epochs=2, n_train=2000, n_val=1000, n_test=1000, n_sharpness=128, hessian_iters=3)
HESSIAN_TOL = 1e-3
SEED_SIGMAS = (0.4, 0.6, 0.8)
PIXEL_SIGMAS = tuple(round(0.1 * i, 1) for i in range(11))
ALPHAS = [round(-1 + 0.1 * i, 1) for i in range(21)]  # linspace(-1, 1, 21)
DIRECTION_SEEDS = (0, 1, 2)


def make_optimizer(model: torch.nn.Module, hp: dict) -> torch.optim.Optimizer:
    """The configuration's optimizer, wrapped in lenet_utils.SAM when ``hp["sam"]`` is set."""
    if hp["optimizer"] == "adam":
        base, kwargs = torch.optim.Adam, dict(lr=hp["lr"], weight_decay=hp["weight_decay"])
    else:
        base, kwargs = torch.optim.SGD, dict(lr=hp["lr"], momentum=hp["momentum"],
                                             weight_decay=hp["weight_decay"])
    if hp["sam"] is None:
        return base(model.parameters(), **kwargs)
    return L.SAM(model.parameters(), base, **hp["sam"], **kwargs)


def record_perturbation_norms(optimizer: L.SAM, steps: int) -> list[torch.Tensor]:
    """Wrap ``optimizer.first_step`` to record ||e(w)||_2 (weights after minus before) for the next
    ``steps`` calls, then unwrap. Norms stay on the device (no host sync inside the epoch)."""
    norms: list[torch.Tensor] = []
    params = [p for group in optimizer.param_groups for p in group["params"]]
    unwrapped = optimizer.first_step

    def first_step(zero_grad: bool = False) -> None:
        before = [p.detach().clone() for p in params]
        unwrapped(zero_grad=zero_grad)
        diffs = torch._foreach_sub([p.detach() for p in params], before)
        norms.append(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(diffs))))
        if len(norms) == steps:
            del optimizer.first_step  # back to the class method

    optimizer.first_step = first_step
    return norms


def hyperparameters(name: str, size: dict) -> dict:
    """The configuration's hyper-parameters, with the epochs of ``size`` (FULL or QUICK)."""
    return {**CONFIGS[name], "epochs": size["epochs"] or CONFIGS[name]["epochs"]}


def evaluate_run(model: torch.nn.Module, test: tuple, probe: tuple, hessian_iters: int) -> dict:
    """Accuracies (%) on ``test``: clean, normalized (seed protocol at sigma 0), seed protocol,
    pixel noise without and with clipping, corruptions; Hessian max eigenvalue and 1-D loss slices
    along filter-normalized directions on ``probe`` (plain mean cross-entropy)."""
    pixel = lambda clip: {f"{s:.1f}": a for s, a in L.evaluate_noise(  # noqa: E731
        model, *test, PIXEL_SIGMAS, protocol="pixel", clip=clip).items()}
    eigenvalue, estimates = sharpness.hessian_max_eigenvalue(model, *probe, iters=hessian_iters, tol=HESSIAN_TOL)
    return {
        "clean": L.accuracy(model, *test),
        "normalized_clean": L.evaluate_noise(model, *test, [0.0], protocol="seed")[0.0],
        "seed_protocol": {f"{s:.1f}": a for s, a in
                          L.evaluate_noise(model, *test, SEED_SIGMAS, protocol="seed").items()},
        "pixel": pixel(False),
        "pixel_clip": pixel(True),
        "corruptions": corruptions.evaluate_corruptions(model, *test),
        "hessian": {"eigenvalue": eigenvalue, "estimates": estimates, "iterations": len(estimates),
                    "max_iters": hessian_iters, "tol": HESSIAN_TOL, "n_images": len(probe[0]),
                    "converged": len(estimates) > 1 and abs(estimates[-1] - estimates[-2])
                    <= HESSIAN_TOL * abs(estimates[-1])},
        "loss_directions": {"alphas": ALPHAS, "direction_seeds": list(DIRECTION_SEEDS),
                            "n_images": len(probe[0]), "losses": [
                                sharpness.loss_along_direction(model, *probe, ALPHAS,
                                                       sharpness.filter_normalized_direction(model, seed=s))
                                for s in DIRECTION_SEEDS]},
    }


def print_epoch(run: str, epochs: int, row: dict) -> None:
    """One log line per epoch, for runs in the background (where no progress bar is shown)."""
    val = f", val acc {row['val_acc']:.2f} %" if "val_acc" in row else ""
    print(f"    {run} epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, "
          f"train acc {row['train_acc']:.2f} %{val} ({row['seconds']:.1f} s)", flush=True)


def run_one(name: str, seed: int, data: dict, device: torch.device, size: dict, args) -> dict:
    """Train and evaluate one (configuration, seed) pair; return the JSON record."""
    hp = hyperparameters(name, size)
    images, labels, val = data["split"] if hp["split"] else data["full"]
    L.set_seed(seed)
    model = L.LeNet5().to(device)
    optimizer = make_optimizer(model, hp)
    norms = (record_perturbation_norms(optimizer, math.ceil(len(images) / hp["batch_size"]))
             if hp["sam"] else None)
    augment = (None if hp["noise_max_sigma"] is None
               else partial(L.random_gaussian_noise, max_sigma=hp["noise_max_sigma"]))
    on_terminal = sys.stderr.isatty()  # a progress bar on a terminal, one line per epoch in a log file
    start = time.perf_counter()
    history = L.train(model, optimizer, images, labels, epochs=hp["epochs"], batch_size=hp["batch_size"],
                      val_data=val, label_smoothing=hp["label_smoothing"], reduction=hp["reduction"],
                      lr_milestones=hp["lr_milestones"], lr_gamma=hp["lr_gamma"], batch_transform=augment,
                      seed=seed, progress=on_terminal,
                      on_epoch=None if on_terminal else partial(print_epoch, f"{name} seed {seed}", hp["epochs"]))
    train_s = time.perf_counter() - start
    probe = (images[: size["n_sharpness"]], labels[: size["n_sharpness"]])
    metrics = evaluate_run(model, data["test"], probe, size["hessian_iters"])
    evaluate_s = time.perf_counter() - start - train_s
    if norms:
        values = torch.stack(norms).cpu()
        metrics["perturbation_norm"] = {"mean": values.mean().item(), "min": values.min().item(),
                                        "max": values.max().item(), "steps": len(values)}
    if args.save_checkpoints:
        folder = Path(args.out) / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".gitignore").write_text("*\n")
        L.save_checkpoint(folder / f"{name}_seed{seed}.pt", model, optimizer, config=name, seed=seed,
                          hyperparameters=hp)
    return {"config": name, "seed": seed, "hyperparameters": hp, "split_seed": SPLIT_SEED,
            "corruption_severities": {c: severity for c, (_, severity, _) in corruptions.CORRUPTIONS.items()},
            "lenet_utils_sha256": LENET_UTILS_SHA256,
            "quick": args.quick, "sizes": {"train": len(images), "val": len(val[0]) if val else 0,
                                           "test": len(data["test"][0])},
            "history": history, "metrics": metrics,
            "seconds": {"train": train_s, "evaluate": evaluate_s},
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
            "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                         "python": platform.python_version()}}


def finished(path: Path) -> dict | None:
    """The run's record if its JSON exists and parses, else None."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_data(device: torch.device, size: dict) -> dict:
    """Full training set, the seed-42 80/20 split (with val data) and the test set, cut to ``size``."""
    images, labels = L.load_mnist(train=True, device=device)
    tr_x, tr_y, va_x, va_y = L.train_val_split(images, labels, seed=SPLIT_SEED)
    test_x, test_y = L.load_mnist(train=False, device=device)
    n, n_val, n_test = size["n_train"], size["n_val"], size["n_test"]
    return {"full": (images[:n], labels[:n], None),
            "split": (tr_x[:n], tr_y[:n], (va_x[:n_val], va_y[:n_val])),
            "test": (test_x[:n_test], test_y[:n_test])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--device", default=str(L.default_device()))
    parser.add_argument("--out", default="results/study")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="tiny smoke test; needs another --out")
    parser.add_argument("--save-checkpoints", action="store_true", help="weights under OUT/checkpoints")
    args = parser.parse_args()
    if args.quick and Path(args.out).resolve() in (Path("results/study").resolve(), ROOT / "results" / "study"):
        parser.error("--quick is a smoke test: give it another --out than results/study")
    if args.threads:
        torch.set_num_threads(args.threads)
    out, device, size = Path(args.out), torch.device(args.device), QUICK if args.quick else FULL
    out.mkdir(parents=True, exist_ok=True)
    runs = [(name, seed) for name in args.configs for seed in args.seeds]
    for name, seed in runs:  # refuse to resume over records from another recipe or mode
        old = finished(out / f"{name}_seed{seed}.json")
        if old and (old.get("quick") != args.quick or old.get("seed") != seed
                    or old.get("hyperparameters") != hyperparameters(name, size)):
            sys.exit(f"{out / f'{name}_seed{seed}.json'} was written by another recipe or mode "
                     "(quick/full); move it away or use another --out")
    todo = [(name, seed) for name, seed in runs if finished(out / f"{name}_seed{seed}.json") is None]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already finished in {out}; "
          f"{len(todo)} to do on {device}", flush=True)
    data = load_data(device, size) if todo else {}
    for i, (name, seed) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] start {name} seed {seed}", flush=True)
        record = run_one(name, seed, data, device, size, args)
        with L.atomic_write(out / f"{name}_seed{seed}.json") as f:
            json.dump(record, f, indent=1)
        m, s = record["metrics"], record["seconds"]
        extra = (f", ||e(w)|| {m['perturbation_norm']['mean']:.4f}" if "perturbation_norm" in m else "")
        print(f"[{i}/{len(todo)}] done  {name} seed {seed}: train {s['train']:.1f} s, eval "
              f"{s['evaluate']:.1f} s | clean {m['clean']:.2f} %, pixel@0.6 {m['pixel']['0.6']:.2f} %, "
              f"corruptions {m['corruptions']['mean']:.2f} %, lambda_max "
              f"{m['hessian']['eigenvalue']:.3g}{extra}", flush=True)


if __name__ == "__main__":
    main()
