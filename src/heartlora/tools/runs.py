"""A training run's folder, whatever its method: read its ``config.yaml``, rebuild its base model
as the trainer did (`heartlora.training.trainer.create_run_model`) and put back what the method
stored in ``adapter/`` (`heartlora.training.methods.load_trained`).

`heartlora predict` and `heartlora export` use this for the runs whose ``adapter/`` is not a
heartlora adapter (``linear``, ``full``, ``bitfit``, every ``peft-*`` method); heartlora adapters
keep their own path (`heartlora.tools.serving`), which serves several tasks on one backbone. A
run of another method is one whole model: its backbone is not shared.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from heartlora.adapter_io import CONFIG_NAME, RUN_ADAPTER_FOLDER, RUN_CONFIG_NAME, RUN_RESULT_NAME
from heartlora.errors import HeartLoRAError, one_line
from heartlora.io.documents import read_json
from heartlora.models.backbone import takes_img_size
from heartlora.tools.serving import base_mismatch
from heartlora.training.config import TrainConfig, read_config_file
from heartlora.training.methods import PEFT_METHODS, Method, get_method, load_trained
from heartlora.training.trainer import create_run_model


@dataclass(frozen=True)
class TrainedRun:
    """A finished run's folder and what rebuilding its model needs.

    Attributes:
        folder: the run folder (``heartlora train --output-dir``).
        config: its resolved config (``config.yaml``).
        num_classes: the classifier's class count (``result.json``, else the config's).
    """

    folder: Path
    config: TrainConfig
    num_classes: int

    @property
    def adapter(self) -> Path:
        """The ``adapter/`` folder: what the method stored."""
        return self.folder / RUN_ADAPTER_FOLDER

    @property
    def method(self) -> Method:
        """The run's method."""
        return get_method(self.config.method)

    @property
    def task(self) -> str:
        """The task's name, else the run folder's."""
        return self.config.task or self.folder.resolve().name

    def create_kwargs(self) -> dict[str, Any]:
        """The ``timm.create_model`` arguments beyond the name and class count that rebuild the
        architecture (``model_kwargs``, and ``img_size`` for the families that take it)."""
        kwargs = dict(self.config.model_kwargs)
        if takes_img_size(self.config.model):
            kwargs["img_size"] = self.config.img_size
        return kwargs


def other_method_run(path: str | Path) -> TrainedRun | None:
    """The run ``path`` names (the run folder or its ``adapter/``) when its method stores
    something other than a heartlora adapter; ``None`` for a heartlora adapter and for a folder
    that is not a run (`heartlora.adapter_io.adapter_directory` then says what it is).

    Raises:
        HeartLoRAError: as `read_run`: the run's ``config.yaml`` or ``result.json`` is
            unreadable, or a file its method stores is missing.
    """
    path = Path(path)
    if (path / CONFIG_NAME).is_file() or (path / RUN_ADAPTER_FOLDER / CONFIG_NAME).is_file():
        return None
    if path.name == RUN_ADAPTER_FOLDER and (path.parent / RUN_CONFIG_NAME).is_file():
        path = path.parent
    if not ((path / RUN_CONFIG_NAME).is_file() and (path / RUN_ADAPTER_FOLDER).is_dir()):
        return None
    run = read_run(path)
    return None if run.method.uses_heartlora else run


def read_run(run_dir: str | Path) -> TrainedRun:
    """The finished run in ``run_dir``: its config and class count.

    Raises:
        HeartLoRAError: ``config.yaml`` missing or invalid (the file and key named), no class
            count (neither ``result.json`` nor the config gives one), or a file the method
            stores missing from ``adapter/``.
    """
    run_dir = Path(run_dir)
    path = run_dir / RUN_CONFIG_NAME
    try:
        config = TrainConfig(**read_config_file(path))
    except HeartLoRAError as error:
        if str(error).startswith(str(path)):
            raise
        raise HeartLoRAError(f"{path}: {error}") from None
    except TypeError as error:
        raise HeartLoRAError(f"{path}: {error} (expected the config.yaml a run writes)") from None
    num_classes = config.num_classes
    result_path = run_dir / RUN_RESULT_NAME
    if result_path.is_file():
        result = read_json(result_path, "the result.json a finished run writes")
        value = result.get("num_classes") if isinstance(result, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            num_classes = value
    if num_classes is None:
        raise HeartLoRAError(
            f"{result_path}: no num_classes (expected the result.json of a finished run)"
        )
    run = TrainedRun(run_dir, config, num_classes)
    for name in run.method.files:
        if not (run.adapter / name).is_file():
            raise HeartLoRAError(
                f"{run.adapter / name}: missing (expected what a `{config.method}` run stores: "
                f"{', '.join(run.method.files)})"
            )
    return run


def run_base_model(
    run: TrainedRun,
    checkpoint: str | Path | None = None,
    model_name: str | None = None,
    ignore_base_mismatch: bool = False,
) -> nn.Module:
    """The base model of ``run`` in eval mode, built as its trainer built it: its model, class
    count, image size, ``model_kwargs`` and base weights (a relative checkpoint is also looked
    up in the run folder). A ``full`` run stored every weight, so its base is the architecture
    alone. ``checkpoint`` and ``model_name`` override the run's; other weights than the run's
    are refused (`heartlora.tools.serving.base_mismatch`) unless ``ignore_base_mismatch``.

    Raises:
        HeartLoRAError: the base weights cannot be loaded, or are not the run's.
    """
    config = run.config
    if config.method == "full":
        config = dataclasses.replace(config, checkpoint=None, pretrained=False)
        return create_run_model(config, run.num_classes, log=_quiet).eval()
    problem = base_mismatch(config.base_weights(), checkpoint, model_name, trained="the run")
    if problem is not None and not ignore_base_mismatch:
        raise HeartLoRAError(
            f"{run.folder}: {problem} (pass the run's base, or --ignore-base-mismatch / "
            "ignore_base_mismatch=True if you know they are the same weights)"
        )
    changes: dict[str, Any] = {}
    if model_name is not None:
        changes["model"] = model_name
    weights = str(checkpoint) if checkpoint is not None else config.checkpoint
    if weights and not Path(weights).is_absolute() and not Path(weights).exists():
        if (run.folder / weights).is_file():
            weights = str(run.folder / weights)
    if weights != config.checkpoint:
        changes["checkpoint"] = weights
    if changes:
        config = dataclasses.replace(config, **changes)
    return create_run_model(config, run.num_classes, log=_quiet).eval()


def load_run_model(
    run_dir: str | Path | TrainedRun,
    checkpoint: str | Path | None = None,
    model_name: str | None = None,
    ignore_base_mismatch: bool = False,
) -> nn.Module:
    """The trained model of the run in ``run_dir`` (any method), in eval mode: `run_base_model`
    with what the method stored loaded onto it (`heartlora.training.methods.load_trained`; a
    ``peft-*`` run gives peft's ``PeftModel``).

    Raises:
        HeartLoRAError: as `read_run` and `run_base_model`, or stored files the method cannot
            load (the folder named, with the loader's reason).
    """
    run = run_dir if isinstance(run_dir, TrainedRun) else read_run(run_dir)
    base = run_base_model(run, checkpoint, model_name, ignore_base_mismatch)
    try:
        model = load_trained(base, run.config.method, run.adapter)
    except HeartLoRAError:
        raise
    except (ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as error:
        # peft, torch and safetensors report damaged or foreign files in their own types
        raise HeartLoRAError(
            f"{run.adapter}: cannot load what the `{run.config.method}` run stored "
            f"({one_line(error)[:200]}; expected the files its run wrote, for this base model)"
        ) from None
    return model.eval().requires_grad_(False)


def merged_run_state(model: nn.Module, method: str) -> dict[str, torch.Tensor]:
    """The plain timm state dict of a run's trained model (`load_run_model`): a ``peft-*`` run's
    update folded into the base weights with peft's ``merge_and_unload`` (``safe_merge``: a
    merge that gives NaN is refused); a ``linear``, ``full`` or ``bitfit`` run's model is
    already plain (the base with its trained classifier, biases or weights).

    The model is changed (peft unloads its layers); load a fresh one to use it again.

    Raises:
        HeartLoRAError: peft cannot merge the method (peft's reason, in one line).
    """
    if method in PEFT_METHODS:
        try:
            model = model.merge_and_unload(safe_merge=True)
        except (ValueError, RuntimeError, NotImplementedError, TypeError, AttributeError) as error:
            raise HeartLoRAError(
                f"{method}: peft cannot merge this adapter into the base weights "
                f"({one_line(error)[:200]}); export it with --format peft instead"
            ) from None
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def _quiet(*_args, **_kwargs) -> None:
    pass
