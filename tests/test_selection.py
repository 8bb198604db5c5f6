import pytest
import torch
from tiny_models import tiny_swin, tiny_vit

import heartlora as hl


def test_global_accumulates_over_layers_and_differs_from_layer_wise():
    # Head 0 is the weakest in layer 0 only by a hair but strong overall; head 3 is middling
    # everywhere and weakest in total. Layer-wise drops 0 in layer 0; global drops index 3.
    scores = torch.tensor([[0.9, 1.0, 5.0, 1.0], [9.0, 2.0, 3.0, 1.5]])
    global_keep = hl.select_heads(scores, ne=1, mode="global")
    layer_keep = hl.select_heads(scores, ne=1, mode="layer")
    assert global_keep.tolist() == [[True, True, True, False], [True, True, True, False]]
    assert layer_keep.tolist() == [[False, True, True, True], [True, True, True, False]]
    assert not torch.equal(global_keep, layer_keep)


def test_global_ranks_on_the_last_layers_accumulated_score():
    scores = torch.tensor([[10.0, 0.0, 0.0], [0.0, 4.0, 3.0], [0.0, 4.0, 3.0]])
    # R[L] = [10, 8, 6] → index 2 is dropped everywhere
    assert hl.select_heads(scores, ne=1, mode="global")[:, 2].tolist() == [False] * 3


def test_budget_drops_the_lowest_pairs_anywhere_but_keeps_a_head_per_layer():
    scores = torch.tensor([[0.1, 0.2, 0.3], [5.0, 6.0, 7.0]])
    keep = hl.select_heads(scores, ne=1, mode="budget")  # 2 pairs in the whole network
    assert keep.tolist() == [[False, False, True], [True, True, True]]
    keep = hl.select_heads(scores, ne=2, mode="budget")  # 4 pairs; layer 0 keeps one
    assert keep.tolist() == [[False, False, True], [False, False, True]]


def test_percent_on_layers_with_different_head_counts():
    nan = float("nan")
    scores = torch.tensor([[2.0, 1.0, nan, nan], [4.0, 1.0, 3.0, 2.0]])
    keep = hl.select_heads(scores, mode="percent", percent=0.5)
    assert keep.tolist() == [[True, False, False, False], [True, False, True, False]]


def test_global_refuses_mixed_head_counts():
    nan = float("nan")
    with pytest.raises(ValueError, match="same head count"):
        hl.select_heads(torch.tensor([[1.0, 2.0, nan], [1.0, 2.0, 3.0]]), ne=1, mode="global")


def test_swin_percent_deactivation_applies_per_stage():
    model = tiny_swin()
    hl.inject(model, hl.HeartLoRAConfig(mode="percent", percent=0.5))
    scores = torch.tensor([[1.0, 2.0, float("nan"), float("nan")], [4.0, 3.0, 2.0, 1.0]])
    hl.deactivate_heads(model, scores)
    assert [m.tolist() for m in hl.head_masks(model)] == [[False, True], [True, True, False, False]]


@pytest.mark.parametrize("mode", ["global", "layer", "budget"])
def test_ne_zero_keeps_every_head(mode):
    assert bool(hl.select_heads(torch.rand(3, 4), ne=0, mode=mode).all())


def test_ties_break_by_index():
    keep = hl.select_heads(torch.ones(2, 4), ne=2, mode="layer")
    assert keep.tolist() == [[False, False, True, True]] * 2


def test_normalize_layers_lets_every_layer_weigh_the_same_in_the_global_ranking():
    # layer 0's scores are 100× larger: unnormalised it alone decides; normalised, layer 1's
    # strong preference against head 3 wins over layer 0's weak one against head 0
    scores = torch.tensor([[100.0, 110.0, 110.0, 110.0], [1.0, 1.0, 1.0, 0.01]])
    raw = hl.select_heads(scores, ne=1, mode="global")
    normalized = hl.select_heads(scores, ne=1, mode="global", normalize_layers=True)
    assert raw[:, 0].logical_not().all() and raw[:, 1:].all()
    assert normalized[:, 3].logical_not().all() and normalized[:, :3].all()
    for mode in ("layer", "budget"):
        same = hl.select_heads(scores * torch.tensor([[1.0], [7.0]]), ne=1, mode=mode)
        if mode == "layer":
            assert torch.equal(
                same, hl.select_heads(scores, ne=1, mode=mode, normalize_layers=True)
            )


def test_normalize_per_layer_keeps_signs_nan_padding_and_zero_rows():
    from heartlora.selection import normalize_per_layer

    scores = torch.tensor([[-1.0, -3.0, float("nan")], [0.0, 0.0, 0.0]])
    out = normalize_per_layer(scores)
    torch.testing.assert_close(out[0, :2], torch.tensor([-0.25, -0.75], dtype=torch.float64))
    assert torch.isnan(out[0, 2]) and (out[1] == 0).all()


def test_invert_scores_deactivates_the_most_responsive_heads_of_any_scorer():
    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, ne=1, mode="layer", invert_scores=True))
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.8, 0.2, 0.4, 0.6]])
    keep = hl.deactivate_heads(model, scores)
    assert keep.tolist() == [[True, False, True, True], [False, True, True, True]]
    torch.testing.assert_close(model.heartlora_scores, -scores)  # what the selection used


@pytest.mark.parametrize("mode", ["global", "layer", "budget"])
@pytest.mark.parametrize("scale", [1e-22, 1e-13, 1e-6, 1.0, 1e12])
def test_the_lowest_scores_are_dropped_at_every_scale(mode, scale):
    # head 1 is the least responsive in every layer, head 0 next: differences far below any
    # perturbation a tie-break could add must still decide
    scores = torch.tensor([[1.0, 0.0, 3.0, 2.0], [1.5, 0.5, 2.0, 4.0]], dtype=torch.float64)
    keep = hl.select_heads(scores * scale, ne=1, mode=mode)
    assert keep.tolist() == [[True, False, True, True]] * 2
    keep = hl.select_heads(scores * scale, ne=2, mode=mode)
    assert keep.tolist() == [[False, False, True, True]] * 2


def test_a_tiny_difference_beats_the_index_in_layer_and_global_mode():
    scores = torch.tensor([[1e-13, 0.0, 1.0]], dtype=torch.float64)
    assert hl.select_heads(scores, ne=1, mode="layer").tolist() == [[True, False, True]]
    assert hl.select_heads(scores, ne=1, mode="global").tolist() == [[True, False, True]]


def test_percent_ranks_tiny_scores_too():
    scores = torch.tensor([[3e-20, 1e-20, 2e-20, 4e-20]], dtype=torch.float64)
    keep = hl.select_heads(scores, mode="percent", percent=0.5)
    assert keep.tolist() == [[True, False, False, True]]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("mode", ["global", "layer", "budget", "percent"])
def test_non_finite_scores_are_refused_by_layer_and_head(bad, mode):
    scores = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    scores[1, 1] = bad
    with pytest.raises(hl.HeartLoRAError, match="layer 1, head 1"):
        hl.select_heads(scores, ne=1, mode=mode, percent=0.4)


def test_a_trailing_nan_of_a_model_with_more_heads_is_refused_by_name():
    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig(ne=1))
    layers, heads = len(hl.head_masks(model)), len(hl.head_masks(model)[0])
    scores = torch.rand(layers, heads)
    scores[0, heads - 1] = float("nan")
    with pytest.raises(hl.HeartLoRAError, match=f"layer 0, head {heads - 1} is nan"):
        hl.deactivate_heads(model, scores)


@pytest.mark.parametrize("ne", [1.5, 1.0, True, "1", None])
def test_ne_must_be_a_whole_number(ne):
    with pytest.raises(hl.HeartLoRAError, match="ne must be a whole number"):
        hl.select_heads(torch.rand(2, 4), ne=ne, mode="layer")


def test_complex_and_boolean_scores_are_refused():
    with pytest.raises(hl.HeartLoRAError, match="real numbers"):
        hl.select_heads(torch.rand(2, 4, dtype=torch.complex64), ne=1)
    with pytest.raises(hl.HeartLoRAError, match="real numbers"):
        hl.select_heads(torch.ones(2, 4, dtype=torch.bool), ne=1)
