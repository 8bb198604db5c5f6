"""`heartlora train`: one fine-tuning run from a YAML config, ``--set`` overrides and flags."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

import yaml

from heartlora.commands.arguments import add_config_arguments, output_dir
from heartlora.commands.console import say
from heartlora.training.config import TrainConfig, build_config, key_groups
from heartlora.training.distributed import World


def _yaml_value(text: str) -> Any:
    """A flag value read as ``--set`` reads one (YAML rules: numbers, lists, mappings, null)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"cannot parse {text!r} as a YAML value") from None


def _flag_options(annotation: str) -> dict[str, Any]:
    """`argparse` options for a `TrainConfig` field of this annotation: a string, number or
    comma-separated ``targets`` as typed, a bool as ``--key``/``--no-key``, anything else as
    YAML."""
    kind = annotation.split("|")[0].strip()
    if kind == "bool":
        return {"action": argparse.BooleanOptionalAction}
    simple = {"str": str, "int": int, "float": float, "list[str]": str}
    return {"type": simple.get(kind, _yaml_value), "metavar": kind.split("[")[0].upper()}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--key-name`` flag per `TrainConfig` key, grouped by section, with the key's own
    help text (``metadata["help"]``); a flag left out leaves the key to the config file."""
    items = {item.name: item for item in fields(TrainConfig)}
    for group, keys in key_groups().items():
        section = parser.add_argument_group(f"config keys: {group}")
        for key in keys:
            item = items[key]
            section.add_argument(
                f"--{key.replace('_', '-')}",
                dest=f"flag_{key}",
                default=None,
                help=item.metadata["help"].replace("%", "%%"),
                **_flag_options(item.type),
            )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(
        parser, "YAML config file (see configs/)", "override one config key (repeatable)"
    )
    parser.add_argument("--output-dir", required=True, type=output_dir, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --output-dir")
    add_config_flags(parser)


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
