"""Suite workers end with their parent, whatever signal it got, and leave no lock behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heartlora.training.run_directory import LOCK_FILE, lock_run_directory


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its new parent) counts as gone
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state != "Z"


def _worker_pids(runs: Path, parent: int) -> list[int]:
    pids = []
    for lock in runs.rglob(LOCK_FILE):
        text = lock.read_text().strip()
        if text.isdigit() and int(text) != parent and _alive(int(text)):
            pids.append(int(text))
    return pids


def long_suite(data_root: Path, out: Path) -> list[str]:
    """The command line of a suite that trains two runs at once, in two workers, for long
    enough (40 epochs) to be stopped while they train."""
    return [
        sys.executable, "-m", "heartlora", "suite", "--tasks", "sk-digits", "--epochs", "40",
        "--methods", "lora,heart-lora", "--jobs", "2", "--data-root", str(data_root),
        "--output-dir", str(out), "--set", "threads=1",
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL])  # SIGTERM: test_local_executor.py
def test_suite_workers_exit_when_the_suite_is_killed(tmp_path, sk_digits, signum):
    out = tmp_path / "suite"
    suite = subprocess.Popen(
        long_suite(sk_digits, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 240
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline and suite.poll() is None:
            time.sleep(0.5)
            workers = _worker_pids(out / "runs", suite.pid) if (out / "runs").is_dir() else []
        assert len(workers) == 2, suite.stderr.read().decode() if suite.poll() is not None else ""
        time.sleep(2)  # well inside training
        suite.send_signal(signum)
        suite.wait(timeout=30)
        deadline = time.monotonic() + 90
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(_alive(pid) for pid in workers), f"orphaned workers {workers}"
    finally:
        if suite.poll() is None:
            suite.kill()
    for lock in (out / "runs").rglob(LOCK_FILE):
        with lock_run_directory(lock.parent):  # free: the rerun resumes instead of refusing
            pass
