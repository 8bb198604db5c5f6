import json

import pytest
import torch
from tiny_models import images, randomize_adapters, tiny_swin, tiny_vit

import heartlora as hl
from heartlora.adapter_io import CONFIG_NAME, WEIGHTS_NAME


def _trained(build=tiny_vit, ne=1, **config):
    model = build()
    hl.inject(model, hl.HeartLoRAConfig(rank=2, ne=ne, mode=config.pop("mode", "layer"), **config))
    randomize_adapters(model)
    scores = (
        torch.rand(2, 4)
        if build is tiny_vit
        else torch.tensor([[1.0, 2.0, float("nan"), float("nan")], [1.0, 2.0, 3.0, 4.0]])
    )
    hl.deactivate_heads(model, scores)
    with torch.no_grad():
        model.get_classifier().weight.normal_()
    return model


@pytest.mark.parametrize("build", [tiny_vit, tiny_swin])
def test_round_trip_onto_a_fresh_base_gives_identical_outputs(tmp_path, build):
    config = {"mode": "percent", "percent": 0.5} if build is tiny_swin else {}
    model = _trained(build, **config)
    hl.save_adapter(model, tmp_path)
    fresh = hl.load_adapter(build(), tmp_path)
    x = images()
    assert torch.equal(model(x), fresh(x))
    assert [m.tolist() for m in hl.head_masks(fresh)] == [m.tolist() for m in hl.head_masks(model)]
    torch.testing.assert_close(fresh.heartlora_scores, model.heartlora_scores, equal_nan=True)


def test_adapter_file_shrinks_with_ne(tmp_path):
    sizes = {}
    for ne in (0, 3):
        hl.save_adapter(_trained(ne=ne), tmp_path / str(ne))
        sizes[ne] = (tmp_path / str(ne) / WEIGHTS_NAME).stat().st_size
    # 2 layers × 2 projections × 3 heads × head_dim 8 × rank 2 × 4 bytes fewer, plus header
    assert sizes[0] - sizes[3] >= 2 * 2 * 3 * 8 * 2 * 4


def test_load_resets_the_classifier_to_the_adapter_class_count(tmp_path):
    model = _trained()
    hl.save_adapter(model, tmp_path)
    base = tiny_vit()
    base.reset_classifier(1000)
    fresh = hl.load_adapter(base, tmp_path)
    assert fresh.num_classes == 3
    assert torch.equal(fresh(images()), model(images()))


def test_load_errors(tmp_path):
    hl.save_adapter(_trained(), tmp_path)
    loaded = hl.load_adapter(tiny_vit(), tmp_path)
    with pytest.raises(ValueError, match="already carries"):
        hl.load_adapter(loaded, tmp_path)
    with pytest.raises(ValueError, match="saved for 'tiny_vit_test'"):
        hl.load_adapter(tiny_swin(), tmp_path)
    other_heads = tiny_vit(heads=2)
    other_heads.pretrained_cfg = {"architecture": "tiny_vit_test"}
    with pytest.raises(ValueError, match="heads per layer"):
        hl.load_adapter(other_heads, tmp_path)
    with pytest.raises(ValueError, match="no heartlora adapter"):
        hl.load_adapter(tiny_vit(), tmp_path / "missing")
    (tmp_path / CONFIG_NAME).write_text("{ not json")
    with pytest.raises(ValueError, match="line 1 column 3: invalid JSON"):
        hl.load_adapter(tiny_vit(), tmp_path)


def test_config_json_holds_what_a_user_inspects(tmp_path):
    hl.save_adapter(_trained(), tmp_path)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert meta["base_model"] == "tiny_vit_test"
    assert meta["config"]["targets"] == ["q", "v"] and meta["config"]["rank"] == 2
    assert meta["num_heads"] == [4, 4]
    assert [sum(row) for row in meta["head_masks"]] == [3, 3]
    assert len(meta["scores"]) == 2 and len(meta["scores"][0]) == 4


def test_save_refuses_a_merged_model(tmp_path):
    model = _trained()
    hl.merge(model)
    with pytest.raises(ValueError, match="unmerge first"):
        hl.save_adapter(model, tmp_path)
