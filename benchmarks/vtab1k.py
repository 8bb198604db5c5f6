"""Run the whole VTAB-1k benchmark (19 tasks) for some methods and print the paper's table.

    python benchmarks/vtab1k.py --data-root data/vtab-1k --checkpoint ViT-B_16.npz \
        --methods lora,heart-lora-layer --output-dir runs/vtab1k [--search-scale] [--seeds 3]

Each task uses configs/vtab1k/<task>.yaml (the paper's protocol, DESIGN.md §4). With
--search-scale the LoRA scale s is chosen per task and method from {0.01, 0.1, 1, 10, 100} by
training on train800 and scoring on val200, as the paper does; the chosen values are written to
<output>/scales.json and the final runs train on train800val200 and report test accuracy.
Finished runs are reused, so a stopped benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from heartlora.atomic import atomic_write_json
from heartlora.data.vtab1k import VTAB1K_TASKS
from heartlora.training.config import parse_override, read_config_file
from heartlora.training.suite import SuiteTask, parse_seeds, run_suite, write_reports

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "vtab1k"
SCALES = (0.01, 0.1, 1, 10, 100)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True)
    parser.add_argument(
        "--checkpoint", required=True, help="ViT-B_16.npz (ImageNet-21k) or another file"
    )
    parser.add_argument(
        "--model", default=None, help="timm model (default: the configs' vit_base_patch16_224)"
    )
    parser.add_argument("--methods", default="lora,heart-lora,heart-lora-layer")
    parser.add_argument("--tasks", default=",".join(VTAB1K_TASKS))
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--search-scale", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output-dir", default="runs/vtab1k")
    args = parser.parse_args()

    output = Path(args.output_dir)
    base = read_config_file(CONFIGS / "base.yaml")
    base.update({"data_root": args.data_root, "checkpoint": args.checkpoint})
    if args.model:
        base["model"] = args.model
    for item in args.set:
        key, value = parse_override(item)
        base[key] = value
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    protocol = read_config_file(CONFIGS / "base.yaml")
    tasks = []
    for name in (t.strip() for t in args.tasks.split(",")):
        task_file = read_config_file(CONFIGS / f"{name}.yaml")  # base.yaml + the task's own keys
        own = {k: v for k, v in task_file.items() if protocol.get(k) != v}
        tasks.append(SuiteTask(name, VTAB1K_TASKS[name], own))
    seeds = parse_seeds(args.seeds)

    if args.search_scale:
        chosen: dict[str, dict[str, float]] = {}
        for task in tasks:
            for method in methods:
                trials = [
                    f"{method}[scale={s},train_split=train800,eval_split=val200]" for s in SCALES
                ]
                results = run_suite([task], trials, [seeds[0]], output / "scale-search", base)
                best = max(zip(SCALES, results), key=lambda pair: pair[1].accuracy)[0]
                chosen.setdefault(task.name, {})[method] = best
        atomic_write_json(output / "scales.json", chosen)
        results = []
        for method in methods:
            per_task = [
                SuiteTask(t.name, t.group, {**t.settings, "scale": chosen[t.name][method]})
                for t in tasks
            ]
            results += run_suite(per_task, [method], seeds, output / "final" / method, base)
        write_reports(results, output / "final")
        print(f"chosen scales: {output / 'scales.json'}")
        print((output / "final" / "results.md").read_text(encoding="utf-8"))
        return
    run_suite(tasks, methods, seeds, output, base)
    print((output / "results.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
