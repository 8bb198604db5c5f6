"""Run the whole VTAB-1k benchmark (19 tasks) for some methods and print the paper's table.

    python benchmarks/vtab1k.py --data-root data/vtab-1k --checkpoint ViT-B_16.npz \
        --methods lora,heart-lora-layer --output-dir runs/vtab1k [--search-scale] [--seeds 3]
    python benchmarks/vtab1k.py --data-root data/vtab-1k --config-dir configs/vtab1k_swin \
        --methods lora,heart-lora --output-dir runs/vtab1k-swin
    python benchmarks/vtab1k.py --data-root data/vtab-1k --config-dir configs/vtab1k_petl \
        --checkpoint ViT-B_16.npz --methods lora,heart-lora-layer --output-dir runs/vtab1k-petl

Each task uses <config-dir>/<task>.yaml (configs/vtab1k: ViT-B/16 on ImageNet-21k, the paper's
protocol; configs/vtab1k_swin: Swin-B on ImageNet-22k, heads deactivated by share per layer;
configs/vtab1k_petl: the protocol as the authors' earlier code, PETL-ViT, runs it — rank 32,
per-task scales, test every 10 epochs, whose best is printed beside the final-epoch table and
labelled as chosen on test). The tasks come from the suite's `discover_tasks` with the 19 VTAB-1k names and their
groups (Natural, Specialized, Structured), and run through `run_suite`: the same table, plot,
seeds and resume as `heartlora suite`. With --search-scale the LoRA scale s is chosen per task
and method from {0.01, 0.1, 1, 10, 100} by training on train800 and scoring on val200, as the
paper does; the chosen values are written to <output>/scales.json and the final runs train on
train800val200 and report test accuracy. Finished runs are reused, so a stopped benchmark
continues where it stopped.

The runs train where `--executor` puts them, as in `heartlora suite`: on this machine
(`--jobs N`, one GPU per worker with `--devices`) or as SLURM array tasks (`--executor slurm`,
`--partition`, `--time-minutes`, `--gpus-per-run`, ...; `--no-wait` submits and returns):

    python benchmarks/vtab1k.py --data-root data/vtab-1k --checkpoint ViT-B_16.npz \
        --methods lora,heart-lora --seeds 3 --search-scale --executor slurm \
        --partition gpu --gpus-per-run 1 --time-minutes 30 --output-dir runs/vtab1k
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from heartlora.commands.arguments import add_executor_arguments, build_executor
from heartlora.data.vtab1k import VTAB1K_TASKS
from heartlora.errors import HeartLoRAError
from heartlora.io.atomic import atomic_write_json
from heartlora.training.config import parse_override, read_config_file
from heartlora.training.method_specs import split_top_level
from heartlora.training.suite import (
    BEST_OF_EVALUATIONS,
    SuiteTask,
    discover_tasks,
    parse_seeds,
    run_suite,
    write_reports,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "vtab1k"
SCALES = (0.01, 0.1, 1, 10, 100)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True)
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=CONFIGS,
        help="base.yaml and one <task>.yaml per task (default configs/vtab1k; "
        "configs/vtab1k_swin for Swin-B)",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="base weights file (default: the configs'; ViT-B_16.npz for ViT-B/16, timm's "
        "ImageNet-22k weights for Swin-B)",
    )
    parser.add_argument("--model", default=None, help="timm model (default: the configs')")
    parser.add_argument("--methods", default="lora,heart-lora,heart-lora-layer")
    parser.add_argument("--tasks", default=",".join(VTAB1K_TASKS))
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--search-scale", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output-dir", default="runs/vtab1k")
    add_executor_arguments(parser)
    args = parser.parse_args()

    output = Path(args.output_dir)
    executor = build_executor(args, output)
    protocol = read_config_file(args.config_dir / "base.yaml")
    base = {**protocol, "data_root": args.data_root}
    if args.checkpoint:
        base["checkpoint"] = args.checkpoint
    if args.model:
        base["model"] = args.model
    for item in args.set:
        key, value = parse_override(item)
        base[key] = value
    methods = split_top_level(args.methods)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    splits = ("train800", "val200") if args.search_scale else ()
    splits += (base.get("train_split", "train800val200"), base.get("eval_split", "test"))
    tasks = []
    for task in discover_tasks(args.data_root, names, VTAB1K_TASKS, splits=splits):
        task_file = read_config_file(args.config_dir / f"{task.name}.yaml")  # base + its own keys
        own = {k: v for k, v in task_file.items() if protocol.get(k) != v}
        tasks.append(SuiteTask(task.name, task.group, {**task.settings, **own}))
    seeds = parse_seeds(args.seeds)
    run = {"executor": executor}

    if args.search_scale:
        # every task's scale search in one submission, then each method's final runs
        trials = [
            f"{method}[scale={s},train_split=train800,eval_split=val200]"
            for method in methods
            for s in SCALES
        ]
        search = run_suite(tasks, trials, [seeds[0]], output / "scale-search", base, **run)
        if search is None:
            return
        chosen: dict[str, dict[str, float]] = {}
        for task_index, task in enumerate(tasks):
            for method_index, method in enumerate(methods):
                first = (task_index * len(methods) + method_index) * len(SCALES)
                scored = zip(SCALES, search[first : first + len(SCALES)])
                chosen.setdefault(task.name, {})[method] = max(scored, key=lambda p: p[1].accuracy)[
                    0
                ]
        atomic_write_json(output / "scales.json", chosen)
        results = []
        for method in methods:
            per_task = [
                SuiteTask(t.name, t.group, {**t.settings, "scale": chosen[t.name][method]})
                for t in tasks
            ]
            final = run_suite(per_task, [method], seeds, output / "final" / method, base, **run)
            if final is None:
                return
            results += final
        write_reports(results, output / "final")
        print(f"chosen scales: {output / 'scales.json'}")
        _print_tables(output / "final")
        return
    if run_suite(tasks, methods, seeds, output, base, **run) is not None:
        _print_tables(output)


def _print_tables(folder: Path) -> None:
    """results.md (final epoch, held out) and, when the runs evaluated more than once, the
    best-of-evaluations table under its own heading (chosen on the evaluation split)."""
    print((folder / "results.md").read_text(encoding="utf-8"))
    best = folder / BEST_OF_EVALUATIONS
    if best.is_file():
        print(best.read_text(encoding="utf-8"))


if __name__ == "__main__":
    try:
        main()
    except HeartLoRAError as error:  # bad input: one line, as the heartlora commands print it
        sys.exit(f"error: {error}")
