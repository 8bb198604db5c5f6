"""Whether a value read from JSON or YAML is of a dataclass field's type, and that type in words.

The one type check behind `TrainConfig`'s keys, ``heartlora_config.json``'s keys
(`heartlora.adapter_io`) and a checkpoint's progress (`heartlora.training.run_state`).
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
from dataclasses import dataclass
from typing import Any

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
