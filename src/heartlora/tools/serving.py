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

from heartlora.adapter_io import (
    AdapterMetadata,
    adapter_directory,
    load_adapter,
    read_adapter_metadata,
)
from heartlora.config import HeartLoRAConfig
from heartlora.errors import HeartLoRAError
from heartlora.inject import adapter_modules, find_attention_layers, has_adapters
from heartlora.models.backbone import (
    PRETRAINED_PREFIX,
    RANDOM_WEIGHTS,
    classifier_path,
    create_base_model,
)
from heartlora.models.packaged_weights import (
    PACKAGE_PREFIX,
    packaged_weights,
    packaged_weights_by_label,
)


def base_model_from_adapter(
    adapter_dir: str | Path,
    checkpoint: str | Path | None = None,
    model_name: str | None = None,
    load_weights: bool = True,
    ignore_base_mismatch: bool = False,
) -> nn.Module:
    """The base model an adapter was trained on, ready for `heartlora.load_adapter`.

    Reads the adapter's `RunInfo`: ``model`` (timm name, else the stored ``base_model``),
    ``weights`` (what the base weights were: timm's pretrained weights of a tag, or a
    checkpoint file, also looked up beside the adapter), ``img_size`` and ``model_kwargs``
    (more ``timm.create_model`` arguments). ``checkpoint`` and ``model_name`` override them;
    weights other than the adapter's are refused (`base_mismatch`) unless
    ``ignore_base_mismatch``. The model is built with the adapter's class count and returned in
    eval mode.

    Args:
        load_weights: ``False`` builds the architecture only, with random weights (enough for
            what reads adapter tensors alone, such as the peft export).

    Raises:
        HeartLoRAError: an unreadable adapter, base weights that cannot be loaded, or weights
            other than those the adapter was trained on.
    """
    adapter_dir = adapter_directory(adapter_dir)
    metadata = read_adapter_metadata(adapter_dir)
    name = model_name or metadata.run.model or metadata.base_model
    kwargs = base_model_kwargs(metadata)
    if metadata.num_classes is not None:
        kwargs["num_classes"] = metadata.num_classes
    if not load_weights:
        return create_base_model(name, pretrained=False, **kwargs).eval()
    trained_on = metadata.run.weights
    problem = base_mismatch(trained_on, checkpoint, model_name)
    if problem is not None and not ignore_base_mismatch:
        raise HeartLoRAError(
            f"{adapter_dir}: {problem} (pass the adapter's base, or --ignore-base-mismatch / "
            "ignore_base_mismatch=True if you know they are the same weights)"
        )
    if checkpoint is not None or trained_on is None:  # an override, or an older adapter
        checkpoint = checkpoint if checkpoint is not None else metadata.run.checkpoint
        model = create_base_model(name, checkpoint, search_dir=adapter_dir, **kwargs)
    elif trained_on == RANDOM_WEIGHTS:
        model = create_base_model(name, pretrained=False, **kwargs)
    elif trained_on.startswith(PACKAGE_PREFIX):
        packaged = packaged_weights_by_label(trained_on)
        if packaged is None:
            raise HeartLoRAError(
                f"{adapter_dir}: the adapter was trained on packaged weights this heartlora does "
                f"not know ({trained_on}); use the heartlora release that trained it"
            )
        model = create_base_model(packaged.name, pretrained=True, **kwargs)
    elif trained_on.startswith(PRETRAINED_PREFIX):
        architecture, tag = timm.models.split_model_name_tag(name)
        if not tag or problem is None:
            tag = trained_on[len(PRETRAINED_PREFIX) :]
        model = create_base_model(f"{architecture}.{tag}", pretrained=True, **kwargs)
    else:
        model = create_base_model(name, trained_on, search_dir=adapter_dir, **kwargs)
    return model.eval()


def base_mismatch(
    trained_on: str | None,
    checkpoint: str | Path | None = None,
    model_name: str | None = None,
    trained: str = "the adapter",
) -> str | None:
    """Why the base that ``checkpoint`` or ``model_name`` would load is not the one an adapter
    was trained on (``trained_on``: its `RunInfo` ``weights``), or ``None`` when it is.

    A checkpoint counts as the same when its file name is that of the adapter's (the file
    moved to another folder or machine); a model name counts by its pretrained tag, a name
    without one keeps the adapter's. Adapters that predate the ``weights`` record, and
    unchanged bases, are never refused; a randomly initialised base always is, because
    nothing can rebuild it. ``trained`` names what was trained in the message (``"the run"``
    for the run of another method, `heartlora.tools.runs`).
    """
    if trained_on is None:
        return None
    tag = timm.models.split_model_name_tag(model_name)[1] if model_name else ""
    if checkpoint is not None:
        loading = str(checkpoint)
    elif model_name and packaged_weights(model_name) is not None:
        loading = packaged_weights(model_name).label
    elif tag:
        loading = PRETRAINED_PREFIX + tag
    else:
        loading = trained_on
    if trained_on == RANDOM_WEIGHTS and loading == RANDOM_WEIGHTS:
        return (
            f"{trained} was trained on a randomly initialised base (weights: random), which "
            "cannot be rebuilt"
        )
    trained_file = trained_on != RANDOM_WEIGHTS and not trained_on.startswith(
        (PRETRAINED_PREFIX, PACKAGE_PREFIX)
    )
    moved = checkpoint is not None and trained_file and Path(loading).name == Path(trained_on).name
    if loading == trained_on or moved:
        return None
    return f"{trained} was trained on base weights {trained_on!r}, this loads {loading!r}"


def base_model_kwargs(metadata: AdapterMetadata) -> dict[str, Any]:
    """The ``timm.create_model`` arguments that rebuild an adapter's base architecture: its
    ``model_kwargs`` and ``img_size``."""
    kwargs = dict(metadata.run.model_kwargs)
    if metadata.run.img_size:
        kwargs.setdefault("img_size", metadata.run.img_size)
    return kwargs


def adapter_img_size(adapter_dir: str | Path, model: nn.Module | None = None) -> int:
    """The input side of an adapter's images: its `RunInfo` ``img_size``, else the model's."""
    img_size = read_adapter_metadata(adapter_dir).run.img_size
    if img_size:
        return img_size
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is None:
        raise HeartLoRAError(f"{adapter_dir}: no img_size in the adapter's extra (expected an int)")
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def top_classes(logits: torch.Tensor, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(classes (B,), probabilities (B,))``: the top class of each row of ``logits`` (B, C)
    and its softmax probability, on the CPU.

    Raises:
        HeartLoRAError: NaN or infinite logits (weights that overflow): no class can be read
            from them; ``task`` names whose they are.
    """
    logits = logits.float()
    if not bool(torch.isfinite(logits).all()):
        raise HeartLoRAError(
            f"task {task!r}: the adapter's outputs are NaN or infinite (its weights overflow "
            "in the forward pass; expected an adapter whose outputs are finite)"
        )
    top, classes = logits.softmax(dim=-1).max(dim=-1)
    return classes.cpu(), top.cpu()


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of ``tensors``, each counted once (shared tensors appear once)."""
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
        metadata: the adapter's `AdapterMetadata`.
    """

    name: str
    adapters: dict[str, nn.Module]
    classifier: nn.Module | None
    num_classes: int | None
    config: HeartLoRAConfig
    metadata: AdapterMetadata = field(repr=False)

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
        self._classifier_path = classifier_path(base_model)
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
        metadata = read_adapter_metadata(adapter_dir)
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
        """``(classes (B,), probabilities (B,))`` of the top class of ``task`` per image.

        Raises:
            HeartLoRAError: the task's outputs are NaN or infinite (weights that overflow):
                no class can be read from them.
        """
        return top_classes(self.forward(images, task), task)

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
        backbone_bytes = tensor_bytes(backbone)
        task_bytes = {
            name: tensor_bytes(task.own_tensors(backbone_ids)) for name, task in self.tasks.items()
        }
        return {
            "backbone_bytes": backbone_bytes,
            "task_bytes": task_bytes,
            "total_bytes": backbone_bytes + sum(task_bytes.values()),
            "separate_models_bytes": len(task_bytes) * backbone_bytes + sum(task_bytes.values()),
        }
