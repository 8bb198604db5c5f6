import pytest
import torch
import torch.nn.functional as F
from tiny_models import batches, randomize_adapters, tiny_swin, tiny_vit

import heartlora as hl
from heartlora.sensitivity import HeadSensitivity


def _trained_tracker(build=tiny_vit, steps=3):
    model = build()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, targets=("q", "v", "proj")))
    randomize_adapters(model)
    tracker = HeadSensitivity(model)
    for x, y in batches(steps):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        tracker.update()
    return model, tracker


def test_scores_are_layers_by_heads_positive_and_nan_padded_on_swin():
    _, tracker = _trained_tracker()
    scores = tracker.scores()
    assert tracker.steps == 3 and scores.shape == (2, 4) and (scores > 0).all()
    _, swin_tracker = _trained_tracker(tiny_swin)
    swin = swin_tracker.scores()
    assert torch.isnan(swin[0, 2:]).all() and torch.isfinite(swin[1]).all()


def test_state_dict_round_trip_continues_identically():
    model, tracker = _trained_tracker()
    copy = HeadSensitivity(model)
    copy.load_state_dict(tracker.state_dict())
    x, y = batches(1)[0]
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    tracker.update()
    copy.update()
    assert copy.steps == tracker.steps == 4
    torch.testing.assert_close(copy.scores(), tracker.scores(), rtol=0, atol=0)


def test_errors_name_what_is_wrong():
    model = tiny_vit()
    with pytest.raises(ValueError, match="inject"):
        HeadSensitivity(model)
    hl.inject(model, hl.HeartLoRAConfig(rank=2))
    with pytest.raises(ValueError, match="beta"):
        HeadSensitivity(model, beta_smoothed=1.0)
    tracker = HeadSensitivity(model)
    with pytest.raises(ValueError, match="no training step"):
        tracker.scores()
    tracker.update()  # no gradients: zero sensitivity
    with pytest.raises(ValueError, match="calib_warmup_steps"):
        tracker.scores()
    with pytest.raises(ValueError, match="ckpt.pt: the sensitivity state"):
        tracker.load_state_dict({"steps": 1, "smoothed": [], "uncertainty": []}, "ckpt.pt")
    hl.set_head_masks(model, [torch.tensor([True, False, True, True])] * 2)
    with pytest.raises(ValueError, match="heads changed"):
        tracker.update()
