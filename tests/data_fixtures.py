"""Tiny on-disk datasets with real image files, shared by the tests/test_data_*.py files."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image


def write_image(
    path: Path, size: tuple[int, int] = (12, 10), mode: str = "RGB", value: int = 128
) -> Path:
    """Write a small solid image; the format follows the extension (PNG, JPEG, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode in ("L", "P") else (value,) * len(mode)
    Image.new(mode, size, colour).save(path)
    return path


def truncated_bytes(fmt: str) -> bytes:
    """The first half of a valid, noisy image file in `fmt` (``"PNG"`` or ``"JPEG"``)."""
    image = Image.effect_noise((32, 32), 64).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    data = buffer.getvalue()
    return data[: len(data) // 2]


def make_vtab_task(
    root: Path,
    task: str = "toy",
    train_labels: tuple[int, ...] = (0, 1, 2, 0, 1, 2),
    val_labels: tuple[int, ...] = (0, 1),
    test_labels: tuple[int, ...] = (2, 1, 0),
) -> Path:
    """A VTAB-1k task folder under `root` with PNG and JPEG images and the four split files."""
    task_dir = root / task
    lines: dict[str, list[str]] = {}
    for split, labels in (
        ("train800", train_labels),
        ("val200", val_labels),
        ("test", test_labels),
    ):
        lines[split] = []
        for i, label in enumerate(labels):
            ext = "png" if i % 2 == 0 else "jpg"
            relative = f"images/{split}/{i:04d}.{ext}"
            write_image(task_dir / relative, value=20 * (label + 1) % 256)
            lines[split].append(f"{relative} {label}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, rows in lines.items():
        (task_dir / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return task_dir


def make_fgvc_dataset(
    root: Path,
    dataset: str = "CUB_200_2011",
    image_dir: str = "images",
    train: dict[str, int] | None = None,
    val: dict[str, int] | None = None,
    test: dict[str, int] | None = None,
) -> Path:
    """An FGVC dataset folder in VPT's layout with real images for every listed key."""
    dataset_dir = root / dataset
    splits = {
        "train": train
        if train is not None
        else {"001.a/x1.jpg": 1, "001.a/x2.png": 1, "005.b/y1.jpg": 5},
        "val": val if val is not None else {"005.b/y2.jpg": 5},
        "test": test if test is not None else {"001.a/z1.jpg": 1, "005.b/z2.png": 5},
    }
    for split, mapping in splits.items():
        for key in mapping:
            write_image(dataset_dir / image_dir / key)
        (dataset_dir / f"{split}.json").write_text(json.dumps(mapping, indent=1))
    return dataset_dir


def make_image_folder(root: Path, splits: dict[str, dict[str, int]]) -> Path:
    """An image tree: ``splits[split][class] = number of images``; split ``""`` means no split folder."""
    for split, classes in splits.items():
        for name, count in classes.items():
            for i in range(count):
                write_image(root / split / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root
