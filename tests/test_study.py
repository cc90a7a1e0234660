"""The study scripts: summary statistics on known numbers, the summary and figures on synthetic
records, and an end-to-end ``run_study.py --quick`` + ``summarize_study.py`` on real MNIST."""

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.corruptions import CORRUPTIONS, EXTENDED_CORRUPTIONS
from lenet_utils import MNIST_FILES

ROOT = Path(__file__).resolve().parents[1]
MNIST_ROOT = Path(os.environ.get("MNIST_ROOT", ROOT / "data"))
HAVE_MNIST = all((MNIST_ROOT / "MNIST" / "raw" / name).is_file() for name in MNIST_FILES)
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason=f"real MNIST not in {MNIST_ROOT}/MNIST/raw "
                                 "(set MNIST_ROOT to a folder holding MNIST/raw/)")
SIGMAS = [f"{0.1 * i:.1f}" for i in range(11)]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


summarize_study = load_script("summarize_study")


def script(name: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "MNIST_ROOT": str(MNIST_ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *map(str, args)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


# ----------------------------------------------------------------------------- statistics


def test_t_quantiles_match_the_table():
    t = summarize_study.t_quantile_975
    assert t(1) == pytest.approx(12.706, abs=1e-3)
    assert t(2) == pytest.approx(4.303, abs=1e-3)
    assert t(30) == pytest.approx(2.042, abs=1e-3)
    assert t(31) == pytest.approx(2.0395, abs=1e-4)  # the expansion takes over smoothly
    assert t(100) == pytest.approx(1.9840, abs=1e-4)
    with pytest.raises(ValueError):
        t(0)


def test_describe_on_known_numbers():
    stats = summarize_study.describe([1.0, 2.0, 3.0])
    assert (stats["n"], stats["mean"], stats["std"]) == (3, 2.0, 1.0)
    half = 4.3027 / math.sqrt(3)
    assert (stats["ci_low"], stats["ci_high"]) == pytest.approx((2 - half, 2 + half))
    single = summarize_study.describe([5.0])
    assert single["mean"] == 5.0 and "undefined" in single["note"]
    assert all(math.isnan(single[k]) for k in ("std", "ci_low", "ci_high"))


def test_paired_difference_uses_common_seeds_only():
    stats = summarize_study.paired({0: 3.0, 1: 5.0, 2: 4.0, 3: 9.0}, {0: 1.0, 1: 2.0, 2: 2.0, 5: 0.0})
    assert stats["seeds"] == "0 1 2"
    assert stats["mean"] == pytest.approx(7 / 3)  # differences 2, 3, 2
    assert stats["std"] == pytest.approx(math.sqrt(1 / 3))
    assert stats["ci_high"] - stats["mean"] == pytest.approx(4.3027 * math.sqrt(1 / 3) / math.sqrt(3))
    assert math.isnan(summarize_study.paired({0: 1.0}, {0: 0.5})["ci_low"])


# ----------------------------------------------------------------------------- summary on synthetic runs


def fake_record(config: str, seed: int, accuracy: float) -> dict:
    """A run record with run_study.py's metric layout and made-up numbers."""
    return {"config": config, "seed": seed, "quick": False, "metrics": {
        "clean": accuracy, "normalized_clean": accuracy - 1,
        "seed_protocol": {s: accuracy - 2 for s in ("0.4", "0.6", "0.8")},
        "pixel": {s: accuracy - 10 * float(s) for s in SIGMAS},
        "pixel_clip": {s: accuracy - 30 * float(s) for s in SIGMAS},
        "corruptions": {"rotate": accuracy - 5, "fog": accuracy - 7, "contrast": accuracy - 8,
                        "mnist_c_mean": accuracy - 6, "extended_mean": accuracy - 8},
        "hessian": {"eigenvalue": accuracy / 10},
        "loss_directions": {"alphas": [-1.0, 0.0, 1.0], "n_images": 8, "losses": [[2.0, 0.1, 3.0]] * 3}}}


def test_summary_of_any_subset(tmp_path, monkeypatch, capsys):
    study = tmp_path / "study"
    study.mkdir()
    runs = [("asam", s, 98 + s) for s in range(3)] + [("sgd", s, 97.5) for s in range(2)] + [("baseline", 0, 96)]
    for config, seed, accuracy in runs:
        (study / f"{config}_seed{seed}.json").write_text(json.dumps(fake_record(config, seed, accuracy)))
    monkeypatch.setattr(sys, "argv", ["summarize_study.py", "--study-dir", str(study), "--out-dir", str(tmp_path)])
    summarize_study.main()
    summary = json.loads((tmp_path / "study_summary.json").read_text())
    assert list(summary["configs"]) == ["baseline", "sgd", "asam"]
    assert list(summary["paired"]) == ["asam - sgd"]  # the other pairs lack a member
    diff = summary["paired"]["asam - sgd"]["clean"]
    assert (diff["n"], diff["mean"], diff["seeds"]) == (2, pytest.approx(1.0), "0 1")  # 0.5 and 1.5
    assert summary["configs"]["baseline"]["clean"]["ci_low"] is None  # n = 1: undefined
    with open(tmp_path / "study_summary.csv") as f:
        rows = list(csv.DictReader(f))
    metrics = {r["metric"] for r in rows if r["config"] == "asam" and r["kind"] == "config"}
    assert {"clean", "normalized_clean", "seed_0.6", "pixel_1.0", "pixel_clip_0.3", "corruption_fog",
            "corruption_mnist_c_mean", "corruption_extended_mean", "hessian_eigenvalue"} <= metrics
    for name in ("noise_curves", "corruptions", "sharpness_vs_robustness", "loss_directions"):
        assert (tmp_path / f"study_{name}.png").stat().st_size > 10_000
    assert "asam - sgd" in capsys.readouterr().out


def test_readme_block_is_rewritten_from_the_runs(tmp_path, monkeypatch):
    study = tmp_path / "study"
    study.mkdir()
    for config, seed, accuracy in [("asam", 0, 99.0), ("asam", 1, 98.0), ("sgd", 0, 97.0), ("sgd", 1, 97.5)]:
        (study / f"{config}_seed{seed}.json").write_text(json.dumps(fake_record(config, seed, accuracy)))
    readme = tmp_path / "README.md"
    begin, end = summarize_study.README_BEGIN, summarize_study.README_END
    readme.write_text(f"# Title\n\n{begin}\nold table\n{end}\n\nkept text\n")
    monkeypatch.setattr(sys, "argv", ["summarize_study.py", "--study-dir", str(study), "--out-dir", str(tmp_path),
                                      "--readme", str(readme)])
    summarize_study.main()
    text = readme.read_text()
    assert text.startswith(f"# Title\n\n{begin}\n") and text.endswith(f"{end}\n\nkept text\n")
    assert "old table" not in text
    assert "Finished runs (4): sgd: seeds 0 1; asam: seeds 0 1." in text
    assert "| asam | 2 | 98.50 [92.15, 104.85] |" in text  # 98.5 +- 12.7062 * 0.7071 / sqrt(2)
    assert "| asam - sgd | 2 | +1.25 [-8.28, +10.78] |" in text  # differences 2.0 and 0.5
    assert "| fog | +1.25 [-8.28, +10.78] |" in text
    summarize_study.main()  # idempotent: the block is replaced, not appended
    assert readme.read_text() == text


def test_readme_without_markers_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(ValueError, match="study-results:begin"):
        summarize_study.splice_into_readme(readme, "table")
    assert readme.read_text() == "no markers here\n"


# ----------------------------------------------------------------------------- end to end on MNIST


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    if not HAVE_MNIST:
        pytest.skip(f"real MNIST not in {MNIST_ROOT}/MNIST/raw (set MNIST_ROOT)")
    out = tmp_path_factory.mktemp("study_quick")
    first = script("run_study", "--quick", "--configs", "baseline", "asam", "--seeds", "0", "--out", out,
                   "--threads", "1")
    return out, first.stdout


@needs_mnist
def test_quick_run_records(quick_study):
    out, stdout = quick_study
    assert "0 of 2 runs already finished" in stdout and stdout.count(" done ") == 2
    for config in ("baseline", "asam"):
        record = json.loads((out / f"{config}_seed0.json").read_text())
        assert (record["config"], record["seed"], record["quick"], record["split_seed"]) == (config, 0, True, 42)
        assert record["sizes"] == {"train": 2000, "val": 0 if config == "baseline" else 1000, "test": 1000}
        assert len(record["history"]) == record["hyperparameters"]["epochs"] == 2
        assert set(record["versions"]) == {"torch", "torchvision", "python"}
        assert record["seconds"]["train"] > 0 and record["seconds"]["evaluate"] > 0
        m = record["metrics"]
        accuracies = [m["clean"], m["normalized_clean"], *m["seed_protocol"].values(), *m["pixel"].values(),
                      *m["pixel_clip"].values(), *m["corruptions"].values()]
        assert all(0 <= a <= 100 for a in accuracies)
        assert list(m["pixel"]) == list(m["pixel_clip"]) == SIGMAS
        assert list(m["seed_protocol"]) == ["0.4", "0.6", "0.8"]
        assert set(m["corruptions"]) == set(CORRUPTIONS) | set(EXTENDED_CORRUPTIONS) | {"mnist_c_mean", "extended_mean"}
        hessian = m["hessian"]
        assert math.isfinite(hessian["eigenvalue"]) and hessian["eigenvalue"] == hessian["estimates"][-1]
        assert 1 <= hessian["iterations"] == len(hessian["estimates"]) <= hessian["max_iters"]
        curves = m["loss_directions"]
        assert len(curves["alphas"]) == 21 and len(curves["losses"]) == 3
        assert all(len(c) == 21 and all(0 < v < math.inf for v in c) for c in curves["losses"])
        assert ("perturbation_norm" in m) == (config == "asam")
    assert json.loads((out / "baseline_seed0.json").read_text())["metrics"]["clean"] > 50  # it learned
    norm = json.loads((out / "asam_seed0.json").read_text())["metrics"]["perturbation_norm"]
    assert norm["steps"] == 16 and 0 < norm["min"] <= norm["mean"] <= norm["max"]  # 2,000 / 128 steps


@needs_mnist
def test_second_invocation_skips_finished_runs(quick_study):
    out, _ = quick_study
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.json")}
    again = script("run_study", "--quick", "--configs", "baseline", "asam", "--seeds", "0", "--out", out)
    assert "2 of 2 runs already finished" in again.stdout and " start " not in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.json")} == mtimes


@needs_mnist
def test_summarize_quick_study(quick_study, tmp_path):
    out, _ = quick_study
    result = script("summarize_study", "--study-dir", out, "--out-dir", tmp_path)
    assert "QUICK" in result.stdout and "baseline" in result.stdout and "asam" in result.stdout
    summary = json.loads((tmp_path / "study_summary.json").read_text())
    assert set(summary["configs"]) == {"baseline", "asam"} and summary["paired"] == {}
    assert summary["quick_runs"] is True
    assert summary["configs"]["asam"]["perturbation_norm"]["mean"] > 0
    assert [len(summary["configs"][c]) for c in ("baseline", "asam")] == [44, 45]  # + perturbation_norm
    assert (tmp_path / "study_summary.csv").read_text().count("\n") == 1 + 44 + 45
    for name in ("noise_curves", "corruptions", "sharpness_vs_robustness", "loss_directions"):
        assert (tmp_path / f"study_{name}.png").stat().st_size > 10_000, name


@needs_mnist
def test_corruption_examples_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_ROOT", str(MNIST_ROOT))  # in-process: torch is loaded already
    summarize_study.corruption_examples(tmp_path / "corruption_examples.png")
    assert (tmp_path / "corruption_examples.png").stat().st_size > 30_000


def test_quick_refuses_the_study_folder(monkeypatch):
    run_study = load_script("run_study")
    monkeypatch.setattr(sys, "argv", ["run_study.py", "--quick"])
    with pytest.raises(SystemExit) as exit_info:
        run_study.main()
    assert exit_info.value.code == 2


def test_resume_refuses_records_of_another_recipe(tmp_path, monkeypatch):
    run_study = load_script("run_study")
    record = {"config": "sgd", "seed": 0, "quick": True,
              "hyperparameters": {**run_study.hyperparameters("sgd", run_study.QUICK), "lr": 0.05}}
    (tmp_path / "sgd_seed0.json").write_text(json.dumps(record))
    monkeypatch.setattr(sys, "argv", ["run_study.py", "--quick", "--configs", "sgd", "--seeds", "0",
                                      "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="another recipe"):
        run_study.main()
