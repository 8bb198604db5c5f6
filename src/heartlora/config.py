"""`HeartLoRAConfig`: every choice that defines a Heart-LoRA adapter, validated on creation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from heartlora.errors import HeartLoRAError

TARGETS: tuple[str, ...] = ("q", "k", "v", "proj")
"""Projections an adapter can target: the three slices of the fused qkv linear, and `proj`."""

MODES: tuple[str, ...] = ("global", "layer", "percent", "budget")
"""Head-selection modes (DESIGN.md §2.3): Heart-LoRA, Heart-LoRA†, per-layer share, network budget."""

SCORERS: tuple[str, ...] = ("taylor", "grad-norm", "output-norm", "redundancy")
"""Responsiveness scorers (DESIGN.md §2.2)."""


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
        scorer: responsiveness scorer: ``taylor``, ``grad-norm``, ``output-norm`` or ``redundancy``.
        warmup_steps: plain-LoRA training steps before scoring (the ``taylor`` and
            ``output-norm`` scorers need trained B blocks; they count toward the schedule).
        calib_batches: training batches the scorer averages over.

    Raises:
        HeartLoRAError: on a non-positive rank, an unknown target, mode or scorer, a negative
            ``ne`` or a ``percent`` outside [0, 1).
    """

    rank: int = 8
    scale: float = 1.0
    targets: tuple[str, ...] = ("q", "v")
    ne: int = 0
    mode: str = "global"
    percent: float = 0.0
    scorer: str = "taylor"
    warmup_steps: int = 20
    calib_batches: int = 4
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

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
        if not isinstance(self.ne, int) or isinstance(self.ne, bool) or self.ne < 0:
            raise HeartLoRAError(f"ne must be a non-negative integer, got {self.ne!r}")
        if not 0.0 <= float(self.percent) < 1.0:
            raise HeartLoRAError(f"percent must be in [0, 1), got {self.percent!r}")
        if self.warmup_steps < 0 or self.calib_batches <= 0:
            raise HeartLoRAError(
                "warmup_steps must be >= 0 and calib_batches > 0, got "
                f"{self.warmup_steps!r} and {self.calib_batches!r}"
            )

    @property
    def qkv_targets(self) -> tuple[str, ...]:
        """The targets that live in the fused qkv linear, in q, k, v order."""
        return tuple(t for t in ("q", "k", "v") if t in self.targets)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (targets as a list)."""
        data = asdict(self)
        data["targets"] = list(self.targets)
        if not data["extra"]:
            del data["extra"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeartLoRAConfig:
        """The inverse of `to_dict`; unknown keys are an error naming them."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise HeartLoRAError(f"unknown HeartLoRAConfig key(s): {', '.join(unknown)}")
        return cls(**{**data, "targets": tuple(data.get("targets", ("q", "v")))})
