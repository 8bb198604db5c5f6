"""The fine-tuning methods: what each one trains, how its model is built, and what it stores.

`METHODS` is the registry every other part reads — config validation, the trainer, the suite and
the speed benchmark — so a method is described once:

* ``linear`` — the classifier only; stores the classifier;
* ``full`` — every parameter; stores the whole state dict;
* ``lora`` — heartlora adapters on all heads (plain LoRA); stores an adapter directory;
* ``heart-lora`` / ``heart-lora-layer`` — the same adapters, then responsiveness-based head
  deactivation with one global ranking (Heart-LoRA) or a ranking within each layer (Heart-LoRA†);
* ``peft-lora`` — Hugging Face peft LoRA on the fused qkv linear (the reference implementation).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

from heartlora.adapter_io import (
    CONFIG_NAME,
    PEFT_CONFIG_NAME,
    PEFT_WEIGHTS_NAME,
    STATE_WEIGHTS_NAME,
    WEIGHTS_NAME,
    RunInfo,
    save_adapter,
)
from heartlora.atomic import atomic_write_bytes
from heartlora.backbone import classifier_path
from heartlora.config import HeartLoRAConfig
from heartlora.errors import HeartLoRAError
from heartlora.inject import inject, mark_trainable


def wrap_with_peft_lora(model: nn.Module, rank: int, scale: float) -> nn.Module:
    """peft LoRA of rank ``rank`` on every fused ``qkv`` linear, scaling ``scale`` (α = s·r), the
    classifier trained and saved as a ``modules_to_save`` module.

    Raises:
        HeartLoRAError: when peft is not installed.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise HeartLoRAError(
            "peft LoRA needs the peft package: install it with `pip install heartlora[peft]`"
        ) from None
    head = classifier_path(model)
    peft_config = LoraConfig(
        r=rank,
        lora_alpha=scale * rank,
        target_modules=["qkv"],
        modules_to_save=[head] if head else None,
        lora_dropout=0.0,
    )
    return get_peft_model(model, peft_config)


def _save_trainable(model: nn.Module, directory: Path, whole: bool) -> None:
    state = (
        model.state_dict()
        if whole
        else {name: p for name, p in model.named_parameters() if p.requires_grad}
    )
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write_bytes(directory / STATE_WEIGHTS_NAME, save(tensors))


def _build_full(model: nn.Module, adapter: HeartLoRAConfig) -> nn.Module:
    return model.requires_grad_(True)


def _build_linear(model: nn.Module, adapter: HeartLoRAConfig) -> nn.Module:
    mark_trainable(model)  # no adapters: only the classifier trains (a linear probe)
    return model


def _build_heartlora(model: nn.Module, adapter: HeartLoRAConfig) -> nn.Module:
    return inject(model, adapter)


def _build_peft(model: nn.Module, adapter: HeartLoRAConfig) -> nn.Module:
    return wrap_with_peft_lora(model, adapter.rank, adapter.scale)


def _store_state(whole: bool) -> Callable[[nn.Module, Path, RunInfo], None]:
    return lambda model, directory, _info: _save_trainable(model, directory, whole)


@dataclass(frozen=True)
class Method:
    """One fine-tuning method.

    Attributes:
        name: the ``method`` config value.
        description: one line for help texts.
        trains: what receives gradients, in words.
        stores: what the run's ``adapter/`` folder holds, in words.
        build: ``build(model, adapter) -> model``: freeze, inject or wrap a fresh base model;
            ``adapter`` is the run's `HeartLoRAConfig` (peft-lora reads its rank and scale,
            linear and full nothing).
        store: ``store(model, directory, run_info)``: write what the method trained (a
            heartlora adapter keeps the `RunInfo` in its metadata).
        files: the files ``store`` always writes in ``adapter/`` (a run without them has lost
            what it trained).
        uses_heartlora: it injects heartlora adapters (`HeadLoRAQKV`, ...).
        selection_mode: for methods that score and deactivate heads, their default
            `HeartLoRAConfig.mode`; ``None`` for the others.
    """

    name: str
    description: str
    trains: str
    stores: str
    build: Callable[[nn.Module, HeartLoRAConfig], nn.Module]
    store: Callable[[nn.Module, Path, RunInfo], None]
    files: tuple[str, ...]
    uses_heartlora: bool = False
    selection_mode: str | None = None

    @property
    def selects_heads(self) -> bool:
        """True for the methods that score heads and deactivate some of them."""
        return self.selection_mode is not None


def _store_adapter(model: nn.Module, directory: Path, run_info: RunInfo) -> None:
    save_adapter(model, directory, extra=run_info)


def _store_peft(model: nn.Module, directory: Path, _info: RunInfo) -> None:
    """peft's `save_pretrained`, staged in a temporary folder beside ``directory``, then moved
    in file by file with `atomic_write_bytes`: a failed write (a full disk) is an `OSError`
    naming the folder or the file, and the files already there are kept."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{directory.name}.", dir=directory.parent) as staging:
        try:
            model.save_pretrained(staging)
        except Exception as error:  # peft and safetensors report a full disk in their own types
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise OSError(
                None,
                f"cannot write the peft adapter ({reason or type(error).__name__}); the "
                "previous one, if any, is kept",
                str(directory),
            ) from error
        for path in sorted(Path(staging).rglob("*")):
            if path.is_file():
                target = directory / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(target, path.read_bytes())


_HEARTLORA = dict(
    trains="adapters and classifier",
    stores="heartlora adapter directory (active heads only) and classifier",
    build=_build_heartlora,
    store=_store_adapter,
    files=(WEIGHTS_NAME, CONFIG_NAME),
    uses_heartlora=True,
)

METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method(
            "linear",
            "classifier only; the backbone is frozen",
            trains="classifier",
            stores="classifier weights",
            build=_build_linear,
            store=_store_state(whole=False),
            files=(STATE_WEIGHTS_NAME,),
        ),
        Method(
            "full",
            "every parameter is trained",
            trains="every parameter",
            stores="the whole state dict",
            build=_build_full,
            store=_store_state(whole=True),
            files=(STATE_WEIGHTS_NAME,),
        ),
        Method("lora", "heartlora adapters on all heads (plain LoRA)", **_HEARTLORA),
        Method(
            "heart-lora",
            "Heart-LoRA: responsiveness-based deactivation, one global head ranking",
            selection_mode="global",
            **_HEARTLORA,
        ),
        Method(
            "heart-lora-layer",
            "Heart-LoRA†: responsiveness-based deactivation ranked within each layer",
            selection_mode="layer",
            **_HEARTLORA,
        ),
        Method(
            "peft-lora",
            "Hugging Face peft LoRA on the fused qkv linear (reference implementation)",
            trains="peft LoRA on qkv and classifier",
            stores="peft adapter directory (save_pretrained)",
            build=_build_peft,
            store=_store_peft,
            files=(PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME),
        ),
    )
}
"""Every method by name."""


def get_method(name: str) -> Method:
    """The registered method ``name``; raises `HeartLoRAError` for an unknown one."""
    try:
        return METHODS[name]
    except KeyError:
        raise HeartLoRAError(
            f"unknown method {name!r}; expected one of {', '.join(METHODS)}"
        ) from None


def prepare_model(model: nn.Module, method: str, adapter: HeartLoRAConfig) -> nn.Module:
    """Freeze/inject/wrap ``model`` for ``method`` with the run's adapter settings; returns the
    model to train."""
    return get_method(method).build(model, adapter)


def directory_bytes(directory: Path, suffix: str | None = None) -> int:
    """Bytes of the files under ``directory`` (recursively), optionally only names ending in
    ``suffix``: what a method stores per task."""
    return sum(
        path.stat().st_size
        for path in Path(directory).rglob("*")
        if path.is_file() and (suffix is None or path.name.endswith(suffix))
    )


def save_trained(model: nn.Module, method: str, directory: Path, run_info: RunInfo) -> int:
    """Store what ``method`` trained in ``directory``; returns the bytes stored."""
    directory.mkdir(parents=True, exist_ok=True)
    get_method(method).store(model, directory, run_info)
    return directory_bytes(directory)


def parameters_to_train(model: nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimizer updates (those that require a gradient; their count is
    `heartlora.inject.trainable_parameters`)."""
    return [p for p in model.parameters() if p.requires_grad]
