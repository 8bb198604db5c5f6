"""What a resumable run must restore, and how it is stored and stopped.

* `RunProgress`: the counters that change while training;
* `rng_state` / `set_rng_state`: every random generator's state (torch, CUDA, Python, NumPy);
* `write_checkpoint` / `read_checkpoint`: ``checkpoint.pt``, a ``torch.save`` dict of tensors
  and plain values only, marked with `CHECKPOINT_FORMAT`, read back with
  ``torch.load(weights_only=True)`` so that resuming never unpickles code;
* `deferred_stop`: Ctrl-C, SIGTERM and SIGUSR2 finish the running step before the run stops, so the
  checkpoint written then is a batch boundary.
"""

from __future__ import annotations

import io
import pickle
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heartlora.errors import HeartLoRAError
from heartlora.io.atomic import atomic_write_bytes
from heartlora.io.field_types import record_from_mapping

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "heartlora-checkpoint/1"
"""The marker of heartlora's own checkpoints (earlier ones had none and needed a full unpickle)."""

_CHECKPOINT_KEYS: dict[str, tuple[type, ...]] = {
    "format": (str,),
    "progress": (dict,),
    "trainable": (dict,),
    "optimizer": (dict,),
    "rng": (dict,),
    "head_masks": (list, type(None)),
    "scores": (torch.Tensor, type(None)),
}


@dataclass
class RunProgress:
    """Everything that changes while training, i.e. what a checkpoint must restore."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    calibrated: bool = False
    calibration_seconds: float = 0.0
    best_accuracy: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0

    def copy(self) -> RunProgress:
        """An independent copy (the history rows are never changed once written)."""
        return replace(self, history=list(self.history))

    def to_state(self) -> dict[str, Any]:
        """A plain dict for the checkpoint."""
        return {item.name: getattr(self, item.name) for item in fields(self)}

    @classmethod
    def from_state(cls, data: dict[str, Any], where: str) -> RunProgress:
        """Parse `to_state`'s dict; ``where`` names the checkpoint in errors."""
        where = f"{where}: damaged checkpoint: progress"
        missing = [item.name for item in fields(cls) if item.name not in data]
        if missing:  # each has a default, and none may be left to it: the run would restart
            raise HeartLoRAError(f"{where}: {missing[0]} is missing")
        return record_from_mapping(cls, data, where)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global generator's state as tensors and plain values (what ``torch.load`` with
    ``weights_only=True`` reads): torch's byte tensor, Python's Mersenne Twister words and
    NumPy's key array as int64 tensors, and each CUDA device's byte tensor."""
    version, words, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {
            "version": version,
            "words": torch.tensor(words, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["words"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["name"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (see `read_checkpoint`) with the format marker, atomically."""
    buffer = io.BytesIO()
    torch.save({**state, "format": CHECKPOINT_FORMAT}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `write_checkpoint`, with ``torch.load(weights_only=True)``.

    Returns:
        The dict: ``progress`` (`RunProgress.to_state`), ``trainable`` (name → tensor),
        ``optimizer`` (its ``state_dict``), ``rng`` (`rng_state`), ``head_masks`` (bool tensors
        or ``None``) and ``scores`` (a tensor or ``None``); where written, ``sensitivity``,
        ``rng_ranks`` (every rank's `rng_state` under torchrun, else ``None``) and ``data``
        (the fingerprints of the run's splits, `heartlora.training.data_fingerprint`).

    Raises:
        HeartLoRAError: the file cannot be read, holds Python objects other than tensors and
            plain values (a pickle from elsewhere is refused, never run), lacks the format
            marker, or misses a key; the message names the file.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "not an allowed global" in str(error):
            raise HeartLoRAError(
                f"{path}: refused: not a heartlora checkpoint (it holds Python objects, which "
                f"resuming never unpickles; expected format {CHECKPOINT_FORMAT})"
            ) from None
        raise HeartLoRAError(
            f"{path}: cannot read checkpoint (damaged, or not a torch file; expected format "
            f"{CHECKPOINT_FORMAT})"
        ) from None
    except Exception as error:  # truncated, not a torch file, unreadable
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise HeartLoRAError(
            f"{path}: cannot read checkpoint ({type(error).__name__}{': ' if reason else ''}"
            f"{reason[:120]}; expected format {CHECKPOINT_FORMAT})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise HeartLoRAError(
            f"{path}: not a heartlora checkpoint (format {found!r}, expected "
            f"{CHECKPOINT_FORMAT}; start the run again without --resume)"
        )
    for key, kinds in _CHECKPOINT_KEYS.items():
        if not isinstance(state.get(key), kinds):
            raise HeartLoRAError(
                f"{path}: damaged checkpoint (key {key!r} is {type(state.get(key)).__name__})"
            )
    return state


class StopRequest:
    """Set by `deferred_stop` when a stop signal arrived; `signum` says which one."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        """True once Ctrl-C or SIGTERM arrived."""
        return self.signum is not None


class RunInterrupted(KeyboardInterrupt):
    """Training stopped at a batch boundary after a stop signal (``signum``); ``agreed`` when
    every rank stops at this same boundary (the stop vote), so they can save together."""

    def __init__(self, signum: int, agreed: bool = True) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.agreed = agreed


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
"""The signals that stop a run after its step, saved: Ctrl-C, SIGTERM (``kill``, SLURM's
cancel, requeue or preemption) and SIGUSR2 (SLURM's notice before a time limit, as submitit
asks for it: `heartlora.training.slurm_executor`)."""


@contextmanager
def deferred_stop(log=print) -> Iterator[StopRequest]:
    """While active, the first Ctrl-C (SIGINT), SIGTERM or SIGUSR2 (`STOP_SIGNALS`) only sets
    the returned `StopRequest`: the trainer finishes the running step, saves and stops there. A
    second one raises `KeyboardInterrupt` at once (the step in flight is then discarded).
    Outside the main thread, where Python cannot handle signals, it changes nothing."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, _frame) -> None:
        if request.requested:
            raise KeyboardInterrupt
        request.signum = signum
        log(
            f"{signal.Signals(signum).name}: stopping after this step "
            "(press Ctrl-C again to stop at once)"
        )

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
