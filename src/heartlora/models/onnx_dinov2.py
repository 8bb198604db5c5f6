"""A Hugging Face `Dinov2Model` backbone read out of an ONNX graph, in timm's ViT naming.

An ONNX export of a `Dinov2Model` keeps the names of its biases, norms, layer scales and
embeddings (``backbone.encoder.layer.N.attention.attention.query.bias``), but the weights of its
linear layers become anonymous ``MatMul`` initializers (``onnx::MatMul_1966``) stored in × out.
Each is named here by the bias its MatMul's output is added to (``….query.bias`` names
``….query.weight``) and transposed to PyTorch's out × in. The two position embeddings (class
token and patch grid) are anonymous too; they are the initializers the graph's embedding
``Concat`` joins, class first.

`dinov2_state_dict` maps the result onto timm's `VisionTransformer` (as timm's own
``_convert_dinov2`` does for Meta's checkpoints): q, k and v concatenated into ``qkv``, layer
scales into ``ls1.gamma``/``ls2.gamma``, the final LayerNorm into ``norm``. The position
embedding keeps the export's full grid (37 × 37 for 518 px); `heartlora.models.packaged_weights`
resamples it to the model's grid.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from heartlora.errors import HeartLoRAError

_LAYER = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.(.+)$")

_LAYER_NAMES: dict[str, str] = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale2.lambda1": "ls2.gamma",
}
"""A `Dinov2Layer`'s parameter names (after ``backbone.encoder.layer.N.``) → timm's block names
(after ``blocks.N.``); q, k and v are joined separately."""

_QKV = ("query", "key", "value")

_TOP_NAMES: dict[str, str] = {
    "backbone.embeddings.cls_token": "cls_token",
    "backbone.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "backbone.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "backbone.layernorm.weight": "norm.weight",
    "backbone.layernorm.bias": "norm.bias",
}


def _import_onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise HeartLoRAError(
            "reading an ONNX file needs the onnx package: pip install onnx"
        ) from None
    return onnx, numpy_helper


def hf_dinov2_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The backbone tensors of an ONNX export of a Hugging Face `Dinov2Model`, under their
    Hugging Face names, the MatMul weights named by their biases and transposed to out × in,
    plus ``backbone.embeddings.position_embeddings`` (1, 1 + grid², width) joined from the
    class and patch position initializers.

    Raises:
        HeartLoRAError: the file cannot be parsed as ONNX, or its graph is not a Dinov2 export
            (no named biases, or position embeddings that cannot be found).
    """
    onnx, numpy_helper = _import_onnx()
    try:
        graph = onnx.load(str(path)).graph
    except Exception as error:  # protobuf's DecodeError and OSError alike
        raise HeartLoRAError(f"{path}: not a readable ONNX file ({type(error).__name__})") from None
    initializers = {init.name: init for init in graph.initializer}

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(initializers[name]).copy())

    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    tensors = {
        name: tensor(name)
        for name in initializers
        if name.startswith("backbone.") and not name.endswith("mask_token")
    }
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in initializers:
            continue
        biases = [
            name
            for add in consumers.get(node.output[0], [])
            if add.op_type == "Add"
            for name in add.input
            if name.endswith(".bias") and name in initializers
        ]
        if len(biases) == 1 and biases[0].startswith("backbone."):
            tensors[biases[0][: -len("bias")] + "weight"] = tensor(node.input[1]).T.contiguous()
    position = _position_embeddings(graph, initializers, tensor)
    if position is None:
        raise HeartLoRAError(
            f"{path}: no Dinov2 position embeddings found (expected an ONNX export of a Hugging "
            "Face Dinov2Model: a Concat of the class and patch positions in backbone/embeddings)"
        )
    tensors["backbone.embeddings.position_embeddings"] = position
    return tensors


def _position_embeddings(graph, initializers, tensor) -> torch.Tensor | None:
    """The class position (1, 1, d) and the patch positions (1, n, d): the class one is the
    initializer the embedding ``Concat`` takes first; the patch one, the (1, n, d) initializer
    an embedding ``Reshape`` takes (it is resampled from there to the input's grid)."""
    cls_position = patch_positions = None
    for node in graph.node:
        if not node.name.startswith("/backbone/embeddings/"):
            continue
        named = [name for name in node.input if name in initializers and name.startswith("onnx::")]
        for name in named:
            dims = list(initializers[name].dims)
            if node.op_type == "Concat" and node.input[0] == name and dims[:2] == [1, 1]:
                cls_position = tensor(name)
            elif node.op_type == "Reshape" and len(dims) == 3 and dims[0] == 1 and dims[1] > 1:
                patch_positions = tensor(name)
    if cls_position is None or patch_positions is None:
        return None
    return torch.cat([cls_position, patch_positions], dim=1)


def dinov2_state_dict(tensors: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Hugging Face `Dinov2Model` tensors (`hf_dinov2_tensors`) renamed onto timm's
    `VisionTransformer` (no classifier): ``blocks.N.attn.qkv`` = [q; k; v] along the output.

    Raises:
        HeartLoRAError: a tensor a timm block needs is missing, or one is left unmapped.
    """
    source = dict(tensors)
    state: dict[str, torch.Tensor] = {
        "pos_embed": source.pop("backbone.embeddings.position_embeddings")
    }
    for hf_name, timm_name in _TOP_NAMES.items():
        state[timm_name] = _take(source, hf_name)
    for layer in range(depth):
        prefix = f"backbone.encoder.layer.{layer}."
        for hf_name, timm_name in _LAYER_NAMES.items():
            state[f"blocks.{layer}.{timm_name}"] = _take(source, prefix + hf_name)
        for kind in ("weight", "bias"):
            parts = [_take(source, f"{prefix}attention.attention.{p}.{kind}") for p in _QKV]
            state[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    if source:
        raise HeartLoRAError(
            f"the Dinov2 tensors hold {len(source)} that timm's ViT has no place for "
            f"(first: {sorted(source)[0]}; expected depth {depth})"
        )
    return state


def dinov2_depth(tensors: dict[str, torch.Tensor]) -> int:
    """The number of encoder layers in Hugging Face `Dinov2Model` tensors."""
    layers = {int(match.group(1)) for name in tensors if (match := _LAYER.match(name))}
    return max(layers) + 1 if layers else 0


def _take(source: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in source:
        raise HeartLoRAError(f"the Dinov2 tensors lack {name} (expected a Dinov2Model export)")
    return source.pop(name)
