"""Data parallelism (torchrun, gloo on CPU) and recovery from SIGKILL, in subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import make_base_checkpoint, make_learnable_task, train_args

from heartlora.cli import main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
EXIT_AFTER_EPOCH = Path(__file__).with_name("exit_after_epoch.py")


def _adapter(run_dir):
    return load_file(str(run_dir / "adapter" / "heartlora_adapter.safetensors"))


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    make_learnable_task(tmp_path)
    checkpoint = make_base_checkpoint(tmp_path / "base.safetensors")
    single, double = tmp_path / "one", tmp_path / "two"
    # drop_path=0: stochastic depth draws per-sample masks from each rank's own RNG stream
    args = train_args(tmp_path, checkpoint, single, "heart-lora", epochs=2, ne=2, drop_path=0)
    assert main(args) == 0  # the one process: this one
    args = train_args(tmp_path, checkpoint, double, "heart-lora", epochs=2, ne=2, drop_path=0)
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "heartlora",
            *args,
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stderr[-2000:]
    one = json.loads((single / "result.json").read_text())
    two = json.loads((double / "result.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["final_accuracy"] == one["final_accuracy"]
    assert two["active_heads_per_layer"] == one["active_heads_per_layer"]
    a, b = _adapter(single), _adapter(double)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_same_result(tmp_path, capsys):
    """The run is killed in a process of its own; the reference and the resume run here."""
    make_learnable_task(tmp_path)
    checkpoint = make_base_checkpoint(tmp_path / "base.safetensors")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert main(train_args(tmp_path, checkpoint, reference, "heart-lora", epochs=8, ne=2)) == 0

    args = train_args(tmp_path, checkpoint, killed, "heart-lora", epochs=8, ne=2)
    process = subprocess.Popen(
        [sys.executable, "-m", "heartlora", *args],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline:  # kill once a few epochs are checkpointed, mid-run
        metrics = killed / "metrics.csv"
        if metrics.is_file() and metrics.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "result.json").exists(), "the run finished before it could be killed"
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "resumed at epoch" in capsys.readouterr().out
    expected = json.loads((reference / "result.json").read_text())
    got = json.loads((killed / "result.json").read_text())
    assert got["final_accuracy"] == expected["final_accuracy"]
    assert got["best_accuracy"] == expected["best_accuracy"]
    a, b = _adapter(reference), _adapter(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_ranks_killed_mid_run_then_resumed_give_the_same_result(tmp_path):
    """torchrun, two ranks, batches of 15 split 8 + 7: their stochastic-depth masks advance
    the two ranks' random streams unequally, so a resume must restore each rank's own stream
    (rank 0's alone made rank 1 draw other masks). Both ranks end abruptly right after the
    checkpoint of epoch 2; resumed, the run ends bit-identical to the uninterrupted one."""
    make_learnable_task(tmp_path)
    checkpoint = make_base_checkpoint(tmp_path / "base.safetensors")
    reference, killed = tmp_path / "reference", tmp_path / "killed"

    def args(out):
        listed = train_args(tmp_path, checkpoint, out, "heart-lora", epochs=6, ne=2)
        listed[listed.index("--batch-size") + 1] = "15"
        return listed

    def torchrun(program):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        done = subprocess.run(
            [*launcher, "--nproc_per_node", "2", *program],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return done.returncode, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"

    code, output = torchrun(["-m", "heartlora", *args(reference)])
    assert code == 0, output
    code, output = torchrun([str(EXIT_AFTER_EPOCH), "2", *args(killed)])
    assert code != 0 and not (killed / "result.json").exists(), output
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["progress"]["epoch"] == 2
    code, output = torchrun(["-m", "heartlora", *args(killed), "--resume"])
    assert code == 0, output
    assert "resumed at epoch 3, step 0" in output
    a, b = _adapter(reference), _adapter(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_launcher_s_rank_is_read_in_one_place(monkeypatch):
    from heartlora.training.distributed import World

    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert World.from_launcher() == World(2, 4) and not World.from_launcher().is_main
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert World.from_launcher() == World() and World.from_launcher().is_main
