"""The run directory: which files make a run, and refusing to mix two runs in one folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from heartlora.errors import HeartLoRAError
from heartlora.training.config import TrainConfig

RUN_FILES = ("result.json", "checkpoint.pt", "metrics.csv")
"""Files whose presence means a folder holds a run."""


def prepare_run_directory(
    output_dir: Path, config: TrainConfig, resume: bool, overwrite: bool
) -> None:
    """Refuse a directory that holds another run unless told to resume or overwrite it."""
    existing = [name for name in RUN_FILES if (output_dir / name).exists()]
    if resume:
        if not (output_dir / "checkpoint.pt").is_file():
            raise HeartLoRAError(f"{output_dir}: nothing to resume (no checkpoint.pt)")
        saved = output_dir / "config.yaml"
        if saved.is_file():
            previous = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
            differing = sorted(
                k for k, v in config.to_dict().items() if k in previous and previous[k] != v
            )
            if differing:
                raise HeartLoRAError(
                    f"{saved}: --resume with different settings ({', '.join(differing)}); "
                    "resume with the same config"
                )
        return
    if existing and not overwrite:
        raise HeartLoRAError(
            f"{output_dir} holds another run ({', '.join(existing)}); pass --overwrite to replace "
            "it or --resume to continue it"
        )
    if existing:
        for name in (*RUN_FILES, "adapter", "tensorboard", "config.yaml"):
            target = output_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
