"""Plain image trees: ``<root>/<split>/<class>/*.jpg`` or, without split folders, ``<root>/<class>/``.

Classes are the sorted names of the class folders. With split folders, the ``train`` folder
defines the classes whenever it exists, so every split uses the same class indices; a class
folder in another split that ``train`` lacks is an error. Hidden entries (names starting with
``.``) are ignored; image files are recognised by extension (`IMAGE_EXTENSIONS`, any case).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from heartlora.data.base import (
    IMAGE_EXTENSIONS,
    LabelledImageDataset,
    data_error,
    is_dir,
    quote,
    require_dir,
)

_LAYOUT = "one subfolder per class holding image files"


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir())


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


class ImageFolderDataset(LabelledImageDataset):
    """Images sorted into class folders (see the module docstring); no torchvision dependency.

    Args:
        root: the tree's root folder.
        split: split folder name under `root` (e.g. ``"train"``), or ``None`` when `root`
            holds the class folders directly.
        transform: applied to each RGB PIL image.
        skip_corrupt: drop and count corrupt images instead of failing when one is read.
        classes: class folder names in class-index order; default as in the module docstring.
        num_classes: if given, must equal the number of classes found (a check).

    Attributes:
        classes: class names; ``classes[i]`` is the folder of label ``i``.
        num_classes, samples, skipped, skipped_paths: see `LabelledImageDataset`.

    Raises:
        HeartLoRAError: missing or empty folders, a class folder without images, a class folder
            unknown to the training split, a `num_classes` mismatch, corrupt images (lazily).
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
        skip_corrupt: bool = False,
        classes: Sequence[str] | None = None,
        num_classes: int | None = None,
    ) -> None:
        root = Path(root)
        require_dir(root, "image folder", f"split folders or {_LAYOUT}")
        if split:
            folder = root / split
            if not is_dir(folder):
                found = _class_folders(root)
                raise data_error(
                    f"split folder {folder} does not exist (expected <root>/{split}/ with {_LAYOUT}; "
                    f"found folders: {', '.join(quote(f, 40) for f in found[:10]) or 'none'})"
                )
            require_dir(folder, "split folder", _LAYOUT)
        else:
            folder = root
        present = _class_folders(folder)
        if not present:
            raise data_error(f"image folder {folder} has no class folders (expected {_LAYOUT})")
        if classes is None:
            reference = root / "train" if split and is_dir(root / "train") else folder
            classes = present if reference == folder else _class_folders(reference)
            if not classes:
                raise data_error(
                    f"image folder {reference} has no class folders (expected {_LAYOUT})"
                )
        else:
            reference = None
        self.classes = list(classes)
        index = {name: i for i, name in enumerate(self.classes)}
        if num_classes is not None and num_classes != len(self.classes):
            raise data_error(
                f"image folder {reference or folder} has {len(self.classes)} classes "
                f"(expected num_classes={num_classes} as given)"
            )

        samples = []
        for name in present:
            if name not in index:
                known = (
                    "the training folder " + str(reference) if reference else "the given classes"
                )
                raise data_error(
                    f"class folder {folder / name} is not among {known} (expected one of its classes)"
                )
            images = _image_files(folder / name)
            if not images:
                raise data_error(
                    f"class folder {folder / name} has no images (expected files ending in "
                    f"{', '.join(IMAGE_EXTENSIONS)})"
                )
            samples.extend((path, index[name]) for path in images)
        super().__init__(samples, len(self.classes), transform=transform, skip_corrupt=skip_corrupt)
