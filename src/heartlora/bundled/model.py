"""The bundled base model: a small ViT pretrained by this project on Fashion-MNIST.

`vit_mini_patch4_28` is an ordinary timm `VisionTransformer` (28×28 input, 4×4 patches, 49 tokens
plus a class token, width 96, depth 6, 6 heads of 16 dims, ≈0.68 M parameters), registered in timm's
model registry when `heartlora` is imported. Its pretrained weights are a safetensors file inside the
package (`heartlora/bundled/assets/`), named by the `file` field of the model's `pretrained_cfg`, so

    timm.create_model("vit_mini_patch4_28", pretrained=True, num_classes=37)

loads them through timm's own file-checkpoint path, offline, exactly like any other timm checkpoint,
and a `num_classes` other than 10 drops the pretrained head (timm's classifier reset).

Inputs are RGB images with values in [0, 1] and no normalisation (`mean` 0, `std` 1): Fashion-MNIST's
grayscale images were replicated to three channels for pretraining. See `heartlora.bundled.pretrain` for how
the checkpoint was made and `heartlora/bundled/assets/MODEL_CARD.md` for its provenance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from heartlora.errors import HeartLoRAError

__all__ = [
    "BASE_CHECKPOINT",
    "BASE_MODEL_ARGS",
    "BASE_MODEL_NAME",
    "BASE_NUM_CLASSES",
    "base_checkpoint_path",
    "create_bundled_model",
    "vit_mini_patch4_28",
]

BASE_MODEL_NAME = "vit_mini_patch4_28"
BASE_PRETRAINED_TAG = "fmnist"
BASE_NUM_CLASSES = 10
BASE_CHECKPOINT = (
    Path(__file__).resolve().parent
    / "assets"
    / f"{BASE_MODEL_NAME}.{BASE_PRETRAINED_TAG}.safetensors"
)

BASE_MODEL_ARGS: dict[str, Any] = dict(
    img_size=28, patch_size=4, in_chans=3, embed_dim=96, depth=6, num_heads=6, mlp_ratio=4.0
)
"""Architecture of the base model, as keyword arguments of timm's `VisionTransformer`."""


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": BASE_NUM_CLASSES,
        "input_size": (3, 28, 28),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "mit",
        **kwargs,
    }


# timm's registry reads `default_cfgs` from the module of each entrypoint it registers.
default_cfgs = generate_default_cfgs(
    {
        f"{BASE_MODEL_NAME}.{BASE_PRETRAINED_TAG}": _cfg(
            file=str(BASE_CHECKPOINT),
            origin_url="https://github.com/zalandoresearch/fashion-mnist",
            notes=("pretrained from scratch by heartlora on Fashion-MNIST (see MODEL_CARD.md)",),
        ),
    }
)


@register_model
def vit_mini_patch4_28(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-Mini/4 at 28×28: width 96, depth 6, 6 heads; the bundled Fashion-MNIST base model.

    Args:
        pretrained: load the bundled Fashion-MNIST weights (`BASE_CHECKPOINT`).
        **kwargs: any `VisionTransformer` / `timm.create_model` argument, e.g. `num_classes`,
            `drop_path_rate`; they override `BASE_MODEL_ARGS`.

    Returns:
        The model; with `pretrained=True` and `num_classes` ≠ 10 the head is freshly initialised.
    """
    model_args = {**BASE_MODEL_ARGS, **kwargs}
    return build_model_with_cfg(
        VisionTransformer,
        BASE_MODEL_NAME,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **model_args,
    )


def base_checkpoint_path() -> Path:
    """Path of the bundled checkpoint; raises `HeartLoRAError` if the package lacks it."""
    if not BASE_CHECKPOINT.is_file():
        raise HeartLoRAError(
            f"the bundled base checkpoint {BASE_CHECKPOINT} is missing; expected a safetensors file "
            f"made by `heartlora pretrain --output {BASE_CHECKPOINT}`"
        )
    return BASE_CHECKPOINT


def create_bundled_model(
    num_classes: int = BASE_NUM_CLASSES, pretrained: bool = True, **kwargs: Any
) -> VisionTransformer:
    """Build the base ViT, by default with the bundled Fashion-MNIST weights.

    A thin wrapper over `timm.create_model(BASE_MODEL_NAME, ...)` that checks the checkpoint exists
    first, so a broken install gives a clear error instead of timm's bare `FileNotFoundError`.

    Args:
        num_classes: size of the classification head; any value but 10 drops the pretrained head.
        pretrained: load the bundled weights (`False` gives a random initialisation).
        **kwargs: forwarded to `timm.create_model` (e.g. `drop_path_rate=0.1`).

    Returns:
        A timm `VisionTransformer` taking (N, 3, 28, 28) inputs in [0, 1].

    Raises:
        HeartLoRAError: if `num_classes` < 0 or, with `pretrained`, the checkpoint is missing.
    """
    if num_classes < 0:
        raise HeartLoRAError(f"num_classes must be >= 0 (0 means no head), got {num_classes}")
    if pretrained:
        base_checkpoint_path()
    return timm.create_model(
        BASE_MODEL_NAME, pretrained=pretrained, num_classes=num_classes, **kwargs
    )
