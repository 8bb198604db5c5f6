"""`build_dataset`: one entry point for every dataset format, with the paper's transform.

The formats build on `heartlora.data.base`; this module imports them, they never import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from heartlora.data.base import DATASET_KINDS, LabelledImageDataset, data_error, quote
from heartlora.data.fgvc import FGVCDataset
from heartlora.data.imagefolder import ImageFolderDataset
from heartlora.data.transforms import build_transform
from heartlora.data.vtab1k import VTAB1kDataset


def build_dataset(
    kind: str,
    root: str | Path,
    task: str | None,
    split: str | None,
    img_size: int,
    *,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    augment: bool = False,
    skip_corrupt: bool = False,
    num_classes: int | None = None,
    image_dir: str | None = None,
) -> LabelledImageDataset:
    """Build a dataset of any supported format with the paper's transform.

    Args:
        kind: ``"vtab1k"``, ``"fgvc"`` or ``"imagefolder"``.
        root: the folder holding the tasks (VTAB-1k, FGVC) or the image tree (ImageFolder).
        task: VTAB-1k task (``"cifar"``, ...), FGVC dataset (``"CUB_200_2011"``, ...), or for
            ImageFolder an optional subfolder of `root` (``None``: `root` itself).
        split: VTAB-1k ``train800|val200|train800val200|test``; FGVC ``train|val|trainval|test``;
            ImageFolder a split folder name, or ``None`` for a tree without split folders.
        img_size: images are resized to ``img_size × img_size`` (bicubic).
        normalize: ``(mean, std)`` per channel, or ``None`` (the paper: no normalisation).
        augment: random resized crop + horizontal flip (training only; the paper uses none).
        skip_corrupt: drop and count corrupt images instead of failing on them.
        num_classes: the class count, overriding (VTAB-1k) or checking (FGVC, ImageFolder) the
            one found from the data.
        image_dir: FGVC only: image folder inside the dataset folder (default per dataset).

    Returns:
        A `LabelledImageDataset` with `num_classes`, `samples` and `skipped`.

    Raises:
        HeartLoRAError: unknown `kind` or any bad input found in the data.
    """
    if kind not in DATASET_KINDS:
        raise data_error(
            f"unknown dataset kind {quote(str(kind))} (expected one of {', '.join(DATASET_KINDS)})"
        )
    if kind != "imagefolder" and not task:
        raise data_error(f"dataset kind {kind} needs a task name (got {task!r})")
    if kind != "imagefolder" and not split:
        raise data_error(f"dataset kind {kind} needs a split name (got {split!r})")
    for what, name in (("task", task), ("split", split)):
        if name:
            _check_folder_name(what, str(name), root)
    if image_dir is not None and kind != "fgvc":
        raise data_error(f"image_dir applies to fgvc datasets only (got kind {kind})")
    transform = build_transform(img_size, normalize=normalize, augment=augment)
    if kind == "vtab1k":
        return VTAB1kDataset(
            root,
            task,
            split,
            transform=transform,
            skip_corrupt=skip_corrupt,
            num_classes=num_classes,
        )
    if kind == "fgvc":
        return FGVCDataset(
            root,
            task,
            split,
            transform=transform,
            image_dir=image_dir,
            skip_corrupt=skip_corrupt,
            num_classes=num_classes,
        )
    folder = Path(root) / task if task else Path(root)
    return ImageFolderDataset(
        folder, split, transform=transform, skip_corrupt=skip_corrupt, num_classes=num_classes
    )


def _check_folder_name(what: str, name: str, root: str | Path) -> None:
    """Refuse a task or split name that is absolute or climbs out with ``..``: both name a
    folder under the dataset root."""
    parts = name.replace("\\", "/").split("/")
    if "\x00" in name or name.startswith(("/", "\\")) or ".." in parts or Path(name).is_absolute():
        raise data_error(
            f"{what} {quote(name)} must name a folder inside {root} (expected a relative name "
            "without '..')"
        )
