"""`heartlora frontier`: the accuracy–storage frontier of LoRA, peft LoRA, Heart-LoRA and controls."""

from __future__ import annotations

import argparse
from pathlib import Path

from heartlora.commands.arguments import add_grid_arguments
from heartlora.errors import HeartLoRAError
from heartlora.training.frontier import DEFAULT_GRID, DEFAULT_SEEDS, DEFAULT_TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tasks",
        default=",".join(DEFAULT_TASKS),
        help="comma-separated tasks under --data-root; NAME:GROUP names a task's group "
        f"(default {','.join(DEFAULT_TASKS)})",
    )
    parser.add_argument(
        "--data-root",
        help="a VTAB-layout root (<task>/train800.txt …); mini-VTAB tasks are materialised "
        "there (default ~/.cache/heartlora/mini-vtab or $HEARTLORA_DATA)",
    )
    add_grid_arguments(
        parser, list(DEFAULT_GRID), "default: docs/frontier.md", DEFAULT_SEEDS, "runs/frontier"
    )
    parser.add_argument(
        "--selection",
        choices=("val200", "none"),
        default="val200",
        help="val200: run the grid on train800 → val200, choose there, then report the chosen "
        "variant, its byte-matched partners and controls once on test; none: run the grid "
        "once on the config's splits (default val200)",
    )
    parser.add_argument(
        "--bootstrap-seed", type=int, default=0, help="seed of the bootstrap intervals (default 0)"
    )


def run(args: argparse.Namespace) -> int:
    from heartlora.bundled.tasks import default_data_root
    from heartlora.training.frontier import (
        SELECTION_SPLITS,
        TEST_SPLITS,
        run_frontier,
        vtab_tasks,
    )
    from heartlora.training.suite import (
        parse_method,
        parse_seeds,
        split_top_level,
        suite_base_config,
    )

    if args.jobs < 1:
        raise HeartLoRAError(f"--jobs must be at least 1, got {args.jobs}")
    overrides = list(args.set) + ([f"epochs={args.epochs}"] if args.epochs else [])
    base, method_defaults = suite_base_config(args.config, overrides)
    methods = split_top_level(args.methods)
    for method in methods:
        parse_method(method)
    seeds = parse_seeds(args.seeds)
    selection = None if args.selection == "none" else args.selection
    if selection:
        splits = tuple(dict.fromkeys([*SELECTION_SPLITS.values(), *TEST_SPLITS.values()]))
    else:
        splits = (base["train_split"], base["eval_split"])
    data_root = Path(args.data_root) if args.data_root else default_data_root()
    tasks = vtab_tasks(split_top_level(args.tasks), data_root, splits)
    grid_runs = len(tasks) * len(methods) * len(seeds)
    print(
        f"frontier: {len(methods)} methods × {len(tasks)} tasks × {len(seeds)} seed(s) = "
        f"{grid_runs} runs of {base['epochs']} epochs"
        + (", then the chosen set on test" if selection else ""),
        flush=True,
    )
    output_dir = Path(args.output_dir)
    outcome = run_frontier(
        tasks,
        methods,
        seeds,
        output_dir,
        base,
        method_defaults,
        selection=selection,
        jobs=args.jobs,
        bootstrap_seed=args.bootstrap_seed,
        log=lambda line: print(line, flush=True),
    )
    report = output_dir / "frontier.md"
    if outcome.chosen:
        print(f"chosen on val200: {outcome.chosen}")
    print()
    print(report.read_text(encoding="utf-8"))
    print(f"report: {report}   runs: {output_dir}")
    return 0
