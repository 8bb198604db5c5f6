"""`heartlora frontier`: the accuracy–storage frontier of LoRA, peft LoRA, Heart-LoRA and controls."""

from __future__ import annotations

import argparse
from pathlib import Path

from heartlora.commands.arguments import (
    add_grid_arguments,
    build_executor,
    listed,
    non_negative_int,
)
from heartlora.training.frontier import (
    DEFAULT_SEEDS,
    DEFAULT_TASKS,
    FRONTIER_DEFAULTS,
    REAL_BASE_SELECTION_SEEDS,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tasks",
        default=None,
        help="comma-separated tasks under --data-root; NAME:GROUP names a task's group "
        f"(default {','.join(DEFAULT_TASKS)})",
    )
    parser.add_argument(
        "--data-root",
        help="a VTAB-layout root (<task>/train800.txt …); mini-VTAB tasks are materialised "
        "there (default ~/.cache/heartlora/mini-vtab or $HEARTLORA_DATA)",
    )
    add_grid_arguments(
        parser, "default: the protocol's grid, docs/frontier.md", DEFAULT_SEEDS, "runs/frontier"
    )
    parser.add_argument(
        "--selection-seeds",
        default=None,
        help="seeds of the selection grid on val200, a count or a list (default: --seeds; "
        f"{REAL_BASE_SELECTION_SEEDS} with --base real)",
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
        "--bootstrap-seed",
        type=non_negative_int,
        default=0,
        help="seed of the bootstrap intervals (default 0)",
    )


def run(args: argparse.Namespace) -> int:
    from heartlora.bundled.tasks import default_data_root
    from heartlora.training.frontier import (
        SELECTION_SPLITS,
        TEST_SPLITS,
        run_frontier,
        vtab_tasks,
    )
    from heartlora.training.method_specs import parse_method
    from heartlora.training.suite import parse_seeds, suite_base_config, suite_protocol

    executor = build_executor(args, args.output_dir, lambda line: print(line, flush=True))
    protocol = suite_protocol(args.base)
    defaults = FRONTIER_DEFAULTS[protocol.name]
    epochs = args.epochs or defaults.epochs
    overrides = list(args.set) + ([f"epochs={epochs}"] if epochs else [])
    base, method_defaults = suite_base_config(args.config, overrides, protocol.name)
    methods = listed(args.methods, defaults.grid, "--methods")
    for method in methods:
        parse_method(method)
    seeds = parse_seeds(args.seeds)
    selection_seeds = args.selection_seeds or (
        str(defaults.selection_seeds) if defaults.selection_seeds else None
    )
    selection = None if args.selection == "none" else args.selection
    if selection:
        splits = tuple(dict.fromkeys([*SELECTION_SPLITS.values(), *TEST_SPLITS.values()]))
    else:
        splits = (base["train_split"], base["eval_split"])
    data_root = Path(args.data_root) if args.data_root else default_data_root()
    tasks = vtab_tasks(listed(args.tasks, defaults.tasks, "--tasks"), data_root, splits)
    grid_seeds = parse_seeds(selection_seeds) if selection and selection_seeds else seeds
    grid_runs = len(tasks) * len(methods) * len(grid_seeds)
    print(
        f"frontier: {len(methods)} methods × {len(tasks)} tasks × {len(grid_seeds)} seed(s) = "
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
        executor=executor,
        bootstrap_seed=args.bootstrap_seed,
        log=lambda line: print(line, flush=True),
        selection_seeds=grid_seeds,
    )
    if outcome is None:  # submitted, not waited for
        return 0
    report = output_dir / "frontier.md"
    if outcome.chosen:
        print(f"chosen on val200: {outcome.chosen}")
    print()
    print(report.read_text(encoding="utf-8"))
    print(f"report: {report}   runs: {output_dir}")
    return 0
