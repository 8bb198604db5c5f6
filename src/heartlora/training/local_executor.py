"""Runs on this machine: one after another in this process, or in worker processes.

With ``jobs`` > 1, or with ``devices`` named, `LocalExecutor` starts one worker process per
job and hands each worker one run at a time. It owns every way those workers can end:

* **Ctrl-C or SIGTERM to this process** (a terminal sends SIGINT to the whole foreground
  group): the workers run in their own process group and ignore SIGINT from birth, so only this
  process sees it. It sends each busy worker one SIGTERM — the run finishes its step, saves its
  checkpoint and stops — waits for them (at most `STOP_GRACE_SECONDS`, then SIGKILL), and raises
  `KeyboardInterrupt`: one line, no worker left, every run resumable by the same command.
* **A worker killed or stopped** (htop, the OOM killer): its run is named in one line and the
  other workers are stopped as above.
* **This process killed** (SIGKILL): each worker watches its parent
  (`heartlora.training.workers.watch_parent`), saves its run and exits.

A run's outcome travels back as plain data (a dict, or a one-line message), never as a pickled
exception, so nothing depends on unpickling one in this process.

**Devices.** Each worker sees one device: with ``devices`` ``["0", "1"]`` worker k gets
``CUDA_VISIBLE_DEVICES=devices[k % len(devices)]`` before it touches CUDA, so its run's
``device: auto`` is that GPU. Without ``devices`` and with several visible GPUs, the workers
take one GPU each; more jobs than GPUs is refused unless the devices are named (sharing a GPU
is then the user's explicit choice).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from heartlora.errors import HeartLoRAError, one_line
from heartlora.training.executor import PlannedRun, Report, RunFailed, finish_run
from heartlora.training.run_state import RunInterrupted
from heartlora.training.workers import ORPHAN_EXIT_CODE, parent_gone, watch_parent

STOP_GRACE_SECONDS = 60.0
"""How long a stopped worker may take to finish its step and save before it is killed."""

RunFunction = Callable[[dict[str, Any], Path], tuple[dict[str, Any], str]]
"""What finishes one run in a worker: `finish_run`, or a test's stand-in."""

FAILURE_TRACEBACK = "failure-traceback.txt"
"""Written into a run's folder when its worker met an unexpected exception."""


def visible_gpu_count() -> int:
    """The CUDA devices this process may use (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_devices(
    jobs: int, devices: Sequence[str] | None, gpus: int, visible: str | None = None
) -> list[str | None]:
    """The ``CUDA_VISIBLE_DEVICES`` of each of ``jobs`` workers (None: leave it as it is).

    Named ``devices`` are dealt out in turn (naming fewer than ``jobs`` shares them, as asked);
    without them, ``gpus`` > 1 visible GPUs give each worker its own, and one GPU or none leaves
    the environment alone. Indices count the GPUs this process sees: with ``visible`` (this
    process's own ``CUDA_VISIBLE_DEVICES``, e.g. ``"2,3"``) index 0 is its first entry.

    Raises:
        HeartLoRAError: more jobs than visible GPUs and no devices named, or a bad device name.
    """
    seen = [entry.strip() for entry in visible.split(",")] if visible else None
    if devices:
        for device in devices:
            if not device.isdigit() or (seen is not None and int(device) >= len(seen)):
                raise HeartLoRAError(
                    f"--devices {','.join(devices)}: expected indices of the GPUs this process "
                    f"sees, such as 0,1 (got {device!r}"
                    + (f"; CUDA_VISIBLE_DEVICES={visible}" if seen is not None else "")
                    + ")"
                )
        chosen = [devices[index % len(devices)] for index in range(jobs)]
    elif gpus <= 1:
        return [None] * jobs
    elif jobs > gpus:
        raise HeartLoRAError(
            f"--jobs {jobs} is more than the {gpus} GPUs here: runs would share a GPU. Use "
            f"--jobs {gpus}, or name the devices to share with --devices (e.g. "
            f"--devices {','.join(str(i % gpus) for i in range(jobs))})"
        )
    else:
        chosen = [str(index) for index in range(jobs)]
    return [seen[int(index)] if seen is not None else index for index in chosen]


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    connection: Connection
    index: int | None = None  # the run it is busy with


class LocalExecutor:
    """Runs on this machine (see the module docstring).

    Args:
        jobs: runs trained at once.
        devices: GPU indices the workers use (``CUDA_VISIBLE_DEVICES`` of each); default: one
            visible GPU per worker when there are several, else the environment as it is.
        log: where progress lines go.
        function: what finishes one run, ``function(settings, run_dir) -> (result, status)``;
            a module-level function, so that a worker can import it (default `finish_run`).
    """

    def __init__(
        self,
        jobs: int = 1,
        devices: Sequence[str] | None = None,
        log: Callable[[str], None] = print,
        function: RunFunction = finish_run,
    ) -> None:
        if jobs < 1:
            raise HeartLoRAError(f"jobs must be at least 1, got {jobs}")
        worker_devices(jobs, devices, gpus=0)  # a bad name is refused before any work
        self.jobs = jobs
        self.devices = list(devices) if devices else None
        self.log = log
        self.function = function

    def run(self, runs: Sequence[PlannedRun], report: Report) -> bool:
        """Finish every run here (`heartlora.training.executor.Executor.run`)."""
        if not runs:
            return True
        if self.jobs == 1 and self.devices is None:
            for index, run in enumerate(runs):
                report(index, *self.function(run.settings, run.run_dir))
            return True
        gpus = 0 if self.devices else visible_gpu_count()
        placement = worker_devices(
            min(self.jobs, len(runs)), self.devices, gpus, os.environ.get("CUDA_VISIBLE_DEVICES")
        )
        if any(device is not None for device in placement):
            self.log(f"workers on GPUs {', '.join(str(d) for d in placement)}")
        with _terminate_as_interrupt():
            _WorkerPool(placement, self.function).run(runs, report)
        return True


class _WorkerPool:
    def __init__(self, placement: list[str | None], function: RunFunction) -> None:
        self.placement = placement
        self.function = function
        self.workers: list[_Worker] = []

    def run(self, runs: Sequence[PlannedRun], report: Report) -> None:
        pending = list(range(len(runs)))
        try:
            self._start()
            for worker in self.workers:
                self._assign(worker, runs, pending)
            while any(worker.index is not None for worker in self.workers):
                for worker, message in self._next_messages():
                    index = worker.index
                    worker.index = None
                    if message is None:
                        raise RunFailed(_died(runs[index], worker.process.exitcode))
                    outcome, payload = message
                    if outcome == "done":
                        report(index, *payload)
                    elif outcome == "interrupted":
                        raise RunFailed(
                            f"run {runs[index].label} was stopped by {payload} from outside "
                            f"(its checkpoint in {runs[index].run_dir} is saved: run the same "
                            "command to resume it)"
                        )
                    else:
                        raise RunFailed(f"run {runs[index].label} failed: {payload}")
                    self._assign(worker, runs, pending)
        finally:
            self._stop()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        # SIG_IGN is inherited through exec: a worker never sees a terminal's Ctrl-C, not even
        # while it imports torch, before it leaves the terminal's process group
        with _ignoring(signal.SIGINT):
            for device in self.placement:
                ours, theirs = context.Pipe()
                process = context.Process(
                    target=_worker_main,
                    args=(theirs, device, os.getpid(), self.function),
                    name="heartlora-worker",
                    daemon=False,
                )
                process.start()
                theirs.close()
                self.workers.append(_Worker(process, ours))

    def _assign(self, worker: _Worker, runs: Sequence[PlannedRun], pending: list[int]) -> None:
        if not pending:
            return
        worker.index = pending.pop(0)
        run = runs[worker.index]
        worker.connection.send((run.settings, str(run.run_dir)))

    def _next_messages(self) -> Iterator[tuple[_Worker, tuple[str, Any] | None]]:
        """Wait for a busy worker to answer or die; yields (worker, its message or None)."""
        busy = [worker for worker in self.workers if worker.index is not None]
        ready = wait([w.connection for w in busy] + [w.process.sentinel for w in busy])
        for worker in busy:
            message = None
            if worker.connection in ready:
                try:
                    message = worker.connection.recv()
                except (EOFError, OSError):  # it died without a word
                    pass
            elif worker.process.sentinel not in ready:
                continue
            if message is None:
                worker.process.join(timeout=5)
            yield worker, message

    def _stop(self) -> None:
        """Ask every live worker to stop (busy ones save first), then reap them all; a second
        Ctrl-C or SIGTERM meanwhile is ignored, so that no worker is left behind."""
        with _ignoring(signal.SIGINT), _ignoring(signal.SIGTERM):
            self._stop_workers()

    def _stop_workers(self) -> None:
        for worker in self.workers:
            if worker.process.is_alive() and worker.index is not None:
                _signal(worker.process, signal.SIGTERM)
            _close(worker)  # a worker that is or becomes idle reads the end of its pipe, exits
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for worker in self.workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                _signal(worker.process, signal.SIGKILL)
                worker.process.join(timeout=10)
            _close(worker)


def _close(worker: _Worker) -> None:
    try:
        worker.connection.close()
    except OSError:
        pass


def _signal(process: multiprocessing.process.BaseProcess, signum: int) -> None:
    try:
        os.kill(process.pid, signum)
    except (ProcessLookupError, TypeError):
        pass


def _died(run: PlannedRun, exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        how = f"signal {signal.Signals(-exitcode).name}"
    else:
        how = f"exit code {exitcode}"
    return (
        f"run {run.label}: its worker process ended without a result ({how}; killed, or out "
        f"of memory?). Its last checkpoint in {run.run_dir} is kept: run the same command to "
        "resume it"
    )


@contextmanager
def _ignoring(signum: int) -> Iterator[None]:
    previous = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signum, previous)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While active, SIGTERM to this process stops the workers as Ctrl-C does."""

    def handle(signum: int, _frame: Any) -> None:
        raise RunInterrupted(signum)

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _worker_main(
    connection: Connection, device: str | None, parent: int, function: RunFunction
) -> None:
    """A worker: finish the runs sent on ``connection`` one at a time until it closes."""
    os.setpgrp()  # out of the terminal's foreground group: Ctrl-C reaches the parent only
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device  # before anything touches CUDA
    watch_parent(parent)
    while True:
        try:
            settings, run_dir = connection.recv()
        except (EOFError, OSError):
            return
        outcome = _finish(function, settings, Path(run_dir))
        try:
            connection.send(outcome)
        except OSError:  # the parent stopped listening: it is stopping every worker
            return


def _finish(function: RunFunction, settings: dict[str, Any], run_dir: Path) -> tuple[str, Any]:
    """One run's outcome as plain data: ("done", (result, status)), ("interrupted", signal
    name) or ("failed", one line)."""
    try:
        return "done", function(settings, run_dir)
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        if parent_gone():
            os._exit(ORPHAN_EXIT_CODE)
        return "interrupted", signal.Signals(signum).name
    except (HeartLoRAError, ValueError, OSError, MemoryError) as error:
        return "failed", one_line(error)
    except Exception as error:  # a bug: one line here, the traceback in the run's folder
        saved = run_dir / FAILURE_TRACEBACK
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            saved.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
        except OSError:
            saved = None
        where = f"traceback in {saved}" if saved else "traceback not saved"
        return "failed", f"internal error: {type(error).__name__}: {one_line(error)} ({where})"
