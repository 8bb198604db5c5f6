"""`HeartLoRAConfig`: every choice that defines a Heart-LoRA adapter, validated on creation."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from heartlora.errors import HeartLoRAError
from heartlora.io.field_types import check_fields, record_from_mapping

TARGETS: tuple[str, ...] = ("q", "k", "v", "proj")
"""Projections an adapter can target: the three slices of the fused qkv linear, and `proj`."""

MODES: tuple[str, ...] = ("global", "layer", "percent", "budget")
"""Head-selection modes (README, API): Heart-LoRA, Heart-LoRA†, per-layer share, network budget."""

SCORERS: tuple[str, ...] = (
    "taylor",
    "grad-norm",
    "output-norm",
    "redundancy",
    "sensitivity",
    "update-norm",
    "head-gate",
    "weight-taylor",
    "random",
    "inverse",
)
"""Responsiveness scorers (`heartlora.responsiveness`, docs/frontier.md); ``inverse`` is the
deprecated spelling of ``taylor`` with ``invert_scores`` (`resolve_inverse`)."""

INVERSE_SCORER = "inverse"
"""The deprecated scorer name of the inverse control of `INVERSE_OF`."""

INVERSE_OF = "taylor"
"""The scorer that ``scorer: inverse`` inverts."""


def resolve_inverse(scorer: str, invert_scores: bool) -> tuple[str, bool]:
    """The one spelling of the inverse control: ``(scorer, invert_scores)`` with
    ``scorer="inverse"`` (the negated ``taylor`` scores, its older name) written as
    ``("taylor", not invert_scores)``, so that negating twice stays ``taylor`` as it was; any
    other pair as it is."""
    if scorer == INVERSE_SCORER:
        return INVERSE_OF, not invert_scores
    return scorer, invert_scores


LAYOUTS: tuple[str, ...] = ("per-projection", "shared")
"""Where the A matrices of the q/k/v updates live (docs/frontier.md, the default grid): ``per-projection``: one A
(r × d) per targeted q/k/v projection; ``shared``: one A (r × d) shared by all targeted q/k/v
projections of the fused qkv (peft's LoRA on qkv). B is split per head in both."""

RENAMED_KEYS: dict[str, str] = {"warmup_steps": "calib_warmup_steps"}
"""Old config key → its new name. The old name is still read from adapter files, YAML config
files, ``--set`` and suite method brackets, with a `FutureWarning`."""

_REMOVED_KEYS: tuple[str, ...] = ("extra",)
"""Keys older adapter files may hold that carry nothing any more; ignored when reading."""


def rename_deprecated_keys(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``data`` with every old key of `RENAMED_KEYS` replaced by its new name.

    Each old key found emits a `FutureWarning` (shown to end users by default, as
    transformers does for renamed `TrainingArguments`) naming ``where`` and the new key; it is
    attributed to this function, so Python's default filter shows each message once per process.

    Raises:
        HeartLoRAError: if ``data`` holds both the old and the new name of a key.
    """
    renamed = dict(data)
    for old, new in RENAMED_KEYS.items():
        if old not in renamed:
            continue
        if new in renamed:
            raise HeartLoRAError(
                f"{where}: both {old!r} and {new!r} are given; keep only {new!r} "
                f"({old!r} is its deprecated name)"
            )
        warnings.warn(
            f"{where}: config key {old!r} is deprecated, use {new!r}", FutureWarning, stacklevel=1
        )
        renamed = {new if key == old else key: value for key, value in renamed.items()}
    return renamed


def one_of(choices: Iterable[str]) -> str:
    """``("a", "b", "c")`` → ``"`a`, `b` or `c`"`` for help texts."""
    quoted = [f"`{choice}`" for choice in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _setting(default: Any, help: str, **metadata: Any) -> Any:
    """A `HeartLoRAConfig` field: its default, its one-sentence ``help`` (docs and CLI flags
    read it, as peft's `LoraConfig`) and further ``metadata``: ``choices`` (the allowed values)
    or bounds (``minimum``, ``below``), which `heartlora.io.field_types.check_fields` applies."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class HeartLoRAConfig:
    """Configuration of a head-level LoRA adapter and of its head selection.

    Each field's ``metadata["help"]`` says what it means (`TrainConfig` and ``heartlora
    train``'s flags show the same text); ``metadata["choices"]`` lists the allowed values of a
    field that has them.

    Raises:
        HeartLoRAError: on a value of the wrong type, outside its field's ``choices`` or bounds
            (`heartlora.io.field_types.check_fields`), a zero ``scale``, or no or repeated
            targets.
    """

    rank: int = _setting(8, "Rank r of every low-rank update.", minimum=1)
    scale: float = _setting(
        1.0,
        "The scale s in ΔW = s·B·A; the paper picks s ∈ {0.01, 0.1, 1, 10, 100} per task.",
    )
    targets: tuple[str, ...] = _setting(
        ("q", "v"),
        f"Projections that get an update, any of {', '.join(f'`{t}`' for t in TARGETS)}.",
        choices=TARGETS,
    )
    ne: int = _setting(
        0,
        "Heads to deactivate per layer after scoring (modes `global`, `layer`, `budget`); 0 "
        "keeps every head.",
        minimum=0,
    )
    mode: str = _setting(
        "global",
        "Head ranking: `global` (Heart-LoRA: one ranking of head indices from scores summed "
        "over layers), `layer` (Heart-LoRA†: within each layer), `percent` (a share of each "
        "layer's heads) or `budget` (the lowest (layer, head) pairs of the network).",
        choices=MODES,
    )
    percent: float = _setting(
        0.0,
        "Share of each layer's heads to deactivate in mode `percent`, in [0, 1) (models whose "
        "layers differ in head count, such as Swin).",
        minimum=0,
        below=1,
    )
    scorer: str = _setting(
        "taylor",
        f"Head responsiveness scorer: {one_of(SCORERS)} (docs/frontier.md).",
        choices=SCORERS,
    )
    normalize_layers: bool = _setting(
        False,
        "Divide each layer's head scores by their absolute sum before heads are ranked across "
        "layers (modes `global` and `budget`), so that every layer weighs the same in the "
        "global ranking; no effect on per-layer modes.",
    )
    invert_scores: bool = _setting(
        False,
        "Negate the scorer's scores before selection, so the most responsive heads are "
        "deactivated: the `inverse` control of any scorer (`scorer: inverse`, its older "
        "spelling for `taylor`, is read as `scorer: taylor` with this set).",
    )
    calib_warmup_steps: int = _setting(
        20,
        "Optimizer steps of plain LoRA on all heads before the heads are scored (`taylor` and "
        "`output-norm` need trained B blocks; the steps count toward the schedule); formerly "
        "`warmup_steps`.",
        minimum=0,
    )
    calib_batches: int = _setting(
        4,
        "Training batches of the run's batch size that the scorer averages over (never test data).",
        minimum=1,
    )
    layout: str = _setting(
        "per-projection",
        "`per-projection`: one A (r × d) per targeted q/k/v projection; `shared`: one A shared "
        "by all targeted q/k/v of the fused qkv (as peft's LoRA on qkv); B is split per head "
        "in both.",
        choices=LAYOUTS,
    )

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        elif isinstance(self.targets, Iterable) and not isinstance(self.targets, tuple):
            self.targets = tuple(self.targets)
        check_fields(self)
        if self.scale == 0:
            raise HeartLoRAError(
                "scale must be non-zero, got 0 (0 makes every update s·B·A zero: nothing but the "
                "classifier would learn)"
            )
        if not self.targets:
            raise HeartLoRAError(f"targets must name at least one of {', '.join(TARGETS)}")
        if len(set(self.targets)) != len(self.targets):
            raise HeartLoRAError(f"targets repeat a projection: {self.targets!r}")
        self.scorer, self.invert_scores = resolve_inverse(self.scorer, self.invert_scores)

    @property
    def qkv_targets(self) -> tuple[str, ...]:
        """The targets that live in the fused qkv linear, in q, k, v order."""
        return tuple(t for t in ("q", "k", "v") if t in self.targets)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (targets as a list)."""
        data = asdict(self)
        data["targets"] = list(self.targets)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "HeartLoRAConfig") -> HeartLoRAConfig:
        """The inverse of `to_dict`, also reading the configs of older adapter files.

        Older files may spell ``calib_warmup_steps`` ``warmup_steps`` (a `FutureWarning`),
        lack ``layout`` (they are ``per-projection``), lack ``normalize_layers`` and
        ``invert_scores`` (false), or hold an ``extra`` key (ignored).
        ``where`` (e.g. the file) starts the warning and error messages.

        Raises:
            HeartLoRAError: on unknown keys (named), both spellings of a renamed key, or an
                invalid value.
        """
        data = rename_deprecated_keys(data, where)
        data = {k: v for k, v in data.items() if k not in _REMOVED_KEYS}
        return record_from_mapping(cls, data, where, noun="HeartLoRAConfig key")
