"""The numeric precision a run computes in: one name per choice, and its two contexts.

* ``fp32``: float32 throughout (PyTorch's default: full-precision matrix products).
* ``tf32``: float32 weights and activations; on CUDA the matrix products use TF32 tensor
  cores (inputs rounded to a 10-bit mantissa, float32 accumulation), as timm's training
  script does. Elsewhere it is ``fp32``.
* ``bf16``: bfloat16 autocast of the forward pass; the weights stay float32.

`matmul_precision` covers a whole run (TF32 must hold in the backward pass too, which runs
outside the forward's context); `forward_precision` covers each forward pass (autocast must
not: PyTorch advises against backward passes under autocast).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

DTYPES: tuple[str, ...] = ("fp32", "tf32", "bf16")
"""The precision names a run or a benchmark accepts."""


def _check(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")


@contextmanager
def _tf32_matmuls() -> Iterator[None]:
    """TF32 matrix products on CUDA inside the block; the previous setting after it."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def matmul_precision(dtype: str, device_type: str) -> AbstractContextManager:
    """The context of a whole run (forward, backward, evaluation) in precision ``dtype`` (one
    of `DTYPES`) on a device of type ``device_type``: TF32 matrix products for ``tf32`` on
    CUDA, nothing otherwise."""
    _check(dtype)
    return _tf32_matmuls() if dtype == "tf32" and device_type == "cuda" else nullcontext()


def forward_precision(dtype: str, device_type: str) -> AbstractContextManager:
    """The context of each forward pass: bfloat16 autocast on ``device_type`` for ``bf16``,
    nothing otherwise."""
    _check(dtype)
    if dtype == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return nullcontext()


def slow_precision_note(dtype: str, device_type: str) -> str | None:
    """A one-line note when ``dtype`` leaves a GPU's tensor cores idle (``fp32`` on CUDA), else
    ``None``."""
    _check(dtype)
    if dtype != "fp32" or device_type != "cuda":
        return None
    return (
        "note: dtype fp32 on CUDA runs full-precision float32 matrix products, without tensor "
        "cores; `dtype: tf32` (float32 inputs rounded for TF32 tensor cores) or `dtype: bf16` "
        "(autocast) use them"
    )
