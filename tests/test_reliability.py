"""Bad input gets one clear line; faults lose nothing (see docs/reliability.md)."""

import errno
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from train_fixtures import make_learnable_task, train_args

import heartlora.training.trainer as train_module
from heartlora.cli import main
from heartlora.errors import HeartLoRAError
from heartlora.training.run_directory import CONFIG_HEADER, lock_run_directory
from heartlora.training.run_state import CHECKPOINT_FORMAT


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("heartlora: error: "), err
    assert "Traceback" not in err
    return err


class _TrainerFunctional:
    """torch.nn.functional as the trainer sees it, with some functions replaced."""

    def __init__(self, **replaced) -> None:
        self.__dict__.update(replaced)

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)


def _patch_trainer_loss(monkeypatch, loss) -> None:
    """Give the trainer alone ``loss`` as its ``F.cross_entropy``. Patching
    torch.nn.functional itself also reached every module that first ran
    ``from torch.nn.functional import cross_entropy`` while the patch held (the CLI's first
    ``main`` imports heartlora.commands.heads), which kept the patched loss after the test:
    NaN head scores in every later test of the process."""
    monkeypatch.setattr(train_module, "F", _TrainerFunctional(cross_entropy=loss))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(toy, tmp_path, monkeypatch, capsys):
    root, checkpoint = toy
    original = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def diverging(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 4 else loss  # epoch 1 = 3 steps, fine

    _patch_trainer_loss(monkeypatch, diverging)
    out = tmp_path / "run"
    assert main(train_args(root, checkpoint, out, "lora", epochs=3)) == 2
    assert torch.nn.functional.cross_entropy is original  # the patch reached the trainer alone
    err = _one_line_error(capsys)
    assert "loss became nan at epoch 2" in err and "checkpoint.pt" in err
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["progress"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["trainable"].values())
    assert not (out / "result.json").exists()


def test_ctrl_c_after_a_diverged_step_keeps_the_last_good_checkpoint(
    toy, tmp_path, monkeypatch, capsys
):
    """A step's loss is read one step late: when Ctrl-C lands before the next step reads it,
    the interrupted run reads it then, and saves nothing if it was not finite."""
    root, checkpoint = toy
    original = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def nan_then_ctrl_c(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2, step 3: inside the step after the diverged one
            raise KeyboardInterrupt
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    _patch_trainer_loss(monkeypatch, nan_then_ctrl_c)
    out = tmp_path / "run"
    assert main(train_args(root, checkpoint, out, "lora", epochs=3)) == 130
    logged = capsys.readouterr().out
    assert "interrupted after a step that diverged: loss became nan at epoch 2 step 2" in logged
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["progress"]["epoch"] == 1 and state["progress"]["step_in_epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["trainable"].values())


def _task_with_truncated_image(root, name: str):
    """The toy task under ``root`` with training image ``name`` cut after 40 bytes."""
    make_learnable_task(root)
    victim = root / "toy" / "images" / "train800" / name
    victim.write_bytes(victim.read_bytes()[:40])
    return root


def test_corrupt_image_is_an_error_or_skipped_and_counted(toy, tmp_path, capsys):
    _, checkpoint = toy
    broken_root = _task_with_truncated_image(tmp_path / "data", "0003.png")
    args = train_args(broken_root, checkpoint, tmp_path / "strict", "linear", epochs=1)
    assert main(args) == 2
    assert "0003.png" in _one_line_error(capsys)
    args = train_args(
        broken_root, checkpoint, tmp_path / "skip", "linear", epochs=1, skip_corrupt=True
    )
    assert main(args) == 0
    result = json.loads((tmp_path / "skip" / "result.json").read_text())
    assert result["skipped_images"] == 1 and result["train_images"] == 47


def test_checkpoint_of_another_model_is_refused(toy, tmp_path, capsys):
    root, _ = toy
    alien = tmp_path / "alien.safetensors"
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3, 3)}, str(alien))
    assert main(train_args(root, alien, tmp_path / "run", "lora", epochs=1)) == 2
    assert "alien.safetensors" in _one_line_error(capsys)


def test_missing_dataset_and_bad_cli_values(toy, tmp_path, capsys):
    root, checkpoint = toy
    assert main(train_args(tmp_path / "nowhere", checkpoint, tmp_path / "run", "lora")) == 2
    assert "nowhere" in _one_line_error(capsys)
    assert main(train_args(root, checkpoint, tmp_path / "r", "lora", scorer="tayler")) == 2
    assert "did you mean 'taylor'" in _one_line_error(capsys)
    assert main(train_args(root, checkpoint, tmp_path / "r", "lora") + ["--resume"]) == 2
    assert "nothing to resume" in _one_line_error(capsys)


def test_resume_with_other_settings_is_refused(toy, tmp_path, capsys):
    root, checkpoint = toy
    out = tmp_path / "run"
    assert main(train_args(root, checkpoint, out, "lora", epochs=1)) == 0
    capsys.readouterr()
    assert main(train_args(root, checkpoint, out, "lora", epochs=1, rank=4) + ["--resume"]) == 2
    assert "rank" in _one_line_error(capsys)


def _own_copy_of_the_task(toy, tmp_path) -> Path:
    """A copy of the toy data root whose split files a test may change."""
    root, _ = toy
    copy = tmp_path / "data"
    shutil.copytree(root / "toy", copy / "toy")
    return copy


@pytest.mark.parametrize(
    ("split", "change", "expected"),
    [
        ("train800", "halve", "the training data changed since the run started"),
        ("train800", "permute", "the same 32 images, but other paths, labels or order"),
        ("test", "halve", "the evaluation data changed since the run started"),
    ],
)
def test_resume_on_changed_data_is_refused_naming_what_changed(
    toy, tmp_path, capsys, split, change, expected
):
    """An interrupted run resumed on a split file cut in half, or with every label permuted,
    used to train its remaining epochs on the other data and report its image count."""
    _, checkpoint = toy
    root = _own_copy_of_the_task(toy, tmp_path)
    out = tmp_path / "run"
    args = train_args(root, checkpoint, out, "lora", epochs=1, train_split="train800")
    assert main(args) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["data"]["train"]["images"] == 32
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    split_file = root / "toy" / f"{split}.txt"
    lines = split_file.read_text().splitlines()
    if change == "halve":
        lines = lines[: len(lines) // 2]
    else:
        labels = [line.rsplit(" ", 1)[1] for line in lines]
        labels = labels[1:] + labels[:1]
        lines = [f"{line.rsplit(' ', 1)[0]} {label}" for line, label in zip(lines, labels)]
    split_file.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = _one_line_error(capsys)
    assert expected in err and "checkpoint.pt" in err and f"{split}.txt" in err, err
    after = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    after.pop(out / ".heartlora-run.lock", None)
    before.pop(out / ".heartlora-run.lock", None)
    assert after == before


def test_resume_with_other_num_workers_is_accepted_other_threads_refused(toy, tmp_path, capsys):
    """Loader workers cannot change a run's result (each image draws from its own seed), so
    they do not block a resume on another machine; the CPU thread count changes the rounding
    of torch's reductions (1e-8 in the adapter weights), so a resume with other ``threads``
    would not be the run's bit-for-bit continuation and stays refused."""
    root, checkpoint = toy
    out = tmp_path / "run"
    assert main(train_args(root, checkpoint, out, "linear", epochs=1)) == 0
    capsys.readouterr()
    resumed = train_args(root, checkpoint, out, "linear", epochs=1, num_workers=1)
    assert main([*resumed, "--resume"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    resumed = train_args(root, checkpoint, out, "linear", epochs=1, threads=2)
    assert main([*resumed, "--resume"]) == 2
    assert "(threads)" in _one_line_error(capsys)


def test_debug_shows_the_traceback(toy, tmp_path):
    root, checkpoint = toy
    with pytest.raises(HeartLoRAError):
        main(["--debug", *train_args(tmp_path / "nowhere", checkpoint, tmp_path / "r", "lora")])


def test_image_too_small_or_grey_is_fine(tmp_path):
    # grey 10×12 PNGs are resized and converted: not an error
    image = tmp_path / "x.png"
    Image.new("L", (10, 12), 3).save(image)
    from heartlora.data.base import open_image

    assert open_image(image).mode == "RGB"


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from heartlora.io.atomic import atomic_write, atomic_write_text

    target = atomic_write_text(tmp_path / "result.json", "old")

    def half_then_crash(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_errors_from_dataloader_workers_keep_their_message(toy, tmp_path, capsys):
    _, checkpoint = toy
    broken_root = _task_with_truncated_image(tmp_path / "data", "0005.png")
    args = train_args(broken_root, checkpoint, tmp_path / "run", "linear", epochs=1, num_workers=1)
    assert main(args) == 2
    assert "0005.png" in _one_line_error(capsys)


# --- round two (issue 12): every listed case, then the faults ------------------------------------


def _snapshot(folder):
    """Every file under ``folder`` with its bytes (and every folder)."""
    return {
        str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
        for path in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def finished(toy, tmp_path_factory):
    """A finished one-epoch lora run."""
    root, checkpoint = toy
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(train_args(root, checkpoint, out, "lora", epochs=1)) == 0
    return out


def _task_with_one_more_training_label(tmp_path, label: int):
    """A fresh toy task whose training split gains one image (line 49) with ``label``."""
    root = make_learnable_task(tmp_path / "data")
    split = root / "toy" / "train800val200.txt"
    shutil.copy(root / "toy" / "images" / "train800" / "0000.png", root / "toy" / "extra.png")
    split.write_text(split.read_text() + f"extra.png {label}\n")
    return root, split


def test_labels_are_checked_against_the_class_count_a_task_pins(toy, tmp_path, capsys):
    _, checkpoint = toy
    root, split = _task_with_one_more_training_label(tmp_path, 4999)
    assert main(train_args(root, checkpoint, tmp_path / "a", "lora", epochs=1)) == 2
    err = _one_line_error(capsys)
    assert f"{split} line 49: label 4999 implies 5000 classes" in err and "num_classes" in err
    assert main(train_args(root, checkpoint, tmp_path / "b", "lora", num_classes=3)) == 2
    assert f"{split} line 49: label 4999 is out of range (expected 0..2" in _one_line_error(capsys)
    manifest = root / "toy" / "manifest.json"
    manifest.write_text(json.dumps({"task": "toy", "num_classes": 10}))
    assert main(train_args(root, checkpoint, tmp_path / "c", "lora")) == 2
    assert f"0..9: {manifest} says 10 classes" in _one_line_error(capsys)
    assert main(train_args(root, checkpoint, tmp_path / "d", "lora", num_classes=3)) == 2
    assert f"{manifest}: num_classes is 10, but num_classes=3" in _one_line_error(capsys)
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_split_file_paths_that_leave_the_task_folder_are_refused(toy, tmp_path, capsys):
    _, checkpoint = toy
    root = make_learnable_task(tmp_path / "data")
    (tmp_path / "secret.png").write_bytes((root / "toy/images/test/0000.png").read_bytes())
    split = root / "toy" / "test.txt"
    split.write_text(split.read_text() + "../../secret.png 1\n")
    assert main(train_args(root, checkpoint, tmp_path / "run", "lora", epochs=1)) == 2
    err = _one_line_error(capsys)
    assert f"{split} line 25: image path" in err and "leaves" in err


def test_one_label_for_every_image_is_refused_before_heads_are_scored(toy, tmp_path, capsys):
    _, checkpoint = toy
    root = make_learnable_task(tmp_path / "data")
    for name in ("train800.txt", "train800val200.txt"):
        split = root / "toy" / name
        lines = [line.rsplit(" ", 1)[0] + " 1" for line in split.read_text().splitlines()]
        split.write_text("\n".join(lines) + "\n")
    args = train_args(root, checkpoint, tmp_path / "run", "heart-lora", ne=2, num_classes=3)
    assert main(args) == 2
    err = _one_line_error(capsys)
    assert "every training image has label 1" in err and "taylor" not in err


@pytest.mark.parametrize("method", ["heart-lora", "lora"])
def test_a_diverging_run_says_so(toy, tmp_path, capsys, method):
    root, checkpoint = toy
    out = tmp_path / "run"
    assert main(train_args(root, checkpoint, out, method, epochs=2, ne=2, lr="1e9")) == 2
    err = _one_line_error(capsys)
    assert "try a lower lr or scale" in err
    assert "scores of shape" not in err and "needs trained adapters" not in err
    if "checkpoint.pt" in err:  # only ever named when it holds a finished epoch
        assert torch.load(out / "checkpoint.pt", weights_only=True)["progress"]["epoch"] >= 1


def test_config_and_cli_mistakes_are_one_line(toy, tmp_path, capsys):
    root, checkpoint = toy
    (tmp_path / "a.yaml").write_text("base: b.yaml\nlr: 0.1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    args = train_args(root, checkpoint, tmp_path / "run", "lora")
    assert main([*args, "--config", str(tmp_path / "a.yaml")]) == 2
    assert "is a cycle" in _one_line_error(capsys)
    assert main([*args, "--device", "tpu"]) == 2
    assert "device: unknown value 'tpu'" in _one_line_error(capsys)
    empty = [a if a != str(tmp_path / "run") else "" for a in args]
    assert main(empty) == 2
    assert "--output-dir: expected a folder path" in _one_line_error(capsys)
    assert main([*args, "--epochs", "three"]) == 2
    assert "invalid int value: 'three'" in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_a_users_config_yaml_is_replaced_only_with_overwrite(toy, tmp_path, capsys):
    root, checkpoint = toy
    out = tmp_path / "run"
    out.mkdir()
    mine = "# my settings, with comments\nlr: 0.5\n"
    (out / "config.yaml").write_text(mine)
    args = train_args(root, checkpoint, out, "lora", epochs=1)
    assert main(args) == 2
    assert "config.yaml was not written by heartlora train" in _one_line_error(capsys)
    assert (out / "config.yaml").read_text() == mine
    assert main([*args, "--overwrite"]) == 0
    written = (out / "config.yaml").read_text()
    assert written.startswith(CONFIG_HEADER) and yaml.safe_load(written)["lr"] == 0.003
    # a config.yaml of a run that died before its first checkpoint is ours to replace
    for name in ("checkpoint.pt", "metrics.csv", "result.json", "adapter", "tensorboard"):
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    assert main(args) == 0


def test_overwrite_checks_data_and_model_before_deleting_anything(toy, tmp_path, finished, capsys):
    _, checkpoint = toy
    before = _snapshot(finished)
    mistyped = train_args(tmp_path / "dta", checkpoint, finished, "lora", epochs=1)
    assert main([*mistyped, "--overwrite"]) == 2
    assert "dta" in _one_line_error(capsys)
    alien = tmp_path / "alien.safetensors"
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3, 3)}, str(alien))
    root, _ = toy
    assert main([*train_args(root, alien, finished, "lora", epochs=1), "--overwrite"]) == 2
    assert "alien.safetensors" in _one_line_error(capsys)
    assert _snapshot(finished) == before


def test_checkpoints_are_read_without_unpickling_code(toy, tmp_path, finished, capsys):
    root, checkpoint = toy
    state = torch.load(finished / "checkpoint.pt", weights_only=True)
    assert state["format"] == CHECKPOINT_FORMAT and state["progress"]["epoch"] == 1
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    args = [*train_args(root, checkpoint, out, "lora", epochs=1), "--resume"]
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("pwned",))

    torch.save({**state, "trojan": Payload()}, out / "checkpoint.pt")
    assert main(args) == 2
    assert "refused: not a heartlora checkpoint" in _one_line_error(capsys)
    assert not marker.exists()
    torch.save({k: v for k, v in state.items() if k != "format"}, out / "checkpoint.pt")
    assert main(args) == 2
    assert "not a heartlora checkpoint (format None" in _one_line_error(capsys)
    torch.save({**state, "rng": {"torch": torch.zeros(3)}}, out / "checkpoint.pt")
    assert main(args) == 2
    assert "damaged checkpoint" in _one_line_error(capsys)
    (out / "checkpoint.pt").write_bytes(b"\x00" * 10)
    assert main(args) == 2
    assert "cannot read checkpoint" in _one_line_error(capsys)


def test_a_damaged_adapter_is_one_line_in_every_tool(toy, tmp_path, finished, capsys):
    adapter = tmp_path / "adapter"
    shutil.copytree(finished / "adapter", adapter)
    weights = adapter / "heartlora_adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    image = str(toy[0] / "toy" / "images" / "test" / "0000.png")
    for argv in (
        ["heads", "--adapter", str(adapter), "--output-dir", str(tmp_path / "h")],
        [
            "export",
            "--adapter",
            str(adapter),
            "--format",
            "peft",
            "--output-dir",
            str(tmp_path / "e"),
        ],
        ["predict", "--adapter", str(adapter), image],
    ):
        assert main(argv) == 2, argv
        assert f"{weights}: cannot read adapter weights" in _one_line_error(capsys)
    config = adapter / "heartlora_config.json"
    data = json.loads(config.read_text())
    data["config"]["scale"] = None
    config.write_text(json.dumps(data))
    assert main(["export", "--adapter", str(adapter), "--format", "peft", "--output-dir", "x"]) == 2
    assert f"{config}: config.scale must be a number, got None" in _one_line_error(capsys)


def _tool_commands(adapter: Path, image: str, tmp_path: Path) -> list[list[str]]:
    """`heads`, `export` (both formats) and `predict` on ``adapter``."""
    return [
        ["heads", "--adapter", str(adapter), "--output-dir", str(tmp_path / "h")],
        ["export", "--adapter", str(adapter), "--format", "peft"]
        + ["--output-dir", str(tmp_path / "p"), "--overwrite"],
        ["export", "--adapter", str(adapter), "--format", "merged"]
        + ["--output-dir", str(tmp_path / "m"), "--overwrite"],
        ["predict", "--adapter", str(adapter), image],
    ]


def test_the_tools_take_a_run_folder_and_say_what_other_methods_stored(
    toy, tmp_path, finished, capsys
):
    """`predict`, `heads` and `export` used to refuse the run folder (the form the docs show).
    Then every peft run was described as "a peft LoRA adapter (method peft-lora)" with an
    importer of plain LoRA as the recipe, and a bitfit run's biases as a linear or full run's
    weights. `heads` reads heartlora adapters only: on another run it names the run's method,
    what it stored and a recipe for that method (`predict` and `export` take those runs:
    tests/test_runs.py)."""
    root, checkpoint = toy
    image = str(root / "toy" / "images" / "test" / "0000.png")
    for argv in _tool_commands(finished, image, tmp_path):
        assert main(argv) == 0, (argv, capsys.readouterr().err)
    capsys.readouterr()
    expected = {
        "full": ("the whole fine-tuned model", "load_state_dict"),
        "linear": ("the classifier alone", "strict=False"),
        "bitfit": ("every bias and the classifier", "strict=False"),
        "peft-dora": ("a peft adapter", "PeftModel.from_pretrained"),
    }
    heads = ["heads", "--output-dir", str(tmp_path / "h"), "--adapter"]
    for method, phrases in expected.items():
        run = tmp_path / method
        rank = None if method in ("bitfit", "full", "linear") else 2
        assert main(train_args(root, checkpoint, run, method, epochs=1, rank=rank)) == 0
        capsys.readouterr()
        for folder in (run, run / "adapter"):
            assert main([*heads, str(folder)]) == 2
            err = _one_line_error(capsys)
            assert f"{run / 'adapter'}: holds what a `{method}` run stores" in err, err
            assert all(p in err for p in phrases) and "vit_mini_patch4_28" in err, err
            assert f"heartlora.tools.runs.load_run_model({str(run)!r})" in err, err
        assert "peft-lora" not in err and "import_peft_adapter" not in err, err
    moved = tmp_path / "copied-adapter"
    shutil.copytree(tmp_path / "peft-dora" / "adapter", moved)
    assert main([*heads, str(moved)]) == 2
    err = _one_line_error(capsys)
    assert "no run config.yaml beside it, so the method that stored it is unknown" in err, err


@pytest.mark.slow
def test_a_merged_export_loads_in_plain_timm_and_predicts_as_heartlora(toy, tmp_path, capsys):
    """An adapter trained with its own `normalize` used to be exported without it: timm's
    config (mean 0, std 1) changed most predictions. The recorded and printed loading line
    now builds the model in plain timm with the preprocessing in its pretrained_cfg."""
    root, checkpoint = toy
    run = tmp_path / "run"
    normalize = "[[0.9, 0.1, 0.5], [0.05, 0.3, 0.1]]"
    assert main(train_args(root, checkpoint, run, "lora", epochs=1, normalize=normalize)) == 0
    out = tmp_path / "merged"
    argv = ["export", "--adapter", str(run), "--format", "merged", "--output-dir", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    info = json.loads((out / "timm_model.json").read_text())
    assert f"load it with: {info['load']}" in printed
    assert info["pretrained_cfg"]["mean"] == [0.9, 0.1, 0.5]
    assert info["pretrained_cfg"]["input_size"] == [3, 28, 28]
    images = sorted((root / "toy" / "images" / "test").glob("*.png"))
    assert main(["predict", "--adapter", str(run), "--json", *map(str, images)]) == 0
    expected = json.loads(capsys.readouterr().out)["predictions"]
    code = f"""
import json, sys, timm.data, torch
from PIL import Image
{info["load"]}
model.eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in sys.argv[1:]])
with torch.no_grad():
    probabilities = model(batch).softmax(-1)
print(json.dumps([probabilities.max(-1).values.tolist(), probabilities.argmax(-1).tolist()]))
"""
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, images)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    probabilities, classes = json.loads(done.stdout)
    assert classes == [row["class"] for row in expected]
    assert probabilities == pytest.approx([row["probability"] for row in expected], abs=1e-5)


def test_an_export_is_replaced_only_with_overwrite(tmp_path, finished, capsys):
    argv = ["export", "--adapter", str(finished / "adapter"), "--format", "merged"]
    argv += ["--output-dir", str(tmp_path / "merged")]
    assert main(argv) == 0
    weights = tmp_path / "merged" / "model.safetensors"
    before = weights.read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    assert f"{weights} exists" in _one_line_error(capsys) and weights.read_bytes() == before
    assert main([*argv, "--overwrite"]) == 0


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path):
    from heartlora.io.atomic import atomic_write, atomic_write_text

    target = atomic_write_text(tmp_path / "checkpoint.pt", "old")

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        atomic_write(target, full)
    assert info.value.filename == str(target) and info.value.errno == errno.ENOSPC
    assert "No space left on device" in info.value.strerror and target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


@pytest.mark.slow
def test_a_file_size_limit_during_training_is_one_line_naming_the_file(toy, tmp_path):
    """The issue's probe: a process that may not write big files (as a full disk)."""
    root, checkpoint = toy
    out = tmp_path / "run"
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (8000, 8000))\n"
        "from heartlora.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = train_args(root, checkpoint, out, "lora", epochs=1)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert f"{out / 'checkpoint.pt'}: cannot write (File too large)" in lines[0]
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_a_closed_stdout_does_not_stop_training(toy, tmp_path):
    root, checkpoint = toy
    out = tmp_path / "run"
    args = " ".join(shlex.quote(a) for a in train_args(root, checkpoint, out, "lora", epochs=4))
    command = (
        f"{shlex.quote(sys.executable)} -m heartlora {args} | head -1; exit ${{PIPESTATUS[0]}}"
    )
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert len(done.stdout.splitlines()) == 1 and (out / "result.json").is_file()


def test_a_closed_stdout_ends_other_commands_quietly(tmp_path, finished, capsys, monkeypatch):
    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    argv = ["export", "--adapter", str(finished / "adapter"), "--format", "peft"]
    assert main([*argv, "--output-dir", str(tmp_path / "p")]) == 141
    assert capsys.readouterr().err == ""


def test_one_run_at_a_time_in_a_directory(toy, tmp_path, capsys):
    root, checkpoint = toy
    out = tmp_path / "run"
    with lock_run_directory(out):
        assert main(train_args(root, checkpoint, out, "lora", epochs=1)) == 2
        assert "is in use by another heartlora run" in _one_line_error(capsys)
    assert main(train_args(root, checkpoint, out, "lora", epochs=1)) == 0


def test_stale_temporary_files_are_removed_and_nothing_else(toy, tmp_path, finished):
    root, checkpoint = toy
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    ours = [out / ".checkpoint.pt.k2j_9x.tmp", out / "adapter" / ".heartlora_config.json.a1.tmp"]
    kept = [out / ".notes.tmp", out / ".checkpoint.pt.tmp", out / "checkpoint.pt.a1.tmp"]
    for path in ours + kept:
        path.write_text("left over")
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    (out / ".result.json.lnk.tmp").symlink_to(outside)
    assert main([*train_args(root, checkpoint, out, "lora", epochs=1), "--resume"]) == 0
    assert not any(path.exists() for path in ours)
    assert all(path.exists() for path in kept) and outside.read_text() == "keep"


def test_a_failed_peft_save_is_one_line_naming_the_folder(toy, tmp_path, monkeypatch, capsys):
    """peft writes its adapter with safetensors, which reports a full disk in its own type."""
    import peft

    class SafetensorError(Exception):
        pass

    def full_disk(self, *args, **kwargs):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )

    root, checkpoint = toy
    out = tmp_path / "run"
    monkeypatch.setattr(peft.PeftModel, "save_pretrained", full_disk)
    assert main(train_args(root, checkpoint, out, "peft-lora", epochs=1)) == 2
    err = _one_line_error(capsys)
    assert f"{out / 'adapter'}: cannot write the peft adapter" in err and "No space" in err
    assert not (out / "result.json").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".adapter")) == []


# --- round three (docs/reliability.md): every file checked whole, every value in range, one
# error boundary, each adapter its own preprocessing ---------------------------------------------


@pytest.mark.parametrize(
    "item, message",
    [
        ("rank=100000000", "rank 100000000 exceeds the model's width 96"),
        ("model_kwargs={foo: 1}", "cannot build this architecture with .*foo=1"),
        ("model_kwargs={pretrained_cfg_overlay: {}}", "pretrained_cfg_overlay is set by the run"),
        ("img_size=2", "img_size 2 is smaller than one patch"),
        ("ne=1000", "ne=1000 must be smaller than the heads in every layer"),
        ("model_kwargs={in_chans: 1}", "in_chans is set by the run itself"),
        # the config's own ranges: tests/test_train_config.py
        ("lr=0", "lr must be greater than 0, got 0"),
    ],
)
def test_values_out_of_range_are_one_line_before_anything_is_written(
    toy, tmp_path, capsys, item, message
):
    root, checkpoint = toy
    out = tmp_path / "run"
    assert main([*train_args(root, checkpoint, out, "heart-lora", epochs=1), "--set", item]) == 2
    assert re.search(message, _one_line_error(capsys))
    assert not out.exists()


def test_an_unexpected_exception_is_one_line_with_a_saved_traceback_and_the_folder_untouched(
    toy, tmp_path, capsys, monkeypatch
):
    root, checkpoint = toy
    out = tmp_path / "run"

    def broken_step(*_args, **_kwargs):
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(train_module.Trainer, "_train_step", broken_step)
    assert main(train_args(root, checkpoint, out, "lora", epochs=1)) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "internal error: RuntimeError: something nobody foresaw" in err
    saved = Path(re.search(r"traceback saved in (\S+),", err).group(1))
    assert "Traceback" in saved.read_text() and "broken_step" in saved.read_text()
    saved.unlink()
    assert not out.exists()  # the failed start left nothing: the corrected rerun needs no flag
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    assert main(train_args(root, checkpoint, existing, "lora", epochs=1)) == 1
    Path(re.search(r"saved in (\S+),", capsys.readouterr().err).group(1)).unlink()
    assert sorted(p.name for p in existing.iterdir()) == [".heartlora-run.lock", "notes.txt"]


def test_split_files_with_a_bom_or_a_repeated_image_are_one_line(toy, tmp_path, capsys):
    _, checkpoint = toy
    root = make_learnable_task(tmp_path / "data")
    split = root / "toy" / "train800val200.txt"
    text = split.read_text()
    split.write_text("\ufeff" + text, encoding="utf-8")
    assert main(train_args(root, checkpoint, tmp_path / "a", "lora", epochs=1)) == 2
    assert "byte-order mark" in _one_line_error(capsys)
    split.write_text(text + text.splitlines()[0] + "\n")
    assert main(train_args(root, checkpoint, tmp_path / "b", "lora", epochs=1)) == 2
    assert "is listed again (first at line 1" in _one_line_error(capsys)


def test_a_huge_label_without_a_manifest_is_one_line_without_exhausting_memory(
    toy, tmp_path, capsys
):
    _, checkpoint = toy
    root, split = _task_with_one_more_training_label(tmp_path, 1000000000000)
    assert main(train_args(root, checkpoint, tmp_path / "a", "lora", epochs=1)) == 2
    assert "implies 1000000000001 classes, but 999999999997 of them (3, 4, 5, ...)" in (
        _one_line_error(capsys)
    )


def test_run_folder_mistakes_are_one_line(toy, finished, tmp_path, capsys):
    root, checkpoint = toy
    args = train_args(root, checkpoint, finished, "lora", epochs=1)
    assert main([*args, "--resume", "--overwrite"]) == 2
    assert "--resume and --overwrite contradict" in _one_line_error(capsys)
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    (copy / "config.yaml").unlink()
    other = train_args(root, checkpoint, copy, "heart-lora", epochs=1)
    assert main([*other, "--resume"]) == 2
    assert "config.yaml is missing: --resume compares it" in _one_line_error(capsys)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert main(train_args(root, checkpoint, dangling, "lora", epochs=1)) == 2
    assert "is a symbolic link to" in _one_line_error(capsys)
    below_a_file = tmp_path / "file.txt"
    below_a_file.write_text("x")
    assert main(train_args(root, checkpoint, below_a_file / "run", "lora", epochs=1)) == 2
    assert f"{below_a_file} is not a folder" in _one_line_error(capsys)


def test_output_files_follow_the_umask(toy, tmp_path):
    root, checkpoint = toy
    out = tmp_path / "run"
    assert main(train_args(root, checkpoint, out, "lora", epochs=1)) == 0
    umask = os.umask(0)
    os.umask(umask)
    for name in ("result.json", "config.yaml", "metrics.csv", "adapter/heartlora_config.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_predict_preprocesses_each_adapter_as_it_was_trained(toy, finished, tmp_path, capsys):
    root, checkpoint = toy
    normalized = tmp_path / "normalized"
    spread = "normalize=[[0.2,0.3,0.4],[0.1,0.2,0.3]]"
    assert main([*train_args(root, checkpoint, normalized, "lora", epochs=1), "--set", spread]) == 0
    images = [str(p) for p in sorted((root / "toy" / "images" / "test").glob("*.png"))[:12]]
    capsys.readouterr()

    def probabilities(*adapters: Path) -> dict[str, list[float]]:
        argv = ["predict", "--json", *[f"--adapter={a / 'adapter'}" for a in adapters], *images]
        assert main(argv) == 0
        rows = json.loads(capsys.readouterr().out)["predictions"]
        by_task: dict[str, list[float]] = {}
        for row in rows:
            by_task.setdefault(row["task"], []).append(row["probability"])
        return by_task

    mixed = probabilities(finished, normalized)  # both tasks are "toy": the second is toy#2
    assert probabilities(normalized)["toy"] == pytest.approx(mixed["toy#2"], abs=1e-6)
    assert probabilities(finished)["toy"] == pytest.approx(mixed["toy"], abs=1e-6)


def test_suite_and_frontier_refuse_what_they_cannot_run_before_training(toy, tmp_path, capsys):
    out = tmp_path / "suite"
    base = ["--tasks", "sk-digits", "--data-root", str(tmp_path / "data"), "--epochs", "1"]
    assert main(["suite", *base, "--methods", "lora[method=full]", "--output-dir", str(out)]) == 2
    assert "method cannot be set in brackets" in _one_line_error(capsys)
    assert main(["frontier", *base, "--methods", "lora,peft-lora", "--output-dir", str(out)]) == 2
    assert "nothing to choose" in _one_line_error(capsys)
    assert not (out / "runs").exists() and not (out / "val200").exists()


def test_heads_refuses_a_zero_image_size(finished, capsys):
    assert main(["heads", "--adapter", str(finished / "adapter"), "--img-size", "0"]) == 2
    assert "argument --img-size: expected an integer in 1.." in _one_line_error(capsys)


def test_a_base_checkpoint_with_non_finite_weights_is_refused(toy, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    root, checkpoint = toy
    state = load_file(str(checkpoint))
    state["blocks.1.attn.qkv.weight"][0, 0] = float("inf")
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken))
    assert main(train_args(root, broken, tmp_path / "run", "lora", epochs=1)) == 2
    assert "weight blocks.1.attn.qkv.weight holds NaN or infinite" in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_an_adapter_whose_outputs_overflow_is_refused_not_printed_as_nan(
    toy, finished, tmp_path, capsys
):
    from safetensors.torch import load_file, save_file

    root, _ = toy
    adapter = tmp_path / "adapter"
    shutil.copytree(finished / "adapter", adapter)
    weights = adapter / "heartlora_adapter.safetensors"
    tensors = load_file(str(weights))
    tensors["blocks.2.attn.qkv.lora_A"].fill_(1e38)  # finite, but the forward overflows
    tensors["blocks.2.attn.qkv.lora_B"].fill_(1e38)
    save_file(tensors, str(weights))
    image = str(root / "toy" / "images" / "test" / "0000.png")
    assert main(["predict", "--json", "--adapter", str(adapter), image]) == 2
    assert "outputs are NaN or infinite" in _one_line_error(capsys)
    out = tmp_path / "heads"
    assert main(["heads", "--adapter", str(adapter), "--output-dir", str(out)]) == 2
    assert "attention maps are NaN or infinite" in _one_line_error(capsys)


def test_adapter_metadata_that_contradicts_the_model_is_refused(finished, tmp_path, capsys):
    for key, value, message in [
        ("embed_dim", 48, "embed_dim is 48, the model's width is 96"),
        ("layers", [f"blocks.{i + 10}.attn" for i in range(6)], "attention layer 'blocks.10.attn'"),
        (
            "num_classes",
            10**12,
            "num_classes must be at least 1 and at most 1000000, got 1000000000000",
        ),
    ]:
        adapter = tmp_path / key
        shutil.copytree(finished / "adapter", adapter)
        config = adapter / "heartlora_config.json"
        document = json.loads(config.read_text())
        document[key] = value
        config.write_text(json.dumps(document))
        for command in (["heads"], ["export", "--format", "peft"]):
            out = ["--output-dir", str(tmp_path / f"out-{key}")]
            assert main([*command, "--adapter", str(adapter), *out]) == 2
            assert message in _one_line_error(capsys), (key, command)


def test_sizes_counts_and_folders_of_the_tools_are_checked(toy, finished, tmp_path, capsys):
    root, _ = toy
    adapter = str(finished / "adapter")
    heads = ["heads", "--adapter", adapter, "--output-dir", str(tmp_path / "heads")]
    assert main([*heads, "--img-size", "27"]) == 2
    assert "was trained at 28 px" in _one_line_error(capsys)
    assert main(["speed", "--img-size", "100000"]) == 2
    assert "argument --img-size: expected an integer in 1..4096" in _one_line_error(capsys)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for command in (["export", "--format", "peft"], ["heads"]):
        assert main([*command, "--adapter", adapter, "--output-dir", str(a_file)]) == 2
        assert f"{a_file} is not a folder" in _one_line_error(capsys)
    folder = root / "toy" / "images"
    assert main(["predict", "--adapter", adapter, str(folder)]) == 2
    assert f"image {folder} is a folder" in _one_line_error(capsys)
    assert a_file.read_text() == "x"


def test_suite_counts_and_keys_it_owns_are_checked(tmp_path, capsys):
    base = ["suite", "--tasks", "sk-digits", "--data-root", str(tmp_path / "data")]
    assert main([*base, "--seeds", "1000000000"]) == 2
    assert "--seeds '1000000000': expected a count in 1..1000" in _one_line_error(capsys)
    assert main([*base, "--set", "seed=5"]) == 2
    assert "--set seed: the suite's --seeds choose the seeds" in _one_line_error(capsys)


def test_yaml_aliases_are_refused_before_they_expand(toy, tmp_path, capsys):
    root, checkpoint = toy
    config = tmp_path / "laughs.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    config.write_text("\n".join(lines) + "\nmodel_kwargs: {x: *a8}\n")
    args = train_args(root, checkpoint, tmp_path / "run", "lora", epochs=1)
    assert main([*args, "--config", str(config)]) == 2
    assert f"{config} line 2: alias *a0 is not accepted" in _one_line_error(capsys)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ("{depth: 2}", "hold weights the model lacks \\(first: blocks.2."),
        ("{qkv_bias: false}", "hold weights the model lacks \\(first: blocks.0.attn.qkv.bias"),
    ],
)
def test_timm_pretrained_weights_that_fit_only_in_part_are_refused(
    toy, tmp_path, capsys, kwargs, message
):
    root, _ = toy  # no checkpoint: the bundled base's registered weights, loaded by timm
    args = train_args(root, None, tmp_path / "run", "lora", epochs=1)
    assert main([*args, "--set", f"model_kwargs={kwargs}"]) == 2
    assert re.search(message, _one_line_error(capsys))
    assert not (tmp_path / "run").exists()


def test_a_warm_up_longer_than_the_run_says_where_the_runs_length_comes_from(toy, tmp_path, capsys):
    root, checkpoint = toy  # 48 training images
    args = train_args(root, checkpoint, tmp_path / "run", "heart-lora", epochs=1)
    assert main([*args, "--set", "batch_size=1000"]) == 2
    assert "1 epoch(s) × 1 batch(es) of batch_size 1000 from 48 training images" in (
        _one_line_error(capsys)
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (  # one step: the fitted warm-up is 0 steps, and "train a warm-up first" cannot be done
            {"batch_size": 1000, "calib_warmup_steps": "null"},
            "scorer 'taylor' needs 1 warm-up step(s) before heads are scored, but the warm-up "
            "fitted to this run has 0 (the run's 1 steps are 1 epoch(s) × 1 batch(es) of "
            "batch_size 1000 from 48 training images); expected a run of at least 2 steps",
        ),
        (  # the first warm-up step's sensitivity is zero (B = 0): it used to fail after it
            {
                "batch_size": 1000,
                "epochs": 2,
                "scorer": "sensitivity",
                "calib_warmup_steps": "null",
            },
            "scorer 'sensitivity' needs 2 warm-up step(s) before heads are scored, but the warm-up "
            "fitted to this run has 1",
        ),
        (
            {"scorer": "sensitivity", "calib_warmup_steps": 1},
            "calib_warmup_steps is 1 (the run's 3 steps",
        ),
    ],
)
def test_a_run_too_short_for_its_scorers_warm_up_says_so_before_writing_anything(
    toy, tmp_path, capsys, settings, expected
):
    root, checkpoint = toy
    settings = {"epochs": 1, **settings}
    epochs = settings.pop("epochs")
    args = train_args(root, checkpoint, tmp_path / "run", "heart-lora", epochs=epochs, **settings)
    assert main(args) == 2
    err = _one_line_error(capsys)
    assert expected in err and "a scorer that needs no warm-up: grad-norm" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--epochs", "2", "--bogus", "3"], "unrecognized arguments: --bogus 3 (see heartlora train --help)"),
        (["export", "--adapter", "x", "--frmat", "peft"], "unrecognized arguments: --frmat peft (see heartlora export --help)"),
        (["train", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
        (["train", "--epochs", "2"], "the following arguments are required: --output-dir"),
    ],
)  # fmt: skip
def test_an_unknown_option_is_named_not_a_missing_required_one(argv, expected, capsys):
    """argparse checks required options first: `train --epochs 2 --bogus 3` said only that
    --output-dir was missing."""
    assert main(argv) == 2
    assert expected in _one_line_error(capsys)


def test_version_prints_the_package_version(capsys):
    import heartlora

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"heartlora {heartlora.__version__}\n"


def test_the_program_exits_with_main_s_code_and_freezes_what_is_alive(monkeypatch, capsys):
    """`run_program` (the `heartlora` program) exits with `main`'s code, after freezing what is
    alive out of the garbage collector: the interpreter's last collection is skipped."""
    import gc

    from heartlora.cli import run_program

    monkeypatch.setattr(sys, "argv", ["heartlora", "--version"])
    assert gc.get_freeze_count() == 0
    try:
        with pytest.raises(SystemExit) as stop:
            run_program()
        assert stop.value.code == 0
        assert capsys.readouterr().out.startswith("heartlora ")
        assert gc.get_freeze_count() > 100_000  # torch and timm's objects, at least
    finally:
        gc.unfreeze()


def test_an_unknown_model_is_refused_before_any_warning_about_its_weights(toy, tmp_path, capsys):
    """`train --model vit_smal_patch16_224` first warned that it "starts from random weights"."""
    root, checkpoint = toy
    args = train_args(root, None, tmp_path / "run", "lora", model="vit_smal_patch16_224")
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "random weights" not in captured.out + captured.err
    err = captured.err.strip()
    assert err == (
        "heartlora: error: unknown timm model 'vit_smal_patch16_224' (did you mean "
        "'vit_small_patch16_224'? expected a timm architecture name, e.g. vit_base_patch16_224)"
    )
    assert not (tmp_path / "run").exists()
