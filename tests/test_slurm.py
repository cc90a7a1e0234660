"""scripts/study.sbatch on a real SLURM: munged, slurmctld and slurmd started here on localhost (one node,
two CPUs) from a slurm.conf written by the test; a quick-mode job array of 2 configurations x 2 seeds gives
the records of a serial run, a resubmission runs nothing, a failed pair shows in its task's exit code and in
--report. Skipped, with the reason, where SLURM (Debian's slurm-wlm and munge) is missing or won't start.
Also: the shard the runner takes from SLURM's array variables (no SLURM needed)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_run_study import records, run

from conftest import HAVE_MNIST, MNIST_ROOT, ROOT, load_script, needs_mnist

PAIRS = ("--configs", "baseline", "sgd", "--seeds", "0", "1")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scancel", "squeue")
TIMEOUT = 240  # seconds for one sbatch --wait; the whole array takes under a minute here


# ----------------------------------------------------------------------------- array variables -> shard


@pytest.mark.parametrize("array, shards", [
    ("0-1", [(1, 2), (2, 2)]),
    ("1-3", [(1, 3), (2, 3), (3, 3)]),  # ids needn't start at 0
    ("4-10:3", [(1, 3), (2, 3), (3, 3)]),  # ids 4, 7, 10
    ("7", [(1, 1)])])
def test_array_task_takes_its_shard(array, shards, monkeypatch):
    run_study = load_script("run_study")
    span, _, step = array.partition(":")
    low, _, high = span.partition("-")
    low, high, step = int(low), int(high or low), int(step or 1)
    ids = range(low, high + 1, step)
    for task, expected in zip(ids, shards, strict=True):
        for key, value in {"ID": task, "COUNT": len(ids), "MIN": low, "MAX": high, "STEP": step}.items():
            monkeypatch.setenv(f"SLURM_ARRAY_TASK_{key}", str(value))
        assert run_study.parse_args(["--quick", "--out", "/tmp/x"]).shard == expected
        assert run_study.parse_args(["--quick", "--out", "/tmp/x", "--shard", "2/5"]).shard == (2, 5)  # given wins
        assert run_study.parse_args(["--quick", "--out", "/tmp/x", "--report"]).shard == (1, 1)  # every pair


@pytest.mark.parametrize("variables, message", [
    ({"ID": 5, "COUNT": 3, "MIN": 3, "MAX": 9, "STEP": 1}, "not in an evenly spaced array"),  # --array=3,5,9
    ({"ID": 5, "COUNT": 3, "MIN": 4, "MAX": 10, "STEP": 3}, "not in an evenly spaced array"),
    ({"ID": 5, "COUNT": 2}, "not all set to integers"), ({"ID": "x", "COUNT": 1, "MIN": 0, "MAX": 0, "STEP": 1},
                                                         "not all set to integers")])
def test_arrays_that_cannot_be_ranked_are_refused(variables, message, monkeypatch, capsys):
    run_study = load_script("run_study")
    for key, value in variables.items():
        monkeypatch.setenv(f"SLURM_ARRAY_TASK_{key}", str(value))
    with pytest.raises(SystemExit) as exit_info:
        run_study.parse_args(["--quick", "--out", "/tmp/x"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--shard", "1/2"], ["--reevaluate"]])
def test_report_refuses_a_shard_and_reevaluate(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("run_study").parse_args(["--quick", "--out", "/tmp/x", "--report", *args])
    assert exit_info.value.code == 2 and "--report covers every selected pair" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a local SLURM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 8) -> str:
    return " | ".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else "(no log)"


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def slurm_conf(folder: Path, host: str) -> str:
    # No accounting, no cgroups (proctrack/pgid, task/none): nothing outside the tmp folder is needed.
    # config_overrides: the node is the 2 CPUs and 4 GB (study.sbatch asks for --mem=4G) written here,
    # whatever the machine has, instead of being drained for having less.
    return f"""ClusterName=studytest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=4096 State=UNKNOWN
PartitionName=study Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The environment (SLURM_CONF) of a local SLURM; its daemons are stopped at the end whatever happened."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        pytest.skip(f"SLURM not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("slurmd starts each job as its user, which needs root")
    folder = tmp_path_factory.mktemp("slurm")
    for name in ("state", "spool"):
        (folder / name).mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)  # munged refuses a key others can read
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, host))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for name in list(env):  # inside a SLURM job (a CI runner on a cluster), don't inherit its array or job
        if name.startswith(("SLURM_", "SBATCH_")) and name != "SLURM_CONF":
            del env[name]
    daemons = []

    def start(name: str, *command: str) -> None:
        with open(folder / f"{name}.log", "wb") as log:
            daemons.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder))

    def not_started(what: str, log: str) -> str:
        return f"{what} did not start within its timeout; {log}.log: {tail(folder / f'{log}.log')}"

    try:
        # --force: munged otherwise refuses a tmp folder (world-writable /tmp above it) for its socket.
        start("munged", "munged", "--foreground", "--force", f"--key-file={key}", f"--socket={folder}/munge.socket",
              f"--pid-file={folder}/munged.pid", f"--seed-file={folder}/munge.seed", "--num-threads=2")
        if not wait_for(lambda: (folder / "munge.socket").exists(), 15):
            pytest.skip(not_started("munged", "munged"))
        start("slurmctld", "slurmctld", "-D", "-i", "-f", str(conf))
        start("slurmd", "slurmd", "-D", "-f", str(conf), "-N", host)

        def node_idle() -> bool:
            info = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=10)
            return info.stdout.strip() == "idle"

        if not wait_for(node_idle, 40):
            pytest.skip(not_started("slurmctld or slurmd (node not idle)", "slurmctld") + "; slurmd.log: "
                        + tail(folder / "slurmd.log"))
        yield env
    finally:
        if len(daemons) == 3:  # cancel what still runs (a test that timed out), or its steps outlive slurmd
            subprocess.run(["scancel", "--full", f"--user={os.getuid()}"], env=env, capture_output=True, timeout=10)
            wait_for(lambda: not subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True,
                                                timeout=10).stdout.strip(), 15)
        for daemon in reversed(daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=5)


def submit(env: dict, logs: Path, *args) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """``sbatch --array=0-1 --wait`` of study.sbatch in quick mode; the result and each task's log by id."""
    logs.mkdir()
    result = subprocess.run(["sbatch", "--array=0-1", "--wait", f"--output={logs}/study_%A_%a.log",
                             str(ROOT / "scripts" / "study.sbatch"), "--quick", *map(str, args)],
                            cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                            env={**env, "STUDY_PYTHON": sys.executable, "MNIST_ROOT": str(MNIST_ROOT)})
    return result, {p.stem.rsplit("_", 1)[1]: p.read_text() for p in logs.glob("study_*.log")}


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    if not HAVE_MNIST:
        pytest.skip(needs_mnist.kwargs["reason"])
    out = tmp_path_factory.mktemp("serial")
    run(*PAIRS, "--out", out, "--threads", "1")
    return out


@pytest.fixture(scope="module")
def array(slurm, serial, tmp_path_factory):
    folder = tmp_path_factory.mktemp("array")
    result, logs = submit(slurm, folder / "logs", *PAIRS, "--out", folder / "out")
    return folder / "out", result, logs


@needs_mnist
def test_job_array_gives_the_serial_records(array, serial):
    out, result, logs = array
    assert result.returncode == 0, f"{result.stdout}{result.stderr}{logs}"
    assert sorted(logs) == ["0", "1"]  # one log per task
    for log in logs.values():
        assert "--threads 1" in log and "2 pairs to run" in log and "(shard " in log and "exit code 0" in log
    assert "shard 1/2" in logs["0"] and "shard 2/2" in logs["1"]
    expected = records(serial)
    assert len(expected) == 4 and records(out) == expected
    assert run(*PAIRS, "--out", out, "--report").stdout.strip() == f"4 of 4 pairs finished in {out}"


@needs_mnist
def test_resubmission_runs_only_unfinished_pairs_and_a_failure_shows(array, slurm, tmp_path):
    out, first, _ = array
    assert first.returncode == 0
    (tmp_path / "weights").mkdir()
    for path in out.rglob("*.*"):
        (tmp_path / path.relative_to(out)).write_bytes(path.read_bytes())
    # baseline seed 0 (task 0's shard): trained but not evaluated, and its weights unreadable
    record = json.loads((tmp_path / "baseline_seed0.json").read_text())
    del record["metrics"]
    (tmp_path / "baseline_seed0.json").write_text(json.dumps(record))
    (tmp_path / "weights" / "baseline_seed0.pt").write_bytes(b"not a checkpoint")
    untouched = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*_seed1.*")}
    result, logs = submit(slurm, tmp_path / "logs", *PAIRS, "--out", tmp_path)
    assert result.returncode == 1  # sbatch --wait: the highest exit code of the tasks
    assert "1 pairs to run" in logs["0"] and "FAILED baseline seed 0" in logs["0"] and "exit code 1" in logs["0"]
    assert "1 of 1 failed: baseline seed 0" in logs["0"]  # the runner's stderr, in the same log
    assert "0 pairs to run" in logs["1"] and "exit code 0" in logs["1"]
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    report = run(*PAIRS, "--out", tmp_path, "--report", check=False)
    assert report.returncode == 1
    assert report.stdout.strip() == f"3 of 4 pairs finished in {tmp_path}: not finished baseline seed 0"
