"""One frozen backbone, many task adapters: rebuild base models and switch tasks per batch.

`MultiTaskModel` loads each task's adapter directory onto the one backbone it holds and keeps the
task's injected modules (`HeadLoRAQKV`/`HeadLoRAProj`, each wrapping the backbone's own frozen
qkv/proj linear, so the big weights exist once) and classifier. Switching task is a handful of
``setattr`` calls that put that task's modules into the attention layers and the classifier slot;
nothing is copied or reloaded. Each task keeps its own head masks, adapter weights and class count,
and a task computes exactly what the same adapter loaded alone onto the backbone computes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from heartlora.adapter_io import load_adapter, read_adapter_config
from heartlora.config import HeartLoRAConfig
from heartlora.errors import HeartLoRAError
from heartlora.inject import adapter_modules, find_attention_layers, has_adapters


def _resolve_checkpoint(checkpoint: str | Path, adapter_dir: Path | None) -> Path:
    path = Path(checkpoint).expanduser()
    if not path.is_file() and adapter_dir is not None and (adapter_dir / path).is_file():
        path = adapter_dir / path
    if not path.is_file():
        raise HeartLoRAError(f"base checkpoint {path} does not exist (expected a weights file)")
    return path


def create_base_model(
    name: str,
    checkpoint: str | Path | None = None,
    weights: bool = True,
    adapter_dir: Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A timm model ``name`` with its base weights, through timm's own file-checkpoint path.

    Args:
        name: a timm architecture (the bundled ``vit_mini_patch4_28`` is registered on import).
        checkpoint: a weights file, loaded with ``pretrained_cfg_overlay=dict(file=checkpoint)``.
            Without one, the model's registered weights are used when they are a local file.
        weights: ``False`` builds the architecture with random weights (enough to read adapters).
        adapter_dir: a relative ``checkpoint`` is also looked up here.
        **kwargs: passed to ``timm.create_model`` (``num_classes``, ``img_size``, ...).

    Raises:
        HeartLoRAError: on an unknown model, a missing checkpoint file, or no local weights.
    """
    import heartlora.bundled.model  # noqa: F401  (registers the bundled base model with timm)

    if not timm.is_model(name):
        raise HeartLoRAError(
            f"unknown timm model {name!r} (expected a timm architecture name; pass --model NAME)"
        )
    if weights and checkpoint:
        path = _resolve_checkpoint(checkpoint, adapter_dir)
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs
        )
    if weights:
        default_file = getattr(timm.models.get_pretrained_cfg(name), "file", None)
        if not default_file:
            raise HeartLoRAError(
                f"no local base weights for {name!r}: pass --checkpoint PATH (expected a weights "
                "file, or an adapter whose extra names its 'checkpoint')"
            )
        return timm.create_model(name, pretrained=True, **kwargs)
    return timm.create_model(name, pretrained=False, **kwargs)


def base_model_from_adapter(
    adapter_dir: str | Path,
    checkpoint: str | Path | None = None,
    model_name: str | None = None,
    weights: bool = True,
) -> nn.Module:
    """The base model an adapter was trained on, ready for `heartlora.load_adapter`.

    Reads the adapter's ``extra``: ``model`` (timm name, else the stored ``base_model``),
    ``checkpoint`` (base weights), ``img_size`` and optional ``model_kwargs`` (more
    ``timm.create_model`` arguments); ``checkpoint`` and ``model_name`` override them.
    The model is built with the adapter's class count and returned in eval mode.
    """
    adapter_dir = Path(adapter_dir)
    metadata = read_adapter_config(adapter_dir)
    extra = metadata.get("extra") or {}
    name = model_name or extra.get("model") or metadata["base_model"]
    kwargs = dict(extra.get("model_kwargs") or {})
    if extra.get("img_size"):
        kwargs.setdefault("img_size", int(extra["img_size"]))
    if metadata.get("num_classes") is not None:
        kwargs["num_classes"] = int(metadata["num_classes"])
    checkpoint = checkpoint if checkpoint is not None else extra.get("checkpoint")
    model = create_base_model(name, checkpoint, weights=weights, adapter_dir=adapter_dir, **kwargs)
    return model.eval()


def adapter_img_size(adapter_dir: str | Path, model: nn.Module | None = None) -> int:
    """The input side of an adapter's images: its ``extra["img_size"]``, else the model's."""
    extra = read_adapter_config(adapter_dir).get("extra") or {}
    if extra.get("img_size"):
        return int(extra["img_size"])
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is None:
        raise HeartLoRAError(f"{adapter_dir}: no img_size in the adapter's extra (expected an int)")
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _classifier_path(model: nn.Module) -> str | None:
    get_classifier = getattr(model, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    if not isinstance(classifier, nn.Module):
        return None
    return next((name for name, m in model.named_modules() if m is classifier and name), None)


def _tensor_bytes(tensors: list[torch.Tensor]) -> int:
    unique = {id(t): t for t in tensors}
    return sum(t.numel() * t.element_size() for t in unique.values())


@dataclass
class TaskAdapter:
    """One task's modules on the shared backbone.

    Attributes:
        name: the task name.
        adapters: module path → injected adapter (wrapping the backbone's linear).
        classifier: the task's classifier, or ``None`` for a model without one.
        num_classes: its class count.
        config: the adapter's `HeartLoRAConfig`.
        metadata: the parsed ``heartlora_config.json``.
    """

    name: str
    adapters: dict[str, nn.Module]
    classifier: nn.Module | None
    num_classes: int | None
    config: HeartLoRAConfig
    metadata: dict[str, Any] = field(repr=False)

    def own_tensors(self, backbone: set[int]) -> list[torch.Tensor]:
        """The tensors this task adds: adapter weights and buffers, classifier (not the backbone)."""
        modules = list(self.adapters.values()) + ([self.classifier] if self.classifier else [])
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
        return [t for t in tensors if id(t) not in backbone]


class MultiTaskModel:
    """A frozen timm backbone serving several Heart-LoRA task adapters, switched per batch.

    Args:
        base_model: a fresh base model (no adapters) with the weights every task was trained on.

    Example::

        server = MultiTaskModel(base_model_from_adapter("runs/cifar"))
        server.add_task("cifar", "runs/cifar")
        server.add_task("dtd", "runs/dtd")
        labels, probs = server.predict(images, "dtd")

    Not thread-safe: a forward installs its task's modules into the shared backbone.

    Raises:
        HeartLoRAError: if ``base_model`` already carries adapters.
    """

    def __init__(self, base_model: nn.Module) -> None:
        if has_adapters(base_model):
            raise HeartLoRAError("MultiTaskModel needs a base model without heartlora adapters")
        self.model = base_model.eval().requires_grad_(False)
        self.tasks: dict[str, TaskAdapter] = {}
        self.active: str | None = None
        self._classifier_path = _classifier_path(base_model)
        self._base_modules = {
            f"{layer.name}.{part}": getattr(layer.module, part)
            for layer in find_attention_layers(base_model)
            for part in ("qkv", "proj")
            if isinstance(getattr(layer.module, part, None), nn.Module)
        }
        if self._classifier_path is not None:
            self._base_modules[self._classifier_path] = base_model.get_submodule(
                self._classifier_path
            )
        self._base_num_classes = getattr(base_model, "num_classes", None)

    def add_task(self, name: str, adapter_dir: str | Path) -> TaskAdapter:
        """Load the adapter in ``adapter_dir`` onto the shared backbone as task ``name``.

        Raises:
            HeartLoRAError: on a repeated task name, or an adapter that `load_adapter` rejects
                (another architecture, layer layout or head count).
        """
        if name in self.tasks:
            raise HeartLoRAError(f"task {name!r} is already loaded (expected a new task name)")
        metadata = read_adapter_config(adapter_dir)
        self.use(None)
        if self._classifier_path is not None:
            # load_adapter writes a same-sized classifier in place: give it a copy to fill.
            base_classifier = self._base_modules[self._classifier_path]
            _set_submodule(self.model, self._classifier_path, copy.deepcopy(base_classifier))
        try:
            load_adapter(self.model, adapter_dir)
            classifier = (
                self.model.get_submodule(self._classifier_path) if self._classifier_path else None
            )
            task = TaskAdapter(
                name=name,
                adapters=dict(adapter_modules(self.model)),
                classifier=classifier,
                num_classes=getattr(self.model, "num_classes", None),
                config=self.model.heartlora_config,
                metadata=metadata,
            )
        finally:
            self._restore_base()
        for module in [*task.adapters.values(), task.classifier]:
            if module is not None:
                module.eval().requires_grad_(False)
        self.tasks[name] = task
        return task

    def _restore_base(self) -> None:
        for path, module in self._base_modules.items():
            _set_submodule(self.model, path, module)
        if self._base_num_classes is not None:
            self.model.num_classes = self._base_num_classes
        for attribute in ("heartlora_config", "heartlora_scores"):
            self.model.__dict__.pop(attribute, None)
        self.active = None

    def use(self, task: str | None) -> None:
        """Install ``task``'s adapters and classifier into the backbone (``None``: the bare base)."""
        if task == self.active:
            return
        if task is None:
            self._restore_base()
            return
        if task not in self.tasks:
            known = ", ".join(self.tasks) or "none loaded"
            raise HeartLoRAError(f"unknown task {task!r} (expected one of: {known})")
        entry = self.tasks[task]
        self._restore_base()
        for path, module in entry.adapters.items():
            _set_submodule(self.model, path, module)
        if entry.classifier is not None and self._classifier_path is not None:
            _set_submodule(self.model, self._classifier_path, entry.classifier)
        if entry.num_classes is not None:
            self.model.num_classes = entry.num_classes
        self.model.heartlora_config = entry.config
        self.active = task

    @torch.no_grad()
    def forward(self, images: torch.Tensor, task: str) -> torch.Tensor:
        """Logits of ``task`` for a batch of images (B, 3, S, S) → (B, classes of the task)."""
        self.use(task)
        device = next(self.model.parameters()).device
        return self.model(images.to(device))

    __call__ = forward

    @torch.no_grad()
    def predict(self, images: torch.Tensor, task: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(classes (B,), probabilities (B,))`` of the top class of ``task`` per image."""
        probabilities = self.forward(images, task).float().softmax(dim=-1)
        top, classes = probabilities.max(dim=-1)
        return classes.cpu(), top.cpu()

    def to(self, device: torch.device | str) -> MultiTaskModel:
        """Move the backbone and every task's modules to ``device``."""
        self.model.to(device)
        for task in self.tasks.values():
            for module in [*task.adapters.values(), task.classifier]:
                if module is not None:
                    module.to(device)
        return self

    def memory_report(self) -> dict[str, Any]:
        """Bytes held: the backbone once, and what each task adds (adapters + classifier).

        Returns:
            ``{"backbone_bytes", "task_bytes": {task: bytes}, "total_bytes",
            "separate_models_bytes"}``; the last is what one full model per task would hold.
        """
        classifier = (
            self._base_modules.get(self._classifier_path) if self._classifier_path else None
        )
        classifier_ids = (
            {id(t) for t in (*classifier.parameters(), *classifier.buffers())}
            if classifier
            else set()
        )
        self.use(None)
        backbone = [
            t
            for t in (*self.model.parameters(), *self.model.buffers())
            if id(t) not in classifier_ids
        ]
        backbone_ids = {id(t) for t in backbone}
        backbone_bytes = _tensor_bytes(backbone)
        task_bytes = {
            name: _tensor_bytes(task.own_tensors(backbone_ids)) for name, task in self.tasks.items()
        }
        return {
            "backbone_bytes": backbone_bytes,
            "task_bytes": task_bytes,
            "total_bytes": backbone_bytes + sum(task_bytes.values()),
            "separate_models_bytes": len(task_bytes) * backbone_bytes + sum(task_bytes.values()),
        }
