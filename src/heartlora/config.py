"""`HeartLoRAConfig`: every choice that defines a Heart-LoRA adapter, validated on creation."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from heartlora.errors import HeartLoRAError

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


@dataclass
class HeartLoRAConfig:
    """Configuration of a head-level LoRA adapter and of its head selection.

    Args:
        rank: r, the rank of every low-rank update (> 0).
        scale: s in ΔW = s·B·A.
        targets: which projections get an update; any of ``"q", "k", "v", "proj"``.
        ne: heads to deactivate per layer (modes ``global``, ``layer`` and ``budget``).
        mode: ``global`` (Heart-LoRA: one ranking of head indices from scores accumulated over
            layers), ``layer`` (Heart-LoRA†: rank within each layer), ``percent`` (deactivate
            ``round(percent · H_l)`` heads of layer l, for models whose layers differ in head count),
            ``budget`` (deactivate the ``L · ne`` lowest (layer, head) pairs of the network).
        percent: share of heads to deactivate per layer in ``percent`` mode, in [0, 1).
        scorer: responsiveness scorer, one of `SCORERS` (`heartlora.responsiveness`).
        normalize_layers: divide each layer's scores by their absolute sum before ranking across
            layers (modes ``global`` and ``budget``), so every layer weighs the same.
        invert_scores: negate the scorer's scores before selection, so that the *most*
            responsive heads are deactivated: the ``inverse`` control of any scorer. The older
            spelling ``scorer="inverse"`` is read as ``scorer="taylor", invert_scores=True``
            (`resolve_inverse`).
        calib_warmup_steps: plain-LoRA optimizer steps before the heads are scored (the
            ``taylor`` and ``output-norm`` scorers need trained B blocks; the steps count toward
            the schedule). Formerly ``warmup_steps``.
        calib_batches: training batches the scorer averages over.
        layout: ``per-projection``: one A (r × d) per targeted q/k/v projection; ``shared``: one
            A (r × d) shared by all targeted q/k/v projections of the fused qkv (peft's LoRA on
            qkv), B split per head in both. ``proj`` always has its own A.

    Raises:
        HeartLoRAError: on a non-positive rank, an unknown target, mode, scorer or layout, a
            negative ``ne`` or ``calib_warmup_steps``, a non-positive ``calib_batches`` or a
            ``percent`` outside [0, 1).
    """

    rank: int = 8
    scale: float = 1.0
    targets: tuple[str, ...] = ("q", "v")
    ne: int = 0
    mode: str = "global"
    percent: float = 0.0
    scorer: str = "taylor"
    normalize_layers: bool = False
    invert_scores: bool = False
    calib_warmup_steps: int = 20
    calib_batches: int = 4
    layout: str = "per-projection"

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        self.targets = tuple(self.targets)
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise HeartLoRAError(f"rank must be a positive integer, got {self.rank!r}")
        if not self.targets:
            raise HeartLoRAError(f"targets must name at least one of {', '.join(TARGETS)}")
        for target in self.targets:
            if target not in TARGETS:
                raise HeartLoRAError(
                    f"unknown target {target!r}: expected any of {', '.join(TARGETS)}"
                )
        if len(set(self.targets)) != len(self.targets):
            raise HeartLoRAError(f"targets repeat a projection: {self.targets!r}")
        if self.mode not in MODES:
            raise HeartLoRAError(f"unknown mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if self.scorer not in SCORERS:
            raise HeartLoRAError(
                f"unknown scorer {self.scorer!r}: expected one of {', '.join(SCORERS)}"
            )
        if self.layout not in LAYOUTS:
            raise HeartLoRAError(
                f"unknown layout {self.layout!r}: expected one of {', '.join(LAYOUTS)}"
            )
        for key in ("normalize_layers", "invert_scores"):
            if not isinstance(getattr(self, key), bool):
                raise HeartLoRAError(f"{key} must be true or false, got {getattr(self, key)!r}")
        if not isinstance(self.ne, int) or isinstance(self.ne, bool) or self.ne < 0:
            raise HeartLoRAError(f"ne must be a non-negative integer, got {self.ne!r}")
        self.scorer, self.invert_scores = resolve_inverse(self.scorer, self.invert_scores)
        if not 0.0 <= float(self.percent) < 1.0:
            raise HeartLoRAError(f"percent must be in [0, 1), got {self.percent!r}")
        if self.calib_warmup_steps < 0 or self.calib_batches <= 0:
            raise HeartLoRAError(
                "calib_warmup_steps must be >= 0 and calib_batches > 0, got "
                f"{self.calib_warmup_steps!r} and {self.calib_batches!r}"
            )

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
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise HeartLoRAError(f"{where}: unknown HeartLoRAConfig key(s): {', '.join(unknown)}")
        return cls(**{**data, "targets": tuple(data.get("targets", ("q", "v")))})
