"""A tiny learnable task in the VTAB-1k layout, and a random base checkpoint, for training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
from PIL import Image
from safetensors.torch import save_file

import heartlora.bundled.model  # noqa: F401  (registers vit_mini_patch4_28)

SPLITS = {"train800": 32, "val200": 16, "test": 24}


def make_learnable_task(root: Path, task: str = "toy", classes: int = 3, seed: int = 0) -> Path:
    """Class c = brightness level c plus noise and a random bright band; real PNG files."""
    rng = np.random.default_rng(seed)
    task_dir = root / task
    lines: dict[str, list[str]] = {}
    for split, count in SPLITS.items():
        lines[split] = []
        for index in range(count):
            label = index % classes
            pixels = rng.integers(0, 50, size=(28, 28), dtype=np.uint8) + 70 * label
            row = int(rng.integers(0, 24))
            pixels[row : row + 4] = 255
            relative = f"images/{split}/{index:04d}.png"
            (task_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="L").save(task_dir / relative)
            lines[split].append(f"{relative} {label}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, rows in lines.items():
        (task_dir / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root


def make_base_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random vit_mini_patch4_28 state dict saved as safetensors (stands in for real weights)."""
    import torch

    torch.manual_seed(seed)
    model = timm.create_model("vit_mini_patch4_28", pretrained=False, num_classes=10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def train_args(
    root: Path,
    checkpoint: Path | None,
    output: Path,
    method: str,
    epochs: int = 2,
    model: str = "vit_mini_patch4_28",
    rank: int | None = 2,
    **extra,
) -> list[str]:
    """`heartlora train` arguments for the toy task (``checkpoint`` None: the model name's own
    weights; ``rank`` None: no ``--rank``, for the methods without one); ``extra`` keys are
    ``--set`` items, which win over the ones here."""
    args = [
        "train",
        "--model",
        model,
        *(["--checkpoint", str(checkpoint)] if checkpoint is not None else []),
        "--data-root",
        str(root),
        "--task",
        "toy",
        "--method",
        method,
        "--epochs",
        str(epochs),
        "--batch-size",
        "16",
        "--img-size",
        "28",
        *(["--rank", str(rank)] if rank is not None else []),
        "--output-dir",
        str(output),
        "--set",
        "warmup_epochs=1",
        "--set",
        "eval_every=1",
        "--set",
        "calib_warmup_steps=2",
        "--set",
        "calib_batches=2",
        "--set",
        "lr=0.003",
        "--set",
        "threads=1",
    ]
    for key, value in extra.items():
        args += ["--set", f"{key}={value}"]
    return args
