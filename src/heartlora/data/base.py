"""Shared pieces of the dataset package: image opening and the common dataset class.

Every dataset format (VTAB-1k split files, FGVC json splits, ImageFolder trees) turns its listing
into `samples: list[tuple[Path, int]]` and hands it to `LabelledImageDataset`, which owns
loading, the transform and the corrupt-image policy:

* default (`skip_corrupt=False`): listings are checked when the dataset is built (every listed
  image must exist); images are decoded lazily, and a corrupt or truncated one raises
  `HeartLoRAError` naming its path when it is first read.
* `skip_corrupt=True`: every image is fully decoded once, in the building process, when the
  dataset is built; corrupt ones are dropped from `samples`, counted in `skipped` and listed in
  `skipped_paths`. Checking up front (instead of skipping inside `__getitem__`) keeps the count
  exact with DataLoader workers, keeps `len(dataset)` truthful and needs no special collate.
  It costs one extra decode per image, paid once.

Missing images are always an error, also with `skip_corrupt=True`: a listing that points to
nothing is a mistake in the listing, not damaged data.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from heartlora.errors import HeartLoRAError
from heartlora.models.backbone import MAX_CLASSES

DATASET_KINDS: tuple[str, ...] = ("vtab1k", "fgvc", "imagefolder")
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
)


def data_error(message: str) -> HeartLoRAError:
    """A `HeartLoRAError` whose message is guaranteed to be a single line.

    Line breaks that slipped in through user-controlled text (a folder name, a json key) are
    escaped, because the CLI prints only the first line of an error.
    """
    lines = message.splitlines()
    return HeartLoRAError("\\n".join(lines) if len(lines) > 1 else message)


def quote(text: str, limit: int = 80) -> str:
    """`text` in double quotes, shortened to `limit` characters, with every control character escaped."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return json.dumps(text, ensure_ascii=True)


def is_file(path: Path) -> bool:
    """Whether `path` is an existing regular file; unusable names (NUL bytes, too long) are not."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def is_dir(path: Path) -> bool:
    """Whether `path` is an existing directory; unusable names count as missing."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def require_dir(path: Path, what: str, expected: str) -> None:
    """Raise `HeartLoRAError` unless `path` is a non-empty directory.

    Args:
        path: the folder to check.
        what: how the message names the folder, e.g. ``"VTAB-1k task folder"``.
        expected: what the folder should contain, for the message.
    """
    if not is_dir(path):
        state = "is not a folder" if path.exists() else "does not exist"
        raise data_error(f"{what} {path} {state} (expected {expected})")
    if not any(path.iterdir()):
        raise data_error(f"{what} {path} is empty (expected {expected})")


def check_relative_path(relative: str, where: str, folder: str) -> None:
    """Raise `HeartLoRAError` naming `where` unless `relative` is a path that stays inside the
    folder the message calls `folder` (e.g. the task folder's path).

    The check is lexical: an absolute path, a NUL byte, or ``..`` components that climb above
    `folder` are refused; symbolic links inside `folder` are the user's own layout and are
    followed. Both ``/`` and ``\\`` count as separators, so a path means the same on every system.
    """
    windows = PureWindowsPath(relative)
    if (
        not relative
        or "\x00" in relative
        or PurePosixPath(relative).is_absolute()
        or windows.is_absolute()
        or windows.drive
    ):
        raise data_error(
            f"{where}: expected an image path relative to {folder}, got {quote(relative)}"
        )
    depth = 0
    for part in relative.replace("\\", "/").split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise data_error(
                    f"{where}: image path {quote(relative)} leaves {folder} (expected a path "
                    "inside it, without leading '..')"
                )
        elif part not in ("", "."):
            depth += 1


def require_image(path: Path, where: str) -> None:
    """Raise `HeartLoRAError` naming `where` (e.g. ``"/x/test.txt line 7"``) if `path` is no file."""
    if not is_file(path):
        state = "is a folder" if is_dir(path) else "does not exist"
        raise data_error(f"{where}: image {path} {state} (expected an image file)")


_EIGHT_BIT_MODES = frozenset(
    {"1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr"}
)
"""Pixel modes that Pillow maps to 8-bit RGB without losing range: 1- and 8-bit channels
(alpha dropped, CMYK and YCbCr converted by their colour model)."""

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
"""16-bit grey (PNG and TIFF with 16 bits per sample): scaled to 8 bits, never clipped."""


def to_rgb8(image: Image.Image, path: Path) -> Image.Image:
    """``image`` as 8-bit RGB, by its pixel mode and bit depth.

    8-bit modes are converted by Pillow (alpha is dropped); 16-bit grey is scaled by 255/65535
    and rounded (Pillow's own conversion clips every value above 255). 16-bit colour PNGs arrive
    from Pillow already reduced to 8-bit ``RGB``/``RGBA``. Modes without a fixed range (``I``,
    32-bit integers; ``F``, floats) or without a faithful conversion (``LAB``, ``HSV``, ...) are
    refused: guessing their range would train on an image nobody looked at.

    Raises:
        HeartLoRAError: a mode that cannot be mapped faithfully; the message names the path.
    """
    if image.mode in _EIGHT_BIT_MODES:
        return image.convert("RGB")
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.uint32)
        scaled = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB")
    raise data_error(
        f"image {path} has pixel mode {image.mode!r}, which has no faithful 8-bit RGB form "
        "(expected 1-, 8- or 16-bit grey, palette, RGB(A), CMYK or YCbCr; convert it first)"
    )


SKIP_CORRUPT_HINT = "pass skip_corrupt=True to skip such images"


def open_image(path: Path, hint: str | None = SKIP_CORRUPT_HINT) -> Image.Image:
    """Open and fully decode the image at `path` as 8-bit RGB (`to_rgb8`).

    Args:
        path: the image file.
        hint: what the caller's user can do about a corrupt image, appended to that message
            (``None`` for none: `heartlora predict` has no ``skip_corrupt``).

    Returns:
        The decoded image, mode ``"RGB"`` (grey, palette, CMYK and alpha images are converted,
        16-bit grey scaled).

    Raises:
        HeartLoRAError: the file is missing, not an image, corrupt or truncated, or its pixel
            mode has no faithful 8-bit form; the message names the path.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb8(image, path)
    except HeartLoRAError:
        raise
    except IsADirectoryError:
        raise data_error(f"image {path} is a folder (expected an image file)") from None
    except FileNotFoundError:
        raise data_error(f"image {path} does not exist (expected an image file)") from None
    # Decoders of broken files raise a wide, undocumented mix (OSError, SyntaxError, ValueError,
    # struct.error, DecompressionBombError, ...): at this boundary any failure means "corrupt".
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise data_error(
            f"corrupt or truncated image {path}: {reason} (expected a readable image"
            + (f"; {hint})" if hint else ")")
        ) from None


class LabelledImageDataset(Dataset):
    """A list of (image path, integer label) pairs served as ``(transform(image), label)``.

    Args:
        samples: ``(path, label)`` pairs; labels in ``[0, num_classes)``.
        num_classes: number of classes of the task (the classifier's output size).
        transform: applied to the RGB PIL image; ``None`` returns the PIL image itself.
        skip_corrupt: decode every image now and drop corrupt ones (see the module docstring).

    Attributes:
        samples: the kept ``(path, label)`` pairs.
        num_classes: as given.
        skipped: number of corrupt images dropped (always 0 without `skip_corrupt`).
        skipped_paths: their paths.

    Raises:
        HeartLoRAError: no samples, a label outside ``[0, num_classes)``, or (with
            `skip_corrupt`) every image corrupt.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        num_classes: int,
        transform: Callable[[Image.Image], Any] | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        self.samples: list[tuple[Path, int]] = list(samples)
        self.num_classes = num_classes
        self.transform = transform
        self.skipped = 0
        self.skipped_paths: list[Path] = []
        if not self.samples:
            raise data_error("dataset has no samples (expected at least one image)")
        if num_classes > MAX_CLASSES:
            raise data_error(
                f"the dataset has {num_classes} classes (expected at most {MAX_CLASSES}: a larger "
                "count is a typo in a label or a num_classes)"
            )
        for path, label in self.samples:
            if not 0 <= label < num_classes:
                raise data_error(f"image {path} has label {label} (expected 0..{num_classes - 1})")
        if skip_corrupt:
            self._drop_corrupt()

    def _drop_corrupt(self) -> None:
        kept = []
        for path, label in self.samples:
            try:
                open_image(path)
            except HeartLoRAError:
                self.skipped_paths.append(path)
                continue
            kept.append((path, label))
        self.skipped = len(self.skipped_paths)
        if not kept:
            raise data_error(
                f"all {self.skipped} images are corrupt, first {self.skipped_paths[0]} "
                "(expected at least one readable image)"
            )
        self.samples = kept

    @property
    def labels(self) -> list[int]:
        """The label of every sample, in order."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = open_image(path)
        return (self.transform(image) if self.transform is not None else image), label
