"""`heartlora heads`: plot head responsiveness and redundancy of an adapter (or of a base model).

* one ``--adapter``: ``responsiveness.png``, ``redundancy.png`` (when training images are known)
  and ``heads.json`` in ``--output-dir``;
* several ``--adapter``: the same per task in ``--output-dir/<task>/``, plus ``task_heads.png``,
  ``overlap.md`` and ``overlap.json`` (Jaccard overlap of the kept-head sets);
* no adapter: ``--model``/``--checkpoint`` and a dataset; heads are scored on a fresh adapter.

Training images come from ``--data-root``/``--task`` or the adapter's ``extra["dataset"]``.
"""

from __future__ import annotations

import argparse
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch.nn.functional import cross_entropy
from torch.utils.data import DataLoader

from heartlora.adapter_io import (
    DatasetInfo,
    RunInfo,
    adapter_directory,
    load_adapter,
    read_adapter_metadata,
)
from heartlora.commands.arguments import (
    add_base_override_arguments,
    image_side,
    non_negative_int,
    output_dir,
    positive_int,
)
from heartlora.config import MODES, HeartLoRAConfig
from heartlora.data.base import DATASET_KINDS
from heartlora.data.factory import build_dataset
from heartlora.errors import HeartLoRAError
from heartlora.inject import inject
from heartlora.models.backbone import create_base_model
from heartlora.models.packaged_weights import packaged_weights
from heartlora.responsiveness import SCORER_REGISTRY, responsiveness
from heartlora.selection import select_heads
from heartlora.tools.analysis import (
    HeadReport,
    adapter_head_report,
    compare_tasks,
    model_head_report,
    write_head_report,
    write_task_comparison,
)
from heartlora.tools.serving import adapter_img_size, base_model_from_adapter

TRAIN_SPLITS = {"vtab1k": "train800val200", "fgvc": "train", "imagefolder": None}
"""The training split each dataset kind is scored on (never the test split)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of `heartlora heads`."""
    parser.add_argument(
        "--adapter",
        dest="adapters",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="adapter directory, or the run folder holding it in adapter/ (repeat to compare "
        "tasks)",
    )
    parser.add_argument(
        "--output-dir", required=True, type=output_dir, help="where plots and JSON go"
    )
    add_base_override_arguments(parser, "load")
    parser.add_argument("--data-root", type=Path, default=None, help="dataset root folder")
    parser.add_argument("--task", default=None, help="task / dataset name under --data-root")
    parser.add_argument(
        "--dataset-kind", default=None, help=f"one of {', '.join(DATASET_KINDS)} (default vtab1k)"
    )
    parser.add_argument("--split", default=None, help="training split (default per dataset kind)")
    parser.add_argument(
        "--img-size", type=image_side, default=None, help="image side (default: adapter's)"
    )
    parser.add_argument(
        "--scorer",
        default=None,
        help=f"re-score heads with one of {', '.join(SCORER_REGISTRY)} (default: the adapter's "
        "stored scores; redundancy for a base model)",
    )
    parser.add_argument(
        "--batches", type=positive_int, default=1, help="training batches to look at"
    )
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per batch")
    parser.add_argument(
        "--rank", type=positive_int, default=8, help="rank of the fresh adapter (no --adapter)"
    )
    parser.add_argument(
        "--ne", type=non_negative_int, default=0, help="heads to mark deactivated (no --adapter)"
    )
    parser.add_argument(
        "--mode", default="layer", help=f"selection mode for --ne: {', '.join(MODES)}"
    )


def _check(args: argparse.Namespace) -> None:
    if args.scorer is not None and args.scorer not in SCORER_REGISTRY:
        raise HeartLoRAError(
            f"unknown scorer {args.scorer!r}: expected one of {', '.join(SCORER_REGISTRY)}"
        )
    if args.dataset_kind is not None and args.dataset_kind not in DATASET_KINDS:
        raise HeartLoRAError(
            f"unknown dataset kind {args.dataset_kind!r}: expected one of {', '.join(DATASET_KINDS)}"
        )
    if not args.adapters and (args.model is None or args.data_root is None):
        raise HeartLoRAError(
            "heads needs --adapter DIR, or --model NAME with --data-root and --task"
        )


def _dataset_spec(args: argparse.Namespace, run: RunInfo) -> dict[str, Any] | None:
    """kind/root/task/split/normalize of the training images, or None when none are known."""
    stored = run.dataset or DatasetInfo(kind="", root="")
    root = args.data_root or stored.root or None
    if root is None:
        return None
    kind = args.dataset_kind or stored.kind or "vtab1k"
    return {
        "kind": kind,
        "root": root,
        "task": args.task or stored.task or run.task,
        "split": args.split or stored.split or TRAIN_SPLITS.get(kind),
        "normalize": run.normalize,
        "image_dir": stored.image_dir if not args.data_root else None,
    }


def _batches(spec: dict[str, Any], img_size: int, args: argparse.Namespace) -> tuple[int, list]:
    """``(num_classes, batches)``: the first ``--batches`` batches of the training split."""
    dataset = build_dataset(
        spec["kind"],
        spec["root"],
        spec["task"],
        spec["split"],
        img_size,
        normalize=spec["normalize"],
        image_dir=spec["image_dir"],
    )
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False)
    return dataset.num_classes, list(islice(loader, args.batches))


def _adapter_report(
    directory: Path, args: argparse.Namespace, task: str | None = None
) -> HeadReport:
    report = adapter_head_report(directory, task)
    spec = _dataset_spec(args, read_adapter_metadata(directory).run)
    if spec is None:
        if args.scorer is not None:
            raise HeartLoRAError(
                f"{directory}: --scorer needs training images (pass --data-root and --task)"
            )
        print(
            f"{report.task}: no training images known, no redundancy plot (pass --data-root, --task)"
        )
        return report
    base = base_model_from_adapter(
        directory,
        args.checkpoint,
        args.model,
        ignore_base_mismatch=args.ignore_base_mismatch,
    )
    model = load_adapter(base, directory)
    trained_at = adapter_img_size(directory, model)
    if args.img_size is not None and args.img_size != trained_at:
        raise HeartLoRAError(
            f"--img-size {args.img_size}: {directory} was trained at {trained_at} px, which its "
            "base model takes (expected that size, or no --img-size)"
        )
    try:
        _, batches = _batches(spec, trained_at, args)
    except HeartLoRAError as error:
        if args.data_root is not None or args.scorer is not None:
            raise  # images the user named, or needed to score: an error
        # the images the adapter was trained on have moved or gone: the docs' skip line
        print(
            f"{report.task}: the adapter's training images cannot be read ({error}); no "
            "redundancy plot (pass --data-root, --task)"
        )
        return report
    report.similarity = model_head_report(model, report.task, batches=batches).similarity
    if args.scorer is not None or report.scores is None:
        scorer = args.scorer or "grad-norm"
        scores = responsiveness(model, batches, cross_entropy, scorer=scorer)
        report.scores = model_head_report(model, report.task, scores).scores
        report.scorer = scorer
    return report


def _image_size(model: torch.nn.Module) -> int | None:
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    return int(size[0] if isinstance(size, (tuple, list)) else size) if size else None


def _base_model_report(args: argparse.Namespace) -> HeadReport:
    """Score a base model's heads: on a fresh adapter for a scorer that reads adapters
    (grad-norm), else on the base model itself (redundancy, head-gate, ...)."""
    scorer = args.scorer or "redundancy"
    scoring = SCORER_REGISTRY[scorer]
    if scoring.needs_trained_adapters:
        raise HeartLoRAError(
            f"scorer {scorer!r} needs a trained adapter; without --adapter use grad-norm or redundancy"
        )
    kwargs = {"img_size": args.img_size} if args.img_size else {}
    model = create_base_model(args.model, args.checkpoint, **kwargs).eval()
    img_size = args.img_size or _image_size(model)
    if not img_size:
        raise HeartLoRAError(f"{args.model}: cannot tell its input size (expected --img-size N)")
    packaged = packaged_weights(args.model) if not args.checkpoint else None
    spec = _dataset_spec(args, RunInfo(normalize=packaged.normalize if packaged else None))
    num_classes, batches = _batches(spec, img_size, args)
    if scoring.needs_loss and hasattr(model, "reset_classifier"):  # the task's labels
        model.reset_classifier(num_classes)
    if scoring.needs_adapters:
        inject(model, HeartLoRAConfig(rank=args.rank))
    scores = responsiveness(model, batches, cross_entropy, scorer=scorer)
    heads = [int((~torch.isnan(row)).sum()) for row in scores]
    masks = None
    if args.ne:
        keep = select_heads(scores, args.ne, args.mode)
        masks = [row[:count].tolist() for row, count in zip(keep, heads)]
    task = spec["task"] or Path(spec["root"]).name
    return model_head_report(model, task, scores, scorer, batches=batches, head_masks=masks)


def _print_written(written: dict[str, Path]) -> None:
    for path in written.values():
        print(f"wrote {path}")


def run(args: argparse.Namespace) -> int:
    """Write the head plots and JSON; returns the exit code."""
    _check(args)
    args.adapters = [adapter_directory(d) for d in args.adapters]
    if not args.adapters:
        report = _base_model_report(args)
        _print_written(write_head_report(report, args.output_dir))
        return 0
    if len(args.adapters) == 1:
        report = _adapter_report(args.adapters[0], args)
        _print_written(write_head_report(report, args.output_dir))
        total = sum(report.num_heads)
        print(f"{report.task}: {total - len(report.deactivated)} of {total} heads kept")
        return 0
    comparison = compare_tasks(args.adapters)
    for directory, task in zip(args.adapters, comparison.tasks):
        report = _adapter_report(directory, args, task)
        _print_written(write_head_report(report, args.output_dir / _folder_name(task)))
    _print_written(write_task_comparison(comparison, args.output_dir))
    print(comparison.to_markdown(), end="")
    return 0


def _folder_name(task: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in task) or "task"
