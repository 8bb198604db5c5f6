"""`TrainConfig`: every setting of a training run, from YAML files, ``--set`` overrides and flags.

Defaults follow the paper's VTAB-1k protocol (DESIGN.md §4). Unknown or misspelled keys are an
error that names the key, the file and the closest known key.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from heartlora.config import MODES, SCORERS, TARGETS, HeartLoRAConfig
from heartlora.errors import HeartLoRAError

METHODS: dict[str, str] = {
    "linear": "classifier only; the backbone is frozen",
    "full": "every parameter is trained",
    "lora": "heartlora adapters on all heads (plain LoRA)",
    "heart-lora": "Heart-LoRA: responsiveness-based deactivation, one global head ranking",
    "heart-lora-layer": "Heart-LoRA†: responsiveness-based deactivation ranked within each layer",
    "peft-lora": "Hugging Face peft LoRA on the fused qkv linear (reference implementation)",
}
DATA_KINDS = ("vtab1k", "fgvc", "imagefolder")
HEART_MODES = {"heart-lora": "global", "heart-lora-layer": "layer"}


@dataclass
class TrainConfig:
    """All settings of one `heartlora train` run (see the README's table of keys)."""

    # model
    model: str = "vit_base_patch16_224"
    checkpoint: str | None = None
    img_size: int = 224
    drop_path: float = 0.1
    # data
    data_kind: str = "vtab1k"
    data_root: str = "data/vtab-1k"
    task: str = "cifar"
    train_split: str = "train800val200"
    eval_split: str = "test"
    image_dir: str | None = None
    normalize: list[list[float]] | None = None
    augment: bool = False
    skip_corrupt: bool = False
    cache_images: bool = False
    num_workers: int = 0
    # method and adapter
    method: str = "heart-lora"
    rank: int = 8
    scale: float = 1.0
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    ne: int = 0
    percent: float = 0.0
    scorer: str = "taylor"
    selection_mode: str | None = None
    warmup_steps: int = 20
    calib_batches: int = 4
    # optimisation (paper protocol)
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 10
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    label_smoothing: float = 0.0
    eval_every: int = 10
    # run
    seed: int = 0
    device: str = "auto"
    dtype: str = "fp32"
    threads: int | None = None

    def __post_init__(self) -> None:
        for item in fields(self):  # YAML 1.1 reads "1e-3" as a string: accept it as a number
            value = getattr(self, item.name)
            if item.type.startswith("float") and isinstance(value, str):
                try:
                    setattr(self, item.name, float(value))
                except ValueError:
                    pass  # reported by validate()
        self.validate()

    def validate(self) -> None:
        """Check every value; raise `HeartLoRAError` naming the first bad key."""
        for item in fields(self):
            _check_type(item.name, getattr(self, item.name), item.type)
        if self.method not in METHODS:
            raise HeartLoRAError(_choice_error("method", self.method, METHODS))
        if self.data_kind not in DATA_KINDS:
            raise HeartLoRAError(_choice_error("data_kind", self.data_kind, DATA_KINDS))
        if self.scorer not in SCORERS:
            raise HeartLoRAError(_choice_error("scorer", self.scorer, SCORERS))
        if self.selection_mode is not None and self.selection_mode not in MODES:
            raise HeartLoRAError(_choice_error("selection_mode", self.selection_mode, MODES))
        if self.dtype not in ("fp32", "bf16"):
            raise HeartLoRAError(_choice_error("dtype", self.dtype, ("fp32", "bf16")))
        for key in ("img_size", "epochs", "batch_size", "rank", "eval_every", "calib_batches"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise HeartLoRAError(f"{key} must be a positive integer, got {value!r}")
        for key in ("ne", "warmup_steps", "warmup_epochs", "num_workers", "seed"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise HeartLoRAError(f"{key} must be a non-negative integer, got {value!r}")
        for key in ("lr", "weight_decay", "warmup_lr", "min_lr", "drop_path", "label_smoothing"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise HeartLoRAError(f"{key} must be a non-negative number, got {value!r}")
        for target in self.targets:
            if target not in TARGETS:
                raise HeartLoRAError(_choice_error("targets", target, TARGETS))
        if self.uses_heartlora:
            self.adapter_config()  # validates rank, scale, ne, percent

    @property
    def uses_heartlora(self) -> bool:
        """True for the methods that inject heartlora adapters."""
        return self.method in ("lora", "heart-lora", "heart-lora-layer")

    @property
    def selects_heads(self) -> bool:
        """True for the methods that score heads and deactivate some of them."""
        return self.method in HEART_MODES

    def adapter_config(self) -> HeartLoRAConfig:
        """The `HeartLoRAConfig` of this run's adapters."""
        mode = self.selection_mode or HEART_MODES.get(self.method, "global")
        return HeartLoRAConfig(
            rank=self.rank,
            scale=float(self.scale),
            targets=tuple(self.targets),
            ne=self.ne if self.selects_heads else 0,
            mode=mode,
            percent=float(self.percent),
            scorer=self.scorer,
            warmup_steps=self.warmup_steps,
            calib_batches=self.calib_batches,
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/JSON ready)."""
        return asdict(self)


_SCALARS = {"int": int, "float": (int, float), "bool": bool, "str": str}


def _check_type(key: str, value: Any, annotation: str) -> None:
    """Check ``value`` against a field annotation such as ``int``, ``str | None``, ``list[str]``."""
    kinds = [part.strip() for part in annotation.split("|")]
    if value is None:
        if "None" in kinds:
            return
        raise HeartLoRAError(f"{key} must be set (got null)")
    if not _matches(value, kinds[0]):
        raise HeartLoRAError(
            f"{key} must be {annotation.replace(' | None', ' or null')}, got {value!r}"
        )


def _matches(value: Any, kind: str) -> bool:
    if kind.startswith("list["):
        return isinstance(value, list) and all(_matches(v, kind[5:-1]) for v in value)
    if isinstance(value, bool) and kind != "bool":
        return False
    if kind == "float" and isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, _SCALARS[kind])


def known_keys() -> list[str]:
    """Every key a config file or ``--set`` may use."""
    return [f.name for f in fields(TrainConfig)]


def _choice_error(key: str, value: Any, choices) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{key}: unknown value {value!r}{hint}; expected one of {', '.join(choices)}"


def _check_keys(data: dict[str, Any], where: str) -> None:
    keys = known_keys()
    for key in data:
        if key not in keys:
            close = difflib.get_close_matches(str(key), keys, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise HeartLoRAError(f"{where}: unknown config key {key!r}{hint}")


def parse_override(item: str) -> tuple[str, Any]:
    """``"key=value"`` → ``(key, value)``, the value read with YAML rules (numbers, bools,
    lists, null). Used by every ``--set`` option; the key is checked where it is applied."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise HeartLoRAError(f"--set expects key=value, got {item!r}")
    try:
        return key, yaml.safe_load(text)
    except yaml.YAMLError:
        raise HeartLoRAError(f"--set {key}: cannot parse value {text!r}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The key/value mapping of a YAML config file (validated keys, not yet values).

    A file may name a ``base`` file (relative to itself) whose keys it overrides.
    """
    path = Path(path)
    if not path.is_file():
        raise HeartLoRAError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise HeartLoRAError(f"{path}{line}: {problem}") from None
    if not isinstance(data, dict):
        raise HeartLoRAError(
            f"{path}: expected a mapping of config keys, got {type(data).__name__}"
        )
    base = data.pop("base", None)
    if base is not None:
        data = {**read_config_file(path.parent / str(base)), **data}
    _check_keys(data, str(path))
    return data


def build_config(
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> TrainConfig:
    """Merge defaults < config file < ``flags`` (given CLI flags) < ``--set key=value`` overrides."""
    data: dict[str, Any] = read_config_file(config_file) if config_file else {}
    data.update({k: v for k, v in (flags or {}).items() if v is not None})
    for item in overrides or []:
        key, value = parse_override(item)
        _check_keys({key: None}, "--set")
        data[key] = value
    if isinstance(data.get("targets"), str):
        data["targets"] = [t.strip() for t in data["targets"].split(",") if t.strip()]
    try:
        return TrainConfig(**data)
    except TypeError as error:
        raise HeartLoRAError(f"bad config: {error}") from None
