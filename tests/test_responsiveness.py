import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import batches, randomize_adapters, tiny_swin, tiny_vit

import heartlora as hl
from heartlora.config import SCORERS


def _injected(build=tiny_vit, **config):
    model = build()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, **config))
    return model


@pytest.mark.parametrize("scorer", [s for s in SCORERS if s not in ("random", "inverse")])
def test_every_scorer_returns_layers_by_heads(scorer):
    model = _injected()
    randomize_adapters(model)
    scores = hl.responsiveness(model, batches(2), F.cross_entropy, scorer=scorer)
    assert scores.shape == (2, 4)
    assert torch.isfinite(scores).all() and (scores >= 0).all() and scores.sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_taylor_equals_the_first_order_loss_change_of_removing_a_head():
    model = _injected(targets=("q", "v"))
    randomize_adapters(model)
    batch = batches(1)
    scores = hl.responsiveness(model, batch, F.cross_entropy, scorer="taylor")
    adapter = model.blocks[1].attn.qkv
    model.zero_grad()
    x, y = batch[0]
    F.cross_entropy(model(x), y).backward()
    hd = adapter.head_dim
    rows = slice(2 * hd, 3 * hd)  # head 2
    expected = (adapter.lora_B[:, rows] * adapter.lora_B.grad[:, rows]).sum().abs()
    torch.testing.assert_close(scores[1, 2], expected.float())


def test_grad_norm_works_at_step_zero_and_taylor_asks_for_warm_up():
    model = _injected()
    scores = hl.responsiveness(model, batches(1), F.cross_entropy, scorer="grad-norm")
    assert (scores > 0).all()
    with pytest.raises(ValueError, match="warm-up"):
        hl.responsiveness(model, batches(1), F.cross_entropy, scorer="taylor")


def test_redundancy_scores_identical_heads_as_redundant():
    model = tiny_vit()
    qkv = model.blocks[0].attn.qkv
    with torch.no_grad():  # peaky attention (random init is near uniform), heads 0 and 1 equal
        qkv.weight[:64] *= 8
        hd = 8
        for slot in (0, 1):
            base = slot * 32
            qkv.weight[base + hd : base + 2 * hd] = qkv.weight[base : base + hd]
            qkv.bias[base + hd : base + 2 * hd] = qkv.bias[base : base + hd]
    scores = hl.responsiveness(model, batches(1), scorer="redundancy")
    assert scores[0, 0] < 1e-5 and scores[0, 1] < 1e-5
    assert scores[0, 2] > 1e-3


def test_swin_scores_are_nan_padded():
    model = _injected(tiny_swin)
    scores = hl.responsiveness(model, batches(1), F.cross_entropy, scorer="grad-norm")
    assert scores.shape == (2, 4)
    assert math.isnan(scores[0, 2]) and math.isnan(scores[0, 3])
    assert torch.isfinite(scores[1]).all()


def test_scoring_errors():
    with pytest.raises(ValueError, match="unknown scorer"):
        hl.responsiveness(_injected(), batches(1), F.cross_entropy, scorer="magic")
    with pytest.raises(ValueError, match="loss_fn"):
        hl.responsiveness(_injected(), batches(1), scorer="grad-norm")
    with pytest.raises(ValueError, match="inject"):
        hl.responsiveness(tiny_vit(), batches(1), F.cross_entropy, scorer="grad-norm")
    with pytest.raises(ValueError, match="no batches"):
        hl.responsiveness(_injected(), [], F.cross_entropy, scorer="grad-norm")


def test_random_control_is_deterministic_per_seed_and_nan_padded():
    vit = _injected()
    first = hl.responsiveness(vit, [], scorer="random", seed=5)
    assert first.shape == (2, 4) and ((first >= 0) & (first < 1)).all()
    assert torch.equal(first, hl.responsiveness(vit, [], scorer="random", seed=5))
    assert not torch.equal(first, hl.responsiveness(vit, [], scorer="random", seed=6))
    swin = hl.responsiveness(_injected(tiny_swin), [], scorer="random", seed=5)
    assert swin.shape == (2, 4) and torch.isnan(swin[0, 2:]).all() and torch.isfinite(swin[1]).all()
    # different seeds choose different heads: over 10 seeds the dropped head is not always the same
    dropped = {
        int(
            hl.select_heads(hl.responsiveness(vit, [], scorer="random", seed=s), 1)[0]
            .int()
            .argmin()
        )
        for s in range(10)
    }
    assert len(dropped) > 1


@pytest.mark.parametrize("mode", ["global", "layer", "budget"])
def test_inverse_control_deactivates_the_most_responsive_heads(mode):
    model = _injected()
    randomize_adapters(model)
    taylor = hl.responsiveness(model, batches(2), F.cross_entropy, scorer="taylor")
    inverse = hl.responsiveness(model, batches(2), F.cross_entropy, scorer="inverse")
    torch.testing.assert_close(inverse, -taylor)
    kept_by_taylor = hl.select_heads(taylor, ne=1, mode=mode)
    kept_by_inverse = hl.select_heads(inverse, ne=1, mode=mode)
    # each drops heads the other keeps: the taylor choice drops the lowest, inverse the highest
    assert (kept_by_taylor != kept_by_inverse).any()
    if mode == "layer":
        assert torch.equal(~kept_by_inverse, taylor == taylor.max(dim=1, keepdim=True).values)
    with pytest.raises(ValueError, match="warm-up"):
        hl.responsiveness(_injected(), batches(1), F.cross_entropy, scorer="inverse")


@pytest.mark.parametrize(
    "config",
    [
        dict(targets=("q", "v")),
        dict(targets=("q", "k", "v"), layout="shared"),
        dict(targets=("proj",)),
    ],
    ids=["per-projection", "shared", "proj"],
)
def test_update_norm_is_the_norm_of_each_heads_part_of_delta_w(config):
    model = _injected(scale=3.0, **config)
    randomize_adapters(model)
    hl.set_head_masks(model, [torch.tensor([True, True, True, True])] * 2)
    scores = hl.responsiveness(model, [], scorer="update-norm")
    adapter = (
        model.blocks[1].attn.proj if config["targets"] == ("proj",) else model.blocks[1].attn.qkv
    )
    delta = adapter.delta_weight()
    hd, width = adapter.head_dim, adapter.num_heads * adapter.head_dim
    head = 2
    if config["targets"] == ("proj",):  # head 2 owns columns of ΔW
        expected = delta[:, head * hd : (head + 1) * hd].norm()
    else:  # head 2 owns rows of each targeted projection's slice of ΔW
        slots = {"q": 0, "k": 1, "v": 2}
        expected = sum(
            delta[slots[t] * width + head * hd : slots[t] * width + (head + 1) * hd].norm()
            for t in config["targets"]
        )
    torch.testing.assert_close(scores[1, head], expected.float(), rtol=1e-4, atol=1e-6)


def test_update_norm_and_sensitivity_ask_for_trained_adapters():
    for scorer in ("update-norm", "sensitivity"):
        with pytest.raises(ValueError, match="warm-up"):
            hl.responsiveness(_injected(), batches(2), F.cross_entropy, scorer=scorer)


def test_sensitivity_over_batches_is_adalora_ema_of_elementwise_sensitivity():
    model = _injected(targets=("q", "v"))
    randomize_adapters(model)
    data = batches(3)
    scores = hl.responsiveness(model, data, F.cross_entropy, scorer="sensitivity")
    assert all(p.grad is None for p in model.parameters())
    adapter = model.blocks[0].attn.qkv
    smoothed = torch.zeros_like(adapter.lora_B)
    uncertainty = torch.zeros_like(adapter.lora_B)
    for x, y in data:  # eqs. 8–9 of AdaLoRA with β₁ = β₂ = 0.85, by hand
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        current = (adapter.lora_B * adapter.lora_B.grad).abs().detach()
        smoothed = 0.85 * smoothed + 0.15 * current
        uncertainty = 0.85 * uncertainty + 0.15 * (current - smoothed).abs()
    hd = adapter.head_dim
    expected = (smoothed * uncertainty)[:, 1 * hd : 2 * hd].mean()  # head 1, both projections
    torch.testing.assert_close(scores[0, 1], expected.float(), rtol=1e-4, atol=1e-12)


def _loss_with_head_scaled(model, x, y, layer, head, factor):
    """The loss with head ``head`` of block ``layer`` multiplied by ``factor`` (float64)."""
    attention = model.blocks[layer].attn
    hd = attention.head_dim

    def hook(_module, inputs):
        scaled = inputs[0].clone()
        scaled[..., head * hd : (head + 1) * hd] *= factor
        return (scaled,)

    handle = attention.proj.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            return F.cross_entropy(model(x), y).item()
    finally:
        handle.remove()


@pytest.mark.parametrize("injected", [False, True])
def test_head_gate_is_the_mean_magnitude_of_each_images_gate_derivative(injected):
    model = (_injected() if injected else tiny_vit()).double()
    if injected:
        randomize_adapters(model)
    x, y = batches(1, batch=3)[0]
    x = x.double()
    scores = hl.responsiveness(model, [(x, y)], F.cross_entropy, scorer="head-gate")
    step = 1e-5
    for layer, head in [(0, 1), (1, 3)]:
        per_image = []
        for index in range(3):
            xi, yi = x[index : index + 1], y[index : index + 1]
            up = _loss_with_head_scaled(model, xi, yi, layer, head, 1 + step)
            down = _loss_with_head_scaled(model, xi, yi, layer, head, 1 - step)
            per_image.append(abs(up - down) / (2 * step))
        assert scores[layer, head].item() == pytest.approx(sum(per_image) / 3, rel=1e-3)
    assert all(p.grad is None for p in model.parameters())


def test_weight_taylor_sums_each_heads_own_qkv_rows_and_restores_requires_grad():
    model = _injected()
    randomize_adapters(model)
    batch = batches(1)
    scores = hl.responsiveness(model, batch, F.cross_entropy, scorer="weight-taylor")
    weight = model.blocks[1].attn.qkv.base.weight
    assert not weight.requires_grad and weight.grad is None
    weight.requires_grad_(True)
    x, y = batch[0]
    F.cross_entropy(model(x), y).backward()
    saliency = (weight * weight.grad).abs()
    d, hd = weight.shape[1], model.blocks[1].attn.head_dim
    rows = [p * d + 2 * hd + i for p in range(3) for i in range(hd)]  # head 2 in q, k and v
    assert scores[1, 2].item() == pytest.approx(saliency[rows].sum().item(), rel=1e-5)
    weight.requires_grad_(False)


def test_pretrained_head_scorers_need_no_adapters_and_invert_like_any_other():
    model = tiny_vit()
    for scorer in ("head-gate", "weight-taylor"):
        scores = hl.responsiveness(model, batches(2), F.cross_entropy, scorer=scorer)
        assert scores.shape == (2, 4) and (scores > 0).all()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, ne=1, mode="layer", scorer="head-gate"))
    scores = hl.responsiveness(model, batches(2), F.cross_entropy, scorer="head-gate")
    keep = hl.select_heads(-scores, ne=1, mode="layer")
    assert [int(row.float().argmin()) for row in keep] == [int(row.argmax()) for row in scores]


@pytest.mark.parametrize("scorer", [s for s in SCORERS if s not in ("random", "update-norm")])
def test_every_scorer_that_reads_batches_refuses_none(scorer):
    model = _injected()
    randomize_adapters(model)
    with pytest.raises(hl.HeartLoRAError, match="no batches"):
        hl.responsiveness(model, [], F.cross_entropy, scorer=scorer)


@pytest.mark.parametrize("scorer", [s for s in SCORERS if s not in ("random", "update-norm")])
def test_a_batch_without_images_is_refused(scorer):
    model = _injected()
    randomize_adapters(model)
    empty = (torch.zeros(0, 3, 16, 16), torch.zeros(0, dtype=torch.long))
    with pytest.raises(hl.HeartLoRAError, match="batch 1 to score heads on holds no images"):
        hl.responsiveness(model, [*batches(1), empty], F.cross_entropy, scorer=scorer)


def test_the_registry_holds_every_scorer_in_the_config_s_order():
    from heartlora.responsiveness import SCORER_REGISTRY

    assert tuple(SCORER_REGISTRY) == SCORERS
    trained = [name for name, spec in SCORER_REGISTRY.items() if spec.needs_trained_adapters]
    assert trained == ["taylor", "output-norm", "sensitivity", "update-norm", "inverse"]


@pytest.mark.parametrize("scorer", SCORERS)
def test_each_scorer_needs_what_its_registry_entry_says(scorer):
    from heartlora.responsiveness import SCORER_REGISTRY

    spec = SCORER_REGISTRY[scorer]
    if spec.needs_adapters:
        with pytest.raises(hl.HeartLoRAError, match="inject"):
            hl.responsiveness(tiny_vit(), batches(1), F.cross_entropy, scorer=scorer)
    else:  # a bare model scores
        bare = hl.responsiveness(tiny_vit(), batches(1), F.cross_entropy, scorer=scorer)
        assert bare.shape == (2, 4)
    model = _injected()
    randomize_adapters(model)
    if spec.needs_loss:
        with pytest.raises(hl.HeartLoRAError, match="needs a loss_fn"):
            hl.responsiveness(model, batches(1), scorer=scorer)
    else:
        assert hl.responsiveness(model, batches(1), scorer=scorer).shape == (2, 4)
    if spec.reads_batches:
        with pytest.raises(hl.HeartLoRAError, match="no batches"):
            hl.responsiveness(model, [], F.cross_entropy, scorer=scorer)
    else:
        assert hl.responsiveness(model, [], F.cross_entropy, scorer=scorer).shape == (2, 4)
    if spec.min_calib_warmup_steps:  # untrained adapters: refused, or every head scores 0
        untrained = _injected()
        try:
            scores = hl.responsiveness(untrained, batches(1), F.cross_entropy, scorer=scorer)
        except hl.HeartLoRAError as error:
            assert "warm-up" in str(error)
        else:
            assert (scores == 0).all()
