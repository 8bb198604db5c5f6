"""`heartlora suite`: run methods × tasks × seeds and print the paper-style table."""

from __future__ import annotations

import argparse
from pathlib import Path

from heartlora.errors import HeartLoRAError
from heartlora.training.suite import DEFAULT_METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true", help="name the mini-VTAB tasks and exit")
    parser.add_argument("--tasks", help="comma-separated mini-VTAB tasks (default: all)")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma-separated methods; NAME[key=value;...] adds overrides",
    )
    parser.add_argument("--epochs", type=int, help="epochs per run (default 8)")
    parser.add_argument("--seeds", default="1", help="a count (3 → seeds 0,1,2) or a list (0,7)")
    parser.add_argument("--output-dir", default="runs/suite", help="where runs and tables go")
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="runs trained at once, one process and `threads` torch threads each "
        "(default 2, for 2 cores)",
    )
    parser.add_argument(
        "--data-root",
        help="where mini-VTAB is materialised "
        "(default ~/.cache/heartlora/mini-vtab or $HEARTLORA_DATA)",
    )
    parser.add_argument("--config", help="YAML file overriding the mini-VTAB defaults")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key for every run",
    )


def _split_methods(text: str) -> list[str]:
    """Split on commas outside brackets: "a,b[x=1,y=2]" → ["a", "b[x=1,y=2]"]."""
    methods, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            methods.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        methods.append(current.strip())
    return methods


def run(args: argparse.Namespace) -> int:
    from heartlora.bundled.tasks import MINI_VTAB_TASKS, default_data_root
    from heartlora.training.suite import mini_vtab_tasks, parse_seeds, run_suite, suite_base_config

    if args.list:
        for name, spec in MINI_VTAB_TASKS.items():
            print(f"{name:<20} {spec.group:<12} {spec.num_classes:>3} classes  {spec.description}")
        return 0
    if args.jobs < 1:
        raise HeartLoRAError(f"--jobs must be at least 1, got {args.jobs}")
    overrides = list(args.set) + ([f"epochs={args.epochs}"] if args.epochs else [])
    base, method_defaults = suite_base_config(args.config, overrides)
    methods = _split_methods(args.methods)
    seeds = parse_seeds(args.seeds)
    data_root = Path(args.data_root) if args.data_root else default_data_root()
    names = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    print(f"materialising mini-VTAB in {data_root} …", flush=True)
    tasks = mini_vtab_tasks(names, data_root)
    total = len(tasks) * len(methods) * len(seeds)
    print(
        f"running {len(methods)} methods × {len(tasks)} tasks × {len(seeds)} seed(s) = {total} runs, "
        f"{base['epochs']} epochs each",
        flush=True,
    )
    output_dir = Path(args.output_dir)
    run_suite(
        tasks,
        methods,
        seeds,
        output_dir,
        base,
        log=lambda line: print(line, flush=True),
        method_defaults=method_defaults,
        jobs=args.jobs,
    )
    print()
    print((output_dir / "results.md").read_text(encoding="utf-8"))
    print(
        f"table: {output_dir / 'results.md'}   runs: {output_dir / 'results.csv'}   "
        f"plot: {output_dir / 'accuracy_vs_storage.png'}"
    )
    return 0
