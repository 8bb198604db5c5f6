"""heartlora: head-level low-rank adaptation (Heart-LoRA) for timm Vision Transformers.

The usual flow: ``inject`` adapters → a `Calibration` of the run (warm-up, then
``responsiveness`` on training batches and ``deactivate_heads``) → train → ``merge`` or
``save_adapter``.
"""

import heartlora.bundled  # noqa: F401  (registers the bundled base ViT with timm)
from heartlora.adapter_io import load_adapter, read_adapter_config, save_adapter
from heartlora.adapters import HeadLoRAAdapter, HeadLoRAProj, HeadLoRAQKV
from heartlora.calibration import Calibration, CalibrationResult
from heartlora.config import HeartLoRAConfig
from heartlora.errors import HeartLoRAError
from heartlora.inject import (
    adapter_parameters,
    expected_adapter_parameters,
    find_attention_layers,
    head_masks,
    inject,
    mark_trainable,
    merge,
    set_head_masks,
    trainable_parameters,
    unmerge,
)
from heartlora.responsiveness import responsiveness
from heartlora.selection import deactivate_heads, select_heads
from heartlora.sensitivity import HeadSensitivity

__all__ = [
    "Calibration",
    "CalibrationResult",
    "HeadLoRAAdapter",
    "HeadLoRAProj",
    "HeadLoRAQKV",
    "HeadSensitivity",
    "HeartLoRAConfig",
    "HeartLoRAError",
    "adapter_parameters",
    "deactivate_heads",
    "expected_adapter_parameters",
    "find_attention_layers",
    "head_masks",
    "inject",
    "load_adapter",
    "mark_trainable",
    "merge",
    "read_adapter_config",
    "responsiveness",
    "save_adapter",
    "select_heads",
    "set_head_masks",
    "trainable_parameters",
    "unmerge",
]
__version__ = "0.1.0"
