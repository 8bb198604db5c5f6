"""Choosing which heads to deactivate from a (layers × heads) responsiveness tensor.

Scores of models whose layers differ in head count (Swin) are padded with NaN on the right;
padded entries are never heads. Higher score = more responsive = kept.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from heartlora.config import MODES, HeartLoRAConfig
from heartlora.errors import HeartLoRAError
from heartlora.inject import find_attention_layers, set_head_masks


def _heads_per_layer(scores: torch.Tensor) -> list[int]:
    return [int((~torch.isnan(row)).sum()) for row in scores]


def _check_scores(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` as a float64 CPU tensor, or a `HeartLoRAError` naming the first entry that is
    not a real, finite score: a complex, boolean or non-finite value, or a NaN that is not part of
    a row's right-hand padding (a layer's NaN must all stand after its last head)."""
    scores = torch.as_tensor(scores)
    if scores.is_complex() or scores.dtype == torch.bool:
        raise HeartLoRAError(f"scores must be real numbers, got {scores.dtype}")
    scores = scores.detach().to(device="cpu", dtype=torch.float64)
    if scores.dim() != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise HeartLoRAError(
            f"scores must be a (layers × heads) tensor, got shape {tuple(scores.shape)}"
        )
    bad = torch.isinf(scores) | (torch.isnan(scores) & ~_padding(scores))
    if bool(bad.any()):
        layer, head = (int(i) for i in bad.nonzero()[0])
        raise HeartLoRAError(
            f"score of layer {layer}, head {head} is {scores[layer, head].item()}: scores must be "
            "finite (NaN only as padding after a layer's last head)"
        )
    if bool(torch.isnan(scores[:, 0]).any()):
        layer = int(torch.isnan(scores[:, 0]).nonzero()[0])
        raise HeartLoRAError(f"layer {layer} of the scores has no heads (its row is all NaN)")
    return scores


def _padding(scores: torch.Tensor) -> torch.Tensor:
    """True where an entry is NaN and so is every entry to its right in the row."""
    nan = torch.isnan(scores)
    return nan.flip(1).int().cumprod(dim=1).flip(1).bool()


def _check_ne(ne: object) -> int:
    if isinstance(ne, bool) or not isinstance(ne, numbers.Integral):
        raise HeartLoRAError(f"ne must be a whole number of heads, got {ne!r}")
    if ne < 0:
        raise HeartLoRAError(f"ne must be non-negative, got {ne}")
    return int(ne)


def normalize_per_layer(scores: torch.Tensor) -> torch.Tensor:
    """Each layer's scores divided by the sum of their absolute values (padding stays NaN; a
    layer whose scores are all zero stays zero). Signs and the order within a layer are kept."""
    scores = _check_scores(scores)
    totals = scores.abs().nansum(dim=1, keepdim=True)
    return scores / torch.where(totals > 0, totals, torch.ones_like(totals))


def select_heads(
    scores: torch.Tensor,
    ne: int = 0,
    mode: str = "global",
    percent: float = 0.0,
    normalize_layers: bool = False,
) -> torch.Tensor:
    """A bool (layers × heads) mask of the heads to keep.

    Modes (`heartlora.config.MODES`):
      * ``global`` (Heart-LoRA): accumulate layer by layer, R[l, h] = Σ_{l' ≤ l} I[l', h]; rank
        head indices by R[L, h] and deactivate the same ``ne`` least responsive indices in every
        layer. Needs every layer to have the same head count.
      * ``layer`` (Heart-LoRA†): deactivate the ``ne`` lowest heads of each layer.
      * ``percent``: deactivate ``round(percent · H_l)`` lowest heads of layer l (at least one kept).
      * ``budget``: deactivate the ``L · ne`` lowest (layer, head) pairs of the whole network,
        keeping at least one head in every layer.

    With ``normalize_layers`` each layer's scores are first divided by their absolute sum
    (`normalize_per_layer`), so that a layer with large scores does not decide the global
    ranking alone; per-layer modes are unchanged by it.

    Ties are broken by head index (lower index deactivated first), so the result is deterministic.

    Raises:
        HeartLoRAError: on an unknown mode, ``ne`` ≥ the heads of a layer, or ``global`` mode on
            layers with different head counts.
    """
    scores = normalize_per_layer(scores) if normalize_layers else _check_scores(scores)
    if mode not in MODES:
        raise HeartLoRAError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    heads = _heads_per_layer(scores)
    num_layers, width = scores.shape
    keep = ~torch.isnan(scores)
    ne = _check_ne(ne)
    if mode != "percent" and ne >= min(heads):
        raise HeartLoRAError(
            f"ne={ne} must be smaller than the heads in every layer (the smallest layer has "
            f"{min(heads)}); use mode 'percent' for a share of heads"
        )
    # A stable ascending sort ranks by the scores themselves, at any scale, and deactivates the
    # lower index first among equal scores.

    if mode == "global":
        if len(set(heads)) != 1:
            raise HeartLoRAError(
                f"mode 'global' needs the same head count in every layer, got {heads}; "
                "use mode 'percent' or 'layer'"
            )
        accumulated = torch.cumsum(scores, dim=0)[-1]
        lowest = torch.argsort(accumulated, stable=True)[:ne]
        keep[:, lowest] = False
    elif mode in ("layer", "percent"):
        if mode == "percent" and not (isinstance(percent, numbers.Real) and 0.0 <= percent < 1.0):
            raise HeartLoRAError(f"percent must be in [0, 1), got {percent}")
        for layer, count in enumerate(heads):
            drop = ne if mode == "layer" else min(round(percent * count), count - 1)
            row = scores[layer, :count]
            lowest = torch.argsort(row, stable=True)[:drop]
            keep[layer, lowest] = False
    else:  # budget
        flat = torch.where(torch.isnan(scores), torch.inf, scores).flatten()
        remaining = num_layers * ne
        active = torch.tensor(heads)
        for position in torch.argsort(flat, stable=True).tolist():
            if remaining == 0:
                break
            layer, head = divmod(position, width)
            if active[layer] > 1:
                keep[layer, head] = False
                active[layer] -= 1
                remaining -= 1
    return keep


def check_selection(model: nn.Module, config: HeartLoRAConfig) -> None:
    """Raise what `deactivate_heads` would raise for ``config``'s ``ne``, ``mode`` and
    ``percent`` on ``model``'s heads, whatever the scores: a run learns it before it starts.

    Raises:
        HeartLoRAError: as `select_heads` does for these settings and this head layout.
    """
    heads = [layer.num_heads for layer in find_attention_layers(model)]
    scores = torch.full((len(heads), max(heads)), math.nan)
    for layer, count in enumerate(heads):
        scores[layer, :count] = 1.0
    select_heads(scores, config.ne, config.mode, config.percent)


def deactivate_heads(
    model: nn.Module,
    scores: torch.Tensor,
    config: HeartLoRAConfig | None = None,
) -> torch.Tensor:
    """Select heads from ``scores`` as ``config`` says (default: the model's injected config):
    ``ne``, ``mode``, ``percent``, ``normalize_layers``, and ``invert_scores`` (the scores are
    negated first).

    The deactivated heads' blocks are removed from the adapters: build the optimizer after this.
    The scores the selection used (negated when inverted) and the masks are stored on the model
    and saved with the adapter.

    Returns:
        The bool (layers × heads) keep-mask that was applied.

    Raises:
        HeartLoRAError: if ``scores`` does not match the model's layers and heads, or
            `select_heads` rejects the settings.
    """
    config = config or getattr(model, "heartlora_config", None)
    if config is None:
        raise HeartLoRAError("model has no heartlora adapters; call inject() first")
    scores = _check_scores(scores)
    layers = find_attention_layers(model)
    model_heads = [layer.num_heads for layer in layers]
    if scores.shape[0] == len(layers):
        for layer, count in enumerate(model_heads):
            missing = torch.isnan(scores[layer, :count]).nonzero()
            if len(missing):
                raise HeartLoRAError(
                    f"score of layer {layer}, head {int(missing[0])} is nan: the model has "
                    f"{count} heads there, each needs a finite score"
                )
    if scores.shape[0] != len(layers) or _heads_per_layer(scores) != model_heads:
        raise HeartLoRAError(
            f"scores of shape {tuple(scores.shape)} do not match the model's heads per layer "
            f"{model_heads}"
        )
    if config.invert_scores:  # the inverse control: the most responsive heads go
        scores = -scores
    keep = select_heads(scores, config.ne, config.mode, config.percent, config.normalize_layers)
    set_head_masks(model, [row[:count] for row, count in zip(keep, model_heads)])
    model.heartlora_scores = scores.float()
    return keep
