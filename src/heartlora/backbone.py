"""The timm model under the adapters: building it with its base weights, and finding its classifier.

One home for two questions every part of heartlora asks — training, serving, export, the speed
benchmark and adapter files alike:

* which module is the classifier (`classifier_path`, `classifier_module`,
  `classifier_parameters`, `classifier_state`): timm's ``get_classifier()`` located in the
  module tree (``head`` for a ViT, ``head.fc`` for Swin);
* how a base model gets its weights (`create_base_model`, `load_base_weights`): a timm
  architecture built without downloading, then a local weights file loaded through timm's own
  readers and the family's ``checkpoint_filter_fn``, with the fit checked key by key.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from heartlora.errors import HeartLoRAError


def classifier_module(model: nn.Module) -> nn.Module | None:
    """The model's classifier (timm's ``get_classifier()``), or ``None`` when it has none."""
    get_classifier = getattr(model, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    return classifier if isinstance(classifier, nn.Module) else None


def classifier_path(model: nn.Module) -> str | None:
    """The module path of the classifier (``"head"``, ``"head.fc"``), or ``None`` when the model
    has no classifier module of its own (none at all, or the model itself)."""
    classifier = classifier_module(model)
    if classifier is None:
        return None
    return next((name for name, m in model.named_modules() if m is classifier and name), None)


def classifier_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classifier's parameters (empty for ``num_classes=0`` or a model without one)."""
    classifier = classifier_module(model)
    return list(classifier.parameters()) if classifier is not None else []


def classifier_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The classifier's state dict under its full module path (``head.weight``, ...)."""
    path = classifier_path(model)
    if path is None:
        return {}
    return {f"{path}.{k}": v for k, v in model.get_submodule(path).state_dict().items()}


def registered_weights_file(name: str) -> Path | None:
    """The local weights file timm's registry names for ``name`` (the bundled base model has one),
    or ``None`` when its weights would have to come from a hub."""
    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    except RuntimeError:  # an unknown pretrained tag
        return None
    file = getattr(cfg, "file", None) if cfg is not None else None
    return Path(file) if file else None


def load_base_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load base weights from a local file into ``model`` with timm's loaders, checking the fit.

    ``.npz`` is the original ViT release (ImageNet-21k ViT-B/16), read by timm's
    ``load_pretrained``; ``.safetensors``/``.pth``/``.bin`` go through ``timm.models.load_state_dict``
    and the model family's ``checkpoint_filter_fn`` (position-embedding resampling, key renames).
    A classifier of another class count is left freshly initialised.

    Raises:
        HeartLoRAError: a missing or unreadable file, or weights that do not fit the model.
    """
    path = Path(path)
    if not path.is_file():
        raise HeartLoRAError(f"{path}: checkpoint file not found (expected a weights file)")
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
    classifier = set(classifier_state(model))
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


def _resolve_checkpoint(checkpoint: str | Path, search_dir: Path | None) -> Path:
    path = Path(checkpoint).expanduser()
    if not path.is_file() and search_dir is not None and (search_dir / path).is_file():
        path = search_dir / path
    if not path.is_file():
        raise HeartLoRAError(f"base checkpoint {path} does not exist (expected a weights file)")
    return path


def create_architecture(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)`` with a one-line error for an
    unknown name; never downloads."""
    if not timm.is_model(name):
        raise HeartLoRAError(
            f"unknown timm model {name!r} (expected a timm architecture name, e.g. "
            "vit_base_patch16_224)"
        )
    return timm.create_model(name, pretrained=False, **kwargs)


def create_base_model(
    name: str,
    checkpoint: str | Path | None = None,
    weights: bool = True,
    search_dir: Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The timm model ``name`` with its base weights.

    Args:
        name: a timm architecture (the bundled ``vit_mini_patch4_28`` is registered on import).
        checkpoint: a local weights file (`load_base_weights`). Without one, the weights file that
            timm's registry names for ``name`` is used (the bundled base model has one).
        weights: ``False`` builds the architecture with random weights (enough to read adapters).
        search_dir: a relative ``checkpoint`` is also looked up here (an adapter's folder).
        **kwargs: passed to ``timm.create_model`` (``num_classes``, ``img_size``, ...).

    Raises:
        HeartLoRAError: an unknown model, a missing or unfitting checkpoint, or no local weights.
    """
    model = create_architecture(name, **kwargs)
    if not weights:
        return model
    if checkpoint:
        return load_base_weights(model, _resolve_checkpoint(checkpoint, search_dir))
    registered = registered_weights_file(name)
    if registered is None:
        raise HeartLoRAError(
            f"no local base weights for {name!r}: pass --checkpoint PATH (expected a weights "
            "file, or an adapter whose metadata names its 'checkpoint')"
        )
    return load_base_weights(model, registered)
