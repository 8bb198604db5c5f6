import json
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any

import pytest
import torch
from tiny_models import tiny_vit

import heartlora as hl
from heartlora.adapter_io import (
    CONFIG_NAME,
    AdapterMetadata,
    DatasetInfo,
    RunInfo,
    read_adapter_metadata,
)
from heartlora.io.field_types import (
    Mismatch,
    check_fields,
    describe,
    field_error,
    first_mismatch,
    matches,
)
from heartlora.training.config import TrainConfig
from heartlora.training.run_state import RunProgress


@pytest.mark.parametrize(
    "value, annotation, expected",
    [
        (3, "int", True),
        (True, "int", False),  # a bool is never an integer
        (False, "float", False),  # nor a number
        (True, "bool", True),
        (1, "bool", False),
        (3, "float", True),  # an integer is a number
        (2.5, "float", True),
        (math.inf, "float", False),
        (-math.inf, "float", False),
        (math.nan, "float", False),
        (10**400, "float", False),  # no float holds it
        (10**400, "int", True),
        (1.0, "int", False),
        ("3", "int", False),
        ("x", "str", True),
        (None, "str", False),
        (None, "str | None", True),
        (None, "None", True),
        ("x", "int | None", False),
        ([], "list[str]", True),
        (["a", 1], "list[str]", False),
        (("a",), "list[str]", False),  # a list is a list
        (["q", "v"], "tuple[str, ...]", True),  # JSON and YAML have no tuples
        (("q", "v"), "tuple[str, ...]", True),
        ("q", "tuple[str, ...]", False),
        ([[0.5, 1]], "list[list[float]] | None", True),
        ([[0.5, math.inf]], "list[list[float]] | None", False),
        ([0.5], "list[list[float]]", False),
        ([[1.0, None]], "list[list[float | None]]", True),
        ({"a": [1]}, "dict[str, Any]", True),
        ({1: "a"}, "dict[str, Any]", False),  # YAML keys may be numbers
        ({"a": "b"}, "dict[str, int]", False),
        ([{"a": 1}, 2], "list[dict[str, Any]]", False),
        (object(), "Any", True),
        (None, "Any", True),
    ],
)
def test_values_match_their_annotation_as_text_or_as_type(value, annotation, expected):
    assert matches(value, annotation) is expected
    real = eval(annotation, {"Any": Any})  # the same annotation as a type
    assert matches(value, real) is expected


def test_the_first_mismatch_names_the_deepest_wrong_item():
    assert first_mismatch([[1, 2], [3, "x"]], "list[list[int]]") == Mismatch(
        "[1][1]", "x", "an integer"
    )
    assert first_mismatch({"a": [1, True]}, "dict[str, list[float]]") == Mismatch(
        ".a[1]", True, "a number"
    )
    assert first_mismatch([[1, "x"]], "list[list[float | None]] | None") == Mismatch(
        "[0][1]", "x", "a number or null"
    )
    assert first_mismatch("x", "int | None") == Mismatch("", "x", "an integer or null")
    assert first_mismatch({1: 2}, "dict[str, Any]").path == ""  # a bad key: the whole mapping
    assert first_mismatch([1, 2], "list[int]") is None


@pytest.mark.parametrize(
    "annotation, words",
    [
        ("int", "an integer"),
        ("float", "a number"),
        ("bool", "true or false"),
        ("str | None", "a string or null"),
        ("list[str]", "a list of strings"),
        ("tuple[str, ...]", "a list of strings"),
        ("list[list[float]] | None", "a list of lists of numbers or null"),
        ("dict[str, Any]", "a mapping of strings to values"),
        ("list[dict[str, Any]]", "a list of mappings of strings to values"),
    ],
)
def test_types_are_described_in_words(annotation, words):
    assert describe(annotation) == words


def test_every_annotation_of_the_checked_dataclasses_is_understood():
    checked = [TrainConfig, hl.HeartLoRAConfig, RunProgress, DatasetInfo, RunInfo, AdapterMetadata]
    for cls in checked:  # a record's annotations resolve in its own module
        for annotation in typing.get_type_hints(cls).values():
            describe(annotation)
            first_mismatch(object(), annotation)
    with pytest.raises(TypeError, match="tuple"):
        matches((1, "a"), "tuple[int, str]")


def test_progress_of_a_checkpoint_is_checked_against_its_fields():
    state = RunProgress().to_state()
    assert RunProgress.from_state(state, "c.pt") == RunProgress()
    for key, value in [
        ("epoch", True),
        ("loss_sum", math.inf),
        ("best_epoch", 1.5),
        ("history", [{"epoch": 1}, 3]),
    ]:
        with pytest.raises(hl.HeartLoRAError, match=f"^c.pt: damaged checkpoint: progress: {key}"):
            RunProgress.from_state({**state, key: value}, "c.pt")
    with pytest.raises(hl.HeartLoRAError, match="progress: unknown key 'epochs'"):
        RunProgress.from_state({**state, "epochs": 1}, "c.pt")
    del state["epoch"]  # a default is no answer: the run would start again
    with pytest.raises(hl.HeartLoRAError, match="progress: epoch is missing"):
        RunProgress.from_state(state, "c.pt")


def test_train_config_messages_name_the_key_the_type_and_the_value():
    with pytest.raises(hl.HeartLoRAError, match=r"^rank must be an integer, got True$"):
        TrainConfig(rank=True)
    with pytest.raises(hl.HeartLoRAError, match=r"^task must be set \(got null\)$"):
        TrainConfig(task=None)
    with pytest.raises(hl.HeartLoRAError, match=r"^normalize\[1\]\[0\] must be a number, got 'x'$"):
        TrainConfig(normalize=[[0.5], ["x"]])


@pytest.fixture
def adapter_file(tmp_path):
    model = tiny_vit()
    hl.inject(model, hl.HeartLoRAConfig(rank=2))
    hl.save_adapter(model, tmp_path)
    return tmp_path / CONFIG_NAME


def _refusal(path, change) -> str:
    """The one-line message that refuses the adapter file at ``path`` once ``change``d."""
    saved = path.read_text()
    document = json.loads(saved)
    change(document)
    path.write_text(json.dumps(document))
    with pytest.raises(hl.HeartLoRAError) as error:
        read_adapter_metadata(path.parent)
    path.write_text(saved)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


def test_every_adapter_config_key_is_checked_against_heartlora_config(adapter_file):
    def wrong_normalize_layers(document):
        document["config"]["normalize_layers"] = "yes"

    message = _refusal(adapter_file, wrong_normalize_layers)
    assert message.endswith("config.normalize_layers must be true or false, got 'yes'")

    def wrong_old_key(document):  # a renamed key is checked as its new name, named as written
        document["config"]["warmup_steps"] = document["config"].pop("calib_warmup_steps") * 1.5

    assert "config.warmup_steps must be an integer, got 30.0" in _refusal(
        adapter_file, wrong_old_key
    )


def test_adapter_keys_name_the_wrong_item(adapter_file):
    def wrong_head_count(document):
        document["num_heads"][1] = "4"

    assert "num_heads[1] must be an integer, got '4'" in _refusal(adapter_file, wrong_head_count)

    def wrong_mask(document):
        document["head_masks"][0][2] = 1

    assert "head_masks[0][2] must be true or false, got 1" in _refusal(adapter_file, wrong_mask)

    def wrong_dataset_root(document):
        document["extra"]["dataset"] = {"kind": "folder", "root": 3}

    assert "extra.dataset: root must be a string, got 3" in _refusal(
        adapter_file, wrong_dataset_root
    )
    for key, said in [
        ("config", "config is missing (a mapping)"),
        ("embed_dim", "embed_dim is missing (an integer)"),
        ("extra", "extra is missing (a mapping)"),
    ]:
        assert said in _refusal(adapter_file, lambda document, key=key: document.pop(key)), key

    def out_of_range(document):
        document["extra"]["img_size"] = 0

    assert "extra: img_size must be at least 1 and at most 4096, got 0" in _refusal(
        adapter_file, out_of_range
    )


def test_an_adapter_file_with_the_old_key_still_loads(adapter_file):
    document = json.loads(adapter_file.read_text())
    document["config"]["warmup_steps"] = document["config"].pop("calib_warmup_steps")
    adapter_file.write_text(json.dumps(document))
    with pytest.warns(FutureWarning, match="'warmup_steps' is deprecated"):
        metadata = read_adapter_metadata(adapter_file.parent)
    assert metadata.config == hl.HeartLoRAConfig(rank=2)
    assert torch.equal(torch.tensor(metadata.head_masks), torch.ones(2, 4, dtype=torch.bool))


@dataclass
class _Bounded:
    count: int = field(default=1, metadata={"minimum": 1, "maximum": 9})
    share: float = field(default=0.0, metadata={"minimum": 0, "below": 1})
    rate: float = field(default=1.0, metadata={"above": 0})
    names: list[str] = field(default_factory=list, metadata={"choices": ("a", "b")})
    kind: str | None = field(default=None, metadata={"choices": ("x", "y")})
    limit: int | None = field(default=None, metadata={"minimum": 1})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"count": 0}, "count must be at least 1 and at most 9, got 0"),
        ({"count": 10}, "count must be at least 1 and at most 9, got 10"),
        ({"count": 2**63}, "count must be below 2**63 in magnitude"),
        ({"count": None}, "count must be set (got null)"),
        ({"share": 1}, "share must be at least 0 and below 1, got 1"),
        ({"rate": 0.0}, "rate must be greater than 0, got 0.0"),
        ({"rate": math.nan}, "rate must be a number, got nan"),
        ({"names": ["a", "c"]}, "names: unknown value 'c'; expected one of a, b"),
        ({"kind": "z"}, "kind: unknown value 'z'; expected one of x, y"),
        ({"kind": "yy"}, "kind: unknown value 'yy' (did you mean 'y'?)"),
        ({"limit": 0}, "limit must be at least 1, got 0"),
    ],
)
def test_check_fields_applies_type_choices_and_bounds_of_the_metadata(change, message):
    record = _Bounded(**change)
    with pytest.raises(hl.HeartLoRAError) as error:
        check_fields(record, "f.yaml")
    assert str(error.value).startswith(f"f.yaml: {message}")


def test_check_fields_passes_values_on_their_bounds_and_nulls_where_allowed():
    check_fields(_Bounded(count=9, share=0, rate=1e-12, names=["b", "a"], kind="x", limit=1))
    check_fields(_Bounded())
    assert field_error(fields(_Bounded)[0], 5) is None


def _records():
    from heartlora.tools.speed import SpeedConfig
    from heartlora.training.slurm_executor import SlurmSettings

    return [hl.HeartLoRAConfig, TrainConfig, SpeedConfig, SlurmSettings]


@pytest.mark.parametrize("record", _records(), ids=lambda kind: kind.__name__)
def test_every_settings_record_refuses_a_value_under_each_declared_minimum(record):
    """The bounds a field declares are applied wherever the record is made: each field with a
    ``minimum`` refuses the integer below it, naming the field."""
    bounded = [item for item in fields(record) if "minimum" in item.metadata]
    assert bounded
    for item in bounded:
        values = {item.name: item.metadata["minimum"] - 1}
        with pytest.raises(hl.HeartLoRAError, match=f"{item.name} must be at least"):
            if record.__name__ == "SlurmSettings":  # made from a mapping, where it is read
                record.from_mapping(values, "s.yaml")
            else:
                record(**values)
