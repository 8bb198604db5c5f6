"""Byte matching: the size of a method whose stored adapter is nearest a number of bytes.

A method's stored bytes are measured as a run measures them (`save_trained`: every file of the
``adapter/`` folder it writes), on the given model, by building the method on a copy of the
model and storing it untrained. Training changes no stored size, with two exceptions:
Heart-LoRA's bytes depend on the heads it keeps (not matched here), and peft-adalora stores the
ranks its budget kept, on average ``rank`` per layer: it is measured with ``init_r`` = ``rank``,
and its trained ``adapter_config.json`` adds its rank pattern (a few bytes per initial rank and
layer).

`match_bytes` searches the method's size knob (`Method.size_knob`): ``rank``, ``n_frequency``
(stored bytes grow with both: doubling, then bisection) or ``block_size`` (each divisor of the
width is tried). ``python -m heartlora.training.budget --methods peft-vera,peft-oft --bytes N``
prints each match as a grid member, ``peft-vera[rank=57]``, for `heartlora suite` and
`heartlora frontier` method lists.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from heartlora.adapter_io import RunInfo
from heartlora.errors import HeartLoRAError
from heartlora.training.methods import MethodSettings, get_method, prepare_model, save_trained

ADALORA_MEASURE_STEPS = 100
"""The optimizer steps peft-adalora is built with when it is measured without a run (its
schedule changes no stored size)."""


@dataclass(frozen=True)
class ByteMatch:
    """The size of a method nearest a byte target.

    Attributes:
        method: the method with its size in brackets, as suite and frontier grids take it
            (``peft-vera[rank=57]``); the bare name for a method without a size knob.
        knob: the size knob (``rank``, ``n_frequency``, ``block_size``) or ``None``.
        value: the knob's chosen value, or ``None``.
        bytes: what the method stores at that size.
        target_bytes: the target asked for.
    """

    method: str
    knob: str | None
    value: int | None
    bytes: int
    target_bytes: int


def _with_size(method: str, settings: MethodSettings, knob: str, value: int) -> MethodSettings:
    """``settings`` with the size knob at ``value``."""
    if method == "peft-adalora":  # measured at the size it ends with: init_r = target_r
        options = {**settings.peft_options, "init_r": value}
        steps = settings.total_steps or ADALORA_MEASURE_STEPS
        settings = replace(settings, peft_options=options, total_steps=steps)
    if knob == "rank":
        return replace(settings, adapter=replace(settings.adapter, rank=value))
    return replace(settings, **{knob: value})


def stored_bytes(method: str, model: nn.Module, settings: MethodSettings | None = None) -> int:
    """The bytes ``method`` stores with ``settings`` on ``model`` (left unchanged: a copy is
    built and stored in a temporary folder).

    Raises:
        HeartLoRAError: the method cannot be built with these settings on this model.
    """
    settings = settings or MethodSettings()
    built = prepare_model(copy.deepcopy(model), method, settings)
    with tempfile.TemporaryDirectory(prefix="heartlora-budget.") as folder:
        return save_trained(built, method, Path(folder) / "adapter", RunInfo(method=method))


def _qkv_linear(model: nn.Module) -> nn.Linear:
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "qkv" and isinstance(module, nn.Linear):
            return module
    raise HeartLoRAError("the model has no fused qkv linear (expected a timm ViT)")


def _nearest(measured: dict[int, int | None], target: int) -> tuple[int, int]:
    """The measured ``(value, bytes)`` nearest ``target``, the smaller value on a tie."""
    sizes = [(value, size) for value, size in sorted(measured.items()) if size is not None]
    if not sizes:
        raise HeartLoRAError("no size of the method could be built on this model")
    return min(sizes, key=lambda item: (abs(item[1] - target), item[0]))


def _search_growing(measure: Callable[[int], int | None], target: int, limit: int) -> None:
    """Measure values 1, 2, 4, … until one stores at least ``target`` bytes (or cannot be
    built, or reaches ``limit``), then bisect between it and the one before."""
    low, high = 0, 1
    while True:
        size = measure(high)
        if size is None or size >= target:
            break
        if high >= limit:  # even the largest size stores less than the target
            return
        low, high = high, min(2 * high, limit)
    while high - low > 1:
        middle = (low + high) // 2
        size = measure(middle)
        if size is None or size >= target:
            high = middle
        else:
            low = middle


def match_bytes(
    method: str,
    target_bytes: int,
    model: nn.Module,
    settings: MethodSettings | None = None,
) -> ByteMatch:
    """The size of ``method`` whose stored bytes on ``model`` are nearest ``target_bytes``.

    Args:
        method: a method name with a size knob (`Method.size_knob`), or one without (its one
            size is returned).
        target_bytes: the bytes to match, e.g. a Heart-LoRA run's ``adapter_bytes``.
        model: the base model the runs will use (left unchanged), with their class count.
        settings: the method's other settings (scale, ``peft_options``, ...); its own value of
            the size knob is ignored.

    Raises:
        HeartLoRAError: an unknown method, one whose bytes training decides (heart-lora), a
            non-positive target, or no size that builds on this model.
    """
    if isinstance(target_bytes, bool) or not isinstance(target_bytes, int) or target_bytes < 1:
        raise HeartLoRAError(f"target_bytes must be a positive integer, got {target_bytes!r}")
    spec = get_method(method)
    settings = settings or MethodSettings()
    knob = spec.size_knob
    if knob is None:
        if spec.selects_heads:
            raise HeartLoRAError(
                f"{method}: its bytes depend on the heads training keeps (match its partner "
                "lora or peft-lora instead)"
            )
        size = stored_bytes(method, model, settings)
        return ByteMatch(method, None, None, size, target_bytes)
    measured: dict[int, int | None] = {}

    def measure(value: int) -> int | None:
        if value not in measured:
            try:
                sized = _with_size(method, settings, knob, value)
                measured[value] = stored_bytes(method, model, sized)
            except HeartLoRAError:
                measured[value] = None  # too large for this model, or not a divisor
        return measured[value]

    qkv = _qkv_linear(model)
    if knob == "block_size":
        for value in range(1, qkv.in_features + 1):
            if qkv.in_features % value == 0:
                measure(value)
    else:
        limit = qkv.in_features * qkv.out_features if knob == "n_frequency" else 4 * qkv.in_features
        _search_growing(measure, target_bytes, limit)
    value, size = _nearest(measured, target_bytes)
    return ByteMatch(f"{method}[{knob}={value}]", knob, value, size, target_bytes)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m heartlora.training.budget``: print the byte-matched size of each method, one
    grid member a line."""
    from heartlora.models.backbone import create_fine_tuning_model
    from heartlora.training.config import build_config

    parser = argparse.ArgumentParser(
        prog="python -m heartlora.training.budget",
        description="The size of each method whose stored adapter is nearest a number of "
        "bytes, printed as a grid member (NAME[knob=value]), one a line.",
    )
    parser.add_argument(
        "--methods", required=True, help="comma-separated methods, e.g. peft-vera,peft-oft"
    )
    parser.add_argument("--bytes", type=int, required=True, help="the byte target")
    parser.add_argument("--model", default="vit_mini_patch4_28", help="timm model name")
    parser.add_argument("--num-classes", type=int, default=10, help="classifier outputs")
    parser.add_argument("--img-size", type=int, default=None, help="input side in pixels")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="another config key"
    )
    args = parser.parse_args(argv)
    try:
        model = create_fine_tuning_model(
            args.model, args.num_classes, pretrained=False, img_size=args.img_size, log=_quiet
        )
        for method in filter(None, (name.strip() for name in args.methods.split(","))):
            config = build_config(None, [*args.set, f"method={method}", f"model={args.model}"])
            found = match_bytes(method, args.bytes, model, config.method_settings())
            print(f"{found.method}\t{found.bytes} bytes (target {found.target_bytes})")
    except HeartLoRAError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _quiet(*_args, **_kwargs) -> None:
    """The log of the random-weights warning: the weights change no stored size."""


if __name__ == "__main__":
    sys.exit(main())
