"""Paired comparisons of methods run on the same tasks and seeds, and the plain-words verdict.

Methods come as the suite's method specs (`heartlora.training.method_specs`). A *candidate* is a
head-selecting method (`heart-lora`, `heart-lora-layer`) whose scorer is not a control; a
*baseline* is any method that does not select heads (LoRA, peft's methods, BitFit, ...), and
the members of a baseline *line* differ only in their size knob. Each candidate is compared with
(a) in each baseline line the member whose mean stored bytes are nearest (ties: the smaller),
and (b) its controls: the same method and overrides with ``scorer`` set to ``random`` or
``inverse``. A comparison is the candidate's accuracy minus the other's per (task, seed) pair,
with the mean and a bootstrap 95 % interval over the pairs (`heartlora.training.stats`).

`heartlora frontier` writes these comparisons; `heartlora suite` writes them with `verdict`,
one sentence per comparison, under its table.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from heartlora.config import INVERSE_OF, resolve_inverse
from heartlora.training.method_specs import format_method, parse_method
from heartlora.training.methods import get_method
from heartlora.training.report import RunResult
from heartlora.training.stats import PairedComparison, mean_std, paired_comparison, pareto_front

CANDIDATES: tuple[str, ...] = ("heart-lora", "heart-lora-layer")
"""Methods that select heads."""

CONTROL_SCORERS: tuple[str, ...] = ("random", "inverse")


@dataclass(frozen=True)
class GridMethod:
    """What a grid entry is: its method name, overrides, scorer and baseline line."""

    spec: str
    name: str
    overrides: dict[str, Any]
    scorer: str

    @classmethod
    def parse(cls, spec: str, base: dict[str, Any]) -> GridMethod:
        name, overrides = parse_method(spec)
        return cls(spec, name, overrides, str(overrides.get("scorer", base.get("scorer"))))

    @property
    def is_baseline(self) -> bool:
        """A method that does not select heads (LoRA, the peft field, BitFit, ...): a
        byte-matched partner."""
        return not get_method(self.name).selects_heads

    @property
    def control_kind(self) -> str | None:
        """``random`` or ``inverse`` when this method is a control (``scorer: inverse`` or
        ``invert_scores: true``), else ``None``."""
        if self.scorer == "random":
            return self.scorer
        inverted = resolve_inverse(self.scorer, False)[1] or self.overrides.get("invert_scores")
        return "inverse" if inverted is True else None

    @property
    def is_candidate(self) -> bool:
        """A head-selecting method that is not a control."""
        return self.name in CANDIDATES and self.control_kind is None

    @property
    def line(self) -> str:
        """The method without its size knob (`rank`, `n_frequency`, `block_size`): members of
        one line differ only in budget."""
        knob = get_method(self.name).size_knob
        return format_method(self.name, {k: v for k, v in self.overrides.items() if k != knob})

    def control(self, kind: str) -> str:
        """This candidate's ``random`` or ``inverse`` control: the same method and overrides
        with the heads chosen at random, or by its own scores negated (``taylor``'s inverse is
        spelled ``scorer=inverse``, any other scorer's ``invert_scores=true``)."""
        if kind == "inverse" and self.scorer != INVERSE_OF:
            return format_method(self.name, {**self.overrides, "invert_scores": True})
        return format_method(self.name, {**self.overrides, "scorer": kind})


@dataclass(frozen=True)
class MethodSummary:
    """One method over tasks and seeds.

    Attributes:
        accuracy, accuracy_std: mean and std over seeds of the per-seed mean over tasks (%).
        per_seed: that per-seed mean over tasks, by seed.
        stored_bytes, stored_std: mean and std over runs of the stored bytes.
        pareto: no other method stores fewer bytes with at least its accuracy (or more).
    """

    method: str
    accuracy: float
    accuracy_std: float
    per_seed: dict[int, float]
    stored_bytes: float
    stored_std: float
    trainable_parameters: float
    pareto: bool


@dataclass(frozen=True)
class Comparison:
    """``candidate`` against ``baseline`` (``relation``: ``nearest bytes`` or ``control``)."""

    candidate: str
    baseline: str
    relation: str
    bytes_ratio: float
    result: PairedComparison


def summarize_methods(results: list[RunResult]) -> list[MethodSummary]:
    """Per method: task-mean accuracy per seed (mean ± std over seeds), stored bytes (mean ±
    std over runs; the classifier's size differs by task) and whether it is on the Pareto
    frontier of (mean stored bytes, mean accuracy)."""
    by_method: dict[str, list[RunResult]] = defaultdict(list)
    for r in results:
        by_method[r.method].append(r)
    rows = []
    for method, runs in by_method.items():
        per_seed: dict[int, list[float]] = defaultdict(list)
        for r in runs:
            per_seed[r.seed].append(r.accuracy)
        seed_means = {seed: statistics.fmean(values) for seed, values in sorted(per_seed.items())}
        accuracy, accuracy_std = mean_std(list(seed_means.values()))
        stored, stored_std = mean_std([float(r.adapter_bytes) for r in runs])
        rows.append(
            MethodSummary(
                method,
                accuracy,
                accuracy_std,
                seed_means,
                stored,
                stored_std,
                statistics.fmean(r.trainable_parameters for r in runs),
                False,
            )
        )
    front = set(pareto_front([(row.stored_bytes, row.accuracy) for row in rows]))
    return [replace(row, pareto=index in front) for index, row in enumerate(rows)]


def _nearest(target: float, members: list[MethodSummary]) -> MethodSummary:
    return min(members, key=lambda m: (abs(m.stored_bytes - target), m.stored_bytes))


def compare_methods(
    results: list[RunResult], base: dict[str, Any], seed: int = 0
) -> list[Comparison]:
    """The paired comparisons of the module docstring, for every candidate in ``results``."""
    summaries = {s.method: s for s in summarize_methods(results)}
    grid = {m: GridMethod.parse(m, base) for m in summaries}
    scores: dict[str, dict[tuple[str, int], float]] = defaultdict(dict)
    for r in results:
        scores[r.method][(r.task, r.seed)] = r.accuracy
    lines: dict[str, list[MethodSummary]] = defaultdict(list)
    for method, parsed in grid.items():
        if parsed.is_baseline:
            lines[parsed.line].append(summaries[method])
    comparisons = []
    for method, parsed in grid.items():
        if not parsed.is_candidate:
            continue
        own = summaries[method]
        partners = [
            (_nearest(own.stored_bytes, members), "nearest bytes") for members in lines.values()
        ]
        for kind in CONTROL_SCORERS:
            wanted = parse_method(parsed.control(kind))
            control = next(
                (summaries[m] for m, p in grid.items() if (p.name, p.overrides) == wanted),
                None,
            )
            if control is not None:
                partners.append((control, "control"))
        for partner, relation in partners:
            comparisons.append(
                Comparison(
                    method,
                    partner.method,
                    relation,
                    own.stored_bytes / partner.stored_bytes,
                    paired_comparison(scores[method], scores[partner.method], seed=seed),
                )
            )
    return comparisons


def _bytes_phrase(ratio: float) -> str:
    """``0.84`` → ``"at 16 % fewer bytes"``; within 1 %: ``"at the same bytes"``."""
    if abs(ratio - 1.0) < 0.01:
        return "at the same bytes"
    return f"at {abs(1.0 - ratio) * 100:.0f} % {'fewer' if ratio < 1.0 else 'more'} bytes"


def verdict(comparison: Comparison) -> str:
    """One sentence in plain words: is the candidate ahead of, behind or level with the other?

    *Ahead* or *behind* when the 95 % interval of the mean paired difference excludes zero,
    *level* otherwise (an interval that includes zero is no evidence of a difference at this
    number of pairs). A control's sentence says what the control means: heads chosen at random,
    or the heads its scores rank highest dropped instead.
    """
    r = comparison.result
    numbers = (
        f"{r.mean:+.2f} points, 95 % CI [{r.low:+.2f}, {r.high:+.2f}], {r.wins}/{r.pairs} ahead"
    )
    standing = "ahead" if r.low > 0 else "behind" if r.high < 0 else "level"
    if comparison.relation == "control":
        kind = GridMethod.parse(comparison.baseline, {}).control_kind
        other = "heads chosen at random" if kind == "random" else "dropping its top-ranked heads"
        said = {
            "level": f"{other} do as well" if kind == "random" else f"{other} does as well",
            "ahead": f"choosing heads by its scores beats {other}",
            "behind": f"{other} do better" if kind == "random" else f"{other} does better",
        }[standing]
        return f"{comparison.candidate} − {comparison.baseline}: {numbers}: {said}."
    where = _bytes_phrase(comparison.bytes_ratio)
    said = {
        "level": f"level with {comparison.baseline} {where}",
        "ahead": f"ahead of {comparison.baseline} {where}",
        "behind": f"behind {comparison.baseline} {where}",
    }[standing]
    return f"{comparison.candidate} − {comparison.baseline}: {numbers}: {said}."


def verdict_markdown(comparisons: list[Comparison]) -> str:
    """The comparisons as a Markdown table, then one `verdict` sentence each ("" when none)."""
    if not comparisons:
        return ""
    lines = [
        "| Candidate | Against | Relation | Bytes | Pairs | Mean diff | 95 % CI | Wins |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        r = c.result
        lines.append(
            f"| {c.candidate} | {c.baseline} | {c.relation} | {c.bytes_ratio:.2f}× | "
            f"{r.pairs} | {r.mean:+.2f} | [{r.low:+.2f}, {r.high:+.2f}] | {r.wins}/{r.pairs} |"
        )
    lines.append("")
    lines += [f"- {verdict(c)}" for c in comparisons]
    return "\n".join(lines) + "\n"
