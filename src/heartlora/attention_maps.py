"""Attention maps of each head, recomputed from the qkv output, and how alike the heads are.

timm computes attention with a fused kernel that never materialises the maps, so a forward hook
on each layer's ``qkv`` module rebuilds softmax(q·kᵀ·scale) (plus Swin's relative position bias
where the module has one; the shifted-window mask is left out) and reduces it at once to a
(heads × heads) cosine-similarity matrix, so no layer's maps outlive its hook.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from heartlora.inject import find_attention_layers


def attention_maps_from_qkv(attention: nn.Module, qkv: torch.Tensor) -> torch.Tensor:
    """Attention probabilities (B, H, N, N) of ``attention`` given its qkv output (B, N, 3·H·hd)."""
    batch, tokens, _ = qkv.shape
    heads = attention.num_heads
    q, k, _ = qkv.reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    q = getattr(attention, "q_norm", nn.Identity())(q)
    k = getattr(attention, "k_norm", nn.Identity())(k)
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    relative_bias = getattr(attention, "_get_rel_pos_bias", None)
    if callable(relative_bias):
        logits = logits + relative_bias()
    return logits.softmax(dim=-1)


def head_similarity(maps: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the cosine similarity between heads' flattened maps: (H, H)."""
    flat = torch.nn.functional.normalize(maps.flatten(2).float(), dim=-1)
    return (flat @ flat.transpose(1, 2)).mean(dim=0)


@torch.no_grad()
def layer_head_similarity(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Per attention layer, the (H_l × H_l) cosine similarity of its heads' attention maps,
    averaged over the images of ``batches`` (tensors, or (images, labels) pairs)."""
    layers = find_attention_layers(model)
    sums = [torch.zeros(layer.num_heads, layer.num_heads) for layer in layers]
    counts = [0] * len(layers)

    def make_hook(index: int, attention: nn.Module):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            maps = attention_maps_from_qkv(attention, output)
            sums[index] += head_similarity(maps).cpu() * maps.shape[0]
            counts[index] += maps.shape[0]

        return hook

    handles = [
        layer.qkv.register_forward_hook(make_hook(i, layer.module))
        for i, layer in enumerate(layers)
    ]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(images.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [total / max(count, 1) for total, count in zip(sums, counts)]
