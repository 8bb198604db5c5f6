"""Every timm ViT family with a fused qkv trains and merges exactly, or is refused at `inject`.

Small random-weight configs built with timm. BEiT, SwinV2 and EVA-02 compute their qkv with
``F.linear(x, self.qkv.weight, bias)``, so they train through `HeadLoRAQKV.weight`
(W + s·B·A); the others call ``self.qkv(x)`` and get the fused kernel.
"""

import pytest
import timm
import torch
import torch.nn.functional as F
from tiny_models import randomize_adapters

import heartlora as hl
from heartlora.adapters import HeadLoRAQKV
from heartlora.inject import adapter_modules

VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=4)
SWIN = dict(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(2, 4))

FAMILIES = {
    "vit": ("vit_base_patch16_224", VIT),
    "deit": ("deit_tiny_patch16_224", VIT),
    "deit3": ("deit3_small_patch16_224", VIT),
    "clip-vit": ("vit_base_patch16_clip_224", VIT),
    "swin": ("swin_tiny_patch4_window7_224", SWIN),
    "swinv2": ("swinv2_tiny_window8_256", SWIN),
    "beit": ("beit_base_patch16_224", VIT),
    "eva02": ("eva02_tiny_patch14_224", {**VIT, "img_size": 28, "patch_size": 7}),
}
READS_QKV_WEIGHT = {"swinv2", "beit", "eva02"}


def _build(family: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3, **kwargs).eval()
    if family == "swinv2":
        # timm zero-initialises SwinV2's post-attention norms, so a random model's attention
        # never reaches the output; pretrained weights have non-zero ones.
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if param_name.endswith(("norm1.weight", "norm2.weight")):
                    param.fill_(1.0)
    size = kwargs["img_size"]
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, size, size, generator=generator)
    labels = torch.randint(0, 3, (4,), generator=generator)
    return model, images, labels


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_a_step_and_merges_to_the_live_outputs(family):
    model, images, labels = _build(family)
    with torch.no_grad():
        base = model(images)
    hl.inject(
        model, hl.HeartLoRAConfig(rank=2, targets=("q", "k", "v", "proj"), ne=1, mode="layer")
    )
    layers = hl.find_attention_layers(model)
    assert len(layers) == 2 and all(isinstance(layer.qkv, HeadLoRAQKV) for layer in layers)
    calls = []
    for layer in layers:
        layer.qkv.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        torch.testing.assert_close(model(images), base)  # B = 0: the base model's outputs
    # BEiT, SwinV2 and EVA-02 read qkv.weight (W + s·B·A) instead of calling the adapter
    assert bool(calls) == (family not in READS_QKV_WEIGHT)

    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    for name, adapter in adapter_modules(model):
        assert adapter.lora_B.grad is not None and adapter.lora_B.grad.abs().sum() > 0, name
    trainable = [p for p in model.parameters() if p.requires_grad]
    torch.optim.SGD(trainable, lr=0.05).step()
    with torch.no_grad():
        assert F.cross_entropy(model(images), labels) < loss

    scores = torch.rand(len(layers), max(layer.num_heads for layer in layers))
    for row, layer in zip(scores, layers):
        row[layer.num_heads :] = float("nan")
    hl.deactivate_heads(model, scores)
    randomize_adapters(model)
    with torch.no_grad():
        live = model(images)
        assert (live - base).abs().max() > 1e-3  # the adapters reach the output
        hl.merge(model)
        assert not any(isinstance(m, HeadLoRAQKV) for m in model.modules())
        torch.testing.assert_close(model(images), live, atol=1e-5, rtol=1e-4)
        hl.unmerge(model)
        torch.testing.assert_close(model(images), live, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        (
            "eva02_tiny_patch14_224",
            {**VIT, "img_size": 28, "patch_size": 7, "qkv_fused": False},
            r"^Eva: its attention blocks\.0\.attn \(EvaAttention\) projects q, k and v separately",
        ),
        (
            "efficientformer_l1",
            dict(depths=(1, 1, 1, 1), embed_dims=(8, 16, 24, 32), num_vit=1),
            r"^EfficientFormer: stages\.3\.blocks\.1\.token_mixer \(Attention\) splits its qkv "
            r"into q, k and v of unequal widths \(key_dim=32",
        ),
    ],
)
def test_attention_without_an_equal_head_fused_qkv_is_refused_by_name(name, kwargs, message):
    model = timm.create_model(name, pretrained=False, num_classes=3, **kwargs)
    with pytest.raises(hl.HeartLoRAError, match=message) as error:
        hl.inject(model, hl.HeartLoRAConfig(rank=2))
    assert "\n" not in str(error.value)
    assert not any(isinstance(m, HeadLoRAQKV) for m in model.modules())  # nothing half-done


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        (
            "twins_svt_small",
            dict(
                img_size=32, patch_size=4, embed_dims=(16, 32), num_heads=(1, 2), depths=(2, 2),
                sr_ratios=(2, 1), wss=(2, 2), mlp_ratios=(2, 2),
            ),
            r"^Twins: 2 of its 4 attention layers project q, k and v separately, not through a "
            r"fused `qkv` nn\.Linear: blocks\.0\.1\.attn \(GlobalSubSampleAttn\), "
            r"blocks\.1\.1\.attn \(GlobalSubSampleAttn\); heartlora adapts fused qkv",
        ),
        (
            "cait_xxs24_224",
            dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, depth_token_only=2),
            r"^Cait: 2 of its 4 attention layers .*: blocks_token_only\.0\.attn \(ClassAttn\), "
            r"blocks_token_only\.1\.attn \(ClassAttn\);",
        ),
        (
            "crossvit_tiny_240",
            dict(
                img_size=(32, 32), patch_size=(8, 16), embed_dim=(16, 32), depth=((1, 1, 0),),
                num_heads=(2, 4), mlp_ratio=(2, 2, 1),
            ),
            r"^CrossVit: 2 of its 4 attention layers .*: blocks\.0\.fusion\.0\.attn "
            r"\(CrossAttention\), blocks\.0\.fusion\.1\.attn \(CrossAttention\);",
        ),
    ],
)  # fmt: skip
def test_a_model_with_some_attention_heartlora_cannot_adapt_is_refused_naming_it(
    name, kwargs, message
):
    """Twins (sub-sampled attention: q and kv), CaiT (class attention: q, k, v) and CrossViT
    (cross attention: wq, wk, wv) used to be half adapted, silently: 9 of 18, 24 of 26 and 15
    of 21 attention layers of the full-size models."""
    model = timm.create_model(name, pretrained=False, num_classes=3, **kwargs)
    with pytest.raises(hl.HeartLoRAError, match=message) as error:
        hl.inject(model, hl.HeartLoRAConfig(rank=2))
    assert "\n" not in str(error.value)
    assert not any(isinstance(m, HeadLoRAQKV) for m in model.modules())  # nothing half-done


def test_a_model_with_two_classifier_heads_is_refused_by_name():
    """timm's distilled DeiT averages the logits of `head` and `head_dist`; heartlora trains one
    classifier, so it refuses the model instead of leaving a head untrained."""
    model = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=3, **VIT)
    with pytest.raises(hl.HeartLoRAError, match=r"2 classifier heads \(head, head_dist\)") as error:
        hl.inject(model, hl.HeartLoRAConfig(rank=2))
    assert "\n" not in str(error.value) and "deit_base_patch16_224" in str(error.value)
    assert not any(isinstance(m, HeadLoRAQKV) for m in model.modules())  # nothing half-done
