import pytest
import torch
from tiny_models import batches, images, randomize_adapters, tiny_swin, tiny_vit

import heartlora as hl


def test_only_adapters_and_classifier_get_gradients():
    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig(rank=2))
    model.train()
    x, y = batches(1)[0]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for name, param in model.named_parameters():
        trainable = "lora_" in name or name.startswith("head.")
        assert param.requires_grad == trainable, name
        assert (param.grad is not None) == trainable, name


def test_trainable_parameter_formula_with_deactivated_heads():
    model = tiny_vit(num_classes=3, depth=2, heads=4)
    config = hl.HeartLoRAConfig(rank=2, targets=("q", "v", "proj"), ne=1, mode="layer")
    hl.inject(model, config)
    classifier = sum(p.numel() for p in model.head.parameters())
    dim, head_dim = 32, 8
    assert hl.trainable_parameters(model) == classifier + hl.expected_adapter_parameters(
        config, dim, head_dim, [4, 4], proj_out=dim
    )
    hl.deactivate_heads(model, torch.tensor([[1.0, 2, 3, 4], [4.0, 3, 2, 1]]))
    expected = classifier + hl.expected_adapter_parameters(config, dim, head_dim, [3, 3], dim)
    assert hl.trainable_parameters(model) == expected
    # 2 layers × (2 qkv projections + proj) × one head's block removed
    assert (
        expected
        == classifier
        + hl.expected_adapter_parameters(config, dim, head_dim, [4, 4], dim)
        - 2 * 3 * 2 * head_dim
    )


def test_deactivated_heads_get_no_gradient_and_no_optimizer_state():
    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, ne=2, mode="layer"))
    hl.deactivate_heads(model, torch.tensor([[0.0, 5, 1, 6], [3.0, 0, 4, 1]]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    x, y = batches(1)[0]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    stored = sum(state["exp_avg"].numel() for state in optimizer.state.values())
    assert stored == hl.trainable_parameters(model)
    assert [m.tolist() for m in hl.head_masks(model)] == [
        [False, True, False, True],
        [True, False, True, False],
    ]


@pytest.mark.parametrize("build", [tiny_vit, tiny_swin])
def test_merge_matches_and_leaves_a_plain_timm_model(build):
    model = build()
    plain_keys = set(build().state_dict())
    hl.inject(model, hl.HeartLoRAConfig(rank=2, targets=("q", "k", "v", "proj")))
    hl.deactivate_heads(
        model,
        hl.responsiveness(model, batches(1), scorer="redundancy"),
        hl.HeartLoRAConfig(mode="percent", percent=0.5),
    )
    randomize_adapters(model)
    x = images()
    with torch.no_grad():
        expected = model(x)
        hl.merge(model)
        merged = model(x)
        assert set(model.state_dict()) == plain_keys
        assert not any(isinstance(m, hl.HeadLoRAQKV) for m in model.modules())
        torch.testing.assert_close(merged, expected, atol=1e-5, rtol=0)
        hl.unmerge(model)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
    assert hl.trainable_parameters(model) > 0


def test_merge_unmerge_errors():
    model = tiny_vit()
    with pytest.raises(ValueError, match="nothing to merge"):
        hl.merge(model)
    hl.inject(model, hl.HeartLoRAConfig())
    with pytest.raises(ValueError, match="nothing to unmerge"):
        hl.unmerge(model)


def test_head_mask_calls_after_merge_advise_unmerge_and_it_works():
    """After merge, head-mask calls advised inject(), which then refused the model."""
    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, ne=1, mode="layer"))
    randomize_adapters(model)
    hl.merge(model)
    scores = torch.rand(2, 4, generator=torch.Generator().manual_seed(0))
    advice = r"^blocks\.0\.attn: the adapters are merged into the base weights \(merge\(\)\); call unmerge\(model\) first"
    for call in (
        lambda: hl.head_masks(model),
        lambda: hl.set_head_masks(model, [torch.ones(4, dtype=torch.bool)] * 2),
        lambda: hl.deactivate_heads(model, scores),
    ):
        with pytest.raises(hl.HeartLoRAError, match=advice):
            call()
    with pytest.raises(hl.HeartLoRAError, match=r"merged into its weights .*call unmerge\(model\)"):
        hl.inject(model, hl.HeartLoRAConfig(rank=2))
    hl.unmerge(model)  # the advice works
    hl.deactivate_heads(model, scores)
    assert [int(mask.sum()) for mask in hl.head_masks(model)] == [3, 3]


def test_bad_inputs_are_clear_value_errors():
    with pytest.raises(ValueError, match="rank"):
        hl.HeartLoRAConfig(rank=-1)
    with pytest.raises(ValueError, match="targets: unknown value 'o'"):
        hl.HeartLoRAConfig(targets=("q", "o"))
    with pytest.raises(ValueError, match="no attention heads"):
        hl.inject(torch.nn.Sequential(torch.nn.Linear(3, 3)), hl.HeartLoRAConfig())
    model = hl.inject(tiny_vit(), hl.HeartLoRAConfig(ne=4))
    with pytest.raises(ValueError, match="ne=4 must be smaller"):
        hl.deactivate_heads(model, torch.rand(2, 4))
    with pytest.raises(ValueError, match="already carries"):
        hl.inject(model, hl.HeartLoRAConfig())
    with pytest.raises(ValueError, match="do not match"):
        hl.deactivate_heads(model, torch.rand(3, 4), hl.HeartLoRAConfig(ne=1))
