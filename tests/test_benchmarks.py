"""Every benchmark the README names runs, in quick mode on real MNIST (a few steps, small data): none can break
silently again. Nothing here times anything."""

import json
import os
import subprocess
import sys

from conftest import MNIST_ROOT, ROOT, needs_mnist


def run(*args: str, timeout: int = 600) -> str:
    env = {**os.environ, "MNIST_ROOT": str(MNIST_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@needs_mnist
def test_speed_benchmark_runs_in_quick_mode(tmp_path):
    out = tmp_path / "speed.json"
    stdout = run("benchmarks/speed.py", "--quick", "--threads", "1", "--out", str(out))
    result = json.loads(out.read_text())
    assert result and "asam step / sgd step" in stdout


@needs_mnist
def test_run_costs_runs_in_quick_mode():
    stdout = run("benchmarks/run_costs.py", "--quick", "--threads", "1", "--configs", "baseline", "asam")
    assert "asam:" in stdout and "min of training" in stdout and "evaluation of one model:" in stdout
