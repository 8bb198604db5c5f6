"""Fashion-MNIST reading and base-model pretraining, on tiny synthetic idx files."""

from __future__ import annotations

import gzip
import struct
from itertools import pairwise
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from heartlora.bundled.fashion_mnist import FashionMNIST, load_fashion_mnist, read_idx
from heartlora.bundled.model import BASE_MODEL_NAME
from heartlora.bundled.pretrain import (
    PretrainConfig,
    _augment,
    _lr_factor,
    pretrain,
    save_state_dict,
)
from heartlora.cli import main
from heartlora.errors import HeartLoRAError


def _write_idx(path: Path, tensor: torch.Tensor, compress: bool) -> None:
    header = bytes([0, 0, 0x08, tensor.ndim]) + b"".join(struct.pack(">I", n) for n in tensor.shape)
    raw = header + tensor.to(torch.uint8).numpy().tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _make_split(directory: Path, prefix: str, count: int, seed: int, compress: bool):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 28, 28), generator=generator, dtype=torch.uint8)
    labels = torch.arange(count, dtype=torch.uint8) % 10
    suffix = ".gz" if compress else ""
    _write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
    _write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return images, labels


@pytest.fixture
def tiny_fmnist(tmp_path) -> dict[str, object]:
    """64 training and 20 test images: gzipped train files, raw test files."""
    directory = tmp_path / "fmnist"
    directory.mkdir()
    train = _make_split(directory, "train", 64, seed=0, compress=True)
    test = _make_split(directory, "t10k", 20, seed=1, compress=False)
    return {"dir": directory, "train": train, "test": test}


def test_reader_parses_gzipped_and_raw_idx(tiny_fmnist):
    for split, key in (("train", "train"), ("test", "test")):
        images, labels = load_fashion_mnist(split, tiny_fmnist["dir"])
        expected_images, expected_labels = tiny_fmnist[key]
        assert images.dtype == torch.uint8 and images.shape == expected_images.shape
        assert torch.equal(images, expected_images)
        assert labels.dtype == torch.int64
        assert torch.equal(labels, expected_labels.long())


def test_read_idx_rejects_wrong_type_and_truncation(tmp_path):
    path = tmp_path / "floats-idx1"
    path.write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 2) + b"\0" * 8)
    with pytest.raises(HeartLoRAError, match="type code"):
        read_idx(path)
    path.write_bytes(bytes([0, 0, 0x08, 2]) + struct.pack(">II", 3, 4) + b"\0" * 11)
    with pytest.raises(HeartLoRAError, match="expected 24"):
        read_idx(path)


def test_missing_data_names_the_debian_package(tmp_path, tiny_fmnist):
    with pytest.raises(HeartLoRAError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path / "nowhere")
    (tiny_fmnist["dir"] / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(HeartLoRAError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist("test", tiny_fmnist["dir"])
    with pytest.raises(HeartLoRAError, match="split"):
        load_fashion_mnist("validation", tiny_fmnist["dir"])


def test_dataset_gives_rgb_float_images(tiny_fmnist):
    dataset = FashionMNIST("train", tiny_fmnist["dir"])
    assert len(dataset) == 64
    image, label = dataset[3]
    assert image.shape == (3, 28, 28) and image.dtype == torch.float32
    assert torch.equal(image[0], image[2])
    assert torch.allclose(image[1] * 255, tiny_fmnist["train"][0][3].float())
    assert label == 3


def test_augment_is_a_padded_shift_or_flip_following_the_generator():
    images = torch.randint(1, 256, (8, 28, 28), dtype=torch.uint8)
    first = _augment(images, torch.Generator().manual_seed(5))
    assert first.shape == images.shape and first.dtype == torch.uint8
    assert torch.equal(first, _augment(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, images)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(8):
        candidates = [
            crop
            for top in range(5)
            for left in range(5)
            for crop in (padded[i, top : top + 28, left : left + 28],)
            for crop in (crop, crop.flip(-1))
        ]
        assert any(torch.equal(first[i], crop) for crop in candidates), i


def test_lr_schedule_warms_up_then_decays_to_the_minimum():
    factors = [_lr_factor(step, 100, 10, 0.01) for step in range(100)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in pairwise(factors[9:]))
    assert _lr_factor(100, 100, 10, 0.01) == pytest.approx(0.01)


def test_pretrain_end_to_end_writes_a_timm_loadable_checkpoint(tiny_fmnist, tmp_path):
    output = tmp_path / "out" / "base.safetensors"
    lines: list[str] = []
    config = PretrainConfig(epochs=2, batch_size=32, seed=0, data_dir=str(tiny_fmnist["dir"]))
    result = pretrain(config, output=output, log=lines.append)
    assert output.is_file() and result.output == output
    assert 0.0 <= result.test_accuracy <= 1.0 and len(result.history) == 2
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert list(output.parent.iterdir()) == [output], "temporary file left behind"
    model = timm.create_model(
        BASE_MODEL_NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(output))
    )
    saved = load_file(str(output))
    assert all(torch.equal(model.state_dict()[name], t) for name, t in saved.items())


def test_pretrain_is_deterministic_for_a_seed(tiny_fmnist, tmp_path):
    def run(seed: int, name: str) -> dict[str, torch.Tensor]:
        config = PretrainConfig(
            epochs=1, batch_size=32, seed=seed, data_dir=str(tiny_fmnist["dir"])
        )
        pretrain(config, output=tmp_path / name, log=None)
        return load_file(str(tmp_path / name))

    first, again, other = run(7, "a.safetensors"), run(7, "b.safetensors"), run(8, "c.safetensors")
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["head.weight"], other["head.weight"])


def test_save_state_dict_replaces_an_existing_file(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"old")
    digest = save_state_dict({"w": torch.ones(2, 3)}, path, {"note": "x"})
    assert torch.equal(load_file(str(path))["w"], torch.ones(2, 3))
    assert len(digest) == 64
    assert list(tmp_path.iterdir()) == [path]


def test_invalid_config_is_rejected_before_any_work(tiny_fmnist):
    with pytest.raises(HeartLoRAError, match="epochs"):
        pretrain(PretrainConfig(epochs=0, data_dir=str(tiny_fmnist["dir"])), log=None)
    with pytest.raises(HeartLoRAError, match="num_heads must divide the width 96, got 5"):
        pretrain(PretrainConfig(num_heads=5, data_dir=str(tiny_fmnist["dir"])), log=None)


def test_cli_pretrains_a_base_with_more_heads(tiny_fmnist, tmp_path):
    output = tmp_path / "h12.safetensors"
    argv = ["pretrain", "--output", str(output), "--epochs", "1", "--num-heads", "12"]
    assert main([*argv, "--data-dir", str(tiny_fmnist["dir"]), "--batch-size", "64"]) == 0
    model = timm.create_model(
        BASE_MODEL_NAME,
        num_heads=12,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(output)),
    )
    assert model.blocks[0].attn.num_heads == 12 and model.blocks[0].attn.head_dim == 8
    six = tmp_path / "h6.safetensors"  # same seed and tensors' shapes, other attention
    argv[2] = str(six)
    assert main([*argv[:-2], "--data-dir", str(tiny_fmnist["dir"]), "--batch-size", "64"]) == 0
    assert not torch.equal(
        load_file(str(output))["head.weight"], load_file(str(six))["head.weight"]
    )


def test_cli_pretrain_runs_and_reports_bad_data_dir(tiny_fmnist, tmp_path, capsys):
    output = tmp_path / "cli.safetensors"
    argv = ["pretrain", "--output", str(output), "--epochs", "1", "--batch-size", "64"]
    assert main([*argv, "--data-dir", str(tiny_fmnist["dir"]), "--seed", "3"]) == 0
    assert output.is_file()
    assert "test accuracy" in capsys.readouterr().out
    assert main([*argv, "--data-dir", str(tmp_path / "missing")]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err
