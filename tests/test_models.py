"""The bundled base model: timm registration, checkpoint loading through timm, head reset."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.data import resolve_data_config
from timm.models import _builder

import heartlora.bundled.model as models
from heartlora.bundled.model import BASE_CHECKPOINT, BASE_MODEL_NAME, create_bundled_model
from heartlora.errors import HeartLoRAError


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any timm download path fail, so a test proves the weights came from a local file."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("timm tried to download weights")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(_builder, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(_builder, "load_state_dict_from_hf", refuse)
    monkeypatch.setattr(_builder, "download_cached_file", refuse)


@pytest.fixture
def checkpoint(tmp_path) -> tuple[str, dict[str, torch.Tensor]]:
    """A checkpoint of a randomly initialised base model, written where timm can load it."""
    torch.manual_seed(1)
    state = timm.create_model(BASE_MODEL_NAME, pretrained=False).state_dict()
    path = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path), load_file(str(path))


def test_registered_model_has_the_documented_architecture():
    assert BASE_MODEL_NAME in timm.list_models()
    assert f"{BASE_MODEL_NAME}.fmnist" in timm.list_pretrained()
    model = timm.create_model(BASE_MODEL_NAME, pretrained=False)
    assert model.embed_dim == 96
    assert len(model.blocks) == 6
    assert model.blocks[0].attn.num_heads == 6
    assert model.patch_embed.patch_size == (4, 4)
    assert 0.6e6 < sum(p.numel() for p in model.parameters()) < 0.75e6
    assert model(torch.rand(2, 3, 28, 28)).shape == (2, 10)


def test_pretrained_cfg_says_unnormalised_28px_rgb():
    model = timm.create_model(BASE_MODEL_NAME, pretrained=False)
    data_config = resolve_data_config({}, model=model)
    assert data_config["input_size"] == (3, 28, 28)
    assert tuple(data_config["mean"]) == (0.0, 0.0, 0.0)
    assert tuple(data_config["std"]) == (1.0, 1.0, 1.0)
    assert model.pretrained_cfg["file"] == str(BASE_CHECKPOINT)


def test_timm_file_path_loads_a_checkpoint_exactly(checkpoint, no_network):
    path, expected = checkpoint
    model = timm.create_model(
        BASE_MODEL_NAME, pretrained=True, pretrained_cfg_overlay=dict(file=path)
    )
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name


def test_other_num_classes_resets_only_the_head(checkpoint, no_network):
    path, expected = checkpoint
    model = timm.create_model(
        BASE_MODEL_NAME, pretrained=True, pretrained_cfg_overlay=dict(file=path), num_classes=37
    )
    assert model.head.weight.shape == (37, 96)
    assert torch.equal(model.blocks[3].attn.qkv.weight, expected["blocks.3.attn.qkv.weight"])
    assert torch.equal(model.pos_embed, expected["pos_embed"])
    headless = timm.create_model(
        BASE_MODEL_NAME, pretrained=True, pretrained_cfg_overlay=dict(file=path), num_classes=0
    )
    assert headless(torch.rand(1, 3, 28, 28)).shape == (1, 96)


def test_bundled_checkpoint_loads_offline_and_matches_the_file(no_network):
    assert BASE_CHECKPOINT.is_file(), f"package asset {BASE_CHECKPOINT} is missing"
    assert BASE_CHECKPOINT.stat().st_size < 5_000_000
    expected = load_file(str(BASE_CHECKPOINT))
    for model in (timm.create_model(BASE_MODEL_NAME, pretrained=True), create_bundled_model()):
        state = model.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[name], tensor) for name, tensor in expected.items())
    reset = create_bundled_model(num_classes=4)
    assert reset.head.out_features == 4
    assert torch.equal(reset.blocks[0].attn.qkv.weight, expected["blocks.0.attn.qkv.weight"])


def test_missing_bundled_checkpoint_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "BASE_CHECKPOINT", tmp_path / "gone.safetensors")
    with pytest.raises(HeartLoRAError, match="gone.safetensors"):
        create_bundled_model()
    assert create_bundled_model(pretrained=False).head.out_features == 10


def test_negative_num_classes_is_rejected():
    with pytest.raises(HeartLoRAError, match="num_classes"):
        create_bundled_model(num_classes=-1, pretrained=False)
