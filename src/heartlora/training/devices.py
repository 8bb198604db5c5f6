"""Where a run or a command computes: the device names heartlora accepts, and what they mean
on this machine."""

from __future__ import annotations

import os
import re

import torch

from heartlora.errors import HeartLoRAError

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "cuda:N")
"""The device names accepted (``cuda:N``: the N-th GPU)."""


def is_device_name(name: str) -> bool:
    """Whether ``name`` is one of `DEVICES` (any N)."""
    return re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", name) is not None


def resolve_device(name: str) -> torch.device:
    """The device ``name`` stands for here: ``auto`` is the GPU of ``LOCAL_RANK`` (0 unless
    started by torchrun) when CUDA is available, else the CPU.

    Raises:
        HeartLoRAError: a CUDA device this machine does not have.
    """
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HeartLoRAError(f"device {name!r} requested but CUDA is not available")
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise HeartLoRAError(
            f"device {name!r}: this machine has {count} CUDA device(s) (expected cuda:0.."
            f"cuda:{count - 1})"
        )
    return device
