import csv
import json

import pytest
from PIL import Image
from train_fixtures import make_learnable_task

from heartlora.cli import main
from heartlora.training.comparisons import GridMethod, compare_methods, summarize_methods
from heartlora.training.frontier import (
    DEFAULT_GRID,
    choose_candidate,
    methods_for_test,
    run_frontier,
    vtab_tasks,
)
from heartlora.training.method_specs import format_method, parse_method
from heartlora.training.report import RunResult

BASE = {"scorer": "taylor"}
# (method, stored bytes, accuracy offset from the base accuracy of a (task, seed) pair)
GRID = [
    ("lora[rank=4]", 100, -3.0),
    ("lora[rank=8]", 200, 0.0),
    ("peft-lora[rank=8]", 210, 2.0),
    ("heart-lora[rank=8,ne=2]", 160, 1.0),
    ("heart-lora[rank=8,ne=2,scorer=random]", 160, 1.0),
    ("heart-lora[rank=8,ne=2,scorer=inverse]", 160, -1.0),
    ("heart-lora-layer[rank=8,ne=1]", 180, 3.0),
]


def _results() -> list[RunResult]:
    return [
        RunResult(method, task, "natural", seed, 50.0 + 10 * t + seed + offset, 1000, stored)
        for method, stored, offset in GRID
        for t, task in enumerate(("a", "b"))
        for seed in (0, 1, 2)
    ]


def test_grid_methods_parse_and_format_back():
    for spec in DEFAULT_GRID:
        assert format_method(*parse_method(spec)) == spec
    parsed = GridMethod.parse("lora[rank=4,targets=[q,k,v]]", BASE)
    assert parsed.is_baseline and parsed.line == "lora[targets=[q,k,v]]"
    heart = GridMethod.parse("heart-lora[rank=8,ne=2]", BASE)
    assert heart.is_candidate and heart.control("random") == "heart-lora[rank=8,ne=2,scorer=random]"
    assert not GridMethod.parse("heart-lora[ne=2,scorer=inverse]", BASE).is_candidate
    # any other scorer's inverse control negates that scorer's own scores
    sensitivity = GridMethod.parse("heart-lora[ne=2,scorer=sensitivity]", BASE)
    inverse = sensitivity.control("inverse")
    assert inverse == "heart-lora[ne=2,scorer=sensitivity,invert_scores=true]"
    assert GridMethod.parse(inverse, BASE).control_kind == "inverse"
    assert not GridMethod.parse(inverse, BASE).is_candidate


def test_summary_marks_the_pareto_frontier_and_seed_spread():
    rows = {s.method: s for s in summarize_methods(_results())}
    assert rows["lora[rank=8]"].accuracy == pytest.approx(56.0)  # tasks 50, 60; seeds +0,1,2
    assert rows["lora[rank=8]"].accuracy_std == pytest.approx(1.0)
    frontier = {m for m, s in rows.items() if s.pareto}
    assert frontier == {
        "lora[rank=4]",
        "heart-lora[rank=8,ne=2]",
        "heart-lora[rank=8,ne=2,scorer=random]",
        "heart-lora-layer[rank=8,ne=1]",
    }


def test_candidates_meet_nearest_bytes_baselines_and_their_controls():
    comparisons = compare_methods(_results(), BASE, seed=0)
    pairs = {(c.candidate, c.baseline): c for c in comparisons}
    # 160 bytes: lora[rank=8] (200) is nearer than lora[rank=4] (100); peft has one member
    assert set(pairs) == {
        ("heart-lora[rank=8,ne=2]", "lora[rank=8]"),
        ("heart-lora[rank=8,ne=2]", "peft-lora[rank=8]"),
        ("heart-lora[rank=8,ne=2]", "heart-lora[rank=8,ne=2,scorer=random]"),
        ("heart-lora[rank=8,ne=2]", "heart-lora[rank=8,ne=2,scorer=inverse]"),
        ("heart-lora-layer[rank=8,ne=1]", "lora[rank=8]"),
        ("heart-lora-layer[rank=8,ne=1]", "peft-lora[rank=8]"),
    }
    versus_lora = pairs[("heart-lora[rank=8,ne=2]", "lora[rank=8]")]
    assert versus_lora.relation == "nearest bytes" and versus_lora.bytes_ratio == pytest.approx(0.8)
    assert versus_lora.result.pairs == 6 and versus_lora.result.mean == pytest.approx(1.0)
    assert (versus_lora.result.low, versus_lora.result.high) == pytest.approx((1.0, 1.0))
    assert (
        pairs[("heart-lora[rank=8,ne=2]", "heart-lora[rank=8,ne=2,scorer=inverse]")].result.wins
        == 6
    )
    # the layer variant is +3 over lora and +1 over peft: its worst case (+1) beats ne=2's (-1)
    chosen = choose_candidate(comparisons)
    assert chosen == "heart-lora-layer[rank=8,ne=1]"
    assert methods_for_test(chosen, comparisons, BASE) == [
        chosen,
        "lora[rank=8]",
        "peft-lora[rank=8]",
        "heart-lora-layer[rank=8,ne=1,scorer=random]",
        "heart-lora-layer[rank=8,ne=1,scorer=inverse]",
    ]
    with pytest.raises(ValueError, match="nothing to choose"):
        choose_candidate([c for c in comparisons if c.relation == "control"])


def test_vtab_tasks_take_groups_as_the_suite_does_and_need_the_split_files(tmp_path):
    make_learnable_task(tmp_path, task="toy")
    make_learnable_task(tmp_path, task="other")
    (task,) = vtab_tasks(["toy:structured"], tmp_path, ("train800", "test"))
    assert task.group == "Structured" and task.settings == {
        "task": "toy",
        "data_root": str(tmp_path),
    }
    assert [t.group for t in vtab_tasks(["toy:Faces", "other:natural"], tmp_path, ())] == [
        "Faces",
        "Natural",
    ]
    assert [t.group for t in vtab_tasks(["toy", "other"], tmp_path, ())] == ["All", "All"]
    with pytest.raises(ValueError, match="'other' has no group while others have one"):
        vtab_tasks(["toy:natural", "other"], tmp_path, ("train800",))
    with pytest.raises(ValueError, match="no folder"):
        vtab_tasks(["missing"], tmp_path, ("train800",))
    (tmp_path / "toy" / "val200.txt").unlink()
    with pytest.raises(ValueError, match="val200.txt: split file not found"):
        vtab_tasks(["toy:natural"], tmp_path, ("train800", "val200"))


@pytest.mark.slow
def test_frontier_chooses_on_val200_and_reports_test_once(tmp_path, capsys):
    make_learnable_task(tmp_path / "data", task="toy")
    out = tmp_path / "frontier"
    args = [
        "frontier", "--data-root", str(tmp_path / "data"), "--tasks", "toy:natural",
        "--methods", "lora[rank=2],heart-lora[rank=2,ne=2]", "--seeds", "2", "--jobs", "1",
        "--epochs", "2", "--output-dir", str(out),
    ]  # fmt: skip
    for item in ("batch_size=16", "calib_warmup_steps=1", "calib_batches=1", "warmup_epochs=1"):
        args += ["--set", item]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "chosen on val200: heart-lora[rank=2,ne=2]" in printed
    val_rows = list(csv.DictReader((out / "val200" / "frontier.csv").open()))
    assert len(val_rows) == 4 and {r["eval_split"] for r in val_rows} == {"val200"}
    test_rows = list(csv.DictReader((out / "test" / "frontier.csv").open()))
    assert {r["method"] for r in test_rows} == {
        "heart-lora[rank=2,ne=2]",
        "lora[rank=2]",
        "heart-lora[rank=2,ne=2,scorer=random]",
        "heart-lora[rank=2,ne=2,scorer=inverse]",
    }
    assert len(test_rows) == 8 and {r["eval_split"] for r in test_rows} == {"test"}
    choice = json.loads((out / "choice.json").read_text())
    assert choice["chosen"] == "heart-lora[rank=2,ne=2]"
    report = (out / "frontier.md").read_text()
    assert "| Mean diff | 95 % CI |" in report and "scorer=inverse] | control |" in report
    with Image.open(out / "test" / "frontier.png") as plot:
        assert plot.size[0] > 400
    # the test runs really trained on train800val200 and were evaluated on test
    run = out / "test" / "runs" / "toy" / "lora[rank=2]" / "seed1" / "result.json"
    assert json.loads(run.read_text())["eval_images"] == 24


def test_the_real_base_grid_builds_valid_runs_with_its_controls_in_the_grid():
    from heartlora.training.config import build_config
    from heartlora.training.frontier import REAL_BASE_GRID
    from heartlora.training.suite import suite_base_config

    base, _ = suite_base_config(None, [], "real")
    grid = {spec: GridMethod.parse(spec, base) for spec in REAL_BASE_GRID}
    for spec, parsed in grid.items():
        assert format_method(*parse_method(spec)) == spec
        build_config(
            None, [f"{k}={json.dumps(v)}" for k, v in {**base, **parsed.overrides}.items()]
        )
    # each scorer that reads the task's gradients has its inverse control in the grid
    for scorer in ("taylor", "head-gate", "weight-taylor"):
        spec = next(s for s, p in grid.items() if p.scorer == scorer and p.is_candidate)
        assert grid[spec].control("inverse") in grid and grid[spec].control("random") in grid


class _SubmittedOnly:
    """An executor that submits and does not wait (SLURM's ``--no-wait``)."""

    def __init__(self):
        self.runs = []

    def run(self, runs, report):
        self.runs += runs
        return False


def test_a_frontier_that_does_not_wait_stops_before_choosing_and_writes_nothing(tmp_path):
    make_learnable_task(tmp_path / "data", task="toy")
    tasks = vtab_tasks(["toy:natural"], tmp_path / "data", ("train800", "val200"))
    executor = _SubmittedOnly()
    base = {"data_root": str(tmp_path / "data"), "epochs": 1, "model": "vit_mini_patch4_28"}
    outcome = run_frontier(
        tasks, ["lora[rank=2]", "heart-lora[rank=2,ne=2]"], [0], tmp_path / "out", base,
        executor=executor, log=lambda _: None,
    )  # fmt: skip
    assert outcome is None
    assert len(executor.runs) == 2 and all("val200" in str(r.run_dir) for r in executor.runs)
    assert not (tmp_path / "out" / "choice.json").exists()
    assert not (tmp_path / "out" / "val200" / "frontier.md").exists()
