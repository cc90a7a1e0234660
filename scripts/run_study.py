"""Resumable, parallel runner for the LeNet-5 + SAM study.

Trains every (configuration, seed) pair of ``study.recipes.STUDY_RECIPES``, keeps its final weights
(``{out}/weights/{config}_seed{seed}.pt``, by ``lenet_utils.save_checkpoint``), evaluates them with
``study.evaluation`` and writes ``{out}/{config}_seed{seed}.json`` atomically; ``out`` defaults
to ``results/study/{dataset}``. A pair whose record and weights exist is skipped, so the study
resumes across sessions; ``--reevaluate`` recomputes the metrics of stored weights without
training, keeping each record's training history, and resumes too: a record whose metrics already
come from this code (the file hashes of ``code_version``) and these settings is skipped.

``seed`` seeds the model initialisation (``set_seed``) and train()'s shuffling; the seeds are the
same in every configuration, so configurations can be compared run by run (paired).

Examples::

    python scripts/run_study.py --configs asam sgd --seeds 0 1 2 --jobs 2
    python scripts/run_study.py --shard 1/4         # this machine's quarter of the pending pairs
    python scripts/run_study.py --reevaluate        # new metrics for every stored model
    sbatch --array=0-9 scripts/study.sbatch --seeds 0 1 2   # a SLURM array: each task takes its shard
    python scripts/run_study.py --seeds 0 1 2 --report      # afterwards: the pairs not finished

``--quick`` (2 epochs on 2,000 images, 1,000 test images, small sharpness probes) is a smoke test
and must write elsewhere than the study, e.g. ``--out /tmp/study_quick``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

# One BLAS thread (before numpy loads): eigsh's (ARPACK's) BLAS sums in a thread-dependent order otherwise, and the
# Lanczos eigenvalues would differ in their last digits between a serial run and a parallel job.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import platform
import subprocess
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import lenet_utils as L  # noqa: E402
from study import evaluation  # noqa: E402
from study.data import FULL, QUICK, Size, load_data, recipe_for  # noqa: E402
from study.recipes import STUDY_RECIPES  # noqa: E402


def code_version() -> dict:
    """sha256 of the code a record comes from: lenet_utils.py, sam.py, and the analysis and study packages."""
    def packages(*folders: str) -> str:
        digest = hashlib.sha256()
        for path in sorted(p for folder in folders for p in (ROOT / folder).glob("*.py")):
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"lenet_utils_sha256": hashlib.sha256((ROOT / "lenet_utils.py").read_bytes()).hexdigest(),
            "sam_sha256": hashlib.sha256((ROOT / "sam.py").read_bytes()).hexdigest(),
            "analysis_sha256": packages("analysis", "study"), "git_commit": commit}


# ----------------------------------------------------------------------------- one pair


@dataclass(frozen=True)
class Job:
    """One (configuration, seed) pair to train (and evaluate) or to re-evaluate."""

    name: str
    seed: int
    dataset: str
    out: Path
    device: str
    quick: bool
    evaluate: bool
    reevaluate: bool

    @property
    def record_path(self) -> Path:
        return self.out / f"{self.name}_seed{self.seed}.json"

    @property
    def weights_path(self) -> Path:
        return self.out / "weights" / f"{self.name}_seed{self.seed}.pt"


def train_one(job: Job, size: Size) -> dict:
    """Train one pair, save its weights; return its record without metrics."""
    device = torch.device(job.device)
    data = load_data(job.dataset, device, size)
    recipe = recipe_for(job.name, size)
    images, labels, val = data["split"] if recipe.split else data["full"]
    L.set_seed(job.seed)
    model = L.LeNet5().to(device)
    norms: list[torch.Tensor] = []  # SAM's ||e(w)|| over the first epoch, kept on the device
    first_epoch_steps = -(-len(images) // recipe.batch_size)

    def record_norm(step: int) -> None:
        if step < first_epoch_steps:
            norms.append(optimizer.perturbation_norm)

    on_terminal = sys.stderr.isatty()  # a progress bar on a terminal, one line per epoch in a log file
    start = time.perf_counter()
    optimizer = recipe.make_optimizer(model.parameters())
    history, _ = recipe.fit(model, images, labels, seed=job.seed, optimizer=optimizer, val_data=val,
                            progress=on_terminal,
                            on_epoch=None if on_terminal else L.epoch_logger(
                                recipe.epochs, prefix=f"    {job.name} seed {job.seed} "),
                            on_step=record_norm if recipe.sam_rho is not None else None)
    train_s = time.perf_counter() - start
    L.save_checkpoint(job.weights_path, model, config=job.name, seed=job.seed, dataset=job.dataset,
                      quick=job.quick, hyperparameters=recipe.as_dict())
    record = {"config": job.name, "seed": job.seed, "dataset": job.dataset, "quick": job.quick,
              "hyperparameters": recipe.as_dict(), "split_seed": L.SPLIT_SEED,
              "sizes": {"train": len(images), "val": len(val[0]) if val else 0},
              "history": history, "training_code": code_version(),
              "seconds": {"train": train_s},
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels torch picked (float sums)
              "threads": torch.get_num_threads(),
              "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                           "python": platform.python_version()}}
    if norms:
        values = torch.stack(norms).cpu()
        record["perturbation_norm"] = {"mean": values.mean().item(), "min": values.min().item(),
                                       "max": values.max().item(), "steps": len(values)}
    return record


def evaluate_one(job: Job, size: Size, record: dict) -> dict:
    """The record with the metrics of the stored weights (computed from the weights file)."""
    device = torch.device(job.device)
    data = load_data(job.dataset, device, size)
    model = L.LeNet5()
    L.load_checkpoint(job.weights_path, model)
    model.to(device)
    start = time.perf_counter()
    info = L.DATASETS[job.dataset]
    metrics = evaluation.evaluate_model(model, data["test"], data["probe"], size.evaluation,
                                        normalization=(info.mean, info.std))
    parts = metrics.pop("seconds")
    return {**record, "metrics": metrics, "evaluation": {"settings": size.evaluation.as_dict(),
                                                         "code": code_version(),
                                                         "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                                         "threads": torch.get_num_threads()},
            "sizes": {**record["sizes"], "test": len(data["test"][0][: size.evaluation.n_test]),
                      "probe": len(data["probe"][0])},
            "seconds": {**record["seconds"], "evaluate": time.perf_counter() - start, "evaluate_parts": parts}}


def run_job(job: Job, threads: int | None) -> str:
    """Train and/or evaluate one pair, writing its record; return a one-line summary."""
    if threads:
        torch.set_num_threads(threads)
    size = QUICK if job.quick else FULL
    if job.reevaluate:
        record = read_record(job.record_path)
        if record is None:
            raise FileNotFoundError(f"no record to re-evaluate at {job.record_path}")
    else:
        record = train_one(job, size)
    if job.evaluate:
        record = evaluate_one(job, size, record)
    with L.atomic_write(job.record_path) as f:
        json.dump(record, f, indent=1)
    s, m = record["seconds"], record.get("metrics")
    line = f"{job.name} seed {job.seed}: train {s['train']:.1f} s"
    if m:
        line += (f", eval {s['evaluate']:.1f} s | clean {m['clean']:.2f} %, pixel@0.6 {m['pixel']['0.6']:.2f} %, "
                 f"MNIST-C {m['corruptions']['mnist_c_mean']:.2f} %, PGD@0.1 {m['adversarial']['pgd']['0.1']:.2f} %, "
                 f"lambda_max {m['hessian']['eigenvalue']:.3g}")
    if "perturbation_norm" in record:
        line += f", ||e(w)|| {record['perturbation_norm']['mean']:.4f}"
    return line


# ----------------------------------------------------------------------------- the study


def read_record(path: Path) -> dict | None:
    """The record if its JSON exists and parses, else None."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def shard(text: str) -> tuple[int, int]:
    """argparse type for ``K/N`` with 1 <= K <= N."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes K/N with integers 1 <= K <= N, got {text!r}") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"--shard takes K/N with 1 <= K <= N, got {text!r}")
    return k, n


def array_shard(env) -> tuple[int, int]:
    """The shard of a SLURM array task, (1, 1) outside an array: the task's rank among the array's
    ids (which need not start at 0, e.g. --array=1-10 or 0-18:2) of as many shards as tasks."""
    if "SLURM_ARRAY_TASK_ID" not in env:
        return 1, 1
    try:
        task, count, low, high, step = (int(env[f"SLURM_ARRAY_TASK_{key}"])
                                        for key in ("ID", "COUNT", "MIN", "MAX", "STEP"))
    except (KeyError, ValueError):
        raise ValueError("SLURM_ARRAY_TASK_ID/COUNT/MIN/MAX/STEP are not all set to integers; "
                         "give --shard K/N") from None
    # SLURM gives no task's rank, only these five numbers: a list like --array=3,5,9 (which SLURM
    # reports with STEP=1) cannot be ranked from them, and guessing would run some pairs twice.
    if step < 1 or low + (count - 1) * step != high or (task - low) % step or not low <= task <= high:
        raise ValueError(f"array task {task} of {low}-{high}:{step} ({count} tasks) is not in an evenly "
                         "spaced array such as 0-9 or 1-19:2; submit one, or give --shard K/N")
    return (task - low) // step + 1, count


def positive(text: str) -> int:
    """argparse type for an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=list(L.DATASETS), default="mnist")
    parser.add_argument("--configs", nargs="+", choices=list(STUDY_RECIPES), default=list(STUDY_RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--device", default=str(L.default_device()))
    parser.add_argument("--out", type=Path, help="records and weights (default results/study/DATASET)")
    parser.add_argument("--jobs", type=positive, default=1, help="pairs run in parallel processes")
    parser.add_argument("--shard", type=shard, metavar="K/N",
                        help="run only every N-th pair, starting at the K-th (1-based), if not finished "
                        "(default: this SLURM array task's shard, else 1/1)")
    parser.add_argument("--threads", type=positive, help="torch.set_num_threads per process (default 1 "
                        "with --jobs > 1, else torch's default)")
    parser.add_argument("--reevaluate", action="store_true", help="recompute the metrics of stored weights")
    parser.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                        help="train and keep the weights only; --reevaluate adds the metrics later")
    parser.add_argument("--quick", action="store_true", help="tiny smoke test; needs another --out")
    parser.add_argument("--report", action="store_true", help="run nothing: name the selected pairs that are "
                        "not finished (after a job array, say), exit 1 if there are any")
    args = parser.parse_args(argv)
    args.out = args.out or ROOT / "results" / "study" / args.dataset
    if args.quick and args.out.resolve().is_relative_to((ROOT / "results" / "study").resolve()):
        parser.error("--quick is a smoke test: give it an --out outside results/study")
    if args.reevaluate and not args.evaluate:
        parser.error("--reevaluate and --no-evaluate contradict each other")
    if args.report and (args.shard or args.reevaluate):
        parser.error("--report covers every selected pair and runs nothing: drop --shard and --reevaluate")
    if args.shard is None:
        try:
            args.shard = (1, 1) if args.report else array_shard(os.environ)
        except ValueError as error:
            parser.error(str(error))
    if args.jobs > 1 and args.threads is None:
        args.threads = 1
    return args


def evaluated_by(record: dict, code: dict, size: Size) -> bool:
    """Whether the record's metrics come from this code (file hashes, not the commit) and settings."""
    evaluation = record.get("evaluation", {})
    return (evaluation.get("settings") == size.evaluation.as_dict()
            and all(evaluation.get("code", {}).get(key) == value for key, value in code.items()))


def plan(args: argparse.Namespace) -> list[Job]:
    """This shard's pending jobs, seed-major (every configuration of seed 0 first).

    The shard takes every N-th of ALL the selected pairs, starting at the K-th, and then drops the
    finished ones: a pair belongs to the same shard however far the others have got, so shards
    sharing a folder, or merged later, neither overlap nor miss a pair."""
    size = QUICK if args.quick else FULL
    k, n = args.shard
    jobs = [Job(name, seed, args.dataset, args.out, args.device, args.quick, args.evaluate, args.reevaluate)
            for seed in args.seeds for name in args.configs][k - 1::n]
    # a re-evaluation resumes: a record this code already evaluated with these settings is not redone
    current = {k: v for k, v in code_version().items() if k != "git_commit"} if args.reevaluate else None
    pending = []
    for job in jobs:
        record = read_record(job.record_path)
        done = record is not None and job.weights_path.is_file()
        if record is not None and (record.get("quick") != args.quick or record.get("dataset") != args.dataset
                                   or record.get("hyperparameters") != recipe_for(job.name, size).as_dict()):
            sys.exit(f"{job.record_path} was written by another recipe, dataset or mode (quick/full); "
                     "move it away or use another --out")
        if args.reevaluate and done and evaluated_by(record, current, size):
            print(f"skip {job.name} seed {job.seed}: already evaluated by this code", flush=True)
        elif args.reevaluate and done:
            pending.append(job)
        elif args.reevaluate:
            print(f"skip {job.name} seed {job.seed}: no stored model in {args.out}", flush=True)
        elif not done or (args.evaluate and "metrics" not in record):
            pending.append(replace(job, reevaluate=done))  # trained but not evaluated: evaluate only
    return pending


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        # From the files, not from the logs: a task killed at its time limit never prints its summary.
        pending, total = plan(args), len(args.configs) * len(args.seeds)
        print(f"{total - len(pending)} of {total} pairs finished in {args.out}"
              + (": not finished " + ", ".join(f"{j.name} seed {j.seed}" for j in pending) if pending else ""))
        return 1 if pending else 0
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = plan(args)
    what = "to re-evaluate" if args.reevaluate else "to run"
    print(f"{len(jobs)} pairs {what} in {args.out} on {args.device} (shard {args.shard[0]}/{args.shard[1]}, "
          f"{args.jobs} jobs)", flush=True)
    failed = []
    if args.jobs == 1:
        for i, job in enumerate(jobs, 1):
            print(f"[{i}/{len(jobs)}] start {job.name} seed {job.seed}", flush=True)
            try:
                print(f"[{i}/{len(jobs)}] done  {run_job(job, args.threads)}", flush=True)
            except Exception:
                failed.append(job)
                print(f"[{i}/{len(jobs)}] FAILED {job.name} seed {job.seed}:\n{traceback.format_exc()}", flush=True)
    else:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the workers, before they import torch
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_job, job, args.threads): job for job in jobs}
            for i, future in enumerate(as_completed(futures), 1):
                job = futures[future]
                try:
                    print(f"[{i}/{len(jobs)}] done  {future.result()}", flush=True)
                except Exception:
                    failed.append(job)
                    print(f"[{i}/{len(jobs)}] FAILED {job.name} seed {job.seed}:\n{traceback.format_exc()}",
                          flush=True)
    if failed:
        print(f"{len(failed)} of {len(jobs)} failed: " + ", ".join(f"{j.name} seed {j.seed}" for j in failed),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
