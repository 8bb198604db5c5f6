"""Tiny timm models for fast tests: a 2-layer ViT with 4 heads and a 2-stage Swin (2 and 4 heads)."""

from __future__ import annotations

import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer


def tiny_vit(
    num_classes: int = 3, seed: int = 0, depth: int = 2, heads: int = 4
) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=16,
        patch_size=4,
        embed_dim=8 * heads,
        depth=depth,
        num_heads=heads,
        mlp_ratio=2.0,
        num_classes=num_classes,
    )
    model.pretrained_cfg = {"architecture": "tiny_vit_test"}
    return model.eval()


def tiny_swin(num_classes: int = 3, seed: int = 0) -> SwinTransformer:
    torch.manual_seed(seed)
    model = SwinTransformer(
        img_size=16,
        patch_size=2,
        window_size=4,
        embed_dim=16,
        depths=(1, 1),
        num_heads=(2, 4),
        num_classes=num_classes,
    )
    model.pretrained_cfg = {"architecture": "tiny_swin_test"}
    return model.eval()


def images(batch: int = 4, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 16, 16, generator=generator)


def batches(count: int = 3, batch: int = 4, num_classes: int = 3, seed: int = 2):
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.rand(batch, 3, 16, 16, generator=generator),
            torch.randint(0, num_classes, (batch,), generator=generator),
        )
        for _ in range(count)
    ]


def randomize_adapters(model: torch.nn.Module, seed: int = 3) -> None:
    """Give every B (and A) non-zero values, as after training."""
    from heartlora.inject import adapter_parameters

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter_parameters(model):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def qkv_adapter(targets, layout, mask=None, dtype=torch.float32):
    """Block 0's qkv adapter of a `tiny_vit` injected with rank 3, scale 2 and random
    adapters; with ``mask`` its head mask set and B redrawn (seeded) so the masked rows are
    not zero; the base weight takes gradients; cast to ``dtype``."""
    import heartlora as hl

    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig(rank=3, scale=2.0, targets=targets, layout=layout))
    randomize_adapters(model)
    adapter = model.blocks[0].attn.qkv
    if mask is not None:
        adapter.set_head_mask(torch.tensor(mask))
        with torch.no_grad():
            adapter.lora_B.copy_(
                torch.randn(adapter.lora_B.shape, generator=torch.Generator().manual_seed(4))
            )
    adapter.base.weight.requires_grad_(True)
    return adapter.to(dtype)
