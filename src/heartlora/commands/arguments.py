"""Argument types shared by several commands."""

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
