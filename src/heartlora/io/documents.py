"""Strict reading of the JSON and YAML documents heartlora reads: one line for every problem.

Python's `json` accepts what JSON does not (``NaN``, ``Infinity``, a key given twice, the later
silently winning) and PyYAML's safe loader lets a key given twice overwrite the first. A file
that says two things, or a number JSON has no spelling for, is refused here with the file, the
line and what was expected, as a strict parser would; deep nesting and over-long integers are
refused the same way instead of surfacing as `RecursionError` or `ValueError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from heartlora.errors import HeartLoRAError


def _one_line(message: str) -> HeartLoRAError:
    return HeartLoRAError(" ".join(message.splitlines()))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {json.dumps(key)[:60]} appears twice")
        result[key] = value
    return result


def decode_text(data: bytes | str, where: str, expected: str) -> str:
    """``data`` as text: UTF-8 without a byte-order mark.

    Raises:
        HeartLoRAError: invalid UTF-8 (with the line), or a byte-order mark, naming ``where``.
    """
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            raise _one_line(f"{where} line {line}: not UTF-8 text (expected {expected})") from None
    if text.startswith("\ufeff"):
        raise _one_line(
            f"{where}: starts with an invisible byte-order mark (U+FEFF); save it as UTF-8 "
            f"without BOM (expected {expected})"
        )
    return text


def parse_json(data: bytes | str, where: str, expected: str = "a JSON document") -> Any:
    """The JSON value in ``data``, read strictly.

    Args:
        data: the document, as read from the file.
        where: names the document in errors (its path).
        expected: what the document should be, for the messages.

    Raises:
        HeartLoRAError: invalid UTF-8, a byte-order mark, invalid JSON (with line and column),
            ``NaN``/``Infinity``, a key that appears twice in one object, nesting too deep or an
            integer too long to read.
    """
    text = decode_text(data, where, expected)
    try:
        return json.loads(text, object_pairs_hook=_unique_object, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise _one_line(
            f"{where} line {error.lineno} column {error.colno}: invalid JSON: {error.msg} "
            f"(expected {expected})"
        ) from None
    except RecursionError:
        raise _one_line(f"{where}: JSON nested too deeply (expected {expected})") from None
    except ValueError as error:  # the hooks above, or an integer over Python's digit limit
        raise _one_line(f"{where}: {str(error).split(':')[0]} (expected {expected})") from None


MAX_DOCUMENT_BYTES = 64 * 2**20
"""The largest JSON file `read_json` reads: heartlora's own documents are kilobytes, so a bigger
one is the wrong file, refused before it fills the memory."""


def read_json(path: Path, expected: str = "a JSON document") -> Any:
    """`parse_json` of the file at ``path`` (which names it in errors).

    Raises:
        HeartLoRAError: as `parse_json`; also when the file cannot be read or is larger than
            `MAX_DOCUMENT_BYTES`.
    """
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise _one_line(
                f"{path}: {size} bytes, larger than any {expected} can be (at most "
                f"{MAX_DOCUMENT_BYTES // 2**20} MiB)"
            )
        data = path.read_bytes()
    except OSError as error:
        raise _one_line(f"{path}: {error.strerror or error} (expected {expected})") from None
    return parse_json(data, str(path), expected)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that gives one key twice and aliases (``*name``):
    no heartlora document needs them, and a few lines of nested aliases expand into billions of
    values once anything walks them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"alias *{event.anchor} is not accepted (write the value out)",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key; the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(data: bytes | str, where: str, expected: str = "a YAML document") -> Any:
    """The YAML value in ``data``, read with the safe loader, refusing repeated keys and aliases.

    Raises:
        HeartLoRAError: invalid UTF-8, a byte-order mark, invalid YAML (with its line), a key
            given twice in one mapping, an alias, or nesting too deep.
    """
    text = decode_text(data, where, expected)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise _one_line(f"{where}{line}: {problem} (expected {expected})") from None
    except RecursionError:
        raise _one_line(f"{where}: YAML nested too deeply (expected {expected})") from None


def read_yaml_mapping(
    path: str | Path, what: str, expected: str, allow_empty: bool = False
) -> dict[Any, Any]:
    """The mapping in the YAML file at ``path`` (``what`` names the kind of file, ``expected``
    its content, for the messages); an empty file is ``{}`` where ``allow_empty``.

    Raises:
        HeartLoRAError: a missing file, invalid YAML (`parse_yaml`) or a document that is not a
            mapping (or is empty, unless ``allow_empty``), in one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise HeartLoRAError(f"{path}: {what} not found")
    data = parse_yaml(path.read_bytes(), str(path), expected)
    if data is None and allow_empty:
        return {}
    if not isinstance(data, dict) or not (data or allow_empty):
        raise HeartLoRAError(f"{path}: expected {expected}, got {type(data).__name__}")
    return data
