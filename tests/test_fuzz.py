"""Property tests over what users hand heartlora: split files, YAML configs, adapter JSON and
command-line values. Whatever the input, a failing command exits with status 2, prints one line
on stderr and no traceback, and changes no file under its output directory (docs/reliability.md).

Every train command here points at a finished run with ``--overwrite`` and at a base checkpoint
of another model, so valid input still fails (on the checkpoint, after the data checks) and the
finished run must come through untouched. ``HEARTLORA_FUZZ_EXAMPLES`` raises the number of
examples for a longer search (default 15 per test, about a minute for the file on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from train_fixtures import make_base_checkpoint, make_learnable_task, train_args

from heartlora.cli import main
from heartlora.training.config import known_keys

EXAMPLES = int(os.environ.get("HEARTLORA_FUZZ_EXAMPLES", "15"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="HEARTLORA_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A toy task, a finished run (the victim of every ``--overwrite``), its adapter, an export
    of it, and a base checkpoint of another model."""
    root = tmp_path_factory.mktemp("fuzz")
    make_learnable_task(root / "data")
    checkpoint = make_base_checkpoint(root / "base.safetensors")
    alien = root / "alien.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(alien))
    run = root / "run"
    assert main(train_args(root / "data", checkpoint, run, "lora", epochs=1)) == 0
    export = root / "export"
    peft = ["export", "--adapter", str(run / "adapter"), "--format", "peft"]
    assert main([*peft, "--output-dir", str(export)]) == 0
    return {"root": root, "data": root / "data", "alien": alien, "run": run, "export": export}


def _snapshot(folder: Path) -> dict[str, object]:
    """Every entry under ``folder``: files by content hash and modification time."""
    return {
        str(path.relative_to(folder)): (
            (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
            if path.is_file()
            else "folder"
        )
        for path in sorted(folder.rglob("*"))
    }


def _assert_clean_failure(code, capsys, folder: Path | None = None, before=None) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (code, captured.err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("heartlora: error: "), captured.err[-2000:]
    assert "Traceback" not in captured.err
    if folder is not None:
        assert _snapshot(folder) == before, lines[0]
    return lines[0]


def _train(world, *extra: str) -> list[str]:
    """`heartlora train` onto the finished run, with a checkpoint that cannot fit."""
    args = train_args(world["data"], world["alien"], world["run"], "lora", epochs=1)
    return [*args, "--overwrite", *extra]


@pytest.fixture(autouse=True)
def _in_a_scratch_folder(tmp_path, monkeypatch):
    """A random relative ``--output-dir`` that happens to be valid is written here."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def keep_threads():
    """A random ``threads`` value must not slow down the rest of the session."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# --- split files ---------------------------------------------------------------------------------

_PATHS = st.sampled_from(
    [
        "images/train800/0000.png",
        "images/test/0001.png",
        "images/../images/test/0002.png",
        "../toy/images/test/0000.png",
        "images/../../data/toy/images/test/0000.png",
        "/etc/hostname",
        "C:\\x.png",
        "images/missing.png",
        "images",
        "images/train800/0000.png\x00",
        "é.png",
    ]
)
_LABELS = st.one_of(
    st.integers(-2, 4),
    st.sampled_from(["4999", "99999999999999999999", "1.0", "+1", "x", "", "0x1"]).map(str),
)
_LINE = st.one_of(
    st.builds("{} {}".format, _PATHS, _LABELS),
    st.builds("{} {}".format, _PATHS, st.integers(0, 2)),
    st.text(max_size=16),
)
_SPLIT = st.one_of(
    st.lists(_LINE, max_size=6).map(lambda lines: "\n".join(lines).encode("utf-8")),
    st.binary(max_size=24),
)
_MANIFEST = st.one_of(
    st.none(),
    st.builds(lambda k: json.dumps({"num_classes": k}), st.integers(-1, 5)),
    st.sampled_from(['{"num_classes": "3"}', "[3]", '{"num_classes": 3', "", "\xff"]),
)


@FUZZ
@given(train=_SPLIT, test=_SPLIT, manifest=_MANIFEST)
def test_random_split_files_fail_cleanly_and_keep_the_run(world, capsys, train, test, manifest):
    task = world["data"] / "toy"
    saved = {name: (task / name).read_bytes() for name in ("train800val200.txt", "test.txt")}
    before = _snapshot(world["run"])
    try:
        (task / "train800val200.txt").write_bytes(train)
        (task / "test.txt").write_bytes(test)
        if manifest is not None:
            (task / "manifest.json").write_text(manifest, encoding="utf-8", errors="replace")
        _assert_clean_failure(main(_train(world)), capsys, world["run"], before)
    finally:
        for name, data in saved.items():
            (task / name).write_bytes(data)
        (task / "manifest.json").unlink(missing_ok=True)


# --- YAML configs --------------------------------------------------------------------------------

_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.lists(st.sampled_from(["q", "k", "v", "proj", "x", 1]), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["cpu", "cuda", "cuda:7", "tpu", "auto", "vtab1k", "fgvc", "imagefolder"]),
)
_KEYS = st.one_of(
    st.sampled_from([k for k in known_keys() if k not in ("checkpoint", "data_root")]),
    st.sampled_from(["base", "warmup_steps", "lerning_rate", 3, True, None]),
    st.text(min_size=1, max_size=8),
)
_DOCUMENT = st.one_of(
    st.dictionaries(_KEYS, _VALUES, max_size=5).map(
        lambda data: yaml.safe_dump(data, allow_unicode=True)
    ),
    st.text(max_size=40),
    st.sampled_from(
        [
            "base: base.yaml\n",
            "base: self.yaml\n",
            "base: [1]\n",
            "base: missing.yaml\n",
            "a: &x [*x]\n",
            "[1, 2]\n",
            "lr: 1e-3\nlr: 2\n",
            "!!python/object:os.system 'true'\n",
            "\t- x\n",
        ]
    ),
)


@FUZZ
@given(document=_DOCUMENT)
def test_random_yaml_configs_fail_cleanly_and_keep_the_run(
    world, capsys, keep_threads, tmp_path_factory, document
):
    folder = tmp_path_factory.mktemp("yaml")
    (folder / "base.yaml").write_text("base: self.yaml\n")
    config = folder / "self.yaml"
    config.write_text(document, encoding="utf-8", errors="replace")
    before = _snapshot(world["run"])
    args = _train(world, "--config", str(config), "--set", "data_root=" + str(world["data"]))
    _assert_clean_failure(main(args), capsys, world["run"], before)


# Keys and values as a user's own config may hold them (from tests/test_reliability.py).
_CONFIG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 300),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.sampled_from(["q", "k", "v", "proj", "x"]), max_size=4),
)
_CONFIG_KEYS = st.one_of(st.sampled_from(known_keys()), st.text(min_size=1, max_size=10))


@settings(FUZZ, max_examples=4 * EXAMPLES)  # build_config alone: milliseconds an example
@given(data=st.dictionaries(_CONFIG_KEYS, _CONFIG_VALUES, max_size=6))
def test_random_configs_are_accepted_or_rejected_in_one_line(tmp_path, data):
    from heartlora.errors import HeartLoRAError
    from heartlora.training.config import build_config

    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        build_config(path)
    except HeartLoRAError as error:
        assert "\n" not in str(error)


@FUZZ
@given(
    data=st.dictionaries(_CONFIG_KEYS, _CONFIG_VALUES, max_size=4),
    extra=st.lists(st.text(min_size=1, max_size=8), max_size=3),
)
def test_random_configs_and_set_items_without_data_fail_in_one_line(
    tmp_path, capsys, keep_threads, data, extra
):
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump({**data, "data_root": str(tmp_path / "absent")}))
    output = ["--output-dir", str(tmp_path / "o"), "--overwrite"]
    code = main(["train", "--config", str(path), *output, *[f"--set={item}" for item in extra]])
    _assert_clean_failure(code, capsys)


# --- adapter JSON --------------------------------------------------------------------------------

_JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 10),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.lists(st.integers(-1, 7), max_size=7),
    st.lists(st.lists(st.booleans(), max_size=7), max_size=7),
    st.lists(st.lists(st.one_of(st.none(), st.floats(0, 1), st.text(max_size=2)), max_size=7)),
    st.dictionaries(st.text(max_size=6), st.integers(-1, 9), max_size=3),
)


def _paths(value, prefix=()):
    """Every key path into a JSON document."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):
            yield from _paths(item, (*prefix, index))


def _mutated(document, path, value, delete: bool):
    document = json.loads(json.dumps(document))
    if not path:
        return value
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return document


@FUZZ
@given(data=st.data(), command=st.sampled_from(["export", "predict", "heads"]))
def test_random_adapter_json_fails_cleanly(world, capsys, tmp_path_factory, data, command):
    original = world["run"] / "adapter"
    adapter = tmp_path_factory.mktemp("adapter") / "adapter"
    shutil.copytree(original, adapter)
    document = json.loads((adapter / "heartlora_config.json").read_text())
    path = data.draw(st.sampled_from(list(_paths(document))), label="path")
    value = data.draw(_JSON_VALUES, label="value")
    text = json.dumps(_mutated(document, path, value, data.draw(st.booleans(), label="delete")))
    if data.draw(st.booleans(), label="truncate"):
        text = text[: data.draw(st.integers(0, len(text)), label="cut")]
    (adapter / "heartlora_config.json").write_text(text)
    export = world["export"]
    before = _snapshot(export)
    image = str(world["data"] / "toy" / "images" / "test" / "0000.png")
    argv = {
        "export": ["export", "--adapter", str(adapter), "--format", "peft"]
        + ["--output-dir", str(export), "--overwrite"],
        "predict": ["predict", "--adapter", str(adapter), image],
        "heads": ["heads", "--adapter", str(adapter), "--output-dir", str(export / "heads")],
    }[command]
    code = main(argv)
    if code == 0:  # a harmless change (a score, a class name): nothing to check
        capsys.readouterr()
        shutil.rmtree(export / "heads", ignore_errors=True)
        return
    _assert_clean_failure(code, capsys, export, before)


# --- command-line values -------------------------------------------------------------------------

_TEXT = st.one_of(
    st.sampled_from(["0", "-1", "1e9", "nan", "inf", "", " ", "x", "3.5", "99999999999", "\n"]),
    st.text(max_size=6),
)
_FLAGS = st.dictionaries(
    st.sampled_from(
        [
            "--epochs",
            "--batch-size",
            "--img-size",
            "--rank",
            "--scale",
            "--ne",
            "--scorer",
            "--seed",
            "--device",
            "--dtype",
            "--num-workers",
            "--method",
            "--task",
            "--data-kind",
            "--model",
        ]
    ),
    _TEXT,
    min_size=1,
    max_size=3,
)
_SETS = st.lists(
    st.builds(
        "{}={}".format,
        st.sampled_from([*known_keys(), "warmup_steps", "nope", ""]),
        _TEXT,
    ),
    max_size=2,
)


@FUZZ
@given(flags=_FLAGS, sets=_SETS)
def test_random_train_values_fail_cleanly_and_keep_the_run(
    world, capsys, keep_threads, flags, sets
):
    before = _snapshot(world["run"])
    args = _train(world)
    for flag, value in flags.items():
        args += [flag, value]
    for item in sets:
        if not item.startswith(("checkpoint=", "data_root=", "output_dir=")):
            args += ["--set", item]
    _assert_clean_failure(main(args), capsys, world["run"], before)


@FUZZ
@given(
    command=st.sampled_from(["export", "predict", "heads"]),
    option=st.sampled_from(["--format", "--batch-size", "--batches", "--output-dir", "--scorer"]),
    value=_TEXT,
)
def test_random_tool_values_fail_cleanly(world, capsys, command, option, value):
    export = world["export"]
    before = _snapshot(export)
    adapter = str(world["run"] / "adapter")
    image = str(world["data"] / "toy" / "images" / "test" / "0000.png")
    argv = {
        "export": [
            "export",
            "--adapter",
            adapter,
            "--format",
            "merged",
            "--output-dir",
            str(export),
        ],
        "predict": ["predict", "--adapter", adapter, image],
        "heads": ["heads", "--adapter", adapter, "--output-dir", str(export / "heads")],
    }[command]
    code = main([*argv, option, value])
    if code == 0:
        capsys.readouterr()
        shutil.rmtree(export / "heads", ignore_errors=True)
        return
    _assert_clean_failure(code, capsys, export, before)


# --- adapter tensors -----------------------------------------------------------------------------


def _mutated_tensors(tensors: dict[str, torch.Tensor], data) -> dict[str, torch.Tensor]:
    """``tensors`` with one thing a saved adapter must never lack or hold changed."""
    names = sorted(tensors)
    kind = data.draw(
        st.sampled_from(
            ["drop", "drop-classifier", "drop-every-B", "empty", "rename", "reshape", "int", "nan"]
        ),
        label="kind",
    )
    name = data.draw(st.sampled_from(names), label="tensor")
    changed = dict(tensors)
    if kind == "drop":
        del changed[name]
    elif kind == "drop-classifier":
        changed = {k: v for k, v in changed.items() if not k.startswith("head.")}
    elif kind == "drop-every-B":
        changed = {k: v for k, v in changed.items() if not k.endswith("lora_B")}
    elif kind == "empty":
        changed = {}
    elif kind == "rename":
        changed[data.draw(st.sampled_from(["x", name + "_", "blocks.0.attn.qkv.base.weight"]))] = (
            changed.pop(name)
        )
    elif kind == "reshape":
        changed[name] = torch.zeros(changed[name].numel() + 1)
    elif kind == "int":
        changed[name] = changed[name].to(torch.int32)
    else:
        changed[name] = changed[name].clone().fill_(float("nan"))
    return changed


@FUZZ
@given(data=st.data(), command=st.sampled_from(["merged", "peft", "predict", "heads"]))
def test_adapter_weights_missing_extra_or_unusable_tensors_are_refused(
    world, capsys, tmp_path_factory, data, command
):
    from safetensors.torch import load_file

    adapter = tmp_path_factory.mktemp("tensors") / "adapter"
    shutil.copytree(world["run"] / "adapter", adapter)
    weights = adapter / "heartlora_adapter.safetensors"
    save_file(_mutated_tensors(load_file(str(weights)), data), str(weights))
    export = world["export"]
    before = _snapshot(export)
    image = str(world["data"] / "toy" / "images" / "test" / "0000.png")
    argv = {
        "merged": ["export", "--adapter", str(adapter), "--format", "merged"],
        "peft": ["export", "--adapter", str(adapter), "--format", "peft"],
        "predict": ["predict", "--adapter", str(adapter), image],
        "heads": ["heads", "--adapter", str(adapter), "--output-dir", str(export / "heads")],
    }[command]
    if command in ("merged", "peft"):
        argv += ["--output-dir", str(export), "--overwrite"]
    line = _assert_clean_failure(main(argv), capsys, export, before)
    assert "heartlora_adapter.safetensors" in line


# --- image files ---------------------------------------------------------------------------------

_MODES = st.sampled_from(
    [
        "1",
        "L",
        "P",
        "LA",
        "PA",
        "RGB",
        "RGBA",
        "CMYK",
        "YCbCr",
        "I;16",
        "I;16B",
        "I",
        "F",
        "LAB",
        "HSV",
    ]
)


@FUZZ
@given(mode=_MODES, fmt=st.sampled_from(["PNG", "TIFF", "JPEG", "BMP", "WEBP"]), data=st.data())
def test_images_of_every_mode_become_8_bit_rgb_or_are_refused_by_name(tmp_path, mode, fmt, data):
    from PIL import Image

    from heartlora.data.base import open_image
    from heartlora.errors import HeartLoRAError

    image = Image.new(mode, (9, 7))
    path = tmp_path / f"image.{fmt.lower()}"
    try:
        image.save(path, fmt)
    except (OSError, ValueError, KeyError):  # this format cannot hold this mode
        return
    try:
        decoded = open_image(path)
    except HeartLoRAError as error:
        assert str(path) in str(error) and len(str(error).splitlines()) == 1
        with Image.open(path) as stored:
            assert stored.mode in ("I", "F", "LAB", "HSV"), stored.mode
        return
    assert decoded.mode == "RGB" and decoded.size == (9, 7)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    import numpy as np
    from PIL import Image

    from heartlora.data.base import open_image

    values = np.array([[0, 257, 32896, 65535, 1000, 60000]], dtype=np.uint16)
    for fmt in ("png", "tiff"):
        path = tmp_path / f"grey16.{fmt}"
        Image.fromarray(values).save(path)
        with Image.open(path) as stored:
            assert stored.mode.startswith("I;16")
        decoded = np.asarray(open_image(path))
        assert decoded[0, :, 0].tolist() == [0, 1, 128, 255, 4, 233]
        assert (decoded[..., 0] == decoded[..., 2]).all()


# --- JSON, YAML and method strings ---------------------------------------------------------------


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=40),
        st.sampled_from(
            ['{"a": 1, "a": 2}', "[NaN]", '{"x": -Infinity}', "\ufeff{}", "[" * 5000, "9" * 5000]
        ),
    )
)
def test_json_documents_are_read_strictly_or_refused_in_one_line(text):
    from heartlora.errors import HeartLoRAError
    from heartlora.io.documents import parse_json

    try:
        value = parse_json(text, "f.json")
    except HeartLoRAError as error:
        assert str(error).startswith("f.json") and len(str(error).splitlines()) == 1
        return
    assert json.loads(json.dumps(value)) == value  # only what JSON itself can say


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=40),
        st.sampled_from(
            ["a: 1\na: 2\n", "x: {b: 1, b: 2}", "\ufeffa: 1", "[" * 5000, "a: &x [*x]"]
        ),
    )
)
def test_yaml_documents_are_read_strictly_or_refused_in_one_line(text):
    from heartlora.errors import HeartLoRAError
    from heartlora.io.documents import parse_yaml

    try:
        parse_yaml(text, "f.yaml")
    except HeartLoRAError as error:
        assert str(error).startswith("f.yaml") and len(str(error).splitlines()) == 1


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=30),
        st.sampled_from(
            ["lora[method=full]", "lora[seed=3]", "lora[rank=2,rank=4]", "lora[rank=[1]", "lora[x]"]
        ),
    )
)
def test_method_strings_parse_or_are_refused_in_one_line(text):
    from heartlora.errors import HeartLoRAError
    from heartlora.training.method_specs import parse_method

    try:
        name, overrides = parse_method(text)
    except HeartLoRAError as error:
        assert len(str(error).splitlines()) == 1
        return
    assert name and not {"method", "seed", "task"} & set(overrides)


def test_16_bit_colour_png_keeps_its_range(tmp_path):
    import struct
    import zlib

    import numpy as np

    from heartlora.data.base import open_image

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    values = np.array([[[0, 0, 0], [2570, 32896, 65535], [65535, 32896, 256]]], dtype=">u2")
    header = struct.pack(">IIBBBBB", 3, 1, 16, 2, 0, 0, 0)  # 16 bits per sample, RGB
    pixels = zlib.compress(b"\x00" + values[0].tobytes())
    path = tmp_path / "rgb16.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )
    assert np.asarray(open_image(path)).tolist() == [[[0, 0, 0], [10, 128, 255], [255, 128, 1]]]
