"""The suite's own verdict: paired comparisons in plain words, the field as baseline lines, and
runs at chance."""

import pytest

from heartlora.training.comparisons import GridMethod, compare_methods, verdict
from heartlora.training.frontier import frontier_markdown
from heartlora.training.report import RunResult
from heartlora.training.stats import at_chance
from heartlora.training.suite import runs_say

BASE = {"scorer": "taylor"}


def _runs(method: str, stored: int, offsets: list[float], **extra) -> list[RunResult]:
    """One run per (task, seed) pair: task t, seed k scores 60 + 10 t + k + offsets[i]."""
    pairs = [(t, k) for t in range(3) for k in range(3)]
    return [
        RunResult(method, f"task{t}", "natural", k, 60.0 + 10 * t + k + off, 1000, stored, **extra)
        for (t, k), off in zip(pairs, offsets, strict=True)
    ]


AHEAD = [2.0, 3.0, 2.5, 1.5, 2.0, 3.5, 2.0, 2.5, 3.0]
NOISE = [1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.0, 1.5, -1.5]


def test_at_chance_uses_two_binomial_standard_errors():
    assert at_chance(53.0, 2, 1000) and not at_chance(53.5, 2, 1000)  # 50 + 3.16
    assert at_chance(11.8, 10, 1000) and not at_chance(12.0, 10, 1000)  # 10 + 1.90
    assert at_chance(56.5, 2, 200) and not at_chance(57.5, 2, 200)  # 50 + 7.07
    with pytest.raises(Exception, match="at least 2 classes"):
        at_chance(50.0, 1, 100)
    unknown = RunResult("lora", "t", "natural", 0, 10.0, 1, 1)
    assert not unknown.at_chance  # classes and images unknown: never counted
    assert RunResult(
        "lora", "t", "natural", 0, 10.0, 1, 1, num_classes=10, eval_images=500
    ).at_chance


def test_verdict_says_level_ahead_or_behind_from_the_interval():
    results = (
        _runs("lora", 600, [0.0] * 9)
        + _runs("heart-lora", 500, AHEAD)
        + _runs("heart-lora[scorer=random]", 500, NOISE)
    )
    comparisons = {c.baseline: c for c in compare_methods(results, BASE)}
    assert set(comparisons) == {"lora", "heart-lora[scorer=random]"}
    against_lora = verdict(comparisons["lora"])
    assert against_lora.startswith("heart-lora − lora: +2.44 points")
    assert against_lora.endswith("ahead of lora at 17 % fewer bytes.")
    assert "9/9 ahead" in against_lora
    assert comparisons["heart-lora[scorer=random]"].relation == "control"
    level = compare_methods(
        _runs("heart-lora", 500, NOISE) + _runs("heart-lora[scorer=random]", 500, [0.0] * 9),
        BASE,
    )
    assert verdict(level[0]).endswith("heads chosen at random do as well.")
    behind = compare_methods(
        _runs("heart-lora", 500, [-a for a in AHEAD]) + _runs("lora", 500, [0.0] * 9), BASE
    )
    assert verdict(behind[0]).endswith("behind lora at the same bytes.")


def test_every_method_that_keeps_all_heads_is_a_baseline_line():
    for spec, line in [
        ("peft-vera[rank=89]", "peft-vera"),
        ("peft-fourierft[n_frequency=100]", "peft-fourierft"),
        ("peft-oft[block_size=64]", "peft-oft"),
        ("bitfit", "bitfit"),
        ("lora[rank=4,targets=[q,k,v]]", "lora[targets=[q,k,v]]"),
    ]:
        parsed = GridMethod.parse(spec, BASE)
        assert parsed.is_baseline and not parsed.is_candidate and parsed.line == line
    assert not GridMethod.parse("heart-lora[rank=10,ne=2]", BASE).is_baseline
    # the nearest-bytes member of each line is the partner
    results = (
        _runs("heart-lora", 500, NOISE)
        + _runs("peft-vera[rank=8]", 100, [0.0] * 9)
        + _runs("peft-vera[rank=80]", 520, [0.0] * 9)
        + _runs("bitfit", 200, [0.0] * 9)
    )
    partners = {c.baseline for c in compare_methods(results, BASE)}
    assert partners == {"peft-vera[rank=80]", "bitfit"}


def test_suite_report_carries_the_verdict_and_the_runs_at_chance():
    chance = {"num_classes": 10, "eval_images": 1000}
    results = (
        _runs("lora", 600, [0.0] * 9, **chance)
        + _runs("heart-lora", 500, NOISE, **chance)
        + [RunResult("lora", "task9", "natural", 0, 10.5, 1000, 600, **chance)]
    )
    text = runs_say(results, BASE)
    assert "## What these runs say" in text
    assert "- heart-lora − lora: +0.00 points" in text and "level with lora" in text
    assert "1 of 19 runs stayed at chance: lora on task9 seed 0 (10.5 %)." in text
    assert runs_say(_runs("lora", 600, [0.0] * 9), BASE) == ""  # nothing to compare


def test_frontier_table_counts_runs_at_chance_per_method():
    chance = {"num_classes": 2, "eval_images": 1000}
    results = _runs("lora", 600, [0.0] * 9, **chance) + [
        RunResult("bitfit", f"task{t}", "natural", 0, 50.0 + t, 1000, 200, **chance)
        for t in range(3)
    ]
    from heartlora.training.comparisons import summarize_methods

    text = frontier_markdown(results, summarize_methods(results), [], "test")
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if "|" in line}
    assert "| 3/3 |" in rows["bitfit"]
    assert "| 0/9 |" in rows["lora"]
    assert "task0 | task1 | task2 |" in text
