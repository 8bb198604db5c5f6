"""Method specs: the ``NAME[key=value,...]`` strings that name a run's method and its overrides.

`heartlora suite`, `frontier` and `benchmarks/vtab1k.py` take methods as such strings
(``heart-lora[ne=2,scorer=grad-norm]``, ``lora[targets=[q,k,v]]``); `parse_method` reads one
and `format_method` writes one back.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from heartlora.errors import HeartLoRAError
from heartlora.training.methods import check_method_keys, get_method

_METHOD_PATTERN = re.compile(r"^([a-z0-9-]+)(?:\[(.*)\])?$")


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets and braces: ``"a,b[x=1,y=[2,3]]"`` →
    ``["a", "b[x=1,y=[2,3]]"]``, ``"b[o={p: 1, q: 2}]"`` stays whole."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1, "{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        items.append(current.strip())
    return items


def parse_method(text: str) -> tuple[str, dict[str, Any]]:
    """``"heart-lora[ne=2,scorer=grad-norm]"`` → ``("heart-lora", {"ne": 2, "scorer": ...})``;
    a list or mapping value keeps its commas: ``"lora[targets=[q,k,v]]"``,
    ``"peft-adalora[peft_options={init_r: 12, tinit: 5}]"``. A size or scale key the method
    does not read is refused (``peft-ia3[rank=8]``: ``peft-ia3 has no rank``)."""
    match = _METHOD_PATTERN.match(text.strip())
    if not match:
        raise HeartLoRAError(f"method {text!r}: expected NAME or NAME[key=value,...]")
    overrides: dict[str, Any] = {}
    for item in filter(None, split_top_level(match.group(2) or "")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise HeartLoRAError(f"method {text!r}: expected key=value inside the brackets")
        if key in NOT_PER_SUITE:
            raise HeartLoRAError(
                f"method {text!r}: {key} cannot be set in brackets ({NOT_PER_SUITE[key]})"
            )
        if key in overrides:
            raise HeartLoRAError(f"method {text!r}: {key} is set twice inside the brackets")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise HeartLoRAError(f"method {text!r}: cannot read the value of {key}") from None
    check_method_keys(match.group(1), overrides)
    return match.group(1), overrides


def parse_listed_method(spec: str, where: str) -> tuple[str, dict[str, Any]]:
    """`parse_method` of a method that a file lists (a grid's or a protocol's ``methods``),
    refusing an unknown method too; an error starts with ``where`` (the file and its key) and
    names ``spec``."""
    try:
        method, overrides = parse_method(spec)
        get_method(method)
    except HeartLoRAError as error:
        said = str(error) if spec in str(error) else f"{spec}: {error}"
        raise HeartLoRAError(f"{where}: {said}") from None
    return method, overrides


NOT_PER_SUITE = {
    "method": "the --methods names choose the method",
    "task": "the suite's --tasks choose the tasks",
    "seed": "the suite's --seeds choose the seeds",
}
"""Keys neither ``--set`` nor a method's brackets may set in a suite: each run's method, task and
seed come from the suite's own options."""


def format_method(name: str, overrides: dict[str, Any]) -> str:
    """The inverse of `parse_method`: ``("lora", {"rank": 4})`` → ``"lora[rank=4]"``."""
    if not overrides:
        return name

    def text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"  # as YAML and parse_method spell them
        return "[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else str(value)

    return f"{name}[{','.join(f'{k}={text(v)}' for k, v in overrides.items())}]"
