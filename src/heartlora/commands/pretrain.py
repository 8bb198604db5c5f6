"""`heartlora pretrain`: train the bundled base ViT from scratch on Fashion-MNIST."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from heartlora.bundled.fashion_mnist import DEFAULT_DATA_DIR
from heartlora.bundled.pretrain import PretrainConfig, pretrain
from heartlora.errors import HeartLoRAError

_DEFAULTS = PretrainConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of `heartlora pretrain`."""
    parser.add_argument(
        "--output", required=True, type=Path, help="safetensors file to write the weights to"
    )
    parser.add_argument(
        "--epochs", type=int, default=_DEFAULTS.epochs, help="passes over the training set"
    )
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="random seed")
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"directory of the Fashion-MNIST idx files (default {DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--batch-size", type=int, default=_DEFAULTS.batch_size, help="images per step"
    )
    parser.add_argument("--lr", type=float, default=_DEFAULTS.lr, help="peak learning rate")
    parser.add_argument(
        "--num-heads",
        type=int,
        default=_DEFAULTS.num_heads,
        help="attention heads per layer (must divide the width 96; fine-tune such a base with "
        "model_kwargs: {num_heads: N})",
    )
    parser.add_argument(
        "--no-augment", action="store_true", help="train without random crop and flip"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--summary", type=Path, default=None, help="also write the run's result as JSON here"
    )


def run(args: argparse.Namespace) -> int:
    """Pretrain, write the checkpoint, print the test accuracy; returns the exit code."""
    if args.threads is not None:
        if args.threads < 1:
            raise HeartLoRAError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    config = PretrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        augment=not args.no_augment,
        seed=args.seed,
        data_dir=args.data_dir,
        num_heads=args.num_heads,
    )
    result = pretrain(config, output=args.output, log=lambda line: print(line, flush=True))
    if args.summary is not None:
        summary = asdict(result)
        summary["output"] = str(result.output)
        summary["torch_version"] = torch.__version__
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    return 0
