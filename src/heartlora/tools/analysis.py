"""Seeing the heads: responsiveness heatmaps, head-redundancy grids and cross-task overlap.

Three views, each a PNG plus the numbers behind it as JSON (and markdown for tables):

* `plot_responsiveness`: a (layers × heads) heatmap of the responsiveness scores, deactivated
  heads hatched with an X, padded cells (Swin layers with fewer heads) blank.
* `plot_redundancy`: per layer, the (H × H) cosine similarity of its heads' attention maps
  (`heartlora.attention_maps.layer_head_similarity`), one small matrix per layer.
* `compare_tasks` / `plot_task_heads`: which (layer, head) pairs each task keeps, and the pairwise
  Jaccard overlap |K_a ∩ K_b| / |K_a ∪ K_b| of the kept sets.

Figures are drawn on `matplotlib.figure.Figure` objects (Agg rendering, no pyplot, no global
backend switch) at `DPI` dots per inch with the sizes the ``*_figsize`` functions return, so a
PNG's pixel size is ``figsize × DPI``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from heartlora.adapter_io import read_adapter_metadata
from heartlora.errors import HeartLoRAError
from heartlora.inject import find_attention_layers
from heartlora.io.atomic import atomic_write, atomic_write_json, atomic_write_text

DPI = 100
RESPONSIVENESS_PNG = "responsiveness.png"
REDUNDANCY_PNG = "redundancy.png"
HEADS_JSON = "heads.json"
TASK_HEADS_PNG = "task_heads.png"
OVERLAP_JSON = "overlap.json"
OVERLAP_MD = "overlap.md"


@dataclass
class HeadReport:
    """Everything the head plots show for one model or adapter.

    Attributes:
        task: a display name.
        layers: attention layer module paths, in forward order.
        num_heads: heads per layer.
        head_masks: per layer, True where the head's adapter is kept.
        scores: (layers × max heads) responsiveness, ``None`` where padded or not scored; or
            ``None`` altogether when no scores exist.
        scorer: the scorer that produced ``scores``.
        similarity: per layer, the (H_l × H_l) cosine similarity of heads' attention maps, or
            ``None`` when no images were available.
    """

    task: str
    layers: list[str]
    num_heads: list[int]
    head_masks: list[list[bool]]
    scores: list[list[float | None]] | None = None
    scorer: str | None = None
    similarity: list[list[list[float]]] | None = None

    @property
    def deactivated(self) -> list[tuple[int, int]]:
        """``(layer, head)`` pairs whose adapters were removed."""
        return [
            (layer, h)
            for layer, mask in enumerate(self.head_masks)
            for h, k in enumerate(mask)
            if not k
        ]

    @property
    def redundancy(self) -> list[list[float]] | None:
        """Per layer and head, 1 − the largest similarity to another head (low = redundant)."""
        if self.similarity is None:
            return None
        rows = []
        for matrix in self.similarity:
            heads = len(matrix)
            rows.append(
                [
                    1.0 - max((matrix[h][o] for o in range(heads) if o != h), default=0.0)
                    for h in range(heads)
                ]
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        """The JSON written as ``heads.json``."""
        return {
            "task": self.task,
            "layers": self.layers,
            "num_heads": self.num_heads,
            "scorer": self.scorer,
            "scores": self.scores,
            "head_masks": self.head_masks,
            "deactivated": [list(pair) for pair in self.deactivated],
            "similarity": self.similarity,
            "redundancy": self.redundancy,
        }


def _score_rows(scores: torch.Tensor | Sequence | None) -> list[list[float | None]] | None:
    if scores is None:
        return None
    values = torch.as_tensor(
        [[math.nan if v is None else v for v in row] for row in scores]
        if not isinstance(scores, torch.Tensor)
        else scores,
        dtype=torch.float64,
    )
    return [[None if math.isnan(v) else float(v) for v in row] for row in values.tolist()]


def adapter_head_report(adapter_dir: str | Path, task: str | None = None) -> HeadReport:
    """The stored scores and masks of an adapter directory (no model needed).

    ``task`` defaults to the task the adapter was trained on, else the directory name.
    """
    metadata = read_adapter_metadata(adapter_dir)
    return HeadReport(
        task=task or metadata.run.task or Path(adapter_dir).resolve().name,
        layers=list(metadata.layers),
        num_heads=list(metadata.num_heads),
        head_masks=[list(mask) for mask in metadata.head_masks],
        scores=_score_rows(metadata.scores),
        scorer=metadata.config.scorer,
    )


def model_head_report(
    model: nn.Module,
    task: str,
    scores: torch.Tensor | None = None,
    scorer: str | None = None,
    batches: Iterable | None = None,
    head_masks: Sequence[Sequence[bool]] | None = None,
) -> HeadReport:
    """A report for a live model: its masks (all kept without adapters), ``scores``, and, when
    ``batches`` of images are given, the heads' attention-map similarity on them.

    Raises:
        HeartLoRAError: the attention maps are NaN or infinite (weights that overflow).
    """
    from heartlora.attention_maps import layer_head_similarity

    layers = find_attention_layers(model)
    if head_masks is None:
        head_masks = [
            (layer.adapters[0].head_mask.tolist() if layer.adapters else [True] * layer.num_heads)
            for layer in layers
        ]
    similarity = None
    if batches is not None:
        matrices = layer_head_similarity(model, batches)
        if not all(bool(torch.isfinite(m).all()) for m in matrices):
            raise HeartLoRAError(
                f"{task}: the heads' attention maps are NaN or infinite on these images (the "
                "weights overflow in the forward pass; expected finite attention)"
            )
        similarity = [m.tolist() for m in matrices]
    return HeadReport(
        task=task,
        layers=[layer.name for layer in layers],
        num_heads=[layer.num_heads for layer in layers],
        head_masks=[[bool(k) for k in mask] for mask in head_masks],
        scores=_score_rows(scores),
        scorer=scorer,
        similarity=similarity,
    )


def _figure(size: tuple[float, float]):
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=DPI)


def _save(figure, path: Path) -> Path:
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))


def responsiveness_figsize(num_layers: int, max_heads: int) -> tuple[float, float]:
    """Inches (width, height) of the responsiveness heatmap."""
    return (max(4.0, 0.55 * max_heads + 2.2), max(3.0, 0.4 * num_layers + 1.4))


def plot_responsiveness(report: HeadReport, path: str | Path) -> Path:
    """Heatmap of responsiveness, layers down, heads across; deactivated heads hatched with X.

    Without scores the cells are blank and only the deactivation pattern shows.
    """
    from matplotlib.patches import Rectangle

    width = max(report.num_heads)
    grid = torch.full((len(report.layers), width), math.nan)
    if report.scores is not None:
        for layer, row in enumerate(report.scores):
            for h, value in enumerate(row[:width]):
                if value is not None:
                    grid[layer, h] = value
    figure = _figure(responsiveness_figsize(len(report.layers), width))
    axes = figure.add_subplot()
    image = axes.imshow(grid.numpy(), cmap="viridis", aspect="auto", interpolation="nearest")
    if report.scores is not None:
        figure.colorbar(image, ax=axes, label=f"responsiveness ({report.scorer or 'score'})")
    for layer, count in enumerate(report.num_heads):
        for h in range(count, width):  # padded cells: no such head
            axes.add_patch(Rectangle((h - 0.5, layer - 0.5), 1, 1, color="white"))
    for layer, h in report.deactivated:
        axes.add_patch(
            Rectangle((h - 0.5, layer - 0.5), 1, 1, fill=False, hatch="xx", edgecolor="red", lw=0)
        )
        axes.plot([h - 0.4, h + 0.4], [layer - 0.4, layer + 0.4], color="red", lw=1.2)
        axes.plot([h - 0.4, h + 0.4], [layer + 0.4, layer - 0.4], color="red", lw=1.2)
    axes.set_xticks(range(width))
    axes.set_yticks(range(len(report.layers)))
    axes.set_xlabel("head")
    axes.set_ylabel("layer")
    marked = " (red X = deactivated)" if report.deactivated else ""
    axes.set_title(f"{report.task}: head responsiveness{marked}", fontsize=9)
    figure.subplots_adjust(left=0.14, right=0.92, top=0.88, bottom=0.16)
    return _save(figure, Path(path))


def _grid_shape(count: int) -> tuple[int, int]:
    columns = min(count, 6)
    return math.ceil(count / columns), columns


def redundancy_figsize(num_layers: int) -> tuple[float, float]:
    """Inches (width, height) of the redundancy grid: up to 6 matrices per row."""
    rows, columns = _grid_shape(num_layers)
    return (1.9 * columns + 1.0, 1.9 * rows + 0.6)


def plot_redundancy(report: HeadReport, path: str | Path) -> Path:
    """One (H × H) head-similarity matrix per layer (cosine of attention maps, 0 to 1).

    Raises:
        HeartLoRAError: if the report has no similarity (no images were given).
    """
    if report.similarity is None:
        raise HeartLoRAError(
            f"{report.task}: no attention-map similarity to plot (expected images)"
        )
    rows, columns = _grid_shape(len(report.similarity))
    figure = _figure(redundancy_figsize(len(report.similarity)))
    image = None
    for index, matrix in enumerate(report.similarity):
        axes = figure.add_subplot(rows, columns, index + 1)
        image = axes.imshow(matrix, cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
        axes.set_title(f"layer {index}", fontsize=8)
        axes.set_xticks([])
        axes.set_yticks([])
    figure.suptitle(f"{report.task}: head similarity of attention maps", fontsize=10)
    figure.subplots_adjust(left=0.03, right=0.8, top=0.85, bottom=0.04, wspace=0.25, hspace=0.35)
    colorbar_axes = figure.add_axes((0.83, 0.1, 0.025, 0.7))
    figure.colorbar(image, cax=colorbar_axes, label="cosine similarity")
    return _save(figure, Path(path))


def write_head_report(report: HeadReport, output_dir: str | Path) -> dict[str, Path]:
    """Write ``responsiveness.png``, ``redundancy.png`` (when there is similarity) and
    ``heads.json`` to ``output_dir``; returns the written paths by name."""
    output_dir = Path(output_dir)
    written = {"responsiveness": plot_responsiveness(report, output_dir / RESPONSIVENESS_PNG)}
    if report.similarity is not None:
        written["redundancy"] = plot_redundancy(report, output_dir / REDUNDANCY_PNG)
    written["json"] = atomic_write_json(output_dir / HEADS_JSON, report.to_dict())
    return written


def kept_heads(head_masks: Sequence[Sequence[bool]]) -> set[tuple[int, int]]:
    """The ``(layer, head)`` pairs a set of masks keeps."""
    return {
        (layer, h) for layer, mask in enumerate(head_masks) for h, keep in enumerate(mask) if keep
    }


def jaccard(first: set, second: set) -> float:
    """|A ∩ B| / |A ∪ B|, and 1.0 for two empty sets."""
    union = first | second
    return len(first & second) / len(union) if union else 1.0


@dataclass
class TaskComparison:
    """Kept heads of several tasks on one architecture, and their pairwise Jaccard overlap."""

    tasks: list[str]
    num_heads: list[int]
    head_masks: list[list[list[bool]]]
    jaccard: list[list[float]]

    def to_dict(self) -> dict[str, Any]:
        """The JSON written as ``overlap.json``."""
        return {
            "tasks": self.tasks,
            "num_heads": self.num_heads,
            "kept_heads": {t: len(kept_heads(m)) for t, m in zip(self.tasks, self.head_masks)},
            "total_heads": sum(self.num_heads),
            "head_masks": dict(zip(self.tasks, self.head_masks)),
            "jaccard": self.jaccard,
        }

    def to_markdown(self) -> str:
        """The Jaccard matrix as a markdown table, with each task's kept-head count."""
        header = "| task | kept | " + " | ".join(self.tasks) + " |"
        lines = [header, "|" + "---|" * (len(self.tasks) + 2)]
        total = sum(self.num_heads)
        for task, masks, row in zip(self.tasks, self.head_masks, self.jaccard):
            cells = " | ".join(f"{value:.2f}" for value in row)
            lines.append(f"| {task} | {len(kept_heads(masks))}/{total} | {cells} |")
        return "\n".join(lines) + "\n"


def compare_tasks(
    adapter_dirs: Sequence[str | Path], names: Sequence[str] | None = None
) -> TaskComparison:
    """Compare the kept heads of adapters trained on different tasks.

    Names default to each adapter's task, else its directory name (made unique).

    Raises:
        HeartLoRAError: on fewer than one adapter or adapters with different heads per layer.
    """
    if not adapter_dirs:
        raise HeartLoRAError("compare_tasks needs at least one adapter directory")
    reports = [adapter_head_report(d) for d in adapter_dirs]
    tasks = list(names) if names is not None else _unique([r.task for r in reports])
    for directory, report in zip(adapter_dirs, reports):
        if report.num_heads != reports[0].num_heads:
            raise HeartLoRAError(
                f"{directory}: heads per layer {report.num_heads} differ from "
                f"{adapter_dirs[0]}'s {reports[0].num_heads} (expected one architecture)"
            )
    sets = [kept_heads(r.head_masks) for r in reports]
    return TaskComparison(
        tasks=tasks,
        num_heads=reports[0].num_heads,
        head_masks=[r.head_masks for r in reports],
        jaccard=[[jaccard(a, b) for b in sets] for a in sets],
    )


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        result.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return result


def task_heads_figsize(num_tasks: int, total_heads: int) -> tuple[float, float]:
    """Inches (width, height) of the tasks × (layer, head) grid."""
    return (max(5.0, 0.16 * total_heads + 2.5), max(2.0, 0.35 * num_tasks + 1.4))


def plot_task_heads(comparison: TaskComparison, path: str | Path) -> Path:
    """A tasks × (layer, head) grid: filled where the task keeps the head; layers separated."""
    from matplotlib.colors import ListedColormap

    total = sum(comparison.num_heads)
    grid = torch.tensor(
        [[float(k) for mask in masks for k in mask] for masks in comparison.head_masks]
    )
    figure = _figure(task_heads_figsize(len(comparison.tasks), total))
    axes = figure.add_subplot()
    axes.imshow(
        grid.numpy(),
        cmap=ListedColormap(["#e0e0e0", "#2b8cbe"]),
        vmin=0,
        vmax=1,
        aspect="auto",
        interpolation="nearest",
    )
    starts = [sum(comparison.num_heads[:layer]) for layer in range(len(comparison.num_heads))]
    for start in starts[1:]:
        axes.axvline(start - 0.5, color="black", lw=0.8)
    axes.set_xticks([s + (h - 1) / 2 for s, h in zip(starts, comparison.num_heads)])
    axes.set_xticklabels([f"L{layer}" for layer in range(len(starts))], fontsize=7)
    axes.set_yticks(range(len(comparison.tasks)))
    axes.set_yticklabels(comparison.tasks, fontsize=8)
    axes.set_xlabel("layer (heads within each block)")
    axes.set_title("kept heads per task (blue = kept)", fontsize=10)
    figure.subplots_adjust(left=0.2, right=0.97, top=0.85, bottom=0.25)
    return _save(figure, Path(path))


def write_task_comparison(comparison: TaskComparison, output_dir: str | Path) -> dict[str, Path]:
    """Write ``task_heads.png``, ``overlap.json`` and ``overlap.md`` to ``output_dir``."""
    output_dir = Path(output_dir)
    return {
        "plot": plot_task_heads(comparison, output_dir / TASK_HEADS_PNG),
        "json": atomic_write_json(output_dir / OVERLAP_JSON, comparison.to_dict()),
        "markdown": atomic_write_text(output_dir / OVERLAP_MD, comparison.to_markdown()),
    }
