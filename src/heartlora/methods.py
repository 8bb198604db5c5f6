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

from heartlora.atomic import atomic_write
from heartlora.checkpoint import save_adapter
from heartlora.errors import HeartLoRAError
from heartlora.inject import classifier_parameters, inject
from heartlora.train_config import TrainConfig


def create_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The timm model named by ``config.model``, with weights from ``config.checkpoint``.

    A checkpoint is a local ``.safetensors``, ``.pth``/``.bin`` or ``.npz`` file (the original
    ViT-B/16 ImageNet-21k release), loaded through timm's pretrained-file path so its usual
    adaptation (position-embedding resampling, classifier reset) applies. Without a checkpoint,
    models with bundled weights (heartlora's `vit_mini_patch4_28`) load them; others start random.
    """
    import heartlora.models  # noqa: F401  (registers the bundled base model with timm)

    kwargs = {"num_classes": num_classes, "drop_path_rate": config.drop_path}
    if "swin" not in config.model:
        kwargs["img_size"] = config.img_size
    pretrained = False
    if config.checkpoint:
        path = Path(config.checkpoint)
        if not path.is_file():
            raise HeartLoRAError(f"{path}: checkpoint file not found")
        overlay = {"file": str(path)}
        if path.suffix == ".npz":
            overlay["custom_load"] = True
        kwargs["pretrained_cfg_overlay"] = overlay
        pretrained = True
    elif config.model == heartlora.models.BASE_MODEL_NAME:
        heartlora.models.base_checkpoint_path()
        pretrained = True
    try:
        return timm.create_model(config.model, pretrained=pretrained, **kwargs)
    except RuntimeError as error:  # state-dict mismatch: a checkpoint of another architecture
        first = str(error).strip().splitlines()[0]
        raise HeartLoRAError(
            f"{config.checkpoint}: does not fit model {config.model!r} ({first})"
        ) from None
    except (KeyError, ValueError) as error:
        if "Unknown model" in str(error) or "Invalid model" in str(error):
            raise HeartLoRAError(f"unknown timm model {config.model!r}") from None
        raise


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
