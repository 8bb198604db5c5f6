"""`heartlora predict`: classify image files with one or more task adapters on one backbone."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image

from heartlora.adapter_io import AdapterMetadata, adapter_directory, read_adapter_metadata
from heartlora.commands.arguments import add_base_override_arguments, positive_int
from heartlora.data.base import open_image
from heartlora.data.transforms import build_transform
from heartlora.devices import DEVICES, is_device_name, resolve_device
from heartlora.errors import HeartLoRAError
from heartlora.precision import DTYPES, forward_precision, matmul_precision
from heartlora.tools.serving import MultiTaskModel, adapter_img_size, base_model_from_adapter


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
        "several tasks on the same backbone)",
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


def _task_names(directories: list[Path], metadata: list[AdapterMetadata]) -> list[str]:
    names: list[str] = []
    for directory, meta in zip(directories, metadata):
        base = meta.run.task or directory.resolve().name
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}#{count}"
        names.append(name)
    return names


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


def _inputs_per_task(
    images: list[Image.Image], names: list[str], metadata: list[AdapterMetadata], img_size: int
) -> dict[str, torch.Tensor]:
    """Each task's input batch, preprocessed as its own adapter was trained (its
    ``normalize``); tasks that share a preprocessing share one tensor."""
    by_normalize: dict[str, torch.Tensor] = {}
    inputs = {}
    for name, meta in zip(names, metadata):
        key = json.dumps(meta.run.normalize)
        if key not in by_normalize:
            transform = build_transform(img_size, normalize=meta.run.normalize)
            by_normalize[key] = torch.stack([transform(image) for image in images])
        inputs[name] = by_normalize[key]
    return inputs


def _format_bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def run(args: argparse.Namespace) -> int:
    """Classify every image with every task; returns the exit code."""
    if not is_device_name(args.device):
        raise HeartLoRAError(f"--device: expected one of {', '.join(DEVICES)}, got {args.device!r}")
    device = resolve_device(args.device)
    dtype = args.dtype if device.type == "cuda" else "fp32"
    args.adapters = [adapter_directory(d) for d in args.adapters]
    metadata = [read_adapter_metadata(d) for d in args.adapters]
    _check_shared_backbone(args.adapters, metadata, args)
    names = _task_names(args.adapters, metadata)
    server = MultiTaskModel(
        base_model_from_adapter(
            args.adapters[0],
            args.checkpoint,
            args.model,
            ignore_base_mismatch=args.ignore_base_mismatch,
        )
    )
    for name, directory in zip(names, args.adapters):
        server.add_task(name, directory)
    server.to(device)
    img_size = adapter_img_size(args.adapters[0], server.model)
    predictions = []
    # one batch of images decoded at a time: memory does not grow with the number of images
    for start in range(0, len(args.images), args.batch_size):
        paths = args.images[start : start + args.batch_size]
        images = [open_image(path, hint=None) for path in paths]
        inputs = _inputs_per_task(images, names, metadata, img_size)
        with matmul_precision(dtype, device.type), forward_precision(dtype, device.type):
            results = {name: server.predict(inputs[name], name) for name in names}
        for index, path in enumerate(paths):
            for name, meta in zip(names, metadata):
                label = int(results[name][0][index])
                classes = meta.run.classes
                predictions.append(
                    {
                        "image": str(path),
                        "task": name,
                        "class": label,
                        "label": classes[label]
                        if isinstance(classes, list) and label < len(classes)
                        else None,
                        "probability": float(results[name][1][index]),
                    }
                )
    memory = server.memory_report()
    if args.json:
        print(json.dumps({"predictions": predictions, "memory": memory}, indent=2, allow_nan=False))
        return 0
    for row in predictions:
        shown = row["class"] if row["label"] is None else f"{row['class']} ({row['label']})"
        print(f"{row['image']}\t{row['task']}\t{shown}\t{row['probability']:.4f}")
    print(
        f"memory: backbone {_format_bytes(memory['backbone_bytes'])}, shared by {len(names)} task(s)"
    )
    for name, size in memory["task_bytes"].items():
        print(f"memory: task {name} adds {_format_bytes(size)}")
    print(
        f"memory: total {_format_bytes(memory['total_bytes'])} "
        f"(one model per task: {_format_bytes(memory['separate_models_bytes'])})"
    )
    return 0
