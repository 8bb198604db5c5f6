"""`torch.compile(fullgraph=True)` accepts injected models: no graph break, no host sync, and no
recompilation from one step to the next."""

import pytest
import torch
import torch._dynamo
from tiny_models import images, randomize_adapters, tiny_vit

import heartlora as hl


def _injected(targets, deactivate: bool):
    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, targets=targets, ne=1, mode="layer"))
    randomize_adapters(model)
    if deactivate:
        hl.deactivate_heads(model, torch.rand(2, 4, generator=torch.Generator().manual_seed(0)))
    return model


def _step(model, x):
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return out.detach(), grads


@pytest.mark.slow
@pytest.mark.parametrize("deactivate", [False, True])
@pytest.mark.parametrize("targets", [("q", "v"), ("q", "k", "v", "proj")])
def test_fullgraph_compile_matches_eager_and_never_recompiles(targets, deactivate):
    model = _injected(targets, deactivate)
    x = images()
    eager_out, eager_grads = _step(model, x)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    for _ in range(3):  # the same shapes: one compilation serves every step
        out, grads = _step(compiled, x)
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads, eager_grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]
    assert counters["stats"]["calls_captured"] > 0


@pytest.mark.slow
def test_inductor_compiles_heart_lora_with_deactivated_heads():
    model = _injected(("q", "v"), deactivate=True)
    x = images()
    eager_out, eager_grads = _step(model, x)
    torch._dynamo.reset()
    out, grads = _step(torch.compile(model, fullgraph=True), x)
    torch.testing.assert_close(out, eager_out, rtol=1e-4, atol=1e-4)
    for got, expected in zip(grads, eager_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
