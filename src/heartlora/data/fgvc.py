"""FGVC datasets with VPT-style json splits.

    <root>/<dataset>/train.json   {"relative/image.jpg": label, ...}
    <root>/<dataset>/val.json
    <root>/<dataset>/test.json
    <root>/<dataset>/<image_dir>/relative/image.jpg

The image folder depends on the dataset (`FGVC_IMAGE_DIRS`, VPT's layout) and can be overridden.
Split ``trainval`` is train.json followed by val.json.

Labels are remapped the way VPT does it: the sorted distinct labels of train.json become classes
``0..K-1`` (`class_ids` keeps the original ids, e.g. NABirds' sparse ones). Every split uses
train.json's mapping, so training and evaluation agree; a label of another split that train.json
lacks is an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
from heartlora.io.documents import decode_text

FGVC_IMAGE_DIRS: dict[str, str] = {
    "CUB_200_2011": "images",
    "OxfordFlowers": "",
    "StanfordCars": "",
    "StanfordDogs": "Images",
    "nabirds": "images",
}
"""Default image folder, relative to ``<root>/<dataset>/``, of each FGVC dataset (VPT layout)."""

FGVC_NUM_CLASSES: dict[str, int] = {
    "CUB_200_2011": 200,
    "OxfordFlowers": 102,
    "StanfordCars": 196,
    "StanfordDogs": 120,
    "nabirds": 555,
}
"""Number of classes of each FGVC dataset."""

FGVC_SPLITS: tuple[str, ...] = ("train", "val", "trainval", "test")

_JSON_FORMAT = 'a json object {"relative/image.jpg": <int label>, ...}'


class _Pairs(list):
    """A json object kept as its (key, value) pairs, so that duplicate keys can be reported."""


def read_split_json(path: Path) -> dict[str, int]:
    """Read one VPT-style json split.

    Args:
        path: the ``.json`` file, a single object mapping image paths to integer labels.

    Returns:
        The mapping, in file order.

    Raises:
        HeartLoRAError: missing file, invalid UTF-8 or json (the message gives line and column),
            not an object, a duplicate key, a path that is absolute or leaves the image folder, a
            non-integer or negative label, or no entries.
    """
    if not is_file(path):
        raise data_error(f"split file {path} does not exist (expected {_JSON_FORMAT})")
    text = decode_text(path.read_bytes(), str(path), _JSON_FORMAT)
    try:
        document = json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as error:
        raise data_error(
            f"{path} line {error.lineno} column {error.colno}: invalid json: {error.msg} "
            f"(expected {_JSON_FORMAT})"
        ) from None
    except RecursionError:
        raise data_error(f"{path}: json nested too deeply (expected {_JSON_FORMAT})") from None
    if not isinstance(document, _Pairs):
        raise data_error(
            f"{path}: top level is a json {_json_type(document)} (expected {_JSON_FORMAT})"
        )
    mapping: dict[str, int] = {}
    for key, label in document:
        where = f"{path} entry {quote(key)}"
        if key in mapping:
            raise data_error(f"{where}: duplicate image path (expected each image once)")
        check_relative_path(key, where, "the image folder")
        if isinstance(label, bool) or not isinstance(label, int):
            raise data_error(f"{where}: label is a json {_json_type(label)} (expected an integer)")
        if label < 0:
            raise data_error(f"{where}: negative label {label} (expected an integer >= 0)")
        mapping[key] = label
    if not mapping:
        raise data_error(f"split file {path} has no entries (expected {_JSON_FORMAT})")
    return mapping


def _json_type(value: object) -> str:
    if isinstance(value, _Pairs):
        return "object"
    if isinstance(value, bool):
        return "boolean"
    return {list: "array", str: "string", int: "integer", float: "number", type(None): "null"}.get(
        type(value), type(value).__name__
    )


class FGVCDataset(LabelledImageDataset):
    """One split of an FGVC dataset in VPT's json layout (see the module docstring).

    Args:
        root: folder holding one subfolder per dataset.
        dataset: dataset folder name, e.g. ``"CUB_200_2011"``.
        split: ``train``, ``val``, ``trainval`` or ``test`` (with or without ``.json``).
        transform: applied to each RGB PIL image.
        image_dir: image folder relative to the dataset folder; default `FGVC_IMAGE_DIRS`
            for known datasets, the dataset folder itself otherwise.
        skip_corrupt: drop and count corrupt images instead of failing when one is read.
        num_classes: if given, must equal the number of classes in train.json (a check).

    Attributes:
        dataset, split: as given (`split` without ``.json``).
        class_ids: original label of each class index.
        num_classes, samples, skipped, skipped_paths: see `LabelledImageDataset`.

    Raises:
        HeartLoRAError: missing/empty folders or split files, bad json, missing images, labels
            absent from train.json, a `num_classes` mismatch, corrupt images (lazily).
    """

    def __init__(
        self,
        root: str | Path,
        dataset: str,
        split: str,
        transform: Callable[[Image.Image], Any] | None = None,
        image_dir: str | None = None,
        skip_corrupt: bool = False,
        num_classes: int | None = None,
    ) -> None:
        root = Path(root)
        name = split[:-5] if isinstance(split, str) and split.endswith(".json") else split
        if name not in FGVC_SPLITS:
            raise data_error(
                f"unknown FGVC split {quote(str(split))} (expected one of {', '.join(FGVC_SPLITS)})"
            )
        require_dir(root, "FGVC root folder", "one folder per FGVC dataset")
        dataset_dir = root / str(dataset)
        require_dir(
            dataset_dir, "FGVC dataset folder", "train.json, val.json, test.json and the images"
        )
        if image_dir is None:
            image_dir = FGVC_IMAGE_DIRS.get(str(dataset), "")
        image_root = dataset_dir / image_dir
        if not is_dir(image_root):
            raise data_error(
                f"FGVC image folder {image_root} does not exist (expected the images of "
                f"{dataset}; set image_dir to the folder that holds them)"
            )
        self.dataset = str(dataset)
        self.split = name

        train = read_split_json(dataset_dir / "train.json")
        self.class_ids: list[int] = sorted(set(train.values()))
        if num_classes is not None and num_classes != len(self.class_ids):
            raise data_error(
                f"{dataset_dir / 'train.json'} has {len(self.class_ids)} classes "
                f"(expected num_classes={num_classes} as given)"
            )
        index = {class_id: i for i, class_id in enumerate(self.class_ids)}

        files = {
            "train": ["train"],
            "val": ["val"],
            "trainval": ["train", "val"],
            "test": ["test"],
        }[name]
        samples = []
        for file_stem in files:
            split_file = dataset_dir / f"{file_stem}.json"
            mapping = train if file_stem == "train" else read_split_json(split_file)
            for key, label in mapping.items():
                where = f"{split_file} entry {quote(key)}"
                if label not in index:
                    raise data_error(
                        f"{where}: label {label} never occurs in {dataset_dir / 'train.json'} "
                        "(expected a label seen in training)"
                    )
                require_image(image_root / key, where)
                samples.append((image_root / key, index[label]))
        super().__init__(
            samples, len(self.class_ids), transform=transform, skip_corrupt=skip_corrupt
        )
