"""The paper's phase: a warm-up of plain LoRA, then score every head, then deactivate some.

`Calibration` owns that phase for one run of a known length: how many optimizer steps the
warm-up takes, the per-step hook a scorer that accumulates over training steps needs
(``sensitivity``, `heartlora.sensitivity`), when the heads are due to be scored, running the
scorer (`heartlora.responsiveness`) and the selection (`heartlora.selection`), and its own state
for an exact resume. A training loop only asks and calls; it decides nothing about heads::

    calibration = Calibration(model, total_steps)
    for step, (images, labels) in enumerate(batches):
        if calibration.due(step):
            calibration.calibrate(scoring_batches, F.cross_entropy)
            optimizer = make_optimizer(model)  # the dropped heads' blocks are gone
        loss_fn(model(images), labels).backward()
        calibration.after_backward()
        optimizer.step(); optimizer.zero_grad()

A new scorer needs its name in `heartlora.config.SCORERS` and its entry in
`heartlora.responsiveness.SCORER_REGISTRY`; one that accumulates over steps also its hook in
`after_backward`. The loop stays as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from heartlora.config import HeartLoRAConfig
from heartlora.errors import HeartLoRAError
from heartlora.inject import head_masks, heads_per_layer, set_head_masks
from heartlora.responsiveness import SCORER_REGISTRY, responsiveness
from heartlora.selection import check_selection, deactivate_heads
from heartlora.sensitivity import HeadSensitivity

CALIB_WARMUP_DEFAULT = 20
"""Warm-up steps of a run whose ``calib_warmup_steps`` is null, when the run is long enough
(`calib_warmup_for`)."""

CALIB_WARMUP_SHARE = 8
"""A warm-up fitted to its run takes at most 1/8 of the run's optimizer steps."""


class CalibWarmupError(HeartLoRAError):
    """A scoring warm-up that does not fit its run (`calib_warmup_for`): too long to leave a
    step to train the selected heads, or too short for the scorer to score after."""


def calib_warmup_for(
    calib_warmup_steps: int | None,
    total_steps: int,
    scorer: str | None = None,
    run: str | None = None,
) -> int:
    """The scoring warm-up rule: the optimizer steps of plain LoRA before the heads are scored,
    in a run of ``total_steps`` optimizer steps.

    * ``calib_warmup_steps`` set: that many, which must leave a step to train the selected
      heads (fewer than ``total_steps``);
    * null: fitted to the run's length: `CALIB_WARMUP_DEFAULT` steps, at most
      1/`CALIB_WARMUP_SHARE` of the run, at least 1 (0 for a one-step run), so that short runs
      still train the selected heads;
    * with ``scorer``: at least the warm-up that scorer needs to score after
      (`heartlora.responsiveness.Scorer.min_calib_warmup_steps`).

    Args:
        calib_warmup_steps: the config's value, or None (null).
        total_steps: the run's optimizer steps.
        scorer: check the warm-up against this scorer's need; None: no check.
        run: what the run's length is made of, for the error message (default: "the run's N
            steps").

    Raises:
        CalibWarmupError: a warm-up that does not fit; the message says what to change.
    """
    if calib_warmup_steps is None:
        warmup = _fitted_calib_warmup(total_steps)
    elif calib_warmup_steps >= total_steps:
        raise CalibWarmupError(
            f"calib_warmup_steps={calib_warmup_steps} must be smaller than the run's "
            f"{total_steps} steps (null adapts it to the run's length)"
            + (f"; {run}" if run else "")
        )
    else:
        warmup = calib_warmup_steps
    needed = SCORER_REGISTRY[scorer].min_calib_warmup_steps if scorer is not None else 0
    if warmup < needed:
        if calib_warmup_steps is None:
            shortest = next(t for t in range(1, 1000) if _fitted_calib_warmup(t) >= needed)
            what = f"the warm-up fitted to this run has {warmup}"
            remedy = f"a run of at least {shortest} steps (more epochs or a smaller batch_size)"
        else:
            what = f"calib_warmup_steps is {warmup}"
            remedy = f"calib_warmup_steps of at least {needed}" + (
                ", or null" if _fitted_calib_warmup(total_steps) >= needed else ""
            )
        others = ", ".join(
            name for name, spec in SCORER_REGISTRY.items() if not spec.min_calib_warmup_steps
        )
        length = run or f"the run's {total_steps} steps"
        raise CalibWarmupError(
            f"scorer {scorer!r} needs {needed} warm-up step(s) before heads are scored, but "
            f"{what} ({length}); expected {remedy}, or a scorer that needs no warm-up: {others}"
        )
    return warmup


def _fitted_calib_warmup(total_steps: int) -> int:
    """`calib_warmup_for` of a null ``calib_warmup_steps``."""
    share = max(1, total_steps // CALIB_WARMUP_SHARE)
    return max(0, min(CALIB_WARMUP_DEFAULT, share, total_steps - 1))


@dataclass(frozen=True)
class CalibrationResult:
    """What `Calibration.calibrate` did.

    Attributes:
        keep: bool (layers × max heads): the heads kept.
        scores: float32 (layers × max heads): the scores the selection used (negated when the
            config inverts them), NaN where a layer has fewer heads.
        accumulated_steps: the warm-up steps the ``sensitivity`` scorer folded in, or 0 when
            the scorer read the given batches.
    """

    keep: torch.Tensor
    scores: torch.Tensor
    accumulated_steps: int


class Calibration:
    """Warm-up → score → select for one injected model and one run of ``total_steps`` steps.

    Args:
        model: a model with heartlora adapters (`heartlora.inject.inject`).
        total_steps: the run's optimizer steps.
        config: the adapters' settings (``scorer``, ``calib_batches``, ``calib_warmup_steps``,
            ``ne``, ``mode``, ...); default: the model's injected config. It is not changed:
            ``self.config`` is a copy with the warm-up this run takes.
        fit_warmup: ignore ``config.calib_warmup_steps`` and fit the warm-up to the run's
            length (`calib_warmup_for` of null). When ``config`` is the model's own, the model's
            config is replaced by ``self.config``, so the adapter file says what the run used.
        seed: seeds the ``random`` control.

    Raises:
        HeartLoRAError: a model without adapters, or a warm-up that leaves no step to train
            (`CalibWarmupError`).
    """

    def __init__(
        self,
        model: nn.Module,
        total_steps: int,
        config: HeartLoRAConfig | None = None,
        fit_warmup: bool = False,
        seed: int = 0,
    ) -> None:
        injected = getattr(model, "heartlora_config", None)
        given = config or injected
        if given is None:
            raise HeartLoRAError("model has no heartlora adapters; call inject() first")
        self.model = model
        self.seed = seed
        self.calib_warmup_steps = calib_warmup_for(
            None if fit_warmup else given.calib_warmup_steps, total_steps
        )
        self.config = replace(given, calib_warmup_steps=self.calib_warmup_steps)
        if given is injected:
            model.heartlora_config = self.config
        check_selection(model, self.config)  # ne, mode, percent: refused now, not after warm-up
        # the `sensitivity` scorer accumulates over every warm-up step
        self.sensitivity = HeadSensitivity(model) if given.scorer == "sensitivity" else None
        self.done = False

    def due(self, step: int) -> bool:
        """True when the heads are to be scored before optimizer step ``step`` (0-based)."""
        return not self.done and step >= self.calib_warmup_steps

    def after_backward(self) -> None:
        """The per-step hook: call after each warm-up backward, before the optimizer step."""
        if self.sensitivity is not None:
            self.sensitivity.update()

    def score(
        self,
        batches: Iterable,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, int]:
        """The heads' scores, from the warm-up steps the scorer accumulated, else from at most
        ``calib_batches`` of ``batches`` (training data only); changes no head.

        Returns:
            The float32 (layers × max heads) scores and the warm-up steps they accumulate
            (0: they were read from ``batches``).
        """
        if self.sensitivity is not None and self.sensitivity.steps:
            return self.sensitivity.scores(), self.sensitivity.steps
        scores = responsiveness(
            self.model,
            batches,
            loss_fn,
            scorer=self.config.scorer,
            max_batches=self.config.calib_batches,
            seed=self.seed,
        )
        return scores, 0

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        """Deactivate heads from ``scores`` as the config says (`deactivate_heads`); ends the
        phase. Build the optimizer (and compile) again after this.

        Returns:
            The bool (layers × max heads) keep-mask.

        Raises:
            HeartLoRAError: the heads were selected already: a second selection would reset
                trained blocks and reactivate dropped heads with empty ones.
        """
        if self.done:
            raise HeartLoRAError(
                "the heads are selected already: a Calibration selects once (a second selection "
                "would discard trained blocks); make a new model to select again"
            )
        keep = deactivate_heads(self.model, scores, self.config)
        self.sensitivity = None
        self.done = True
        return keep

    def calibrate(
        self,
        batches: Iterable,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> CalibrationResult:
        """`score`, then `select`: the phase's end."""
        scores, steps = self.score(batches, loss_fn)
        keep = self.select(scores)
        return CalibrationResult(keep, self.model.heartlora_scores, steps)

    def state_dict(self) -> dict[str, Any]:
        """The phase's state for an exact resume: ``head_masks`` and ``scores`` once the heads
        are selected (else None), ``sensitivity`` while it accumulates (else None)."""
        return {
            "head_masks": head_masks(self.model) if self.done else None,
            "scores": getattr(self.model, "heartlora_scores", None),
            "sensitivity": self.sensitivity.state_dict() if self.sensitivity is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any], where: str = "checkpoint") -> None:
        """Restore `state_dict` output onto this model; selected heads are deactivated again.

        Raises:
            HeartLoRAError: naming ``where`` when the state does not fit this model.
        """
        masks = state.get("head_masks")
        if masks is not None:
            heads = heads_per_layer(self.model)
            if len(masks) != len(heads) or any(
                not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.numel() != h
                for m, h in zip(masks, heads)
            ):
                raise HeartLoRAError(
                    f"{where}: checkpoint does not fit this run's model (head_masks)"
                )
            set_head_masks(self.model, masks)
            self.model.heartlora_scores = state.get("scores")
        saved_sensitivity = state.get("sensitivity")
        if self.sensitivity is not None and saved_sensitivity is not None:
            if not isinstance(saved_sensitivity, dict):
                raise HeartLoRAError(
                    f"{where}: checkpoint does not fit this run's model (sensitivity)"
                )
            self.sensitivity.load_state_dict(saved_sensitivity, where)
        if masks is not None:
            self.sensitivity = None
            self.done = True
