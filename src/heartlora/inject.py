"""Finding the attention layers of a timm model, injecting adapters, freezing, merging.

Works on any module tree whose attention modules expose ``num_heads`` and a fused ``qkv``
``nn.Linear`` whose outputs are q, k and v of ``num_heads`` equal heads each (timm ViT, DeiT,
DeiT-III, CLIP ViTs, Swin, SwinV2, BEiT, EVA-02; attention that reads ``qkv.weight`` itself gets
the adapted weight from `HeadLoRAQKV.weight`) and, for the ``proj`` target, a ``proj``
``nn.Linear``. Attention with separate q/k/v projections, or with q, k and v of unequal widths
(EfficientFormer), is refused by name, also where only some layers have it (Twins' sub-sampled
attention, CaiT's class attention, CrossViT's cross attention): a model is adapted whole or not
at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from heartlora.adapters import HeadLoRAAdapter, HeadLoRAProj, HeadLoRAQKV
from heartlora.config import HeartLoRAConfig
from heartlora.errors import HeartLoRAError
from heartlora.models.backbone import classifier_module, classifier_parameters

_MERGED_KEY = "_heartlora_merged_adapters"


@dataclass(frozen=True)
class AttentionLayer:
    """One multi-head attention module of a model, in forward order."""

    name: str
    module: nn.Module
    num_heads: int

    @property
    def qkv(self) -> nn.Module:
        return self.module.qkv

    @property
    def proj(self) -> nn.Module:
        return self.module.proj

    @property
    def adapters(self) -> list[HeadLoRAAdapter]:
        """The heartlora adapters injected into this layer (empty before `inject`)."""
        return [m for m in (self.module.qkv, self.module.proj) if isinstance(m, HeadLoRAAdapter)]


def find_attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """The model's multi-head attention modules, in the order of ``model.named_modules()``.

    Raises:
        HeartLoRAError: when the model has none, when its attention has no fused ``qkv`` (q, k
            and v projected separately), or when a fused ``qkv`` does not hold q, k and v of
            ``num_heads`` equal heads; the message names the model and the module.
    """
    layers, unfused = [], []
    for name, module in model.named_modules():
        num_heads = getattr(module, "num_heads", None)
        if not isinstance(num_heads, int) or isinstance(num_heads, bool):
            continue
        qkv = getattr(module, "qkv", None)
        if isinstance(qkv, (nn.Linear, HeadLoRAAdapter)):
            problem = _qkv_layout_problem(module, qkv.out_features, num_heads)
            if problem is not None:
                raise HeartLoRAError(
                    f"{type(model).__name__}: {name} ({type(module).__name__}) {problem}; "
                    "heartlora adapts a fused qkv of q, k and v with equal heads"
                )
            layers.append(AttentionLayer(name, module, num_heads))
        elif any(isinstance(getattr(module, part, None), nn.Linear) for part in _SEPARATE_QKV):
            unfused.append(f"{name} ({type(module).__name__})")
    if unfused:
        raise HeartLoRAError(_unfused_message(model, unfused, len(layers)))
    if not layers:
        raise HeartLoRAError(
            f"{type(model).__name__} has no attention heads: expected modules with `num_heads` and "
            "a fused `qkv` nn.Linear (timm ViT, DeiT, Swin, BEiT, EVA-02)"
        )
    return layers


_SEPARATE_QKV = ("q_proj", "q", "query", "to_q", "wq")
"""Names under which attention modules keep a separate query projection (EVA ``q_proj``,
Twins' sub-sampled ``q`` + ``kv``, CaiT's class attention ``q``, CrossViT's ``wq``)."""


def _unfused_message(model: nn.Module, unfused: list[str], fused: int) -> str:
    """The refusal of a model with attention that projects q, k and v separately; when other
    layers have a fused qkv, it says how many of each (adapting those alone would leave the
    rest untrained, silently)."""
    model_name = type(model).__name__
    hint = " (for EVA models build them with qkv_fused=True)" if model_name == "Eva" else ""
    if not fused:
        return (
            f"{model_name}: its attention {unfused[0]} projects q, k and v separately, not "
            f"through a fused `qkv` nn.Linear{hint}"
        )
    shown = ", ".join(unfused[:3]) + (f" and {len(unfused) - 3} more" if len(unfused) > 3 else "")
    return (
        f"{model_name}: {len(unfused)} of its {len(unfused) + fused} attention layers project q, "
        f"k and v separately, not through a fused `qkv` nn.Linear: {shown}; heartlora adapts "
        "fused qkv attention only, and adapting the other layers alone would leave these "
        f"untrained{hint}"
    )


def _qkv_layout_problem(module: nn.Module, out_features: int, num_heads: int) -> str | None:
    """Why a fused qkv of ``out_features`` outputs is not q, k and v of ``num_heads`` heads of one
    width each (what the per-head blocks assume), or ``None`` when it is."""
    if out_features % (3 * num_heads):
        return f"has a qkv of {out_features} outputs, not 3 × {num_heads} heads of equal width"
    head_dim = out_features // (3 * num_heads)
    for attribute in ("head_dim", "key_dim", "val_dim"):
        value = getattr(module, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool) and value != head_dim:
            return (
                f"splits its qkv into q, k and v of unequal widths ({attribute}={value}, but "
                f"{out_features} outputs / (3 × {num_heads} heads) = {head_dim})"
            )
    return None


def adapter_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, adapter)`` for every heartlora adapter in the model."""
    for name, module in model.named_modules():
        if isinstance(module, HeadLoRAAdapter):
            yield name, module


def has_adapters(model: nn.Module) -> bool:
    """True when the model carries adapters, live or merged."""
    return any(True for _ in adapter_modules(model)) or bool(model.__dict__.get(_MERGED_KEY))


def inject(model: nn.Module, config: HeartLoRAConfig) -> nn.Module:
    """Add per-head LoRA adapters to every attention layer of ``model``, in place.

    The base weights are frozen; adapters and the classifier (``model.get_classifier()``,
    when the model has one) are trainable. B is zero-initialised, so the injected model computes
    exactly what the base model computed.

    Returns:
        The same model, with ``model.heartlora_config`` set.

    Raises:
        HeartLoRAError: if the model has no attention heads, already carries adapters, or the
            rank exceeds the embedding dimension (nothing is allocated then).
    """
    if is_merged(model):
        raise HeartLoRAError(
            "this model's heartlora adapters are merged into its weights (merge()); call "
            "unmerge(model) to get them back instead of injecting new ones"
        )
    if has_adapters(model):
        raise HeartLoRAError("this model already carries heartlora adapters; inject once")
    layers = find_attention_layers(model)
    classifier_module(model)  # refuses several classifier heads before anything changes
    width = min(int(layer.module.qkv.in_features) for layer in layers)
    if config.rank > width:
        raise HeartLoRAError(
            f"rank {config.rank} exceeds the model's width {width} (expected a rank of at most "
            "the embedding dimension: a larger one adds parameters, never expressiveness)"
        )
    for layer in layers:
        if config.qkv_targets:
            layer.module.qkv = HeadLoRAQKV(
                layer.module.qkv,
                layer.num_heads,
                config.rank,
                config.scale,
                config.qkv_targets,
                shared_a=config.layout == "shared",
            )
        if "proj" in config.targets:
            if not isinstance(getattr(layer.module, "proj", None), nn.Linear):
                raise HeartLoRAError(f"{layer.name} has no `proj` nn.Linear for the proj target")
            layer.module.proj = HeadLoRAProj(
                layer.module.proj, layer.num_heads, config.rank, config.scale
            )
    model.heartlora_config = config
    model.heartlora_scores = None
    mark_trainable(model)
    return model


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every LoRA parameter (A and B of each adapter)."""
    return [p for _, m in adapter_modules(model) for p in (m.lora_A, m.lora_B)]


def mark_trainable(model: nn.Module, train_classifier: bool = True) -> None:
    """Freeze everything except the adapters and (optionally) the classifier."""
    model.requires_grad_(False)
    for param in adapter_parameters(model):
        param.requires_grad_(True)
    if train_classifier:
        for param in classifier_parameters(model):
            param.requires_grad_(True)


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters that receive gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def heads_per_layer(model: nn.Module) -> list[int]:
    """The number of attention heads of each layer, in forward order; also for models whose
    ``qkv`` another library has wrapped (a peft model), where `find_attention_layers` refuses."""
    return [
        module.num_heads
        for module in model.modules()
        if isinstance(getattr(module, "num_heads", None), int) and hasattr(module, "qkv")
    ]


def active_heads_per_layer(model: nn.Module) -> list[int] | None:
    """The active heads of each layer of an injected model; ``None`` without adapters."""
    if not any(True for _ in adapter_modules(model)):
        return None
    return [layer.adapters[0].active_heads for layer in find_attention_layers(model)]


def head_masks(model: nn.Module) -> list[torch.Tensor]:
    """Per attention layer, a bool (H_l,) tensor: True where the head is active."""
    masks = []
    for layer in find_attention_layers(model):
        adapters = layer.adapters
        if not adapters:
            raise _no_adapter(model, layer)
        masks.append(adapters[0].head_mask.detach().cpu().clone())
    return masks


def _no_adapter(model: nn.Module, layer: AttentionLayer) -> HeartLoRAError:
    """The error of a head-mask call on a layer without live adapters: merged ones are
    restored by `unmerge` (`inject` refuses a model whose adapters are merged)."""
    if is_merged(model):
        return HeartLoRAError(
            f"{layer.name}: the adapters are merged into the base weights (merge()); call "
            "unmerge(model) first, then merge again after changing the heads"
        )
    return HeartLoRAError(f"{layer.name} has no heartlora adapter; call inject() first")


def set_head_masks(model: nn.Module, masks: list[torch.Tensor]) -> None:
    """Apply one bool head mask per attention layer to all of that layer's adapters."""
    layers = find_attention_layers(model)
    if len(masks) != len(layers):
        raise HeartLoRAError(f"got {len(masks)} head masks for a model with {len(layers)} layers")
    for layer, mask in zip(layers, masks):
        if not layer.adapters:
            raise _no_adapter(model, layer)
        for adapter in layer.adapters:
            adapter.set_head_mask(mask)


def expected_adapter_parameters(
    config: HeartLoRAConfig, dim: int, head_dim: int, active_heads: list[int], proj_out: int
) -> int:
    """The adapter parameter count that `inject` + deactivation leaves trainable.

    Per layer l with a_l active heads and P targeted qkv projections:
    ``P_A·r·d + P·r·head_dim·a_l`` for qkv, where P_A = P (one A per projection) or 1 (the
    ``shared`` layout), plus ``r·head_dim·a_l + proj_out·r`` for ``proj``.
    """
    num_qkv, r = len(config.qkv_targets), config.rank
    num_a = min(num_qkv, 1) if config.layout == "shared" else num_qkv
    total = 0
    for active in active_heads:
        total += num_a * r * dim + num_qkv * r * head_dim * active
        if "proj" in config.targets:
            total += r * head_dim * active + proj_out * r
    return total


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter's s·B·A into its base weight and put the plain linear back.

    The merged model is a plain timm model (same modules and state-dict keys as the base) that
    costs exactly the base model at inference. `unmerge` restores the adapters.
    """
    merged: dict[str, nn.Module] = {}
    for name, adapter in list(adapter_modules(model)):
        adapter.base.weight += adapter.delta_weight()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, adapter.base)
        merged[name] = adapter
    if not merged:
        raise HeartLoRAError("nothing to merge: the model carries no live heartlora adapters")
    model.__dict__[_MERGED_KEY] = merged
    return model


@torch.no_grad()
def unmerge(model: nn.Module) -> nn.Module:
    """Undo `merge`: subtract each update from its base weight and re-insert the adapters."""
    merged = model.__dict__.pop(_MERGED_KEY, None)
    if not merged:
        raise HeartLoRAError("nothing to unmerge: merge() was not called on this model")
    for name, adapter in merged.items():
        adapter.base.weight -= adapter.delta_weight()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, adapter)
    return model


def is_merged(model: nn.Module) -> bool:
    """True between `merge` and `unmerge`."""
    return bool(model.__dict__.get(_MERGED_KEY))
