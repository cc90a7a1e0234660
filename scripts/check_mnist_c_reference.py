"""MNIST-C reference check (not run in CI): our regenerated corruptions against google-research/mnist-c's own code.

The reference ``corruptions.py`` is used from a checkout of google-research/mnist-c (never copied into this
repository) and needs 2019-era packages, so it runs in a Python 3.7 environment of its own; both are built by
``scripts/mnist_c_reference/setup_env.sh``. ``scripts/mnist_c_reference/generate.py`` runs it there and writes the
corrupted first ``--n`` test images per draw as .npy files. This script, in the project venv, then measures the
accuracy of a few stored models on those images and on ``analysis.corruptions.corrupt`` applied to the same images
with the same draw seeds, the same way ``study/evaluation.py`` does (raw [0, 1] images, no normalization:
``corruptions.evaluate_corruptions`` calls ``lenet_utils.accuracy`` on ``corrupt(images, name)``), and reports
reference minus ours per corruption and for the MNIST-C mean, with the spread over draws. The two sides use
different random generators, so per draw they corrupt each image differently; only the distributions are meant to
agree.

    scripts/mnist_c_reference/setup_env.sh /work/mnistc37venv /work/mnist-c        # once
    MNIST_ROOT=/work/shared/mnist .venv/bin/python scripts/check_mnist_c_reference.py \\
        --python37 /work/mnistc37venv/bin/python --reference /work/mnist-c --ref-dir /tmp/mnistc_ref
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lenet_utils as L  # noqa: E402 (after the path insert, so the script runs from anywhere)
from analysis import corruptions  # noqa: E402

GENERATOR = ROOT / "scripts" / "mnist_c_reference" / "generate.py"
WEIGHTS = ROOT / "results" / "study" / "mnist" / "weights"


def generate(python37: str, reference: Path, mnist_raw: Path, ref_dir: Path, n: int, seeds: list[int]) -> None:
    """Run the reference in its own interpreter; its failure is this script's failure."""
    if not Path(python37).is_file():
        raise FileNotFoundError(f"no Python 3.7 interpreter at {python37}; build it with "
                                f"scripts/mnist_c_reference/setup_env.sh")
    cmd = [python37, str(GENERATOR), "--reference", str(reference), "--mnist-raw", str(mnist_raw),
           "--out", str(ref_dir), "--n", str(n), "--seeds", *map(str, seeds)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def load_reference(ref_dir: Path, name: str, seed: int, n: int) -> torch.Tensor:
    path = ref_dir / f"{name}_draw{seed}.npy"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run with --python37 to generate the reference images")
    array = np.load(path)
    if array.shape != (n, 28, 28) or array.dtype != np.float32:
        raise ValueError(f"{path} holds {array.dtype} {array.shape}, expected float32 ({n}, 28, 28)")
    return torch.from_numpy(array).unsqueeze(1).contiguous()


def summary(values: list[float]) -> dict:
    """Mean over draws and the sample standard deviation (ddof 1) between draws."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "sd_over_draws": float(array.std(ddof=1)) if len(array) > 1 else None,
            "per_draw": [float(v) for v in array]}


def markdown(report: dict) -> str:
    models = report["models"]
    lines = [f"MNIST-C reference check: accuracy (%) of stored models on the first {report['n']:,} MNIST test "
             f"images under google-research/mnist-c's `corruptions.py` (commit {report['reference_commit'][:7]}, "
             f"run under Python {report['reference_env'].get('python')}, numpy {report['reference_env'].get('numpy')}, "
             f"scikit-image {report['reference_env'].get('scikit-image')}, "
             f"{report['reference_env'].get('ImageMagick', '').split(' https')[0]}) minus ours "
             f"(`analysis/corruptions.py`), benchmark severities, mean ± SD over {len(report['seeds'])} draws "
             f"(seeds {', '.join(map(str, report['seeds']))}).", "",
             "| corruption | " + " | ".join(f"{m}: ref | {m}: ours | {m}: ref − ours" for m in models) + " |",
             "|---|" + "---:|" * (3 * len(models))]
    for name in [*report["names"], "mnist_c_mean"]:
        cells = []
        for m in models:
            row = report["results"][m][name]
            d = row["difference"]
            sd = "" if d["sd_over_draws"] is None else f" ± {d['sd_over_draws']:.2f}"
            cells += [f"{row['reference']['mean']:.2f}", f"{row['ours']['mean']:.2f}", f"{d['mean']:+.2f}{sd}"]
        label = "**mean (15)**" if name == "mnist_c_mean" else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-dir", type=Path, default=Path("/tmp/mnistc_ref"),
                        help="folder of generate.py's .npy files (written there first when --python37 is given)")
    parser.add_argument("--python37", help="the reference environment's interpreter; omit to reuse --ref-dir")
    parser.add_argument("--reference", type=Path, default=Path("/work/mnist-c"),
                        help="a checkout of google-research/mnist-c (used with --python37)")
    parser.add_argument("--models", nargs="+", default=["asam_seed3", "sgd_seed3", "baseline_seed3"])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "mnist_c_reference.json")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the check is small; leave the machine's cores to the training jobs

    root = Path(os.environ.get("MNIST_ROOT", "data"))
    if args.python37:
        generate(args.python37, args.reference, root / "MNIST" / "raw", args.ref_dir, args.n, args.seeds)
    manifest_path = args.ref_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} missing: run with --python37 to generate the reference images")
    manifest = json.loads(manifest_path.read_text())
    if manifest["n"] != args.n or not set(args.seeds) <= set(manifest["seeds"]):
        raise ValueError(f"{args.ref_dir} holds n={manifest['n']}, seeds {manifest['seeds']}; asked for "
                         f"n={args.n}, seeds {args.seeds}: regenerate with --python37")
    names = list(corruptions.CORRUPTIONS)
    if sorted(names) != sorted(manifest["names"]):
        raise ValueError(f"reference corruptions {manifest['names']} differ from ours {names}")

    images, labels = (t[: args.n] for t in L.load_dataset("mnist", train=False))
    ref_labels = np.load(args.ref_dir / "labels.npy")
    if not np.array_equal(ref_labels, labels.numpy()):
        raise ValueError("the reference's labels differ from the project's: not the same test images")

    start = time.perf_counter()
    ours = {(name, s): corruptions.corrupt(images, name, seed=s) for name in names for s in args.seeds}
    refs = {(name, s): load_reference(args.ref_dir, name, s, args.n) for name in names for s in args.seeds}
    # Mean |reference - ours| per pixel: near 0 only for the deterministic corruptions (scale, brightness,
    # stripe, canny_edges), a check that those agree image for image; the random ones differ by construction.
    pixel_gap = {name: float(np.mean([(refs[name, s] - ours[name, s]).abs().mean().item() for s in args.seeds]))
                 for name in names}

    models = {}
    for tag in args.models:
        model = L.LeNet5()
        L.load_checkpoint(WEIGHTS / f"{tag}.pt", model)
        per = {name: {"reference": [L.accuracy(model, refs[name, s], labels) for s in args.seeds],
                      "ours": [L.accuracy(model, ours[name, s], labels) for s in args.seeds]} for name in names}
        per["mnist_c_mean"] = {side: [float(np.mean([per[name][side][i] for name in names]))
                                      for i in range(len(args.seeds))] for side in ("reference", "ours")}
        models[tag] = {name: {"reference": summary(v["reference"]), "ours": summary(v["ours"]),
                              "difference": summary([r - o for r, o in zip(v["reference"], v["ours"])])}
                       for name, v in per.items()}
        models[tag]["clean"] = L.accuracy(model, images, labels)
        row = models[tag]["mnist_c_mean"]
        print(f"{tag:16s} clean {models[tag]['clean']:.2f}  mean ref {row['reference']['mean']:.2f} "
              f"ours {row['ours']['mean']:.2f}  diff {row['difference']['mean']:+.2f}", flush=True)

    report = {
        "description": "Accuracy (%) under google-research/mnist-c's corruptions.py (reference) and under "
                       "analysis/corruptions.py (ours), benchmark severities, same images and draw seeds "
                       "(different generators); difference = reference - ours in accuracy points; "
                       "sd_over_draws is the sample SD (ddof 1) across draws. Not run in CI.",
        "reference_commit": manifest["reference_commit"], "reference_env": {
            k: manifest[k] for k in ("python", "numpy", "scipy", "scikit-image", "Pillow", "opencv", "Wand",
                                     "ImageMagick")},
        "reference_seconds": manifest["seconds"], "n": args.n, "seeds": args.seeds, "names": names,
        "models": args.models, "torch": torch.__version__, "seconds": time.perf_counter() - start,
        "mean_abs_pixel_difference": pixel_gap, "results": models,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
