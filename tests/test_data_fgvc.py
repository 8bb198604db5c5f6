"""FGVC datasets with VPT-style json splits."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from data_fixtures import make_fgvc_dataset, truncated_bytes, write_image
from hypothesis import given, settings
from hypothesis import strategies as st

from heartlora.data.fgvc import FGVC_IMAGE_DIRS, FGVC_NUM_CLASSES, FGVCDataset, read_split_json
from heartlora.data.transforms import build_transform
from heartlora.errors import HeartLoRAError


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(HeartLoRAError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_vpt_defaults():
    assert FGVC_IMAGE_DIRS["CUB_200_2011"] == "images"
    assert FGVC_IMAGE_DIRS["StanfordDogs"] == "Images"
    assert FGVC_IMAGE_DIRS["OxfordFlowers"] == FGVC_IMAGE_DIRS["StanfordCars"] == ""
    assert FGVC_NUM_CLASSES["nabirds"] == 555


def test_json_round_remaps_labels_from_train(tmp_path):
    dataset_dir = make_fgvc_dataset(tmp_path)
    transform = build_transform(8)
    train = FGVCDataset(tmp_path, "CUB_200_2011", "train", transform=transform)
    assert (len(train), train.num_classes, train.class_ids) == (3, 2, [1, 5])
    assert train.samples[0] == (dataset_dir / "images/001.a/x1.jpg", 0)
    assert train.labels == [0, 0, 1]
    image, label = train[2]
    assert image.shape == (3, 8, 8) and label == 1
    assert FGVCDataset(tmp_path, "CUB_200_2011", "val.json").labels == [1]
    assert FGVCDataset(tmp_path, "CUB_200_2011", "trainval").labels == [0, 0, 1, 1]
    test = FGVCDataset(tmp_path, "CUB_200_2011", "test", num_classes=2)
    assert test.labels == [0, 1] and test.skipped == 0


def test_image_dir_defaults_and_override(tmp_path):
    make_fgvc_dataset(tmp_path, dataset="StanfordDogs", image_dir="Images")
    assert len(FGVCDataset(tmp_path, "StanfordDogs", "test")) == 2
    make_fgvc_dataset(tmp_path, dataset="OxfordFlowers", image_dir="")
    assert len(FGVCDataset(tmp_path, "OxfordFlowers", "test")) == 2
    make_fgvc_dataset(tmp_path, dataset="mine", image_dir="pics")
    assert len(FGVCDataset(tmp_path, "mine", "test", image_dir="pics")) == 2
    message = _error(FGVCDataset, tmp_path, "mine", "test", image_dir="photos")
    assert str(tmp_path / "mine" / "photos") in message and "image_dir" in message


def test_missing_folders_and_split_files(tmp_path):
    assert "does not exist" in _error(FGVCDataset, tmp_path / "x", "CUB_200_2011", "train")
    dataset_dir = make_fgvc_dataset(tmp_path)
    assert str(tmp_path / "nabirds") in _error(FGVCDataset, tmp_path, "nabirds", "train")
    assert "trainval" in _error(FGVCDataset, tmp_path, "CUB_200_2011", "training")
    (dataset_dir / "test.json").unlink()
    message = _error(FGVCDataset, tmp_path, "CUB_200_2011", "test")
    assert f"split file {dataset_dir / 'test.json'} does not exist" in message


def test_bad_json_names_file_line_and_column(tmp_path):
    dataset_dir = make_fgvc_dataset(tmp_path)
    (dataset_dir / "val.json").write_text('{"005.b/y2.jpg": 5,\n "x.jpg" 2}')
    message = _error(FGVCDataset, tmp_path, "CUB_200_2011", "val")
    assert message.startswith(f"{dataset_dir / 'val.json'} line 2 column 10: invalid json")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[1, 2]", "top level is a json array"),
        ('{"005.b/y2.jpg": "5"}', 'entry "005.b/y2.jpg": label is a json string'),
        ('{"005.b/y2.jpg": 5.0}', "label is a json number"),
        ('{"005.b/y2.jpg": true}', "label is a json boolean"),
        ('{"005.b/y2.jpg": -5}', "negative label -5"),
        ('{"005.b/y2.jpg": 5, "005.b/y2.jpg": 5}', "duplicate image path"),
        ('{"/abs/y2.jpg": 5}', "expected an image path relative"),
        ('{"../../y2.jpg": 5}', 'image path "../../y2.jpg" leaves the image folder'),
        ('{"a\\nb.jpg": 5}', 'entry "a\\nb.jpg"'),
        ("{}", "has no entries"),
    ],
)
def test_bad_entries_name_file_and_entry(tmp_path, content, expected):
    dataset_dir = make_fgvc_dataset(tmp_path)
    (dataset_dir / "val.json").write_text(content)
    message = _error(FGVCDataset, tmp_path, "CUB_200_2011", "val")
    assert str(dataset_dir / "val.json") in message and expected in message


def test_non_utf8_json(tmp_path):
    dataset_dir = make_fgvc_dataset(tmp_path)
    (dataset_dir / "val.json").write_bytes(b'{\n"\xff": 1}')
    assert f"{dataset_dir / 'val.json'} line 2: not UTF-8" in _error(
        read_split_json, dataset_dir / "val.json"
    )


def test_label_missing_from_train_and_class_count_mismatch(tmp_path):
    dataset_dir = make_fgvc_dataset(tmp_path, test={"001.a/z1.jpg": 1, "009.c/z3.jpg": 9})
    message = _error(FGVCDataset, tmp_path, "CUB_200_2011", "test")
    assert message.startswith(
        f'{dataset_dir / "test.json"} entry "009.c/z3.jpg": label 9 never occurs'
    )
    message = _error(FGVCDataset, tmp_path, "CUB_200_2011", "train", num_classes=200)
    assert "has 2 classes" in message and "num_classes=200" in message


def test_missing_image_names_file_and_entry(tmp_path):
    dataset_dir = make_fgvc_dataset(tmp_path)
    (dataset_dir / "images/005.b/z2.png").unlink()
    message = _error(FGVCDataset, tmp_path, "CUB_200_2011", "test")
    assert message.startswith(f'{dataset_dir / "test.json"} entry "005.b/z2.png": image ')
    assert "does not exist" in message


def test_corrupt_image_errors_or_is_skipped(tmp_path):
    dataset_dir = make_fgvc_dataset(tmp_path)
    bad = dataset_dir / "images/001.a/x2.png"
    bad.write_bytes(truncated_bytes("PNG"))
    assert str(bad) in _error(FGVCDataset(tmp_path, "CUB_200_2011", "train").__getitem__, 1)
    dataset = FGVCDataset(tmp_path, "CUB_200_2011", "train", skip_corrupt=True)
    assert (len(dataset), dataset.skipped, dataset.labels) == (2, 1, [0, 1])


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 9)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["a.png", "b.jpg", "missing.jpg", "", "/x.png"]) | st.text(max_size=6),
            children,
            max_size=3,
        )
    ),
    max_leaves=6,
)
_CONTENT = st.one_of(
    _JSON.map(json.dumps),
    st.dictionaries(
        st.sampled_from(["a.png", "b.jpg", "c.png"]), st.integers(-1, 4), max_size=3
    ).map(json.dumps),
    st.text(max_size=30),
)


@settings(max_examples=40, deadline=None)
@given(train=_CONTENT, test=_CONTENT, split=st.sampled_from(["train", "test", "trainval"]))
def test_random_json_succeeds_or_raises_heartlora_error(train, test, split):
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        for name in ("a.png", "b.jpg"):
            write_image(root / "nabirds" / "images" / name)
        for stem, content in (("train", train), ("val", '{"a.png": 1}'), ("test", test)):
            (root / "nabirds" / f"{stem}.json").write_text(content)
        try:
            dataset = FGVCDataset(root, "nabirds", split)
        except HeartLoRAError as error:
            assert len(str(error).splitlines()) == 1
            return
        assert all(0 <= label < dataset.num_classes for label in dataset.labels)
