import pytest
import torch
import torch.nn.functional as F
from tiny_models import batches, randomize_adapters, tiny_vit

import heartlora as hl
from heartlora.calibration import CalibWarmupError, calib_warmup_for
from heartlora.inject import active_heads_per_layer


def _model(**settings):
    model = tiny_vit()
    config = hl.HeartLoRAConfig(rank=2, targets=("q", "v"), ne=1, mode="layer", **settings)
    hl.inject(model, config)
    return model


def _warm_up(model, calibration, steps):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for x, y in batches(steps):
        F.cross_entropy(model(x), y).backward()
        calibration.after_backward()
        optimizer.step()
        optimizer.zero_grad()


def test_the_warm_up_length_is_the_config_s_or_fitted_to_the_run():
    assert [calib_warmup_for(None, steps) for steps in (1, 2, 16, 128, 1600)] == [0, 1, 2, 16, 20]
    assert calib_warmup_for(10, 16) == 10
    with pytest.raises(CalibWarmupError, match="must be smaller than the run's 16 steps"):
        calib_warmup_for(16, 16)
    model = _model(calib_warmup_steps=5)
    assert hl.Calibration(model, 100).calib_warmup_steps == 5
    fitted = hl.Calibration(model, 16, fit_warmup=True)
    assert fitted.calib_warmup_steps == 2
    assert model.heartlora_config.calib_warmup_steps == 2  # the adapter records what ran
    assert [fitted.due(step) for step in range(4)] == [False, False, True, True]


def test_calibrate_scores_with_the_config_s_scorer_and_ends_the_phase():
    model = _model(scorer="grad-norm", calib_warmup_steps=0, calib_batches=2)
    calibration = hl.Calibration(model, 10)
    expected = hl.responsiveness(model, batches(2), F.cross_entropy, scorer="grad-norm")
    torch.testing.assert_close(
        hl.responsiveness(model, batches(2), F.cross_entropy), expected, rtol=0, atol=0
    )
    result = calibration.calibrate(batches(5), F.cross_entropy)  # reads calib_batches of them
    torch.testing.assert_close(result.scores, expected, rtol=0, atol=0)
    assert result.accumulated_steps == 0
    assert result.keep.sum(1).tolist() == [3, 3]
    assert active_heads_per_layer(model) == [3, 3]
    assert not calibration.due(5)


def test_sensitivity_accumulates_over_the_warm_up_through_the_hook():
    model = _model(scorer="sensitivity", calib_warmup_steps=3)
    randomize_adapters(model)
    calibration = hl.Calibration(model, 10)
    _warm_up(model, calibration, 3)
    assert calibration.due(3)
    result = calibration.calibrate([], F.cross_entropy)  # needs no batches: the steps scored
    assert result.accumulated_steps == 3
    assert calibration.sensitivity is None and calibration.state_dict()["sensitivity"] is None


def test_state_dict_resumes_mid_warm_up_and_after_selection_exactly():
    model = _model(scorer="sensitivity", calib_warmup_steps=4)
    randomize_adapters(model)
    calibration = hl.Calibration(model, 10)
    _warm_up(model, calibration, 2)
    state = calibration.state_dict()
    assert state["head_masks"] is None and state["sensitivity"]["steps"] == 2
    resumed = hl.Calibration(model, 10)
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.sensitivity.scores(), calibration.sensitivity.scores())

    keep = calibration.calibrate([], F.cross_entropy).keep
    selected = calibration.state_dict()
    assert selected["sensitivity"] is None
    fresh = _model(scorer="sensitivity", calib_warmup_steps=4)
    again = hl.Calibration(fresh, 10)
    again.load_state_dict(selected, "ckpt.pt")
    assert again.done and not again.due(9)
    assert [m.tolist() for m in hl.head_masks(fresh)] == [row.tolist() for row in keep]
    torch.testing.assert_close(fresh.heartlora_scores, model.heartlora_scores)
    with pytest.raises(hl.HeartLoRAError, match="ckpt.pt: checkpoint does not fit"):
        hl.Calibration(_model(calib_warmup_steps=4), 10).load_state_dict(
            {**selected, "head_masks": selected["head_masks"][:1]}, "ckpt.pt"
        )


def test_a_model_without_adapters_is_refused():
    with pytest.raises(hl.HeartLoRAError, match="inject"):
        hl.Calibration(tiny_vit(), 10)


def test_a_calibration_selects_once():
    model = _model(scorer="grad-norm", calib_warmup_steps=0)
    calibration = hl.Calibration(model, 10)
    calibration.calibrate(batches(2), F.cross_entropy)
    masks = [mask.clone() for mask in hl.head_masks(model)]
    with pytest.raises(hl.HeartLoRAError, match="selects once"):
        calibration.calibrate(batches(2), F.cross_entropy)
    assert [m.tolist() for m in hl.head_masks(model)] == [m.tolist() for m in masks]


def test_sensitivity_drops_each_layer_s_lowest_scored_head():
    # the heads dropped are each layer's lowest-scored, whatever the scores' scale
    model = _model(scorer="sensitivity", calib_warmup_steps=3)
    randomize_adapters(model)
    calibration = hl.Calibration(model, 10)
    _warm_up(model, calibration, 3)
    result = calibration.calibrate([], F.cross_entropy)
    for scores, keep in zip(result.scores, result.keep):
        assert (~keep).nonzero().flatten().tolist() == [int(scores.argmin())]


def test_a_calibration_leaves_the_config_it_is_given_unchanged():
    model = _model(calib_warmup_steps=5)
    injected = model.heartlora_config
    before = injected.to_dict()
    calibration = hl.Calibration(model, 16, fit_warmup=True)
    assert injected.to_dict() == before  # the caller's object: still 5
    assert calibration.config is not injected and calibration.config.calib_warmup_steps == 2
    assert model.heartlora_config is calibration.config  # the model records what ran
    given = hl.HeartLoRAConfig(rank=2, targets=("q", "v"), ne=1, mode="layer")
    other = hl.Calibration(model, 16, config=given, fit_warmup=True)
    assert given.calib_warmup_steps == 20 and other.config.calib_warmup_steps == 2
    assert model.heartlora_config is calibration.config  # a config of its own: not the model's


def test_the_warm_up_rule_refuses_a_warm_up_too_short_for_the_scorer_with_one_error():
    assert calib_warmup_for(0, 10, "grad-norm") == 0  # needs no warm-up
    assert calib_warmup_for(None, 16, "sensitivity") == 2  # 1/8 of 16 steps: enough
    refused = {
        (None, 1, "taylor", None): "scorer 'taylor' needs 1 warm-up step(s) before heads are "
        "scored, but the warm-up fitted to this run has 0 (the run's 1 steps); expected a run "
        "of at least 2 steps",
        (None, 8, "sensitivity", "8 steps of 1 epoch"): "the warm-up fitted to this run has 1 "
        "(8 steps of 1 epoch); expected a run of at least 16 steps",
        (1, 16, "sensitivity", None): "calib_warmup_steps is 1 (the run's 16 steps); expected "
        "calib_warmup_steps of at least 2, or null, or a scorer that needs no warm-up: "
        "grad-norm, redundancy, head-gate, weight-taylor, random",
        (3, 3, "taylor", "3 steps of 1 epoch"): "calib_warmup_steps=3 must be smaller than "
        "the run's 3 steps (null adapts it to the run's length); 3 steps of 1 epoch",
    }
    for arguments, message in refused.items():
        with pytest.raises(CalibWarmupError) as error:
            calib_warmup_for(*arguments)
        assert message in str(error.value), str(error.value)
