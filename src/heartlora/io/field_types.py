"""The one check of a dataclass field's value: its type, its choices and its range, in words.

Every settings and file record checks its values here: `HeartLoRAConfig`, `TrainConfig`, the
speed benchmark's `SpeedConfig`, the SLURM settings, the grid and protocol files,
``heartlora_config.json``'s records (`heartlora.adapter_io`) and a checkpoint's progress
(`heartlora.training.run_state`). A field states what it allows in its
annotation and its ``metadata``: ``choices`` (the allowed values; of each item of a list),
``minimum`` and ``maximum`` (inclusive), ``above`` and ``below`` (exclusive), ``nonempty`` (of
a list or a string). Integers must fit in 64 bits, what torch, numpy and a checkpoint store.
`record_from_mapping` makes a record from a file's mapping: unknown and missing keys, then this.

An annotation is a type or the text ``from __future__ import annotations`` leaves in
``dataclasses.fields``, built from: ``int``; ``float`` (integers are numbers too, NaN and the
infinities are not); ``bool`` (never an integer or a number); ``str``; ``X | None``;
``list[X]``; ``tuple[X, ...]`` (a list: JSON and YAML have no tuples); ``dict[K, V]``; ``Any``.
"""

from __future__ import annotations

import functools
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, fields
from typing import Any, TypeVar

from heartlora.errors import HeartLoRAError, did_you_mean

_NAMES = {kind.__name__: kind for kind in (bool, int, float, str, list, tuple, dict)} | {"Any": Any}
_UNIONS = (types.UnionType, typing.Union)
_CONTAINERS: dict[Any, type | tuple[type, ...]] = {list: list, tuple: (list, tuple), dict: dict}
_NOUNS: dict[Any, tuple[str, str]] = {
    Any: ("any value", "values"),
    type(None): ("null", "nulls"),
    bool: ("true or false", "booleans"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
}
"""Each plain type in words: (one, many)."""

MAX_INTEGER = 2**63 - 1
"""The largest integer a checked value may hold: what torch, numpy and a checkpoint store."""

_BOUNDS: tuple[tuple[str, str, Any], ...] = (
    ("minimum", "at least", lambda value, bound: value >= bound),
    ("above", "greater than", lambda value, bound: value > bound),
    ("maximum", "at most", lambda value, bound: value <= bound),
    ("below", "below", lambda value, bound: value < bound),
)
"""The range keys of a field's metadata: (key, its words, whether a value keeps to it)."""


@dataclass(frozen=True)
class Mismatch:
    """Where a value departs from its annotation: ``path`` (``""``, or the items on the way,
    such as ``"[2][0]"`` or ``".name"``) leads to ``value``, which is not ``expected`` (words)."""

    path: str
    value: Any
    expected: str


def matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is of the type ``annotation`` (a type, or its text) names."""
    return first_mismatch(value, annotation) is None


def describe(annotation: Any) -> str:
    """``annotation`` in words for messages: ``"an integer"``, ``"a list of strings or null"``."""
    return _words(_resolve(annotation))[0]


def first_mismatch(value: Any, annotation: Any) -> Mismatch | None:
    """The first part of ``value`` that is not of the type ``annotation`` names, the deepest
    list item or mapping value where one is wrong; ``None`` when all of it is."""
    return _mismatch(value, _resolve(annotation), "")


def field_error(item: Field, value: Any, annotation: Any = None) -> str | None:
    """What is wrong with ``value`` as the value of field ``item``, as a message that starts
    with the field's name; ``None`` when nothing is.

    Checked in this order: the annotation's type (``annotation``, or the field's own); then,
    unless ``value`` is null, the metadata's ``choices`` and ``nonempty``, the 64-bit range of
    integers and the metadata's bounds (module docstring).
    """
    name = item.name
    kind = item.type if annotation is None else annotation
    if value is None and not matches(None, kind):
        return f"{name} must be set (got null)"
    wrong = first_mismatch(value, kind)
    if wrong is not None:  # the deepest wrong item: normalize[1][0], not the whole list
        return f"{name}{wrong.path} must be {wrong.expected}, got {wrong.value!r}"
    if value is None:
        return None
    choices = item.metadata.get("choices")
    for entry in value if isinstance(value, (list, tuple)) else [value]:
        if choices is not None and entry not in choices:
            return (
                f"{name}: unknown value {entry!r}{did_you_mean(entry, choices)}; expected one of "
                f"{', '.join(choices)}"
            )
    if item.metadata.get("nonempty") and not (value.strip() if isinstance(value, str) else value):
        return f"{name} must not be empty"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
        return f"{name} must be below 2**63 in magnitude, got {value}"
    limits = [
        (words, item.metadata[key], keeps) for key, words, keeps in _BOUNDS if key in item.metadata
    ]
    if isinstance(value, (int, float)) and not all(keeps(value, b) for _, b, keeps in limits):
        wanted = " and ".join(f"{words} {bound}" for words, bound, _ in limits)
        return f"{name} must be {wanted}, got {value!r}"
    return None


def check_fields(record: Any, where: str = "") -> None:
    """Check every field of the dataclass instance ``record`` with `field_error`.

    Raises:
        HeartLoRAError: naming the first wrong field, after ``where: `` when ``where`` is given.
    """
    annotations = _annotations(type(record))
    for item in fields(record):
        message = field_error(item, getattr(record, item.name), annotations[item.name])
        if message is not None:
            raise HeartLoRAError(f"{where}: {message}" if where else message)


Record = TypeVar("Record")


def record_from_mapping(
    kind: type[Record], data: Mapping[str, Any], where: str, noun: str = "key", **fixed: Any
) -> Record:
    """The dataclass ``kind`` made from ``data`` (a file's mapping) and the ``fixed`` fields the
    file does not give, checked: every key a field, every field without a default given, and
    `check_fields`. Lists become tuples where the field is a tuple.

    Raises:
        HeartLoRAError: one line starting with ``where``: an unknown ``noun`` (with the closest
            known one), a missing key, or the first wrong value.
    """
    names = [item.name for item in fields(kind) if item.name not in fixed]  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            raise HeartLoRAError(
                f"{where}: unknown {noun} {key!r}{did_you_mean(key, names)}; expected one of "
                f"{', '.join(names)}"
            )
    values, annotations = dict(data), _annotations(kind)
    for item in fields(kind):  # type: ignore[arg-type]
        required = item.default is MISSING and item.default_factory is MISSING
        if item.name in names and required and item.name not in values:
            kind_words = describe(annotations[item.name])
            raise HeartLoRAError(f"{where}: {item.name} is missing ({kind_words})")
        if str(item.type).startswith("tuple") and isinstance(values.get(item.name), list):
            values[item.name] = tuple(values[item.name])
    record = kind(**values, **fixed)
    check_fields(record, where)
    return record


@functools.cache
def _annotations(kind: type) -> dict[str, Any]:
    """Each field's annotation of the dataclass ``kind``, resolved in its own module: a record
    may hold another (``dataset: DatasetInfo | None``), which the plain names cannot spell."""
    return typing.get_type_hints(kind)


@functools.cache
def _resolve(annotation: Any) -> Any:
    """The type an annotation names (its text is the code's own, never data: eval is safe)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"__builtins__": {}}, _NAMES)
    return type(None) if annotation is None else annotation


def _mismatch(value: Any, kind: Any, path: str) -> Mismatch | None:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any or origin is None and _is_plain(value, kind):
        return None
    if origin in _UNIONS:
        if any(_mismatch(value, arg, path) is None for arg in args):
            return None
        same = [arg for arg in args if _is_container(value, typing.get_origin(arg))]
        return _mismatch(value, same[0], path) if len(same) == 1 else _wrong(value, kind, path)
    if not _is_container(value, origin):
        return _wrong(value, kind, path)
    if origin is tuple and (len(args) != 2 or args[1] is not Ellipsis):
        raise TypeError(f"unsupported annotation {kind} (expected tuple[X, ...])")
    if origin is dict:
        if any(_mismatch(key, args[0], path) is not None for key in value):
            return _wrong(value, kind, path)
        items = [(f"{path}.{key}", item, args[1]) for key, item in value.items()]
    else:
        items = [(f"{path}[{index}]", item, args[0]) for index, item in enumerate(value)]
    found = (_mismatch(item, item_kind, where) for where, item, item_kind in items)
    return next((wrong for wrong in found if wrong is not None), None)


def _is_plain(value: Any, kind: type) -> bool:
    if isinstance(value, bool) and kind is not bool:  # never an integer or a number
        return False
    if kind is float:  # an integer too, where a float can hold it
        return isinstance(value, (int, float)) and abs(value) <= sys.float_info.max
    return isinstance(value, kind)


def _is_container(value: Any, origin: Any) -> bool:
    """Whether ``value`` is the container of ``list[X]``, ``tuple[X, ...]`` (a list or a tuple)
    or ``dict[K, V]``, whatever its items."""
    return origin in _CONTAINERS and isinstance(value, _CONTAINERS[origin])


def _wrong(value: Any, kind: Any, path: str) -> Mismatch:
    return Mismatch(path, value, _words(kind)[0])


def _words(kind: Any) -> tuple[str, str]:
    """``kind`` in words: (one, many), as ``("a list of integers", "lists of integers")``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in _UNIONS:
        words = [_words(arg) for arg in args]
        return " or ".join(one for one, _ in words), " or ".join(many for _, many in words)
    if origin in (list, tuple):
        items = _words(args[0])[1]
        return f"a list of {items}", f"lists of {items}"
    if origin is dict:
        keys, values = _words(args[0])[1], _words(args[1])[1]
        return f"a mapping of {keys} to {values}", f"mappings of {keys} to {values}"
    return _NOUNS.get(kind, (f"a {kind.__name__}", f"{kind.__name__} values"))
