"""`heartlora predict`: classify image files with one or more task adapters on one backbone, and
with the runs of the other methods, each its own model."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from heartlora.adapter_io import AdapterMetadata, adapter_directory, read_adapter_metadata
from heartlora.commands.arguments import add_base_override_arguments, positive_int
from heartlora.data.base import open_image
from heartlora.data.transforms import build_transform
from heartlora.errors import HeartLoRAError
from heartlora.tools.runs import TrainedRun, load_run_model, other_method_run
from heartlora.tools.serving import (
    MultiTaskModel,
    adapter_img_size,
    base_model_from_adapter,
    tensor_bytes,
    top_classes,
)
from heartlora.training.devices import DEVICES, is_device_name, resolve_device
from heartlora.training.precision import DTYPES, forward_precision, matmul_precision


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of `heartlora predict`."""
    parser.add_argument(
        "--adapter",
        dest="adapters",
        action="append",
        required=True,
        type=Path,
        metavar="DIR",
        help="task adapter directory, or the run folder holding it in adapter/ (repeat for "
        "several tasks on the same backbone); the run folder of any other method (linear, full, "
        "bitfit, peft-*) too, each run then its own model",
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files (png, jpg, ...)")
    add_base_override_arguments(parser, "load", plural=True)
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of text"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=32, help="images per forward pass"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (the GPU when CUDA is available, else the CPU), cpu, cuda or cuda:N",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="fp32",
        help="on CUDA, tf32: TF32 matrix products; bf16: autocast (the CPU computes in fp32)",
    )


def _task_names(bases: list[str]) -> list[str]:
    """``bases`` (one per adapter or run), made unique with ``#2``, ``#3``, ..."""
    names: list[str] = []
    for base in bases:
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}#{count}"
        names.append(name)
    return names


@dataclass
class _Task:
    """One ``--adapter``: how its images are prepared and classified."""

    name: str
    img_size: int
    normalize: list[list[float]] | None
    classes: list[str] | None
    predict: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _check_shared_backbone(
    directories: list[Path], metadata: list[AdapterMetadata], args: argparse.Namespace
) -> None:
    """Every adapter must sit on the same architecture, input size and (unless overridden) base
    weights."""
    first = metadata[0].run.to_json()
    for directory, meta in zip(directories[1:], metadata[1:]):
        extra = meta.run.to_json()
        keys = (
            ["img_size", "model_kwargs"]
            + ([] if args.model else ["model"])
            + ([] if args.checkpoint else ["checkpoint"])
            + ([] if args.ignore_base_mismatch else ["weights"])
        )
        for key in keys:
            if extra.get(key) != first.get(key):
                raise HeartLoRAError(
                    f"{directory}: {key} {extra.get(key)!r} differs from {directories[0]}'s "
                    f"{first.get(key)!r} (expected adapters of one shared backbone)"
                )


def _inputs_per_task(images: list[Image.Image], tasks: list[_Task]) -> dict[str, torch.Tensor]:
    """Each task's input batch, preprocessed as its own adapter or run was trained (its
    ``img_size`` and ``normalize``); tasks that share a preprocessing share one tensor."""
    by_preprocessing: dict[str, torch.Tensor] = {}
    inputs = {}
    for task in tasks:
        key = json.dumps([task.img_size, task.normalize])
        if key not in by_preprocessing:
            transform = build_transform(task.img_size, normalize=task.normalize)
            by_preprocessing[key] = torch.stack([transform(image) for image in images])
        inputs[task.name] = by_preprocessing[key]
    return inputs


def _format_bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _server_predictor(
    server: MultiTaskModel, name: str
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    return lambda images: server.predict(images, name)


def _run_predictor(
    model: torch.nn.Module, name: str, device: torch.device
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    @torch.no_grad()
    def predict(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return top_classes(model(images.to(device)), name)

    return predict


def run(args: argparse.Namespace) -> int:
    """Classify every image with every task; returns the exit code."""
    if not is_device_name(args.device):
        raise HeartLoRAError(f"--device: expected one of {', '.join(DEVICES)}, got {args.device!r}")
    device = resolve_device(args.device)
    dtype = args.dtype if device.type == "cuda" else "fp32"
    runs: list[TrainedRun | None] = [other_method_run(d) for d in args.adapters]
    directories = [adapter_directory(d) for d, r in zip(args.adapters, runs) if r is None]
    metadata = [read_adapter_metadata(d) for d in directories]
    if directories:
        _check_shared_backbone(directories, metadata, args)
    base_names = iter(
        meta.run.task or directory.resolve().name for directory, meta in zip(directories, metadata)
    )
    labels = [r.task if r is not None else next(base_names) for r in runs]
    names = _task_names(labels)
    server, img_size = None, 0
    if directories:
        server = MultiTaskModel(
            base_model_from_adapter(
                directories[0],
                args.checkpoint,
                args.model,
                ignore_base_mismatch=args.ignore_base_mismatch,
            )
        )
        img_size = adapter_img_size(directories[0], server.model)
    tasks: list[_Task] = []
    run_models: dict[str, tuple[TrainedRun, torch.nn.Module]] = {}
    adapters = iter(zip(directories, metadata))
    for name, run in zip(names, runs):
        if run is None:
            directory, meta = next(adapters)
            server.add_task(name, directory)
            predict = _server_predictor(server, name)
            tasks.append(_Task(name, img_size, meta.run.normalize, meta.run.classes, predict))
            continue
        model = load_run_model(run, args.checkpoint, args.model, args.ignore_base_mismatch)
        run_models[name] = (run, model.to(device))
        predict = _run_predictor(model, name, device)
        tasks.append(_Task(name, run.config.img_size, run.config.normalize, None, predict))
    if server is not None:
        server.to(device)
    predictions = []
    # one batch of images decoded at a time: memory does not grow with the number of images
    for start in range(0, len(args.images), args.batch_size):
        paths = args.images[start : start + args.batch_size]
        images = [open_image(path, hint=None) for path in paths]
        inputs = _inputs_per_task(images, tasks)
        with matmul_precision(dtype, device.type), forward_precision(dtype, device.type):
            results = {task.name: task.predict(inputs[task.name]) for task in tasks}
        for index, path in enumerate(paths):
            for task in tasks:
                label = int(results[task.name][0][index])
                classes = task.classes
                predictions.append(
                    {
                        "image": str(path),
                        "task": task.name,
                        "class": label,
                        "label": classes[label]
                        if isinstance(classes, list) and label < len(classes)
                        else None,
                        "probability": float(results[task.name][1][index]),
                    }
                )
    memory = server.memory_report() if server is not None else {}
    if run_models:
        own = {
            name: tensor_bytes([*model.parameters(), *model.buffers()])
            for name, (_, model) in run_models.items()
        }
        memory["run_model_bytes"] = own
        memory["total_bytes"] = memory.get("total_bytes", 0) + sum(own.values())
    if args.json:
        print(json.dumps({"predictions": predictions, "memory": memory}, indent=2, allow_nan=False))
        return 0
    for row in predictions:
        shown = row["class"] if row["label"] is None else f"{row['class']} ({row['label']})"
        print(f"{row['image']}\t{row['task']}\t{shown}\t{row['probability']:.4f}")
    if server is not None:
        shared = len(server.tasks)
        print(
            f"memory: backbone {_format_bytes(memory['backbone_bytes'])}, shared by {shared} task(s)"
        )
        for name, size in memory["task_bytes"].items():
            print(f"memory: task {name} adds {_format_bytes(size)}")
        if not run_models:
            print(
                f"memory: total {_format_bytes(memory['total_bytes'])} "
                f"(one model per task: {_format_bytes(memory['separate_models_bytes'])})"
            )
            return 0
    for name, size in memory.get("run_model_bytes", {}).items():
        method = run_models[name][0].config.method
        print(f"memory: task {name} ({method} run) holds its own model, {_format_bytes(size)}")
    print(f"memory: total {_format_bytes(memory['total_bytes'])}")
    return 0
