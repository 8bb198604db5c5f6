"""Head responsiveness: how much each attention head's adapter matters for this task.

Scorers, all returning a (layers × max heads) tensor, NaN-padded where a layer
has fewer heads; a higher score means a more responsive head:

* ``taylor`` — I[l, h] = | Σ_p ⟨B_p,h, ∂L/∂B_p,h⟩ |, per batch, averaged: the first-order
  estimate of the loss change if head h's update were removed. Needs trained B (a warm-up).
* ``grad-norm`` — ‖∂L/∂B_·,h‖ (all of head h's blocks), averaged; works at step 0.
* ``output-norm`` — mean over tokens of Σ_p ‖Δ_p,h(x)‖. Needs trained B.
* ``redundancy`` — 1 − max cosine similarity of head h's attention map to another head of
  the same layer (redundant heads score low). Needs no labels and no adapters' training.

* ``sensitivity`` — AdaLoRA's smoothed sensitivity × uncertainty of |θ·∂L/∂θ| over the B
  elements of each head (`heartlora.sensitivity`). In training it is accumulated over every
  warm-up step; here, over the given batches with the adapters as they are. Needs trained B.
* ``update-norm`` — how far head h's trained update moved: Σ_p ‖s·B_p,h·A_p‖_F, the Frobenius
  norm of its rows of ΔW (of its columns for ``proj``). Reads no batches. Needs trained B.

Two scorers read the pretrained heads themselves (`heartlora.pretrained_heads`), the paper's
L(h) − L(h = 0) taken literally; they need no adapters:

* ``head-gate`` — E_x |∂L(x)/∂ξ_h| for a gate ξ_h = 1 on head h's attention output (the head
  importance of Michel et al. 2019).
* ``weight-taylor`` — Σ |W ⊙ ∂L/∂W| over head h's own pretrained q, k and v weight rows.

Two controls (docs/frontier.md, "The controls"), so that a scorer can be shown to beat chance:

* ``random`` — independent uniform scores in [0, 1) from a generator seeded with ``seed``: the
  same seed gives the same scores (and so the same heads) on every machine. Reads no batches.
* ``inverse`` — the ``taylor`` scores negated. Negation reverses every ranking that selection
  makes (within a layer, over the network, and of the global column sums R[L, h]), so each mode
  deactivates the *most* responsive heads instead of the least. It needs what ``taylor`` needs.
  To invert another scorer, negate its scores before `deactivate_heads`.

Each scorer is one entry of `SCORER_REGISTRY`: its function and what it needs (adapters, a
loss, batches, the warm-up steps before it can score); `responsiveness` reads the entry, and so
do the warm-up rule (`heartlora.calibration`) and the ``heads`` command. For the ``proj``
target a head's block is the columns of A that read it, and they enter the sums in the same
way. Scoring runs in eval mode, leaves no gradients behind and never steps
an optimizer; run it on training data only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice

import torch
from torch import nn

from heartlora.attention_maps import layer_head_similarity
from heartlora.config import INVERSE_OF, INVERSE_SCORER, SCORERS
from heartlora.errors import HeartLoRAError
from heartlora.head_blocks import head_parameters, pad_rows, per_layer_scores
from heartlora.inject import AttentionLayer, find_attention_layers
from heartlora.pretrained_heads import head_gate_scores, weight_taylor_scores
from heartlora.sensitivity import HeadSensitivity

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _require_adapters(layers: list[AttentionLayer], scorer: str) -> None:
    if any(not layer.adapters for layer in layers):
        raise HeartLoRAError(f"scorer {scorer!r} needs heartlora adapters; call inject() first")


def _gradient_scores(
    model: nn.Module, layers: list[AttentionLayer], batches: Iterable, loss_fn: LossFn, scorer: str
) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    totals = [torch.zeros(layer.num_heads, dtype=torch.float64) for layer in layers]
    params = head_parameters(layers)
    if scorer == "taylor" and all(not bool(p.detach().any()) for p in params):
        raise HeartLoRAError(
            "the taylor scorer needs trained adapters (all B blocks are zero): train a warm-up "
            "first, or use scorer 'grad-norm'"
        )
    batches_seen = 0
    for images, labels in batches:
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(images.to(device)), labels.to(device))
        loss.backward()
        for index, layer in enumerate(layers):
            per_head = torch.zeros(layer.num_heads, dtype=torch.float64)
            for adapter in layer.adapters:
                param = adapter.head_parameter
                if param.grad is None:
                    continue
                grad_blocks = adapter.split_heads(param.grad)
                if scorer == "taylor":
                    values = (adapter.split_heads(param.detach()) * grad_blocks).sum(1)
                else:
                    values = grad_blocks.double().pow(2).sum(1)
                per_head += adapter.scatter_per_head(values)
            totals[index] += per_head.abs() if scorer == "taylor" else per_head.sqrt()
        batches_seen += 1
    model.zero_grad(set_to_none=True)
    if batches_seen == 0:
        raise HeartLoRAError("responsiveness got no batches to score on")
    return [total / batches_seen for total in totals]


@torch.no_grad()
def _output_norm_scores(
    model: nn.Module, layers: list[AttentionLayer], batches: Iterable
) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    totals = [torch.zeros(layer.num_heads, dtype=torch.float64) for layer in layers]
    tokens = [0] * len(layers)

    def make_hook(index: int, adapter: nn.Module):
        def hook(_module: nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
            norms = adapter.head_output_norms(inputs[0])  # (..., n)
            totals[index] += adapter.scatter_per_head(norms.flatten(0, -2).sum(0))
            if adapter is layers[index].adapters[0]:
                tokens[index] += norms.flatten(0, -2).shape[0]

        return hook

    handles = [
        adapter.register_forward_hook(make_hook(index, adapter))
        for index, layer in enumerate(layers)
        for adapter in layer.adapters
    ]
    try:
        seen = 0
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(images.to(device))
            seen += 1
    finally:
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise HeartLoRAError("responsiveness got no batches to score on")
    return [total / max(count, 1) for total, count in zip(totals, tokens)]


def _redundancy_scores(model: nn.Module, batches: Iterable) -> list[torch.Tensor]:
    scores = []
    for similarity in layer_head_similarity(model, batches):
        heads = similarity.shape[0]
        others = similarity.double().masked_fill(torch.eye(heads, dtype=torch.bool), -1.0)
        scores.append(1.0 - others.max(dim=1).values if heads > 1 else torch.ones(1))
    return scores


def _sensitivity_scores(model: nn.Module, batches: Iterable, loss_fn: LossFn) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    tracker = HeadSensitivity(model)
    for images, labels in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(model(images.to(device)), labels.to(device)).backward()
        tracker.update()
    model.zero_grad(set_to_none=True)
    if tracker.steps == 0:
        raise HeartLoRAError("responsiveness got no batches to score on")
    return tracker.layer_scores()


def _update_norm_scores(layers: list[AttentionLayer]) -> list[torch.Tensor]:
    return per_layer_scores(
        layers,
        lambda adapter: adapter.update_norms(),
        "the update-norm scorer needs trained adapters (all updates are zero): train a "
        "warm-up first, or use scorer 'grad-norm'",
    )


def _random_scores(layers: list[AttentionLayer], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.rand(layer.num_heads, generator=generator, dtype=torch.float64) for layer in layers
    ]


class _ScoringBatches:
    """The batches a scorer reads, each checked to hold at least one image (a zero-image batch
    gives a NaN loss and zero gradients: scores that would look valid), with a count of those
    read, so that a scorer given none is refused whatever it computes."""

    def __init__(self, batches: Iterable) -> None:
        self.batches = batches
        self.seen = 0

    def __iter__(self):
        for batch in self.batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            if len(images) == 0:
                raise HeartLoRAError(f"batch {self.seen} to score heads on holds no images")
            self.seen += 1
            yield batch


@dataclass(frozen=True)
class ScoringInputs:
    """What a scorer may read: the model, its attention layers, the training batches (each
    checked to hold images), the loss and the seed of the ``random`` control."""

    model: nn.Module
    layers: list[AttentionLayer]
    batches: Iterable
    loss_fn: LossFn | None
    seed: int


@dataclass(frozen=True)
class Scorer:
    """One head scorer: what it needs, and how it scores (`SCORER_REGISTRY`).

    Attributes:
        score: ``score(inputs) -> rows``, one float64 (heads,) row per layer, higher for a more
            responsive head; None for a control that ``negates`` another scorer.
        needs_adapters: it reads heartlora adapters (`heartlora.inject.inject` first).
        needs_loss: it takes ``loss_fn(logits, labels)``.
        reads_batches: it reads the batches (in eval mode; those that read none score without
            them, and so cannot be refused for being given none).
        min_calib_warmup_steps: the warm-up steps it needs before it can score: 1 for
            those that read trained B blocks; 2 for ``sensitivity``, which accumulates
            |B ⊙ ∂L/∂B| after each warm-up backward, which the first step's (B = 0) leaves zero.
        negates: the scorer whose scores this control negates, or None.
    """

    score: Callable[[ScoringInputs], list[torch.Tensor]] | None
    needs_adapters: bool = True
    needs_loss: bool = False
    reads_batches: bool = True
    min_calib_warmup_steps: int = 0
    negates: str | None = None

    @property
    def needs_trained_adapters(self) -> bool:
        """True when it reads trained adapters (its `min_calib_warmup_steps` are not 0): on untrained
        ones it refuses to score or scores every head 0."""
        return self.min_calib_warmup_steps > 0


SCORER_REGISTRY: dict[str, Scorer] = {
    "taylor": Scorer(
        lambda i: _gradient_scores(i.model, i.layers, i.batches, i.loss_fn, "taylor"),
        needs_loss=True,
        min_calib_warmup_steps=1,
    ),
    "grad-norm": Scorer(
        lambda i: _gradient_scores(i.model, i.layers, i.batches, i.loss_fn, "grad-norm"),
        needs_loss=True,
    ),
    "output-norm": Scorer(
        lambda i: _output_norm_scores(i.model, i.layers, i.batches), min_calib_warmup_steps=1
    ),
    "redundancy": Scorer(lambda i: _redundancy_scores(i.model, i.batches), needs_adapters=False),
    "sensitivity": Scorer(
        lambda i: _sensitivity_scores(i.model, i.batches, i.loss_fn),
        needs_loss=True,
        min_calib_warmup_steps=2,
    ),
    "update-norm": Scorer(
        lambda i: _update_norm_scores(i.layers), reads_batches=False, min_calib_warmup_steps=1
    ),
    "head-gate": Scorer(
        lambda i: head_gate_scores(i.model, i.layers, i.batches, i.loss_fn),
        needs_adapters=False,
        needs_loss=True,
    ),
    "weight-taylor": Scorer(
        lambda i: weight_taylor_scores(i.model, i.layers, i.batches, i.loss_fn),
        needs_adapters=False,
        needs_loss=True,
    ),
    "random": Scorer(
        lambda i: _random_scores(i.layers, i.seed), needs_adapters=False, reads_batches=False
    ),
    INVERSE_SCORER: Scorer(None, needs_loss=True, min_calib_warmup_steps=1, negates=INVERSE_OF),
}
"""Every scorer by name, in the order of `heartlora.config.SCORERS` (which config validation
reads): what each needs and how it scores. `responsiveness`, `heartlora.calibration` (the
warm-up each needs) and the ``heads`` command read it."""


def responsiveness(
    model: nn.Module,
    batches: Iterable,
    loss_fn: LossFn | None = None,
    scorer: str | None = None,
    max_batches: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Score every attention head of ``model`` on training ``batches``.

    Args:
        model: an injected model (any timm ViT/Swin for ``redundancy``).
        batches: iterable of ``(images, labels)`` (a DataLoader works).
        loss_fn: ``loss_fn(logits, labels) -> scalar``; needed by ``taylor`` and ``grad-norm``.
        scorer: default: the model's `HeartLoRAConfig.scorer` (``taylor`` for a model without
            adapters); else one of ``taylor``, ``grad-norm``, ``output-norm``, ``redundancy``,
            ``sensitivity``, ``update-norm``, ``head-gate``, ``weight-taylor``, or a control:
            ``random``, ``inverse`` (the negated ``taylor`` scores); `SCORER_REGISTRY` says
            what each needs.
        max_batches: score on at most this many batches.
        seed: seeds the ``random`` control (other scorers ignore it); pass the run's seed.

    Returns:
        A float32 (layers × max heads) tensor, NaN where a layer has fewer heads (``inverse``
        scores are ≤ 0).

    Raises:
        HeartLoRAError: on an unknown scorer, a missing ``loss_fn``, a model without adapters,
            untrained adapters for ``taylor``, ``inverse``, ``sensitivity`` and ``update-norm``,
            or no batches (``random`` and ``update-norm`` read none).
    """
    if scorer is None:
        config = getattr(model, "heartlora_config", None)
        scorer = config.scorer if config is not None else "taylor"
    if scorer not in SCORERS:
        raise HeartLoRAError(f"unknown scorer {scorer!r}: expected one of {', '.join(SCORERS)}")
    spec = SCORER_REGISTRY[scorer]
    if spec.negates is not None:
        return -responsiveness(model, batches, loss_fn, spec.negates, max_batches)
    layers = find_attention_layers(model)
    if spec.needs_adapters:
        _require_adapters(layers, scorer)
    if spec.needs_loss and loss_fn is None:
        raise HeartLoRAError(f"scorer {scorer!r} needs a loss_fn(logits, labels)")
    if not spec.reads_batches:
        return pad_rows(spec.score(ScoringInputs(model, layers, (), loss_fn, seed))).float()
    if max_batches is not None:
        batches = islice(batches, max_batches)
    batches = _ScoringBatches(batches)
    was_training = model.training
    model.eval()
    try:
        rows = spec.score(ScoringInputs(model, layers, batches, loss_fn, seed))
    finally:
        model.train(was_training)
    if batches.seen == 0:
        raise HeartLoRAError(f"scorer {scorer!r} got no batches to score on")
    for index, row in enumerate(rows):
        if not bool(torch.isfinite(row).all()):
            raise HeartLoRAError(
                f"scorer {scorer!r}: the scores of layer {index} are NaN or infinite (the model's "
                "outputs are not finite: did training diverge? try a lower lr or scale)"
            )
    return pad_rows(rows).float()
