"""Each PETL-field method's learning rate, chosen on val200 (docs/results.md, "Heart-LoRA among
the PETL field"; configs/frontier/petl-field.yaml holds the choice).

    python benchmarks/field_lr_choice.py --output-dir runs/field/lr-check          # train, then choose
    python benchmarks/field_lr_choice.py --output-dir runs/field/lr-check --report # choose from its runs

The rule: between the protocol's 1e-3 and 1e-2, the rate with the higher mean val200 accuracy
over mnist and digit-order (train800 -> val200, seed 0, the `--base real` protocol). A rate at
chance on mnist loses at once, without a digit-order run. Finished runs are reused, so a second
call trains only what is missing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from heartlora.training.stats import at_chance

METHODS: tuple[str, ...] = (
    "lora[rank=8]",
    "heart-lora[rank=10,ne=2]",
    "peft-lora[rank=8]",
    "peft-pissa[rank=8]",
    "peft-rslora[rank=8]",
    "peft-dora[rank=7]",
    "peft-adalora[rank=8]",
    "peft-vera[rank=89]",
    "peft-lokr[rank=16]",
    "peft-oft[block_size=64]",
    "peft-boft[block_size=32]",
    "peft-hra[rank=32]",
    "peft-fourierft[n_frequency=12708]",
    "peft-ia3",
    "bitfit",
    "peft-loha[rank=4]",
)
"""Every method of the field at its byte-matched size, at the protocol's rate."""

HIGH_LR = 0.01


def at_high_lr(spec: str) -> str:
    """``spec`` with ``lr=0.01`` added to its brackets."""
    return f"{spec[:-1]},lr={HIGH_LR}]" if spec.endswith("]") else f"{spec}[lr={HIGH_LR}]"


def suite(output_dir: Path, task: str, methods: list[str], jobs: int) -> None:
    """Train ``methods`` on train800 -> val200 of ``task``, seed 0 (finished runs are reused)."""
    command = [
        sys.executable, "-m", "heartlora", "suite", "--base", "real", "--jobs", str(jobs),
        "--seeds", "1", "--tasks", task, "--set", "train_split=train800",
        "--set", "eval_split=val200", "--methods", ",".join(methods),
        "--output-dir", str(output_dir),
    ]  # fmt: skip
    subprocess.run(command, check=True)


def result(output_dir: Path, task: str, spec: str) -> dict | None:
    path = output_dir / "runs" / task / spec / "seed0" / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def collapsed_on_mnist(output_dir: Path, spec: str) -> bool | None:
    """Whether ``spec`` at 1e-2 stayed at chance on mnist (None: not run yet)."""
    found = result(output_dir, "mnist", at_high_lr(spec))
    if found is None:
        return None
    return at_chance(found["final_accuracy"], found["num_classes"], found["eval_images"])


def choose(output_dir: Path) -> list[tuple[str, list[float | None], str | None]]:
    """Per method: val200 accuracies (mnist 1e-3, mnist 1e-2, digit-order 1e-3, digit-order
    1e-2) and the chosen spec (None while runs are missing)."""
    rows = []
    for spec in METHODS:
        specs = (spec, at_high_lr(spec))
        values = [
            (found or {}).get("final_accuracy")
            for task in ("mnist", "digit-order")
            for found in (result(output_dir, task, s) for s in specs)
        ]
        if collapsed_on_mnist(output_dir, spec):
            chosen: str | None = spec
        elif None in values:
            chosen = None
        else:
            low, high = (values[0] + values[2]) / 2, (values[1] + values[3]) / 2
            chosen = specs[1] if high > low else spec
        rows.append((spec, values, chosen))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/field/lr-check"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="choose from the runs there")
    args = parser.parse_args()
    if not args.report:
        mnist = [s for spec in METHODS for s in (spec, at_high_lr(spec))]
        suite(args.output_dir, "mnist", mnist, args.jobs)
        learned = [spec for spec in METHODS if collapsed_on_mnist(args.output_dir, spec) is False]
        digit_order = [s for spec in learned for s in (spec, at_high_lr(spec))]
        if digit_order:
            suite(args.output_dir, "digit-order", digit_order, args.jobs)
    print("| val200, seed 0 | mnist, 1e-3 | mnist, 1e-2 | digit-order, 1e-3 | digit-order, 1e-2 |"
          " chosen |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for spec, values, chosen in choose(args.output_dir):
        cells = ["–" if v is None else f"{v:.1f}" for v in values]
        print(f"| {spec} | {' | '.join(cells)} | {chosen or 'runs missing'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
