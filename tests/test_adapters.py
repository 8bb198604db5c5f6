import pytest
import torch
from tiny_models import images, randomize_adapters, tiny_swin, tiny_vit

import heartlora as hl
from heartlora.adapters import HeadLoRAQKV


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
