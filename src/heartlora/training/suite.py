"""`heartlora suite`: methods × tasks × seeds on the mini-VTAB default or any VTAB-layout root.

`discover_tasks` turns a VTAB-layout root (``<root>/<task>/{train800val200,test}.txt`` plus
images) into the suite's tasks: every task folder, or the named ones, in the groups of an
optional ``<root>/groups.yaml``. A mini-VTAB task name without a folder of its own is
materialised there first, so the built-in names work on any root.

Every run lives in ``<output>/runs/<task>/<method>/seed<k>/``; a finished run with the same
config is reused and an interrupted one resumed, so a killed suite continues where it stopped.
The suite writes ``results.csv`` (one row per run), ``results.md`` (the paper-style table) and
``accuracy_vs_storage.png``.

A method may carry config overrides in brackets, which is how ablations run:
``heart-lora-layer[ne=2]``, ``heart-lora[scorer=grad-norm,ne=3]``.
"""

from __future__ import annotations

import difflib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from heartlora.bundled.tasks import MINI_VTAB_TASKS, NINE_TASKS, materialize
from heartlora.errors import HeartLoRAError
from heartlora.io.atomic import atomic_write_text
from heartlora.io.documents import read_yaml_mapping
from heartlora.models.backbone import RANDOM_WEIGHTS
from heartlora.training.comparisons import compare_methods, verdict_markdown
from heartlora.training.config import TrainConfig, build_config, parse_override, read_config_file
from heartlora.training.executor import Executor, PlannedRun, finished_result
from heartlora.training.figures import new_figure, save_png
from heartlora.training.local_executor import LocalExecutor
from heartlora.training.method_specs import NOT_PER_SUITE, parse_method
from heartlora.training.protocols import DEFAULT_PROTOCOL, MINI, PROTOCOLS, SuiteProtocol
from heartlora.training.report import (
    RunResult,
    group_name,
    markdown_table,
    results_csv,
    summarize,
)

DEFAULT_METHODS = MINI.methods

BEST_OF_EVALUATIONS = "results-best-of-evaluations.md"
"""The table of best-of-evaluations accuracies a suite writes when its runs evaluated more than
once, beside results.md (final epoch)."""

GROUPS_FILE = "groups.yaml"
"""The optional file of a data root that puts its tasks into groups: ``group: [task, ...]``."""

DEFAULT_GROUP = "All"
"""The one group of tasks that no groups file or known task name puts anywhere else."""

VTAB_SPLITS = ("train800", "val200", "train800val200", "test")
"""The split files (``<split>.txt``) that mark a folder of a data root as a task folder."""


@dataclass(frozen=True)
class SuiteTask:
    """A task of the suite: its name, VTAB group and the config keys it sets."""

    name: str
    group: str
    settings: dict[str, Any]


def parse_seeds(text: str) -> list[int]:
    """``"3"`` → seeds 0, 1, 2; ``"0,7"`` → seeds 0 and 7."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()] if "," in text else None
        count = int(text) if seeds is None else len(seeds)
    except ValueError:
        raise HeartLoRAError(f"--seeds {text!r}: expected a count (3) or a list (0,7)") from None
    if seeds is not None and seeds:
        if len(set(seeds)) != len(seeds):
            raise HeartLoRAError(f"--seeds {text!r} repeats a seed (each seed is one run)")
        return seeds
    if not 1 <= count <= MAX_SEEDS:
        raise HeartLoRAError(f"--seeds {text!r}: expected a count in 1..{MAX_SEEDS}")
    return list(range(count))


MAX_SEEDS = 1000
"""The most seeds ``--seeds N`` asks for (each is one run per method and task)."""


def mini_vtab_tasks(names: list[str] | None, data_root: Path) -> list[SuiteTask]:
    """The mini-VTAB tasks (the nine by default), materialised under ``data_root``."""
    names = names or list(NINE_TASKS)
    unknown = [n for n in names if n not in MINI_VTAB_TASKS]
    if unknown:
        raise HeartLoRAError(
            f"unknown mini-VTAB task {unknown[0]!r}; `heartlora suite --list` names the tasks"
        )
    materialize(data_root, tasks=names)
    return [
        SuiteTask(name, MINI_VTAB_TASKS[name].group, {"task": name, "data_root": str(data_root)})
        for name in names
    ]


def discover_tasks(
    data_root: str | Path,
    names: Sequence[str] | None = None,
    groups: str | Path | Mapping[str, str] | None = None,
    splits: Sequence[str] = ("train800val200", "test"),
    log: Callable[[str], None] | None = None,
) -> list[SuiteTask]:
    """The suite's tasks on a VTAB-layout root: ``<root>/<task>/<split>.txt`` plus images.

    Args:
        data_root: the folder holding one folder per task.
        names: the tasks to run, in this order; ``None``: every task folder of the root (a
            folder holding any ``<split>.txt`` of `VTAB_SPLITS`), by name. A mini-VTAB task name
            without a folder of its own is materialised under ``data_root`` first.
        groups: ``task → group``, or a YAML file of ``group: [task, ...]``; ``None``: the
            root's ``groups.yaml`` when there is one. Without either, the groups the task names
            are known by (mini-VTAB and VTAB-1k: Natural, Specialized, Structured) when every
            task has one, else one group, `DEFAULT_GROUP`.
        splits: the split files every task must have (the runs' train and eval splits).
        log: told when mini-VTAB tasks are materialised.

    Raises:
        HeartLoRAError: no task folders, an unknown task name (with the closest folder), a task
            folder without one of ``splits``, or a groups file that is malformed, names a task
            the root lacks, or leaves a task in no group; all before anything is trained.
    """
    root = Path(data_root).expanduser()
    folders = _task_folders(root)
    if names is None:
        names = folders or []
        if not names:
            raise HeartLoRAError(
                f"{root}: no task folders (expected <task>/train800val200.txt and <task>/test.txt "
                "with lines 'relative/path.png <label>'); name mini-VTAB tasks with --tasks to "
                "build them there (`heartlora suite --list`)"
            )
    mini = [n for n in names if n in MINI_VTAB_TASKS and (n not in folders or _is_mini(root, n))]
    unknown = [n for n in names if n not in folders and n not in mini]
    if unknown:
        close = difflib.get_close_matches(unknown[0], [*folders, *MINI_VTAB_TASKS], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise HeartLoRAError(
            f"task {unknown[0]!r}: no folder {root / unknown[0]} and no mini-VTAB task of that "
            f"name{hint}"
        )
    for name in names:
        for split in splits:
            path = root / name / f"{split}.txt"
            if name not in mini and not path.is_file():
                raise HeartLoRAError(
                    f"{path}: split file not found (a VTAB-layout task folder holds "
                    f"{split}.txt with lines 'relative/path.png <label>')"
                )
    group_of = _task_groups(root, list(names), groups)
    if mini:
        if log is not None:
            log(f"materialising mini-VTAB tasks {', '.join(mini)} in {root} …")
        mini_vtab_tasks(mini, root)
    return [SuiteTask(n, group_of[n], {"task": n, "data_root": str(root)}) for n in names]


def _task_folders(root: Path) -> list[str]:
    """The names of ``root``'s task folders, sorted; empty when the root does not exist."""
    if not root.is_dir():
        return []
    return sorted(
        folder.name
        for folder in root.iterdir()
        if folder.is_dir()
        and not folder.name.startswith(".")
        and any((folder / f"{split}.txt").is_file() for split in VTAB_SPLITS)
    )


def _is_mini(root: Path, name: str) -> bool:
    """True when ``root/name`` is a mini-VTAB folder this package materialised."""
    try:
        manifest = json.loads((root / name / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("task") == name


def _task_groups(
    root: Path, names: list[str], groups: str | Path | Mapping[str, str] | None
) -> dict[str, str]:
    """``task → group`` for ``names`` (see `discover_tasks`)."""
    if groups is None and (root / GROUPS_FILE).is_file():
        groups = root / GROUPS_FILE
    source = "the groups given"
    if isinstance(groups, (str, Path)):
        source = str(groups)
        groups = read_groups_file(groups, known=_task_folders(root) + list(MINI_VTAB_TASKS))
    if groups is not None:
        missing = [n for n in names if n not in groups]
        if missing:
            present = ", ".join(dict.fromkeys(groups.values()))
            raise HeartLoRAError(
                f"{source}: task {missing[0]!r} is in no group (expected it under one of: "
                f"{present})"
            )
        return {n: group_name(groups[n]) for n in names}
    from heartlora.data.vtab1k import VTAB1K_TASKS

    known = {
        n: MINI_VTAB_TASKS[n].group if n in MINI_VTAB_TASKS else VTAB1K_TASKS.get(n) for n in names
    }
    if all(known.values()):
        return {n: group_name(group) for n, group in known.items()}
    return dict.fromkeys(names, DEFAULT_GROUP)


def read_groups_file(path: str | Path, known: Sequence[str] | None = None) -> dict[str, str]:
    """``task → group`` from a YAML file of ``group: [task, ...]`` (a data root's groups.yaml).

    Raises:
        HeartLoRAError: a missing or malformed file, a task in two groups, or (when ``known``
            names the possible tasks) a task that is not among them.
    """
    path = Path(path)
    data = read_yaml_mapping(path, "groups file", "a mapping of group: [task, ...]")
    group_of: dict[str, str] = {}
    for group, tasks in data.items():
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise HeartLoRAError(f"{path}: group {group!r} must list task names, got {tasks!r}")
        for task in tasks:
            if task in group_of:
                raise HeartLoRAError(
                    f"{path}: task {task!r} is in two groups ({group_of[task]!r}, {group!r})"
                )
            if known is not None and task not in known:
                close = difflib.get_close_matches(task, list(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise HeartLoRAError(f"{path}: task {task!r} has no folder here{hint}")
            group_of[task] = str(group)
    return group_of


def _run_config(
    base: dict[str, Any],
    task: SuiteTask,
    method: str,
    seed: int,
    method_defaults: dict[str, dict[str, Any]],
) -> TrainConfig:
    name, overrides = parse_method(method)
    data = {
        **base,
        **method_defaults.get(name, {}),
        **task.settings,
        **overrides,
        "method": name,
        "seed": seed,
    }
    # the bracket keys were checked against the method by parse_method; the suite's shared
    # settings reach every method, whether or not it reads them
    items = [f"{k}={json.dumps(v)}" for k, v in data.items()]
    return build_config(None, items, check_method_keys_given=False)


def run_suite(
    tasks: list[SuiteTask],
    methods: list[str],
    seeds: list[int],
    output_dir: Path,
    base: dict[str, Any],
    log: Callable[[str], None] = print,
    method_defaults: dict[str, dict[str, Any]] | None = None,
    executor: Executor | None = None,
) -> list[RunResult] | None:
    """Run (or reuse) every method × task × seed and write the result files.

    A run's settings: ``base`` < ``method_defaults[method]`` < the task's < the method's brackets.
    Finished runs are reused here; the others go to ``executor`` (default: one after another in
    this process; `LocalExecutor` with ``jobs`` > 1 trains that many at once, each in its own
    process — give each run ``threads`` = cores / jobs —, `SlurmExecutor` on a cluster).
    Results do not depend on where the runs trained.

    Returns:
        The results in plan order (task, method, seed), or None when the executor returned
        before every run finished (SLURM's ``--no-wait``); the result files are then not written.
    """
    plan = [
        (task, method, seed, _run_config(base, task, method, seed, method_defaults or {}))
        for task in tasks
        for method in methods
        for seed in seeds
    ]
    random = sorted({c.model for *_, c in plan if c.base_weights() == RANDOM_WEIGHTS})
    if random:
        log(
            f"warning: {', '.join(random)} start from random weights (no `checkpoint`, "
            "`pretrained` off): set --set pretrained=true or checkpoint=FILE for pretrained ones"
        )
    finished: dict[int, RunResult] = {}
    started = time.perf_counter()

    def record(index: int, result: dict[str, Any], status: str) -> None:
        task, method, seed, _ = plan[index]
        finished[index] = RunResult(
            method,
            task.name,
            task.group,
            seed,
            result["final_accuracy"],
            result["trainable_parameters"],
            result["adapter_bytes"],
            result["wall_seconds"],
            result.get("best_accuracy"),
            result.get("evaluations", 1),
            result.get("num_classes", 0),
            result.get("eval_images", 0),
        )
        elapsed = time.perf_counter() - started
        remaining = elapsed / len(finished) * (len(plan) - len(finished))
        log(
            f"[{len(finished)}/{len(plan)}] {task.name:<18} {method:<22} seed {seed}  "
            f"acc {result['final_accuracy']:5.1f}%  ({status}; ~{remaining / 60:.1f} min left)"
        )

    runs = [
        PlannedRun(
            f"{task.name} {method} seed {seed}",
            config.to_dict(),
            output_dir / "runs" / task.name / method / f"seed{seed}",
        )
        for task, method, seed, config in plan
    ]
    to_train = []
    for index, (run, (*_, config)) in enumerate(zip(runs, plan)):
        result = finished_result(run.run_dir, config)
        if result is None:
            to_train.append(index)
        else:
            record(index, result, "reused")
    executor = executor or LocalExecutor(log=log)
    if not executor.run(
        [runs[index] for index in to_train],
        lambda position, result, status: record(to_train[position], result, status),
    ):
        return None
    results = [finished[index] for index in range(len(plan))]
    splits = {config.eval_split for *_, config in plan}
    write_reports(results, output_dir, splits.pop() if len(splits) == 1 else "evaluation", base)
    return results


def write_reports(
    results: list[RunResult],
    output_dir: Path,
    split: str = "test",
    base: dict[str, Any] | None = None,
) -> None:
    """results.csv, results.md (the table, then what the runs say: `runs_say`) and the
    accuracy-vs-storage plot. ``base``: the runs' shared settings (the default scorer)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    atomic_write_text(output_dir / "results.csv", results_csv(results))
    seeds = sorted({r.seed for r in results})
    text = (
        f"# Results\n\nTop-1 {split} accuracy (%) after the last epoch"
        + (f", mean ± std over seeds {seeds}" if len(seeds) > 1 else f", seed {seeds[0]}")
        + ". Params: trainable parameters (classifier included); Stored: bytes the method "
        "saves per task.\n\n" + markdown_table(summary) + runs_say(results, base or {})
    )
    atomic_write_text(output_dir / "results.md", text)
    plot_accuracy_vs_storage(summary, output_dir / "accuracy_vs_storage.png")
    if any(r.evaluations > 1 and r.best_accuracy is not None for r in results):
        best = [replace(r, accuracy=r.best_accuracy) for r in results]
        atomic_write_text(
            output_dir / BEST_OF_EVALUATIONS,
            "# Results: best of the evaluations during training (chosen on the evaluation "
            "split)\n\nTop-1 accuracy (%) of the best of each run's evaluations every "
            "`eval_every` epochs. When the runs evaluate on test this number is **chosen on "
            "test** — how the PETL-ViT code (Bi-LoRA, Lily; configs/vtab1k_petl) reports VTAB-1k "
            "— and is not a held-out estimate; results.md holds the final-epoch accuracy.\n\n"
            + markdown_table(summarize(best)),
        )


def runs_say(results: list[RunResult], base: dict[str, Any]) -> str:
    """The suite's own verdict, as Markdown ("" when it has nothing to compare): each
    head-selecting method against the nearest-bytes member of every other method's line and
    against its controls, paired over (task, seed) (`heartlora.training.comparisons`), one
    sentence each; then the runs that stayed at chance."""
    comparisons = compare_methods(results, base)
    text = ""
    if comparisons:
        pairs = max(c.result.pairs for c in comparisons)
        text += (
            "\n## What these runs say\n\nPaired differences (points) over the "
            f"{pairs} (task, seed) pairs the two methods share, with percentile-bootstrap 95 % "
            "intervals; *level* means the interval includes zero.\n\n"
            + verdict_markdown(comparisons)
        )
    chance = [r for r in results if r.at_chance]
    if chance:
        text += (
            f"\n{len(chance)} of {len(results)} runs stayed at chance: "
            + ", ".join(
                f"{r.method} on {r.task} seed {r.seed} ({r.accuracy:.1f} %)" for r in chance
            )
            + ".\n"
        )
    return text


def plot_accuracy_vs_storage(summary, path: Path) -> Path:
    """Average accuracy against stored bytes per task, one point per method."""
    figure, axis = new_figure((6.4, 4.2))
    for method in summary.methods:
        x = summary.adapter_bytes[method] / 1024
        y = sum(summary.average[method]) / len(summary.average[method])
        axis.scatter([x], [y], s=40, label=f"{method} ({y:.1f}%)", alpha=0.8)
    axis.set_xscale("log")
    axis.set_xlabel("stored per task (KB, log scale)")
    axis.set_ylabel("average accuracy (%)")
    axis.set_title("Accuracy vs stored parameters")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    return save_png(figure, path)


def suite_protocol(name: str) -> SuiteProtocol:
    """The `SuiteProtocol` of a ``--base`` value.

    Raises:
        HeartLoRAError: an unknown name.
    """
    if name not in PROTOCOLS:
        raise HeartLoRAError(f"unknown base {name!r}: expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def suite_base_config(
    config_file: str | None, overrides: list[str], protocol: str = DEFAULT_PROTOCOL
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The ``protocol``'s defaults (`heartlora.training.protocols`) updated by a config file and
    ``--set key=value`` items, and the protocol's per-method defaults that the user did not
    override."""
    chosen = suite_protocol(protocol)
    base = dict(chosen.defaults)
    given = read_config_file(config_file) if config_file else {}
    for item in overrides:
        key, value = parse_override(item)
        if key in NOT_PER_SUITE:
            raise HeartLoRAError(f"--set {key}: {NOT_PER_SUITE[key]}, not --set")
        given[key] = value
    base.update(given)
    build_config(None, [f"{k}={json.dumps(v)}" for k, v in base.items()])  # validate early
    method_defaults = {
        method: {k: v for k, v in values.items() if k not in given}
        for method, values in chosen.method_defaults.items()
    }
    return base, method_defaults
