"""Argument types and option groups shared by several commands."""

from __future__ import annotations

import argparse
from pathlib import Path


def output_dir(text: str) -> Path:
    """An ``--output-dir`` value: a folder path, never empty (``Path("")`` would silently mean
    the working directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"expected a folder path, got {text!r} (use . for the working directory)"
        )
    return Path(text)


def add_base_override_arguments(
    parser: argparse.ArgumentParser, action: str, plural: bool = False
) -> None:
    """``--model``, ``--checkpoint`` and ``--ignore-base-mismatch``: the base weights a command
    may use instead of those its adapter (``plural``: adapters) names; ``action`` is what the
    command does with them in the help text (``"merge into"``, ``"load"``)."""
    owner, whose, its = (
        ("adapters'", "the adapters were", "their")
        if plural
        else (
            "adapter's",
            "the adapter was",
            "its",
        )
    )
    parser.add_argument("--model", default=None, help=f"timm model name (overrides the {owner})")
    parser.add_argument(
        "--checkpoint", default=None, help=f"base weights file (overrides the {owner})"
    )
    parser.add_argument(
        "--ignore-base-mismatch",
        action="store_true",
        help=f"{action} --checkpoint/--model even though {whose} trained on other base "
        f"weights ({its} metadata's `weights`)",
    )
