"""A head's block of an adapter: the slices of its parameters that belong to one attention head.

For a q/k/v adapter (`HeadLoRAQKV`) head h owns rows h·hd … (h+1)·hd − 1 of every projection's
B (shape (P, n_active·hd, r)); for a ``proj`` adapter (`HeadLoRAProj`) it owns those columns of
A (shape (r, n_active·hd)). Each adapter answers for its own blocks
(`heartlora.adapters.HeadLoRAAdapter`: `head_parameter`, `split_heads`, `scatter_per_head`);
this module gathers them over a model's layers for the scorers (`heartlora.responsiveness`,
`heartlora.sensitivity`), which reduce the blocks to one number per head.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from heartlora.adapters import HeadLoRAAdapter
from heartlora.errors import HeartLoRAError
from heartlora.inject import AttentionLayer


def head_parameters(layers: list[AttentionLayer]) -> list[nn.Parameter]:
    """`HeadLoRAAdapter.head_parameter` of every adapter of ``layers``, layer by layer."""
    return [adapter.head_parameter for layer in layers for adapter in layer.adapters]


def pad_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer score rows → one float64 (layers × max heads) tensor, NaN on the right where a
    layer has fewer heads."""
    width = max(row.numel() for row in rows)
    out = torch.full((len(rows), width), float("nan"), dtype=torch.float64)
    for index, row in enumerate(rows):
        out[index, : row.numel()] = row
    return out


def per_layer_scores(
    layers: list[AttentionLayer],
    adapter_values: Callable[[HeadLoRAAdapter], torch.Tensor],
    untrained: str,
) -> list[torch.Tensor]:
    """One float64 (heads,) CPU row per layer: the sum over the layer's adapters of
    ``adapter_values(adapter)`` (one value per active head), zero for inactive heads.

    Raises:
        HeartLoRAError: with the message ``untrained`` when every value of every layer is zero
            (untrained adapters: B is all zero before the first optimizer step).
    """
    rows = []
    for layer in layers:
        row = torch.zeros(layer.num_heads, dtype=torch.float64)
        for adapter in layer.adapters:
            row += adapter.scatter_per_head(adapter_values(adapter))
        rows.append(row)
    if all(not bool(row.any()) for row in rows):
        raise HeartLoRAError(untrained)
    return rows
