"""Frontier experiments kept as files (`heartlora frontier --grid FILE`)."""

from pathlib import Path

import pytest

from heartlora.errors import HeartLoRAError
from heartlora.training.comparisons import GridMethod
from heartlora.training.frontier import GridFile, read_grid_file

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "frontier"


def test_the_petl_field_grid_holds_heart_lora_its_control_and_the_field():
    grid = read_grid_file(CONFIGS / "petl-field.yaml")
    assert grid.selection == "none" and grid.seeds == 3 and grid.epochs == 5
    assert grid.tasks == ("mnist", "photo-patches", "digit-order")
    parsed = [GridMethod.parse(spec, {"scorer": "taylor"}) for spec in grid.methods]
    candidates = [p.spec for p in parsed if p.is_candidate]
    assert candidates == ["heart-lora[rank=10,ne=2]", "heart-lora[rank=5,ne=2]"]
    assert [p.control_kind for p in parsed if p.control_kind] == ["random", "random"]
    field = {p.name for p in parsed if p.is_baseline}
    assert len(field) >= 10 and {"lora", "peft-lora", "peft-adalora", "bitfit"} <= field


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("method: [lora]\n", "unknown key 'method' (did you mean 'methods'?)"),
        ("methods: lora\n", "methods must be a list of strings or null, got 'lora'"),
        ("methods: [lora, 'peft-ia3[rank=8]']\n", "methods: peft-ia3[rank=8]: peft-ia3 has no"),
        ("methods: ['lora[rank]']\n", "methods: method 'lora[rank]': expected key=value"),
        ("methods: [lora, lroa]\n", "methods: unknown method 'lroa'; expected one of"),
        ("tasks: []\n", "tasks must not be empty"),
        ("seeds: 0\n", "seeds must be at least 1, got 0"),
        ("selection_seeds: 1.5\n", "selection_seeds must be an integer or null, got 1.5"),
        ("epochs: true\n", "epochs must be an integer or null, got True"),
        ("selection: test\n", "selection: unknown value 'test'; expected one of val200, none"),
        ("- lora\n", "expected a mapping of grid keys, got list"),
        ("tasks: [mnist, '  ']\n", "tasks must not hold a blank name, got ['mnist', '  ']"),
        ("seeds:\n", "seeds must be set (got null); leave the key out instead"),
    ],
)
def test_a_bad_grid_file_is_one_line_naming_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(HeartLoRAError) as caught:
        read_grid_file(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_bundled_default_grids_are_grid_files():
    from heartlora.training.frontier import FRONTIER_DEFAULTS

    real, mini = FRONTIER_DEFAULTS["real"], FRONTIER_DEFAULTS["mini"]
    assert (real.epochs, real.selection_seeds, len(real.methods)) == (4, 2, 16)
    assert (mini.epochs, mini.seeds, len(mini.methods)) == (None, 3, 14)
    assert real.tasks == mini.tasks == ("mnist", "photo-patches", "animal-rotation")


def test_an_empty_grid_file_keeps_every_default_and_a_missing_one_is_named(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    assert read_grid_file(tmp_path / "empty.yaml") == GridFile()
    with pytest.raises(HeartLoRAError, match="nothing.yaml: grid file not found"):
        read_grid_file(tmp_path / "nothing.yaml")


def test_grid_names_are_stripped_before_they_become_labels(tmp_path):
    (tmp_path / "grid.yaml").write_text("methods: [' lora ', 'heart-lora[ne=1]']\n")
    assert read_grid_file(tmp_path / "grid.yaml").methods == ("lora", "heart-lora[ne=1]")


def test_the_frontier_command_reads_the_grid_file_before_anything_trains(tmp_path, capsys):
    from heartlora.cli import main

    path = tmp_path / "grid.yaml"
    path.write_text("methods: [lora, 'heart-lora[ne]']\nseeds: 2\n")
    assert main(["frontier", "--grid", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"heartlora: error: {path}: methods: method 'heart-lora[ne]'")
    assert not (tmp_path / "out").exists()
