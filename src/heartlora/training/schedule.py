"""The learning-rate schedule of the paper: linear warm-up from ``warmup_lr``, then cosine to ``min_lr``.

A pure function of the global step, so rebuilding the optimizer (after head deactivation) or
resuming a run never changes it.
"""

from __future__ import annotations

import math


def learning_rate(
    step: int,
    total_steps: int,
    warmup_steps: int,
    base_lr: float,
    warmup_lr: float,
    min_lr: float,
) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of ``total_steps``."""
    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
