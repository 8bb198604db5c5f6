"""The bundled mini-VTAB suite: build its tasks in memory or write them as VTAB-1k folders.

`materialize` writes, for each task, the layout that `heartlora.data.vtab1k` reads::

    <root>/<task>/images/{train,val,test}/000000.png     28x28 8-bit greyscale PNGs
    <root>/<task>/train800.txt  val200.txt  train800val200.txt  test.txt
    <root>/<task>/manifest.json                          seed, sizes, class names, format

Split files hold one `images/<split>/<index>.png <label>` line per image;
`train800val200.txt` is `train800.txt` followed by `val200.txt`. A task folder is written in a
temporary folder next to it and renamed into place, so a reader never sees half a task, and
a folder whose manifest matches and whose files are all there is left untouched.

Example:
    >>> from heartlora.bundled.tasks import materialize, list_tasks
    >>> root = materialize("/tmp/mini-vtab", tasks=["mnist", "animal-rotation"])
    >>> (root / "mnist" / "train800val200.txt").read_text().splitlines()[0]  # doctest: +SKIP
    'images/train/000000.png 3'
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from heartlora.bundled.mini_vtab import (
    HELD_OUT_TASKS,
    MINI_VTAB_TASKS,
    NINE_TASKS,
    SPLITS,
    Sample,
    TaskData,
    TaskSpec,
    build_task,
    get_task,
    list_tasks,
)
from heartlora.errors import HeartLoRAError
from heartlora.io.atomic import folder_path_problem, new_folder_mode

__all__ = [
    "FORMAT_VERSION",
    "HELD_OUT_TASKS",
    "MINI_VTAB_TASKS",
    "NINE_TASKS",
    "SPLIT_FILES",
    "Sample",
    "TaskData",
    "TaskSpec",
    "build_task",
    "default_data_root",
    "get_task",
    "list_tasks",
    "materialize",
]

FORMAT_VERSION = 1
"""Bumped whenever the images a seed produces change, so stale caches are rebuilt."""

SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train800.txt": ("train",),
    "val200.txt": ("val",),
    "train800val200.txt": ("train", "val"),
    "test.txt": ("test",),
}
"""VTAB-1k split file → the splits whose images it lists, in order."""

_MANIFEST = "manifest.json"


def default_data_root() -> Path:
    """Where mini-VTAB lives unless told otherwise.

    `$HEARTLORA_DATA` when set (it names the mini-VTAB root itself), else
    `$XDG_CACHE_HOME/heartlora/mini-vtab`, else `~/.cache/heartlora/mini-vtab`.
    """
    if os.environ.get("HEARTLORA_DATA"):
        return Path(os.environ["HEARTLORA_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "heartlora" / "mini-vtab"


def _manifest(spec: TaskSpec, seed: int) -> dict:
    return {
        "format": FORMAT_VERSION,
        "task": spec.name,
        "seed": seed,
        "group": spec.group,
        "num_classes": spec.num_classes,
        "class_names": list(spec.class_names),
        "sizes": dict(spec.sizes),
        "split_files": {
            name: sum(spec.sizes[s] for s in splits) for name, splits in SPLIT_FILES.items()
        },
    }


def _image_path(split: str, index: int) -> str:
    return f"images/{split}/{index:06d}.png"


def _read_manifest(task_dir: Path) -> dict | None:
    try:
        return json.loads((task_dir / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(task_dir: Path, expected: dict) -> bool:
    """True when the folder holds exactly the expected manifest and every file it promises."""
    if _read_manifest(task_dir) != expected:
        return False
    files = [task_dir / name for name in SPLIT_FILES]
    files += [
        task_dir / _image_path(split, i)
        for split in SPLITS
        for i in range(expected["sizes"][split])
    ]
    return all(f.is_file() for f in files)


def _write_task(task_dir: Path, data: TaskData, manifest: dict) -> None:
    lines: dict[str, list[str]] = {}
    for split in SPLITS:
        (task_dir / "images" / split).mkdir(parents=True)
        lines[split] = []
        for i, (img, label) in enumerate(data[split]):
            rel = _image_path(split, i)
            Image.fromarray(img).save(task_dir / rel, compress_level=1)
            lines[split].append(f"{rel} {label}\n")
    for name, splits in SPLIT_FILES.items():
        (task_dir / name).write_text("".join(line for s in splits for line in lines[s]))
    # The manifest goes last: its presence is what marks a folder as finished.
    (task_dir / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _materialize_task(root: Path, spec: TaskSpec, seed: int, overwrite: bool) -> None:
    task_dir = root / spec.name
    expected = _manifest(spec, seed)
    if not overwrite and task_dir.exists():
        if _is_complete(task_dir, expected):
            return
        found = _read_manifest(task_dir)
        if found is None or found.get("task") != spec.name:
            raise HeartLoRAError(
                f"{task_dir} exists but is not a mini-VTAB task folder (no valid {_MANIFEST}); "
                "remove it, pick another root, or pass overwrite=True"
            )
        if found.get("seed") != seed:
            raise HeartLoRAError(
                f"{task_dir} holds task {spec.name!r} built with seed {found.get('seed')}, not "
                f"{seed}; pass overwrite=True to rebuild it or use another root"
            )
        # Same task and seed, but an older format or missing files: a stale cache, rebuild it.

    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".tmp", dir=root))
    try:
        os.chmod(tmp, new_folder_mode())  # it becomes the task folder: the umask's mode
        _write_task(tmp, build_task(spec.name, seed), expected)
        if task_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".old", dir=root))
            os.replace(task_dir, old / spec.name)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, task_dir)
        except OSError:
            # Another process finished the same task between our check and our rename.
            if not _is_complete(task_dir, expected):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def materialize(
    root: str | os.PathLike[str] | None = None,
    tasks: Iterable[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write mini-VTAB tasks to disk in the VTAB-1k folder layout (see the module docstring).

    Args:
        root: folder that receives one sub-folder per task; `default_data_root()` when None.
        tasks: task names to write; all of `MINI_VTAB_TASKS` when None.
        seed: build seed, recorded in each task's `manifest.json`.
        overwrite: rebuild even when a complete folder exists, and replace folders that hold
            another seed or are not mini-VTAB folders.

    Returns:
        The root folder, so `materialize(...) / "mnist"` is a task folder.

    Raises:
        HeartLoRAError: for an unknown task name (before anything is written), or, without
            `overwrite`, when a task folder exists with another seed or is not ours.
    """
    if isinstance(tasks, str):
        raise HeartLoRAError(f"tasks must be a list of task names, got the string {tasks!r}")
    specs = [get_task(name) for name in (list_tasks() if tasks is None else tasks)]
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise HeartLoRAError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    root_path = Path(root).expanduser() if root is not None else default_data_root()
    problem = folder_path_problem(root_path)
    if problem is not None:
        from_environment = os.environ.get("HEARTLORA_DATA")
        named = (
            " ($HEARTLORA_DATA)"
            if from_environment and Path(from_environment).expanduser() == root_path
            else ""
        )
        raise HeartLoRAError(f"{problem}{named} (expected a folder for the mini-VTAB tasks)")
    root_path.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        _materialize_task(root_path, spec, seed, overwrite)
    return root_path
