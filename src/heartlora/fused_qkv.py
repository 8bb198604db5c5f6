"""The fused kernel of `heartlora.adapters.HeadLoRAQKV`: its forward and backward in one
autograd function.

`HeadLoRAQKV.reference_forward` is the definition of the adapter's output; `fused_qkv_lora`
computes the same numbers (tests/test_fused_qkv.py holds the two together in value and in the
gradients of x, A and B) with less memory traffic:

* forward: one matmul computes z = x·A^T for every projection at once, and one in-place GEMM per
  projection adds s·z_p·B_p^T straight into that projection's columns of the base qkv output —
  no update tensor, no scatter over activations;
* backward: exactly the gradients LoRA needs (no copy of the output gradient, one GEMM each for
  ∂z and ∂B over all projections), recomputing z rather than keeping it, so the adapter adds no
  saved activation.

With deactivated heads, B_p is padded with zero rows for them (a scatter of the small weight,
not of activations): the compute is that of all heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fused_qkv_lora(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    *,
    rows: torch.Tensor | None,
    slots: tuple[int, ...],
    a_index: tuple[int, ...],
    scale: float,
) -> torch.Tensor:
    """out = x·W^T + b, plus s·(x·A_p^T)·B_p^T added into the active heads' rows of each
    targeted projection p; differentiable in x, W, b, A and B.

    Args:
        x: (M, d) input rows.
        weight: (3·D, d) the fused qkv weight, D = H·head_dim.
        bias: (3·D,) or None.
        lora_A: (n_A·r, d): one A per projection (n_A = P) or one shared A (n_A = 1).
        lora_B: (P, n·head_dim, r): each targeted projection's B for the n active heads.
        rows: (n·head_dim,) int64, the rows within a projection's D that the active heads
            write, in head order; None when every head is active.
        slots: (P,) each targeted projection's position among q, k, v (0, 1, 2).
        a_index: (P,) which of the n_A blocks of ``lora_A`` each projection reads.
        scale: s.

    Returns:
        (M, 3·D), in the dtype of the inputs (all of one dtype).
    """
    return _FusedQKVLoRA.apply(x, weight, bias, lora_A, lora_B, rows, slots, a_index, scale)


class _FusedQKVLoRA(torch.autograd.Function):
    """`fused_qkv_lora`'s forward and backward (autograd functions take positional arguments).

    Backward reads the output gradient in place (no copy) and recomputes z = x·A^T instead of
    keeping it, so the adapter keeps no activation beyond the input the base linear keeps too.
    Each gradient is computed from the projection's own columns of the output gradient: no
    product over rows or columns that only zeros would fill.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, rows, slots, a_index, scale):
        out = F.linear(x, weight, bias)
        z = F.linear(x, lora_A)
        blocks = _pad_rows(lora_B, rows, weight.shape[0] // 3)
        rank = lora_B.shape[2]
        width = blocks.shape[1]
        for index, (slot, a) in enumerate(zip(slots, a_index)):
            out[:, slot * width : (slot + 1) * width].addmm_(
                z[:, a * rank : (a + 1) * rank], blocks[index].t(), alpha=scale
            )
        ctx.save_for_backward(x, weight, lora_A, lora_B, rows)
        ctx.slots, ctx.a_index, ctx.scale = slots, a_index, scale
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, lora_A, lora_B, rows = ctx.saved_tensors
        slots, a_index, scale = ctx.slots, ctx.a_index, ctx.scale
        need_x, need_weight, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        rank = lora_B.shape[2]
        width = weight.shape[0] // 3
        grad_x = grad_weight = grad_bias = grad_a = grad_b = None
        if need_weight:
            grad_weight = grad.t().mm(x)
        if need_bias:
            grad_bias = grad.sum(0)
        if need_x or need_a:
            # ∂z_a = Σ_p s·∂out_p·B_p over the projections p that read A_a
            blocks = _pad_rows(lora_B, rows, width)
            grad_z = grad.new_zeros(grad.shape[0], lora_A.shape[0])
            for index, (slot, a) in enumerate(zip(slots, a_index)):
                grad_z[:, a * rank : (a + 1) * rank].addmm_(
                    grad[:, slot * width : (slot + 1) * width], blocks[index], alpha=scale
                )
            if need_x:
                grad_x = grad.mm(weight).addmm_(grad_z, lora_A)
            if need_a:
                grad_a = grad_z.t().mm(x)
        elif need_x:
            grad_x = grad.mm(weight)
        if need_b:
            z = F.linear(x, lora_A)
            grad_b = torch.stack(
                [
                    grad[:, slot * width : (slot + 1) * width]
                    .t()
                    .mm(z[:, a * rank : (a + 1) * rank])
                    for slot, a in zip(slots, a_index)
                ]
            )
            if rows is not None:
                grad_b = grad_b.index_select(1, rows)
            if scale != 1.0:
                grad_b.mul_(scale)
        return grad_x, grad_weight, grad_bias, grad_a, grad_b, None, None, None, None


def _pad_rows(blocks: torch.Tensor, rows: torch.Tensor | None, width: int) -> torch.Tensor:
    """(P, n·head_dim, r) blocks of the active heads → (P, width, r), zero rows elsewhere."""
    if rows is None:
        return blocks
    return blocks.new_zeros(blocks.shape[0], width, blocks.shape[2]).index_copy_(1, rows, blocks)
