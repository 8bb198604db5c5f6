"""VTAB-1k split files, the shared loading rules, build_transform and build_dataset."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import (
    make_fgvc_dataset,
    make_image_folder,
    make_vtab_task,
    truncated_bytes,
    write_image,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from heartlora.data.factory import build_dataset
from heartlora.data.transforms import IMAGENET_NORMALIZE, build_transform
from heartlora.data.vtab1k import (
    VTAB1K_GROUPS,
    VTAB1K_NUM_CLASSES,
    VTAB1K_TASKS,
    VTAB1kDataset,
    read_split_file,
)
from heartlora.errors import HeartLoRAError


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(HeartLoRAError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    return message


# --- task table ---------------------------------------------------------------------------------


def test_task_table_has_19_tasks_in_three_groups():
    assert len(VTAB1K_TASKS) == 19
    assert set(VTAB1K_TASKS) == set(VTAB1K_NUM_CLASSES)
    counts = {group: list(VTAB1K_TASKS.values()).count(group) for group in VTAB1K_GROUPS}
    assert counts == {"Natural": 7, "Specialized": 4, "Structured": 8}
    assert VTAB1K_NUM_CLASSES["sun397"] == 397
    assert VTAB1K_NUM_CLASSES["smallnorb_ele"] == 9


# --- valid data ---------------------------------------------------------------------------------


def test_splits_load_with_lengths_labels_and_tensors(tmp_path):
    make_vtab_task(tmp_path)
    transform = build_transform(16)
    lengths = {}
    for split in ("train800", "val200", "train800val200", "test.txt"):
        dataset = VTAB1kDataset(tmp_path, "toy", split, transform=transform)
        lengths[dataset.split] = len(dataset)
        assert dataset.num_classes == 3
        assert dataset.skipped == 0
    assert lengths == {"train800": 6, "val200": 2, "train800val200": 8, "test": 3}

    dataset = VTAB1kDataset(tmp_path, "toy", "test", transform=transform)
    assert dataset.labels == [2, 1, 0]
    assert dataset.samples[0][0] == tmp_path / "toy" / "images/test/0000.png"
    image, label = dataset[0]
    assert label == 2
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert image.mean().item() == pytest.approx(60 / 255, abs=0.02)  # no normalisation


def test_known_task_uses_its_class_count_and_loader_batches(tmp_path):
    make_vtab_task(tmp_path, task="eurosat")
    dataset = VTAB1kDataset(tmp_path, "eurosat", "train800val200", transform=build_transform(8))
    assert dataset.num_classes == 10
    images, labels = next(iter(DataLoader(dataset, batch_size=4)))
    assert images.shape == (4, 3, 8, 8)
    assert labels.tolist() == [0, 1, 2, 0]


def test_without_transform_returns_rgb_pil_image(tmp_path):
    task_dir = make_vtab_task(tmp_path)
    write_image(task_dir / "images/test/0000.png", mode="LA")
    write_image(task_dir / "images/test/0002.png", mode="P")
    dataset = VTAB1kDataset(tmp_path, "toy", "test")
    assert all(dataset[i][0].mode == "RGB" for i in range(len(dataset)))


def test_blank_lines_and_crlf_are_accepted(tmp_path):
    task_dir = make_vtab_task(tmp_path)
    (task_dir / "test.txt").write_bytes(
        b"\r\nimages/test/0000.png 2\r\n\r\n  images/test/0001.jpg\t1  \r\n"
    )
    entries = read_split_file(task_dir / "test.txt")
    assert [(e.path, e.label, e.line) for e in entries] == [
        ("images/test/0000.png", 2, 2),
        ("images/test/0001.jpg", 1, 4),
    ]


def test_explicit_num_classes_overrides(tmp_path):
    make_vtab_task(tmp_path, task="eurosat")
    assert VTAB1kDataset(tmp_path, "eurosat", "test", num_classes=3).num_classes == 3
    assert "num_classes" in _error(VTAB1kDataset, tmp_path, "eurosat", "test", num_classes=0)


# --- bad input: folders and split files -----------------------------------------------------------


def test_missing_and_empty_folders(tmp_path):
    assert "does not exist" in _error(VTAB1kDataset, tmp_path / "nope", "toy", "test")
    assert "is empty" in _error(VTAB1kDataset, tmp_path, "toy", "test")
    make_vtab_task(tmp_path, task="cifar")
    message = _error(VTAB1kDataset, tmp_path, "cifar100", "test")
    assert str(tmp_path / "cifar100") in message and "'cifar'" in message
    (tmp_path / "dtd").mkdir()
    assert f"{tmp_path / 'dtd'} is empty" in _error(VTAB1kDataset, tmp_path, "dtd", "test")


def test_unknown_split_and_missing_split_file(tmp_path):
    task_dir = make_vtab_task(tmp_path)
    assert "train800val200" in _error(VTAB1kDataset, tmp_path, "toy", "train")
    (task_dir / "val200.txt").unlink()
    message = _error(VTAB1kDataset, tmp_path, "toy", "val200")
    assert f"split file {task_dir / 'val200.txt'} does not exist" in message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("foo", 'expected "relative/path.jpg <int label>", got "foo"'),
        ("a.jpg 1 2", 'got "a.jpg 1 2"'),
        ("a.jpg 3.5", 'got "a.jpg 3.5"'),
        ("a.jpg one", 'got "a.jpg one"'),
        ("images/test/0000.png -1", "negative label -1"),
        ("/etc/passwd 1", "expected an image path relative to"),
        ("C:/x.png 1", "expected an image path relative to"),
        ("../other/images/0000.png 1", "leaves"),
        ("images/../../x.png 1", "leaves"),
        ("images\\..\\..\\x.png 1", "leaves"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, expected):
    task_dir = make_vtab_task(tmp_path)
    split_file = task_dir / "test.txt"
    rows = split_file.read_text().splitlines()
    split_file.write_text("\n".join([rows[0], "", line, rows[1]]) + "\n")
    message = _error(VTAB1kDataset, tmp_path, "toy", "test")
    assert message.startswith(f"{split_file} line 3: ")
    assert expected in message


def test_non_utf8_and_empty_split_file(tmp_path):
    task_dir = make_vtab_task(tmp_path)
    (task_dir / "test.txt").write_bytes(b"images/test/0000.png 0\nimages/\xff.png 1\n")
    assert f"{task_dir / 'test.txt'} line 2: not UTF-8" in _error(
        VTAB1kDataset, tmp_path, "toy", "test"
    )
    (task_dir / "test.txt").write_text("\n  \n")
    assert "is empty" in _error(VTAB1kDataset, tmp_path, "toy", "test")


def test_first_missing_image_is_reported_with_line(tmp_path):
    task_dir = make_vtab_task(tmp_path)
    (task_dir / "images/test/0001.jpg").unlink()
    (task_dir / "images/test/0002.png").unlink()
    message = _error(VTAB1kDataset, tmp_path, "toy", "test")
    assert message.startswith(
        f"{task_dir / 'test.txt'} line 2: image {task_dir / 'images/test/0001.jpg'}"
    )
    assert "does not exist" in message


# --- bad input: labels ----------------------------------------------------------------------------


def test_label_out_of_range_for_known_task(tmp_path):
    task_dir = make_vtab_task(tmp_path, task="kitti", test_labels=(0, 1, 4))
    message = _error(VTAB1kDataset, tmp_path, "kitti", "test")
    assert message.startswith(f"{task_dir / 'test.txt'} line 3: label 4 is out of range")
    assert "0..3" in message and "kitti has 4 classes" in message


def test_inferred_count_needs_every_class_in_training(tmp_path):
    task_dir = make_vtab_task(tmp_path, train_labels=(0, 1, 2, 4999), val_labels=(0,))
    message = _error(VTAB1kDataset, tmp_path, "toy", "test")
    assert message.startswith(f"{task_dir / 'train800val200.txt'} line 4: label 4999 implies")
    assert "4996 of them (3, 4, 5, ...) have no training image" in message
    assert "num_classes" in message
    # a pinned count accepts classes without training images, and checks the range
    assert VTAB1kDataset(tmp_path, "toy", "train800", num_classes=5000).num_classes == 5000
    message = _error(VTAB1kDataset, tmp_path, "toy", "train800", num_classes=10)
    assert message.startswith(f"{task_dir / 'train800.txt'} line 4: label 4999 is out of range")


def test_manifest_pins_the_class_count(tmp_path):
    task_dir = make_vtab_task(tmp_path, train_labels=(0, 1, 2, 10))
    manifest = task_dir / "manifest.json"
    manifest.write_text('{"task": "toy", "num_classes": 10}')
    message = _error(VTAB1kDataset, tmp_path, "toy", "train800")
    assert message.startswith(f"{task_dir / 'train800.txt'} line 4: label 10 is out of range")
    assert f"0..9: {manifest} says 10 classes" in message
    assert f"{manifest}: num_classes is 10, but num_classes=11" in _error(
        VTAB1kDataset, tmp_path, "toy", "train800", num_classes=11
    )
    manifest.write_text('{"task": "toy", "num_classes": 11}')
    assert VTAB1kDataset(tmp_path, "toy", "test").num_classes == 11
    manifest.write_text('{"task": "toy"}')  # a manifest that pins nothing: inferred as before
    assert "label 10 implies 11 classes" in _error(VTAB1kDataset, tmp_path, "toy", "test")
    for text, expected in (
        ('{"num_classes": "10"}', 'key num_classes is "\\"10\\""'),
        ('{"num_classes": 0}', "key num_classes is"),
        ('{"num_classes": true}', "key num_classes is"),
        ("[10]", "expected a json object"),
        ('{"num_classes": 10', "line 1 column"),
    ):
        manifest.write_text(text)
        message = _error(VTAB1kDataset, tmp_path, "toy", "test")
        assert message.startswith(str(manifest)) and expected in message, message


def test_task_and_split_names_stay_inside_the_root(tmp_path):
    make_vtab_task(tmp_path / "root")
    make_vtab_task(tmp_path, task="outside")
    for task in ("../outside", "/etc", "a/../../outside"):
        message = _error(build_dataset, "vtab1k", tmp_path / "root", task, "test", 8)
        assert "must name a folder inside" in message


def test_label_above_inferred_count(tmp_path):
    make_vtab_task(tmp_path, train_labels=(0, 1), val_labels=(1,), test_labels=(7,))
    message = _error(VTAB1kDataset, tmp_path, "toy", "test")
    assert "label 7 is out of range (expected 0..1" in message


# --- corrupt images -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_errors_by_default_and_is_skipped_on_request(tmp_path, fmt):
    task_dir = make_vtab_task(tmp_path)
    bad = task_dir / "images/test/0001.jpg"
    bad.write_bytes(truncated_bytes(fmt))
    dataset = VTAB1kDataset(tmp_path, "toy", "test", transform=build_transform(8))
    dataset[0]
    message = _error(dataset.__getitem__, 1)
    assert str(bad) in message and "skip_corrupt=True" in message

    dataset = VTAB1kDataset(
        tmp_path, "toy", "test", transform=build_transform(8), skip_corrupt=True
    )
    assert len(dataset) == 2 and dataset.skipped == 1 and dataset.skipped_paths == [bad]
    assert dataset.labels == [2, 0]
    assert len(list(DataLoader(dataset, batch_size=2))) == 1


def test_not_an_image_and_all_corrupt(tmp_path):
    task_dir = make_vtab_task(tmp_path, test_labels=(0,))
    bad = task_dir / "images/test/0000.png"
    bad.write_text("not an image")
    assert str(bad) in _error(VTAB1kDataset(tmp_path, "toy", "test").__getitem__, 0)
    assert "all 1 images are corrupt" in _error(
        VTAB1kDataset, tmp_path, "toy", "test", skip_corrupt=True
    )


# --- property: random split files never raise anything but HeartLoRAError ------------------------

_TOKENS = st.sampled_from(
    [
        "img/a.png",
        "img/b.jpg",
        "img/missing.png",
        "/abs.png",
        "img/a.png\x00",
        "0",
        "1",
        "-3",
        "2.5",
        "+1",
        "99999999999999999999",
        "x",
        "",
        " ",
        "\t",
        "\r",
        "é",
        "\u2028",
        "\x85",
    ]
)
_VALID_LINE = st.builds(
    "{} {}".format, st.sampled_from(["img/a.png", "img/b.jpg"]), st.integers(-1, 12)
)
_LINE = st.one_of(
    _VALID_LINE, _VALID_LINE, st.lists(_TOKENS, max_size=4).map(" ".join), st.text(max_size=20)
)
_CONTENT = st.one_of(
    st.lists(_LINE, max_size=6).map(lambda lines: "\n".join(lines).encode("utf-8")),
    st.lists(_VALID_LINE, min_size=1, max_size=6).map(lambda lines: "\n".join(lines).encode()),
    st.binary(max_size=40),
)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    train=_CONTENT,
    test=_CONTENT,
    task=st.sampled_from(["toy", "dmlab"]),
    split=st.sampled_from(["train800val200", "test"]),
)
def test_random_split_files_succeed_or_raise_heartlora_error(train, test, task, split):
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        task_dir = root / task
        write_image(task_dir / "img/a.png")
        write_image(task_dir / "img/b.jpg")
        (task_dir / "train800val200.txt").write_bytes(train)
        (task_dir / "test.txt").write_bytes(test)
        try:
            dataset = VTAB1kDataset(root, task, split, transform=build_transform(4))
        except HeartLoRAError as error:
            assert len(str(error).splitlines()) == 1
            assert re.search(r"\.txt|split", str(error))
            return
        assert len(dataset) >= 1
        image, label = dataset[0]
        assert image.shape == (3, 4, 4) and 0 <= label < dataset.num_classes


# --- build_transform ------------------------------------------------------------------------------


def test_transform_paper_default_is_deterministic_bicubic_resize():
    image = Image.effect_noise((40, 30), 50).convert("RGB")
    transform = build_transform(24)
    first, second = transform(image), transform(image)
    assert torch.equal(first, second) and first.shape == (3, 24, 24)
    expected = torch.from_numpy(np.array(image.resize((24, 24), Image.BICUBIC))).float() / 255
    assert torch.allclose(first.permute(1, 2, 0), expected, atol=1e-6)


def test_transform_normalize_and_augment():
    image = Image.new("RGB", (20, 20), (255, 0, 128))
    out = build_transform(8, normalize=IMAGENET_NORMALIZE)(image)
    assert out[0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-4)
    torch.manual_seed(0)
    gradient = Image.linear_gradient("L").convert("RGB").resize((32, 32))
    augment = build_transform(16, augment=True)
    outputs = [augment(gradient) for _ in range(6)]
    assert all(o.shape == (3, 16, 16) for o in outputs)
    assert any(not torch.equal(outputs[0], o) for o in outputs[1:])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"img_size": 0},
        {"img_size": 2.5},
        {"img_size": 8, "normalize": ((0.5,), (0.5,))},
        {"img_size": 8, "normalize": ((0, 0, 0), (1, 0, 1))},
        {"img_size": 8, "normalize": "imagenet"},
        {"img_size": 8, "augment": True, "crop_scale": (0.5, 2.0)},
    ],
)
def test_transform_rejects_bad_arguments(kwargs):
    _error(build_transform, **kwargs)


# --- build_dataset --------------------------------------------------------------------------------


def test_build_dataset_dispatches_every_kind(tmp_path):
    make_vtab_task(tmp_path / "vtab", task="dmlab")
    vtab = build_dataset("vtab1k", tmp_path / "vtab", "dmlab", "test", 8)
    assert (vtab.num_classes, len(vtab), vtab.skipped) == (6, 3, 0)
    assert vtab[0][0].shape == (3, 8, 8)

    make_fgvc_dataset(tmp_path / "fgvc")
    fgvc = build_dataset("fgvc", tmp_path / "fgvc", "CUB_200_2011", "trainval", 8, augment=True)
    assert (fgvc.num_classes, len(fgvc)) == (2, 4)

    make_image_folder(
        tmp_path / "folders" / "pets", {"train": {"cat": 2, "dog": 1}, "test": {"dog": 1}}
    )
    folder = build_dataset(
        "imagefolder", tmp_path / "folders", "pets", "test", 8, normalize=IMAGENET_NORMALIZE
    )
    assert (folder.num_classes, folder.samples[0][1]) == (2, 1)
    assert isinstance(folder.samples[0][0], Path)


def test_build_dataset_rejects_bad_kind_and_arguments(tmp_path):
    assert "vtab1k, fgvc, imagefolder" in _error(
        build_dataset, "vtab", tmp_path, "cifar", "test", 8
    )
    assert "task" in _error(build_dataset, "vtab1k", tmp_path, None, "test", 8)
    assert "image_dir" in _error(
        build_dataset, "vtab1k", tmp_path, "cifar", "test", 8, image_dir="x"
    )
