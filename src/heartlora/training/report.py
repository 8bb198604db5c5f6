"""The paper-style results table: methods × tasks, group means and their average.

VTAB convention: a group's score is the mean of its tasks; the average is the mean of the
group means. VTAB's groups (Natural, Specialized, Structured, in any letter case) come first, in
that order, then any other group names in the order their first run appears. With several
seeds a cell shows mean ± standard deviation.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from heartlora.training.stats import at_chance, mean_std

GROUP_ORDER = ("Natural", "Specialized", "Structured")


def group_name(group: str) -> str:
    """A VTAB group in its table spelling (``natural`` → ``Natural``); other names unchanged."""
    return next((g for g in GROUP_ORDER if g.lower() == group.lower()), group)


def ordered_groups(groups: Iterable[str]) -> list[str]:
    """The distinct groups, VTAB's three first in their order, then others as they come."""
    distinct = list(dict.fromkeys(group_name(g) for g in groups))
    return [g for g in GROUP_ORDER if g in distinct] + [g for g in distinct if g not in GROUP_ORDER]


@dataclass(frozen=True)
class RunResult:
    """One finished run: a method on a task with a seed.

    ``accuracy`` is the held-out number: after the last epoch. ``best_accuracy`` is the best of
    the run's ``evaluations`` during training; on a test split it is chosen on test (as the
    PETL-ViT code reports it) and is shown only under that label. ``num_classes`` and
    ``eval_images`` (0: not known) say whether the run stayed at chance (`at_chance`).
    """

    method: str
    task: str
    group: str
    seed: int
    accuracy: float
    trainable_parameters: int
    adapter_bytes: int
    wall_seconds: float = 0.0
    best_accuracy: float | None = None
    evaluations: int = 1
    num_classes: int = 0
    eval_images: int = 0

    @property
    def at_chance(self) -> bool:
        """The run's accuracy is no better than guessing (False when that is not known)."""
        return bool(self.num_classes > 1 and self.eval_images > 0) and at_chance(
            self.accuracy, self.num_classes, self.eval_images
        )


def _cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {std:.1f}"


@dataclass
class Summary:
    """Per method: accuracy per task (over seeds), group means, average and storage."""

    methods: list[str]
    tasks: list[str]
    groups: dict[str, str]
    accuracy: dict[tuple[str, str], list[float]]
    group_means: dict[tuple[str, str], list[float]]
    average: dict[str, list[float]]
    trainable_parameters: dict[str, float]
    adapter_bytes: dict[str, float]


def summarize(results: Iterable[RunResult]) -> Summary:
    """Aggregate runs; group and average scores are computed per seed, then over seeds."""
    results = list(results)
    methods = list(dict.fromkeys(r.method for r in results))
    tasks = list(dict.fromkeys(r.task for r in results))
    groups = {r.task: group_name(r.group) for r in results}
    order = ordered_groups(groups.values())
    tasks.sort(key=lambda t: order.index(groups[t]))
    accuracy: dict[tuple[str, str], list[float]] = defaultdict(list)
    by_seed: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    params: dict[str, list[int]] = defaultdict(list)
    sizes: dict[str, list[int]] = defaultdict(list)
    for r in results:
        accuracy[(r.method, r.task)].append(r.accuracy)
        by_seed[(r.method, r.seed)][r.task] = r.accuracy
        params[r.method].append(r.trainable_parameters)
        sizes[r.method].append(r.adapter_bytes)
    group_means: dict[tuple[str, str], list[float]] = defaultdict(list)
    average: dict[str, list[float]] = defaultdict(list)
    for (method, _seed), scores in by_seed.items():
        means = []
        for group in order:
            values = [v for t, v in scores.items() if groups[t] == group]
            if values:
                group_means[(method, group)].append(statistics.fmean(values))
                means.append(statistics.fmean(values))
        average[method].append(statistics.fmean(means))
    return Summary(
        methods,
        tasks,
        groups,
        dict(accuracy),
        dict(group_means),
        dict(average),
        {m: statistics.fmean(v) for m, v in params.items()},
        {m: statistics.fmean(v) for m, v in sizes.items()},
    )


def markdown_table(summary: Summary) -> str:
    """The paper's table as Markdown: one row per method."""
    present = ordered_groups(summary.groups[t] for t in summary.tasks)
    header = ["Method", "Params (M)", "Stored (KB)", *summary.tasks, *present, "Average"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in summary.methods:
        cells = [
            method,
            f"{summary.trainable_parameters[method] / 1e6:.3f}",
            f"{summary.adapter_bytes[method] / 1024:.1f}",
            *[
                _cell(summary.accuracy[(method, t)]) if (method, t) in summary.accuracy else "–"
                for t in summary.tasks
            ],
            *[
                _cell(summary.group_means[(method, g)])
                if (method, g) in summary.group_means
                else "–"
                for g in present
            ],
            _cell(summary.average[method]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_csv(results: Iterable[RunResult]) -> str:
    """One row per run, for results.csv."""
    buffer = io.StringIO()
    fields = list(RunResult.__dataclass_fields__)
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for r in results:
        writer.writerow({f: getattr(r, f) for f in fields})
    return buffer.getvalue()
