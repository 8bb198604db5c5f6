"""Scorers that read the pretrained heads themselves, not their adapters.

The paper defines a head's responsiveness as the loss change when the head is removed,
L(h) − L(h = 0). Every adapter scorer (`heartlora.responsiveness`) estimates it through the
head's LoRA blocks; these two estimate it on the heads of the (frozen) model:

* ``head-gate`` — the head importance of Michel et al. 2019 ("Are Sixteen Heads Really Better
  than One?"): a gate ξ_h = 1 multiplies head h's attention output (its slice of the output
  projection's input), and I[l, h] = E_x |ξ_h · ∂L(x)/∂ξ_h|, the first-order loss change of
  removing the head, averaged over the training images x (each image's own derivative: the
  expected magnitude, not the magnitude of the mean).
* ``weight-taylor`` — as in the paper's first version, the Taylor importance of head h's own
  pretrained q, k and v weight rows, I[l, h] = Σ_{rows of h in q, k, v} |W ⊙ ∂L/∂W|, per batch,
  averaged over batches.

Both read the model as it is: run them after a short warm-up of the classifier (or of LoRA, as
`heartlora train` does), so that the loss they differentiate is the task's. Neither needs
adapters, and neither leaves gradients or ``requires_grad`` changes behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from heartlora.errors import HeartLoRAError
from heartlora.inject import AttentionLayer

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _qkv_weight(layer: AttentionLayer) -> nn.Parameter:
    """The layer's pretrained fused qkv weight (3·H·hd × d), under an adapter or not."""
    qkv = layer.qkv
    return getattr(qkv, "base", qkv).weight


def _proj_linear(layer: AttentionLayer) -> nn.Module:
    """The module whose input is the layer's concatenated head outputs (H·hd features)."""
    return layer.proj


def head_gate_scores(
    model: nn.Module, layers: list[AttentionLayer], batches: Iterable, loss_fn: LossFn
) -> list[torch.Tensor]:
    """``head-gate`` scores (module docstring): one float64 (H,) row per layer.

    Raises:
        HeartLoRAError: no batches, or a layer whose output projection does not read
            H equal head slices.
    """
    device = next(model.parameters()).device
    totals = [torch.zeros(layer.num_heads, dtype=torch.float64) for layer in layers]
    gates: list[torch.Tensor | None] = [None] * len(layers)

    def make_hook(index: int, heads: int):
        def hook(_module: nn.Module, inputs: tuple) -> tuple:
            x = inputs[0]
            if x.shape[-1] % heads:
                raise HeartLoRAError(
                    f"{layers[index].name}: the output projection reads {x.shape[-1]} features, "
                    f"not a multiple of its {heads} heads"
                )
            gate = torch.ones(x.shape[0], heads, dtype=x.dtype, device=x.device, requires_grad=True)
            gates[index] = gate
            shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (heads, 1)
            gated = x.unflatten(-1, (heads, x.shape[-1] // heads)) * gate.view(shape)
            return (gated.flatten(-2), *inputs[1:])

        return hook

    handles = [
        _proj_linear(layer).register_forward_pre_hook(make_hook(index, layer.num_heads))
        for index, layer in enumerate(layers)
    ]
    images_seen = 0
    try:
        for images, labels in batches:
            model.zero_grad(set_to_none=True)
            logits = model(images.to(device))
            # the batch-mean loss times the batch size: each gate's gradient is then the sum of
            # the images' own derivatives, of which the gate's (batch, head) entries hold one each
            loss = loss_fn(logits, labels.to(device)) * images.shape[0]
            live = [gate for gate in gates if gate is not None]
            grads = torch.autograd.grad(loss, live, allow_unused=True)
            for index, grad in enumerate(grads):
                if grad is not None:
                    totals[index] += grad.detach().double().abs().sum(0).cpu()
            images_seen += images.shape[0]
            gates = [None] * len(layers)
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    if images_seen == 0:
        raise HeartLoRAError("responsiveness got no batches to score on")
    return [total / images_seen for total in totals]


def weight_taylor_scores(
    model: nn.Module, layers: list[AttentionLayer], batches: Iterable, loss_fn: LossFn
) -> list[torch.Tensor]:
    """``weight-taylor`` scores (module docstring): one float64 (H,) row per layer.

    Raises:
        HeartLoRAError: no batches.
    """
    device = next(model.parameters()).device
    weights = [_qkv_weight(layer) for layer in layers]
    was_trainable = [weight.requires_grad for weight in weights]
    totals = [torch.zeros(layer.num_heads, dtype=torch.float64) for layer in layers]
    batches_seen = 0
    try:
        for weight in weights:
            weight.requires_grad_(True)
        for images, labels in batches:
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(images.to(device)), labels.to(device))
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
            for index, (layer, weight, grad) in enumerate(zip(layers, weights, grads)):
                if grad is None:
                    continue
                saliency = (weight.detach() * grad).double().abs()  # (3·H·hd, d)
                per_head = saliency.unflatten(0, (3, layer.num_heads, -1)).sum((0, 2, 3))
                totals[index] += per_head.cpu()
            batches_seen += 1
    finally:
        for weight, trainable in zip(weights, was_trainable):
            weight.requires_grad_(trainable)
        model.zero_grad(set_to_none=True)
    if batches_seen == 0:
        raise HeartLoRAError("responsiveness got no batches to score on")
    return [total / batches_seen for total in totals]
