import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from heartlora.config import LAYOUTS, MODES, SCORERS, TARGETS
from heartlora.data.base import DATASET_KINDS
from heartlora.errors import HeartLoRAError
from heartlora.training.config import (
    METHODS,
    TABLE_END,
    TABLE_START,
    TrainConfig,
    build_config,
    config_reference_markdown,
    main,
    read_config_file,
    replace_config_table,
)
from heartlora.training.method_specs import parse_method
from heartlora.training.precision import DTYPES
from heartlora.training.protocols import MINI
from heartlora.training.suite import suite_base_config

ROOT = Path(__file__).resolve().parents[1]
TRAINING_DOC = ROOT / "docs" / "training.md"


def _docs_table(text: str) -> str:
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    return text[start:end].strip("\n") + "\n"


def test_docs_table_is_generated_from_the_fields():
    documented = _docs_table(TRAINING_DOC.read_text(encoding="utf-8"))
    assert documented == config_reference_markdown(), (
        "docs/training.md's config table differs from the TrainConfig fields; regenerate it with "
        "`python -m heartlora.training.config --write-docs docs/training.md`"
    )


def test_table_has_one_row_per_field_with_type_default_and_help():
    rows = config_reference_markdown().splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| `{f.name}`" for f in fields(TrainConfig)]
    by_key = {row.split("`")[1]: row for row in rows}
    assert "| `int or null` | `null` |" in by_key["calib_warmup_steps"]
    assert "| `list[str]` | `[q, v]` |" in by_key["targets"]
    assert "| `str or null` | `null` |" in by_key["checkpoint"]
    assert "| `bool` | `false` |" in by_key["augment"]


def test_every_field_has_one_sentence_of_help():
    for item in fields(TrainConfig):
        text = item.metadata.get("help", "")
        assert text.endswith(".") and (text[0].isupper() or text[0] == "`"), item.name
        assert not re.search(r"\. [A-Z]", text), f"{item.name}: more than one sentence"
        assert "|" not in text and "\n" not in text, item.name


@pytest.mark.parametrize(
    "key, choices",
    [
        ("method", METHODS),
        ("data_kind", DATASET_KINDS),
        ("scorer", SCORERS),
        ("layout", LAYOUTS),
        ("selection_mode", MODES),
        ("targets", TARGETS),
        ("dtype", DTYPES),
    ],
)
def test_help_names_every_allowed_value(key, choices):
    text = next(f.metadata["help"] for f in fields(TrainConfig) if f.name == key)
    missing = [choice for choice in choices if f"`{choice}`" not in text]
    assert not missing, f"{key}: help does not name {missing}"


def test_write_docs_repairs_a_drifted_table_and_needs_the_markers(tmp_path, capsys):
    text = TRAINING_DOC.read_text(encoding="utf-8")
    drifted = text.replace("| `lr` | `float` | `0.001` |", "| `lr` | `float` | `0.01` |")
    assert drifted != text and replace_config_table(drifted) == text
    copy = tmp_path / "training.md"
    copy.write_text(drifted, encoding="utf-8")
    assert main(["--write-docs", str(copy)]) == 0
    assert copy.read_text(encoding="utf-8") == text
    with pytest.raises(HeartLoRAError, match="no config table markers"):
        replace_config_table("# no table here\n")
    assert main(["--markdown"]) == 0
    assert capsys.readouterr().out == config_reference_markdown()


def test_layout_reaches_the_adapter_config():
    assert TrainConfig().adapter_config().layout == "per-projection"
    config = TrainConfig(method="lora", targets=["q", "k", "v"], layout="shared")
    assert config.adapter_config().layout == "shared"
    with pytest.raises(
        HeartLoRAError, match="layout: unknown value 'share'.*did you mean 'shared'"
    ):
        build_config(None, ["layout=share"])


def test_calib_warmup_steps_reaches_the_adapter_config():
    config = build_config(None, ["calib_warmup_steps=3"])
    assert config.calib_warmup_steps == 3 and config.adapter_config().calib_warmup_steps == 3
    with pytest.raises(HeartLoRAError, match="calib_warmup_steps must be at least 0, got -1"):
        build_config(None, ["calib_warmup_steps=-1"])


def test_old_key_in_set_and_config_files_is_renamed_with_a_warning(tmp_path):
    with pytest.warns(
        FutureWarning, match="'warmup_steps' is deprecated, use 'calib_warmup_steps'"
    ):
        assert build_config(None, ["warmup_steps=3"]).calib_warmup_steps == 3
    base = tmp_path / "base.yaml"
    base.write_text("calib_warmup_steps: 100\nrank: 4\n", encoding="utf-8")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nwarmup_steps: 5\n", encoding="utf-8")
    with pytest.warns(FutureWarning, match=r"child\.yaml: config key 'warmup_steps'"):
        assert read_config_file(child) == {"calib_warmup_steps": 5, "rank": 4}
    # a later --set wins, whichever name it uses
    with pytest.warns(FutureWarning):
        config = build_config(child, ["calib_warmup_steps=9", "warmup_steps=2"])
    assert config.calib_warmup_steps == 2


def test_both_names_in_one_file_are_an_error(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text("warmup_steps: 5\ncalib_warmup_steps: 6\n", encoding="utf-8")
    with pytest.raises(HeartLoRAError, match=r"both\.yaml: both 'warmup_steps' and 'calib_warmup"):
        read_config_file(path)


def test_old_key_in_suite_set_and_method_brackets():
    with pytest.warns(FutureWarning):
        base, _ = suite_base_config(None, ["warmup_steps=4"])
    assert base["calib_warmup_steps"] == 4 and "warmup_steps" not in base
    name, overrides = parse_method("heart-lora[warmup_steps=8]")
    # what the suite builds for a run: the base settings, then the method's brackets
    items = [f"{k}={json.dumps(v)}" for k, v in {**MINI.defaults, **overrides}.items()]
    with pytest.warns(FutureWarning):
        config = build_config(None, [*items, f"method={name}"])
    assert config.calib_warmup_steps == 8 and config.method == "heart-lora"


def test_calib_warmup_fits_short_runs_unless_set_by_hand():
    auto = build_config(None, [])
    assert auto.calib_warmup_steps is None and auto.adapter_config().calib_warmup_steps == 20
    assert [auto.calib_warmup_for(steps) for steps in (1, 2, 16, 128, 1600)] == [0, 1, 2, 16, 20]
    assert build_config(None, ["calib_warmup_steps=10"]).calib_warmup_for(16) == 10
    with pytest.raises(HeartLoRAError, match="calib_warmup_steps=16 must be smaller than the run"):
        build_config(None, ["calib_warmup_steps=16"]).calib_warmup_for(16)


@pytest.mark.parametrize(
    "item, message",
    [
        ("label_smoothing=1.5", "label_smoothing must be at least 0 and below 1, got 1.5"),
        ("drop_path=1", "drop_path must be at least 0 and below 1, got 1"),
        ("seed=100000000000000000000", "seed must be below 2"),
        ("scale=0", "scale must be non-zero, got 0"),
        ("lr=.nan", "lr must be .*got nan"),
        ("epochs=100000000000000000000", "epochs must be below 2\\*\\*63"),
        ("num_classes=1000000000000", "num_classes must be at least 1 and at most 1000000, got"),
        ("num_workers=100000", "num_workers must be .*at most 256, got 100000"),
        ("lr=0", "lr must be greater than 0, got 0"),
    ],
)
def test_values_out_of_range_are_refused_by_the_config(item, message):
    """The range checks the config makes itself; tests/test_reliability.py checks that the
    command turns them (and the ones that need the model) into one line before writing."""
    with pytest.raises(HeartLoRAError, match=message):
        build_config(None, [item])


def test_adapter_keys_take_default_help_and_choices_from_heartlora_config():
    from heartlora.config import HeartLoRAConfig
    from heartlora.training.config import ADAPTER_KEYS

    core = {item.name: item for item in fields(HeartLoRAConfig)}
    run = {item.name: item for item in fields(TrainConfig)}
    assert all(item.metadata["help"].endswith(".") for item in core.values())
    for name, key in ADAPTER_KEYS.items():
        assert run[key].metadata.get("choices") == core[name].metadata.get("choices"), key
        if key not in ("selection_mode", "calib_warmup_steps"):  # null: decided by the run
            default = getattr(TrainConfig(), key)
            assert default == (list if name == "targets" else type(default))(core[name].default)
            assert run[key].metadata["help"].startswith(core[name].metadata["help"][:-1]), key
    with pytest.raises(HeartLoRAError, match="scorer: unknown value 'taylr'.*did you mean"):
        build_config(None, ["scorer=taylr"])
    with pytest.raises(HeartLoRAError, match="targets: unknown value 'o'"):
        build_config(None, ["targets=[q, o]"])


def test_every_config_key_is_a_train_flag_with_the_key_s_help():
    import argparse

    from heartlora.commands.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {action.dest: action for action in parser._actions}
    for item in fields(TrainConfig):
        action = flags[f"flag_{item.name}"]
        assert action.option_strings[0] == f"--{item.name.replace('_', '-')}"
        assert action.help.replace("%%", "%") == item.metadata["help"]
    args = parser.parse_args(
        ["--output-dir", "out", "--compile", "--model", "test_vit", "--rank", "4"]
        + ["--targets", "q,k", "--model-kwargs", "{num_heads: 2}", "--no-augment"]
    )
    given = {k[5:]: v for k, v in vars(args).items() if k.startswith("flag_") and v is not None}
    assert given == {
        "compile": True,
        "model": "test_vit",
        "rank": 4,
        "targets": "q,k",
        "model_kwargs": {"num_heads": 2},
        "augment": False,
    }
    config = build_config(None, [], given)
    assert (
        config.compile and config.targets == ["q", "k"] and config.model_kwargs == {"num_heads": 2}
    )


@pytest.mark.parametrize("text", ["q,k,v", "[q,k,v]", "[q, k, v]", " [q,k, v] ", "q, k ,v"])
def test_targets_flag_takes_the_comma_and_the_yaml_list_form(text):
    """`--targets '[q,k,v]'`, the list form the docs use in YAML, was split on commas into
    '[q', 'k', 'v]' and refused."""
    assert build_config(None, [], {"targets": text}).targets == ["q", "k", "v"]


def test_a_targets_flag_that_is_no_list_is_one_line():
    with pytest.raises(
        HeartLoRAError, match=r"^targets line 1: .*expected a list such as \[q, v\]"
    ):
        build_config(None, [], {"targets": "[q, k"})
