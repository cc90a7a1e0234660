"""scripts/run_study.py: records and kept weights, re-evaluation from weights, parallel jobs and shards
giving the same records as a serial run, failures reported, bad arguments refused (quick mode, real MNIST)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import HAVE_MNIST, MNIST_ROOT, ROOT, load_script, needs_mnist
from lenet_utils import DATASETS, MNIST_FILES, LeNet5, load_checkpoint
from study.data import QUICK, recipe_for
from study.recipes import STUDY_RECIPES

FASHION_ROOT = Path(os.environ.get("FASHION_MNIST_ROOT", ROOT / "data"))
HAVE_FASHION = all((FASHION_ROOT / "FashionMNIST" / "raw" / name).is_file() for name in MNIST_FILES)
PAIRS = ("--configs", "baseline", "asam", "--seeds", "0")


def run(*args, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "MNIST_ROOT": str(MNIST_ROOT), "FASHION_MNIST_ROOT": str(FASHION_ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_study.py"), "--quick", *map(str, args)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def records(out: Path) -> dict[str, dict]:
    """Every record in ``out`` without its wall times (which differ from run to run)."""
    def timeless(record):
        record = {k: v for k, v in record.items() if k != "seconds"}
        record["history"] = [{k: v for k, v in row.items() if k != "seconds"} for row in record["history"]]
        return record
    return {p.name: timeless(json.loads(p.read_text())) for p in sorted(out.glob("*.json"))}


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    if not HAVE_MNIST:
        pytest.skip(needs_mnist.kwargs["reason"])
    out = tmp_path_factory.mktemp("serial")
    return out, run(*PAIRS, "--out", out, "--threads", "1").stdout


@needs_mnist
def test_records_hold_history_metrics_and_provenance(serial):
    out, stdout = serial
    assert "2 pairs to run" in stdout and stdout.count(" done ") == 2
    for config in ("baseline", "asam"):
        record = json.loads((out / f"{config}_seed0.json").read_text())
        assert (record["config"], record["seed"], record["dataset"], record["quick"]) == (config, 0, "mnist", True)
        assert record["hyperparameters"] == {**STUDY_RECIPES[config].as_dict(), "epochs": 2}
        assert record["sizes"] == {"train": 2000, "val": 0 if config == "baseline" else 1000, "test": 1000,
                                   "probe": 128}
        assert len(record["history"]) == 2 and record["threads"] == 1
        assert record["seconds"]["train"] > 0 and record["seconds"]["evaluate"] > 0
        assert all(len(record["training_code"][key]) == 64 for key in ("lenet_utils_sha256", "sam_sha256",
                                                                        "analysis_sha256"))
        assert record["evaluation"]["settings"]["n_probe"] == 128
        assert 0 <= record["metrics"]["clean"] <= 100
        assert ("perturbation_norm" in record) == (config == "asam")
    norm = json.loads((out / "asam_seed0.json").read_text())["perturbation_norm"]
    assert norm["steps"] == 16 and 0 < norm["min"] <= norm["mean"] <= norm["max"]  # 2,000 / 128 steps


@needs_mnist
def test_weights_are_kept_with_their_metadata(serial):
    out, _ = serial
    model = LeNet5()
    checkpoint = load_checkpoint(out / "weights" / "asam_seed0.pt", model)
    assert (checkpoint["config"], checkpoint["seed"], checkpoint["dataset"]) == ("asam", 0, "mnist")
    assert checkpoint["hyperparameters"]["sam_rho"] == 2.0 and checkpoint["optimizer"] is None
    assert all(torch.isfinite(p).all() for p in model.parameters())


@needs_mnist
def test_second_invocation_skips_finished_pairs(serial):
    out, _ = serial
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.*")}
    again = run(*PAIRS, "--out", out)
    assert "0 pairs to run" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.*")} == mtimes


@needs_mnist
def test_parallel_jobs_and_shards_give_the_serial_records(serial, tmp_path):
    out, _ = serial
    run(*PAIRS, "--out", tmp_path / "jobs", "--jobs", "2")
    for k in (1, 2):
        shard = run(*PAIRS, "--out", tmp_path / "shards", "--shard", f"{k}/2", "--threads", "1")
        assert "1 pairs to run" in shard.stdout
    expected = records(out)
    assert len(expected) == 2
    assert records(tmp_path / "jobs") == expected
    assert records(tmp_path / "shards") == expected


@needs_mnist
def test_reevaluate_rewrites_metrics_from_the_weights_and_keeps_the_history(serial, tmp_path):
    out, _ = serial
    copy = tmp_path / "copy"
    (copy / "weights").mkdir(parents=True)
    for path in out.rglob("*_seed0.*"):
        (copy / path.relative_to(out)).write_bytes(path.read_bytes())
    before = json.loads((copy / "asam_seed0.json").read_text())
    before["metrics"]["clean"] = -1.0  # a stale number the re-evaluation must replace ...
    before["evaluation"]["code"]["analysis_sha256"] = "older code"  # ... because other code wrote it
    (copy / "asam_seed0.json").write_text(json.dumps(before))
    result = run("--configs", "asam", "--seeds", "0", "--out", copy, "--reevaluate", "--threads", "1")
    assert "1 pairs to re-evaluate" in result.stdout
    after = json.loads((copy / "asam_seed0.json").read_text())
    original = json.loads((out / "asam_seed0.json").read_text())
    assert after["history"] == original["history"] and after["seconds"]["train"] == original["seconds"]["train"]
    assert after["metrics"] == original["metrics"]  # same weights, data and thread count: the same numbers
    again = run("--configs", "asam", "--seeds", "0", "--out", copy, "--reevaluate", "--threads", "1")
    assert "0 pairs to re-evaluate" in again.stdout and "already evaluated by this code" in again.stdout


@needs_mnist
def test_training_without_evaluation_then_evaluating_later(serial, tmp_path):
    out, _ = serial
    run("--configs", "asam", "--seeds", "0", "--out", tmp_path, "--no-evaluate", "--threads", "1")
    trained = json.loads((tmp_path / "asam_seed0.json").read_text())
    assert "metrics" not in trained and (tmp_path / "weights" / "asam_seed0.pt").is_file()
    later = run("--configs", "asam", "--seeds", "0", "--out", tmp_path, "--threads", "1")
    assert "1 pairs to run" in later.stdout and "epoch" not in later.stdout  # evaluated, not retrained
    assert records(tmp_path)["asam_seed0.json"] == records(out)["asam_seed0.json"]


@needs_mnist
def test_a_failed_pair_is_reported_and_the_others_finish(serial, tmp_path):
    out, _ = serial
    (tmp_path / "weights").mkdir()
    for path in out.rglob("*_seed0.*"):
        (tmp_path / path.relative_to(out)).write_bytes(path.read_bytes())
    (tmp_path / "weights" / "baseline_seed0.pt").write_bytes(b"not a checkpoint")
    for path in tmp_path.glob("*.json"):  # written by other code, so that both are re-evaluated
        record = json.loads(path.read_text())
        record["evaluation"]["code"]["analysis_sha256"] = "older code"
        path.write_text(json.dumps(record))
    result = run(*PAIRS, "--out", tmp_path, "--reevaluate", "--jobs", "2", check=False)
    assert result.returncode == 1
    assert "FAILED baseline seed 0" in result.stdout and "done  asam seed 0" in result.stdout
    assert "1 of 2 failed" in result.stderr


@pytest.mark.skipif(not HAVE_FASHION, reason=f"Fashion-MNIST not in {FASHION_ROOT}/FashionMNIST/raw "
                    "(set FASHION_MNIST_ROOT)")
def test_fashion_mnist_runs_into_its_own_layout(tmp_path):
    result = run("--dataset", "fashion-mnist", "--configs", "sgd", "--seeds", "0", "--out", tmp_path,
                 "--threads", "1")
    assert "1 pairs to run" in result.stdout
    record = json.loads((tmp_path / "sgd_seed0.json").read_text())
    assert record["dataset"] == "fashion-mnist" and record["metrics"]["clean"] > 30  # it learned something
    assert DATASETS["fashion-mnist"].mean == 0.2860 and DATASETS["fashion-mnist"].std == 0.3530


@pytest.mark.parametrize("args, message", [
    (["--shard", "3/2"], "--shard takes K/N"), (["--shard", "0/2"], "--shard takes K/N"),
    (["--shard", "a/b"], "--shard takes K/N"), (["--jobs", "0"], "expected an integer >= 1"),
    (["--quick"], "outside results/study"), (["--reevaluate", "--no-evaluate"], "contradict")])
def test_bad_arguments_are_refused(args, message, capsys):
    run_study = load_script("run_study")
    with pytest.raises(SystemExit) as exit_info:
        run_study.parse_args(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_resume_refuses_records_of_another_recipe(tmp_path):
    run_study = load_script("run_study")
    record = {"config": "sgd", "seed": 0, "quick": True, "dataset": "mnist",
              "hyperparameters": {**recipe_for("sgd", QUICK).as_dict(), "lr": 0.05}}
    (tmp_path / "sgd_seed0.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="another recipe"):
        run_study.plan(run_study.parse_args(["--quick", "--configs", "sgd", "--seeds", "0", "--out", str(tmp_path)]))


def test_shards_partition_the_pending_pairs(tmp_path):
    run_study = load_script("run_study")
    args = ["--quick", "--seeds", "0", "1", "2", "--out", str(tmp_path)]
    every = run_study.plan(run_study.parse_args(args))
    shards = [run_study.plan(run_study.parse_args([*args, "--shard", f"{k}/3"])) for k in (1, 2, 3)]
    n = len(STUDY_RECIPES)
    assert {j for s in shards for j in s} == set(every) and sum(map(len, shards)) == len(every) == 3 * n
    assert [j.seed for j in every[:n]] == [0] * n  # seed-major: every configuration of seed 0 first
