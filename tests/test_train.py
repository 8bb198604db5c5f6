import json

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import make_base_checkpoint, make_learnable_task, train_args

from heartlora.cli import main
from heartlora.training.trainer import Trainer

METHODS = ["linear", "full", "lora", "heart-lora", "heart-lora-layer", "peft-lora"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_learnable_task(root)
    checkpoint = make_base_checkpoint(root / "base.safetensors")
    return root, checkpoint


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_end_to_end(toy, tmp_path, method):
    root, checkpoint = toy
    out = tmp_path / method
    assert main(train_args(root, checkpoint, out, method, ne=2)) == 0
    result = json.loads((out / "result.json").read_text())
    for key in (
        "method",
        "task",
        "best_accuracy",
        "final_accuracy",
        "trainable_parameters",
        "adapter_bytes",
        "wall_seconds",
        "active_heads_per_layer",
    ):
        assert result[key] is not None or (
            key == "active_heads_per_layer" and method in ("linear", "full", "peft-lora")
        ), key
    assert 0 <= result["final_accuracy"] <= 100
    assert result["adapter_bytes"] > 0
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,")
    assert any((out / "tensorboard").iterdir())
    if method == "heart-lora":
        assert result["active_heads_per_layer"] == [4] * 6
    if method == "lora":
        assert result["active_heads_per_layer"] == [6] * 6


def test_heart_lora_stores_fewer_parameters_than_lora(toy, tmp_path):
    root, checkpoint = toy
    results = {}
    for method in ("lora", "heart-lora-layer"):
        assert main(train_args(root, checkpoint, tmp_path / method, method, epochs=1, ne=3)) == 0
        results[method] = json.loads((tmp_path / method / "result.json").read_text())
    assert (
        results["heart-lora-layer"]["trainable_parameters"]
        < results["lora"]["trainable_parameters"]
    )
    assert results["heart-lora-layer"]["adapter_bytes"] < results["lora"]["adapter_bytes"]


def test_training_learns_the_toy_task(toy, tmp_path):
    root, checkpoint = toy
    assert main(train_args(root, checkpoint, tmp_path / "run", "full", epochs=6)) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["best_accuracy"] > 60  # chance is 33 %


def test_ctrl_c_saves_and_resume_gives_the_same_result(toy, tmp_path, monkeypatch, capsys):
    root, checkpoint = toy
    reference = tmp_path / "reference"
    assert main(train_args(root, checkpoint, reference, "heart-lora", epochs=3, ne=2)) == 0

    interrupted = tmp_path / "interrupted"
    original = Trainer._train_step
    calls = {"n": 0}

    def step_then_interrupt(self, *args):
        calls["n"] += 1
        if calls["n"] == 4:  # mid-epoch 2 (2 steps per epoch... 48 images / 16 = 3 steps)
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(Trainer, "_train_step", step_then_interrupt)
    assert main(train_args(root, checkpoint, interrupted, "heart-lora", epochs=3, ne=2)) == 130
    assert not (interrupted / "result.json").exists()
    monkeypatch.setattr(Trainer, "_train_step", original)
    assert (
        main(train_args(root, checkpoint, interrupted, "heart-lora", epochs=3, ne=2) + ["--resume"])
        == 0
    )

    expected = json.loads((reference / "result.json").read_text())
    got = json.loads((interrupted / "result.json").read_text())
    assert got["final_accuracy"] == expected["final_accuracy"]
    assert got["active_heads_per_layer"] == expected["active_heads_per_layer"]
    a = load_file(str(reference / "adapter" / "heartlora_adapter.safetensors"))
    b = load_file(str(interrupted / "adapter" / "heartlora_adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (interrupted / "metrics.csv").read_text().count("\n") == 4


def test_refuses_a_directory_with_another_run(toy, tmp_path, capsys):
    root, checkpoint = toy
    args = train_args(root, checkpoint, tmp_path / "run", "linear", epochs=1)
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "holds another run" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_config_errors_name_the_key(toy, tmp_path, capsys):
    root, checkpoint = toy
    config = tmp_path / "run.yaml"
    config.write_text("method: lora\nlerning_rate: 0.1\n")
    args = train_args(root, checkpoint, tmp_path / "run", "lora") + ["--config", str(config)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "lerning_rate" in err and len(err.strip().splitlines()) == 1
    assert main(train_args(root, checkpoint, tmp_path / "r2", "lora", epohcs=3)) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err
    assert main(train_args(root, checkpoint, tmp_path / "r3", "heart-lora", ne=6)) == 2
    assert "ne=6" in capsys.readouterr().err
    assert main(train_args(root, checkpoint, tmp_path / "r4", "heart_lora")) == 2
    assert "did you mean 'heart-lora'" in capsys.readouterr().err
