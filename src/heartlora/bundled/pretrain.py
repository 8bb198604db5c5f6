"""Pretraining the bundled base model from scratch on Fashion-MNIST.

This is how `heartlora/bundled/assets/vit_mini_patch4_28.fmnist.safetensors` was made (the exact command,
seed and result are in `heartlora/bundled/assets/MODEL_CARD.md`); CI never runs it at full size.

Recipe: AdamW, linear warm-up then cosine decay per step, label smoothing, and light augmentation
(random 28×28 crop of the image zero-padded by 2 pixels, horizontal flip). Everything random — the
initialisation, the shuffling, the augmentation — follows `seed`, and the data stays in memory as
uint8 tensors with batches built by indexing, so a run on CPU with the same thread count is
reproducible bit for bit.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from heartlora.bundled.fashion_mnist import load_fashion_mnist, to_rgb_float
from heartlora.bundled.model import (
    BASE_MODEL_ARGS,
    BASE_MODEL_NAME,
    BASE_NUM_CLASSES,
    create_bundled_model,
)
from heartlora.errors import HeartLoRAError
from heartlora.io.atomic import atomic_write

__all__ = [
    "PretrainConfig",
    "PretrainResult",
    "evaluate",
    "pretrain",
    "save_state_dict",
    "sha256_of",
]

_CROP_PADDING = 2


@dataclass
class PretrainConfig:
    """Settings of a pretraining run; the defaults are those of the bundled checkpoint."""

    epochs: int = 8
    """passes over the 60 000 training images."""
    batch_size: int = 64
    """training images per optimizer step."""
    lr: float = 1e-3
    """peak AdamW learning rate, reached at the end of the warm-up."""
    min_lr: float = 1e-5
    """learning rate at the end of the cosine decay."""
    warmup_epochs: float = 1.0
    """length of the linear warm-up from 0, in epochs (fractions allowed)."""
    weight_decay: float = 0.05
    """AdamW weight decay (applied to weight matrices only, not to biases, norms or embeddings)."""
    label_smoothing: float = 0.1
    """label smoothing of the cross-entropy loss."""
    augment: bool = True
    """random crop with padding 2 and horizontal flip on the training images."""
    seed: int = 0
    """seeds the initialisation, the shuffling and the augmentation."""
    data_dir: str | None = None
    """directory of the Fashion-MNIST idx files (default `heartlora.bundled.fashion_mnist.DEFAULT_DATA_DIR`)."""
    eval_batch_size: int = 500
    """images per forward pass when evaluating."""
    num_heads: int = BASE_MODEL_ARGS["num_heads"]
    """attention heads per layer; the width (96) must divide by it. A base with other than 6
    heads is fine-tuned with ``checkpoint: FILE`` and ``model_kwargs: {num_heads: N}``."""

    def validate(self) -> None:
        """Raise `HeartLoRAError` naming the first setting that is out of range."""
        if self.epochs < 1:
            raise HeartLoRAError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise HeartLoRAError(
                f"batch sizes must be >= 1, got {self.batch_size} and {self.eval_batch_size}"
            )
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise HeartLoRAError(f"need lr > 0 and 0 <= min_lr <= lr, got {self.lr}, {self.min_lr}")
        if self.warmup_epochs < 0 or self.weight_decay < 0:
            raise HeartLoRAError(
                f"warmup_epochs and weight_decay must be >= 0, got {self.warmup_epochs}, "
                f"{self.weight_decay}"
            )
        width = BASE_MODEL_ARGS["embed_dim"]
        if self.num_heads < 1 or width % self.num_heads:
            raise HeartLoRAError(f"num_heads must divide the width {width}, got {self.num_heads}")
        if not 0 <= self.label_smoothing < 1:
            raise HeartLoRAError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass
class PretrainResult:
    """What a pretraining run produced."""

    test_accuracy: float
    """top-1 accuracy on the test split after the last epoch, in [0, 1]."""
    train_accuracy: float
    """top-1 accuracy on the (augmented) training batches of the last epoch."""
    train_loss: float
    """mean training loss of the last epoch."""
    seconds: float
    """wall time of the whole run, data loading and evaluation included."""
    num_params: int
    """parameters of the model."""
    num_threads: int
    """torch CPU threads used."""
    output: Path | None = None
    """where the checkpoint was written, if anywhere."""
    sha256: str | None = None
    """sha256 of the checkpoint file."""
    history: list[dict[str, float]] = field(default_factory=list)
    """one record per epoch: epoch, loss, train_accuracy, test_accuracy, lr, seconds."""
    config: dict[str, object] = field(default_factory=dict)
    """the `PretrainConfig` of the run, as a dict."""


def pretrain(
    config: PretrainConfig,
    output: str | Path | None = None,
    log: Callable[[str], None] | None = print,
) -> PretrainResult:
    """Train `vit_mini_patch4_28` from scratch on Fashion-MNIST and evaluate it on the test split.

    Args:
        config: the run's settings.
        output: safetensors file to write the trained `state_dict` to (timm key names), atomically;
            `None` writes nothing.
        log: receives one progress line per epoch and a summary; `None` silences it.

    Returns:
        The `PretrainResult`; the model itself is in the file at `output`.

    Raises:
        HeartLoRAError: for invalid settings or missing/malformed data.
    """
    config.validate()
    say = log or (lambda _line: None)
    start = time.perf_counter()
    (train_images, train_labels), (test_images, test_labels) = _fashion_mnist_splits(config)

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = create_bundled_model(
        num_classes=BASE_NUM_CLASSES, pretrained=False, num_heads=config.num_heads
    )
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.999)
    )
    steps_per_epoch = math.ceil(train_images.shape[0] / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: _lr_factor(step, total_steps, warmup_steps, config.min_lr / config.lr),
    )
    say(
        f"pretraining {BASE_MODEL_NAME} ({num_params / 1e6:.2f} M params) on "
        f"{train_images.shape[0]} images for {config.epochs} epochs × {steps_per_epoch} steps, "
        f"seed {config.seed}, {torch.get_num_threads()} threads"
    )

    history = _train_epochs(
        model,
        optimizer,
        schedule,
        ((train_images, train_labels), (test_images, test_labels)),
        config,
        generator,
        say,
    )

    result = PretrainResult(
        test_accuracy=history[-1]["test_accuracy"],
        train_accuracy=history[-1]["train_accuracy"],
        train_loss=history[-1]["loss"],
        seconds=0.0,
        num_params=num_params,
        num_threads=torch.get_num_threads(),
        history=history,
        config=asdict(config),
    )
    if output is not None:
        _save_model(model, result, Path(output), config)
    result.seconds = time.perf_counter() - start
    say(
        f"test accuracy {100 * result.test_accuracy:.2f}% after {config.epochs} epochs, "
        f"{result.seconds / 60:.1f} min"
        + (f"; wrote {result.output} (sha256 {result.sha256})" if result.output else "")
    )
    return result


def _train_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    data: tuple[tuple[torch.Tensor, torch.Tensor], ...],
    config: PretrainConfig,
    generator: torch.Generator,
    say: Callable[[str], None],
) -> list[dict[str, float]]:
    """Train ``config.epochs`` epochs, evaluating after each; returns one record per epoch."""
    (train_images, train_labels), (test_images, test_labels) = data
    history: list[dict[str, float]] = []
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        loss, train_accuracy = _train_one_epoch(
            model, optimizer, schedule, train_images, train_labels, config, generator
        )
        test_accuracy = evaluate(model, test_images, test_labels, config.eval_batch_size)
        record = dict(
            epoch=epoch,
            loss=loss,
            train_accuracy=train_accuracy,
            test_accuracy=test_accuracy,
            lr=optimizer.param_groups[0]["lr"],
            seconds=time.perf_counter() - epoch_start,
        )
        history.append(record)
        say(
            f"epoch {epoch}/{config.epochs}  loss {loss:.4f}  train acc {100 * train_accuracy:.2f}%  "
            f"test acc {100 * test_accuracy:.2f}%  {record['seconds']:.1f} s"
        )
    return history


def _fashion_mnist_splits(config: PretrainConfig) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """``((train_images, train_labels), (test_images, test_labels))`` of Fashion-MNIST.

    Raises:
        HeartLoRAError: when the images are not 28 × 28.
    """
    train = load_fashion_mnist("train", config.data_dir)
    test = load_fashion_mnist("test", config.data_dir)
    if train[0].shape[-2:] != (28, 28) or test[0].shape[-2:] != (28, 28):
        raise HeartLoRAError(
            f"expected 28×28 images, got {tuple(train[0].shape[-2:])} (train) and "
            f"{tuple(test[0].shape[-2:])} (test)"
        )
    return train, test


def _save_model(
    model: nn.Module, result: PretrainResult, output: Path, config: PretrainConfig
) -> None:
    """Write the model's state dict to ``output`` with its metadata; record file and sha256."""
    metadata = {
        "architecture": BASE_MODEL_NAME,
        "test_accuracy": f"{result.test_accuracy:.4f}",
        "epochs": str(config.epochs),
        "seed": str(config.seed),
    }
    result.output = output
    result.sha256 = save_state_dict(model.state_dict(), result.output, metadata)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    # Decaying biases, LayerNorm gains and the token/position embeddings hurts small ViTs.
    no_decay_names = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.ndim <= 1 or name in no_decay_names:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _lr_factor(step: int, total_steps: int, warmup_steps: int, min_factor: float) -> float:
    """Multiplier of the peak lr: linear warm-up from 0, then cosine down to `min_factor`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: PretrainConfig,
    generator: torch.Generator,
) -> tuple[float, float]:
    """One shuffled pass; returns (mean loss, accuracy) over the training batches."""
    model.train()
    order = torch.randperm(images.shape[0], generator=generator)
    total_loss, correct = 0.0, 0
    for begin in range(0, images.shape[0], config.batch_size):
        index = order[begin : begin + config.batch_size]
        batch = images[index]
        if config.augment:
            batch = _augment(batch, generator)
        target = labels[index]
        logits = model(to_rgb_float(batch))
        loss = F.cross_entropy(logits, target, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total_loss += float(loss.detach()) * target.shape[0]
        correct += int((logits.detach().argmax(dim=1) == target).sum())
    return total_loss / images.shape[0], correct / images.shape[0]


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the zero-padded image and horizontal flip, per image; (N, H, W) uint8."""
    n, height, width = images.shape
    padded = F.pad(images, (_CROP_PADDING,) * 4)
    top = torch.randint(0, 2 * _CROP_PADDING + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * _CROP_PADDING + 1, (n,), generator=generator)
    rows = (top[:, None] + torch.arange(height))[:, :, None]
    cols = (left[:, None] + torch.arange(width))[:, None, :]
    cropped = padded[torch.arange(n)[:, None, None], rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip[:, None, None], cropped.flip(-1), cropped)


@torch.no_grad()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500
) -> float:
    """Top-1 accuracy of `model` on uint8 (N, H, W) grayscale images with int labels (N,).

    The model is left in eval mode.
    """
    model.eval()
    correct = 0
    for begin in range(0, images.shape[0], batch_size):
        logits = model(to_rgb_float(images[begin : begin + batch_size]))
        correct += int((logits.argmax(dim=1) == labels[begin : begin + batch_size]).sum())
    return correct / max(1, images.shape[0])


def save_state_dict(
    state_dict: dict[str, torch.Tensor],
    path: str | Path,
    metadata: dict[str, str] | None = None,
) -> str:
    """Write a state_dict as safetensors atomically (`heartlora.io.atomic`); returns its sha256.

    A crash mid-write leaves any previous file at `path` intact.
    """
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}

    def write(temp: Path) -> None:
        save_file(tensors, str(temp), metadata={"format": "pt", **(metadata or {})})
        # the temporary file is created private (0600); a checkpoint is meant to be shared
        os.chmod(temp, 0o644)

    atomic_write(path, write)
    return sha256_of(path)


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
