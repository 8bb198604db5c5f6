"""Byte matching (`heartlora.training.budget`): the size whose stored bytes are nearest a target."""

import pytest
import timm

import heartlora.bundled.model  # noqa: F401  (registers vit_mini_patch4_28)
from heartlora.config import HeartLoRAConfig
from heartlora.errors import HeartLoRAError
from heartlora.training.budget import main, match_bytes, stored_bytes
from heartlora.training.methods import MethodSettings


@pytest.fixture(scope="module")
def model():
    return timm.create_model("vit_mini_patch4_28", num_classes=3)


def test_a_rank_is_found_from_its_own_bytes(model):
    five = stored_bytes("peft-lora", model, MethodSettings(HeartLoRAConfig(rank=5)))
    found = match_bytes("peft-lora", five + 3, model)
    assert (found.method, found.value, found.bytes) == ("peft-lora[rank=5]", 5, five)
    assert model.blocks[0].attn.qkv.__class__.__name__ == "Linear"  # the model was not wrapped


def test_a_block_size_is_matched_among_the_divisors_of_the_width(model):
    sixteen = stored_bytes("peft-oft", model, MethodSettings(block_size=16))
    eight = stored_bytes("peft-oft", model, MethodSettings(block_size=8))
    assert eight < sixteen
    assert match_bytes("peft-oft", sixteen - 1, model).method == "peft-oft[block_size=16]"


def test_methods_without_a_size_say_so_or_give_their_one_size(model):
    with pytest.raises(HeartLoRAError, match="^heart-lora: its bytes depend on the heads"):
        match_bytes("heart-lora", 10_000, model)
    found = match_bytes("peft-ia3", 10_000, model)
    assert found.method == "peft-ia3" and found.value is None and found.bytes > 0


def test_the_command_prints_a_grid_member(capsys):
    assert main(["--methods", "peft-lora,bitfit", "--bytes", "55000", "--num-classes", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["peft-lora[rank=5]", "bitfit"]
    assert main(["--methods", "peft-ia3", "--bytes", "1", "--set", "rank=4"]) == 2
    assert "peft-ia3 has no rank" in capsys.readouterr().err
