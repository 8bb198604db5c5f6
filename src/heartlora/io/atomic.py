"""Atomic file writes: write a temporary file beside the target, fsync, then rename over it.

A reader (or a run resumed after SIGKILL) sees either the old file or the new one, never half.
A failed write (a full disk, a file-size limit, a read-only folder) removes its temporary file,
keeps the old file, and raises an `OSError` whose ``filename`` is the target, so the message
says which file could not be written. Temporary files are named ``.<name>.<random>.tmp``
(`temporary_files` finds the ones a killed process left behind).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically.

    Raises:
        OSError: creating, writing, syncing or renaming failed; ``filename`` is ``path`` and the
            message says that the previous file is kept. Errors ``write`` raises that are not
            `OSError` pass through unchanged (the temporary file is removed either way).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise _naming(error, path) from error
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp makes 0600, and so do writers that replace the file they are given
        # (safetensors' save_file); a file made by open() would follow the umask
        os.chmod(tmp, new_file_mode())
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        raise _naming(error, path) from error
    finally:
        tmp.unlink(missing_ok=True)
    return path


_umask: int | None = None


def _process_umask() -> int:
    """The process's umask, read once (reading it means setting it, which is not thread-safe)."""
    global _umask
    if _umask is None:
        _umask = os.umask(0o022)
        os.umask(_umask)
    return _umask


def new_file_mode() -> int:
    """0666 less the process's umask: the mode ``open(path, "w")`` gives a new file."""
    return 0o666 & ~_process_umask()


def new_folder_mode() -> int:
    """0777 less the process's umask: the mode ``mkdir`` gives a new folder (``mkdtemp``'s is
    0700)."""
    return 0o777 & ~_process_umask()


def _naming(error: OSError, path: Path) -> OSError:
    """``error`` restated for ``path``: ``[Errno 28] cannot write (No space left on device) ...``."""
    reason = error.strerror or str(error) or type(error).__name__
    return OSError(
        error.errno, f"cannot write ({reason}); the previous file, if any, is kept", str(path)
    )


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    Serialise in memory and write the bytes here (``safetensors.torch.save``, ``torch.save``
    into a buffer) rather than letting a library write the file: libraries report a full disk
    in their own exception types, this reports it as an `OSError` naming ``path``.
    """
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def folder_path_problem(path: Path) -> str | None:
    """Why ``path`` can be neither a folder nor become one (a file, a dangling symbolic link,
    a path below a file), in words naming the culprit; ``None`` when it can."""
    for folder in (path, *path.absolute().parents):
        if folder.is_symlink() and not folder.exists():
            return f"{folder} is a symbolic link to {os.readlink(folder)}, which does not exist"
        if folder.exists():
            return None if folder.is_dir() else f"{folder} is not a folder"
    return None


def temporary_files(folder: str | os.PathLike, names: tuple[str, ...]) -> list[Path]:
    """The temporary files `atomic_write` makes for targets called ``names`` in ``folder``
    (regular files only, never links); a process killed mid-write leaves them behind."""
    pattern = re.compile(
        r"\.(" + "|".join(re.escape(name) for name in names) + r")\.[A-Za-z0-9_]+\.tmp"
    )
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if pattern.fullmatch(path.name) and path.is_file() and not path.is_symlink()
    )
