"""Smoothed sensitivity: each head's responsiveness accumulated over training steps.

The one-shot ``taylor`` scorer reads a few batches after the warm-up. `HeadSensitivity` instead
follows AdaLoRA (Zhang et al., ICLR 2023, eqs. 8–11): at every step t it takes the sensitivity
of every adapter element, I(t) = |θ · ∂L/∂θ| (θ: the elements of B for the q/k/v updates, of A
for ``proj``), and keeps two exponential moving averages of it,

    Ī(t) = β₁ Ī(t−1) + (1 − β₁) I(t)              (smoothed sensitivity)
    Ū(t) = β₂ Ū(t−1) + (1 − β₂) |I(t) − Ī(t)|      (its uncertainty)

A head's score is the mean of Ī·Ū over the elements of its blocks (all targeted projections).
Updating costs a few element-wise operations on tensors the size of the adapters, on their
device, and never reads a value on the host. This is the ``sensitivity`` scorer:
`heartlora.calibration.Calibration` updates it after every warm-up step;
`heartlora.responsiveness.responsiveness` updates it once per given batch (adapters unchanged
between batches).
"""

from __future__ import annotations

import torch
from torch import nn

from heartlora.errors import HeartLoRAError
from heartlora.head_blocks import head_parameters, pad_rows, per_layer_scores
from heartlora.inject import find_attention_layers

BETA_SMOOTHED = 0.85
"""β₁, AdaLoRA's default for the smoothed sensitivity."""

BETA_UNCERTAINTY = 0.85
"""β₂, AdaLoRA's default for the uncertainty."""


class HeadSensitivity:
    """AdaLoRA's smoothed sensitivity × uncertainty, accumulated over steps, scored per head.

    Args:
        model: a model with heartlora adapters (`heartlora.inject.inject`).
        beta_smoothed, beta_uncertainty: β₁ and β₂ in [0, 1).

    Raises:
        HeartLoRAError: if the model has no heartlora adapters or a β is outside [0, 1).
    """

    def __init__(
        self,
        model: nn.Module,
        beta_smoothed: float = BETA_SMOOTHED,
        beta_uncertainty: float = BETA_UNCERTAINTY,
    ) -> None:
        for name, beta in (
            ("beta_smoothed", beta_smoothed),
            ("beta_uncertainty", beta_uncertainty),
        ):
            if not 0.0 <= beta < 1.0:
                raise HeartLoRAError(f"{name} must be in [0, 1), got {beta!r}")
        self.layers = find_attention_layers(model)
        if not self.layers or any(not layer.adapters for layer in self.layers):
            raise HeartLoRAError(
                "scorer 'sensitivity' needs heartlora adapters; call inject() first"
            )
        self.beta_smoothed = beta_smoothed
        self.beta_uncertainty = beta_uncertainty
        params = head_parameters(self.layers)
        self.smoothed = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        self.uncertainty = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        self.steps = 0

    def _parameters(self) -> list[nn.Parameter]:
        params = head_parameters(self.layers)
        if any(p.shape != s.shape for p, s in zip(params, self.smoothed)):
            raise HeartLoRAError(
                "the adapters' heads changed since this HeadSensitivity was made: make a new one"
            )
        return params

    @torch.no_grad()
    def update(self) -> None:
        """Fold in the current gradients (call after ``backward``, before the optimizer step).

        Parameters without a gradient count as zero sensitivity for this step."""
        for param, smoothed, uncertainty in zip(
            self._parameters(), self.smoothed, self.uncertainty
        ):
            if param.grad is None:
                current = torch.zeros_like(smoothed)
            else:
                current = (param.detach().float() * param.grad.float()).abs_()
            smoothed.lerp_(current, 1.0 - self.beta_smoothed)
            uncertainty.lerp_((current - smoothed).abs_(), 1.0 - self.beta_uncertainty)
        self.steps += 1

    def scores(self) -> torch.Tensor:
        """The (layers × max heads) float32 scores on the CPU, NaN-padded like every scorer's.

        Raises:
            HeartLoRAError: as `layer_scores`.
        """
        return pad_rows(self.layer_scores()).float()

    def layer_scores(self) -> list[torch.Tensor]:
        """One float64 (heads,) CPU row of scores per attention layer.

        Raises:
            HeartLoRAError: before any update, or when every score is zero (untrained adapters:
                B is all zero before the first optimizer step).
        """
        if self.steps == 0:
            raise HeartLoRAError("scorer 'sensitivity' has seen no training step to score on")
        self._parameters()  # the heads must not have changed
        adapters = [adapter for layer in self.layers for adapter in layer.adapters]
        products = {
            id(adapter): smoothed * uncertainty
            for adapter, smoothed, uncertainty in zip(adapters, self.smoothed, self.uncertainty)
        }
        return per_layer_scores(
            self.layers,
            lambda adapter: adapter.split_heads(products[id(adapter)]).mean(1),
            "scorer 'sensitivity' saw only zero sensitivities (all B blocks were zero): it "
            "needs warm-up steps (calib_warmup_steps > 0)",
        )

    def state_dict(self) -> dict[str, object]:
        """The accumulated state, for exact resumption (tensors on the CPU)."""
        return {
            "steps": self.steps,
            "smoothed": [t.cpu() for t in self.smoothed],
            "uncertainty": [t.cpu() for t in self.uncertainty],
        }

    def load_state_dict(self, state: dict[str, object], where: str = "checkpoint") -> None:
        """Restore `state_dict` output.

        Raises:
            HeartLoRAError: naming ``where`` when the state does not fit these adapters.
        """
        smoothed, uncertainty, steps = (
            state.get("smoothed"),
            state.get("uncertainty"),
            state.get("steps"),
        )
        fits = (
            isinstance(steps, int)
            and isinstance(smoothed, list)
            and isinstance(uncertainty, list)
            and len(smoothed) == len(uncertainty) == len(self.smoothed)
            and all(
                isinstance(s, torch.Tensor)
                and isinstance(u, torch.Tensor)
                and s.shape == u.shape == mine.shape
                for s, u, mine in zip(smoothed, uncertainty, self.smoothed)
            )
        )
        if not fits:
            raise HeartLoRAError(f"{where}: the sensitivity state does not fit this run's adapters")
        for mine, saved in zip(self.smoothed + self.uncertainty, smoothed + uncertainty):
            mine.copy_(saved)
        self.steps = steps
