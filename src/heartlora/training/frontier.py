"""The accuracy–storage frontier: a budget grid of LoRA, peft LoRA, Heart-LoRA and its controls.

`run_frontier` trains every grid method on every task with every seed through the suite
engine (`run_suite`: bracket overrides, reuse of finished runs, the executor) and writes, next to
the suite's own files:

* ``frontier.csv`` — one row per run;
* ``frontier.md`` — per method the mean ± std over seeds of the task-mean accuracy and the
  stored bytes, the Pareto set, and the paired comparisons below;
* ``frontier.png`` — accuracy against stored bytes with error bars, the Pareto frontier marked.

**Paired comparisons.** Every Heart-LoRA variant whose scorer is not a control (a *candidate*)
is compared with (a) in each baseline line — the LoRA and peft-LoRA methods that differ only in
``rank`` — the member whose mean stored bytes are nearest (ties: the smaller), and (b) its
controls: the same method and overrides with ``scorer`` set to ``random`` or ``inverse``.
A comparison is the candidate's accuracy minus the other's, per (task, seed) pair, with the
mean and a bootstrap 95 % interval over the pairs (`heartlora.training.stats`).

**Selection on validation** (``selection="val200"``): the grid trains on ``train800`` and
evaluates on ``val200`` (``<output>/val200``). From it one candidate is *chosen*: the one whose
smallest mean paired difference to a byte-matched baseline line is largest (the variant that
is best for Heart-LoRA, judged on validation only). Then the chosen candidate, its
byte-matched partners and its two controls train on ``train800val200`` and are evaluated once
on ``test`` (``<output>/test``). With ``selection=None`` the grid runs once on the base
config's splits and nothing is chosen.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from heartlora.errors import HeartLoRAError
from heartlora.io.atomic import atomic_write_json, atomic_write_text
from heartlora.io.documents import read_yaml_mapping
from heartlora.io.field_types import record_from_mapping
from heartlora.training.comparisons import (
    CONTROL_SCORERS,
    Comparison,
    GridMethod,
    MethodSummary,
    compare_methods,
    summarize_methods,
    verdict,
)
from heartlora.training.executor import Executor
from heartlora.training.figures import new_figure, save_png
from heartlora.training.method_specs import parse_listed_method
from heartlora.training.report import GROUP_ORDER, RunResult
from heartlora.training.stats import mean_std
from heartlora.training.suite import SuiteTask, discover_tasks, run_suite

DEFAULT_SEEDS = 3
"""Seeds of a frontier whose grid file does not say."""


@dataclass(frozen=True)
class GridFile:
    """A frontier experiment kept as a file (``configs/frontier/*.yaml``): the keys it sets.

    Attributes:
        tasks, methods: the grid's tasks and method specs (NAME or NAME[key=value,...]), or
            None to keep the protocol's.
        seeds, epochs: counts, or None (epochs: the protocol's own).
        selection: ``"val200"`` or ``"none"``, or None.
        selection_seeds: seeds of the selection grid on val200, or None for ``seeds``.
    """

    tasks: tuple[str, ...] | None = field(default=None, metadata={"nonempty": True})
    methods: tuple[str, ...] | None = field(default=None, metadata={"nonempty": True})
    seeds: int | None = field(default=None, metadata={"minimum": 1})
    epochs: int | None = field(default=None, metadata={"minimum": 1})
    selection: str | None = field(default=None, metadata={"choices": ("val200", "none")})
    selection_seeds: int | None = field(default=None, metadata={"minimum": 1})


def read_grid_file(path: str | Path) -> GridFile:
    """The `GridFile` in the YAML mapping at ``path`` (its fields are the keys).

    Raises:
        HeartLoRAError: a missing file, invalid YAML, an unknown key (with the closest known
            one) or a value of the wrong kind — one line naming the file and the key. Method
            specs are parsed here, so a bad one is refused before anything trains.
    """
    path = Path(path)
    data = read_yaml_mapping(path, "grid file", "a mapping of grid keys", allow_empty=True)
    for key, value in data.items():  # null is how the record says "not given": never written
        if value is None:
            raise HeartLoRAError(f"{path}: {key} must be set (got null); leave the key out instead")
    grid = record_from_mapping(GridFile, data, str(path))
    for key in ("tasks", "methods"):
        names = getattr(grid, key) or ()
        if not all(name.strip() for name in names):
            raise HeartLoRAError(f"{path}: {key} must not hold a blank name, got {list(names)!r}")
        grid = replace(grid, **{key: tuple(name.strip() for name in names) or None})
    for spec in grid.methods or ():
        parse_listed_method(spec, f"{path}: methods")
    return grid


def _bundled_grid(name: str) -> GridFile:
    """The grid file shipped in ``heartlora/bundled/grids/<name>.yaml``."""
    return read_grid_file(
        Path(str(resources.files("heartlora.bundled") / "grids" / f"{name}.yaml"))
    )


FRONTIER_DEFAULTS: dict[str, GridFile] = {name: _bundled_grid(name) for name in ("mini", "real")}
"""``--base`` protocol name → what `heartlora frontier` runs when its options and ``--grid``
do not say: the grid files in ``heartlora/bundled/grids/`` (their comments say how each was
sized)."""

DEFAULT_TASKS: tuple[str, ...] = FRONTIER_DEFAULTS["mini"].tasks or ()
DEFAULT_GRID: tuple[str, ...] = FRONTIER_DEFAULTS["mini"].methods or ()
REAL_BASE_GRID: tuple[str, ...] = FRONTIER_DEFAULTS["real"].methods or ()

SELECTION_SPLITS = {"train_split": "train800", "eval_split": "val200"}
TEST_SPLITS = {"train_split": "train800val200", "eval_split": "test"}
_GROUPS = {group.lower(): group for group in GROUP_ORDER}


def vtab_tasks(names: list[str], data_root: Path, splits: tuple[str, ...]) -> list[SuiteTask]:
    """Suite tasks from any VTAB-layout root (`heartlora.training.suite.discover_tasks`).

    A name may carry its group as ``name:group``; then every name must, and those groups are
    used. Otherwise the root's ``groups.yaml``, or the groups the names are known by (mini-VTAB
    and VTAB-1k), or one group. Mini-VTAB task names are materialised under ``data_root``.

    Raises:
        HeartLoRAError: some names with a group and others without, an unknown task, or a task
            folder that lacks one of ``splits`` (before anything is trained).
    """
    entries = [[part.strip() for part in entry.partition(":")[::2]] for entry in names]
    given = {name: _GROUPS.get(group.lower(), group) for name, group in entries if group}
    if given and len(given) != len(entries):
        ungrouped = next(name for name, group in entries if not group)
        raise HeartLoRAError(
            f"task {ungrouped!r} has no group while others have one: write every task as "
            "name:group, or none"
        )
    return discover_tasks(data_root, [name for name, _ in entries], given or None, splits=splits)


NOTHING_TO_CHOOSE = (
    "nothing to choose: the grid needs a Heart-LoRA variant and a lora or peft-lora method"
)


def choose_candidate(comparisons: list[Comparison]) -> str:
    """The candidate whose worst mean difference to a byte-matched baseline is largest.

    Raises:
        HeartLoRAError: when no candidate was compared with a baseline.
    """
    worst: dict[str, float] = {}
    for c in comparisons:
        if c.relation == "nearest bytes":
            worst[c.candidate] = min(worst.get(c.candidate, float("inf")), c.result.mean)
    if not worst:
        raise HeartLoRAError(NOTHING_TO_CHOOSE)
    return max(worst, key=lambda m: (worst[m], m))


def methods_for_test(chosen: str, comparisons: list[Comparison], base: dict[str, Any]) -> list[str]:
    """The chosen candidate, its byte-matched partners and its two controls."""
    partners = [
        c.baseline for c in comparisons if c.candidate == chosen and c.relation != "control"
    ]
    controls = [GridMethod.parse(chosen, base).control(s) for s in CONTROL_SCORERS]
    return list(dict.fromkeys([chosen, *partners, *controls]))


def frontier_csv(results: list[RunResult], split: str) -> str:
    """One row per run, with the split the accuracy was measured on."""
    buffer = io.StringIO()
    names = list(RunResult.__dataclass_fields__)
    writer = csv.DictWriter(buffer, fieldnames=["eval_split", *names])
    writer.writeheader()
    for r in results:
        writer.writerow({"eval_split": split, **{n: getattr(r, n) for n in names}})
    return buffer.getvalue()


def frontier_markdown(
    results: list[RunResult],
    summaries: list[MethodSummary],
    comparisons: list[Comparison],
    split: str,
) -> str:
    """The per-method table and the paired comparisons as Markdown."""
    tasks = sorted({r.task for r in results})
    seeds = sorted({r.seed for r in results})
    lines = [
        f"Accuracy (%) on {split}: per task mean ± std over seeds {seeds}; Accuracy: per seed "
        f"the mean over the tasks, mean ± std over the seeds. Stored: the method's saved files per task (mean ± std over runs). "
        "At chance: runs whose accuracy is within two binomial standard errors of guessing.",
        "",
        "| Method | Params (k) | Stored (KB) | "
        + "".join(f"{task} | " for task in tasks)
        + "Accuracy | At chance | Pareto |",
        "|---|---|---|" + "---|" * len(tasks) + "---|---|---|",
    ]
    chance = {s.method: [0, 0] for s in summaries}
    per_task: dict[tuple[str, str], list[float]] = {}
    for r in results:
        chance[r.method][0] += r.at_chance
        chance[r.method][1] += 1
        per_task.setdefault((r.method, r.task), []).append(r.accuracy)
    for s in sorted(summaries, key=lambda s: s.stored_bytes):
        cells = [
            "{:.1f} ± {:.1f}".format(*mean_std(per_task[(s.method, t)]))
            if (s.method, t) in per_task
            else "–"
            for t in tasks
        ]
        lines.append(
            f"| {s.method} | {s.trainable_parameters / 1e3:.1f} | {s.stored_bytes / 1024:.1f} ± "
            f"{s.stored_std / 1024:.1f} | "
            + "".join(f"{cell} | " for cell in cells)
            + f"{s.accuracy:.1f} ± {s.accuracy_std:.1f} | "
            f"{chance[s.method][0]}/{chance[s.method][1]} | {'yes' if s.pareto else ''} |"
        )
    if comparisons:
        lines += [
            "",
            "Paired differences (candidate − baseline, points) over (task, seed) pairs, with a "
            "bootstrap 95 % interval of the mean; bytes: candidate's stored bytes / baseline's.",
            "",
            "| Candidate | Baseline | Relation | Bytes | Pairs | Mean diff | 95 % CI | Wins |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in comparisons:
            r = c.result
            lines.append(
                f"| {c.candidate} | {c.baseline} | {c.relation} | {c.bytes_ratio:.2f} | "
                f"{r.pairs} | {r.mean:+.2f} | [{r.low:+.2f}, {r.high:+.2f}] | {r.wins}/{r.pairs} |"
            )
        lines += ["", *[f"- {verdict(c)}" for c in comparisons]]
    return "\n".join(lines) + "\n"


def plot_frontier(summaries: list[MethodSummary], path: Path, title: str) -> Path:
    """Accuracy (mean ± std over seeds) against stored KB; the Pareto frontier as a step line."""
    colours = {
        "lora": "tab:blue",
        "peft-lora": "tab:orange",
        "heart-lora": "tab:red",
        "heart-lora-layer": "tab:purple",
    }
    others = iter(
        ["#2ca02c", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#000000", "#98df8a"]
        + ["#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5", "#7f7f7f", "#aec7e8", "#ffbb78"] * 3
    )
    for s in summaries:  # the rest of the field: a colour per method name, in grid order
        name = GridMethod.parse(s.method, {}).name
        if name not in colours:
            colours[name] = next(others)
    control_markers = {"random": "x", "inverse": "v"}
    figure, axis = new_figure((7.2, 4.8))
    legend: dict[str, dict[str, Any]] = {}
    for s in summaries:
        parsed = GridMethod.parse(s.method, {})
        name, control = parsed.name, parsed.control_kind
        style = (
            {"marker": control_markers[control], "color": "grey"}
            if control
            else {"marker": "o", "color": colours[name]}
        )
        legend[f"{name}, {control} control" if control else name] = style
        axis.errorbar(
            s.stored_bytes / 1024,
            s.accuracy,
            yerr=s.accuracy_std,
            fmt=style["marker"],
            color=style["color"],
            markersize=7 if s.pareto else 4,
            capsize=2,
            alpha=0.9,
        )
        if not control:
            axis.annotate(
                s.method, (s.stored_bytes / 1024, s.accuracy),
                fontsize=5, xytext=(3, 2), textcoords="offset points",
            )  # fmt: skip
    front = sorted((s for s in summaries if s.pareto), key=lambda s: s.stored_bytes)
    axis.step(
        [s.stored_bytes / 1024 for s in front],
        [s.accuracy for s in front],
        where="post",
        color="black",
        linewidth=1,
        alpha=0.6,
        label="Pareto frontier (larger markers)",
    )
    for label, style in legend.items():
        axis.scatter([], [], label=label, **style)
    axis.set_xlabel("stored per task (KB)")
    axis.set_ylabel("mean accuracy over tasks (%)")
    axis.set_title(title, fontsize=9)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=6 if len(legend) > 8 else 7, loc="lower right", ncol=1 + len(legend) // 9)
    return save_png(figure, path)


def write_frontier(
    results: list[RunResult], output_dir: Path, base: dict[str, Any], split: str, seed: int = 0
) -> list[Comparison]:
    """frontier.csv, frontier.md and frontier.png for one phase; returns the comparisons."""
    summaries = summarize_methods(results)
    comparisons = compare_methods(results, base, seed)
    atomic_write_text(output_dir / "frontier.csv", frontier_csv(results, split))
    atomic_write_text(
        output_dir / "frontier.md",
        f"# Frontier ({split})\n\n" + frontier_markdown(results, summaries, comparisons, split),
    )
    tasks = len({r.task for r in results})
    seeds = len({r.seed for r in results})
    plot_frontier(
        summaries,
        output_dir / "frontier.png",
        f"Accuracy vs storage on {split} ({tasks} tasks × {seeds} seeds, error bars: std over seeds)",
    )
    return comparisons


@dataclass(frozen=True)
class FrontierOutcome:
    """What `run_frontier` produced: per phase its results and comparisons, and the choice."""

    results: dict[str, list[RunResult]]
    comparisons: dict[str, list[Comparison]]
    chosen: str | None


def run_frontier(
    tasks: list[SuiteTask],
    methods: list[str],
    seeds: list[int],
    output_dir: Path,
    base: dict[str, Any],
    method_defaults: dict[str, dict[str, Any]] | None = None,
    selection: str | None = "val200",
    executor: Executor | None = None,
    bootstrap_seed: int = 0,
    log: Callable[[str], None] = print,
    selection_seeds: list[int] | None = None,
) -> FrontierOutcome | None:
    """Run the grid (see the module docstring) and write its reports.

    ``selection="val200"``: grid on train800 → val200 in ``output_dir/val200`` (with
    ``selection_seeds``, default ``seeds``), choice, then the chosen set on train800val200 →
    test in ``output_dir/test`` (with ``seeds``); ``selection=None``: the grid once, on
    ``base``'s splits, in ``output_dir``. The runs train where ``executor`` puts them (default:
    one after another in this process).

    Returns:
        What was run and chosen, or None when the executor returned before a phase's runs
        finished (SLURM's ``--no-wait``): the same call later goes on from there.

    Raises:
        HeartLoRAError: for an unknown ``selection``, or nothing to choose from.
    """
    if selection not in (None, "val200"):
        raise HeartLoRAError(f"selection must be 'val200' or None, got {selection!r}")
    grid = [GridMethod.parse(method, base) for method in methods]
    if selection is not None and not (
        any(m.is_candidate for m in grid) and any(m.is_baseline for m in grid)
    ):
        raise HeartLoRAError(f"{NOTHING_TO_CHOOSE} (got {', '.join(methods)})")

    def phase(
        grid: list[str],
        directory: Path,
        phase_base: dict[str, Any],
        split: str,
        phase_seeds: list[int] = seeds,
    ) -> tuple[list[RunResult], list[Comparison]] | None:
        """Train ``grid`` in ``directory`` and write its frontier reports (None: not done)."""
        results = run_suite(
            tasks, grid, phase_seeds, directory, phase_base, log, method_defaults, executor
        )
        if results is None:
            return None
        return results, write_frontier(results, directory, phase_base, split, bootstrap_seed)

    if selection is None:
        split = str(base.get("eval_split"))
        done = phase(methods, output_dir, base, split)
        if done is None:
            return None
        results, comparisons = done
        return FrontierOutcome({split: results}, {split: comparisons}, None)

    log(f"selection: {len(methods)} methods on train800 → val200")
    val_dir = output_dir / "val200"
    done = phase(methods, val_dir, {**base, **SELECTION_SPLITS}, "val200", selection_seeds or seeds)
    if done is None:
        return None
    val_results, val_comparisons = done
    chosen = choose_candidate(val_comparisons)
    chosen_methods = methods_for_test(chosen, val_comparisons, base)
    atomic_write_json(
        output_dir / "choice.json",
        {
            "chosen": chosen,
            "rule": "largest smallest mean paired difference (val200) to a byte-matched baseline",
            "test_methods": chosen_methods,
        },
    )
    log(f"chosen on val200: {chosen}; test: {', '.join(chosen_methods)}")
    test_dir = output_dir / "test"
    done = phase(chosen_methods, test_dir, {**base, **TEST_SPLITS}, "test")
    if done is None:
        return None
    test_results, test_comparisons = done
    _write_overview(output_dir, chosen, val_dir, test_dir)
    return FrontierOutcome(
        {"val200": val_results, "test": test_results},
        {"val200": val_comparisons, "test": test_comparisons},
        chosen,
    )


def _write_overview(output_dir: Path, chosen: str, val_dir: Path, test_dir: Path) -> None:
    val = (val_dir / "frontier.md").read_text(encoding="utf-8").split("\n", 2)[2]
    test = (test_dir / "frontier.md").read_text(encoding="utf-8").split("\n", 2)[2]
    atomic_write_text(
        output_dir / "frontier.md",
        "# Frontier: chosen on val200, reported once on test\n\n"
        "## Selection (train800 → val200)\n\n"
        f"{val}\n![val200 frontier](val200/frontier.png)\n\n"
        f"Chosen: **{chosen}** (its smallest mean paired difference to a byte-matched baseline "
        "line is the largest on val200).\n\n"
        "## Test (train800val200 → test), the chosen variant, its partners and controls\n\n"
        f"{test}\n![test frontier](test/frontier.png)\n",
    )
