"""`heartlora train`: one fine-tuning run from a YAML config, ``--set`` overrides and flags."""

from __future__ import annotations

import argparse

from heartlora.commands.arguments import add_config_arguments, output_dir
from heartlora.commands.console import say
from heartlora.training.config import build_config
from heartlora.training.distributed import World
from heartlora.training.methods import METHODS

# flag → config key, type, help
FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--model", "model", str, "timm model name"),
    ("--checkpoint", "checkpoint", str, "base weights file (.safetensors, .pth, .npz)"),
    ("--data-root", "data_root", str, "folder holding the task folders"),
    ("--data-kind", "data_kind", str, "vtab1k, fgvc or imagefolder"),
    ("--task", "task", str, "task (VTAB-1k) or dataset (FGVC) name"),
    ("--method", "method", str, f"one of {', '.join(METHODS)}"),
    ("--epochs", "epochs", int, "training epochs"),
    ("--batch-size", "batch_size", int, "global batch size"),
    ("--img-size", "img_size", int, "input resolution"),
    ("--rank", "rank", int, "LoRA rank r"),
    ("--scale", "scale", float, "LoRA scale s"),
    ("--ne", "ne", int, "heads to deactivate per layer (heart-lora methods)"),
    ("--scorer", "scorer", str, "responsiveness scorer"),
    ("--seed", "seed", int, "random seed"),
    ("--device", "device", str, "auto, cpu or cuda"),
    ("--dtype", "dtype", str, "fp32, tf32 or bf16 (TF32 matmuls / autocast on CUDA)"),
    ("--num-workers", "num_workers", int, "data-loading worker processes"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(
        parser, "YAML config file (see configs/)", "override one config key (repeatable)"
    )
    parser.add_argument("--output-dir", required=True, type=output_dir, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --output-dir")
    for flag, key, kind, help_text in FLAGS:
        parser.add_argument(flag, dest=f"flag_{key}", type=kind, help=help_text)


def run(args: argparse.Namespace) -> int:
    from heartlora.training.trainer import run_training

    flags = {
        name[len("flag_") :]: value
        for name, value in vars(args).items()
        if name.startswith("flag_")
    }
    config = build_config(args.config, args.set, flags)
    result = run_training(
        config, args.output_dir, resume=args.resume, overwrite=args.overwrite, log=say
    )
    if not World.from_launcher().is_main:
        return 0
    best = result["best_accuracy"]
    say(
        f"{config.method} on {config.task}: best {best:.2f}% final {result['final_accuracy']:.2f}% "
        f"trainable {result['trainable_parameters']:,} params, adapter {result['adapter_bytes']:,} "
        f"bytes, {result['wall_seconds']:.0f}s → {args.output_dir / 'result.json'}"
    )
    return 0
