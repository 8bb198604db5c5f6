"""One training run: data → model (method) → [warm-up → calibration → head deactivation] →
train → evaluate → store, with atomic checkpoints that make a killed run resumable.

Outputs in the run directory: ``config.yaml``, ``metrics.csv`` (one row per epoch),
``result.json``, ``checkpoint.pt`` (the last epoch boundary, or where Ctrl-C stopped),
``adapter/`` (what the method trained) and ``tensorboard/``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import Dataset

from heartlora.adapter_io import DatasetInfo, RunInfo
from heartlora.atomic import atomic_write, atomic_write_json, atomic_write_text
from heartlora.backbone import create_base_model, registered_weights_file
from heartlora.data.factory import build_dataset
from heartlora.errors import HeartLoRAError
from heartlora.inject import (
    active_heads_per_layer,
    head_masks,
    heads_per_layer,
    set_head_masks,
    trainable_parameters,
)
from heartlora.responsiveness import responsiveness
from heartlora.selection import deactivate_heads
from heartlora.training.config import TrainConfig
from heartlora.training.distributed import (
    World,
    all_reduce_gradients,
    all_reduce_sum,
    barrier,
    init_world,
    shard,
)
from heartlora.training.feed import CachedImages, epoch_order, iterate_batches
from heartlora.training.methods import prepare_model, save_trained, trainable
from heartlora.training.run_directory import prepare_run_directory
from heartlora.training.run_state import RunProgress, rng_state, seed_everything, set_rng_state
from heartlora.training.schedule import learning_rate

METRIC_FIELDS = ("epoch", "lr", "train_loss", "train_accuracy", "test_accuracy", "seconds")


class TrainingDiverged(HeartLoRAError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HeartLoRAError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def create_run_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The base model of a run: ``config.model`` with ``num_classes`` outputs, the run's
    drop-path and image size, and weights from ``config.checkpoint`` or the file timm's
    registry names for the model (the bundled base); other models start from random weights."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_path_rate": config.drop_path}
    if "swin" not in config.model:
        kwargs["img_size"] = config.img_size
    has_weights = bool(config.checkpoint) or registered_weights_file(config.model) is not None
    return create_base_model(config.model, config.checkpoint, weights=has_weights, **kwargs)


class Trainer:
    """Runs one configured training job; see `run_training`."""

    def __init__(self, config: TrainConfig, output_dir: Path, log=print) -> None:
        self.config = config
        self.output_dir = output_dir
        self.log = log
        self.device = _resolve_device(config.device)
        self.world: World = init_world(self.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        self.train_set, self.eval_set = self._datasets()
        self.num_classes = self.train_set.num_classes
        model = create_run_model(config, self.num_classes)
        self.model = prepare_model(model, config).to(self.device)
        self.steps_per_epoch = math.ceil(len(self.train_set) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        if config.selects_heads and config.calib_warmup_steps >= self.total_steps:
            raise HeartLoRAError(
                f"calib_warmup_steps={config.calib_warmup_steps} must be smaller than the run's "
                f"{self.total_steps} steps"
            )
        self.optimizer = self._optimizer()
        self.progress = RunProgress()
        self.writer = self._tensorboard()

    # ----------------------------------------------------------------- setup
    def _datasets(self) -> tuple[Dataset, Dataset]:
        config = self.config
        common = {
            "normalize": tuple(config.normalize) if config.normalize else None,
            "skip_corrupt": config.skip_corrupt,
            "image_dir": config.image_dir,
        }
        train = build_dataset(
            config.data_kind,
            config.data_root,
            config.task,
            config.train_split,
            config.img_size,
            augment=config.augment,
            **common,
        )
        evaluation = build_dataset(
            config.data_kind,
            config.data_root,
            config.task,
            config.eval_split,
            config.img_size,
            num_classes=train.num_classes,
            **common,
        )
        self.skipped_images = int(getattr(train, "skipped", 0)) + int(
            getattr(evaluation, "skipped", 0)
        )
        if config.cache_images:
            if config.augment:
                raise HeartLoRAError("cache_images cannot be combined with augment")
            train, evaluation = CachedImages(train), CachedImages(evaluation)
        return train, evaluation

    def _optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            trainable(self.model), lr=self.config.lr, weight_decay=self.config.weight_decay
        )

    def _tensorboard(self):
        if not self.world.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.log("tensorboard is not installed: no TensorBoard logs")
            return None
        return SummaryWriter(str(self.output_dir / "tensorboard"))

    def _autocast(self):
        if self.config.dtype == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # ----------------------------------------------------------- checkpoints
    def save_resume_state(self) -> None:
        """Write ``checkpoint.pt`` atomically (main rank only)."""
        if not self.world.is_main:
            return
        state = {
            "progress": self.progress.__dict__,
            "trainable": {
                n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad
            },
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "head_masks": None,
            "scores": getattr(self.model, "heartlora_scores", None),
        }
        if self.progress.calibrated:
            state["head_masks"] = head_masks(self.model)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write(
            self.output_dir / "checkpoint.pt", lambda tmp: tmp.write_bytes(buffer.getvalue())
        )

    def load_resume_state(self) -> None:
        """Restore the state saved by `save_resume_state`."""
        path = self.output_dir / "checkpoint.pt"
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # a checkpoint from elsewhere, or damaged by hand
            raise HeartLoRAError(
                f"{path}: cannot read checkpoint ({type(error).__name__})"
            ) from None
        if state["head_masks"] is not None:
            set_head_masks(self.model, state["head_masks"])
            self.model.heartlora_scores = state["scores"]
            self.optimizer = self._optimizer()
        params = dict(self.model.named_parameters())
        for name, value in state["trainable"].items():
            if name not in params or params[name].shape != value.shape:
                raise HeartLoRAError(f"{path}: checkpoint does not fit this run's model ({name})")
            with torch.no_grad():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.progress = RunProgress(**state["progress"])
        set_rng_state(state["rng"])
        self._write_metrics()

    # ------------------------------------------------------------- training
    def _calibrate(self) -> None:
        """Score heads on training batches and deactivate the least responsive (Heart-LoRA)."""
        config = self.config
        started = time.perf_counter()
        order = epoch_order(len(self.train_set), config.seed + 7919, 0, config.batch_size)
        batches = iterate_batches(self.train_set, order[: config.calib_batches], 0)
        scores = responsiveness(
            self.model,
            batches,
            F.cross_entropy,
            scorer=config.scorer,
            max_batches=config.calib_batches,
            seed=config.seed,
        )
        keep = deactivate_heads(self.model, scores)
        self.optimizer = self._optimizer()
        self.progress.calibrated = True
        self.progress.calibration_seconds = time.perf_counter() - started
        active = [int(row.sum()) for row in keep]
        self.log(
            f"calibrated with scorer {config.scorer} in {self.progress.calibration_seconds:.1f}s; "
            f"active heads per layer {active}"
        )

    def _train_step(
        self, images: torch.Tensor, labels: torch.Tensor, global_count: int
    ) -> tuple[float, float]:
        config = self.config
        lr = learning_rate(
            self.progress.global_step,
            self.total_steps,
            config.warmup_epochs * self.steps_per_epoch,
            config.lr,
            config.warmup_lr,
            config.min_lr,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images, labels = images.to(self.device), labels.to(self.device)
        with self._autocast():
            logits = self.model(images)
            loss_sum = F.cross_entropy(
                logits.float(), labels, reduction="sum", label_smoothing=config.label_smoothing
            )
        (loss_sum / global_count).backward()
        all_reduce_gradients(trainable(self.model), self.world)
        loss_total, correct = all_reduce_sum(
            [loss_sum.item(), (logits.argmax(1) == labels).sum().item()], self.world, self.device
        )
        if not math.isfinite(loss_total):
            raise TrainingDiverged(
                f"loss became {loss_total} at epoch {self.progress.epoch + 1} step "
                f"{self.progress.step_in_epoch + 1}; the last good checkpoint is kept in "
                f"{self.output_dir / 'checkpoint.pt'} (try a lower lr or scale)"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_total, correct

    @torch.no_grad()
    def evaluate(self) -> float:
        """Top-1 accuracy (%) on the evaluation split, over all ranks."""
        was_training = self.model.training
        self.model.eval()
        indices = shard(list(range(len(self.eval_set))), self.world)
        size = self.config.batch_size * 2
        correct = 0.0
        for images, labels in iterate_batches(
            self.eval_set,
            [indices[i : i + size] for i in range(0, len(indices), size)],
            self.config.num_workers,
        ):
            with self._autocast():
                logits = self.model(images.to(self.device))
            correct += (logits.argmax(1).cpu() == labels).sum().item()
        self.model.train(was_training)
        total_correct, total = all_reduce_sum(
            [correct, float(len(indices))], self.world, self.device
        )
        return 100.0 * total_correct / max(total, 1.0)

    def _write_metrics(self) -> None:
        if not self.world.is_main:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(self.progress.history)
        atomic_write_text(self.output_dir / "metrics.csv", buffer.getvalue())

    def _finish_epoch(self, lr: float, seconds: float) -> None:
        progress, config = self.progress, self.config
        epoch = progress.epoch + 1
        evaluate = epoch % config.eval_every == 0 or epoch == config.epochs
        accuracy = self.evaluate() if evaluate else None
        row = {
            "epoch": epoch,
            "lr": f"{lr:.3g}",
            "train_loss": round(progress.loss_sum / max(progress.seen, 1), 5),
            "train_accuracy": round(100.0 * progress.correct / max(progress.seen, 1), 3),
            "test_accuracy": "" if accuracy is None else round(accuracy, 3),
            "seconds": round(seconds, 2),
        }
        progress.history.append(row)
        if accuracy is not None and (
            progress.best_accuracy is None or accuracy > progress.best_accuracy
        ):
            progress.best_accuracy, progress.best_epoch = accuracy, epoch
        if self.writer is not None:
            self.writer.add_scalar("train/loss", row["train_loss"], epoch)
            self.writer.add_scalar("train/accuracy", row["train_accuracy"], epoch)
            self.writer.add_scalar("train/lr", lr, epoch)
            if accuracy is not None:
                self.writer.add_scalar("test/accuracy", accuracy, epoch)
            self.writer.flush()
        progress.epoch, progress.step_in_epoch = epoch, 0
        progress.loss_sum = progress.correct = progress.seen = 0.0
        self._write_metrics()
        self.save_resume_state()
        shown = "" if accuracy is None else f" test_acc {accuracy:.2f}"
        self.log(
            f"epoch {epoch}/{config.epochs} loss {row['train_loss']:.4f} "
            f"train_acc {row['train_accuracy']:.2f}{shown} lr {lr:.2e} {seconds:.1f}s"
        )

    def _progress_bar(self, total: int, initial: int):
        if not (self.world.is_main and sys.stderr.isatty()):
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(
            total=total, initial=initial, leave=False, desc=f"epoch {self.progress.epoch + 1}"
        )

    def fit(self) -> dict[str, Any]:
        """Train to the end of the schedule, then store the result; returns result.json's dict."""
        config, progress = self.config, self.progress
        self.model.train()
        while progress.epoch < config.epochs:
            started = time.perf_counter()
            order = epoch_order(
                len(self.train_set), config.seed, progress.epoch, config.batch_size
            )
            pending = order[progress.step_in_epoch :]
            bar = self._progress_bar(len(order), progress.step_in_epoch)
            local = [shard(batch, self.world) for batch in pending]
            lr = config.lr
            try:
                for batch, (images, labels) in zip(
                    pending, iterate_batches(self.train_set, local, config.num_workers)
                ):
                    if (
                        config.selects_heads
                        and not progress.calibrated
                        and progress.global_step >= config.calib_warmup_steps
                    ):
                        self._calibrate()
                    loss_total, correct = self._train_step(images, labels, len(batch))
                    lr = self.optimizer.param_groups[0]["lr"]
                    progress.global_step += 1
                    progress.step_in_epoch += 1
                    progress.loss_sum += loss_total
                    progress.correct += correct
                    progress.seen += len(batch)
                    if bar is not None:
                        bar.set_postfix(
                            loss=f"{progress.loss_sum / progress.seen:.3f}",
                            acc=f"{100 * progress.correct / progress.seen:.1f}",
                        )
                        bar.update(1)
            except KeyboardInterrupt:
                progress.elapsed += time.perf_counter() - started
                self.save_resume_state()
                self.log(
                    f"interrupted: state saved in {self.output_dir / 'checkpoint.pt'}; "
                    "continue with --resume"
                )
                raise
            finally:
                if bar is not None:
                    bar.close()
            seconds = time.perf_counter() - started
            progress.elapsed += seconds
            self._finish_epoch(lr, seconds)
        return self._store_result()

    def _store_result(self) -> dict[str, Any]:
        config, progress = self.config, self.progress
        result = {
            "method": config.method,
            "task": config.task,
            "model": config.model,
            "best_accuracy": progress.best_accuracy,
            "best_epoch": progress.best_epoch,
            "final_accuracy": None,
            "trainable_parameters": trainable_parameters(self.model),
            "adapter_bytes": None,
            "wall_seconds": round(progress.elapsed, 2),
            "calibration_seconds": round(progress.calibration_seconds, 3),
            "active_heads_per_layer": active_heads_per_layer(self.model),
            "num_heads_per_layer": heads_per_layer(self.model),
            "num_classes": self.num_classes,
            "train_images": len(self.train_set),
            "eval_images": len(self.eval_set),
            "skipped_images": self.skipped_images,
            "epochs": config.epochs,
            "seed": config.seed,
            "world_size": self.world.size,
        }
        final = progress.history[-1]["test_accuracy"] if progress.history else None
        result["final_accuracy"] = final if final != "" else None
        if self.world.is_main:
            run_info = RunInfo(
                model=config.model,
                checkpoint=config.checkpoint,
                img_size=config.img_size,
                normalize=config.normalize,
                task=config.task,
                method=config.method,
                dataset=DatasetInfo(
                    kind=config.data_kind,
                    root=str(config.data_root),
                    task=config.task,
                    split=config.train_split,
                    image_dir=config.image_dir,
                ),
            )
            result["adapter_bytes"] = save_trained(
                self.model, config, self.output_dir / "adapter", run_info
            )
            atomic_write_json(self.output_dir / "result.json", result)
            if self.writer is not None:
                self.writer.close()
        barrier(self.world)
        return result


def run_training(
    config: TrainConfig,
    output_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    log=print,
) -> dict[str, Any]:
    """Train ``config`` into ``output_dir``; returns the dict written to ``result.json``.

    Raises:
        HeartLoRAError: bad data, config or model; a directory holding another run (unless
            ``overwrite`` or ``resume``); a diverged loss (`TrainingDiverged`).
    """
    output_dir = Path(output_dir)
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        prepare_run_directory(output_dir, config, resume, overwrite)
        output_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write_text(
                output_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False)
            )
    trainer = Trainer(config, output_dir, log=log if is_main else _quiet)
    barrier(trainer.world)
    if resume:
        trainer.load_resume_state()
        log(f"resumed at epoch {trainer.progress.epoch + 1}, step {trainer.progress.step_in_epoch}")
    return trainer.fit()


def _quiet(*_args, **_kwargs) -> None:
    """The log function of non-main ranks."""
