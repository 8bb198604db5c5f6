"""Per-head low-rank adapters for the attention projections of a Vision Transformer.

`HeadLoRAQKV` wraps a fused qkv linear (out = 3·H·head_dim rows). For each targeted projection
p ∈ {q, k, v} it adds

    Δ_p(x) = s · (x @ A_p^T) @ B_p^T        A_p: r × d (shared by the heads of p)
                                            B_p: H·head_dim × r = [B_p,1; …; B_p,H]

Head h is *active* when its blocks B_p,h exist. Deactivated blocks are removed from the
parameter (no gradient, no optimizer state, not saved): `lora_B` holds only the active rows.

`HeadLoRAQKV.reference_forward` is the definition of the adapter's output, written with
autograd's own ops; `HeadLoRAQKV.forward` computes the same numbers with one fused autograd
function (`heartlora.fused_qkv`, tested against the reference in tests/test_fused_qkv.py).

`HeadLoRAProj` wraps the output projection, whose input is the concatenation of the heads:
there head h's block is the columns of A that read head h's features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from heartlora.errors import HeartLoRAError
from heartlora.fused_qkv import fused_qkv_lora

QKV_SLOT = {"q": 0, "k": 1, "v": 2}


def _check_head_mask(mask: torch.Tensor, num_heads: int, where: str) -> torch.Tensor:
    mask = torch.as_tensor(mask, dtype=torch.bool).flatten().cpu()
    if mask.numel() != num_heads:
        raise HeartLoRAError(f"{where}: head mask has {mask.numel()} entries, expected {num_heads}")
    if not bool(mask.any()):
        raise HeartLoRAError(f"{where}: a head mask must keep at least one of {num_heads} heads")
    return mask


def head_feature_indices(head_mask: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Indices of the features that the active heads own, in head order.

    Head h owns features ``h·head_dim … (h+1)·head_dim − 1`` of a projection's H·head_dim: the
    rows of q, k or v in the fused qkv weight, or the input columns of ``proj``. This is the one
    place that arithmetic lives.

    Args:
        head_mask: (H,) bool, True for an active head.
        head_dim: features per head.

    Returns:
        (n_active·head_dim,) int64 on the CPU.
    """
    heads = torch.nonzero(torch.as_tensor(head_mask).cpu()).flatten()
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the matmuls run in: autocast's when it is on for x's device, else x's."""
    device = x.device.type
    try:
        enabled = torch.is_autocast_enabled(device)
    except TypeError:  # torch < 2.4 has no per-device query
        cpu = device == "cpu"
        enabled = torch.is_autocast_cpu_enabled() if cpu else torch.is_autocast_enabled()
        if enabled:
            return torch.get_autocast_cpu_dtype() if cpu else torch.get_autocast_gpu_dtype()
        return x.dtype
    return torch.get_autocast_dtype(device) if enabled else x.dtype


class HeadLoRAAdapter(nn.Module):
    """What every heartlora adapter answers for its own heads; `HeadLoRAQKV` and
    `HeadLoRAProj` are the two kinds.

    Head h of an adapter owns a *block* of its `head_parameter`: features h·head_dim …
    (h+1)·head_dim − 1 of dimension 1 among the active heads (rows of every projection's B for
    q/k/v, columns of A for ``proj``). The scorers, the head masks and the exports read heads
    only through the operations here, never through the parameters' layout.

    Attributes:
        projection: the name of the linear the adapter wraps (``"qkv"`` or ``"proj"``).
        num_heads, head_dim, rank, scale: H, features per head, r and s.
        head_mask: (H,) bool buffer, True for an active head.
    """

    projection: str = ""

    def __init__(self, base: nn.Linear, num_heads: int, head_dim: int, rank: int, scale: float):
        super().__init__()
        self.base = base
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.rank = rank
        self.scale = float(scale)
        self.register_buffer("head_mask", torch.ones(num_heads, dtype=torch.bool))
        self._active_count = num_heads

    @property
    def active_heads(self) -> int:
        """How many heads still have their blocks (a Python int kept by `set_head_mask`:
        reading it never waits for the device)."""
        return self._active_count

    @property
    def head_parameter(self) -> nn.Parameter:
        """The parameter whose dimension-1 blocks are the heads: B for qkv, A for proj."""
        raise NotImplementedError

    def split_heads(self, tensor: torch.Tensor) -> torch.Tensor:
        """`head_parameter`'s shape (or its gradient's) → (active heads n, block size)."""
        return tensor.unflatten(1, (self.active_heads, self.head_dim)).transpose(0, 1).flatten(1)

    def scatter_per_head(self, active_values: torch.Tensor) -> torch.Tensor:
        """Values of the active heads → a float64 (H,) CPU tensor, zeros for inactive heads."""
        full = torch.zeros(self.num_heads, dtype=torch.float64)
        full[self.head_mask.cpu()] = active_values.detach().double().cpu()
        return full

    def set_head_mask(self, mask: torch.Tensor) -> None:
        """Keep only the heads where ``mask`` is True; the others' blocks are removed.

        A head that stays active keeps its trained block; a head that becomes active again gets
        a fresh block (`_init_new_heads`). The parameter is replaced: build the optimizer after
        calling this.
        """
        mask = _check_head_mask(mask, self.num_heads, f"{self.projection} adapter")
        old = self.head_mask.cpu()
        param = self.head_parameter
        blocks = param.detach().unflatten(1, (int(old.sum()), self.head_dim))
        new_blocks = blocks.new_zeros(blocks.shape[0], int(mask.sum()), *blocks.shape[2:])
        new_blocks[:, old[mask]] = blocks[:, mask[old]]  # the heads that stay keep their block
        self._init_new_heads(new_blocks, ~old[mask])
        self._replace_head_parameter(
            nn.Parameter(new_blocks.flatten(1, 2), requires_grad=param.requires_grad)
        )
        self.head_mask.copy_(mask.to(self.head_mask.device))
        self._active_count = int(mask.sum())
        self._update_head_indices()

    def _init_new_heads(self, blocks: torch.Tensor, new: torch.Tensor) -> None:
        """Initialise the blocks of heads that become active again (default: zero)."""

    def _replace_head_parameter(self, param: nn.Parameter) -> None:
        raise NotImplementedError

    def _update_head_indices(self) -> None:
        """Refresh the index buffers the forward reads after the active heads changed."""

    def update_norms(self) -> torch.Tensor:
        """‖s·ΔW_h‖_F of each active head h, float64 (n,), summed over the projections that
        hold it (the ``update-norm`` scorer)."""
        raise NotImplementedError

    def head_output_norms(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n): the norm of each active head's update of the output for input ``x``,
        summed over the projections that hold it (the ``output-norm`` scorer)."""
        raise NotImplementedError

    def peft_lora(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The adapter as one peft LoRA: ``(lora_A, lora_B, scaling)`` with
        ``scaling · lora_B @ lora_A`` equal to `delta_weight`, inactive heads as zeros."""
        raise NotImplementedError

    @torch.no_grad()
    def load_peft_lora(self, lora_a: torch.Tensor, lora_b: torch.Tensor) -> None:
        """Copy a peft LoRA of rank r (A (r, in_features), B (out_features, r), scale folded
        into B) into an adapter whose every head is active."""
        raise NotImplementedError


class HeadLoRAQKV(HeadLoRAAdapter):
    """A fused qkv linear plus per-head low-rank updates of some of q, k and v.

    Args:
        base: the model's qkv ``nn.Linear`` (in_features d, out_features 3·H·head_dim); frozen.
        num_heads: H.
        rank: r.
        scale: s.
        targets: any of ``"q", "k", "v"``.
        shared_a: one A shared by every targeted projection (peft's LoRA on a fused qkv:
            ΔW_p = s·B_p·A) instead of one A per projection (ΔW_p = s·B_p·A_p). At rank r the
            shared layout stores (P−1)·r·d fewer parameters.

    Shapes: ``lora_A`` (P·r, d), or (r, d) when shared; ``lora_B`` (P, n_active·head_dim, r)
    for P targets; ``head_mask`` (H,) bool; input (..., d) → output (..., 3·H·head_dim).

    The module also answers ``weight`` (W + s·B·A, differentiable), ``bias``, ``in_features``
    and ``out_features`` like the ``nn.Linear`` it replaces, for attention code that calls
    ``F.linear(x, self.qkv.weight, bias)`` itself (BEiT, EVA-02); such models pay one
    (3·D × d) weight sum per forward instead of the fused kernel.
    """

    def __init__(
        self,
        base: nn.Linear,
        num_heads: int,
        rank: int,
        scale: float,
        targets: tuple[str, ...],
        shared_a: bool = False,
    ) -> None:
        if base.out_features % (3 * num_heads):
            raise HeartLoRAError(
                f"qkv linear has {base.out_features} outputs, not a multiple of 3 × {num_heads} heads"
            )
        super().__init__(base, num_heads, base.out_features // (3 * num_heads), rank, scale)
        self.targets = tuple(t for t in ("q", "k", "v") if t in targets)
        self.shared_a = bool(shared_a)
        self._slots = tuple(QKV_SLOT[t] for t in self.targets)
        self._a_index = tuple(0 if self.shared_a else i for i in range(len(self.targets)))
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        num_a = 1 if self.shared_a else len(self.targets)
        self.lora_A = nn.Parameter(torch.empty(num_a * rank, base.in_features, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(
            torch.zeros(len(self.targets), num_heads * self.head_dim, rank, **factory)
        )
        self.register_buffer("_rows", self._active_rows(), persistent=False)
        self.register_buffer("_slot_rows", self._active_slot_rows(), persistent=False)

    def _active_slot_rows(self) -> torch.Tensor:
        """Indices, within one projection's H·head_dim rows, of the rows active heads write."""
        return head_feature_indices(self.head_mask, self.head_dim).to(self.base.weight.device)

    def _active_rows(self) -> torch.Tensor:
        """Indices of the qkv output rows that active heads of targeted projections write."""
        per_head = head_feature_indices(self.head_mask, self.head_dim)
        width = self.num_heads * self.head_dim
        slots = torch.tensor(self._slots)
        rows = slots[:, None] * width + per_head[None, :]
        return rows.flatten().to(self.base.weight.device)

    projection = "qkv"

    @property
    def head_parameter(self) -> nn.Parameter:
        """B: head h owns its rows of every projection's B."""
        return self.lora_B

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """W + s·B·A: the effective qkv weight, differentiable in A and B."""
        return self.base.weight + self.delta_weight()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def _replace_head_parameter(self, param: nn.Parameter) -> None:
        self.lora_B = param

    def _update_head_indices(self) -> None:
        self._rows = self._active_rows()
        self._slot_rows = self._active_slot_rows()

    def _a_blocks(self) -> torch.Tensor:
        """A as (P, r, d): each projection's own A, or the shared A repeated (a view)."""
        a = self.lora_A.unflatten(0, (-1, self.rank))
        return a.expand(len(self.targets), -1, -1) if self.shared_a else a

    def delta_weight(self) -> torch.Tensor:
        """s·B·A scattered into a (3·H·head_dim, d) matrix: what `merge` adds to the qkv weight."""
        blocks = torch.bmm(self.lora_B, self._a_blocks()).flatten(0, 1)
        delta = torch.zeros_like(self.base.weight)
        return delta.index_add(0, self._rows, blocks.to(delta.dtype), alpha=self.scale)

    def lora_update(self, x: torch.Tensor) -> torch.Tensor:
        """The update of the active rows only: (..., P·n_active·head_dim), scale applied."""
        a = self._a_blocks().to(x.dtype)
        lead = x.shape[:-1]
        z = torch.einsum("md,prd->pmr", x.reshape(-1, x.shape[-1]), a)
        update = torch.bmm(z, self.lora_B.to(x.dtype).transpose(1, 2))
        return update.transpose(0, 1).reshape(*lead, -1) * self.scale

    def head_output_norms(self, x: torch.Tensor) -> torch.Tensor:
        update = self.lora_update(x).unflatten(
            -1, (len(self.targets), self.active_heads, self.head_dim)
        )
        return update.norm(dim=-1).sum(dim=-2)

    @torch.no_grad()
    def update_norms(self) -> torch.Tensor:
        a, b = self.lora_A.double(), self.lora_B.double()
        norms = torch.zeros(self.active_heads, dtype=torch.float64, device=a.device)
        for position, a_index in enumerate(self._a_index):
            a_p = a[a_index * self.rank : (a_index + 1) * self.rank]
            blocks = b[position].unflatten(0, (self.active_heads, self.head_dim))
            # ‖B_h A‖²_F = Σ (B_h G) ∘ B_h with G = A Aᵀ (r × r)
            norms += ((blocks @ (a_p @ a_p.T)) * blocks).sum((1, 2)).clamp_min(0).sqrt()
        return norms * abs(self.scale)

    def peft_lora(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(lora_A (P·r, d), lora_B (3·H·hd, P·r), s)``, or ``(lora_A (r, d), lora_B
        (3·H·hd, r), s)`` for the shared-A layout (peft's own layout)."""
        rank = self.rank
        lora_b = self.lora_B.new_zeros(self.base.out_features, self.lora_A.shape[0])
        heads = head_feature_indices(self.head_mask, self.head_dim)
        width = self.num_heads * self.head_dim
        for index, projection in enumerate(self.targets):
            rows = QKV_SLOT[projection] * width + heads
            column = 0 if self.shared_a else index * rank
            lora_b[rows, column : column + rank] = self.lora_B[index].detach()
        return self.lora_A.detach().clone(), lora_b, self.scale

    @torch.no_grad()
    def load_peft_lora(self, lora_a: torch.Tensor, lora_b: torch.Tensor) -> None:
        """Every projection's A is ``lora_a``; its B the projection's rows of ``lora_b``."""
        self.lora_A.copy_(lora_a.repeat(self.lora_A.shape[0] // self.rank, 1))
        width = self.num_heads * self.head_dim
        for index, projection in enumerate(self.targets):
            slot = QKV_SLOT[projection]
            self.lora_B[index].copy_(lora_b[slot * width : (slot + 1) * width])

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The definition of the adapter's output, for each targeted projection p:

            out = x·W^T + b,    out_p[rows of head h] += s · (x·A_p^T)·B_p,h^T   (h active)

        the base qkv plus `lora_update` added into the active heads' rows; a deactivated head's
        rows are the base's. `forward` computes the same with the fused kernel.

        Args:
            x: (..., d).

        Returns:
            (..., 3·H·head_dim), in x's dtype.
        """
        return self.base(x).index_add(-1, self._rows, self.lora_update(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`reference_forward`, fused (`heartlora.fused_qkv.fused_qkv_lora`), in autocast's dtype
        when autocast is on."""
        dtype = _compute_dtype(x)
        bias = self.base.bias
        out = fused_qkv_lora(
            x.reshape(-1, x.shape[-1]).to(dtype),
            self.base.weight.to(dtype),
            None if bias is None else bias.to(dtype),
            self.lora_A.to(dtype),
            self.lora_B.to(dtype),
            rows=None if self._active_count == self.num_heads else self._slot_rows,
            slots=self._slots,
            a_index=self._a_index,
            scale=self.scale,
        )
        return out.view(*x.shape[:-1], out.shape[-1])

    def extra_repr(self) -> str:
        layout = ", shared_a=True" if self.shared_a else ""
        return (
            f"targets={self.targets}, rank={self.rank}, scale={self.scale}{layout}, "
            f"active_heads={self.active_heads}/{self.num_heads}"
        )


class HeadLoRAProj(HeadLoRAAdapter):
    """The attention output projection plus a low-rank update whose A reads active heads only.

    Δ(x) = s · B · (A · x[active columns]); A: (r, n_active·head_dim), B: (d_out, r), B zero-init.

    Args:
        base: the model's ``proj`` ``nn.Linear`` (in_features H·head_dim); frozen.
        num_heads: H.
        rank: r.
        scale: s.
    """

    def __init__(self, base: nn.Linear, num_heads: int, rank: int, scale: float) -> None:
        if base.in_features % num_heads:
            raise HeartLoRAError(
                f"proj linear has {base.in_features} inputs, not a multiple of {num_heads} heads"
            )
        super().__init__(base, num_heads, base.in_features // num_heads, rank, scale)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        self.register_buffer("_cols", self._active_cols(), persistent=False)

    def _active_cols(self) -> torch.Tensor:
        return head_feature_indices(self.head_mask, self.head_dim).to(self.base.weight.device)

    projection = "proj"

    @property
    def head_parameter(self) -> nn.Parameter:
        """A: head h owns the columns of A that read its features."""
        return self.lora_A

    def _init_new_heads(self, blocks: torch.Tensor, new: torch.Tensor) -> None:
        """A head that becomes active again gets columns of A drawn as `__init__` draws A
        (kaiming-uniform, a=√5, fan-in the full width: bound 1/√in_features)."""
        if bool(new.any()):
            fresh = torch.empty_like(blocks[:, new])  # indexing by a mask copies: fill, then write
            bound = 1.0 / math.sqrt(self.base.in_features)
            blocks[:, new] = fresh.uniform_(-bound, bound)

    def _replace_head_parameter(self, param: nn.Parameter) -> None:
        self.lora_A = param

    def _update_head_indices(self) -> None:
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

    def head_output_norms(self, x: torch.Tensor) -> torch.Tensor:
        if self.active_heads < self.num_heads:
            x = x.index_select(-1, self._cols)
        heads_x = x.unflatten(-1, (self.active_heads, self.head_dim))
        a = self.lora_A.unflatten(1, (self.active_heads, self.head_dim))
        z = torch.einsum("...nd,rnd->...nr", heads_x, a)
        return (z @ self.lora_B.T).norm(dim=-1) * self.scale

    @torch.no_grad()
    def update_norms(self) -> torch.Tensor:
        a, b = self.lora_A.double(), self.lora_B.double()
        blocks = a.unflatten(1, (self.active_heads, self.head_dim)).transpose(0, 1)
        # ‖B A_h‖²_F = Σ (G A_h) ∘ A_h with G = BᵀB (r × r)
        norms = ((b.T @ b @ blocks) * blocks).sum((1, 2)).clamp_min(0).sqrt()
        return norms * abs(self.scale)

    def peft_lora(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """A widened to all heads' columns (zeros for inactive heads), B as it is."""
        lora_a = self.lora_A.new_zeros(self.rank, self.base.in_features)
        lora_a[:, head_feature_indices(self.head_mask, self.head_dim)] = self.lora_A.detach()
        return lora_a, self.lora_B.detach().clone(), self.scale

    @torch.no_grad()
    def load_peft_lora(self, lora_a: torch.Tensor, lora_b: torch.Tensor) -> None:
        self.lora_A.copy_(lora_a)
        self.lora_B.copy_(lora_b)

    def _full_width_A(self) -> torch.Tensor:
        """A as (r, H·head_dim): the parameter itself, or zero columns for deactivated heads."""
        if self.active_heads == self.num_heads:
            return self.lora_A
        full = self.lora_A.new_zeros(self.rank, self.num_heads * self.head_dim)
        return full.index_copy(1, self._cols, self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the update is accumulated in place into the fresh base output: no update tensor, and
        # deactivated heads cost a zero column of A instead of a gather over the activations
        flat = x.reshape(-1, x.shape[-1])
        out = self.base(flat)
        z = F.linear(flat, self._full_width_A().to(out.dtype))
        out.addmm_(z.to(out.dtype), self.lora_B.to(out.dtype).t(), alpha=self.scale)
        return out.view(*x.shape[:-1], out.shape[-1])

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale}, active_heads={self.active_heads}/{self.num_heads}"
