"""One training run: data → model (method) → [warm-up → calibration → head deactivation] →
train → evaluate → store, with atomic checkpoints that make a killed run resumable.

Outputs in the run directory: ``config.yaml``, ``metrics.csv`` (one row per epoch),
``result.json``, ``checkpoint.pt`` (a batch boundary: the start, the end of the last epoch, or
where Ctrl-C stopped), ``adapter/`` (what the method trained) and ``tensorboard/``.
"""

from __future__ import annotations

import csv
import io
import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from heartlora.adapter_io import RUN_RESULT_NAME, DatasetInfo, RunInfo
from heartlora.calibration import (
    CALIB_WARMUP_DEFAULT,
    CALIB_WARMUP_SHARE,
    Calibration,
    calib_warmup_for,
)
from heartlora.data.factory import build_dataset
from heartlora.errors import HeartLoRAError
from heartlora.inject import (
    active_heads_per_layer,
    heads_per_layer,
    trainable_parameters,
)
from heartlora.io.atomic import atomic_write_json, atomic_write_text
from heartlora.models.backbone import create_fine_tuning_model
from heartlora.training.config import TrainConfig
from heartlora.training.data_fingerprint import check_same_data, split_fingerprint
from heartlora.training.devices import resolve_device
from heartlora.training.distributed import (
    World,
    all_gather_objects,
    all_reduce_gradients,
    all_reduce_sum,
    all_reduce_tensor,
    barrier,
    init_world,
    leave_world,
    shard,
)
from heartlora.training.feed import BatchFeed, CachedImages, epoch_order, iterate_batches
from heartlora.training.methods import (
    get_method,
    parameters_to_train,
    prepare_model,
    save_trained,
)
from heartlora.training.precision import forward_precision, matmul_precision, slow_precision_note
from heartlora.training.run_directory import (
    check_run_directory,
    clear_run_directory,
    lock_run_directory,
    run_entries,
    undo_failed_start,
    write_run_config,
)
from heartlora.training.run_state import (
    CHECKPOINT_NAME,
    RunInterrupted,
    RunProgress,
    StopRequest,
    deferred_stop,
    read_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
    write_checkpoint,
)
from heartlora.training.schedule import learning_rate

METRIC_FIELDS = (
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "test_accuracy",
    "seconds",
    "step_seconds",
    "data_seconds",
)
"""Columns of metrics.csv: ``seconds`` is the epoch's wall time (evaluation excluded),
``step_seconds`` the time in optimizer steps, ``data_seconds`` the time spent waiting for
batches: the data path's share of an epoch, on every device. On a GPU the host queues work
ahead, so ``step_seconds`` includes waiting for the previous step to finish."""


class TrainingDiverged(HeartLoRAError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class StepNumbers:
    """What one optimizer step measured, still on the device. The trainer reads a step's
    numbers one step late (`Trainer._settle`), while the next step is already queued, so the
    host never makes the GPU wait inside the training loop.

    Attributes:
        values: (4,) float: the summed loss, the correct predictions and the stop votes, each
            summed over all ranks, then the gradient norm (the same on every rank).
        epoch, step_in_epoch: the step's 0-based position, for the divergence message.
        lr: the step's learning rate.
        images: the images of the global batch.
    """

    values: torch.Tensor
    epoch: int
    step_in_epoch: int
    lr: float
    images: int


def create_run_model(config: TrainConfig, num_classes: int, log=print) -> nn.Module:
    """The base model of a run of ``config`` with ``num_classes`` outputs
    (`heartlora.models.backbone.create_fine_tuning_model`, which holds the policy)."""
    return create_fine_tuning_model(
        config.model,
        num_classes,
        checkpoint=config.checkpoint,
        pretrained=config.pretrained,
        img_size=config.img_size,
        drop_path_rate=config.drop_path,
        model_kwargs=config.model_kwargs,
        log=log,
    )


class Trainer:
    """Runs one configured training job; see `run_training`."""

    def __init__(self, config: TrainConfig, output_dir: Path, log=print) -> None:
        self.config = config
        self.output_dir = output_dir
        self.log = log
        self.device = resolve_device(config.device)
        self.world: World = init_world(self.device)
        note = slow_precision_note(config.dtype, self.device.type)
        if note is not None:
            log(note)
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        self.train_set, self.eval_set = self._datasets()
        self.num_classes = self.train_set.num_classes
        self.steps_per_epoch = math.ceil(len(self.train_set) / config.batch_size)
        # an epoch's last batch is smaller: a compiled model takes the batch size as dynamic
        self._batch_sizes_vary = len(self.train_set) % config.batch_size != 0
        self.total_steps = self.steps_per_epoch * config.epochs
        model = create_run_model(config, self.num_classes, log=log)
        settings = config.method_settings(self.total_steps)
        self.model = prepare_model(model, config.method, settings).to(self.device)
        # the method's own part in the loop (AdaLoRA's rank budget), for the few that have one
        step_hook = get_method(config.method).step_hook
        self.step_hook = step_hook(self.model) if step_hook is not None else None
        # the paper's phase (warm-up → score → select), for the methods that select heads
        self.calibration = self._calibration() if config.selects_heads else None
        fitted = self.calibration.calib_warmup_steps if self.calibration is not None else None
        if (
            fitted is not None
            and config.calib_warmup_steps is None
            and fitted < CALIB_WARMUP_DEFAULT
        ):
            log(
                f"note: heads are scored after {fitted} of the run's "
                f"{self.total_steps} steps (calib_warmup_steps null: {CALIB_WARMUP_DEFAULT}, "
                f"at most 1/{CALIB_WARMUP_SHARE} of the run)"
            )
        self.optimizer = self._optimizer()
        self.train_feed = BatchFeed(
            self.train_set,
            config.num_workers,
            self.device,
            draws_randomly=config.augment,
        )
        # evaluation draws nothing: its loader workers live from one evaluation to the next
        self.eval_feed = BatchFeed(self.eval_set, config.num_workers, self.device)
        self.step_seconds = 0.0
        self.forward = self.model  # compiled by _compile_if_asked
        if not config.selects_heads:
            self._compile_if_asked()
        self.progress = RunProgress()
        self.writer = None  # opened by fit: building a trainer writes nothing
        # the last step's numbers, not yet read on the host (see `StepNumbers`)
        self._pending: StepNumbers | None = None
        # (progress, RNG state, the unread step then) at the last batch boundary; None while
        # weights are changing
        self._boundary: tuple[RunProgress, dict[str, Any], StepNumbers | None] | None = None
        self._saved_epoch = 0  # the epoch whose end checkpoint.pt holds

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
            num_classes=config.num_classes,
            **common,
        )
        labels = set(train.labels)
        if len(labels) < 2:
            where = getattr(train, "split_file", None) or f"{config.data_root} ({config.task})"
            raise HeartLoRAError(
                f"{where}: every training image has label {labels.pop()} (expected at least two "
                "classes to learn)"
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
        self.data_fingerprint = {
            role: split_fingerprint(
                dataset.samples,
                dataset.num_classes,
                config.data_root,
                getattr(dataset, "split_file", None)
                or f"{config.data_root} ({config.task}, split {split})",
            )
            for role, dataset, split in (
                ("train", train, config.train_split),
                ("eval", evaluation, config.eval_split),
            )
        }
        if config.cache_images:
            if config.augment:
                raise HeartLoRAError("cache_images cannot be combined with augment")
            device = torch.device(config.cache_device)
            train, evaluation = CachedImages(train, device), CachedImages(evaluation, device)
        return train, evaluation

    def _calibration(self) -> Calibration:
        """The run's `Calibration`, once the warm-up rule (`calib_warmup_for`) accepts the
        run's warm-up for its scorer; its error says where the run's length comes from (a batch
        larger than the data makes a one-step epoch)."""
        config = self.config
        length = (
            f"the run's {self.total_steps} steps are {config.epochs} epoch(s) × "
            f"{self.steps_per_epoch} batch(es) of batch_size {config.batch_size} from "
            f"{len(self.train_set)} training images"
        )
        calib_warmup_for(config.calib_warmup_steps, self.total_steps, config.scorer, length)
        return Calibration(
            self.model,
            self.total_steps,
            fit_warmup=config.calib_warmup_steps is None,
            seed=config.seed,
        )

    def _optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            parameters_to_train(self.model),
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
            fused=self.device.type == "cuda",  # one kernel for every parameter's update
        )

    def _compile_if_asked(self) -> None:
        """Train through ``torch.compile`` when the config asks (after head deactivation for
        the methods that deactivate heads: their B blocks change shape once)."""
        if self.config.compile:
            self.forward = torch.compile(self.model, fullgraph=self.config.uses_heartlora)

    def _tensorboard(self):
        if not self.world.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.log("tensorboard is not installed: no TensorBoard logs")
            return None
        return SummaryWriter(str(self.output_dir / "tensorboard"))

    def _dtype(self) -> str:
        """The run's precision (`heartlora.training.precision`): a CPU run computes in fp32."""
        return self.config.dtype if self.device.type == "cuda" else "fp32"

    def _precision(self):
        """The context of a forward pass (`forward_precision`)."""
        return forward_precision(self._dtype(), self.device.type)

    # ----------------------------------------------------------- checkpoints
    def save_resume_state(
        self, boundary: tuple[RunProgress, dict[str, Any]] | None = None, all_ranks: bool = True
    ) -> None:
        """Write ``checkpoint.pt`` atomically (main rank only): the trainable weights, optimizer
        state, head masks and scores as they are now, with the progress and RNG state of
        ``boundary`` (the last batch boundary, when an interrupted step is discarded) or of now.

        Under torchrun every rank calls it, and with ``all_ranks`` (every rank saves at this
        same boundary) each rank's RNG state is gathered into ``rng_ranks``, so that a resume
        restores each rank's own random stream; otherwise every rank resumes with rank 0's.
        """
        if boundary is None:
            self._settle()  # a checkpoint of now holds every step taken
        progress, rng = boundary if boundary is not None else (self.progress, rng_state())
        rng_ranks = all_gather_objects(rng, self.world) if all_ranks and self.world.active else None
        if not self.world.is_main:
            return
        state = {
            "progress": progress.to_state(),
            "trainable": {
                n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad
            },
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "rng_ranks": rng_ranks,
            "data": self.data_fingerprint,
            "method_state": self.step_hook.state_dict() if self.step_hook is not None else None,
            **self._calibration_state(),
        }
        write_checkpoint(self.output_dir / CHECKPOINT_NAME, state)
        self._saved_epoch = progress.epoch

    def load_resume_state(self) -> None:
        """Restore the state saved by `save_resume_state` (read with ``weights_only=True``)."""
        path = self.output_dir / CHECKPOINT_NAME
        state = read_checkpoint(path)
        if "data" in state:
            check_same_data(state["data"], self.data_fingerprint, str(path))
        else:
            self.log(f"note: {path} predates data fingerprints: the data is not compared")
        progress = RunProgress.from_state(state["progress"], str(path))
        if self.calibration is not None:
            self.calibration.load_state_dict(state, str(path))
        elif state["head_masks"] is not None:
            raise HeartLoRAError(f"{path}: checkpoint does not fit this run's model (head_masks)")
        if state["head_masks"] is not None:
            self.optimizer = self._optimizer()
            self._compile_if_asked()
        params = dict(self.model.named_parameters())
        for name, value in state["trainable"].items():
            if (
                name not in params
                or not isinstance(value, torch.Tensor)
                or params[name].shape != value.shape
            ):
                raise HeartLoRAError(f"{path}: checkpoint does not fit this run's model ({name})")
            with torch.no_grad():
                params[name].copy_(value)
        if self.step_hook is not None:
            self.step_hook.load_state_dict(state.get("method_state"), str(path))
        rng_ranks = state.get("rng_ranks")
        if rng_ranks is not None and not (
            isinstance(rng_ranks, list) and all(isinstance(r, dict) for r in rng_ranks)
        ):
            raise HeartLoRAError(f"{path}: damaged checkpoint (rng_ranks)")
        own = rng_ranks is not None and len(rng_ranks) == self.world.size
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            set_rng_state(rng_ranks[self.world.rank] if own else state["rng"])
        except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as error:
            reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else ""
            raise HeartLoRAError(
                f"{path}: damaged checkpoint ({type(error).__name__}: {reason})"
            ) from None
        self.progress = progress
        self._saved_epoch = progress.epoch
        self._write_metrics()

    # ------------------------------------------------------------- training
    def _calibration_state(self) -> dict[str, Any]:
        """The checkpoint's ``head_masks``, ``scores`` and ``sensitivity`` (`Calibration`)."""
        if self.calibration is not None:
            return self.calibration.state_dict()
        scores = getattr(self.model, "heartlora_scores", None)
        return {"head_masks": None, "scores": scores, "sensitivity": None}

    def _calibrate(self) -> None:
        """Score heads on training batches and deactivate the least responsive (Heart-LoRA),
        then train what is left through a new optimizer (and compilation)."""
        config = self.config
        started = time.perf_counter()
        order = epoch_order(len(self.train_set), config.seed + 7919, 0, config.batch_size)
        # at most one epoch of batches: a small training set scores on what it has
        order = order[: config.calib_batches]
        batches = iterate_batches(self.train_set, order, 0, self.device)
        result = self.calibration.calibrate(batches, F.cross_entropy)
        source = (
            f"{result.accumulated_steps} warm-up steps"
            if result.accumulated_steps
            else f"{len(order)} batches"
        )
        self.optimizer = self._optimizer()
        self._compile_if_asked()
        self.progress.calibrated = True
        self.progress.calibration_seconds = time.perf_counter() - started
        active = [int(row.sum()) for row in result.keep]
        self.log(
            f"calibrated with scorer {config.scorer} on {source} in "
            f"{self.progress.calibration_seconds:.1f}s; active heads per layer {active}"
        )

    def _step_lr(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) of the schedule."""
        config = self.config
        return learning_rate(
            step,
            self.total_steps,
            config.warmup_epochs * self.steps_per_epoch,
            config.lr,
            config.warmup_lr,
            config.min_lr,
        )

    def _train_step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        global_count: int,
        stop: StopRequest | None = None,
    ) -> bool:
        """One optimizer step, queued on the device without a host read. Between its backward
        and its update it settles the previous step (`_settle`): the host waits for that step
        while this one is already queued. Returns whether a rank was asked to stop during the
        previous step (every rank then stops after this same step). The step's own numbers
        stay pending until the next step, the end of the epoch or an interruption."""
        config, progress = self.config, self.progress
        lr = self._step_lr(progress.global_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images, labels = images.to(self.device), labels.to(self.device)
        if self.forward is not self.model and self._batch_sizes_vary:
            # one compilation for every batch size: left to itself, dynamo compiles the full
            # batch, then compiles again, batch size dynamic, at the first smaller batch
            torch._dynamo.maybe_mark_dynamic(images, 0)
        with self._precision():
            logits = self.forward(images)
            loss_sum = F.cross_entropy(
                logits.float(), labels, reduction="sum", label_smoothing=config.label_smoothing
            )
        loss = loss_sum / global_count
        penalty = self.step_hook.penalty() if self.step_hook is not None else None
        if penalty is not None:  # the gradients are summed over ranks: each adds its share
            loss = loss + penalty / self.world.size
        loss.backward()
        params = parameters_to_train(self.model)
        all_reduce_gradients(params, self.world)
        grads = [p.grad for p in params if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else loss_sum.new_zeros(())
        # the stop request rides along (filled in on the device: no copy from the host), so
        # that every rank stops after the same step
        votes = loss_sum.new_full((), float(stop is not None and stop.requested))
        summed = all_reduce_tensor(
            torch.stack(
                [loss_sum.detach().float(), (logits.argmax(1) == labels).sum().float(), votes]
            ),
            self.world,
        )
        numbers = StepNumbers(
            torch.cat([summed, grad_norm.detach().float().view(1)]),
            progress.epoch,
            progress.step_in_epoch,
            lr,
            global_count,
        )
        stopping = self._settle()  # the previous step diverged or asked to stop?
        self._boundary = None  # from here until the step is counted, weights are changing
        if self.calibration is not None:
            self.calibration.after_backward()
        self.optimizer.step()
        if self.step_hook is not None:
            self.step_hook.after_step(progress.global_step)
        self.optimizer.zero_grad(set_to_none=True)
        self._pending = numbers
        return stopping

    def _settle(self) -> bool:
        """Read the pending step's numbers (the loop's one host read per step), add them to
        the progress and check them; returns whether a rank asked to stop during that step.

        Raises:
            TrainingDiverged: the step's loss or gradients were not finite. Nothing was saved
                since that step: every checkpoint is written after its steps are settled.
        """
        pending, self._pending = self._pending, None
        return pending is not None and self._count_step(self.progress, pending)

    def _count_step(self, progress: RunProgress, numbers: StepNumbers) -> bool:
        """Add a step's loss, correct predictions and images to ``progress`` once its numbers
        are finite; returns whether a rank voted to stop (see `_settle`)."""
        loss, correct, votes, grad_norm = numbers.values.tolist()
        for what, value in (("loss", loss), ("gradients", grad_norm)):
            if not math.isfinite(value):
                raise self._diverged(
                    f"{what} became {value}", numbers.lr, numbers.epoch, numbers.step_in_epoch
                )
        progress.loss_sum += loss
        progress.correct += correct
        progress.seen += numbers.images
        return votes > 0

    def _diverged(
        self, what: str, lr: float, epoch: int | None = None, step_in_epoch: int | None = None
    ) -> TrainingDiverged:
        """The error that stops a run whose loss or weights are no longer finite, at the
        0-based position given (default: the step about to run)."""
        progress = self.progress
        epoch = progress.epoch if epoch is None else epoch
        step_in_epoch = progress.step_in_epoch if step_in_epoch is None else step_in_epoch
        kept = f"; {CHECKPOINT_NAME} keeps epoch {self._saved_epoch}" if self._saved_epoch else ""
        if get_method(self.config.method).reads("scale"):
            settings, advice = f"lr {lr:.3g}, scale {self.config.scale:g}", "lr or scale"
        else:  # a method without a scale (peft-vera, peft-ia3, bitfit, ...)
            settings, advice = f"lr {lr:.3g}", "lr"
        return TrainingDiverged(
            f"{what} at epoch {epoch + 1} step {step_in_epoch + 1} ({settings}): try a lower "
            f"{advice}{kept}"
        )

    def _check_finite_weights(self) -> None:
        """Raise `TrainingDiverged` when a trainable weight is NaN or infinite (checked once,
        before heads are scored: scores of a diverged warm-up would be meaningless)."""
        finite = [torch.isfinite(p).all() for p in parameters_to_train(self.model)]
        if finite and not bool(torch.stack(finite).all()):  # one host read
            lr = self._step_lr(max(self.progress.global_step - 1, 0))
            raise self._diverged("weights became NaN or infinite during the warm-up", lr)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Top-1 accuracy (%) on the evaluation split, over all ranks."""
        was_training = self.model.training
        self.model.eval()
        indices = shard(list(range(len(self.eval_set))), self.world)
        size = self.config.batch_size * 2
        correct = torch.zeros((), device=self.device)  # read once, after the last batch
        # a cache on the GPU stays there: no round trip through the host
        batches = [indices[i : i + size] for i in range(0, len(indices), size)]
        for images, labels in self.eval_feed(batches, seed=len(batches)):
            with self._precision():
                logits = self.model(images)
            correct += (logits.argmax(1) == labels).sum()
        self.model.train(was_training)
        total_correct, total = all_reduce_sum(
            [correct.item(), float(len(indices))], self.world, self.device
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
            "step_seconds": round(self.step_seconds, 3),
            "data_seconds": round(self.train_feed.reset_wait(), 3),
        }
        self.step_seconds = 0.0
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
        """Train to the end of the schedule, then store the result; returns result.json's dict.

        Resuming is exact from any interruption: the checkpoint always holds a batch boundary.
        A fresh run saves one before its first step; each epoch saves one at its end. The first
        Ctrl-C or SIGTERM lets the running step finish, saves and stops (`RunInterrupted`); a
        `KeyboardInterrupt` inside a step (a second Ctrl-C) discards the step and saves the
        boundary before it, or keeps the last checkpoint when the weights were being updated.
        """
        if self.writer is None:
            self.writer = self._tensorboard()
        self.model.train()
        if self.progress.global_step == 0 and self.progress.epoch == 0:
            self.save_resume_state()
        with deferred_stop(self.log) as stop, matmul_precision(self._dtype(), self.device.type):
            try:
                while self.progress.epoch < self.config.epochs:
                    self._mark_boundary()
                    started = time.perf_counter()
                    self._epoch_started = started
                    self._train_epoch(stop)
                    self._mark_boundary()
                    seconds = time.perf_counter() - started
                    self.progress.elapsed += seconds
                    self._finish_epoch(self._step_lr(self.progress.global_step - 1), seconds)
            except KeyboardInterrupt as error:
                self._save_interrupted(all_ranks=getattr(error, "agreed", False))
                raise
        return self._store_result()

    def _mark_boundary(self) -> None:
        """Remember the progress, RNG state and unread step here: weights and optimizer are
        at rest."""
        self._boundary = (self.progress.copy(), rng_state(), self._pending)

    def _train_epoch(self, stop: StopRequest) -> None:
        """The remaining steps of the current epoch (all of them unless resumed mid-epoch)."""
        config, progress = self.config, self.progress
        order = epoch_order(len(self.train_set), config.seed, progress.epoch, config.batch_size)
        pending = order[progress.step_in_epoch :]
        bar = self._progress_bar(len(order), progress.step_in_epoch)
        local = [shard(batch, self.world) for batch in pending]
        batches = self.train_feed(local, seed=config.seed * 100_003 + progress.epoch)
        try:
            for batch in pending:
                if self.calibration is not None and self.calibration.due(progress.global_step):
                    if self._settle():  # the warm-up's last step, before heads are scored
                        raise RunInterrupted(stop.signum or signal.SIGINT)
                    self._check_finite_weights()
                    self._boundary = None
                    self._calibrate()
                    self._mark_boundary()
                # Otherwise the boundary marked after the previous step (or by `fit`, before
                # the epoch) holds: nothing has drawn from the RNG since (augmentation draws
                # from each image's own seed), and one RNG snapshot per step is enough.
                if stop.requested and not self.world.active:  # e.g. pressed while evaluating
                    raise RunInterrupted(stop.signum)
                try:
                    images, labels = next(batches)
                except RuntimeError:
                    if stop.requested:  # Ctrl-C reached this rank's loader workers too
                        raise RunInterrupted(stop.signum, agreed=False) from None
                    raise
                step_started = time.perf_counter()
                stopping = self._train_step(images, labels, len(batch), stop)
                self.step_seconds += time.perf_counter() - step_started
                progress.global_step += 1
                progress.step_in_epoch += 1
                self._mark_boundary()
                if bar is not None:
                    if progress.seen:  # the numbers settled so far (one step behind)
                        bar.set_postfix(
                            loss=f"{progress.loss_sum / progress.seen:.3f}",
                            acc=f"{100 * progress.correct / progress.seen:.1f}",
                        )
                    bar.update(1)
                # asked on some rank: every rank stops after this same step
                if stopping or (stop.requested and not self.world.active):
                    raise RunInterrupted(stop.signum or signal.SIGINT)
            if self._settle():  # the epoch's last step
                raise RunInterrupted(stop.signum or signal.SIGINT)
        finally:
            if bar is not None:
                bar.close()

    def _save_interrupted(self, all_ranks: bool) -> None:
        """Save the last batch boundary after an interruption (see `fit`); ``all_ranks`` when
        every rank stopped at this boundary (see `save_resume_state`)."""
        checkpoint = self.output_dir / CHECKPOINT_NAME
        if self._boundary is None:
            self.log(
                f"interrupted while the weights were being updated: {checkpoint} keeps the state "
                f"after epoch {self._saved_epoch}; continue with --resume"
            )
            return
        progress, rng, pending = self._boundary
        progress = progress.copy()
        if pending is not None:
            try:
                self._count_step(progress, pending)
            except TrainingDiverged as error:
                self.log(f"interrupted after a step that diverged: {error}")
                return
        if progress.step_in_epoch:  # the finished steps of this epoch took time too
            progress.elapsed += time.perf_counter() - getattr(self, "_epoch_started", 0.0)
        self.save_resume_state((progress, rng), all_ranks)
        self.log(
            f"interrupted: state saved in {checkpoint} at epoch {progress.epoch + 1}, step "
            f"{progress.step_in_epoch}; continue with --resume"
        )

    def _store_result(self) -> dict[str, Any]:
        config, progress = self.config, self.progress
        result = {
            "method": config.method,
            "task": config.task,
            "model": config.model,
            "best_accuracy": progress.best_accuracy,
            "best_epoch": progress.best_epoch,
            "final_accuracy": None,
            "evaluations": sum(1 for row in progress.history if row["test_accuracy"] != ""),
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
            "data": self.data_fingerprint,
            "epochs": config.epochs,
            "seed": config.seed,
            "weights": config.base_weights(),
            "world_size": self.world.size,
        }
        final = progress.history[-1]["test_accuracy"] if progress.history else None
        result["final_accuracy"] = final if final != "" else None
        if self.world.is_main:
            run_info = RunInfo(
                model=config.model,
                checkpoint=config.checkpoint,
                weights=config.base_weights(),
                model_kwargs=dict(config.model_kwargs),
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
                self.model, config.method, self.output_dir / "adapter", run_info
            )
            atomic_write_json(self.output_dir / RUN_RESULT_NAME, result)
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

    Nothing in ``output_dir`` changes until the folder, the data and the model have passed
    their checks (`heartlora.training.run_directory`); ``overwrite`` removes the previous run
    only then.

    Raises:
        HeartLoRAError: bad data, config or model; a directory holding another run (unless
            ``overwrite`` or ``resume``) or used by a running one; a diverged loss
            (`TrainingDiverged`).
        KeyboardInterrupt: Ctrl-C or SIGTERM (`RunInterrupted`), after saving the checkpoint.
    """
    if not str(output_dir).strip():
        raise HeartLoRAError(f"output_dir {str(output_dir)!r}: expected a folder path")
    output_dir = Path(output_dir)
    is_main = World.from_launcher().is_main
    if is_main:
        check_run_directory(output_dir, config, resume, overwrite)
    trainer = Trainer(config, output_dir, log=log if is_main else _quiet)
    folder_existed = output_dir.exists()
    kept: set[str] | None = None  # set once this call owns the folder and starts writing
    try:
        with lock_run_directory(output_dir) if is_main else nullcontext():
            if is_main:
                check_run_directory(output_dir, config, resume, overwrite)  # now under the lock
                if not resume:
                    kept = set() if overwrite else run_entries(output_dir)
                    if overwrite:
                        clear_run_directory(output_dir)
                    write_run_config(output_dir, config)
            barrier(trainer.world)
            if resume:
                trainer.load_resume_state()
                log(
                    f"resumed at epoch {trainer.progress.epoch + 1}, step "
                    f"{trainer.progress.step_in_epoch}"
                )
            result = trainer.fit()
    except Exception:
        # A fresh run that failed before its first step leaves the folder as it was, so that
        # the corrected command needs no --overwrite; a later failure keeps its checkpoint.
        if kept is not None and trainer.progress.global_step == 0:
            undo_failed_start(output_dir, kept, folder_existed)
        raise
    leave_world(trainer.world)
    return result


def _quiet(*_args, **_kwargs) -> None:
    """The log function of non-main ranks."""
