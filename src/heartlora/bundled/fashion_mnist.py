"""Fashion-MNIST from its original idx files, for pretraining the bundled base model.

The data set (Xiao, Rasul & Vollgraf 2017, MIT licence) is four idx files: `train-images-idx3-ubyte`,
`train-labels-idx1-ubyte` (60 000 images) and `t10k-…` (10 000 test images), each optionally gzipped.
Debian ships them in `/usr/share/datasets/fashion-mnist/` (`apt-get install dataset-fashion-mnist`).

An idx file is a 4-byte magic number — two zero bytes, a type code (0x08 = unsigned byte) and the
number of dimensions — then one big-endian uint32 size per dimension, then the data in C order.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from heartlora.errors import HeartLoRAError

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_DATA_DIR",
    "FashionMNIST",
    "load_fashion_mnist",
    "read_idx",
    "to_rgb_float",
]

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an unsigned-byte idx file, gzipped or not.

    Args:
        path: the file; gzip is recognised by its content, not its name.

    Returns:
        A uint8 tensor with the shape stored in the header, e.g. (N, 28, 28) or (N,).

    Raises:
        HeartLoRAError: if the file is missing, is not an unsigned-byte idx file, or is truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise HeartLoRAError(f"idx file {path} does not exist")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise HeartLoRAError(f"{path} is not an idx file: expected a magic number starting 0x0000")
    if raw[2] != _UBYTE:
        raise HeartLoRAError(f"{path}: idx type code {raw[2]:#04x}, expected {_UBYTE:#04x} (ubyte)")
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise HeartLoRAError(f"{path}: idx header truncated ({len(raw)} bytes for {ndim} dims)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_size + _prod(shape)
    if len(raw) != expected:
        raise HeartLoRAError(
            f"{path}: {len(raw)} bytes, expected {expected} for an idx array of shape {shape}"
        )
    data = torch.frombuffer(bytearray(raw[header_size:]), dtype=torch.uint8)
    return data.reshape(shape)


def _prod(shape: tuple[int, ...]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def _find_idx(data_dir: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise HeartLoRAError(
        f"Fashion-MNIST file {stem}[.gz] not found in {data_dir}; install the data with "
        f"`apt-get install dataset-fashion-mnist` (files in {DEFAULT_DATA_DIR}) or pass the "
        "directory holding the idx files"
    )


def load_fashion_mnist(
    split: str = "train", data_dir: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of Fashion-MNIST (or any idx set laid out the same way).

    Args:
        split: `"train"` (60 000 images) or `"test"` (10 000).
        data_dir: directory holding `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`;
            default `DEFAULT_DATA_DIR`.

    Returns:
        `(images, labels)`: uint8 (N, H, W) grayscale images and int64 (N,) labels in 0…9.

    Raises:
        HeartLoRAError: if the split is unknown, a file is missing or malformed, or the image and
            label counts differ.
    """
    if split not in _SPLIT_PREFIX:
        raise HeartLoRAError(f"unknown Fashion-MNIST split {split!r}; expected 'train' or 'test'")
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    if not data_dir.is_dir():
        raise HeartLoRAError(
            f"Fashion-MNIST directory {data_dir} does not exist; install the data with "
            "`apt-get install dataset-fashion-mnist` or pass the directory holding the idx files"
        )
    prefix = _SPLIT_PREFIX[split]
    images = read_idx(_find_idx(data_dir, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find_idx(data_dir, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1:
        raise HeartLoRAError(
            f"Fashion-MNIST {split} split in {data_dir}: expected (N, H, W) images and (N,) labels, "
            f"got shapes {tuple(images.shape)} and {tuple(labels.shape)}"
        )
    if images.shape[0] != labels.shape[0]:
        raise HeartLoRAError(
            f"Fashion-MNIST {split} split in {data_dir}: {images.shape[0]} images but "
            f"{labels.shape[0]} labels"
        )
    if labels.numel() and int(labels.max()) >= len(CLASS_NAMES):
        raise HeartLoRAError(
            f"Fashion-MNIST {split} labels in {data_dir} go up to {int(labels.max())}; expected 0…9"
        )
    return images, labels.long()


def to_rgb_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 grayscale images (…, H, W) → float (…, 3, H, W) in [0, 1], the base model's input."""
    return (images.float() / 255.0).unsqueeze(-3).expand(*images.shape[:-2], 3, *images.shape[-2:])


class FashionMNIST(Dataset):
    """Fashion-MNIST as `(image, label)` pairs: float 3×28×28 images in [0, 1], int labels.

    Args:
        split: `"train"` or `"test"`.
        data_dir: directory of the idx files (default `DEFAULT_DATA_DIR`).
        transform: optional callable applied to each 3×H×W image tensor.

    Raises:
        HeartLoRAError: as `load_fashion_mnist`.
    """

    classes = CLASS_NAMES

    def __init__(
        self,
        split: str = "train",
        data_dir: str | Path | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.images, self.labels = load_fashion_mnist(split, data_dir)
        self.transform = transform

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = to_rgb_float(self.images[index]).contiguous()
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])
