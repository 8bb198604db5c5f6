"""`heartlora speed`: training/inference speed and memory against peft LoRA and the bound."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from heartlora.commands.arguments import image_side, non_negative_int, positive_int
from heartlora.errors import HeartLoRAError
from heartlora.io.atomic import folder_path_problem
from heartlora.tools.speed import (
    DEFAULT_GOALS_FILE,
    SpeedConfig,
    format_report,
    read_speed_goals,
    run_speed_benchmark,
)
from heartlora.training.precision import DTYPES

_DEFAULTS = SpeedConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of `heartlora speed`."""
    parser.add_argument(
        "--model", default=_DEFAULTS.model, help="timm architecture, random weights"
    )
    parser.add_argument(
        "--img-size", type=image_side, default=_DEFAULTS.img_size, help="input resolution in pixels"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=_DEFAULTS.batch_size, help="images per step"
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=_DEFAULTS.steps,
        help="timed rounds (each runs one step of every variant)",
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_int,
        default=_DEFAULTS.warmup,
        help="untimed rounds before them",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default=_DEFAULTS.device)
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=_DEFAULTS.dtype,
        help="tf32: TF32 matrix products on CUDA; bf16: autocast, weights stay fp32",
    )
    parser.add_argument("--rank", type=positive_int, default=_DEFAULTS.rank, help="LoRA rank r")
    parser.add_argument(
        "--calib-batches",
        type=int,
        default=_DEFAULTS.calib_batches,
        help="batches the taylor scorer averages over",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time every training variant under torch.compile (compiled_* ratios)",
    )
    parser.add_argument(
        "--run-epochs",
        type=int,
        default=_DEFAULTS.run_epochs,
        help="epochs of the run that calibration is compared with (calibration_vs_run)",
    )
    parser.add_argument(
        "--goals",
        type=Path,
        default=DEFAULT_GOALS_FILE,
        help="YAML file of ratio limits, the result's targets (default: the project's, "
        "heartlora/bundled/speed_goals.yaml)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--quiet", action="store_true", help="print the table only")


def _check_json_path(path: Path | None) -> None:
    """Refuse a ``--json`` path that cannot be written before the benchmark runs."""
    if path is None:
        return
    if path.is_dir():
        raise HeartLoRAError(f"--json {path}: is a folder (expected a file path)")
    problem = folder_path_problem(path.absolute().parent)
    if problem is not None:
        raise HeartLoRAError(f"--json {path}: {problem}")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, write the JSON; returns the exit code."""
    _check_json_path(args.json)
    goals = read_speed_goals(args.goals)
    config = SpeedConfig(
        model=args.model,
        img_size=args.img_size,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        dtype=args.dtype,
        rank=args.rank,
        calib_batches=args.calib_batches,
        threads=args.threads,
        compile=args.compile,
        run_epochs=args.run_epochs,
    )
    log = None if args.quiet else (lambda line: print(line, flush=True))
    result = run_speed_benchmark(config, log=log, goals=goals)
    print(format_report(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
