import pytest
import torch
from tiny_models import images, qkv_adapter, randomize_adapters, tiny_swin, tiny_vit

import heartlora as hl
from heartlora.adapters import HeadLoRAAdapter, HeadLoRAQKV


@pytest.mark.parametrize("targets", [("q", "v"), ("q", "k", "v", "proj"), ("k",), ("proj",)])
@pytest.mark.parametrize("build", [tiny_vit, tiny_swin])
def test_injected_model_equals_base_bit_for_bit(build, targets):
    base, model = build(), build()
    x = images()
    hl.inject(model, hl.HeartLoRAConfig(rank=4, targets=targets))
    assert torch.equal(base(x), model(x))


def test_update_matches_explicit_low_rank_formula():
    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig(rank=3, scale=2.0, targets=("q", "v")))
    randomize_adapters(model)
    adapter = model.blocks[0].attn.qkv
    x = torch.randn(2, 5, adapter.base.in_features)
    dim = adapter.num_heads * adapter.head_dim
    a_q, a_v = adapter.lora_A[:3], adapter.lora_A[3:]
    expected = adapter.base(x)
    expected[..., :dim] += 2.0 * x @ a_q.T @ adapter.lora_B[0].T
    expected[..., 2 * dim :] += 2.0 * x @ a_v.T @ adapter.lora_B[1].T
    torch.testing.assert_close(adapter(x), expected)


def test_deactivated_heads_have_zero_effect_and_keep_other_blocks():
    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, targets=("q", "v")))
    randomize_adapters(model)
    adapter: HeadLoRAQKV = model.blocks[0].attn.qkv
    x = torch.randn(2, 5, adapter.base.in_features)
    before = adapter(x).detach()
    kept_block = adapter.lora_B[:, 0:8].detach().clone()  # head 0 of q and v
    adapter.set_head_mask(torch.tensor([True, False, True, False]))
    after = adapter(x).detach()
    base = adapter.base(x).detach()
    hd, dim = adapter.head_dim, adapter.num_heads * adapter.head_dim
    for slot in (0, 2):  # q and v: heads 1 and 3 now equal the base
        for head in (1, 3):
            cols = slice(slot * dim + head * hd, slot * dim + (head + 1) * hd)
            assert torch.equal(after[..., cols], base[..., cols])
        for head in (0, 2):
            cols = slice(slot * dim + head * hd, slot * dim + (head + 1) * hd)
            torch.testing.assert_close(after[..., cols], before[..., cols])
    assert adapter.lora_B.shape == (2, 2 * hd, 2)
    assert torch.equal(adapter.lora_B[:, :hd].detach(), kept_block)


def test_mask_must_keep_a_head():
    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig())
    with pytest.raises(ValueError, match="at least one"):
        model.blocks[0].attn.qkv.set_head_mask(torch.zeros(4, dtype=torch.bool))


def test_proj_target_deactivation_removes_columns():
    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, targets=("proj",)))
    randomize_adapters(model)
    adapter = model.blocks[0].attn.proj
    x = torch.randn(3, adapter.base.in_features)
    adapter.set_head_mask(torch.tensor([True, True, False, True]))
    assert adapter.lora_A.shape == (2, 3 * adapter.head_dim)
    x_without_head2 = x.clone()
    x_without_head2[:, 2 * adapter.head_dim : 3 * adapter.head_dim] = 0
    # head 2's input no longer reaches the update
    torch.testing.assert_close(adapter.lora_update(x), adapter.lora_update(x_without_head2))


def test_a_proj_head_active_again_gets_a_fresh_block_of_a():
    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, targets=("proj",)))
    adapter = model.blocks[0].attn.proj
    kept = adapter.lora_A.detach().clone()
    adapter.set_head_mask(torch.tensor([True, True, False, True]))
    adapter.set_head_mask(torch.tensor([True, True, True, True]))
    width, bound = adapter.head_dim, 1 / adapter.base.in_features**0.5
    back = adapter.lora_A.detach()[:, 2 * width : 3 * width]
    assert back.abs().max() > 0 and back.abs().max() <= bound  # drawn as A is drawn, not zero
    assert torch.equal(adapter.lora_A.detach()[:, : 2 * width], kept[:, : 2 * width])


def _reference_qkv(adapter: HeadLoRAQKV, x: torch.Tensor) -> torch.Tensor:
    """W·x + s·B_p·A_p·x written out with autograd's own ops, one projection at a time."""
    dim = adapter.num_heads * adapter.head_dim
    rows = hl.adapters.head_feature_indices(adapter.head_mask, adapter.head_dim)
    out = adapter.base(x)
    pieces = list(out.split(dim, dim=-1))
    for index, target in enumerate(adapter.targets):
        slot = {"q": 0, "k": 1, "v": 2}[target]
        a = (
            adapter.lora_A
            if adapter.shared_a
            else adapter.lora_A[index * adapter.rank : (index + 1) * adapter.rank]
        )
        update = adapter.scale * x @ a.T @ adapter.lora_B[index].T
        full = torch.zeros(*x.shape[:-1], dim).index_copy(-1, rows, update)
        pieces[slot] = pieces[slot] + full
    return torch.cat(pieces, dim=-1)


@pytest.mark.parametrize("layout", ["per-projection", "shared"])
@pytest.mark.parametrize("mask", [None, [True, False, True, False]])
@pytest.mark.parametrize("targets", [("q", "v"), ("q", "k", "v")])
def test_forward_and_reference_forward_match_the_written_out_formula(layout, mask, targets):
    adapter: HeadLoRAQKV = qkv_adapter(targets, layout, mask)
    x = torch.randn(2, 5, adapter.base.in_features, requires_grad=True)
    upstream = torch.randn(2, 5, adapter.base.out_features)
    grads = []
    for fn in (lambda v: _reference_qkv(adapter, v), adapter, adapter.reference_forward):
        out = fn(x)
        params = (x, adapter.lora_A, adapter.lora_B, adapter.base.weight)
        grads.append((out, *torch.autograd.grad((out * upstream).sum(), params)))
    written_out = grads[0]
    for path in grads[1:]:  # the fused forward, and the definition
        for got, expected in zip(path, written_out):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_shared_layout_stores_one_a_and_merges_exactly():
    base, model = tiny_vit(), tiny_vit()
    config = hl.HeartLoRAConfig(rank=2, targets=("q", "k", "v"), layout="shared", ne=1)
    hl.inject(model, config)
    randomize_adapters(model)
    hl.deactivate_heads(model, torch.rand(2, 4, generator=torch.Generator().manual_seed(0)))
    adapter = model.blocks[0].attn.qkv
    assert adapter.lora_A.shape == (2, adapter.base.in_features)
    head_dim, dim = adapter.head_dim, adapter.base.in_features
    assert hl.trainable_parameters(model) - sum(
        p.numel() for p in model.get_classifier().parameters()
    ) == hl.expected_adapter_parameters(config, dim, head_dim, [3, 3], dim)
    x = images()
    live = model(x)
    hl.merge(model)
    torch.testing.assert_close(model(x), live, rtol=1e-5, atol=1e-5)
    assert not torch.equal(model(x), base(x))


def test_weight_property_gives_the_effective_weight_with_gradients():
    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, targets=("q", "v")))
    randomize_adapters(model)
    adapter = model.blocks[0].attn.qkv
    x = torch.randn(4, adapter.in_features)
    via_weight = torch.nn.functional.linear(x, adapter.weight, adapter.bias)
    torch.testing.assert_close(via_weight, adapter(x), rtol=1e-5, atol=1e-5)
    via_weight.sum().backward()
    assert adapter.lora_B.grad is not None and adapter.lora_B.grad.abs().sum() > 0
    assert adapter.base.weight.grad is None  # frozen base


def test_active_heads_is_a_plain_int_kept_by_set_head_mask():
    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, targets=("q", "v", "proj")))
    for adapter in (model.blocks[0].attn.qkv, model.blocks[0].attn.proj):
        assert type(adapter.active_heads) is int and adapter.active_heads == 4
        adapter.set_head_mask(torch.tensor([True, False, False, True]))
        assert type(adapter.active_heads) is int and adapter.active_heads == 2


@pytest.mark.parametrize("layout", ["per-projection", "shared"])
def test_every_adapter_answers_for_its_heads_through_the_shared_base(layout):
    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, targets=("q", "v", "proj"), layout=layout))
    randomize_adapters(model)
    mask = torch.tensor([True, False, True, True])
    hl.set_head_masks(model, [mask] * 2)
    x = torch.randn(2, 5, model.blocks[0].attn.qkv.base.in_features)
    for adapter in model.blocks[0].attn.qkv, model.blocks[0].attn.proj:
        assert isinstance(adapter, HeadLoRAAdapter) and adapter.active_heads == 3
        blocks = adapter.split_heads(adapter.head_parameter)
        assert blocks.shape[0] == 3
        full = adapter.scatter_per_head(torch.tensor([1.0, 2.0, 3.0]))
        assert full.tolist() == [1.0, 0.0, 2.0, 3.0]
        # the peft form computes the same update, inactive heads as zeros
        lora_a, lora_b, scaling = adapter.peft_lora()
        torch.testing.assert_close(scaling * lora_b @ lora_a, adapter.delta_weight())
        assert adapter.update_norms().shape == (3,) and (adapter.update_norms() > 0).all()
        inputs = x if adapter.projection == "qkv" else torch.randn(2, 5, adapter.base.in_features)
        assert adapter.head_output_norms(inputs).shape == (2, 5, 3)


def test_update_norms_are_the_frobenius_norms_of_each_head_s_rows_of_delta_w():
    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, scale=0.5, targets=("q", "v")))
    randomize_adapters(model)
    adapter = model.blocks[0].attn.qkv
    delta = adapter.delta_weight().double()
    width, hd = adapter.num_heads * adapter.head_dim, adapter.head_dim
    expected = [
        sum(delta[slot * width + h * hd : slot * width + (h + 1) * hd].norm() for slot in (0, 2))
        for h in range(adapter.num_heads)
    ]
    torch.testing.assert_close(adapter.update_norms(), torch.stack(expected))
