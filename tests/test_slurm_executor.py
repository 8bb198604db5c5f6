"""Suites through a real SLURM (scripts/slurm_local.sh start): results equal to local runs,
runs that SLURM stops resume bit-identical, reruns submit only what is missing, failures and
cancellations are one line, and a run of two tasks equals one process."""

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from slurm_cluster import require_slurm

from heartlora.cli import main
from heartlora.errors import HeartLoRAError
from heartlora.training.slurm_executor import JOB_FILE, SlurmSettings, slurm_settings

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _suite(data_root, out, methods, epochs, seeds="1", *extra):
    """A suite on sk-digits that trains on train800 and is scored on val200 (the smaller
    splits: 7 steps an epoch), one thread a run."""
    return [
        "suite", "--tasks", "sk-digits", "--epochs", str(epochs), "--methods", methods,
        "--seeds", seeds, "--data-root", str(data_root), "--output-dir", str(out),
        "--set", "threads=1", "--set", "batch_size=128", "--set", "train_split=train800",
        "--set", "eval_split=val200", *extra,
    ]  # fmt: skip


def _on_slurm(args):
    """`heartlora` arguments that send ``args``'s runs to the test cluster."""
    return [*args, "--executor", "slurm", "--poll-seconds", "0.5"]


def _slurm(args):
    """The command line of ``_on_slurm(args)`` in a process of its own."""
    return [sys.executable, "-m", "heartlora", *_on_slurm(args)]


class _Command(threading.Thread):
    """`main(args)`, started at once in a thread of this process (nothing on the path that
    submits to SLURM and waits sets a signal handler), so that the test can act while it
    waits; `exit_code` bounds the wait, as a suite waiting on SLURM has no limit of its own."""

    def __init__(self, args):
        super().__init__(daemon=True)
        self.args, self.code = args, None
        self.start()

    def run(self):
        self.code = main(self.args)

    def exit_code(self, timeout):
        self.join(timeout)
        assert not self.is_alive(), (
            f"heartlora {' '.join(self.args)}: still running after {timeout} s"
        )
        return self.code


def _rows(out):
    with (out / "results.csv").open() as file:
        return [(r["method"], r["seed"], r["accuracy"]) for r in csv.DictReader(file)]


def _weights(run_dir):
    return load_file(str(run_dir / "adapter" / "heartlora_adapter.safetensors"))


def _job(run_dir):
    return json.loads((run_dir / JOB_FILE).read_text())["job_id"]


def _epochs_logged(run_dir):
    metrics = run_dir / "metrics.csv"
    return metrics.read_text().count("\n") - 1 if metrics.is_file() else 0


def test_slurm_settings_come_from_a_yaml_block_and_flags_checked_by_key(tmp_path):
    block = tmp_path / "slurm.yaml"
    block.write_text("slurm:\n  partition: gpu\n  time_minutes: 30\n  sbatch: {constraint: a100}\n")
    settings = slurm_settings({"time_minutes": 45, "gpus_per_run": 2}, str(block))
    assert (settings.partition, settings.time_minutes, settings.tasks) == ("gpu", 45, 2)
    assert settings.sbatch == {"constraint": "a100"}
    with pytest.raises(HeartLoRAError, match="unknown SLURM setting 'partiton'.*'partition'"):
        SlurmSettings.from_mapping({"partiton": "gpu"}, "x.yaml")
    with pytest.raises(HeartLoRAError, match="x.yaml: time_minutes must be at least 1, got 0"):
        SlurmSettings.from_mapping({"time_minutes": 0}, "x.yaml")
    with pytest.raises(HeartLoRAError, match="gpus_per_run must be an integer, got 'two'"):
        SlurmSettings.from_mapping({"gpus_per_run": "two"}, "x.yaml")
    with pytest.raises(HeartLoRAError, match="x.yaml: partition must not be empty"):
        SlurmSettings.from_mapping({"partition": " "}, "x.yaml")
    with pytest.raises(HeartLoRAError, match="tasks_per_run 3 and gpus_per_run 2 disagree"):
        SlurmSettings.from_mapping({"gpus_per_run": 2, "tasks_per_run": 3}, "x.yaml")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--partition", "gpu"], "--partition is a SLURM setting: add --executor slurm"),
        (["--no-wait"], "--no-wait is a SLURM setting"),
        (["--executor", "slurm", "--devices", "0,1"], "under --executor slurm ask for GPUs"),
        (["--executor", "slurm", "--sbatch", "nokey"], "--sbatch 'nokey': expected KEY=VALUE"),
        (["--devices", "a,b", "--jobs", "2"], "--devices a,b: expected indices of the GPUs"),
    ],
)
def test_executor_options_that_contradict_each_other_are_one_line(tmp_path, capsys, extra, message):
    assert main(_suite(tmp_path / "data", tmp_path / "out", "lora", 1, "1", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


@pytest.mark.slow
def test_a_suite_through_slurm_equals_the_local_one_even_when_slurm_stops_runs(
    tmp_path, sk_digits, monkeypatch
):
    """2 runs; SLURM requeues one mid-training (SIGTERM) and gives the other its time-limit
    notice (SIGUSR2): both resume from their checkpoints and end bit-identical to the local
    runs. The suite submits and waits in a thread while the test stops each run."""
    require_slurm()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs inherit this environment
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    args = ("lora,heart-lora", 2, "1")
    assert main(_suite(sk_digits, local, *args, "--jobs", "1")) == 0  # here: no worker to start
    runs = cluster / "runs" / "sk-digits"
    stops = {runs / "lora" / "seed0": ["scontrol", "requeue"],
             runs / "heart-lora" / "seed0": ["scancel", "--signal=USR2"]}  # fmt: skip
    suite = _Command(_on_slurm(_suite(sk_digits, cluster, *args)))
    deadline = time.monotonic() + 300
    while stops and time.monotonic() < deadline and suite.is_alive():
        for run_dir, command in list(stops.items()):
            if _epochs_logged(run_dir) >= 1:  # mid-training: an epoch to go
                subprocess.run([*command, _job(run_dir)], check=True)
                del stops[run_dir]
        time.sleep(0.2)
    assert suite.exit_code(timeout=400) == 0
    assert not stops, "a run finished before SLURM could stop it"
    assert _rows(cluster) == _rows(local)
    for run_dir in sorted(runs.glob("*/seed*")):
        expected = _weights(local / "runs" / "sk-digits" / run_dir.parent.name / run_dir.name)
        got = _weights(run_dir)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[key], expected[key]) for key in got), run_dir
        result = json.loads((run_dir / "result.json").read_text())
        assert result.get("slurm_requeues", 0) == 1, run_dir  # both were stopped once
        assert (run_dir / "slurm.out").is_symlink() and (run_dir / "slurm.err").exists()


@pytest.mark.slow
def test_cancelled_and_failing_jobs_are_one_line_each_and_a_rerun_submits_what_is_missing(
    tmp_path, sk_digits, capsys
):
    """Three runs submitted held (``--no-wait``); a second command waits on them without
    submitting again; one job is cancelled, one fails in its job (an unreadable checkpoint),
    one finishes: a line each for the two, exit 2. The same command again reuses the finished
    run and submits only the cancelled one."""
    require_slurm()
    out, bad = tmp_path / "out", tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    methods = f"linear,lora,lora[checkpoint={bad}]"
    suite = _suite(sk_digits, out, methods, 1)
    assert main([*_on_slurm(suite), "--no-wait", "--sbatch", "hold=true"]) == 0  # from here
    assert "3 run(s) submitted, 0 already queued" in capsys.readouterr().out
    assert not (out / "results.csv").exists()
    runs = out / "runs" / "sk-digits"
    waiting = subprocess.Popen(
        _slurm(suite), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    attached = "".join(waiting.stdout.readline() for _ in range(3))
    assert "0 run(s) submitted, 3 already queued or running" in attached, attached
    subprocess.run(["scancel", _job(runs / "lora" / "seed0")], check=True)
    for method in ("linear", f"lora[checkpoint={bad}]"):
        subprocess.run(["scontrol", "release", _job(runs / method / "seed0")], check=True)
    stdout, stderr = waiting.communicate(timeout=300)
    assert waiting.returncode == 2, stdout + stderr
    failed = sorted(line for line in stdout.splitlines() if " failed: " in line)
    assert len(failed) == 2, stdout
    assert failed[0].startswith("run sk-digits lora seed 0 (SLURM job ")
    assert "ended without a result (cancelled" in failed[0]
    assert failed[1].startswith(f"run sk-digits lora[checkpoint={bad}] seed 0 (SLURM job ")
    assert f"{bad}: cannot read" in failed[1]
    log = Path(failed[1].rsplit("log: ", 1)[1])
    assert log.is_file() and "Traceback" in log.read_text()
    assert stderr.strip() == (
        "heartlora: error: 2 of 3 SLURM runs failed (each named above, with its log): run the "
        "same command to submit them again"
    )
    # the same command again, without the broken run: the finished run is reused, only the
    # cancelled one goes to SLURM
    assert main(_on_slurm(_suite(sk_digits, out, "linear,lora", 1))) == 0
    again = capsys.readouterr().out
    assert "1 run(s) submitted, 0 already queued" in again
    assert "reused" in again and (out / "results.csv").is_file()


@pytest.mark.slow
def test_a_run_of_two_slurm_tasks_equals_one_process(tmp_path, sk_digits, monkeypatch):
    """``--tasks-per-run 2``: two ranks (gloo, CPU) in one torch.distributed group set up from
    SLURM's environment, the code path torchrun uses, match one process with the same batch."""
    require_slurm()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job inherits this environment
    one, two = tmp_path / "one", tmp_path / "two"
    args = ("heart-lora", 1, "1", "--set", "drop_path=0")
    assert main(_suite(sk_digits, one, *args, "--jobs", "1")) == 0
    on_two_tasks = ["--tasks-per-run", "2", "--cpus-per-task", "1"]
    assert _Command([*_on_slurm(_suite(sk_digits, two, *args)), *on_two_tasks]).exit_code(300) == 0
    run = Path("runs/sk-digits/heart-lora/seed0")
    single = json.loads((one / run / "result.json").read_text())
    double = json.loads((two / run / "result.json").read_text())
    assert (single["world_size"], double["world_size"]) == (1, 2)
    assert double["final_accuracy"] == single["final_accuracy"]
    a, b = _weights(one / run), _weights(two / run)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4)
