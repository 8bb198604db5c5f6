"""The run directory: which files make a run, refusing to mix two runs in one folder, and
changing nothing before every check has passed.

`run_training` calls, in this order: `check_run_directory` (reads only), then builds the data
and the model (which finds a mistyped ``data_root`` or a bad checkpoint), then
`lock_run_directory` (one run per folder at a time; stale temporary files of killed runs are
removed), and only then `clear_run_directory` (``--overwrite``) and `write_run_config`.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml

from heartlora.adapter_io import (
    CONFIG_NAME,
    RUN_ADAPTER_FOLDER,
    RUN_CONFIG_NAME,
    RUN_RESULT_NAME,
    STATE_WEIGHTS_NAME,
    WEIGHTS_NAME,
)
from heartlora.errors import HeartLoRAError
from heartlora.io.atomic import atomic_write_text, folder_path_problem, temporary_files
from heartlora.io.documents import parse_yaml, read_json
from heartlora.training.config import TrainConfig, result_neutral_keys
from heartlora.training.methods import get_method
from heartlora.training.run_state import CHECKPOINT_NAME

RUN_FILES = (RUN_RESULT_NAME, CHECKPOINT_NAME, "metrics.csv", RUN_ADAPTER_FOLDER, "tensorboard")
"""Entries whose presence means a folder holds a run."""

CONFIG_FILE = RUN_CONFIG_NAME
CONFIG_HEADER = "# heartlora train: the resolved config of this run (written by heartlora)\n"
"""The first line of the ``config.yaml`` a run writes: how a run knows the file is its own."""

LOCK_FILE = ".heartlora-run.lock"
"""Held (``flock``) by the process training in the folder; the kernel releases it when the
process dies, so a lock never outlives its run."""

_TEMPORARY = {
    ".": (RUN_RESULT_NAME, CHECKPOINT_NAME, "metrics.csv", CONFIG_FILE),
    RUN_ADAPTER_FOLDER: (WEIGHTS_NAME, CONFIG_NAME, STATE_WEIGHTS_NAME),
}


def check_run_directory(
    output_dir: Path, config: TrainConfig, resume: bool, overwrite: bool
) -> None:
    """Raise `HeartLoRAError` unless a run may use ``output_dir``; changes nothing.

    Refused: ``--resume`` with ``--overwrite``; a path that is a file, a dangling link or
    below a file; ``--resume`` without a checkpoint, without the saved config or with other
    settings than it; without ``--overwrite``, a folder holding another run or a
    ``config.yaml`` that no run wrote (the user's own, which would be replaced).
    """
    if resume and overwrite:
        raise HeartLoRAError(
            "--resume and --overwrite contradict each other (expected one: --resume continues "
            "the run in the folder, --overwrite replaces it)"
        )
    _check_creatable(output_dir)
    config_file = output_dir / CONFIG_FILE
    if resume:
        if not (output_dir / CHECKPOINT_NAME).is_file():
            raise HeartLoRAError(f"{output_dir}: nothing to resume (no {CHECKPOINT_NAME})")
        if not config_file.is_file():
            raise HeartLoRAError(
                f"{config_file} is missing: --resume compares it with the settings given, so "
                "that another run is never continued under this one's name (expected the "
                "config.yaml the run wrote; start again with --overwrite)"
            )
        previous = _read_saved_config(config_file)
        neutral = result_neutral_keys()
        differing = sorted(
            k
            for k, v in config.to_dict().items()
            if k in previous and previous[k] != v and k not in neutral
        )
        if differing:
            raise HeartLoRAError(
                f"{config_file}: --resume with different settings ({', '.join(differing)}); "
                "resume with the same config"
            )
        return
    if overwrite:
        return
    existing = [name for name in RUN_FILES if (output_dir / name).exists()]
    if existing:
        raise HeartLoRAError(
            f"{output_dir} holds another run ({', '.join(existing)}); pass --overwrite to replace "
            "it or --resume to continue it"
        )
    if config_file.exists() and not is_run_config(config_file):
        raise HeartLoRAError(
            f"{config_file} was not written by heartlora train (its first line is not "
            f"{CONFIG_HEADER.strip()!r}); pass --overwrite to replace it or choose another "
            "--output-dir"
        )


def _check_creatable(output_dir: Path) -> None:
    """Refuse an ``output_dir`` that is not a folder and cannot become one
    (`heartlora.io.atomic.folder_path_problem`)."""
    problem = folder_path_problem(output_dir)
    if problem is not None:
        raise HeartLoRAError(f"{problem} (expected a run directory)")


def is_run_config(path: Path) -> bool:
    """True when ``path`` is a ``config.yaml`` a run wrote (it starts with `CONFIG_HEADER`)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(CONFIG_HEADER)) == CONFIG_HEADER.encode()
    except OSError:
        return False


def saved_config(run_dir: Path) -> Any:
    """The ``config.yaml`` a run wrote in ``run_dir``, as parsed, or None when there is none."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    return parse_yaml(path.read_bytes(), str(path), "the YAML mapping the run wrote")


def _read_saved_config(path: Path) -> dict:
    data = saved_config(path.parent)
    if not isinstance(data, dict):
        raise HeartLoRAError(
            f"{path}: cannot read the saved config of the run (expected the YAML mapping the "
            "run wrote)"
        )
    return data


@contextmanager
def lock_run_directory(output_dir: Path) -> Iterator[None]:
    """Create ``output_dir``, hold its lock while the block runs, and remove the temporary
    files that killed runs left there (any left now are stale: no other run holds the lock).

    Raises:
        HeartLoRAError: another process holds the lock (a run is using the folder).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    handle = open(output_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held until the block ends)
    try:
        if not _try_lock(handle):
            handle.seek(0)
            owner = handle.read().strip() or "?"
            raise HeartLoRAError(
                f"{output_dir} is in use by another heartlora run (process {owner}); wait for it "
                "or choose another --output-dir"
            )
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        for folder, names in _TEMPORARY.items():
            for path in temporary_files(output_dir / folder, names):
                path.unlink(missing_ok=True)
        yield
    finally:
        handle.close()  # closing releases the lock


def _try_lock(handle) -> bool:
    """Take an exclusive lock on ``handle`` without waiting; True where locks are unsupported
    (no fcntl, or a file system without them), where the folder is then used unlocked."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return True
    return True


def clear_run_directory(output_dir: Path, kept: set[str] = frozenset()) -> None:
    """Remove the previous run's files (``--overwrite``): `RUN_FILES` and ``config.yaml``, but
    for the names in ``kept``."""
    for name in (*RUN_FILES, CONFIG_FILE):
        target = output_dir / name
        if name in kept:
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def run_entries(output_dir: Path) -> set[str]:
    """The names of `RUN_FILES` and ``config.yaml`` present in ``output_dir`` now."""
    return {name for name in (*RUN_FILES, CONFIG_FILE) if (output_dir / name).exists()}


def undo_failed_start(output_dir: Path, kept: set[str], folder_existed: bool) -> None:
    """Remove what a run that failed before its first step wrote: the `RUN_FILES` and
    ``config.yaml`` not in ``kept`` (those present before it started), and the folder itself,
    with its lock file, when the run created it."""
    with suppress(OSError):  # best effort: the failure that brought us here is what matters
        clear_run_directory(output_dir, kept)
    if not folder_existed:
        (output_dir / LOCK_FILE).unlink(missing_ok=True)
        with suppress(OSError):  # something else was put there meanwhile
            output_dir.rmdir()


def write_run_config(output_dir: Path, config: TrainConfig) -> None:
    """Write the resolved config as ``config.yaml``, marked with `CONFIG_HEADER`."""
    text = CONFIG_HEADER + yaml.safe_dump(config.to_dict(), sort_keys=False)
    atomic_write_text(output_dir / CONFIG_FILE, text)


def finished_result(run_dir: Path, method: str, keys: Sequence[str]) -> dict | None:
    """``result.json`` of the finished run in ``run_dir`` trained with ``method``, or ``None``
    when the run is not finished: no ``result.json``, one of ``keys`` missing or not a finite
    number, or a file that ``method`` stores in ``adapter/`` missing (deleted since).

    Raises:
        HeartLoRAError: ``result.json`` is not JSON or not a JSON object (the file named).
    """
    path = run_dir / RUN_RESULT_NAME
    if not path.is_file():
        return None
    result = read_json(path, "the result.json a finished run writes")
    if not isinstance(result, dict):
        raise HeartLoRAError(f"{path}: expected the JSON object a finished run writes")
    for key in keys:
        value = result.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if not math.isfinite(value):
            return None
    adapter = run_dir / RUN_ADAPTER_FOLDER
    if not all((adapter / name).is_file() for name in get_method(method).files):
        return None
    return result
