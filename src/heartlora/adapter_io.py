"""Saving and loading adapters: safetensors weights + a JSON config, onto a fresh base model.

An adapter directory holds:

* ``heartlora_adapter.safetensors`` — every adapter's ``lora_A`` and (active rows of)
  ``lora_B`` under its module path, and the classifier's parameters under their own names;
* ``heartlora_config.json`` — the `HeartLoRAConfig`, the base architecture, heads per layer,
  the head masks and the responsiveness scores (null where a layer has fewer heads).

Deactivated heads are not stored, so the file shrinks with ``ne``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from heartlora.atomic import atomic_write, atomic_write_json
from heartlora.config import HeartLoRAConfig
from heartlora.errors import HeartLoRAError
from heartlora.inject import (
    adapter_modules,
    find_attention_layers,
    has_adapters,
    head_masks,
    inject,
    is_merged,
    set_head_masks,
)

WEIGHTS_NAME = "heartlora_adapter.safetensors"
CONFIG_NAME = "heartlora_config.json"
FORMAT = "heartlora-adapter/1"


def architecture_name(model: nn.Module) -> str:
    """timm's architecture name of ``model`` (from its pretrained_cfg), else its class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def _classifier_state(model: nn.Module) -> dict[str, torch.Tensor]:
    get_classifier = getattr(model, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    if not isinstance(classifier, nn.Module):
        return {}
    prefix = next((n for n, m in model.named_modules() if m is classifier), None)
    if prefix is None:
        return {}
    return {f"{prefix}.{k}" if prefix else k: v for k, v in classifier.state_dict().items()}


def _num_classes(model: nn.Module) -> int | None:
    value = getattr(model, "num_classes", None)
    return int(value) if isinstance(value, int) else None


def save_adapter(
    model: nn.Module, directory: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write the model's adapters, classifier, config, masks and scores to ``directory``.

    Both files are written atomically. ``extra`` (JSON-ready) is stored under ``"extra"``.

    Raises:
        HeartLoRAError: if the model carries no live adapters (not injected, or merged).
    """
    config: HeartLoRAConfig | None = getattr(model, "heartlora_config", None)
    if config is None or is_merged(model) or not any(True for _ in adapter_modules(model)):
        raise HeartLoRAError(
            "save_adapter needs a model with live heartlora adapters (unmerge first)"
        )
    directory = Path(directory)
    tensors = {}
    for name, adapter in adapter_modules(model):
        tensors[f"{name}.lora_A"] = adapter.lora_A.detach()
        tensors[f"{name}.lora_B"] = adapter.lora_B.detach()
    tensors.update(_classifier_state(model))
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    layers = find_attention_layers(model)
    scores = getattr(model, "heartlora_scores", None)
    metadata = {
        "format": FORMAT,
        "base_model": architecture_name(model),
        "config": config.to_dict(),
        "layers": [layer.name for layer in layers],
        "num_heads": [layer.num_heads for layer in layers],
        "embed_dim": int(
            layers[0].qkv.in_features
            if hasattr(layers[0].qkv, "in_features")
            else layers[0].qkv.base.in_features
        ),
        "num_classes": _num_classes(model),
        "head_masks": [mask.tolist() for mask in head_masks(model)],
        "scores": None
        if scores is None
        else [[None if math.isnan(v) else float(v) for v in row] for row in scores.tolist()],
        "extra": extra or {},
    }
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp)))
    atomic_write_json(directory / CONFIG_NAME, metadata)
    return directory


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``heartlora_config.json`` of an adapter directory.

    Raises:
        HeartLoRAError: if the directory, the file or its JSON is missing or malformed.
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise HeartLoRAError(f"{path}: no heartlora adapter here (expected {CONFIG_NAME})")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise HeartLoRAError(f"{path} line {error.lineno}: invalid JSON ({error.msg})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise HeartLoRAError(f"{path}: not a heartlora adapter config (expected format {FORMAT})")
    return metadata


def load_adapter(
    model: nn.Module, directory: str | Path, strict_architecture: bool = True
) -> nn.Module:
    """Inject the saved adapter into a fresh base ``model`` and load its weights.

    The model's classifier is reset to the adapter's class count when they differ (timm's
    ``reset_classifier``) and then loaded from the file. Returns the same model.

    Raises:
        HeartLoRAError: if the model already carries adapters (loading twice), the adapter was
            saved for another architecture, layer layout or head count, or a tensor's shape differs.
    """
    directory = Path(directory)
    metadata = read_adapter_config(directory)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise HeartLoRAError(f"{weights_path}: missing adapter weights")
    if has_adapters(model):
        raise HeartLoRAError(
            "this model already carries heartlora adapters; load onto a fresh base model"
        )
    base = architecture_name(model)
    if strict_architecture and metadata["base_model"] != base:
        raise HeartLoRAError(
            f"{directory}: adapter was saved for {metadata['base_model']!r}, the model is {base!r}"
        )
    layers = find_attention_layers(model)
    heads = [layer.num_heads for layer in layers]
    if [layer.name for layer in layers] != metadata["layers"] or heads != metadata["num_heads"]:
        raise HeartLoRAError(
            f"{directory}: adapter expects heads per layer {metadata['num_heads']}, "
            f"the model has {heads}"
        )
    num_classes = metadata.get("num_classes")
    if num_classes is not None and _num_classes(model) not in (None, num_classes):
        if not hasattr(model, "reset_classifier"):
            raise HeartLoRAError(
                f"{directory}: adapter has {num_classes} classes, the model differs"
            )
        model.reset_classifier(num_classes)
    config = HeartLoRAConfig.from_dict(metadata["config"])
    inject(model, config)
    set_head_masks(model, [torch.tensor(mask, dtype=torch.bool) for mask in metadata["head_masks"]])
    if metadata.get("scores") is not None:
        model.heartlora_scores = torch.tensor(
            [[math.nan if v is None else v for v in row] for row in metadata["scores"]]
        )
    tensors = load_file(str(weights_path))
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    for key, value in tensors.items():
        target = params.get(key, buffers.get(key))
        if target is None:
            raise HeartLoRAError(f"{weights_path}: tensor {key!r} has no place in this model")
        if target.shape != value.shape:
            raise HeartLoRAError(
                f"{weights_path}: {key} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(value.to(target.dtype))
    return model
