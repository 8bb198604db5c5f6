"""Plain ImageFolder trees, with and without split folders."""

from __future__ import annotations

import pytest
from data_fixtures import make_image_folder, truncated_bytes, write_image

from heartlora.data.imagefolder import ImageFolderDataset
from heartlora.data.transforms import build_transform
from heartlora.errors import HeartLoRAError


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(HeartLoRAError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_split_folders_share_the_training_classes(tmp_path):
    make_image_folder(tmp_path, {"train": {"cat": 2, "dog": 3, "emu": 1}, "test": {"dog": 2}})
    train = ImageFolderDataset(tmp_path, "train", transform=build_transform(8))
    assert (train.classes, train.num_classes, len(train)) == (["cat", "dog", "emu"], 3, 6)
    assert train.labels == [0, 0, 1, 1, 1, 2]
    image, label = train[5]
    assert image.shape == (3, 8, 8) and label == 2
    test = ImageFolderDataset(tmp_path, "test", num_classes=3)
    assert test.classes == train.classes and test.labels == [1, 1]
    assert test.samples[0][0] == tmp_path / "test" / "dog" / "0.jpg"


def test_tree_without_split_folders(tmp_path):
    make_image_folder(tmp_path, {"": {"a": 1, "b": 2}})
    write_image(tmp_path / "b" / "deeper" / "x.PNG")
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    write_image(tmp_path / ".hidden" / "x.png")
    write_image(tmp_path / "a" / ".thumbs" / "x.png")
    dataset = ImageFolderDataset(tmp_path)
    assert dataset.classes == ["a", "b"]
    assert dataset.labels == [0, 1, 1, 1]


def test_missing_and_empty_folders(tmp_path):
    assert "does not exist" in _error(ImageFolderDataset, tmp_path / "nope")
    assert f"image folder {tmp_path} is empty" in _error(ImageFolderDataset, tmp_path)
    make_image_folder(tmp_path, {"train": {"cat": 1}})
    message = _error(ImageFolderDataset, tmp_path, "val")
    assert f"split folder {tmp_path / 'val'} does not exist" in message and '"train"' in message
    (tmp_path / "test").mkdir()
    assert f"{tmp_path / 'test'} is empty" in _error(ImageFolderDataset, tmp_path, "test")
    write_image(tmp_path / "test" / "loose.png")
    assert "has no class folders" in _error(ImageFolderDataset, tmp_path, "test")


def test_empty_class_folder_and_unknown_class(tmp_path):
    make_image_folder(tmp_path, {"train": {"cat": 1}, "test": {"cow": 1}})
    (tmp_path / "train" / "dog").mkdir()
    (tmp_path / "train" / "dog" / "readme.md").write_text("no images")
    message = _error(ImageFolderDataset, tmp_path, "train")
    assert f"class folder {tmp_path / 'train' / 'dog'} has no images" in message
    message = _error(ImageFolderDataset, tmp_path, "test")
    assert f"class folder {tmp_path / 'test' / 'cow'} is not among" in message
    assert str(tmp_path / "train") in message
    assert "num_classes=5" in _error(
        ImageFolderDataset, tmp_path, "test", classes=["cow"], num_classes=5
    )


def test_corrupt_image_errors_or_is_skipped(tmp_path):
    make_image_folder(tmp_path, {"": {"a": 2, "b": 1}})
    bad = tmp_path / "a" / "1.png"
    bad.write_bytes(truncated_bytes("PNG"))
    assert str(bad) in _error(ImageFolderDataset(tmp_path).__getitem__, 1)
    dataset = ImageFolderDataset(tmp_path, skip_corrupt=True)
    assert (len(dataset), dataset.skipped, dataset.skipped_paths) == (2, 1, [bad])
