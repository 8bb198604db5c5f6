"""Where a suite's runs train: the shared shape of the two executors.

A multi-run command (`heartlora suite`, `heartlora frontier`, ``benchmarks/vtab1k.py``) plans
its runs, reuses the finished ones, and hands the rest to an executor:

* `heartlora.training.local_executor.LocalExecutor` — this machine: one run after another in
  this process, or ``jobs`` worker processes, each on its own GPU when there are several;
* `heartlora.training.slurm_executor.SlurmExecutor` — a SLURM cluster through submitit: one
  array task per run, requeued and resumed when SLURM stops it.

Both finish a run with the same function (`finish_run`: reuse, resume or train), so a run's
result does not depend on where it trained, and both call ``report(index, result, status)`` as
each run finishes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from heartlora.adapter_io import RUN_RESULT_NAME
from heartlora.errors import HeartLoRAError
from heartlora.training import run_directory
from heartlora.training.config import TrainConfig
from heartlora.training.run_directory import saved_config
from heartlora.training.run_state import CHECKPOINT_NAME

RESULT_KEYS = ("final_accuracy", "trainable_parameters", "adapter_bytes", "wall_seconds")
"""The keys of ``result.json`` a suite reads from each run."""


@dataclass(frozen=True)
class PlannedRun:
    """One run of a multi-run command.

    Attributes:
        label: how messages name it (``mnist lora seed 0``).
        settings: its resolved `TrainConfig` as plain data (``config.to_dict()``).
        run_dir: its folder.
    """

    label: str
    settings: dict[str, Any]
    run_dir: Path


Report = Callable[[int, dict[str, Any], str], None]
"""``report(index, result, status)``: run ``index`` finished with ``result`` (its result.json);
``status`` says how (``reused``, ``41s``)."""


class RunFailed(HeartLoRAError):
    """A run of a multi-run command failed; the message names the run and where its log is."""


class Executor(Protocol):
    """Finishes runs somewhere (`LocalExecutor`, `SlurmExecutor`)."""

    def run(self, runs: Sequence[PlannedRun], report: Report) -> bool:
        """Finish every run of ``runs``, calling ``report`` as each finishes.

        Returns:
            True when every run finished; False when the executor returned before (SLURM's
            ``--no-wait``: the runs go on without this process).

        Raises:
            RunFailed: a run failed (after the others were stopped or had finished).
            KeyboardInterrupt: Ctrl-C; the runs stopped have saved their checkpoints.
        """
        ...


def finished_result(run_dir: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The result of the finished run in ``run_dir`` when it trained ``config``, else None: a
    result.json without the keys a suite reads, or a run whose ``adapter/`` files are gone, is
    not finished (`heartlora.training.run_directory.finished_result`) and is finished again."""
    if not (run_dir / RUN_RESULT_NAME).is_file() or saved_config(run_dir) != config.to_dict():
        return None
    return run_directory.finished_result(run_dir, config.method, RESULT_KEYS)


def finish_run(settings: dict[str, Any], run_dir: Path) -> tuple[dict[str, Any], str]:
    """Finish one run: reuse a finished one, resume an interrupted one, or train from scratch.

    Top-level and given plain data, so that a worker process or a SLURM job can run it.

    Returns:
        The run's result (its result.json) and how it finished (``reused``, ``41s``).
    """
    from heartlora.training.trainer import run_training

    config = TrainConfig(**settings)
    result = finished_result(run_dir, config)
    if result is not None:
        return result, "reused"
    resume = (run_dir / CHECKPOINT_NAME).is_file() and saved_config(run_dir) == config.to_dict()
    result = run_training(config, run_dir, resume=resume, overwrite=not resume, log=lambda *_: None)
    return result, f"{result['wall_seconds']:.0f}s"
