"""`heartlora suite`: run methods × tasks × seeds and print the paper-style table."""

from __future__ import annotations

import argparse
from pathlib import Path

from heartlora.commands.arguments import add_grid_arguments, build_executor, listed
from heartlora.training.suite import GROUPS_FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--list",
        action="store_true",
        help="name the tasks (of --data-root, else mini-VTAB's) and their groups, and exit",
    )
    parser.add_argument(
        "--tasks",
        help="comma-separated task names (default: every task folder of --data-root, else the "
        "protocol's: all of mini-VTAB for mini, three for real); a mini-VTAB name without a "
        "folder is built there",
    )
    add_grid_arguments(parser, "default: the protocol's", seeds=None, output="runs/suite")
    parser.add_argument(
        "--data-root",
        help="a VTAB-layout root (<task>/train800val200.txt, test.txt and images) whose task "
        f"folders are the tasks, grouped by its optional {GROUPS_FILE} (group: [task, ...]); "
        "default: mini-VTAB in ~/.cache/heartlora/mini-vtab or $HEARTLORA_DATA",
    )
    parser.add_argument(
        "--groups", help=f"a YAML file of group: [task, ...] (default: <data-root>/{GROUPS_FILE})"
    )


def _log(line: str) -> None:
    print(line, flush=True)


def run(args: argparse.Namespace) -> int:
    from heartlora.bundled.tasks import MINI_VTAB_TASKS, default_data_root
    from heartlora.training.suite import (
        discover_tasks,
        parse_seeds,
        run_suite,
        suite_base_config,
        suite_protocol,
    )

    names = None if args.tasks is None else listed(args.tasks, (), "--tasks")
    if args.list and not args.data_root:
        for name, spec in MINI_VTAB_TASKS.items():
            print(f"{name:<20} {spec.group:<12} {spec.num_classes:>3} classes  {spec.description}")
        return 0
    executor = build_executor(args, args.output_dir, _log)
    protocol = suite_protocol(args.base)
    overrides = list(args.set) + ([f"epochs={args.epochs}"] if args.epochs else [])
    base, method_defaults = suite_base_config(args.config, overrides, protocol.name)
    methods = listed(args.methods, protocol.methods, "--methods")
    seeds = parse_seeds(args.seeds or str(protocol.seeds))
    data_root = Path(args.data_root) if args.data_root else default_data_root()
    if names is None and not args.data_root:
        names = list(protocol.tasks)
    splits = [base.get("train_split", "train800val200"), base.get("eval_split", "test")]
    tasks = discover_tasks(
        data_root, names, args.groups, splits=splits, log=None if args.list else _log
    )
    if args.list:
        for task in tasks:
            print(f"{task.name:<24} {task.group}")
        return 0
    total = len(tasks) * len(methods) * len(seeds)
    print(
        f"running {len(methods)} methods × {len(tasks)} tasks × {len(seeds)} seed(s) = {total} runs, "
        f"{base['epochs']} epochs each",
        flush=True,
    )
    output_dir = Path(args.output_dir)
    results = run_suite(
        tasks,
        methods,
        seeds,
        output_dir,
        base,
        log=_log,
        method_defaults=method_defaults,
        executor=executor,
    )
    if results is None:  # submitted, not waited for
        return 0
    print()
    print((output_dir / "results.md").read_text(encoding="utf-8"))
    print(
        f"table: {output_dir / 'results.md'}   runs: {output_dir / 'results.csv'}   "
        f"plot: {output_dir / 'accuracy_vs_storage.png'}"
    )
    return 0
