"""VTAB-1k in the folder layout of the PETL community (NOAH, VPT, SSF, ...).

    <root>/<task>/train800.txt        800 training images
    <root>/<task>/val200.txt          200 validation images
    <root>/<task>/train800val200.txt  the union: what the paper trains on
    <root>/<task>/test.txt            the reported test set

    <root>/<task>/manifest.json       optional: {"num_classes": K, ...}

Each line of a split file is ``relative/path.jpg <int label>``, the path relative to
``<root>/<task>/`` (no spaces) and inside it (no ``..`` that climbs out). Blank lines are ignored.

Classes. ``num_classes`` is, in order of precedence: the value given (which must agree with the
manifest's), the manifest's ``num_classes``, the task's known count (`VTAB1K_NUM_CLASSES`), or
the largest label of the matching training split plus one. Labels of every split must lie in
``[0, num_classes)``. When the count is inferred, nothing else says which classes are real, so
every class ``0..K-1`` must occur in the training split (a stray ``4999`` would otherwise build a
5000-class model), so an evaluation label above them is out of range; a pinned count allows
classes without training images (VTAB-1k sun397 has 397 classes and only 1000 training images).
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from heartlora.data.base import (
    LabelledImageDataset,
    check_relative_path,
    data_error,
    is_dir,
    is_file,
    quote,
    require_dir,
    require_image,
)
from heartlora.io.documents import decode_text, read_json
from heartlora.models.backbone import MAX_CLASSES

VTAB1K_TASKS: dict[str, str] = {
    "cifar": "Natural",
    "caltech101": "Natural",
    "dtd": "Natural",
    "oxford_flowers102": "Natural",
    "oxford_iiit_pet": "Natural",
    "svhn": "Natural",
    "sun397": "Natural",
    "patch_camelyon": "Specialized",
    "eurosat": "Specialized",
    "resisc45": "Specialized",
    "diabetic_retinopathy": "Specialized",
    "clevr_count": "Structured",
    "clevr_dist": "Structured",
    "dmlab": "Structured",
    "kitti": "Structured",
    "dsprites_loc": "Structured",
    "dsprites_ori": "Structured",
    "smallnorb_azi": "Structured",
    "smallnorb_ele": "Structured",
}
"""The 19 VTAB-1k tasks (folder names as in NOAH/VPT) and their group."""

VTAB1K_GROUPS: tuple[str, ...] = ("Natural", "Specialized", "Structured")

VTAB1K_NUM_CLASSES: dict[str, int] = {
    "cifar": 100,
    "caltech101": 102,
    "dtd": 47,
    "oxford_flowers102": 102,
    "oxford_iiit_pet": 37,
    "svhn": 10,
    "sun397": 397,
    "patch_camelyon": 2,
    "eurosat": 10,
    "resisc45": 45,
    "diabetic_retinopathy": 5,
    "clevr_count": 8,
    "clevr_dist": 6,
    "dmlab": 6,
    "kitti": 4,
    "dsprites_loc": 16,
    "dsprites_ori": 16,
    "smallnorb_azi": 18,
    "smallnorb_ele": 9,
}
"""Number of classes of each VTAB-1k task."""

VTAB1K_SPLITS: tuple[str, ...] = ("train800", "val200", "train800val200", "test")

# The split whose labels define the classes when num_classes has to be inferred.
_TRAINING_SPLIT = {
    "train800": "train800",
    "val200": "train800",
    "train800val200": "train800val200",
    "test": "train800val200",
}
MANIFEST_NAME = "manifest.json"
"""A task folder's optional description; its ``num_classes`` pins the class count."""
_LINE_FORMAT = '"relative/path.jpg <int label>"'
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class SplitEntry:
    """One line of a VTAB-1k split file.

    Attributes:
        path: image path relative to the task folder, as written.
        label: the integer label.
        line: 1-based line number in the split file.
    """

    path: str
    label: int
    line: int


def split_file_name(split: str) -> str:
    """The file name of a VTAB-1k split, accepting the name with or without ``.txt``.

    Raises:
        HeartLoRAError: `split` is not one of `VTAB1K_SPLITS`.
    """
    name = split[:-4] if isinstance(split, str) and split.endswith(".txt") else split
    if name not in VTAB1K_SPLITS:
        raise data_error(
            f"unknown VTAB-1k split {quote(str(split))} (expected one of {', '.join(VTAB1K_SPLITS)})"
        )
    return f"{name}.txt"


def read_split_file(path: Path) -> list[SplitEntry]:
    """Parse a VTAB-1k split file.

    Args:
        path: the ``.txt`` file; one ``relative/path.jpg <int label>`` per line, blank lines ignored.

    Returns:
        One `SplitEntry` per non-blank line, in file order.

    Raises:
        HeartLoRAError: the file is missing, not UTF-8, empty, has a malformed line, a path that
            is absolute or leaves the task folder, or a negative label; the message names the
            file and the line.
    """
    if not is_file(path):
        raise data_error(f"split file {path} does not exist (expected lines {_LINE_FORMAT})")
    text = decode_text(path.read_bytes(), str(path), f"lines {_LINE_FORMAT}")
    entries = []
    first_line: dict[str, int] = {}
    # split("\n") (not splitlines) so that line numbers match what editors and `sed -n` show.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2 or not _INTEGER.fullmatch(fields[1]):
            raise data_error(f"{path} line {number}: expected {_LINE_FORMAT}, got {quote(line)}")
        relative, label = fields[0], int(fields[1])
        check_relative_path(relative, f"{path} line {number}", str(path.parent))
        if label < 0:
            raise data_error(
                f"{path} line {number}: negative label {label} (expected an integer >= 0)"
            )
        if relative in first_line:
            raise data_error(
                f"{path} line {number}: image {quote(relative)} is listed again (first at line "
                f"{first_line[relative]}; expected each image once)"
            )
        first_line[relative] = number
        entries.append(SplitEntry(relative, label, number))
    if not entries:
        raise data_error(f"split file {path} is empty (expected lines {_LINE_FORMAT})")
    return entries


def read_manifest_classes(task_dir: Path) -> int | None:
    """The class count that ``<task_dir>/manifest.json`` pins, or ``None`` when the folder has no
    manifest or the manifest has no ``num_classes`` key (`heartlora.bundled.tasks` writes one).

    Raises:
        HeartLoRAError: the manifest is not UTF-8 JSON, not an object, or its ``num_classes``
            is not a positive integer; the message names the file (and line and column).
    """
    path = task_dir / MANIFEST_NAME
    if not is_file(path):
        return None
    document = read_json(path, "a json object")
    if not isinstance(document, dict):
        raise data_error(f"{path}: expected a json object with num_classes")
    if "num_classes" not in document:
        return None
    value = document["num_classes"]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CLASSES:
        raise data_error(
            f"{path}: key num_classes is {quote(json.dumps(value), 40)} (expected an integer "
            f"in 1..{MAX_CLASSES})"
        )
    return value


class VTAB1kDataset(LabelledImageDataset):
    """One split of one VTAB-1k task, read from the PETL folder layout (see the module docstring).

    Args:
        root: folder holding one subfolder per task.
        task: task folder name, e.g. ``"cifar"`` (any folder name works; the 19 known tasks
            also know their class count).
        split: ``train800``, ``val200``, ``train800val200`` or ``test``, with or without ``.txt``.
        transform: applied to each RGB PIL image (see `heartlora.data.transforms.build_transform`).
        skip_corrupt: drop and count corrupt images instead of failing when one is read.
        num_classes: override the class count (default: known count, else inferred).

    Attributes:
        task, split: as given (`split` without ``.txt``).
        split_file: path of the split file that was read.
        num_classes, samples, skipped, skipped_paths: see `LabelledImageDataset`.

    Raises:
        HeartLoRAError: missing/empty folders, a missing split file, a malformed line, a missing
            image, a label out of range or unseen in training, a corrupt image (lazily, when read).
    """

    def __init__(
        self,
        root: str | Path,
        task: str,
        split: str,
        transform: Callable[[Image.Image], Any] | None = None,
        skip_corrupt: bool = False,
        num_classes: int | None = None,
    ) -> None:
        root = Path(root)
        file_name = split_file_name(split)
        expected = "one folder per VTAB-1k task"
        require_dir(root, "VTAB-1k root folder", expected)
        task_dir = root / str(task)
        if not is_dir(task_dir):
            hint = difflib.get_close_matches(
                str(task), [p.name for p in root.iterdir() if p.is_dir()], n=1
            )
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise data_error(
                f"VTAB-1k task folder {task_dir} does not exist (expected <root>/<task>/ with "
                f"{', '.join(s + '.txt' for s in VTAB1K_SPLITS)}){suggestion}"
            )
        require_dir(
            task_dir,
            "VTAB-1k task folder",
            "the split files " + ", ".join(s + ".txt" for s in VTAB1K_SPLITS),
        )
        self.task = str(task)
        self.split = file_name[:-4]
        self.split_file = task_dir / file_name
        entries = read_split_file(self.split_file)

        source = self._resolve_num_classes(task_dir, entries, num_classes)
        self._check_labels(entries, source)
        for entry in entries:
            require_image(task_dir / entry.path, f"{self.split_file} line {entry.line}")
        samples = [(task_dir / entry.path, entry.label) for entry in entries]
        super().__init__(samples, self.num_classes, transform=transform, skip_corrupt=skip_corrupt)

    def _resolve_num_classes(
        self, task_dir: Path, entries: list[SplitEntry], num_classes: int | None
    ) -> str:
        """Set `self.num_classes`; return how it was found, for messages."""
        pinned = read_manifest_classes(task_dir)
        if num_classes is not None:
            if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
                raise data_error(f"num_classes must be a positive integer (got {num_classes!r})")
            if pinned is not None and pinned != num_classes:
                raise data_error(
                    f"{task_dir / MANIFEST_NAME}: num_classes is {pinned}, but num_classes="
                    f"{num_classes} was given (expected the task's own count)"
                )
            self.num_classes = num_classes
            return f"num_classes={num_classes}, from the config or the training split"
        if pinned is not None:
            self.num_classes = pinned
            return f"{task_dir / MANIFEST_NAME} says {pinned} classes"
        if self.task in VTAB1K_NUM_CLASSES:
            self.num_classes = VTAB1K_NUM_CLASSES[self.task]
            return f"task {self.task} has {self.num_classes} classes"
        training_file = task_dir / f"{_TRAINING_SPLIT[self.split]}.txt"
        training = entries if training_file == self.split_file else read_split_file(training_file)
        labels = {entry.label for entry in training}
        self.num_classes = max(labels) + 1
        absent_count = self.num_classes - len(labels)  # labels are distinct and in range
        if absent_count:
            absent = list(itertools.islice((k for k in itertools.count() if k not in labels), 3))
            # Nothing pins the count, so the largest label defines it: a class without a single
            # training image is far more often a typo (4999 for 4) than a real class.
            top = max(training, key=lambda entry: entry.label)
            shown = ", ".join(map(str, absent)) + (", ..." if absent_count > 3 else "")
            raise data_error(
                f"{training_file} line {top.line}: label {top.label} implies {self.num_classes} "
                f"classes, but {absent_count} of them ({shown}) have no training image (expected "
                f"labels 0..K-1 that all occur; set num_classes, or num_classes in "
                f"{MANIFEST_NAME}, to pin the count)"
            )
        return f"{training_file} has labels up to {self.num_classes - 1}"

    def _check_labels(self, entries: list[SplitEntry], source: str) -> None:
        for entry in entries:
            if entry.label >= self.num_classes:
                raise data_error(
                    f"{self.split_file} line {entry.line}: label {entry.label} is out of range "
                    f"(expected 0..{self.num_classes - 1}: {source})"
                )
