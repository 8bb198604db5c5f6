"""The fine-tuning methods: what each one trains, how its model is built, and what it stores.

`METHODS` is the registry every other part reads — config validation, the trainer, the suite and
the speed benchmark — so a method is described once:

* ``linear`` — the classifier only; stores the classifier;
* ``full`` — every parameter; stores the whole state dict;
* ``lora`` — heartlora adapters on all heads (plain LoRA); stores an adapter directory;
* ``heart-lora`` / ``heart-lora-layer`` — the same adapters, then responsiveness-based head
  deactivation with one global ranking (Heart-LoRA) or a ranking within each layer (Heart-LoRA†);
* ``peft-lora`` — Hugging Face peft LoRA on the fused qkv linear (the reference implementation);
* ``peft-<method>`` — the rest of peft's field on the same linear (`PEFT_METHODS`: DoRA, rsLoRA,
  PiSSA, AdaLoRA, VeRA, LoHa, LoKr, OFT, BOFT, FourierFT, IA³, HRA), each built from its peft
  config class and stored with peft's ``save_pretrained``;
* ``bitfit`` — every bias and the classifier; stores those tensors.

Each method names the `KNOB_KEYS` it reads (`Method.knobs`); `check_method_keys` refuses the
others in one line (``peft-ia3 has no rank``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save
from torch import nn

from heartlora.adapter_io import (
    CONFIG_NAME,
    PEFT_CONFIG_NAME,
    PEFT_WEIGHTS_NAME,
    STATE_WEIGHTS_NAME,
    WEIGHTS_NAME,
    RunInfo,
    load_adapter,
    save_adapter,
)
from heartlora.config import HeartLoRAConfig
from heartlora.errors import HeartLoRAError, did_you_mean, one_line
from heartlora.inject import inject, mark_trainable
from heartlora.io.atomic import atomic_write_bytes
from heartlora.models.backbone import classifier_path

KNOB_KEYS: tuple[str, ...] = ("rank", "scale", "n_frequency", "block_size", "peft_options")
"""The `TrainConfig` keys that size or scale a method; each method names those it reads."""


@dataclass(frozen=True)
class MethodSettings:
    """What a method's ``build`` reads from a run (`TrainConfig.method_settings`).

    Attributes:
        adapter: the run's `HeartLoRAConfig`: the heartlora methods read all of it, the
            LoRA-like peft methods its ``rank`` and ``scale``.
        n_frequency: peft-fourierft's learned spectral coefficients per layer; None: peft's.
        block_size: peft-oft's and peft-boft's block size; None: peft's default.
        peft_options: more keyword arguments of the peft method's config class; they win over
            what heartlora sets.
        total_steps: the run's optimizer steps (AdaLoRA's rank-budget schedule needs them).
    """

    adapter: HeartLoRAConfig = field(default_factory=HeartLoRAConfig)
    n_frequency: int | None = None
    block_size: int | None = None
    peft_options: Mapping[str, Any] = field(default_factory=dict)
    total_steps: int | None = None


def _import_peft():
    try:
        import peft
    except ImportError:
        raise HeartLoRAError(
            "the peft methods need the peft package: install it with `pip install heartlora[peft]`"
        ) from None
    return peft


@dataclass(frozen=True)
class PeftMethod:
    """How a ``peft-*`` method makes its peft config.

    Attributes:
        config_class: the name of peft's config class (``"LoraConfig"``, ...).
        kwargs: ``kwargs(settings) -> dict``, the config arguments heartlora sets from the
            run's knobs, over ``target_modules=["qkv"]`` and the classifier as a
            ``modules_to_save`` module; the run's ``peft_options`` win over all of them.
    """

    config_class: str
    kwargs: Callable[[MethodSettings], dict[str, Any]]


def _lora_kwargs(settings: MethodSettings, **extra: Any) -> dict[str, Any]:
    """peft LoRA of rank r with α = s·r, so that ΔW = s·B·A (rsLoRA: s·√r·B·A)."""
    rank = settings.adapter.rank
    return {"r": rank, "lora_alpha": settings.adapter.scale * rank, "lora_dropout": 0.0, **extra}


def _lycoris_kwargs(settings: MethodSettings) -> dict[str, Any]:
    """LoHa and LoKr: rank r, α = s·r (their update is scaled by α/r, as LoRA's)."""
    rank = settings.adapter.rank
    return {"r": rank, "alpha": settings.adapter.scale * rank}


def _adalora_kwargs(settings: MethodSettings) -> dict[str, Any]:
    """AdaLoRA: ``rank`` is the average rank it ends with (``target_r``), starting from
    ``init_r`` = 1.5·rank (peft's 12 → 8); ΔW = (α/init_r)·B·diag(E)·A with α = s·init_r, so
    the scale means what it means for LoRA. Of the run's steps, the first tenth trains at the
    initial rank (``tinit``) and the last fifth at the final one (``tfinal``)."""
    steps = settings.total_steps
    if steps is None:
        raise HeartLoRAError(
            "peft-adalora needs the run's optimizer steps for its rank budget "
            "(MethodSettings.total_steps)"
        )
    rank = settings.adapter.rank
    init_r = settings.peft_options.get("init_r", rank + (rank + 1) // 2)
    return {
        "target_r": rank,
        "init_r": init_r,
        "lora_alpha": settings.adapter.scale * init_r,
        "lora_dropout": 0.0,
        "total_step": steps,
        "tinit": steps // 10,
        "tfinal": steps // 5,
    }


def _optional(key: str, value: Any) -> dict[str, Any]:
    return {} if value is None else {key: value}


PEFT_METHODS: dict[str, PeftMethod] = {
    "peft-lora": PeftMethod("LoraConfig", _lora_kwargs),
    "peft-dora": PeftMethod("LoraConfig", lambda s: _lora_kwargs(s, use_dora=True)),
    "peft-rslora": PeftMethod("LoraConfig", lambda s: _lora_kwargs(s, use_rslora=True)),
    "peft-pissa": PeftMethod("LoraConfig", lambda s: _lora_kwargs(s, init_lora_weights="pissa")),
    "peft-adalora": PeftMethod("AdaLoraConfig", _adalora_kwargs),
    "peft-vera": PeftMethod("VeraConfig", lambda s: {"r": s.adapter.rank}),
    "peft-loha": PeftMethod("LoHaConfig", _lycoris_kwargs),
    "peft-lokr": PeftMethod("LoKrConfig", _lycoris_kwargs),
    "peft-oft": PeftMethod(
        "OFTConfig",
        lambda s: {} if s.block_size is None else {"r": 0, "oft_block_size": s.block_size},
    ),
    "peft-boft": PeftMethod("BOFTConfig", lambda s: _optional("boft_block_size", s.block_size)),
    "peft-fourierft": PeftMethod(
        "FourierFTConfig", lambda s: _optional("n_frequency", s.n_frequency)
    ),
    "peft-ia3": PeftMethod(
        "IA3Config", lambda s: {"target_modules": ["qkv", "fc2"], "feedforward_modules": ["fc2"]}
    ),
    "peft-hra": PeftMethod("HRAConfig", lambda s: {"r": s.adapter.rank}),
}
"""Every ``peft-*`` method and how its peft config is made (docs/training.md, Methods)."""


def check_peft_options(method: str, options: Mapping[str, Any]) -> None:
    """Refuse a ``peft_options`` key that ``method``'s peft config class has no field for.

    Raises:
        HeartLoRAError: naming the key, the class and the closest field.
    """
    if not options:
        return
    if method not in PEFT_METHODS:
        raise HeartLoRAError(f"{method} has no peft_options (only the peft-* methods read them)")
    spec = PEFT_METHODS[method]
    known = [item.name for item in fields(getattr(_import_peft(), spec.config_class))]
    for key in options:
        if key not in known:
            raise HeartLoRAError(
                f"peft_options: {spec.config_class} has no field {key!r}"
                f"{did_you_mean(key, known)}; expected "
                f"fields of peft's {spec.config_class}"
            )


def peft_config(method: str, settings: MethodSettings, model: nn.Module):
    """The peft config of ``method`` (a `PEFT_METHODS` name) for ``model``: the fused ``qkv``
    linear adapted, the classifier trained and saved as a ``modules_to_save`` module.

    Raises:
        HeartLoRAError: peft is missing, or its config class refuses the settings.
    """
    spec = PEFT_METHODS[method]
    config_class = getattr(_import_peft(), spec.config_class)
    head = classifier_path(model)
    kwargs = {
        "target_modules": ["qkv"],
        "modules_to_save": [head] if head else None,
        **spec.kwargs(settings),
        **settings.peft_options,
    }
    try:
        return config_class(**kwargs)
    except (TypeError, ValueError) as error:
        raise HeartLoRAError(
            f"{method}: peft's {spec.config_class} refuses the settings ({one_line(error)[:200]})"
        ) from None


def wrap_with_peft(model: nn.Module, method: str, settings: MethodSettings) -> nn.Module:
    """``model`` wrapped by peft's `get_peft_model` with `peft_config`.

    Raises:
        HeartLoRAError: peft is missing, or cannot adapt this model with these settings
            (e.g. a block size that does not divide the width).
    """
    config = peft_config(method, settings, model)
    try:
        return _import_peft().get_peft_model(model, config)
    except (TypeError, ValueError, RuntimeError) as error:
        raise HeartLoRAError(
            f"{method}: peft cannot adapt this model with these settings ({one_line(error)[:200]})"
        ) from None


def _save_trainable(model: nn.Module, directory: Path, whole: bool) -> None:
    state = (
        model.state_dict()
        if whole
        else {name: p for name, p in model.named_parameters() if p.requires_grad}
    )
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write_bytes(directory / STATE_WEIGHTS_NAME, save(tensors))


def _build_full(model: nn.Module, settings: MethodSettings) -> nn.Module:
    return model.requires_grad_(True)


def _build_linear(model: nn.Module, settings: MethodSettings) -> nn.Module:
    mark_trainable(model)  # no adapters: only the classifier trains (a linear probe)
    return model


def _build_bitfit(model: nn.Module, settings: MethodSettings) -> nn.Module:
    """BitFit: every bias (attention, MLP, norms, patch embedding) and the classifier."""
    mark_trainable(model)
    for name, param in model.named_parameters():
        if name.rsplit(".", 1)[-1] == "bias":
            param.requires_grad_(True)
    return model


def _build_heartlora(model: nn.Module, settings: MethodSettings) -> nn.Module:
    return inject(model, settings.adapter)


def _peft_builder(method: str) -> Callable[[nn.Module, MethodSettings], nn.Module]:
    return lambda model, settings: wrap_with_peft(model, method, settings)


def _store_state(whole: bool) -> Callable[[nn.Module, Path, RunInfo], None]:
    return lambda model, directory, _info: _save_trainable(model, directory, whole)


class StepHook(Protocol):
    """A method's part in the training loop, for the few methods that have one."""

    def penalty(self) -> torch.Tensor | None:
        """A term added to every step's loss (a regulariser of the method), or None."""

    def after_step(self, step: int) -> None:
        """Called after optimizer step ``step`` (0-based), gradients still in place."""

    def state_dict(self) -> dict[str, Any]:
        """What the checkpoint keeps (tensors and plain values) for an exact resume."""

    def load_state_dict(self, state: Any, where: str) -> None:
        """Restore `state_dict`'s value; ``where`` (the checkpoint) starts an error message."""


class AdaLoRABudget:
    """AdaLoRA's part in the loop (Zhang et al., ICLR 2023).

    - Its orthogonal regulariser joins every step's loss (`penalty`). peft adds it only when the
      model's output carries a loss, which a timm model's logits do not.
    - After every optimizer step, before the gradients are cleared, peft's `update_and_allocate`
      smooths the importance scores and masks the least important singular values. The
      smoothed scores (peft's rank allocator) and the rank pattern live outside the
      parameters, so the checkpoint keeps them."""

    _SCORES = ("ipt", "exp_avg_ipt", "exp_avg_unc")

    def __init__(self, model: nn.Module) -> None:
        self.tuner = model.base_model  # peft's AdaLoraModel
        self.config = model.peft_config[model.active_adapter]
        adapter = f".{model.active_adapter}"
        self._left = [p for n, p in model.named_parameters() if ".lora_A" + adapter in n]
        self._right = [p for n, p in model.named_parameters() if ".lora_B" + adapter in n]

    def penalty(self) -> torch.Tensor:
        """``orth_reg_weight`` times the mean, over the adapted matrices' factors, of
        ``‖P Pᵀ − I‖_F`` for each left factor P (rank × in) and ``‖Qᵀ Q − I‖_F`` for each right
        factor Q (out × rank): AdaLoRA's push of P and Q toward orthogonal rows and columns,
        which keeps P·diag(E)·Q an SVD whose singular values E can be masked."""
        grams = [p @ p.T for p in self._left] + [q.T @ q for q in self._right]
        distance = torch.stack(
            [torch.linalg.matrix_norm(g - torch.eye(len(g), device=g.device)) for g in grams]
        ).mean()
        return self.config.orth_reg_weight * distance

    def after_step(self, step: int) -> None:
        self.tuner.update_and_allocate(step)

    def state_dict(self) -> dict[str, Any]:
        allocator = self.tuner.rankallocator
        state: dict[str, Any] = {
            name: {k: v.detach().cpu().clone() for k, v in getattr(allocator, name).items()}
            for name in self._SCORES
        }
        state["rank_pattern"] = self.config.rank_pattern
        return state

    def load_state_dict(self, state: Any, where: str) -> None:
        if not (
            isinstance(state, dict)
            and all(isinstance(state.get(name), dict) for name in self._SCORES)
            and isinstance(state.get("rank_pattern"), (dict, type(None)))
        ):
            raise HeartLoRAError(f"{where}: damaged checkpoint (AdaLoRA budget state)")
        allocator = self.tuner.rankallocator
        device = next(self.tuner.parameters()).device
        for name in self._SCORES:
            setattr(allocator, name, {k: v.to(device) for k, v in state[name].items()})
        self.config.rank_pattern = state["rank_pattern"]


@dataclass(frozen=True)
class Method:
    """One fine-tuning method.

    Attributes:
        name: the ``method`` config value.
        description: one line for help texts.
        trains: what receives gradients, in words.
        stores: what the run's ``adapter/`` folder holds, in words.
        build: ``build(model, settings) -> model``: freeze, inject or wrap a fresh base model
            with the run's `MethodSettings`.
        store: ``store(model, directory, run_info)``: write what the method trained (a
            heartlora adapter keeps the `RunInfo` in its metadata).
        files: the files ``store`` always writes in ``adapter/`` (a run without them has lost
            what it trained).
        load: ``load(model, directory) -> model``: put what ``store`` wrote onto a fresh base.
        knobs: the `KNOB_KEYS` the method reads; ``None`` for the methods older than the peft
            field, which take ``rank`` and ``scale`` whether or not they read them.
        size_knob: the knob that sets the stored bytes (`heartlora.training.budget`), or
            ``None`` when nothing does, or when training decides (heads kept).
        step_hook: ``step_hook(model)``: the method's `StepHook`, for the methods with one.
        uses_heartlora: it injects heartlora adapters (`HeadLoRAQKV`, ...).
        selection_mode: for methods that score and deactivate heads, their default
            `HeartLoRAConfig.mode`; ``None`` for the others.
    """

    name: str
    description: str
    trains: str
    stores: str
    build: Callable[[nn.Module, MethodSettings], nn.Module]
    store: Callable[[nn.Module, Path, RunInfo], None]
    files: tuple[str, ...]
    load: Callable[[nn.Module, Path], nn.Module]
    knobs: tuple[str, ...] | None = None
    size_knob: str | None = None
    step_hook: Callable[[nn.Module], StepHook] | None = None
    uses_heartlora: bool = False
    selection_mode: str | None = None

    @property
    def selects_heads(self) -> bool:
        """True for the methods that score heads and deactivate some of them."""
        return self.selection_mode is not None

    @property
    def knob_keys(self) -> tuple[str, ...]:
        """The `KNOB_KEYS` the method takes (``rank`` and ``scale`` where ``knobs`` is None)."""
        return ("rank", "scale") if self.knobs is None else self.knobs

    def reads(self, key: str) -> bool:
        """Whether the method reads `KNOB_KEYS` member ``key`` (other keys: always true)."""
        return key not in KNOB_KEYS or key in self.knob_keys


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


def _load_peft(model: nn.Module, directory: Path) -> nn.Module:
    return _import_peft().PeftModel.from_pretrained(model, directory)


def _load_state(model: nn.Module, directory: Path) -> nn.Module:
    """Copy ``weights.safetensors`` (the tensors `_save_trainable` wrote) into ``model``."""
    path = directory / STATE_WEIGHTS_NAME
    if not path.is_file():
        raise HeartLoRAError(f"{path}: missing (expected the weights a run stored)")
    unexpected = model.load_state_dict(load_file(str(path)), strict=False).unexpected_keys
    if unexpected:
        raise HeartLoRAError(
            f"{path}: {unexpected[0]} is not a tensor of this model (expected the same base)"
        )
    return model


_HEARTLORA = dict(
    trains="adapters and classifier",
    stores="heartlora adapter directory (active heads only) and classifier",
    build=_build_heartlora,
    store=_store_adapter,
    files=(WEIGHTS_NAME, CONFIG_NAME),
    load=lambda model, directory: load_adapter(model, directory),
    uses_heartlora=True,
)


def _peft_method(
    name: str, description: str, trains: str, knobs: tuple[str, ...], size_knob: str | None
) -> Method:
    return Method(
        name,
        description,
        trains=f"{trains} and classifier",
        stores="peft adapter directory (save_pretrained)",
        build=_peft_builder(name),
        store=_store_peft,
        files=(PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME),
        load=_load_peft,
        knobs=(*knobs, "peft_options"),
        size_knob=size_knob,
        step_hook=AdaLoRABudget if name == "peft-adalora" else None,
    )


_LORA_KNOBS = ("rank", "scale")

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
            load=_load_state,
        ),
        Method(
            "full",
            "every parameter is trained",
            trains="every parameter",
            stores="the whole state dict",
            build=_build_full,
            store=_store_state(whole=True),
            files=(STATE_WEIGHTS_NAME,),
            load=_load_state,
        ),
        Method(
            "lora", "heartlora adapters on all heads (plain LoRA)", size_knob="rank", **_HEARTLORA
        ),
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
        _peft_method(
            "peft-lora",
            "Hugging Face peft LoRA on the fused qkv linear (reference implementation)",
            "peft LoRA on qkv",
            _LORA_KNOBS,
            "rank",
        ),
        _peft_method(
            "peft-dora",
            "peft DoRA: LoRA on qkv plus a learned magnitude per output",
            "peft DoRA on qkv",
            _LORA_KNOBS,
            "rank",
        ),
        _peft_method(
            "peft-rslora",
            "peft rsLoRA: LoRA on qkv scaled by α/√r instead of α/r",
            "peft rsLoRA on qkv",
            _LORA_KNOBS,
            "rank",
        ),
        _peft_method(
            "peft-pissa",
            "peft LoRA on qkv initialised from the weight's principal singular vectors (PiSSA)",
            "peft PiSSA on qkv",
            _LORA_KNOBS,
            "rank",
        ),
        _peft_method(
            "peft-adalora",
            "peft AdaLoRA: SVD-form LoRA on qkv whose ranks are pruned to a budget while training",
            "peft AdaLoRA on qkv",
            _LORA_KNOBS,
            "rank",
        ),
        _peft_method(
            "peft-vera",
            "peft VeRA: frozen random projections shared by all layers, trained scaling vectors",
            "peft VeRA vectors on qkv",
            ("rank",),
            "rank",
        ),
        _peft_method(
            "peft-loha",
            "peft LoHa: a Hadamard product of two low-rank updates on qkv",
            "peft LoHa on qkv",
            _LORA_KNOBS,
            "rank",
        ),
        _peft_method(
            "peft-lokr",
            "peft LoKr: a Kronecker product with a low-rank factor on qkv",
            "peft LoKr on qkv",
            _LORA_KNOBS,
            "rank",
        ),
        _peft_method(
            "peft-oft",
            "peft OFT: a block-diagonal orthogonal rotation of qkv's weight",
            "peft OFT on qkv",
            ("block_size",),
            "block_size",
        ),
        _peft_method(
            "peft-boft",
            "peft BOFT: a butterfly-factored orthogonal rotation of qkv's weight",
            "peft BOFT on qkv",
            ("block_size",),
            "block_size",
        ),
        _peft_method(
            "peft-fourierft",
            "peft FourierFT: a few learned 2-D Fourier coefficients of qkv's update",
            "peft FourierFT on qkv",
            ("n_frequency",),
            "n_frequency",
        ),
        _peft_method(
            "peft-ia3",
            "peft IA³: learned scaling of qkv's outputs and of fc2's inputs",
            "peft IA³ vectors on qkv and fc2",
            (),
            None,
        ),
        _peft_method(
            "peft-hra",
            "peft HRA: a chain of r Householder reflections of qkv's weight",
            "peft HRA on qkv",
            ("rank",),
            "rank",
        ),
        Method(
            "bitfit",
            "BitFit: every bias of the backbone and the classifier",
            trains="every bias and classifier",
            stores="the biases and classifier weights",
            build=_build_bitfit,
            store=_store_state(whole=False),
            files=(STATE_WEIGHTS_NAME,),
            load=_load_state,
            knobs=(),
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


def check_method_keys(method: str, keys: Iterable[str]) -> None:
    """Refuse a `KNOB_KEYS` key in ``keys`` (keys a user set for a run of ``method``) that
    ``method`` does not read: ``peft-ia3 has no rank``. An unknown method passes (config
    validation names it).

    Raises:
        HeartLoRAError: naming the method, the key and the knobs it has.
    """
    known = METHODS.get(method)
    if known is None:
        return
    for key in keys:
        if not known.reads(key):
            has = ", ".join(known.knob_keys) or "none"
            raise HeartLoRAError(f"{method} has no {key} (its settings: {has})")


def prepare_model(
    model: nn.Module, method: str, settings: MethodSettings | HeartLoRAConfig
) -> nn.Module:
    """Freeze/inject/wrap ``model`` for ``method`` with the run's settings (a `HeartLoRAConfig`
    alone stands for `MethodSettings` with nothing else set); returns the model to train."""
    if isinstance(settings, HeartLoRAConfig):
        settings = MethodSettings(settings)
    return get_method(method).build(model, settings)


def load_trained(model: nn.Module, method: str, directory: str | Path) -> nn.Module:
    """Put what ``method`` stored in ``directory`` (a run's ``adapter/``) onto ``model``, a
    fresh base of the run's architecture and class count; returns the model to run."""
    return get_method(method).load(model, Path(directory))


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
