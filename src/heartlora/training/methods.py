"""Building the model of each fine-tuning method and storing what that method trains.

Methods: ``linear``, ``full``, ``lora``, ``heart-lora``, ``heart-lora-layer`` (heartlora
adapters) and ``peft-lora`` (Hugging Face peft on the fused qkv linear).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from torch import nn

from heartlora.adapter_io import save_adapter
from heartlora.atomic import atomic_write
from heartlora.errors import HeartLoRAError
from heartlora.inject import classifier_parameters, inject
from heartlora.training.config import TrainConfig


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load base weights from a local file into ``model`` with timm's loaders, checking the fit.

    ``.npz`` is the original ViT release (ImageNet-21k ViT-B/16), read by timm's
    ``load_pretrained``; ``.safetensors``/``.pth``/``.bin`` go through ``timm.models.load_state_dict``
    and the model family's ``checkpoint_filter_fn`` (position-embedding resampling, key renames).
    A classifier of another class count is left freshly initialised.

    Raises:
        HeartLoRAError: a missing or unreadable file, or weights that do not fit the model.
    """
    import sys

    path = Path(path)
    if not path.is_file():
        raise HeartLoRAError(f"{path}: checkpoint file not found")
    if path.suffix == ".npz":
        try:
            model.load_pretrained(str(path))
        except (KeyError, ValueError, RuntimeError, AttributeError) as error:
            raise HeartLoRAError(f"{path}: does not fit {type(model).__name__} ({error})") from None
        return model
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as error:  # any unreadable file: safetensors, pickle and zip raise their own
        raise HeartLoRAError(f"{path}: cannot read checkpoint ({type(error).__name__})") from None
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except (KeyError, RuntimeError, ValueError, AttributeError) as error:
            raise HeartLoRAError(
                f"{path}: does not fit model ({type(error).__name__}: {error})"
            ) from None
    own = model.state_dict()
    classifier = {
        f"{n}.{k}"
        for n, m in model.named_modules()
        if m is model.get_classifier()
        for k in m.state_dict()
    }
    state = {k: v for k, v in state.items() if not (k in classifier and v.shape != own[k].shape)}
    missing = [k for k in own if k not in state and k not in classifier]
    unexpected = [k for k in state if k not in own]
    misshapen = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or misshapen:
        kind, key = next(
            (kind, keys[0])
            for kind, keys in (
                ("lacks", missing),
                ("has unknown", unexpected),
                ("has mis-shaped", misshapen),
            )
            if keys
        )
        raise HeartLoRAError(
            f"{path}: does not fit model {type(model).__name__}: the file {kind} weights "
            f"(first: {key}; {len(missing)} missing, {len(unexpected)} unknown, "
            f"{len(misshapen)} mis-shaped)"
        )
    model.load_state_dict(state, strict=False)
    return model


def create_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The timm model named by ``config.model`` with weights from ``config.checkpoint``.

    Without a checkpoint, models with bundled weights (heartlora's `vit_mini_patch4_28`) load
    them through the same `load_checkpoint`; others start from random weights.
    """
    import heartlora.bundled.model as bundled

    kwargs = {"num_classes": num_classes, "drop_path_rate": config.drop_path}
    if "swin" not in config.model:
        kwargs["img_size"] = config.img_size
    try:
        model = timm.create_model(config.model, pretrained=False, **kwargs)
    except RuntimeError as error:
        if "Unknown model" in str(error) or "Invalid model" in str(error):
            raise HeartLoRAError(f"unknown timm model {config.model!r}") from None
        raise
    checkpoint = config.checkpoint
    if checkpoint is None and config.model == bundled.BASE_MODEL_NAME:
        checkpoint = bundled.base_checkpoint_path()
    return load_checkpoint(model, checkpoint) if checkpoint else model


def _peft_wrap(model: nn.Module, config: TrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    classifier = model.get_classifier()
    name = next(n for n, m in model.named_modules() if m is classifier)
    peft_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.scale * config.rank,
        target_modules=["qkv"],
        modules_to_save=[name],
        lora_dropout=0.0,
    )
    return get_peft_model(model, peft_config)


def prepare_model(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Freeze/inject/wrap ``model`` for ``config.method``; returns the model to train."""
    if config.method == "full":
        model.requires_grad_(True)
        return model
    if config.method == "linear":
        model.requires_grad_(False)
        for param in classifier_parameters(model):
            param.requires_grad_(True)
        return model
    if config.method == "peft-lora":
        return _peft_wrap(model, config)
    return inject(model, config.adapter_config())


def _directory_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())


def save_trained(model: nn.Module, config: TrainConfig, directory: Path, extra: dict) -> int:
    """Store what this method trained in ``directory``; returns the bytes stored.

    heartlora methods: an adapter directory (`save_adapter`); ``peft-lora``: peft's
    ``save_pretrained``; ``linear``: the classifier; ``full``: the whole state dict.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if config.uses_heartlora:
        save_adapter(model, directory, extra=extra)
    elif config.method == "peft-lora":
        model.save_pretrained(str(directory))
    else:
        state = (
            model.state_dict()
            if config.method == "full"
            else {name: p for name, p in model.named_parameters() if p.requires_grad}
        )
        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        atomic_write(directory / "weights.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    return _directory_bytes(directory)


def active_heads_per_layer(model: nn.Module) -> list[int] | None:
    """For heartlora methods, the active heads of each layer; else None."""
    from heartlora.inject import adapter_modules, find_attention_layers

    if not any(True for _ in adapter_modules(model)):
        return None
    return [layer.adapters[0].active_heads for layer in find_attention_layers(model)]


def trainable(model: nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimizer updates."""
    return [p for p in model.parameters() if p.requires_grad]
