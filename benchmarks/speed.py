"""Speed benchmark for the LeNet-5 / SAM project (lenet_utils), all in one process.

What is measured (each contender gets one short untimed warm-up, then the contenders alternate
inside every repeat, in a rotated order, so slow drifts of the machine hit them all alike):

1. Training, seconds per epoch and images/s, for two recipes of ``study.recipes.STUDY_RECIPES``:
   - baseline (``lenet_utils.BASELINE``): Adam, batch 32, summed cross-entropy; epoch = 60000/32 = 1875 steps
   - asam (``lenet_utils.ASAM``): adaptive SAM over SGD, batch 128, label smoothing 0.1;
     epoch = 48000/128 = 375 steps
   each run by the project's loop (lenet_utils.train over in-memory tensors, on a subset of
   steps*batch images, one epoch) and by a reference loop written the usual way (torchvision
   MNIST + ToTensor, DataLoader(shuffle=True, num_workers=0), .item() per batch), for --steps
   steps with a fresh LeNet5. Seconds per epoch are extrapolated: time / steps * epoch steps.
2. The cost of an ASAM step over a plain SGD step (the ``sgd`` recipe: ASAM's without the
   perturbation; batch 128, project loop): two forward-backward passes against one, the rest of a step
   paid once in both.
3. Evaluation throughput of lenet_utils.accuracy on the clean test images and on noisy ones
   (add_gaussian_noise sigma 0.6; generating the noise is part of the timing).

Reports median [min, max] over --repeats; ratios are taken per repeat (paired), then summarised.
Nothing is asserted about times. Run from the project root:

    MNIST_ROOT=/work/shared/mnist .venv/bin/python benchmarks/speed.py [--device cpu] \
        [--repeats 5] [--steps 300] [--threads N] [--out results/speed.json] [--quick]

On a CPU shared with other jobs, torch's default of one thread per core can be many times slower
than --threads 1 (OpenMP threads wait on each other when a core is taken): the thread count and
the load average are recorded with the results.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lenet_utils as L  # noqa: E402
from study.recipes import STUDY_RECIPES  # noqa: E402

RECIPES = {name: STUDY_RECIPES[name] for name in ("baseline", "asam", "sgd")}
MAX_BATCH = max(r.batch_size for r in RECIPES.values())


def epoch_steps(recipe: L.Recipe) -> int:
    """Optimizer steps in one epoch of ``recipe`` on MNIST (48,000 images with the split, else 60,000)."""
    return (48000 if recipe.split else 60000) // recipe.batch_size


def fresh(recipe: str, device: torch.device):
    torch.manual_seed(0)
    model = L.LeNet5().to(device)
    return model, RECIPES[recipe].make_optimizer(model.parameters())


def project_loop(recipe, device, images, labels):
    """prepare(steps) -> run(): the project's lenet_utils.train on steps * batch in-memory images."""
    r = RECIPES[recipe]

    def prepare(steps):
        model, optimizer = fresh(recipe, device)
        n = steps * r.batch_size
        return lambda: L.train(model, optimizer, images[:n], labels[:n], epochs=1, batch_size=r.batch_size,
                                label_smoothing=r.label_smoothing, reduction=r.reduction, progress=False)
    return prepare


def reference_loop(recipe, device, dataset):
    """prepare(steps) -> run(): a DataLoader loop written the usual way, .item() every batch."""
    r = RECIPES[recipe]
    smoothing, reduction = r.label_smoothing, r.reduction

    def prepare(steps):
        model, optimizer = fresh(recipe, device)
        loader = DataLoader(dataset, batch_size=r.batch_size, shuffle=True, num_workers=0)

        def run():
            model.train()
            total_loss, correct = 0.0, 0
            for x, y in itertools.islice(loader, steps):
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad()
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=smoothing, reduction=reduction)
                loss.backward()
                if isinstance(optimizer, L.SAM):
                    optimizer.first_step(zero_grad=True)
                    F.cross_entropy(model(x), y, label_smoothing=smoothing, reduction=reduction).backward()
                    optimizer.second_step(zero_grad=True)
                else:
                    optimizer.step()
                total_loss += loss.item()
                correct += (logits.argmax(1) == y).sum().item()
            return total_loss, correct
        return run
    return prepare


def eval_loop(device, images, labels, sigma):
    """prepare(steps) -> run(): lenet_utils.accuracy on the test images, noised first if sigma > 0."""
    def prepare(steps):
        model, _ = fresh("sgd", device)  # the optimizer is unused; the weights don't matter for speed
        if sigma == 0:
            return lambda: L.accuracy(model, images, labels)
        return lambda: L.accuracy(model, L.add_gaussian_noise(images, sigma, seed=1), labels)
    return prepare


def timed(run, device) -> float:
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    run()
    sync()
    return time.perf_counter() - start


def summary(samples):
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "samples": samples}


def machine_info(device):
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown"
    return {"cpu": cpu, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
            "load_average": os.getloadavg(), "date": datetime.datetime.now().astimezone().isoformat()}


def device_arg(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise argparse.ArgumentTypeError(f"unknown device {text!r} ({err})") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"device must be cpu or cuda[:N], got {text!r}")
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise argparse.ArgumentTypeError(f"device {text!r} is not available on this machine")
    return device


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=device_arg, default=L.default_device(), help="cpu, cuda, cuda:N")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per contender (default 5)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per measurement (default 300)")
    parser.add_argument("--out", type=Path, default=Path("results/speed.json"), help="JSON output file")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch.set_num_threads (default: torch's choice, {torch.get_num_threads()}); "
                        "use 1 when other jobs share the cores")
    parser.add_argument("--quick", action="store_true", help="smoke test: 5 steps, 2 repeats, 1000 test images")
    args = parser.parse_args(argv)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    args.steps = args.steps if args.steps is not None else (5 if args.quick else 300)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if not 1 <= args.steps <= 60000 // MAX_BATCH:
        parser.error(f"--steps must lie in 1..{60000 // MAX_BATCH} (the subset must fit in 60000 images), "
                     f"got {args.steps}")
    return args


def main(argv=None):
    args = parse_args(argv)
    device, steps = args.device, args.steps
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    root = os.environ.get("MNIST_ROOT", "data")
    train_x, train_y = L.load_mnist(root, train=True, device=device)
    test_x, test_y = L.load_mnist(root, train=False, device=device)
    if args.quick:
        test_x, test_y = test_x[:1000], test_y[:1000]
    dataset = torchvision.datasets.MNIST(root, train=True, download=True, transform=torchvision.transforms.ToTensor())
    contenders = {  # name -> (prepare, images per run, steps per epoch or None)
        f"{r}/{kind}": (loop(r, device, *data), steps * RECIPES[r].batch_size, epoch_steps(RECIPES[r]))
        for r, kind, loop, data in [("baseline", "project", project_loop, (train_x, train_y)),
                                    ("baseline", "reference", reference_loop, (dataset,)),
                                    ("asam", "project", project_loop, (train_x, train_y)),
                                    ("asam", "reference", reference_loop, (dataset,)),
                                    ("sgd", "project", project_loop, (train_x, train_y))]}
    contenders["eval/clean"] = (eval_loop(device, test_x, test_y, 0.0), len(test_x), None)
    contenders["eval/noisy0.6"] = (eval_loop(device, test_x, test_y, 0.6), len(test_x), None)

    for prepare, _, _ in contenders.values():  # warm-up, untimed
        prepare(min(steps, 10))()
    seconds = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            seconds[name].append(timed(contenders[name][0](steps), device))
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)

    results, lines = {}, []
    for name, (_, images, steps_per_epoch) in contenders.items():  # not epoch_steps: that is the function
        entry = {"seconds": summary(seconds[name]), "images": images,
                 "images_per_second": summary([images / t for t in seconds[name]])}
        if steps_per_epoch:
            entry["seconds_per_epoch"] = summary([t / steps * steps_per_epoch for t in seconds[name]])
        results[name] = entry
        e = entry.get("seconds_per_epoch")
        per_epoch = f"{e['median']:9.2f} [{e['min']:.2f}, {e['max']:.2f}]" if e else f"{'-':>9}"
        ips = entry["images_per_second"]
        lines.append(f"{name:<20} {per_epoch:<26} {ips['median']:>10,.0f} [{ips['min']:,.0f}, {ips['max']:,.0f}]")
    ratio_defs = {"baseline reference/project": ("baseline/reference", "baseline/project"),
                  "asam reference/project": ("asam/reference", "asam/project"),
                  "asam step / sgd step (batch 128)": ("asam/project", "sgd/project")}
    ratios = {label: summary([a / b for a, b in zip(seconds[num], seconds[den])])
              for label, (num, den) in ratio_defs.items()}

    info = machine_info(device)
    print(f"\n{info['device_name']} | torch {info['torch']} | {info['torch_threads']} threads | "
          f"{steps} steps x {args.repeats} repeats | load avg {info['load_average'][0]:.2f}")
    print(f"{'measurement':<20} {'s/epoch median [min, max]':<26} {'images/s median [min, max]':>28}")
    print("\n".join(lines))
    print("\nratio (paired per repeat)                    median [min, max]")
    for label, s in ratios.items():
        print(f"{label:<44} {s['median']:6.2f} [{s['min']:.2f}, {s['max']:.2f}]")
    with L.atomic_write(args.out) as f:
        json.dump({"machine": info, "config": {"steps": steps, "repeats": args.repeats, "quick": args.quick,
                                               "eval_images": len(test_x)},
                   "measurements": results, "ratios": ratios}, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
