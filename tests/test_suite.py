import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from train_fixtures import make_base_checkpoint, make_learnable_task

from heartlora.cli import main
from heartlora.training.report import RunResult, markdown_table, summarize
from heartlora.training.suite import parse_method, parse_seeds

ROOT = Path(__file__).resolve().parent.parent


def _one_epoch_suite(tmp_path, methods: str) -> list[str]:
    """`heartlora suite` arguments: sk-digits, one epoch, calibration after 4 steps."""
    return [
        "suite", "--tasks", "sk-digits", "--epochs", "1", "--output-dir", str(tmp_path / "suite"),
        "--data-root", str(tmp_path / "data"), "--set", "calib_warmup_steps=4", "--methods", methods,
    ]  # fmt: skip


def test_one_task_one_epoch_suite_writes_table_csv_and_plot(tmp_path, capsys):
    out = tmp_path / "suite"
    assert main(_one_epoch_suite(tmp_path, "linear,lora,heart-lora-layer[ne=3],peft-lora")) == 0
    printed = capsys.readouterr().out
    assert "| Method |" in printed and "accuracy_vs_storage.png" in printed
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["method"] for r in rows] == ["linear", "lora", "heart-lora-layer[ne=3]", "peft-lora"]
    assert all(0 <= float(r["accuracy"]) <= 100 for r in rows)
    stored = {r["method"]: int(r["adapter_bytes"]) for r in rows}
    assert stored["heart-lora-layer[ne=3]"] < stored["lora"]
    with Image.open(out / "accuracy_vs_storage.png") as plot:
        assert plot.size[0] > 300 and plot.size[1] > 200
    table = (out / "results.md").read_text()
    assert "Natural" in table and "Average" in table
    # a second call reuses every finished run
    assert main(_one_epoch_suite(tmp_path, "linear")) == 0
    assert "reused" in capsys.readouterr().out


def test_suite_list_and_bad_task(capsys):
    assert main(["suite", "--list"]) == 0
    assert "mnist" in capsys.readouterr().out
    assert main(["suite", "--tasks", "cifar", "--epochs", "1"]) == 2
    assert "unknown mini-VTAB task 'cifar'" in capsys.readouterr().err


def test_group_means_and_average_follow_the_vtab_convention():
    runs = [
        RunResult("m", "a", "natural", 0, 80.0, 10, 100),
        RunResult("m", "b", "natural", 0, 60.0, 10, 100),
        RunResult("m", "c", "structured", 0, 40.0, 10, 100),
        RunResult("m", "a", "natural", 1, 90.0, 10, 100),
        RunResult("m", "b", "natural", 1, 70.0, 10, 100),
        RunResult("m", "c", "structured", 1, 50.0, 10, 100),
    ]
    summary = summarize(runs)
    assert summary.group_means[("m", "Natural")] == [70.0, 80.0]
    assert summary.average["m"] == [55.0, 65.0]  # mean of group means, per seed
    table = markdown_table(summary)
    assert "60.0 ± 7.1" in table and "75.0 ± 7.1" in table


def test_method_and_seed_parsing():
    assert parse_method("heart-lora[ne=2,scorer=grad-norm]") == (
        "heart-lora",
        {"ne": 2, "scorer": "grad-norm"},
    )
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,7") == [0, 7]
    with pytest.raises(ValueError):
        parse_seeds("x")


def test_vtab1k_benchmark_script_runs_on_the_vtab_layout(tmp_path):
    make_learnable_task(tmp_path, task="dtd")
    checkpoint = make_base_checkpoint(tmp_path / "base.safetensors")
    settings = [
        "epochs=1",
        "batch_size=16",
        "img_size=28",
        "num_workers=0",
        "calib_warmup_steps=1",
        "eval_every=1",
        "rank=2",
        "ne=2",
        "threads=1",
    ]
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "vtab1k.py"),
        "--data-root",
        str(tmp_path),
        "--checkpoint",
        str(checkpoint),
        "--model",
        "vit_mini_patch4_28",
        "--tasks",
        "dtd",
        "--methods",
        "lora,heart-lora-layer",
        "--output-dir",
        str(tmp_path / "out"),
    ]
    for item in settings:
        command += ["--set", item]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| lora |" in done.stdout and "Natural" in done.stdout
    result = json.loads(
        (
            tmp_path / "out" / "runs" / "dtd" / "heart-lora-layer" / "seed0" / "result.json"
        ).read_text()
    )
    assert result["active_heads_per_layer"] == [4] * 6
