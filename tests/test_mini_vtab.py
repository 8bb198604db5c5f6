"""Tests for the bundled mini-VTAB tasks (`heartlora.bundled.mini_vtab`, `heartlora.bundled.tasks`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from heartlora.bundled.tasks import (
    MINI_VTAB_TASKS,
    SPLIT_FILES,
    build_task,
    default_data_root,
    list_tasks,
    materialize,
)
from heartlora.errors import HeartLoRAError

TASKS = list_tasks()
# Writing is the same code for every task, so one task per VTAB group keeps the disk tests fast.
WRITTEN = ["mnist", "lfw-faces", "digits-count"]


@pytest.fixture(scope="module")
def built() -> dict[str, dict]:
    return {name: build_task(name, seed=0) for name in TASKS}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return materialize(tmp_path_factory.mktemp("mini-vtab"), tasks=WRITTEN, seed=0)


def _digest(img: np.ndarray) -> str:
    return hashlib.sha1(img.tobytes()).hexdigest()


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_suite_covers_the_three_vtab_groups():
    groups = {spec.group for spec in MINI_VTAB_TASKS.values()}
    assert groups == {"natural", "specialized", "structured"}
    assert len(TASKS) >= 7
    assert list_tasks("structured") == [
        n for n in TASKS if MINI_VTAB_TASKS[n].group == "structured"
    ]
    for spec in MINI_VTAB_TASKS.values():
        assert len(spec.class_names) == spec.num_classes
        assert spec.source and spec.license and spec.description


@pytest.mark.parametrize("name", TASKS)
def test_split_sizes_shapes_and_labels(built, name):
    spec, data = MINI_VTAB_TASKS[name], built[name]
    assert {split: len(samples) for split, samples in data.items()} == spec.sizes
    assert spec.sizes["train"] == 800 and spec.sizes["val"] == 200
    for split, samples in data.items():
        labels = np.array([label for _, label in samples])
        assert labels.min() >= 0 and labels.max() < spec.num_classes, split
        for img, label in samples:
            assert img.shape == (28, 28) and img.dtype == np.uint8
            assert isinstance(label, int)
    train_labels = {label for _, label in data["train"]}
    assert train_labels == set(range(spec.num_classes))
    assert len({label for _, label in data["test"]}) == spec.num_classes


@pytest.mark.parametrize("name", TASKS)
def test_no_image_shared_between_train_or_val_and_test(built, name):
    test = {_digest(img) for img, _ in built[name]["test"]}
    for split in ("train", "val"):
        assert not test & {_digest(img) for img, _ in built[name][split]}, split


@pytest.mark.parametrize("name", TASKS)
def test_same_seed_same_data_other_seed_other_data(built, name):
    again = build_task(name, seed=0)
    for split, samples in built[name].items():
        assert [label for _, label in samples] == [label for _, label in again[split]]
        assert all(
            np.array_equal(a, b) for (a, _), (b, _) in zip(samples, again[split], strict=True)
        )
    other = build_task(name, seed=1)
    first = np.stack([img for img, _ in built[name]["train"]])
    assert not np.array_equal(first, np.stack([img for img, _ in other["train"]]))


def test_unknown_task_is_named_and_valid_names_listed(tmp_path):
    with pytest.raises(HeartLoRAError, match="no-such-task") as err:
        build_task("no-such-task")
    assert all(name in str(err.value) for name in TASKS)
    with pytest.raises(HeartLoRAError, match="no-such-task"):
        materialize(tmp_path, tasks=["mnist", "no-such-task"])
    assert not (tmp_path / "mnist").exists()  # validated before anything is written


def test_bad_seed_and_group_are_rejected():
    with pytest.raises(HeartLoRAError, match="seed"):
        build_task("mnist", seed=-1)
    with pytest.raises(HeartLoRAError, match="group"):
        list_tasks("unnatural")


@pytest.mark.parametrize("name", WRITTEN)
def test_materialize_writes_vtab1k_layout(root, built, name):
    task_dir = root / name
    spec = MINI_VTAB_TASKS[name]
    parsed = {}
    for split_file in SPLIT_FILES:
        lines = (task_dir / split_file).read_text().splitlines()
        entries = [line.rsplit(" ", 1) for line in lines]
        assert all((task_dir / rel).is_file() for rel, _ in entries)
        parsed[split_file] = [(rel, int(label)) for rel, label in entries]
    assert len(parsed["train800.txt"]) == spec.sizes["train"]
    assert len(parsed["val200.txt"]) == spec.sizes["val"]
    assert len(parsed["test.txt"]) == spec.sizes["test"]
    assert parsed["train800val200.txt"] == parsed["train800.txt"] + parsed["val200.txt"]
    manifest = json.loads((task_dir / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["sizes"] == spec.sizes
    # Files hold exactly the in-memory images and labels.
    for split_file, split in (("train800.txt", "train"), ("test.txt", "test")):
        for k in (0, len(parsed[split_file]) - 1):
            rel, label = parsed[split_file][k]
            img, expected_label = built[name][split][k]
            assert np.array_equal(np.asarray(Image.open(task_dir / rel)), img)
            assert label == expected_label


def test_second_materialize_is_a_no_op(root):
    before = _mtimes(root)
    assert materialize(root, tasks=WRITTEN, seed=0) == root
    assert _mtimes(root) == before
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_incomplete_folder_is_rebuilt_and_other_seed_needs_overwrite(tmp_path):
    materialize(tmp_path, tasks=["lfw-faces"], seed=0)
    missing = tmp_path / "lfw-faces" / "images" / "test" / "000003.png"
    missing.unlink()
    materialize(tmp_path, tasks=["lfw-faces"], seed=0)
    assert missing.is_file()

    with pytest.raises(HeartLoRAError, match="seed 0"):
        materialize(tmp_path, tasks=["lfw-faces"], seed=1)
    materialize(tmp_path, tasks=["lfw-faces"], seed=1, overwrite=True)
    assert json.loads((tmp_path / "lfw-faces" / "manifest.json").read_text())["seed"] == 1

    (tmp_path / "mnist").mkdir()
    with pytest.raises(HeartLoRAError, match="not a mini-VTAB task folder"):
        materialize(tmp_path, tasks=["mnist"])


def test_default_data_root_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HEARTLORA_DATA", str(tmp_path / "data"))
    assert default_data_root() == tmp_path / "data"
    monkeypatch.delenv("HEARTLORA_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_data_root() == tmp_path / "heartlora" / "mini-vtab"


def test_a_data_root_that_is_a_file_is_named_as_one(monkeypatch, tmp_path):
    """$HEARTLORA_DATA pointing at a file said only "File exists"."""
    afile = tmp_path / "data"
    afile.write_text("not a folder")
    monkeypatch.setenv("HEARTLORA_DATA", str(afile))
    with pytest.raises(
        HeartLoRAError, match=r"data is not a folder \(\$HEARTLORA_DATA\) \(expected a folder"
    ):
        materialize(tasks=["mnist"])
    with pytest.raises(HeartLoRAError, match="is not a folder"):
        materialize(afile / "below", tasks=["mnist"])
    assert afile.read_text() == "not a folder"


def test_task_folders_follow_the_umask(root):
    """mkdtemp made every task folder 0700 (the umask gives 0755 under 022)."""
    umask = os.umask(0)
    os.umask(umask)
    for name in WRITTEN:
        assert (root / name).stat().st_mode & 0o777 == 0o777 & ~umask, name
