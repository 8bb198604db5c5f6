"""Saving and loading adapters: safetensors weights + a JSON config, onto a fresh base model.

An adapter directory holds:

* ``heartlora_adapter.safetensors`` — every adapter's ``lora_A`` and (active rows of)
  ``lora_B`` under its module path, and the classifier's parameters under their own names;
* ``heartlora_config.json`` — an `AdapterMetadata`: the `HeartLoRAConfig`, the base
  architecture, heads per layer, the head masks, the responsiveness scores (null where a layer
  has fewer heads) and, under ``"extra"``, a `RunInfo` saying how the adapter was trained.

Deactivated heads are not stored, so the file shrinks with ``ne``. This module is the only one
that writes or parses the JSON: everything else reads the typed `AdapterMetadata`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from heartlora.config import RENAMED_KEYS, HeartLoRAConfig
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
from heartlora.io.atomic import atomic_write_bytes, atomic_write_json
from heartlora.io.documents import parse_yaml, read_json
from heartlora.io.field_types import first_mismatch, record_from_mapping
from heartlora.models.backbone import (
    MAX_CLASSES,
    MAX_IMG_SIZE,
    check_model_kwargs,
    classifier_state,
)

WEIGHTS_NAME = "heartlora_adapter.safetensors"
CONFIG_NAME = "heartlora_config.json"
FORMAT = "heartlora-adapter/1"

RUN_ADAPTER_FOLDER = "adapter"
"""Where a training run's folder keeps what its method trained."""
RUN_CONFIG_NAME = "config.yaml"
"""The resolved config a training run writes in its folder (its ``model``, ``method``, ...)."""
RUN_RESULT_NAME = "result.json"
"""What a finished training run writes in its folder (accuracy, stored bytes, ...)."""
STATE_WEIGHTS_NAME = "weights.safetensors"
"""What a ``linear`` run (the classifier) and a ``full`` run (the whole state dict) store."""
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
"""The files of a peft LoRA adapter (a ``peft-lora`` run's, or ``export --format peft``'s)."""


@dataclass
class DatasetInfo:
    """Where an adapter's training images came from (`heartlora.data.factory.build_dataset`)."""

    kind: str
    root: str
    task: str | None = None
    split: str | None = None
    image_dir: str | None = None


@dataclass
class RunInfo:
    """How an adapter was trained; stored under ``"extra"`` of ``heartlora_config.json``.

    Attributes:
        model: the timm model name the run built (may carry a pretrained tag).
        checkpoint: the base weights file, when one was given.
        weights: what the base weights were (`heartlora.models.backbone.weights_label`): ``"random"``,
            ``"pretrained:<tag>"`` (timm's weights of that tag) or the checkpoint path;
            ``None`` in adapters written before it was recorded. `heartlora predict` and
            `heartlora export` refuse a base other than this one unless told otherwise.
        model_kwargs: more ``timm.create_model`` arguments needed to rebuild the base.
        img_size: the input side the adapter was trained at.
        normalize: ``[mean, std]`` of the input normalisation, or ``None``.
        task: the task's name.
        method: the training method (``heart-lora``, ...).
        dataset: the training data, for `heartlora heads` to score on it again.
        classes: class names, index = label, when known.
        other: keys this version does not know, kept as they were.
    """

    model: str | None = None
    checkpoint: str | None = None
    weights: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    img_size: int | None = field(default=None, metadata={"minimum": 1, "maximum": MAX_IMG_SIZE})
    normalize: list[list[float]] | None = None
    task: str | None = None
    method: str | None = None
    dataset: DatasetInfo | None = None
    classes: list[str] | None = None
    other: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored under ``"extra"`` (unset keys left out)."""
        data = {k: v for k, v in asdict(self).items() if k != "other" and v not in (None, {})}
        return {**self.other, **data}

    @classmethod
    def from_json(cls, data: Any, where: str) -> RunInfo:
        """Parse ``"extra"``; ``where`` names the file in errors."""
        data = dict(_checked(data, dict[str, Any], where, "extra"))
        dataset = data.pop("dataset", None)
        if dataset is not None:
            dataset = dict(_checked(dataset, dict[str, Any], where, "extra.dataset"))
            if "normalize" in dataset and data.get("normalize") is None:
                data["normalize"] = dataset.pop("normalize")  # where early files kept it
            dataset = record_from_mapping(DatasetInfo, dataset, f"{where}: extra.dataset")
        known = {f.name for f in fields(cls)} - {"other", "dataset"}
        values = {k: data.pop(k) for k in list(data) if k in known}
        info = record_from_mapping(cls, values, f"{where}: extra", dataset=dataset, other=data)
        check_model_kwargs(info.model_kwargs, f"{where}: extra.model_kwargs")
        return info


@dataclass
class AdapterMetadata:
    """Everything ``heartlora_config.json`` says about an adapter.

    Attributes:
        base_model: timm architecture of the base model.
        config: the adapter's `HeartLoRAConfig`.
        layers: module paths of the attention layers, in forward order.
        num_heads: heads per layer.
        embed_dim: the width d that ``lora_A`` reads.
        num_classes: the classifier's class count, or ``None``.
        head_masks: per layer, True for an active head.
        scores: responsiveness per layer and head (``None`` where a layer has fewer heads), or
            ``None`` when the heads were never scored.
        run: how the adapter was trained (`RunInfo`).
    """

    base_model: str
    config: HeartLoRAConfig
    layers: list[str]
    num_heads: list[int]
    embed_dim: int = field(metadata={"minimum": 1})
    num_classes: int | None = field(metadata={"minimum": 1, "maximum": MAX_CLASSES})
    head_masks: list[list[bool]]
    scores: list[list[float | None]] | None = None
    run: RunInfo = field(default_factory=RunInfo)

    def to_json(self) -> dict[str, Any]:
        """The JSON document, in the ``heartlora-adapter/1`` format."""
        return {
            "format": FORMAT,
            "base_model": self.base_model,
            "config": self.config.to_dict(),
            "layers": self.layers,
            "num_heads": self.num_heads,
            "embed_dim": self.embed_dim,
            "num_classes": self.num_classes,
            "head_masks": self.head_masks,
            "scores": self.scores,
            "extra": self.run.to_json(),
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> AdapterMetadata:
        """Parse and check a JSON document; errors name ``where`` (the file) and the key."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise HeartLoRAError(
                f"{where}: not a heartlora adapter config (expected format {FORMAT})"
            )
        for key in ("config", "extra"):  # records of their own, read below
            if key not in data:
                raise HeartLoRAError(f"{where}: {key} is missing (a mapping)")
        config_where = f"{where}: config"
        config_data = _checked(data["config"], dict[str, Any], where, "config")
        settings = {item.name: item.type for item in fields(HeartLoRAConfig)}
        for key, value in config_data.items():  # an old key is checked as its new name
            name = RENAMED_KEYS.get(key, key)
            if name in settings:
                _checked(value, settings[name], where, f"config.{key}")
        try:
            config = HeartLoRAConfig.from_dict(config_data, where=config_where)
        except HeartLoRAError as error:
            if str(error).startswith(config_where):
                raise
            raise HeartLoRAError(f"{config_where}: {error}") from None
        stored = {item.name for item in fields(cls)} - {"config", "run"}  # "run" is "extra"
        values = {key: value for key, value in data.items() if key in stored}
        values.setdefault("num_classes", None)  # unknown to files of models without a classifier
        metadata = record_from_mapping(
            cls, values, where, config=config, run=RunInfo.from_json(data["extra"], where)
        )
        layers = metadata.layers
        for key in ("num_heads", "head_masks", "scores"):
            value = getattr(metadata, key)
            if value is not None and len(value) != len(layers):
                raise HeartLoRAError(
                    f"{where}: {key} has {len(value)} entries (expected {len(layers)})"
                )
        for index, (mask, heads) in enumerate(zip(metadata.head_masks, metadata.num_heads)):
            if len(mask) != heads:
                raise HeartLoRAError(
                    f"{where}: head_masks[{index}] has {len(mask)} entries (expected {heads})"
                )
            if not any(mask):
                raise HeartLoRAError(f"{where}: head_masks[{index}] keeps no head")
        return metadata


def _checked(value: Any, annotation: Any, where: str, key: str) -> Any:
    """``value`` when it is of the type ``annotation`` names, else a one-line error naming
    ``where``, the key (down to a wrong list item) and the type expected, as
    `heartlora.io.field_types.field_error` words it."""
    wrong = first_mismatch(value, annotation)
    if wrong is None:
        return value
    raise HeartLoRAError(
        f"{where}: {key}{wrong.path} must be {wrong.expected}, got {wrong.value!r}"
    )


def architecture_name(model: nn.Module) -> str:
    """timm's architecture name of ``model`` (from its pretrained_cfg), else its class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def _num_classes(model: nn.Module) -> int | None:
    value = getattr(model, "num_classes", None)
    return int(value) if isinstance(value, int) else None


def save_adapter(
    model: nn.Module, directory: str | Path, extra: RunInfo | dict[str, Any] | None = None
) -> Path:
    """Write the model's adapters, classifier, config, masks and scores to ``directory``.

    Both files are written atomically. ``extra`` — a `RunInfo`, or a dict of its keys (unknown
    keys are kept as they are) — says how the adapter was trained; it is stored under
    ``"extra"``.

    Raises:
        HeartLoRAError: if the model carries no live adapters (not injected, or merged).
    """
    config: HeartLoRAConfig | None = getattr(model, "heartlora_config", None)
    if config is None or is_merged(model) or not any(True for _ in adapter_modules(model)):
        raise HeartLoRAError(
            "save_adapter needs a model with live heartlora adapters (unmerge first)"
        )
    directory = Path(directory)
    run = extra if isinstance(extra, RunInfo) else RunInfo.from_json(extra or {}, "extra")
    tensors = {}
    for name, adapter in adapter_modules(model):
        tensors[f"{name}.lora_A"] = adapter.lora_A.detach()
        tensors[f"{name}.lora_B"] = adapter.lora_B.detach()
    tensors.update(classifier_state(model))
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    layers = find_attention_layers(model)
    scores = getattr(model, "heartlora_scores", None)
    metadata = AdapterMetadata(
        base_model=architecture_name(model),
        config=config,
        layers=[layer.name for layer in layers],
        num_heads=[layer.num_heads for layer in layers],
        embed_dim=int(layers[0].qkv.in_features),
        num_classes=_num_classes(model),
        head_masks=[mask.tolist() for mask in head_masks(model)],
        scores=None
        if scores is None
        else [[None if math.isnan(v) else float(v) for v in row] for row in scores.tolist()],
        run=run,
    )
    atomic_write_bytes(directory / WEIGHTS_NAME, save(tensors))
    atomic_write_json(directory / CONFIG_NAME, metadata.to_json())
    return directory


def adapter_directory(path: str | Path) -> Path:
    """The heartlora adapter directory ``path`` names: the directory itself, or the
    ``adapter/`` folder of a training run's folder (``heartlora train --output-dir``).

    Raises:
        HeartLoRAError: no heartlora adapter there. Where the folder holds what another method
            stored (a ``full`` run's model, a ``linear`` run's classifier, a ``bitfit`` run's
            biases, a ``peft-*`` run's peft adapter), the message names the run's method, what
            the folder holds and how to load it instead.
    """
    path = Path(path)
    if (path / CONFIG_NAME).is_file():
        return path
    if (path / RUN_ADAPTER_FOLDER / CONFIG_NAME).is_file():
        return path / RUN_ADAPTER_FOLDER
    folder = path / RUN_ADAPTER_FOLDER if (path / RUN_ADAPTER_FOLDER).is_dir() else path
    other = _other_method_output(folder)
    if other is not None:
        raise HeartLoRAError(f"{folder}: {other}")
    raise HeartLoRAError(
        f"{path / CONFIG_NAME}: no heartlora adapter here (expected {CONFIG_NAME}, or a run "
        f"folder with {RUN_ADAPTER_FOLDER}/{CONFIG_NAME})"
    )


def _other_method_output(folder: Path) -> str | None:
    """What ``folder`` holds when a method other than heartlora's adapters stored it, named by
    the run's method (its ``config.yaml``), and how to load it; ``None`` when it holds none of
    those files."""
    run = _run_settings(folder.parent) if folder.name == RUN_ADAPTER_FOLDER else {}
    method = run.get("method") if isinstance(run.get("method"), str) else None
    peft = (folder / PEFT_CONFIG_NAME).is_file()
    weights = folder / STATE_WEIGHTS_NAME
    if not peft and not weights.is_file():
        return None
    if method is None:
        what = "a peft adapter" if peft else f"{STATE_WEIGHTS_NAME} (a state dict)"
        return (
            f"holds {what} and no run {RUN_CONFIG_NAME} beside it, so the method that stored it "
            f"is unknown; not a heartlora adapter (expected the run folder `heartlora train` "
            f"wrote, whose {RUN_CONFIG_NAME} names the method and the base model)"
        )
    model = run.get("model", "<model>")
    held = {
        "full": f"the whole fine-tuned model ({STATE_WEIGHTS_NAME}, its state dict)",
        "linear": f"the classifier alone ({STATE_WEIGHTS_NAME}: the backbone is the base)",
        "bitfit": f"every bias and the classifier ({STATE_WEIGHTS_NAME})",
    }.get(method, f"a peft adapter ({PEFT_CONFIG_NAME}, {PEFT_WEIGHTS_NAME})")
    base = f"the run's base model ({model} with the base weights its {RUN_CONFIG_NAME} names)"
    if peft:
        load = f"peft.PeftModel.from_pretrained(<{base}>, {str(folder)!r})"
    elif method == "full":
        load = (
            f"model.load_state_dict(safetensors.torch.load_file({str(weights)!r})) on "
            f"timm.create_model({model!r}, num_classes=N, img_size={run.get('img_size', 'S')})"
        )
    else:
        load = (
            f"model.load_state_dict(safetensors.torch.load_file({str(weights)!r}), "
            f"strict=False) on {base}"
        )
    heads = "lora, heart-lora, heart-lora-layer"
    return (
        f"holds what a `{method}` run stores: {held}, not a heartlora adapter (`heartlora "
        f"heads` reads the attention heads of the adapters of methods {heads} only); "
        f"`heartlora predict` and `heartlora export` take this run folder; in Python, "
        f"heartlora.tools.runs.load_run_model({str(folder.parent)!r}) builds the run's model, "
        f"or {load}"
    )


def _run_settings(run_dir: Path) -> dict[str, Any]:
    """The run's saved config (model, method, img_size) for advice; empty when unreadable."""
    try:
        settings = parse_yaml((run_dir / RUN_CONFIG_NAME).read_bytes(), "", "")
    except (OSError, HeartLoRAError):
        return {}
    return settings if isinstance(settings, dict) else {}


def read_adapter_metadata(directory: str | Path) -> AdapterMetadata:
    """The checked `AdapterMetadata` of an adapter directory (or of a run folder's
    ``adapter/``: `adapter_directory`).

    Raises:
        HeartLoRAError: if the directory, the file or its JSON is missing or malformed; the
            message names the file and the key.
    """
    path = adapter_directory(directory) / CONFIG_NAME
    data = read_json(path, f"the {FORMAT} JSON that save_adapter writes")
    return AdapterMetadata.from_json(data, str(path))


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """The checked ``heartlora_config.json`` of an adapter directory, as a plain dict.

    Raises:
        HeartLoRAError: as `read_adapter_metadata`.
    """
    return read_adapter_metadata(directory).to_json()


def load_adapter(
    model: nn.Module, directory: str | Path, strict_architecture: bool = True
) -> nn.Module:
    """Inject the saved adapter into a fresh base ``model`` and load its weights.

    The model's classifier is reset to the adapter's class count when they differ (timm's
    ``reset_classifier``) and then loaded from the file. Returns the same model.

    Raises:
        HeartLoRAError: if the model already carries adapters (loading twice), the adapter was
            saved for another architecture, layer layout or head count, or the weights file is
            not exactly the tensors the adapter's config implies (one missing or extra, or a
            shape, dtype or non-finite value the model cannot use). The file is read and checked
            before any weight is copied.
    """
    directory = adapter_directory(directory)
    metadata = read_adapter_metadata(directory)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise HeartLoRAError(f"{weights_path}: missing adapter weights")
    if has_adapters(model):
        raise HeartLoRAError(
            "this model already carries heartlora adapters; load onto a fresh base model"
        )
    base = architecture_name(model)
    if strict_architecture and metadata.base_model != base:
        raise HeartLoRAError(
            f"{directory}: adapter was saved for {metadata.base_model!r}, the model is {base!r}"
        )
    layers = find_attention_layers(model)
    heads = [layer.num_heads for layer in layers]
    names = [layer.name for layer in layers]
    if heads != metadata.num_heads:
        raise HeartLoRAError(
            f"{directory}: adapter expects heads per layer {metadata.num_heads}, "
            f"the model has {heads}"
        )
    if names != metadata.layers:
        first = next((i for i, (a, b) in enumerate(zip(names, metadata.layers)) if a != b), 0)
        raise HeartLoRAError(
            f"{directory}: adapter expects attention layer {metadata.layers[first]!r} at "
            f"position {first}, the model has {names[first]!r}"
        )
    width = int(layers[0].qkv.in_features)
    if metadata.embed_dim != width:
        raise HeartLoRAError(
            f"{directory}: embed_dim is {metadata.embed_dim}, the model's width is {width}"
        )
    num_classes = metadata.num_classes
    if num_classes is not None and _num_classes(model) not in (None, num_classes):
        if not hasattr(model, "reset_classifier"):
            raise HeartLoRAError(
                f"{directory}: adapter has {num_classes} classes, the model differs"
            )
        model.reset_classifier(num_classes)
    tensors = _read_adapter_tensors(weights_path)
    inject(model, metadata.config)
    set_head_masks(model, [torch.tensor(mask, dtype=torch.bool) for mask in metadata.head_masks])
    if metadata.scores is not None:
        model.heartlora_scores = torch.tensor(
            [[math.nan if v is None else v for v in row] for row in metadata.scores]
        )
    targets = _adapter_targets(model)
    _check_complete(tensors, targets, weights_path)
    with torch.no_grad():
        for key, value in tensors.items():
            targets[key].copy_(value.to(targets[key].dtype))
    return model


def _read_adapter_tensors(weights_path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(weights_path))
    except Exception as error:  # truncated or foreign files: safetensors raises its own errors
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise HeartLoRAError(
            f"{weights_path}: cannot read adapter weights ({reason}; expected a safetensors file "
            "written by save_adapter)"
        ) from None


def _adapter_targets(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor an adapter file must hold for ``model`` (injected): each adapter's
    ``lora_A`` and ``lora_B`` and the classifier's parameters, by their names in the model."""
    targets: dict[str, torch.Tensor] = {}
    for name, adapter in adapter_modules(model):
        targets[f"{name}.lora_A"] = adapter.lora_A
        targets[f"{name}.lora_B"] = adapter.lora_B
    classifier = classifier_state(model).keys()
    live = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    targets.update({key: live[key] for key in classifier})
    return targets


def _check_complete(
    tensors: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], weights_path: Path
) -> None:
    """Refuse an adapter file that is not exactly the set of tensors its config implies: a
    tensor missing, one with no place in an adapter (a backbone weight, a renamed key), a shape,
    dtype or value (NaN, inf) the model cannot use."""
    missing = [key for key in targets if key not in tensors]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise HeartLoRAError(
            f"{weights_path}: tensor {missing[0]!r}{more} missing (expected all "
            f"{len(targets)} tensors the adapter's config implies: every lora_A, lora_B and the "
            "classifier)"
        )
    for key, value in tensors.items():
        target = targets.get(key)
        if target is None:
            raise HeartLoRAError(
                f"{weights_path}: tensor {key!r} has no place in this adapter (expected only "
                "lora_A, lora_B and classifier tensors)"
            )
        if target.shape != value.shape:
            raise HeartLoRAError(
                f"{weights_path}: {key} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(target.shape)}"
            )
        if not value.is_floating_point():
            raise HeartLoRAError(
                f"{weights_path}: {key} has dtype {str(value.dtype).removeprefix('torch.')} "
                "(expected a floating-point tensor)"
            )
        if not bool(torch.isfinite(value).all()):
            raise HeartLoRAError(
                f"{weights_path}: {key} holds NaN or infinite values (expected finite weights)"
            )
