"""Bad input gets one clear line; faults lose nothing (see docs/reliability.md)."""

import json

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from train_fixtures import make_base_checkpoint, make_learnable_task, train_args

import heartlora.training.trainer as train_module
from heartlora.cli import main
from heartlora.errors import HeartLoRAError
from heartlora.training.config import build_config, known_keys


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_learnable_task(root)
    return root, make_base_checkpoint(root / "base.safetensors")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("heartlora: error: "), err
    assert "Traceback" not in err
    return err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(toy, tmp_path, monkeypatch, capsys):
    root, checkpoint = toy
    original = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def diverging(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 4 else loss  # epoch 1 = 3 steps, fine

    monkeypatch.setattr(train_module.F, "cross_entropy", diverging)
    out = tmp_path / "run"
    assert main(train_args(root, checkpoint, out, "lora", epochs=3)) == 2
    err = _one_line_error(capsys)
    assert "loss became nan at epoch 2" in err and "checkpoint.pt" in err
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["progress"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["trainable"].values())
    assert not (out / "result.json").exists()


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


def test_debug_shows_the_traceback(toy, tmp_path):
    root, checkpoint = toy
    with pytest.raises(HeartLoRAError):
        main(["--debug", *train_args(tmp_path / "nowhere", checkpoint, tmp_path / "r", "lora")])


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 300),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.sampled_from(["q", "k", "v", "proj", "x"]), max_size=4),
)
_keys = st.one_of(st.sampled_from(known_keys()), st.text(min_size=1, max_size=10))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.dictionaries(_keys, _values, max_size=6))
def test_random_configs_are_accepted_or_rejected_cleanly(tmp_path, data):
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        build_config(path)
    except HeartLoRAError as error:
        assert "\n" not in str(error)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.dictionaries(_keys, _values, max_size=4),
    extra=st.lists(st.text(min_size=1, max_size=8), max_size=3),
)
def test_random_cli_input_never_crashes(tmp_path, capsys, data, extra):
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump({**data, "data_root": str(tmp_path / "absent")}))
    code = main(
        [
            "train",
            "--config",
            str(path),
            "--output-dir",
            str(tmp_path / "o"),
            "--overwrite",
            *[f"--set={item}" for item in extra],
        ]
    )
    assert code == 2
    _one_line_error(capsys)


def test_image_too_small_or_grey_is_fine(tmp_path):
    # grey 10×12 PNGs are resized and converted: not an error
    image = tmp_path / "x.png"
    Image.new("L", (10, 12), 3).save(image)
    from heartlora.data.base import open_image

    assert open_image(image).mode == "RGB"


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from heartlora.atomic import atomic_write, atomic_write_text

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
