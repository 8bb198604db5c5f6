"""Image preprocessing.

The paper's protocol: resize to ``S × S`` with bicubic interpolation, convert to a float tensor in
``[0, 1]``, no normalisation, no augmentation. Normalisation and a simple augmentation (random
resized crop + horizontal flip) are opt-in. Datasets hand the transform RGB PIL images
(`heartlora.data.base.open_image` converts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T

from heartlora.data.base import data_error

IMAGENET_NORMALIZE: tuple[tuple[float, ...], tuple[float, ...]] = (
    (0.485, 0.456, 0.406),
    (0.229, 0.224, 0.225),
)
"""(mean, std) of ImageNet-1k, for models trained with that normalisation."""

INCEPTION_NORMALIZE: tuple[tuple[float, ...], tuple[float, ...]] = (
    (0.5, 0.5, 0.5),
    (0.5, 0.5, 0.5),
)
"""(mean, std) mapping [0, 1] to [-1, 1], as used by timm's ImageNet-21k ViTs."""


def _check_channels(values: object, what: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in values)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise data_error(f"normalize {what} must be 3 numbers (got {values!r})") from None
    if len(numbers) != 3:
        raise data_error(
            f"normalize {what} must be 3 numbers, one per RGB channel (got {values!r})"
        )
    return numbers


def build_transform(
    img_size: int,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    augment: bool = False,
    crop_scale: tuple[float, float] = (0.08, 1.0),
) -> Callable[[Image.Image], torch.Tensor]:
    """The preprocessing for one split.

    Args:
        img_size: side ``S`` of the square output.
        normalize: ``(mean, std)``, three numbers each, applied after scaling to ``[0, 1]``;
            ``None`` (default, the paper) leaves values in ``[0, 1]``. See `IMAGENET_NORMALIZE`,
            `INCEPTION_NORMALIZE`.
        augment: ``False`` (default, the paper): bicubic resize to ``S × S``. ``True``: random
            resized crop to ``S × S`` (bicubic, area fraction in `crop_scale`) and a random
            horizontal flip. Use it for training splits only.
        crop_scale: area range of the random resized crop.

    Returns:
        A callable mapping an RGB PIL image to a float tensor of shape ``(3, S, S)``.

    Raises:
        HeartLoRAError: `img_size` is not a positive integer, `normalize` is not two triples with
            positive std, or `crop_scale` is not ``0 < low <= high <= 1``.
    """
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise data_error(f"img_size must be a positive integer (got {img_size!r})")
    bicubic = T.InterpolationMode.BICUBIC
    if augment:
        low, high = crop_scale
        if not 0 < low <= high <= 1:
            raise data_error(f"crop_scale must satisfy 0 < low <= high <= 1 (got {crop_scale!r})")
        steps: list[Callable] = [
            T.RandomResizedCrop((img_size, img_size), scale=(low, high), interpolation=bicubic),
            T.RandomHorizontalFlip(),
        ]
    else:
        steps = [T.Resize((img_size, img_size), interpolation=bicubic)]
    steps.append(T.ToTensor())
    if normalize is not None:
        try:
            mean, std = normalize
        except (TypeError, ValueError):
            raise data_error(f"normalize must be (mean, std) (got {normalize!r})") from None
        mean, std = _check_channels(mean, "mean"), _check_channels(std, "std")
        if min(std) <= 0:
            raise data_error(f"normalize std must be positive (got {std!r})")
        steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


def timm_data_config(
    img_size: int, normalize: tuple[Sequence[float], Sequence[float]] | None = None
) -> dict[str, Any]:
    """The evaluation preprocessing of `build_transform` (no augmentation) as timm's data
    config, for a model's ``pretrained_cfg``: ``timm.data.create_transform(**config)`` (or with
    ``timm.data.resolve_data_config(model=model)`` once the config is the model's) gives the
    same tensors: a bicubic resize to ``S × S`` (``crop_mode="squash"``, ``crop_pct`` 1: no
    crop), then ``(x - mean) / std`` with mean 0 and std 1 when ``normalize`` is ``None``.

    Returns:
        ``input_size`` ``(3, S, S)``, ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``
        and ``std`` (tuples of three floats).
    """
    mean, std = normalize if normalize is not None else ((0.0,) * 3, (1.0,) * 3)
    return {
        "input_size": (3, img_size, img_size),
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "crop_mode": "squash",
        "mean": tuple(float(v) for v in mean),
        "std": tuple(float(v) for v in std),
    }
