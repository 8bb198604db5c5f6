"""Runs on a SLURM cluster through submitit: one array task per run.

`SlurmExecutor.run` submits every run that is neither finished nor already in SLURM's queue as
one job array (``<output>/slurm/`` holds submitit's files), records each run's job id in its
folder (``slurm.json``, with ``slurm.out`` and ``slurm.err`` linking to its log), and then
waits, printing the queue as it changes, until every run has finished or failed — or returns at
once with ``wait=False``. Running the same command again is always safe: finished runs are
reused (by the suite), queued or running ones are recognised by their recorded job id and
waited for, not submitted twice, and failed or cancelled ones are submitted again.

**Preemption and time limits.** SLURM stops a run by SIGTERM (cancel, ``scontrol requeue``,
preemption) or, ``signal_delay_s`` before its time limit, by SIGUSR2 (submitit asks for it).
Either way the run finishes its step and saves its checkpoint (`deferred_stop`). After SIGUSR2
the run asks submitit's checkpoint protocol to requeue it (`SlurmRun.checkpoint`); after
SIGTERM SLURM requeues or cancels it itself. A requeued run resumes from its checkpoint and
ends with the weights of a run never stopped; ``max_requeues`` bounds the requeues, and
result.json counts them (``slurm_requeues``).

**Several tasks per run.** With ``tasks_per_run`` k > 1 (``gpus_per_run`` k sets it), a run is
k SLURM tasks that join one torch.distributed group from SLURM's environment — the code path
``torchrun`` uses (`heartlora.training.distributed`).
"""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heartlora.adapter_io import RUN_RESULT_NAME
from heartlora.errors import HeartLoRAError, one_line
from heartlora.io.atomic import atomic_write_json, atomic_write_text
from heartlora.io.documents import parse_yaml, read_json
from heartlora.io.field_types import record_from_mapping
from heartlora.training.config import TrainConfig
from heartlora.training.executor import PlannedRun, Report, RunFailed, finish_run, finished_result

JOB_FILE = "slurm.json"
"""In a run's folder: the SLURM job that trains it (``job_id``, log paths)."""

FAILURE_FILE = "slurm-failure.txt"
"""In a run's folder: one line saying why its SLURM job failed."""

QUEUED_STATES = frozenset(
    {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
     "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED"}
)  # fmt: skip
"""squeue states of a job that is still SLURM's to finish (waited for, never submitted again)."""


@dataclass(frozen=True)
class SlurmSettings:
    """Where and how each run is submitted; every field is a flag and a key of the YAML block
    (``--slurm-config``)."""

    partition: str | None = field(
        default=None, metadata={"help": "SLURM partition", "nonempty": True}
    )
    account: str | None = field(default=None, metadata={"help": "SLURM account", "nonempty": True})
    qos: str | None = field(
        default=None, metadata={"help": "SLURM quality of service", "nonempty": True}
    )
    time_minutes: int = field(
        default=60, metadata={"help": "time limit of each run's job, in minutes", "minimum": 1}
    )
    gpus_per_run: int = field(
        default=0,
        metadata={"help": "GPUs of each run; k > 1 starts the run as k tasks, one GPU each, "
                  "in one torch.distributed group", "minimum": 0},
    )  # fmt: skip
    tasks_per_run: int | None = field(
        default=None,
        metadata={"help": "tasks (processes) of each run, data-parallel (default: gpus_per_run, "
                  "at least 1; gloo on CPU)", "minimum": 1},
    )  # fmt: skip
    cpus_per_task: int | None = field(
        default=None, metadata={"help": "CPUs of each task (default: SLURM's)", "minimum": 1}
    )
    mem_gb: int | None = field(
        default=None, metadata={"help": "memory of each run's node share, GB", "minimum": 1}
    )
    array_parallelism: int = field(
        default=256, metadata={"help": "runs of one submission running at once", "minimum": 1}
    )
    max_requeues: int = field(
        default=5,
        metadata={"help": "how often a run may be requeued (preempted or timed out)", "minimum": 0},
    )
    signal_delay_s: int = field(
        default=90,
        metadata={"help": "seconds before the time limit SLURM tells a run to save", "minimum": 1},
    )
    poll_seconds: float = field(
        default=5.0, metadata={"help": "how often the queue is read while waiting", "minimum": 0.1}
    )
    sbatch: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "free sbatch options, KEY=VALUE (constraint=a100, exclusive=true)"},
    )

    @property
    def tasks(self) -> int:
        """The tasks of each run."""
        return self.tasks_per_run or max(1, self.gpus_per_run)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str) -> SlurmSettings:
        """Settings from a YAML block or flags, checked: unknown keys (with a did-you-mean),
        types and ranges.

        Raises:
            HeartLoRAError: naming ``where`` and the key.
        """
        if not isinstance(data, Mapping):
            raise HeartLoRAError(f"{where}: expected a mapping of SLURM settings")
        settings = record_from_mapping(cls, data, where, noun="SLURM setting")
        if settings.gpus_per_run > 1 and settings.tasks_per_run not in (
            None,
            settings.gpus_per_run,
        ):
            raise HeartLoRAError(
                f"{where}: tasks_per_run {settings.tasks_per_run} and gpus_per_run "
                f"{settings.gpus_per_run} disagree (each task of a run uses one GPU)"
            )
        return settings

    @classmethod
    def from_file(cls, path: Path) -> dict[str, Any]:
        """The settings of a YAML file (a mapping, or one under a ``slurm:`` key), unchecked:
        flags may still override them before `from_mapping`."""
        try:
            data = parse_yaml(path.read_bytes(), str(path), "a mapping of SLURM settings")
        except OSError as error:
            raise HeartLoRAError(f"{path}: {error.strerror} (expected a YAML file)") from None
        if isinstance(data, Mapping) and set(data) == {"slurm"}:
            data = data["slurm"]
        if not isinstance(data, Mapping):
            raise HeartLoRAError(f"{path}: expected a mapping of SLURM settings")
        return dict(data)


class SlurmRun:
    """The function each array task runs: `finish_run` under SLURM, with submitit's checkpoint
    protocol (`checkpoint`) for the requeue after SLURM's time-limit notice."""

    def __init__(self, max_requeues: int) -> None:
        self.max_requeues = max_requeues

    def __call__(self, settings: dict[str, Any], run_dir: str) -> dict[str, Any]:
        folder = Path(run_dir)
        requeues = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        main = int(os.environ.get("SLURM_PROCID", "0")) == 0
        if main:
            (folder / FAILURE_FILE).unlink(missing_ok=True)
        try:
            if requeues > self.max_requeues:
                raise HeartLoRAError(
                    f"requeued {requeues} times, more than max_requeues={self.max_requeues}: "
                    "raise it, or the time limit"
                )
            if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
                import submitit

                submitit.helpers.TorchDistributedEnvironment().export(
                    set_cuda_visible_devices=False
                )
            result, _ = finish_run(settings, folder)
        except KeyboardInterrupt as stop:  # saved at a step boundary (deferred_stop)
            if getattr(stop, "signum", None) == signal.SIGUSR2:
                # the time-limit notice: submitit's handler calls `checkpoint`, requeues, exits
                handler = signal.getsignal(signal.SIGUSR2)
                if callable(handler):
                    handler(signal.SIGUSR2, None)
            raise  # SIGTERM: SLURM requeues (requeue, preemption) or ends (cancel) the job
        except Exception as error:
            if main:
                atomic_write_text(folder / FAILURE_FILE, f"{one_line(error)}\n")
            raise
        if main and requeues:
            result = {**result, "slurm_requeues": requeues}
            atomic_write_json(folder / RUN_RESULT_NAME, result)
        return result

    def checkpoint(self, settings: dict[str, Any], run_dir: str) -> Any:
        """submitit's checkpoint protocol: the same call again, which resumes from the run's
        checkpoint (saved before this is called)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, settings, run_dir)


class SlurmExecutor:
    """Runs as SLURM array tasks (see the module docstring).

    Args:
        settings: partition, time limit, GPUs, ... of each run's job.
        folder: where submitit keeps its files (``<output>/slurm``).
        wait: wait for the runs (default), or return once they are submitted.
        log: where progress lines go.
    """

    def __init__(
        self,
        settings: SlurmSettings,
        folder: Path,
        wait: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.settings = settings
        self.folder = Path(folder)
        self.wait = wait
        self.log = log

    def run(self, runs: Sequence[PlannedRun], report: Report) -> bool:
        """Submit what is missing, then wait (`heartlora.training.executor.Executor.run`)."""
        if not runs:
            return True
        queue = squeue_states()
        jobs: dict[int, str] = {}
        to_submit = []
        for index, run in enumerate(runs):
            job_id = recorded_job(run.run_dir)
            if job_id is not None and queue.get(job_id) in QUEUED_STATES:
                jobs[index] = job_id
            else:
                to_submit.append(index)
        if to_submit:
            submitted = self._submit([runs[index] for index in to_submit])
            jobs.update(zip(to_submit, submitted))
        array = sorted({job.split("_")[0] for job in jobs.values()})
        self.log(
            f"slurm: {len(to_submit)} run(s) submitted, {len(runs) - len(to_submit)} already "
            f"queued or running (job {', '.join(array)}); logs: <run>/slurm.out"
        )
        if not self.wait:
            self.log("slurm: not waiting; run the same command again to collect the results")
            return False
        try:
            self._wait(runs, jobs, report)
        except KeyboardInterrupt:
            self.log(
                "slurm: stopped waiting; the jobs go on in SLURM (scancel to stop them): run "
                "the same command again to collect the results"
            )
            raise
        return True

    def _submit(self, runs: Sequence[PlannedRun]) -> list[str]:
        import submitit

        settings = self.settings
        executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=settings.max_requeues)
        parameters: dict[str, Any] = {
            "job_name": "heartlora",
            "time": settings.time_minutes,
            "nodes": 1,
            "ntasks_per_node": settings.tasks,
            "array_parallelism": settings.array_parallelism,
            "signal_delay_s": settings.signal_delay_s,
        }
        optional = {
            "partition": settings.partition,
            "account": settings.account,
            "qos": settings.qos,
            "cpus_per_task": settings.cpus_per_task,
            "mem": f"{settings.mem_gb}GB" if settings.mem_gb else None,
        }
        parameters.update({key: value for key, value in optional.items() if value is not None})
        if settings.gpus_per_run:
            parameters["gpus_per_node"] = settings.gpus_per_run
        sbatch = {"requeue": True, **settings.sbatch}
        parameters["additional_parameters"] = sbatch
        try:
            executor.update_parameters(**parameters)
        except ValueError as error:  # submitit names the parameter it does not know
            raise HeartLoRAError(f"SLURM settings: {one_line(error)}") from None
        try:
            submitted = executor.map_array(
                SlurmRun(settings.max_requeues),
                [run.settings for run in runs],
                [str(run.run_dir) for run in runs],
            )
        except (subprocess.CalledProcessError, FileNotFoundError, OSError) as error:
            raise HeartLoRAError(f"sbatch failed: {one_line(error)}") from None
        ids = []
        for run, job in zip(runs, submitted):
            record_job(run.run_dir, job.job_id, Path(job.paths.stdout), Path(job.paths.stderr))
            ids.append(str(job.job_id))
        return ids

    def _wait(self, runs: Sequence[PlannedRun], jobs: dict[int, str], report: Report) -> None:
        outstanding = dict(jobs)
        failures: list[str] = []
        shown = ""
        while outstanding:
            queue = squeue_states()
            for index, job_id in list(outstanding.items()):
                if queue.get(job_id) in QUEUED_STATES:
                    continue  # SLURM's still (a COMPLETING job may be requeued next)
                del outstanding[index]
                run = runs[index]
                result = finished_result(run.run_dir, TrainConfig(**run.settings))
                if result is not None:
                    report(index, result, f"job {job_id}")
                else:
                    failures.append(failure_line(run, job_id))
                    self.log(failures[-1])
            counts = _count_states(queue, outstanding.values())
            finished = len(runs) - len(outstanding) - len(failures)
            line = (
                f"slurm: {finished}/{len(runs)} finished"
                + "".join(f", {n} {state.lower()}" for state, n in counts.items())
                + (f", {len(failures)} failed" if failures else "")
            )
            if line != shown:
                self.log(line)
                shown = line
            if outstanding:
                time.sleep(self.settings.poll_seconds)
        if failures:
            raise RunFailed(
                f"{len(failures)} of {len(runs)} SLURM runs failed (each named above, with its "
                "log): run the same command to submit them again"
            )


def _count_states(queue: Mapping[str, str], job_ids: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job_id in job_ids:
        state = queue.get(job_id, "ENDING")
        counts[state] = counts.get(state, 0) + 1
    return dict(sorted(counts.items()))


def squeue_states(retries: int = 3) -> dict[str, str]:
    """The state of each of this user's jobs in SLURM's queue, by job id (array tasks as
    ``<job>_<task>``).

    Raises:
        HeartLoRAError: squeue is missing or keeps failing (is the cluster up?).
    """
    command = ["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i %T"]
    for attempt in range(retries):
        try:
            output = subprocess.run(
                command, capture_output=True, text=True, timeout=60, check=True
            ).stdout
        except FileNotFoundError:
            raise HeartLoRAError(
                "squeue not found: --executor slurm needs SLURM's client commands on this "
                "machine (a login node of the cluster)"
            ) from None
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            if attempt == retries - 1:
                detail = getattr(error, "stderr", "") or str(error)
                raise HeartLoRAError(f"squeue failed: {one_line(RuntimeError(detail))}") from None
            time.sleep(2)
            continue
        states = {}
        for line in output.splitlines():
            parts = line.split()
            if len(parts) == 2:
                states[parts[0]] = parts[1]
        return states
    return {}


def record_job(run_dir: Path, job_id: str, stdout: Path, stderr: Path) -> None:
    """Write ``slurm.json`` into ``run_dir`` and link ``slurm.out``/``slurm.err`` to the logs."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAILURE_FILE).unlink(missing_ok=True)
    atomic_write_json(
        run_dir / JOB_FILE,
        {"job_id": str(job_id), "stdout": str(stdout), "stderr": str(stderr)},
    )
    for name, target in (("slurm.out", stdout), ("slurm.err", stderr)):
        link = run_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)


def recorded_job(run_dir: Path) -> str | None:
    """The job id ``slurm.json`` in ``run_dir`` records, or None."""
    path = run_dir / JOB_FILE
    if not path.is_file():
        return None
    data = read_json(path, "the slurm.json a SLURM submission writes")
    job_id = data.get("job_id") if isinstance(data, dict) else None
    if not isinstance(job_id, str):
        raise HeartLoRAError(f"{path}: expected a job_id (remove the file to submit the run again)")
    return job_id


def failure_line(run: PlannedRun, job_id: str) -> str:
    """One line: which run failed, why when it said so, and where its log is."""
    reason_file = run.run_dir / FAILURE_FILE
    if reason_file.is_file():
        reason = reason_file.read_text(encoding="utf-8", errors="replace").strip()
    else:
        reason = "it ended without a result (cancelled, killed, out of memory or out of time)"
    log = run.run_dir / "slurm.err"
    where = os.path.realpath(log) if log.is_symlink() else str(log)
    return f"run {run.label} (SLURM job {job_id}) failed: {reason}; log: {where}"


def slurm_settings(values: Mapping[str, Any], config_file: str | None) -> SlurmSettings:
    """The settings of ``config_file`` (YAML) overridden by ``values`` given as flags (None:
    not given)."""
    data = SlurmSettings.from_file(Path(config_file)) if config_file else {}
    data.update({key: value for key, value in values.items() if value is not None})
    where = config_file or "SLURM settings"
    return SlurmSettings.from_mapping(data, where)
