"""Speed and memory of head-level adapters, measured against peft LoRA and the frozen-backbone bound.

One process builds every variant from the same random weights (no download) and times them
round by round — each round runs one training step of every variant, in an order rotated from
round to round — so that load from other processes on a shared machine hits all variants alike.
Medians over the timed rounds are quoted; the raw times of every round are kept.

Training variants (one step = forward + backward + AdamW step on one fixed batch):

* ``bound`` — the frozen-backbone bound: every backbone weight frozen, only the classifier
  trained, and the input image marked ``requires_grad`` so that backward still runs through
  every block (it computes no weight gradient). Any method that trains something inside the
  first block pays at least this.
* ``peft_lora`` — peft ``LoraConfig(r, lora_alpha=r·s, target_modules=["qkv"])`` with the
  classifier in ``modules_to_save``: plain LoRA on the fused qkv linear.
* ``lora_all_heads`` — heartlora adapters on q and v, every head active.
* ``heart_lora`` — the same with half the heads of every layer deactivated (``ne = H // 2``).
* ``full`` — full fine-tuning.

Memory per variant is the peak of live tensor bytes during one training step: the bytes that
exist before it (parameters, optimizer state, the batch) plus the highest point of what the step
allocates on top. On CUDA the step's share is ``torch.cuda.max_memory_allocated`` minus what was
allocated before; on CPU it is the running sum of the allocation events that the PyTorch profiler
(``profile_memory=True``) records. The bytes saved for backward (activations, counted once per
storage, parameters excluded) are reported beside it, recorded with
``torch.autograd.graph.saved_tensors_hooks``.

With ``compile=True`` every training variant is also timed as ``torch.compile`` makes it
(``compiled_<variant>``, in the same rotated rounds, compiled before the warm-up rounds):
heartlora's variants with ``fullgraph=True``, so a graph break fails the benchmark instead of
hiding in its numbers, and peft's as torch can.

Also measured: inference of the merged Heart-LoRA model against the base model (and of the
unmerged adapters), the cost of responsiveness calibration (``taylor`` over ``calib_batches``
batches) against one training epoch of ``epoch_images`` images and against the whole run of
``run_epochs`` such epochs at Heart-LoRA's median step time (``calibration_vs_run``: scoring
happens once per run), and the adapter's size on disk against peft's ``save_pretrained``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from heartlora.adapter_io import save_adapter
from heartlora.calibration import Calibration
from heartlora.config import HeartLoRAConfig
from heartlora.errors import HeartLoRAError, did_you_mean
from heartlora.inject import heads_per_layer, merge
from heartlora.io.documents import read_yaml_mapping
from heartlora.io.field_types import check_fields
from heartlora.models.backbone import create_architecture
from heartlora.training.methods import Method, MethodSettings, directory_bytes, get_method
from heartlora.training.precision import DTYPES, forward_precision, matmul_precision

TRAIN_VARIANTS: tuple[str, ...] = ("bound", "peft_lora", "lora_all_heads", "heart_lora", "full")
"""The training variants, in the order of the report."""

LABELS: dict[str, str] = {
    "bound": "frozen-backbone bound",
    "peft_lora": "peft LoRA (qkv)",
    "lora_all_heads": "heartlora, all heads (q, v)",
    "heart_lora": "Heart-LoRA, half the heads",
    "full": "full fine-tuning",
    "base": "base model",
    "merged": "merged Heart-LoRA",
    "unmerged": "Heart-LoRA, adapters live",
}

INFERENCE_VARIANTS: tuple[str, ...] = ("base", "merged", "unmerged")


@dataclass(frozen=True)
class Ratio:
    """One ratio of the report: ``numerator`` over ``denominator`` in one ``measure``.

    Attributes:
        numerator, denominator: variant names (`TRAIN_VARIANTS`, `INFERENCE_VARIANTS`, a
            ``compiled_*`` variant), or for ``calibration`` the denominator ``epoch`` or ``run``.
        measure: ``step`` (training step time), ``inference`` (forward time),
            ``calibration`` (scoring time), ``memory`` (peak bytes of a step) or ``bytes``
            (the adapter's stored bytes).
        paired: also reported as the median of per-round ratios (``paired_ratios``).
    """

    numerator: str
    denominator: str
    measure: str = "step"
    paired: bool = False

    @property
    def name(self) -> str:
        """The ratio's key in the result, e.g. ``heart_lora_memory_vs_peft_lora``."""
        infix = {"memory": "_memory", "bytes": "_adapter_bytes"}.get(self.measure, "")
        return f"{self.numerator}{infix}_vs_{self.denominator}"

    @property
    def timed(self) -> bool:
        """Whether it is a ratio of times (reported in wall and CPU time)."""
        return self.measure in ("step", "inference", "calibration")


RATIOS: tuple[Ratio, ...] = (
    Ratio("heart_lora", "bound", paired=True),
    Ratio("heart_lora", "peft_lora", paired=True),
    Ratio("lora_all_heads", "bound", paired=True),
    Ratio("lora_all_heads", "peft_lora", paired=True),
    Ratio("peft_lora", "bound"),
    Ratio("full", "bound"),
    Ratio("merged", "base", "inference", paired=True),
    Ratio("unmerged", "base", "inference"),
    Ratio("calibration", "epoch", "calibration"),
    Ratio("calibration", "run", "calibration"),
    Ratio("heart_lora", "peft_lora", "memory"),
    Ratio("heart_lora", "bound", "memory"),
    Ratio("lora_all_heads", "peft_lora", "memory"),
    Ratio("full", "bound", "memory"),
    Ratio("heart_lora", "peft_lora", "bytes"),
    Ratio("lora_all_heads", "peft_lora", "bytes"),
)
"""The report's ratios, in its order; with ``--compile``, `compiled_ratios` adds its own."""


def compiled_ratios(compiled: Sequence[str]) -> tuple[Ratio, ...]:
    """The ratios of the ``compiled_*`` variants timed: each against the compiled bound and
    against its own eager step (Heart-LoRA's also paired)."""
    against_bound = tuple(
        Ratio(name, "compiled_bound", paired=name == "compiled_heart_lora")
        for name in compiled
        if name != "compiled_bound"
    )
    against_eager = tuple(
        Ratio(name, name.removeprefix("compiled_"), paired=name == "compiled_heart_lora")
        for name in compiled
    )
    return against_bound + against_eager


def read_speed_goals(path: str | Path) -> dict[str, float]:
    """The speed goals in the YAML mapping at ``path``: ratio name → the most it may be.

    Raises:
        HeartLoRAError: a missing file, invalid YAML, a key that is not a ratio of the report
            (with the closest one) or a limit that is not a positive number; one line naming
            the file and the key.
    """
    data = read_yaml_mapping(path, "speed goals file", "a mapping of ratio names to limits")
    names = [ratio.name for ratio in RATIOS]
    goals: dict[str, float] = {}
    for key, limit in data.items():
        if key not in names:
            hint = did_you_mean(key, names)
            raise HeartLoRAError(f"{path}: {key!r} is not a ratio of the report{hint}")
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
            raise HeartLoRAError(f"{path}: {key}: expected a positive number, got {limit!r}")
        goals[key] = float(limit)
    return goals


DEFAULT_GOALS_FILE = Path(str(resources.files("heartlora.bundled") / "speed_goals.yaml"))
"""The project's speed goals (its comments say where each comes from)."""

RATIO_LIMITS: dict[str, float] = read_speed_goals(DEFAULT_GOALS_FILE)
"""The default speed goals: each ratio must be at most this (the result's ``targets``)."""


@dataclass
class SpeedConfig:
    """What to benchmark and how long.

    Args:
        model: timm architecture name, built with random weights (``pretrained=False``).
        img_size: input resolution in pixels.
        batch_size: images per step.
        steps: timed rounds; every round runs one step of every variant.
        warmup: untimed rounds before them.
        device: ``cpu`` or ``cuda``.
        dtype: ``fp32``, ``tf32`` (TF32 matrix products on CUDA) or ``bf16`` (autocast; the
            weights stay fp32): `heartlora.training.precision`.
        rank: LoRA rank r of every adapter (peft and heartlora).
        scale: LoRA scale s (peft's ``lora_alpha = r·s``).
        num_classes: classes of the new classifier.
        epoch_images: images in the epoch that calibration is compared with.
        run_epochs: epochs of the whole run that calibration is compared with (the paper's 100).
        calib_batches: batches the responsiveness scorer averages over.
        calib_rounds: timed calibration runs (one in each of the first timed rounds).
        lr: AdamW learning rate.
        seed: seed of the weights, the batch and the head scores.
        threads: torch CPU threads; ``None`` keeps torch's choice.
        model_kwargs: extra keyword arguments for ``timm.create_model`` (tiny models in tests).
        compile: also time every training variant compiled by ``torch.compile``.
        compile_backend: the ``torch.compile`` backend (``inductor``; tests use ``aot_eager``).
    """

    model: str = "vit_small_patch16_224"
    img_size: int = field(default=224, metadata={"minimum": 1})
    batch_size: int = field(default=8, metadata={"minimum": 1})
    steps: int = field(default=10, metadata={"minimum": 1})
    warmup: int = field(default=2, metadata={"minimum": 0})
    device: str = field(default="cpu", metadata={"choices": ("cpu", "cuda")})
    dtype: str = field(default="fp32", metadata={"choices": DTYPES})
    rank: int = field(default=8, metadata={"minimum": 1})
    scale: float = 1.0
    num_classes: int = field(default=10, metadata={"minimum": 1})
    epoch_images: int = field(default=1000, metadata={"minimum": 1})
    run_epochs: int = field(default=100, metadata={"minimum": 1})
    calib_batches: int = field(default=HeartLoRAConfig().calib_batches, metadata={"minimum": 1})
    calib_rounds: int = field(default=3, metadata={"minimum": 1})
    lr: float = 1e-3
    seed: int = 0
    threads: int | None = field(default=None, metadata={"minimum": 1})
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    compile: bool = False
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        check_fields(self)  # types, choices and bounds of the fields' metadata
        if self.device == "cuda" and not torch.cuda.is_available():
            raise HeartLoRAError("device 'cuda' was asked for, but torch sees no CUDA device")


@dataclass
class _Variant:
    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    input_requires_grad: bool = False
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    compile_seconds: float | None = None


def _autocast(config: SpeedConfig) -> contextlib.AbstractContextManager:
    return forward_precision(config.dtype, config.device)


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


VARIANT_METHODS: dict[str, str] = {
    "bound": "linear",
    "peft_lora": "peft-lora",
    "lora_all_heads": "lora",
    "heart_lora": "heart-lora",
    "full": "full",
}
"""The training method (`heartlora.training.methods.METHODS`) each training variant builds."""


def _build_model(config: SpeedConfig) -> nn.Module:
    torch.manual_seed(config.seed)
    model = create_architecture(
        config.model,
        num_classes=config.num_classes,
        img_size=config.img_size,
        **config.model_kwargs,
    )
    return model.to(config.device).train()


def _adapter_config(config: SpeedConfig, method: Method, ne: int) -> HeartLoRAConfig:
    """The variant's adapter: rank and scale of ``config``, ``ne`` heads off for the methods
    that select heads, in their own mode."""
    return HeartLoRAConfig(
        rank=config.rank,
        scale=config.scale,
        ne=ne if method.selects_heads else 0,
        mode=method.selection_mode or "global",
    )


def _make_variant(name: str, config: SpeedConfig) -> _Variant:
    if name not in VARIANT_METHODS:
        raise HeartLoRAError(f"unknown variant {name!r}: expected one of {TRAIN_VARIANTS}")
    method = get_method(VARIANT_METHODS[name])
    model = _build_model(config)
    heads = heads_per_layer(model)
    model = method.build(model, MethodSettings(_adapter_config(config, method, ne=min(heads) // 2)))
    if method.selects_heads:  # half the heads, chosen at random: the cost, not the choice
        generator = torch.Generator().manual_seed(config.seed)
        scores = torch.rand(len(heads), max(heads), generator=generator)
        _calibration(model, config).select(scores)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=1e-4)
    # the bound's input needs a gradient so its backward runs through the frozen backbone
    return _Variant(name, model, optimizer, input_requires_grad=name == "bound")


def _calibration(model: nn.Module, config: SpeedConfig) -> Calibration:
    """The `Calibration` of a heartlora variant for a run of ``run_epochs`` epochs of
    ``epoch_images``, scoring with ``taylor`` on ``calib_batches`` batches."""
    steps = config.run_epochs * math.ceil(config.epoch_images / config.batch_size)
    adapter_config = replace(
        model.heartlora_config,
        scorer="taylor",
        calib_batches=config.calib_batches,
        calib_warmup_steps=0,
    )
    return Calibration(model, steps, adapter_config, seed=config.seed)


def _compiled(variant: _Variant, config: SpeedConfig) -> _Variant:
    """The same variant behind ``torch.compile`` (a fresh model: compiled and eager steps must
    not share parameters or optimizer state)."""
    fresh = _make_variant(variant.name, config)
    fullgraph = VARIANT_METHODS[variant.name] != "peft-lora"
    model = torch.compile(fresh.model, backend=config.compile_backend, fullgraph=fullgraph)
    return _Variant(f"compiled_{variant.name}", model, fresh.optimizer, fresh.input_requires_grad)


def _train_step(variant: _Variant, images: torch.Tensor, labels: torch.Tensor, config) -> None:
    variant.optimizer.zero_grad(set_to_none=True)
    if variant.input_requires_grad:
        images = images.detach().requires_grad_(True)
    with _autocast(config):
        logits = variant.model(images)
    F.cross_entropy(logits.float(), labels).backward()
    variant.optimizer.step()


def _timed(fn: Callable[[], Any], device: str) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``fn()``, the device synchronised on both ends.

    CPU time leaves out the time the process waited for a core, so on a shared machine it is
    the steadier of the two (with one torch thread it is the time of the work itself).
    """
    _synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def _rotated(names: tuple[str, ...], round_index: int) -> list[str]:
    shift = round_index % len(names)
    return list(names[shift:] + names[:shift])


def _storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _unique_bytes(tensors: Iterator[torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
            ptr, nbytes = _storage_key(tensor)
            seen[ptr] = max(seen.get(ptr, 0), nbytes)
    return sum(seen.values())


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                yield value


@contextlib.contextmanager
def _saved_activation_bytes(model: nn.Module) -> Iterator[dict[str, int]]:
    """Count, once per storage, the non-parameter tensors autograd saves for backward."""
    parameters = {_storage_key(p)[0] for p in model.parameters()}
    seen: dict[int, int] = {}
    result = {"bytes": 0}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        ptr, nbytes = _storage_key(tensor)
        if ptr not in parameters:
            seen[ptr] = max(seen.get(ptr, 0), nbytes)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield result
    result["bytes"] = sum(seen.values())


def _cpu_step_peak(step: Callable[[], None]) -> int:
    """Highest net bytes the step has allocated on the CPU, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [
        event
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and str(event.device_type()).endswith("CPU")
    ]
    running = peak = 0
    for event in sorted(events, key=lambda event: event.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def _measure_memory(
    variant: _Variant, images: torch.Tensor, labels: torch.Tensor, config: SpeedConfig
) -> dict[str, int]:
    """Peak live tensor bytes of one training step, with its parts (see the module docstring)."""
    model, optimizer = variant.model, variant.optimizer
    optimizer.zero_grad(set_to_none=True)
    parameter_bytes = _unique_bytes(model.parameters())
    optimizer_bytes = _unique_bytes(_optimizer_tensors(optimizer))
    batch_bytes = _unique_bytes(iter((images, labels)))
    before = parameter_bytes + optimizer_bytes + batch_bytes
    saved: dict[str, int] = {}

    def step() -> None:
        with _saved_activation_bytes(model) as counter:
            _train_step(variant, images, labels, config)
        saved.update(counter)

    if config.device == "cuda":
        torch.cuda.synchronize()
        allocated = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        step_peak = torch.cuda.max_memory_allocated() - allocated
    else:
        step_peak = _cpu_step_peak(step)
    return {
        "peak_bytes": before + step_peak,
        "parameter_bytes": parameter_bytes,
        "optimizer_state_bytes": _unique_bytes(_optimizer_tensors(optimizer)),
        "gradient_bytes": _unique_bytes(p.grad for p in model.parameters() if p.grad is not None),
        "saved_activation_bytes": saved["bytes"],
        "batch_bytes": batch_bytes,
    }


def _adapter_sizes(variants: dict[str, _Variant]) -> dict[str, dict[str, int]]:
    sizes = {}
    with tempfile.TemporaryDirectory(prefix="heartlora-speed-") as tmp:
        for name in ("heart_lora", "lora_all_heads", "peft_lora"):
            directory = Path(tmp) / name
            model = variants[name].model
            if name == "peft_lora":
                model.save_pretrained(str(directory))
            else:
                save_adapter(model, directory)
            sizes[name] = {
                "weights_bytes": directory_bytes(directory, ".safetensors"),
                "total_bytes": directory_bytes(directory),
            }
    return sizes


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _summary(wall: list[float], cpu: list[float]) -> dict[str, Any]:
    ms = [s * 1000.0 for s in wall]
    cpu_ms = [s * 1000.0 for s in cpu]
    return {
        "times_ms": ms,
        "median_ms": _median(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "cpu_times_ms": cpu_ms,
        "cpu_median_ms": _median(cpu_ms),
    }


def _paired(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of the per-round ratio (robust to load that drifts between rounds)."""
    return _median([n / d for n, d in zip(numerator, denominator)])


def _ratio_values(
    ratios: Sequence[Ratio],
    tables: dict[str, Any],
    key: str = "median_ms",
    calibration_keys: tuple[str, str] = ("epoch_ms", "run_ms"),
) -> dict[str, float]:
    """Each ratio's value from the result's ``tables`` (``train``, ``inference``,
    ``calibration``, ``memory``, ``adapter_bytes``): times under ``key`` (wall ``median_ms``
    or ``cpu_median_ms``; the calibration's epoch and run under ``calibration_keys``), peak
    memory and stored bytes."""

    def value(ratio: Ratio) -> float:
        a, b = ratio.numerator, ratio.denominator
        if ratio.measure == "step":
            return tables["train"][a][key] / tables["train"][b][key]
        if ratio.measure == "inference":
            return tables["inference"][a][key] / tables["inference"][b][key]
        if ratio.measure == "calibration":
            whole = calibration_keys[0] if b == "epoch" else calibration_keys[1]
            return tables["calibration"][key] / tables["calibration"][whole]
        if ratio.measure == "memory":
            return tables["memory"][a]["peak_bytes"] / tables["memory"][b]["peak_bytes"]
        return tables["adapter_bytes"][a]["total_bytes"] / tables["adapter_bytes"][b]["total_bytes"]

    return {ratio.name: value(ratio) for ratio in ratios}


def _paired_values(ratios: Sequence[Ratio], times: dict[str, list[float]]) -> dict[str, float]:
    """The result's ``paired_ratios``: for the paired ratios, medians of per-round wall-time
    ratios (``times``: per variant, its wall time in every timed round)."""
    return {
        ratio.name: _paired(times[ratio.numerator], times[ratio.denominator])
        for ratio in ratios
        if ratio.paired
    }


def _environment(config: SpeedConfig) -> dict[str, Any]:
    import timm

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    device_name = (
        torch.cuda.get_device_name() if config.device == "cuda" else platform.processor() or "cpu"
    )
    return {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "peft": peft_version,
        "python": platform.python_version(),
        "device_name": device_name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def run_speed_benchmark(
    config: SpeedConfig | None = None,
    log: Callable[[str], None] | None = None,
    goals: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Run the whole benchmark in this process and return a JSON-ready result; ``goals``
    (ratio name → limit, `read_speed_goals`) default to the project's, `RATIO_LIMITS`.

    Returns:
        ``{"config", "environment", "memory_method", "train", "inference", "calibration",
        "adapter_bytes", "ratios", "paired_ratios", "targets"}``: per variant the raw times of
        every timed round (ms), their median, min and max; memory in bytes; ``ratios`` of
        medians (and of peak memory, adapter size); ``paired_ratios`` as medians of per-round
        ratios; ``targets`` each ratio's limit and whether it is met.

    Raises:
        HeartLoRAError: on an invalid configuration, a model without attention heads, or no peft.
    """
    config = config or SpeedConfig()
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        with matmul_precision(config.dtype, config.device):
            return _run(config, log or (lambda _line: None), goals)
    finally:
        torch.set_num_threads(threads)


def _run(
    config: SpeedConfig, log: Callable[[str], None], goals: Mapping[str, float] | None
) -> dict[str, Any]:
    """The benchmark's phases in order: build, time training, memory, inference, storage."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    images = torch.rand(config.batch_size, 3, config.img_size, config.img_size, generator=generator)
    labels = torch.randint(0, config.num_classes, (config.batch_size,), generator=generator)
    batch = (images.to(config.device), labels.to(config.device))

    variants, compiled = _build_variants(config, batch, log)
    calibration_times = _time_training(config, variants, compiled, batch, log)
    log("measuring peak memory of one step per variant")
    memory = {name: _measure_memory(variant, *batch, config) for name, variant in variants.items()}
    log("timing inference: base, merged and unmerged Heart-LoRA")
    inference_times = _time_inference(config, variants["heart_lora"].model, batch[0])
    log("saving adapters")
    adapter_bytes = _adapter_sizes(variants)

    train = _train_rows(variants, compiled, memory)
    inference = {
        name: {"label": LABELS[name], **_summary(*zip(*times))}
        for name, times in inference_times.items()
    }
    calibration = _calibration_row(config, calibration_times, train["heart_lora"])
    ratios_reported = RATIOS + compiled_ratios(list(compiled))
    tables = {
        "train": train,
        "inference": inference,
        "calibration": calibration,
        "memory": memory,
        "adapter_bytes": adapter_bytes,
    }
    ratios = _ratio_values(ratios_reported, tables)
    times = {name: variant.times for name, variant in {**variants, **compiled}.items()}
    times.update({name: [wall for wall, _ in pairs] for name, pairs in inference_times.items()})
    goals = RATIO_LIMITS if goals is None else goals
    return {
        "config": asdict(config),
        "environment": _environment(config),
        "memory_method": _memory_method(config),
        "train": train,
        "inference": inference,
        "calibration": calibration,
        "adapter_bytes": adapter_bytes,
        "ratios": ratios,
        "cpu_ratios": _ratio_values(
            [ratio for ratio in ratios_reported if ratio.timed],
            tables,
            "cpu_median_ms",
            ("cpu_epoch_ms", "cpu_run_ms"),
        ),
        "paired_ratios": _paired_values(ratios_reported, times),
        "targets": {
            name: {"limit": limit, "value": ratios[name], "met": ratios[name] <= limit}
            for name, limit in goals.items()
        },
        "wall_s": time.perf_counter() - started,
    }


Batch = tuple[torch.Tensor, torch.Tensor]


def _build_variants(
    config: SpeedConfig, batch: Batch, log: Callable[[str], None]
) -> tuple[dict[str, _Variant], dict[str, _Variant]]:
    """Every training variant, and with ``compile`` its compiled twin (compiled by one untimed
    step, whose time is its ``compile_seconds``)."""
    log(f"building {len(TRAIN_VARIANTS)} variants of {config.model}")
    variants = {name: _make_variant(name, config) for name in TRAIN_VARIANTS}
    compiled: dict[str, _Variant] = {}
    if config.compile:
        for name in TRAIN_VARIANTS:
            log(f"compiling {name} ({config.compile_backend})")
            twin = compiled[f"compiled_{name}"] = _compiled(variants[name], config)
            twin.compile_seconds = _timed(
                lambda v=twin: _train_step(v, *batch, config), config.device
            )[0]
    return variants, compiled


def _time_training(
    config: SpeedConfig,
    variants: dict[str, _Variant],
    compiled: dict[str, _Variant],
    batch: Batch,
    log: Callable[[str], None],
) -> list[tuple[float, float]]:
    """Time one step of every variant per round, in rotated order (into each variant's
    ``times``), and calibration in the first ``calib_rounds`` timed rounds; returns the
    calibration times."""
    timed_variants = {**variants, **compiled}
    calib_batches = [batch] * config.calib_batches
    calibration_times: list[tuple[float, float]] = []
    # scoring only: the variant keeps every head, so its steps stay comparable
    scoring = _calibration(variants["lora_all_heads"].model, config)

    def calibrate() -> None:
        with _autocast(config):
            scoring.score(
                calib_batches,
                lambda logits, target: F.cross_entropy(logits.float(), target),
            )

    rounds = config.warmup + config.steps
    for round_index in range(rounds):
        timed = round_index >= config.warmup
        for name in _rotated(tuple(timed_variants), round_index):
            variant = timed_variants[name]
            wall, cpu = _timed(lambda v=variant: _train_step(v, *batch, config), config.device)
            if timed:
                variant.times.append(wall)
                variant.cpu_times.append(cpu)
        # the scorer needs trained B blocks: it runs after this round's steps
        if round_index == config.warmup - 1 or (config.warmup == 0 and round_index == 0):
            calibrate()  # untimed warm-up of the scoring path
        if timed and round_index - config.warmup < config.calib_rounds:
            calibration_times.append(_timed(calibrate, config.device))
        summary = "warm-up"
        if timed:
            steps = (f"{n} {variants[n].times[-1] * 1000:.0f} ms" for n in TRAIN_VARIANTS)
            summary = "timed: " + ", ".join(steps)
        log(f"round {round_index + 1}/{rounds} ({summary})")
    return calibration_times


def _time_inference(
    config: SpeedConfig, heart: nn.Module, images: torch.Tensor
) -> dict[str, list[tuple[float, float]]]:
    """Wall and CPU seconds of the base, merged and unmerged Heart-LoRA forward per timed round,
    in rotated order (``heart`` is back in training mode afterwards)."""
    inference_models = {
        "base": _build_model(config).eval(),
        "merged": merge(copy.deepcopy(heart)).eval(),
        "unmerged": heart.eval(),
    }
    inference_times: dict[str, list[tuple[float, float]]] = {n: [] for n in INFERENCE_VARIANTS}
    for round_index in range(config.warmup + config.steps):
        for name in _rotated(INFERENCE_VARIANTS, round_index):
            model = inference_models[name]

            def forward(model: nn.Module = model) -> None:
                with torch.inference_mode(), _autocast(config):
                    model(images)

            measured = _timed(forward, config.device)
            if round_index >= config.warmup:
                inference_times[name].append(measured)
    heart.train()
    return inference_times


def _train_rows(
    variants: dict[str, _Variant], compiled: dict[str, _Variant], memory: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The result's ``train`` rows: eager variants with their memory, then compiled ones."""
    train = {
        name: {
            "label": LABELS[name],
            "compiled": False,
            "trainable_parameters": sum(
                p.numel() for p in variant.model.parameters() if p.requires_grad
            ),
            **_summary(variant.times, variant.cpu_times),
            "memory": memory[name],
        }
        for name, variant in variants.items()
    }
    for name, variant in compiled.items():
        train[name] = {
            "label": f"{LABELS[name.removeprefix('compiled_')]}, compiled",
            "compiled": True,
            "compile_seconds": variant.compile_seconds,
            "trainable_parameters": train[name.removeprefix("compiled_")]["trainable_parameters"],
            **_summary(variant.times, variant.cpu_times),
        }
    return train


def _calibration_row(
    config: SpeedConfig, times: list[tuple[float, float]], heart_lora: dict[str, Any]
) -> dict[str, Any]:
    """The result's ``calibration``: its times beside one epoch and the whole run of
    Heart-LoRA steps."""
    steps_per_epoch = math.ceil(config.epoch_images / config.batch_size)
    run_steps = config.run_epochs * steps_per_epoch
    return {
        "scorer": "taylor",
        "calib_batches": config.calib_batches,
        "images": config.calib_batches * config.batch_size,
        **_summary(*zip(*times)),
        "epoch_images": config.epoch_images,
        "steps_per_epoch": steps_per_epoch,
        "epoch_ms": steps_per_epoch * heart_lora["median_ms"],
        "cpu_epoch_ms": steps_per_epoch * heart_lora["cpu_median_ms"],
        "run_epochs": config.run_epochs,
        "run_ms": run_steps * heart_lora["median_ms"],
        "cpu_run_ms": run_steps * heart_lora["cpu_median_ms"],
    }


def _memory_method(config: SpeedConfig) -> str:
    """How the result's memory was measured, in words."""
    peak = (
        "torch.cuda.max_memory_allocated"
        if config.device == "cuda"
        else "running sum of torch.profiler CPU memory events"
    )
    return (
        "peak live tensor bytes in one training step: parameters + optimizer state + batch "
        f"before the step, plus the highest net allocation during it ({peak}); "
        "saved_activation_bytes: unique non-parameter storages saved for backward"
    )


def _ratio(value: float) -> str:
    """Three decimals, or two significant digits for the small ones (calibration_vs_run)."""
    return f"{value:.3f}" if value >= 0.01 else f"{value:.1e}"


def _mib(value: int) -> str:
    return f"{value / 2**20:.1f}"


def format_report(result: dict[str, Any]) -> str:
    """A plain-text table of a `run_speed_benchmark` result."""
    config, env = result["config"], result["environment"]
    lines = [
        f"heartlora speed: {config['model']}, {config['img_size']} px, "
        f"batch {config['batch_size']}, {config['device']} {config['dtype']}, "
        f"rank {config['rank']}, {env['torch_threads']} torch threads on {env['cpu_count']} CPUs, "
        f"{config['steps']} timed rounds after {config['warmup']} warm-up (medians)",
        "",
        f"{'training step (fwd+bwd+AdamW)':<32}{'wall ms':>9}{'min ms':>9}{'CPU ms':>9}"
        f"{'trainable':>12}{'peak MiB':>10}{'saved MiB':>11}",
    ]
    for row in result["train"].values():
        memory = row.get("memory")
        lines.append(
            f"  {row['label']:<30}{row['median_ms']:>9.1f}{row['min_ms']:>9.1f}"
            f"{row['cpu_median_ms']:>9.1f}{row['trainable_parameters']:>12,}"
            + (
                f"{_mib(memory['peak_bytes']):>10}{_mib(memory['saved_activation_bytes']):>11}"
                if memory
                else f"{'compiled in ' + format(row['compile_seconds'], '.0f') + ' s':>21}"
            )
        )
    lines += ["", f"{'inference (forward, eval)':<32}{'wall ms':>9}{'min ms':>9}{'CPU ms':>9}"]
    for row in result["inference"].values():
        lines.append(
            f"  {row['label']:<30}{row['median_ms']:>9.1f}{row['min_ms']:>9.1f}"
            f"{row['cpu_median_ms']:>9.1f}"
        )
    calibration = result["calibration"]
    lines += [
        "",
        f"calibration ({calibration['scorer']}, {calibration['calib_batches']} batches = "
        f"{calibration['images']} images): {calibration['median_ms']:.0f} ms wall; one epoch of "
        f"{calibration['epoch_images']} images = {calibration['steps_per_epoch']} Heart-LoRA "
        f"steps = {calibration['epoch_ms']:.0f} ms wall; the run of {calibration['run_epochs']} "
        f"epochs = {calibration['run_ms'] / 1000:.0f} s wall",
        "adapter on disk, all files (weights only): "
        + ", ".join(
            f"{name} {sizes['total_bytes'] / 1024:.1f} KiB ({sizes['weights_bytes'] / 1024:.1f})"
            for name, sizes in result["adapter_bytes"].items()
        ),
        "",
        f"{'ratio':<44}{'wall':>7}{'paired':>8}{'CPU':>7}   target",
    ]
    for name, value in result["ratios"].items():
        target = result["targets"].get(name)
        paired = result["paired_ratios"].get(name)
        cpu = result["cpu_ratios"].get(name)
        lines.append(
            f"  {name:<42}{_ratio(value):>7}"
            + (f"{_ratio(paired):>8}" if paired is not None else " " * 8)
            + (f"{_ratio(cpu):>7}" if cpu is not None else " " * 7)
            + (
                f"   <= {target['limit']:.2f} {'met' if target['met'] else 'MISSED'}"
                if target
                else ""
            )
        )
    lines += ["", f"memory: {result['memory_method']}"]
    return "\n".join(lines)
