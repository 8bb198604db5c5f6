import json

import pytest
import torch
from tiny_models import images, randomize_adapters, tiny_vit

import heartlora as hl
from heartlora.adapter_io import CONFIG_NAME
from heartlora.config import LAYOUTS, RENAMED_KEYS, rename_deprecated_keys

# What heartlora_config.json's "config" held before `calib_warmup_steps` and `layout`.
OLD_ADAPTER_CONFIG = {
    "rank": 2,
    "scale": 0.5,
    "targets": ["q", "v"],
    "ne": 1,
    "mode": "layer",
    "percent": 0.0,
    "scorer": "taylor",
    "warmup_steps": 7,
    "calib_batches": 3,
}


def test_to_dict_round_trips_and_carries_the_new_keys():
    config = hl.HeartLoRAConfig(
        rank=3, targets=("q", "k", "v"), calib_warmup_steps=5, layout="shared"
    )
    data = config.to_dict()
    assert data["calib_warmup_steps"] == 5 and data["layout"] == "shared"
    assert "warmup_steps" not in data and "extra" not in data
    assert json.loads(json.dumps(data)) == data
    assert hl.HeartLoRAConfig.from_dict(data) == config


def test_layout_defaults_to_per_projection_and_is_validated():
    assert LAYOUTS == ("per-projection", "shared")
    assert hl.HeartLoRAConfig().layout == "per-projection"
    with pytest.raises(
        hl.HeartLoRAError, match="layout: unknown value 'fused'.*per-projection, shared"
    ):
        hl.HeartLoRAConfig(layout="fused")


def test_old_adapter_config_loads_with_one_future_warning():
    with pytest.warns(
        FutureWarning, match="'warmup_steps' is deprecated, use 'calib_warmup_steps'"
    ):
        config = hl.HeartLoRAConfig.from_dict({**OLD_ADAPTER_CONFIG, "extra": {}}, "old.json")
    assert config.calib_warmup_steps == 7 and config.calib_batches == 3
    assert config.layout == "per-projection" and config.targets == ("q", "v")


def test_both_spellings_or_an_unknown_key_are_errors_naming_them():
    both = {**OLD_ADAPTER_CONFIG, "calib_warmup_steps": 7}
    with pytest.raises(hl.HeartLoRAError, match="old.json: both 'warmup_steps' and 'calib_warmup"):
        hl.HeartLoRAConfig.from_dict(both, "old.json")
    with pytest.raises(
        hl.HeartLoRAError,
        match="old.json: unknown HeartLoRAConfig key 'rnak' \\(did you mean 'rank'\\?\\)",
    ):
        hl.HeartLoRAConfig.from_dict({"rnak": 2}, "old.json")
    with pytest.raises(hl.HeartLoRAError, match="calib_warmup_steps must be at least 0, got -1"):
        hl.HeartLoRAConfig(calib_warmup_steps=-1)


def test_rename_keeps_other_keys_and_their_order(recwarn):
    assert rename_deprecated_keys({"a": 1, "b": 2}, "x") == {"a": 1, "b": 2}
    assert not recwarn.list
    for old, new in RENAMED_KEYS.items():
        renamed = rename_deprecated_keys({"a": 1, old: 2, "b": 3}, "x")
        assert list(renamed.items()) == [("a", 1), (new, 2), ("b", 3)]


def test_an_adapter_directory_saved_before_the_rename_still_loads(tmp_path):
    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, ne=1, mode="layer"))
    randomize_adapters(model)
    hl.deactivate_heads(model, torch.rand(2, 4))
    hl.save_adapter(model, tmp_path)
    path = tmp_path / CONFIG_NAME
    metadata = json.loads(path.read_text())
    old = dict(metadata["config"])
    old["warmup_steps"] = old.pop("calib_warmup_steps")
    del old["layout"]
    metadata["config"] = old
    path.write_text(json.dumps(metadata))
    with pytest.warns(FutureWarning, match="warmup_steps"):
        fresh = hl.load_adapter(tiny_vit(), tmp_path)
    assert fresh.heartlora_config == model.heartlora_config
    x = images()
    assert torch.equal(fresh(x), model(x))


def test_the_inverse_control_has_one_spelling_in_the_adapter_config():
    inverse = hl.HeartLoRAConfig(scorer="inverse")
    assert (inverse.scorer, inverse.invert_scores) == ("taylor", True)
    twice = hl.HeartLoRAConfig(scorer="inverse", invert_scores=True)  # negated twice: taylor
    assert (twice.scorer, twice.invert_scores) == ("taylor", False)
    with pytest.warns(FutureWarning, match="warmup_steps"):  # the old file's other key
        old = hl.HeartLoRAConfig.from_dict({**OLD_ADAPTER_CONFIG, "scorer": "inverse"})
    assert (old.scorer, old.invert_scores) == ("taylor", True)
    other = hl.HeartLoRAConfig(scorer="head-gate", invert_scores=True)
    assert (other.scorer, other.invert_scores) == ("head-gate", True)
