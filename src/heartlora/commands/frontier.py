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
from heartlora.training.frontier import DEFAULT_SEEDS, DEFAULT_TASKS, FRONTIER_DEFAULTS


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
        parser,
        "default: the --grid file's, else the protocol's grid, docs/frontier.md",
        None,
        "runs/frontier",
        seeds_help=f"the --grid file's, else {DEFAULT_SEEDS}",
    )
    parser.add_argument(
        "--selection-seeds",
        default=None,
        help="seeds of the selection grid on val200, a count or a list (default: --seeds; "
        f"{FRONTIER_DEFAULTS['real'].selection_seeds} with --base real)",
    )
    parser.add_argument(
        "--selection",
        choices=("val200", "none"),
        default=None,
        help="val200: run the grid on train800 → val200, choose there, then report the chosen "
        "variant, its byte-matched partners and controls once on test; none: run the grid "
        "once on the config's splits (default: the --grid file's, else val200)",
    )
    parser.add_argument(
        "--grid",
        metavar="FILE",
        help="a YAML experiment (configs/frontier/*.yaml) setting tasks, methods, seeds, epochs "
        "and selection; an option given on the command line wins over the file's key",
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
        GridFile,
        read_grid_file,
        run_frontier,
        vtab_tasks,
    )
    from heartlora.training.method_specs import parse_method
    from heartlora.training.suite import parse_seeds, suite_base_config, suite_protocol

    grid = read_grid_file(args.grid) if args.grid else GridFile()  # before any executor exists
    executor = build_executor(args, args.output_dir, lambda line: print(line, flush=True))
    protocol = suite_protocol(args.base)
    defaults = FRONTIER_DEFAULTS[protocol.name]
    epochs = args.epochs or grid.epochs or defaults.epochs
    overrides = list(args.set) + ([f"epochs={epochs}"] if epochs else [])
    base, method_defaults = suite_base_config(args.config, overrides, protocol.name)
    methods = listed(args.methods, grid.methods or defaults.methods or (), "--methods")
    for method in methods:
        parse_method(method)
    seeds = parse_seeds(args.seeds or str(grid.seeds or defaults.seeds or DEFAULT_SEEDS))
    grid_selection_seeds = grid.selection_seeds or defaults.selection_seeds
    selection_seeds = args.selection_seeds or (
        str(grid_selection_seeds) if grid_selection_seeds else None
    )
    chosen_selection = args.selection or grid.selection or "val200"
    selection = None if chosen_selection == "none" else chosen_selection
    if selection:
        splits = tuple(dict.fromkeys([*SELECTION_SPLITS.values(), *TEST_SPLITS.values()]))
    else:
        splits = (base["train_split"], base["eval_split"])
    data_root = Path(args.data_root) if args.data_root else default_data_root()
    tasks = vtab_tasks(
        listed(args.tasks, grid.tasks or defaults.tasks, "--tasks"), data_root, splits
    )
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
