"""Per-head low-rank adapters for the attention projections of a Vision Transformer.

`HeadLoRAQKV` wraps a fused qkv linear (out = 3·H·head_dim rows). For each targeted projection
p ∈ {q, k, v} it adds

    Δ_p(x) = s · (x @ A_p^T) @ B_p^T        A_p: r × d (shared by the heads of p)
                                            B_p: H·head_dim × r = [B_p,1; …; B_p,H]

Head h is *active* when its blocks B_p,h exist. Deactivated blocks are removed from the
parameter (no gradient, no optimizer state, not saved): `lora_B` holds only the active rows,
and a precomputed index scatters the update into the qkv output, so a forward is one matmul
for all A's, one batched matmul for all B's and one `index_add_`, whatever the head pattern.

`HeadLoRAProj` wraps the output projection, whose input is the concatenation of the heads:
there head h's block is the columns of A that read head h's features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from heartlora.errors import HeartLoRAError

QKV_SLOT = {"q": 0, "k": 1, "v": 2}


def _check_head_mask(mask: torch.Tensor, num_heads: int, where: str) -> torch.Tensor:
    mask = torch.as_tensor(mask, dtype=torch.bool).flatten().cpu()
    if mask.numel() != num_heads:
        raise HeartLoRAError(f"{where}: head mask has {mask.numel()} entries, expected {num_heads}")
    if not bool(mask.any()):
        raise HeartLoRAError(f"{where}: a head mask must keep at least one of {num_heads} heads")
    return mask


class HeadLoRAQKV(nn.Module):
    """A fused qkv linear plus per-head low-rank updates of some of q, k and v.

    Args:
        base: the model's qkv ``nn.Linear`` (in_features d, out_features 3·H·head_dim); frozen.
        num_heads: H.
        rank: r.
        scale: s.
        targets: any of ``"q", "k", "v"``.

    Shapes: ``lora_A`` (P·r, d), ``lora_B`` (P, n_active·head_dim, r) for P targets;
    ``head_mask`` (H,) bool; input (..., d) → output (..., 3·H·head_dim).
    """

    def __init__(
        self, base: nn.Linear, num_heads: int, rank: int, scale: float, targets: tuple[str, ...]
    ) -> None:
        super().__init__()
        if base.out_features % (3 * num_heads):
            raise HeartLoRAError(
                f"qkv linear has {base.out_features} outputs, not a multiple of 3 × {num_heads} heads"
            )
        self.base = base
        self.num_heads = num_heads
        self.head_dim = base.out_features // (3 * num_heads)
        self.rank = rank
        self.scale = float(scale)
        self.targets = tuple(t for t in ("q", "k", "v") if t in targets)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        num_targets = len(self.targets)
        self.lora_A = nn.Parameter(torch.empty(num_targets * rank, base.in_features, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(
            torch.zeros(num_targets, num_heads * self.head_dim, rank, **factory)
        )
        self.register_buffer("head_mask", torch.ones(num_heads, dtype=torch.bool))
        self.register_buffer("_rows", self._active_rows(), persistent=False)

    def _active_rows(self) -> torch.Tensor:
        """Indices of the qkv output rows that active heads of targeted projections write."""
        heads = torch.nonzero(self.head_mask.cpu()).flatten()
        per_head = heads[:, None] * self.head_dim + torch.arange(self.head_dim)
        width = self.num_heads * self.head_dim
        slots = torch.tensor([QKV_SLOT[t] for t in self.targets])
        rows = slots[:, None] * width + per_head.flatten()[None, :]
        return rows.flatten().to(self.base.weight.device)

    @property
    def active_heads(self) -> int:
        """How many heads still have B blocks."""
        return int(self.head_mask.sum())

    def set_head_mask(self, mask: torch.Tensor) -> None:
        """Keep only the heads where ``mask`` is True; the others' B blocks are removed.

        A head that stays active keeps its trained block; a head that becomes active again starts
        from zero. The parameter is replaced: build the optimizer after calling this.
        """
        mask = _check_head_mask(mask, self.num_heads, "qkv adapter")
        old = self.head_mask.cpu()
        blocks = self.lora_B.detach().unflatten(1, (int(old.sum()), self.head_dim))
        new_blocks = blocks.new_zeros(blocks.shape[0], int(mask.sum()), self.head_dim, self.rank)
        keep_old = mask[old]  # among old active heads, which stay
        keep_new = old[mask]  # among new active heads, which existed
        new_blocks[:, keep_new] = blocks[:, keep_old]
        requires_grad = self.lora_B.requires_grad
        self.lora_B = nn.Parameter(new_blocks.flatten(1, 2), requires_grad=requires_grad)
        self.head_mask.copy_(mask.to(self.head_mask.device))
        self._rows = self._active_rows()

    def delta_weight(self) -> torch.Tensor:
        """s·B·A scattered into a (3·H·head_dim, d) matrix: what `merge` adds to the qkv weight."""
        a = self.lora_A.unflatten(0, (len(self.targets), self.rank))
        blocks = torch.bmm(self.lora_B, a).flatten(0, 1)
        delta = torch.zeros_like(self.base.weight)
        return delta.index_add_(0, self._rows, blocks.to(delta.dtype), alpha=self.scale)

    def lora_update(self, x: torch.Tensor) -> torch.Tensor:
        """The update of the active rows only: (..., P·n_active·head_dim), scale applied."""
        z = F.linear(x, self.lora_A.to(x.dtype)).unflatten(-1, (len(self.targets), self.rank))
        lead = z.shape[:-2]
        z = z.reshape(-1, len(self.targets), self.rank).transpose(0, 1)
        update = torch.bmm(z, self.lora_B.to(x.dtype).transpose(1, 2))
        return update.transpose(0, 1).reshape(*lead, -1) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x).index_add_(-1, self._rows, self.lora_update(x))

    def extra_repr(self) -> str:
        return (
            f"targets={self.targets}, rank={self.rank}, scale={self.scale}, "
            f"active_heads={self.active_heads}/{self.num_heads}"
        )


class HeadLoRAProj(nn.Module):
    """The attention output projection plus a low-rank update whose A reads active heads only.

    Δ(x) = s · B · (A · x[active columns]); A: (r, n_active·head_dim), B: (d_out, r), B zero-init.

    Args:
        base: the model's ``proj`` ``nn.Linear`` (in_features H·head_dim); frozen.
        num_heads: H.
        rank: r.
        scale: s.
    """

    def __init__(self, base: nn.Linear, num_heads: int, rank: int, scale: float) -> None:
        super().__init__()
        if base.in_features % num_heads:
            raise HeartLoRAError(
                f"proj linear has {base.in_features} inputs, not a multiple of {num_heads} heads"
            )
        self.base = base
        self.num_heads = num_heads
        self.head_dim = base.in_features // num_heads
        self.rank = rank
        self.scale = float(scale)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        self.register_buffer("head_mask", torch.ones(num_heads, dtype=torch.bool))
        self.register_buffer("_cols", self._active_cols(), persistent=False)

    def _active_cols(self) -> torch.Tensor:
        heads = torch.nonzero(self.head_mask.cpu()).flatten()
        cols = heads[:, None] * self.head_dim + torch.arange(self.head_dim)
        return cols.flatten().to(self.base.weight.device)

    @property
    def active_heads(self) -> int:
        """How many heads' columns of A remain."""
        return int(self.head_mask.sum())

    def set_head_mask(self, mask: torch.Tensor) -> None:
        """Keep only the heads where ``mask`` is True (their A columns); see `HeadLoRAQKV`."""
        mask = _check_head_mask(mask, self.num_heads, "proj adapter")
        old = self.head_mask.cpu()
        blocks = self.lora_A.detach().unflatten(1, (int(old.sum()), self.head_dim))
        new_blocks = blocks.new_zeros(self.rank, int(mask.sum()), self.head_dim)
        new_blocks[:, old[mask]] = blocks[:, mask[old]]
        fresh = ~old[mask]
        if bool(fresh.any()):
            nn.init.kaiming_uniform_(new_blocks[:, fresh], a=math.sqrt(5))
        requires_grad = self.lora_A.requires_grad
        self.lora_A = nn.Parameter(new_blocks.flatten(1), requires_grad=requires_grad)
        self.head_mask.copy_(mask.to(self.head_mask.device))
        self._cols = self._active_cols()

    def delta_weight(self) -> torch.Tensor:
        """s·B·A placed in the active columns of a (d_out, H·head_dim) matrix."""
        delta = torch.zeros_like(self.base.weight)
        block = (self.lora_B @ self.lora_A).to(delta.dtype)
        return delta.index_add_(1, self._cols, block, alpha=self.scale)

    def lora_update(self, x: torch.Tensor) -> torch.Tensor:
        """The update (..., d_out), scale applied."""
        if self.active_heads < self.num_heads:
            x = x.index_select(-1, self._cols)
        return F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype)) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_update(x)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale}, active_heads={self.active_heads}/{self.num_heads}"


ADAPTER_TYPES = (HeadLoRAQKV, HeadLoRAProj)
